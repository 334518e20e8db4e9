//! A stored journey that does not read — a status or stage no release of order-watch knows, say
//! one a newer release wrote before a rollback — is an error naming the order, never read as
//! something else and written back.

use std::time::Duration;

use domain::Stage;
use order_watch::metrics::Metrics;
use order_watch::store::queries;
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{STUCK_AFTER, TestApp, spawn_app, transition};

/// An order whose journey began with a move to `pricing` now.
async fn pricing_order(app: &TestApp) -> Uuid {
    let order = Uuid::now_v7();
    let response = app
        .export(&build::request(
            "mes-api",
            vec![transition(order, [1; 16], 1, "pricing", app.clock.now())],
        ))
        .await;
    assert_eq!(response.status(), 200);
    order
}

/// Overwrites `column` of `order`'s row with `value`, as a newer release or a hand edit would.
async fn store(app: &TestApp, order: Uuid, column: &str, value: &str) {
    let pool = app.database.connect().await;
    let updated = sqlx::query(&format!(
        "UPDATE orders SET {column} = $2 WHERE order_id = $1"
    ))
    .bind(order)
    .bind(value)
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(updated, 1);
}

async fn stored_status(app: &TestApp, order: Uuid) -> Option<String> {
    let pool = app.database.connect().await;
    sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
        .bind(order)
        .fetch_one(&pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn reading_an_order_whose_stored_status_no_release_knows_is_an_error_naming_the_order() {
    let app = spawn_app().await;
    let order = pricing_order(&app).await;
    store(&app, order, "status", "teleported").await;

    let pool = app.database.connect().await;
    let err = queries::order(&pool, order).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("order {order} holds a malformed status: \"teleported\"")
    );

    // The API answers 500 and keeps the details to its log.
    let (status, body) = app.get(&format!("/api/orders/{order}/journey")).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    assert!(!body.to_string().contains("teleported"), "{body}");
}

#[tokio::test]
async fn spans_of_an_order_whose_stored_stage_does_not_read_are_refused_not_merged_into_it() {
    let app = spawn_app().await;
    let order = pricing_order(&app).await;
    store(&app, order, "stage", "teleported").await;

    let response = app
        .export(&build::request(
            "mes-api",
            vec![transition(order, [1; 16], 2, "priced", app.clock.now())],
        ))
        .await;
    assert_eq!(response.status(), 503, "the exporter is told to retry");
    let message = response.text().await.unwrap();
    assert!(
        message.contains("retry") && !message.contains("teleported"),
        "the exporter learns to retry, not what is stored: {message}"
    );
    assert_eq!(
        stored_status(&app, order).await.as_deref(),
        Some("pricing"),
        "the journey was not rewritten from a misreading"
    );
}

#[tokio::test]
async fn an_order_whose_stored_journey_does_not_read_holds_back_no_other_order_from_stuck_detection()
 {
    let app = spawn_app().await;
    let unreadable = pricing_order(&app).await;
    let readable = pricing_order(&app).await;
    store(&app, unreadable, "status", "teleported").await;

    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    let stuck = app.until_stuck(1).await;
    assert_eq!(stuck[0]["order_id"], readable.to_string());
    assert_eq!(
        stored_status(&app, unreadable).await.as_deref(),
        Some("teleported"),
        "left as it was, for someone to repair"
    );
}

#[tokio::test]
async fn open_orders_whose_stored_stage_does_not_read_are_left_out_of_the_gauges_not_freezing_them()
{
    let app = spawn_app().await;
    let unreadable = pricing_order(&app).await;
    pricing_order(&app).await;
    store(&app, unreadable, "stage", "teleported").await;

    let metrics = Metrics::new(&opentelemetry::global::meter("order-watch-test"));
    let pool = app.database.connect().await;
    metrics.refresh(&pool, &app.clock).await.unwrap();
    let snapshot = metrics.snapshot();
    assert_eq!(
        snapshot.open.into_iter().collect::<Vec<_>>(),
        [(Stage::Pricing, 1)]
    );
}
