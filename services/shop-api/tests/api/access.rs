//! Who may place and act on orders, against a running Keycloak (the realm in `deploy/keycloak/`,
//! started by `scripts/test`): partners through their own clients, staff through SSO, customers
//! through their order's token.

use serde_json::Value;
use testkit::oidc::{Issuer, ORDER_WATCH_SERVICE, PARTNER_ACME, PARTNER_GLOBEX};
use uuid::Uuid;

use crate::helpers::{TestApp, error_code, order_json, spawn_app_with_access};

const CLI: &str = "hallmark-cli";

async fn app() -> (TestApp, Issuer) {
    let issuer = Issuer::required();
    (spawn_app_with_access(&issuer).await, issuer)
}

async fn person(issuer: &Issuer, user: &str) -> String {
    issuer.password_token(CLI, user, user).await.unwrap()
}

/// An order placed by acme's client, without naming a partner: its id and body.
async fn acme_order(app: &TestApp, acme: &str) -> (Uuid, Value) {
    let response = app.post_order_as(acme, order_json()).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["order_id"].as_str().unwrap().parse().unwrap(), body)
}

async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let url = format!("{}{path}", app.address);
    let mut request = match method {
        "GET" => app.client.get(url),
        _ => app.client.post(url),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_partners_client_places_orders_for_its_own_partner_whatever_the_order_says() {
    let (app, issuer) = app().await;
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();

    let (_, body) = acme_order(&app, &acme).await;
    assert_eq!(body["partner_id"], "acme");
    assert_eq!(body["source"], "partner_api");

    let mut own = order_json();
    own["partner_id"] = "acme".into();
    assert_eq!(app.post_order_as(&acme, own).await.status(), 201);

    let mut other = order_json();
    other["partner_id"] = "globex".into();
    let (status, code, _) = error_code(app.post_order_as(&acme, other).await).await;
    assert_eq!((status, code.as_str()), (403, "partner_mismatch"));
    assert_eq!(
        app.count("orders").await,
        2,
        "nothing stored for the refusal"
    );
}

#[tokio::test]
async fn an_order_naming_a_partner_without_the_partners_token_is_refused_and_web_orders_need_none()
{
    let (app, issuer) = app().await;
    let mut named = order_json();
    named["partner_id"] = "acme".into();
    let response = app
        .post_order(
            vec![
                crate::helpers::Part::Order(named.to_string()),
                crate::helpers::Part::Model("ring.stl", testkit::fixtures::stl("torus.STL")),
            ],
            None,
        )
        .await;
    assert!(response.headers().contains_key("www-authenticate"));
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (401, "partner_token_required"));

    let support = person(&issuer, "support").await;
    let (status, code, _) = error_code(app.post_order_as(&support, order_json()).await).await;
    assert_eq!((status, code.as_str()), (403, "not_a_partner"));
    assert_eq!(app.count("orders").await, 0);

    assert_eq!(app.place_ring(None).await.status(), 201, "a web order");
}

#[tokio::test]
async fn a_partner_reads_and_decides_its_own_orders_and_not_another_partners() {
    let (app, issuer) = app().await;
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    let globex = issuer.machine_token(&PARTNER_GLOBEX).await.unwrap();
    let (id, _) = acme_order(&app, &acme).await;
    let web: Value = app.place_ring(None).await.json().await.unwrap();
    let web_id = web["order_id"].as_str().unwrap();

    let read = call(&app, "GET", &format!("/api/orders/{id}"), Some(&acme)).await;
    assert_eq!(read.status(), 200);
    for (path, method) in [
        (format!("/api/orders/{id}"), "GET"),
        (format!("/api/orders/{id}/cancel"), "POST"),
        (format!("/api/orders/{web_id}"), "GET"),
    ] {
        let who = if path.contains(web_id) {
            &acme
        } else {
            &globex
        };
        let (status, code, _) = error_code(call(&app, method, &path, Some(who)).await).await;
        assert_eq!((status, code.as_str()), (403, "not_your_order"), "{path}");
    }
    let cancelled = call(
        &app,
        "POST",
        &format!("/api/orders/{id}/cancel"),
        Some(&acme),
    )
    .await;
    assert_eq!(cancelled.status(), 200);
}

#[tokio::test]
async fn staff_read_any_order_and_only_an_admin_decides_one() {
    let (app, issuer) = app().await;
    let web: Value = app.place_ring(None).await.json().await.unwrap();
    let id = web["order_id"].as_str().unwrap();
    let support = person(&issuer, "support").await;
    let workshop = person(&issuer, "workshop").await;
    let admin = person(&issuer, "admin").await;

    for reader in [&support, &workshop] {
        let read = call(&app, "GET", &format!("/api/orders/{id}"), Some(reader)).await;
        assert_eq!(read.status(), 200);
    }
    // A machine's token for Shop that holds no role of people (order-watch's).
    let machine = issuer.machine_token(&ORDER_WATCH_SERVICE).await.unwrap();
    let (status, code, _) =
        error_code(call(&app, "GET", &format!("/api/orders/{id}"), Some(&machine)).await).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let (status, code, message) = error_code(
        call(
            &app,
            "POST",
            &format!("/api/orders/{id}/cancel"),
            Some(&support),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "forbidden"), "{message}");
    let cancelled = call(
        &app,
        "POST",
        &format!("/api/orders/{id}/cancel"),
        Some(&admin),
    )
    .await;
    assert_eq!(cancelled.status(), 200);
}

#[tokio::test]
async fn forged_foreign_and_misaddressed_tokens_are_401_and_change_nothing() {
    let (app, issuer) = app().await;
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    let (id, _) = acme_order(&app, &acme).await;
    let support = person(&issuer, "support").await;
    let mut bad: Vec<(&str, String)> = issuer.forgeries(&support, &["admin"]).await.unwrap();
    // A real token of the hallmark realm asked for order-watch only (Alertmanager's).
    bad.push((
        "another audience",
        issuer.alertmanager_token().await.unwrap(),
    ));
    let other = Issuer::other_required();
    bad.push((
        "another realm",
        other
            .password_token(CLI, "developer", "developer")
            .await
            .unwrap(),
    ));
    for (what, token) in &bad {
        for (method, path) in [
            ("POST", format!("/api/orders/{id}/cancel")),
            ("GET", format!("/api/orders/{id}")),
        ] {
            let (status, code, _) = error_code(call(&app, method, &path, Some(token)).await).await;
            assert_eq!((status, code.as_str()), (401, "unauthenticated"), "{what}");
        }
        let (status, _, _) = error_code(app.post_order_as(token, order_json()).await).await;
        assert_eq!(status, 401, "{what}: placing an order");
    }
    let order: Value = call(&app, "GET", &format!("/api/orders/{id}"), Some(&acme))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order["status"], "submitted", "nothing changed the order");
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn the_status_listing_answers_order_watchs_service_identity_and_staff_only() {
    let (app, issuer) = app().await;
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    let (id, _) = acme_order(&app, &acme).await;
    let path = format!("/api/orders/statuses?ids={id}");
    let service = issuer.machine_token(&ORDER_WATCH_SERVICE).await.unwrap();
    let support = person(&issuer, "support").await;
    for token in [&service, &support] {
        let listing: Value = call(&app, "GET", &path, Some(token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listing["orders"][0]["order_id"], id.to_string());
    }
    let (status, code, _) = error_code(call(&app, "GET", &path, None).await).await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    let (status, code, _) = error_code(call(&app, "GET", &path, Some(&acme)).await).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
}
