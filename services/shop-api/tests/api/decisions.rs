use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn an_order_cannot_be_confirmed_before_it_is_priced() {
    let app = spawn_app().await;
    let created: Value = app.place_ring(None).await.json().await.unwrap();
    let id: Uuid = created["order_id"].as_str().unwrap().parse().unwrap();
    let (status, code, message) = error_code(app.confirm(id).await).await;
    assert_eq!((status, code.as_str()), (409, "illegal_transition"));
    assert!(message.contains("to `confirmed`"), "{message}");
}

#[tokio::test]
async fn confirming_an_unknown_order_is_a_404() {
    let app = spawn_app().await;
    let (status, code, _) = error_code(app.confirm(Uuid::now_v7()).await).await;
    assert_eq!((status, code.as_str()), (404, "order_not_found"));
}

#[tokio::test]
async fn a_customer_can_cancel_before_production() {
    let app = spawn_app().await;
    let created: Value = app.place_ring(None).await.json().await.unwrap();
    let id = created["order_id"].as_str().unwrap().parse().unwrap();
    let response = app.decide(id, "cancel").await;
    assert_eq!(response.status(), 200);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "cancelled");
}

#[tokio::test]
async fn an_order_whose_stored_price_does_not_read_is_a_500_not_an_order_without_a_price() {
    let app = spawn_app().await;
    let created: Value = app.place_ring(None).await.json().await.unwrap();
    let id: Uuid = created["order_id"].as_str().unwrap().parse().unwrap();
    sqlx::query(
        r#"UPDATE orderbook.orders SET price = '{"total_cents": "a lot"}' WHERE order_id = $1"#,
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();

    let (status, code, message) = error_code(app.get_order(&id.to_string()).await).await;
    assert_eq!((status, code.as_str()), (500, "internal"));
    assert!(!message.contains("a lot"), "{message}");
}

#[tokio::test]
async fn only_the_orders_own_token_reads_or_decides_it() {
    let app = spawn_app().await;
    let created: Value = app.place_ring(None).await.json().await.unwrap();
    let id: Uuid = created["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(created["customer_token"], app.token(id));
    let other: Value = app.place_ring(None).await.json().await.unwrap();
    let others_token = other["customer_token"].as_str().unwrap().to_owned();

    for (path, method) in [
        ("", reqwest::Method::GET),
        ("/confirm", reqwest::Method::POST),
        ("/cancel", reqwest::Method::POST),
    ] {
        let url = format!("{}/api/orders/{id}{path}", app.address);
        let without = app
            .client
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        assert_eq!(
            without.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        let (status, code, _) = error_code(without).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "order_token_missing"),
            "{url}"
        );
        let with_another = app
            .client
            .request(method, &url)
            .bearer_auth(&others_token)
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_code(with_another).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "order_token_invalid"),
            "{url}"
        );
    }
    // No decision was taken (the relay may have moved it on to `submitted` meanwhile).
    let order: Value = app.get_order(&id.to_string()).await.json().await.unwrap();
    assert!(
        matches!(order["status"].as_str(), Some("created" | "submitted")),
        "{order}"
    );
}

#[tokio::test]
async fn a_repeated_request_gets_the_same_token_again() {
    let app = spawn_app().await;
    let first: Value = app.place_ring(Some("k-1")).await.json().await.unwrap();
    let again = app.place_ring(Some("k-1")).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["customer_token"], again["customer_token"]);
    assert!(
        first["customer_token"]
            .as_str()
            .unwrap()
            .starts_with("ord_")
    );
}
