//! An admin's actions, in an open order-watch (who may do them is tested against the identity
//! provider in `auth.rs`): erasing an order's trace data, acknowledging and closing incidents.

use std::time::Duration;

use domain::System;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{RECONFIRM_INTERVAL, STUCK_AFTER, TestApp, spawn_app, transition};

async fn count(pool: &PgPool, table: &str, order: Uuid) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE order_id = $1"))
        .bind(order)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// An order that went to pricing and got stuck there, with its incident open.
async fn stuck_order(app: &TestApp, trace: u8) -> Uuid {
    let order = Uuid::now_v7();
    let start = app.clock.now();
    app.export(&build::request(
        "mes-api",
        vec![
            transition(order, [trace; 16], 1, "registered", start),
            transition(order, [trace; 16], 2, "pricing", start),
        ],
    ))
    .await;
    app.records.hold(System::Mes, order, "pricing", start);
    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    testkit::wait::until("the order's incident", Duration::from_secs(10), || async {
        app.incidents()
            .await
            .into_iter()
            .find(|i| i["order_id"] == order.to_string() && i["resolved_at"].is_null())
    })
    .await;
    order
}

async fn delete(app: &TestApp, path: &str) -> (u16, Value) {
    app.call(Method::DELETE, path, None, None).await
}

#[tokio::test]
async fn erasing_an_order_removes_its_trace_data_audits_who_and_how_much_and_a_later_span_begins_afresh()
 {
    let app = spawn_app().await;
    let order = stuck_order(&app, 1).await;
    let kept = stuck_order(&app, 2).await;
    let pool = PgPool::connect(app.database.url()).await.unwrap();
    assert_eq!(count(&pool, "spans", order).await, 2);

    let (status, erasure) = delete(&app, &format!("/api/orders/{order}")).await;
    assert_eq!(status, 200, "{erasure}");
    assert_eq!(erasure["order_id"], order.to_string());
    assert_eq!(erasure["erased_by"], "anonymous ()");
    assert_eq!(erasure["spans"], 2);
    assert_eq!(erasure["incidents"], 1);
    assert_eq!(erasure["notifications"], 1, "the firing announcement");

    // Gone from every table; the other order untouched.
    for table in ["spans", "orders", "telemetry_gaps", "incidents"] {
        assert_eq!(count(&pool, table, order).await, 0, "{table}");
    }
    let notifications: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE payload::text LIKE '%' || $1 || '%'",
    )
    .bind(order.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(notifications, 0);
    assert_eq!(count(&pool, "spans", kept).await, 2);
    let (status, body) = app.get(&format!("/api/orders/{order}/journey")).await;
    assert_eq!(status, 404, "{body}");
    // Its incident stays, without the order, and closed.
    let incidents = app.incidents().await;
    let erased: Vec<&Value> = incidents
        .iter()
        .filter(|i| i["order_id"].is_null())
        .collect();
    assert_eq!(erased.len(), 1, "{incidents:?}");
    assert_eq!(
        erased[0]["summary"],
        "the order's trace data was erased on request"
    );
    assert!(!erased[0]["resolved_at"].is_null());
    assert!(!erased[0].to_string().contains(&order.to_string()));

    // The audit: who, when, which order, how much; nothing of the order's data.
    let (status, erasures) = app.get("/api/erasures").await;
    assert_eq!(status, 200);
    assert_eq!(erasures.as_array().unwrap().len(), 1);
    let mut keys: Vec<&String> = erasures[0].as_object().unwrap().keys().collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "erased_at",
            "erased_by",
            "id",
            "incidents",
            "notifications",
            "order_id",
            "spans",
            "telemetry_gaps"
        ]
    );

    // Asked again (a retried request): nothing is left, and the answer says so.
    let (status, again) = delete(&app, &format!("/api/orders/{order}")).await;
    assert_eq!(status, 404, "{again}");
    assert_eq!(again["error"]["code"], "order_not_found");

    // A later span of the order begins a new journey.
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [3; 16], 3, "priced", app.clock.now())],
    ))
    .await;
    let journey = app.journey(order).await;
    assert_eq!(journey["span_count"], 1);
    assert_eq!(journey["status"], "priced");
    app.stop().await;
}

#[tokio::test]
async fn erasing_an_order_never_seen_is_a_404_and_a_malformed_id_a_400() {
    let app = spawn_app().await;
    let (status, body) = delete(&app, &format!("/api/orders/{}", Uuid::now_v7())).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "order_not_found");
    let (status, body) = delete(&app, "/api/orders/not-an-order").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_order_id");
    let (_, erasures) = app.get("/api/erasures").await;
    assert_eq!(erasures, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn an_incident_is_acknowledged_then_closed_each_once_and_recorded_with_who_and_when() {
    let app = spawn_app().await;
    let (status, _) = app
        .call(
            Method::POST,
            "/api/alerts",
            None,
            Some(&json!({ "alerts": [{
                "status": "firing",
                "labels": { "alertname": "QueueWaitGrowing", "service": "mes-api" },
                "annotations": { "summary": "MES's queue is growing" },
                "fingerprint": "f1",
            }] })),
        )
        .await;
    assert_eq!(status, 200);
    let id = app.incidents().await[0]["id"].as_str().unwrap().to_owned();

    let (status, incident) = app.post(&format!("/api/incidents/{id}/acknowledge")).await;
    assert_eq!(status, 200, "{incident}");
    assert_eq!(incident["acknowledged_by"], "anonymous ()");
    let at: chrono::DateTime<chrono::Utc> = incident["acknowledged_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (at - app.clock.now()).num_milliseconds().abs() < 1,
        "at order-watch's now"
    );
    assert!(incident["resolved_at"].is_null(), "still open");
    let (status, again) = app.post(&format!("/api/incidents/{id}/acknowledge")).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "incident_acknowledged");

    app.clock.advance(Duration::from_secs(60));
    let (status, closed) = app.post(&format!("/api/incidents/{id}/close")).await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["closed_by"], "anonymous ()");
    assert_eq!(closed["resolution"], "closed by hand");
    assert!(!closed["resolved_at"].is_null());

    // Recorded on the incident, as the list shows it.
    let (_, open) = app.get("/api/incidents?open=true").await;
    assert_eq!(open, json!([]));
    let listed = &app.incidents().await[0];
    assert_eq!(listed["acknowledged_by"], "anonymous ()");
    assert_eq!(listed["closed_by"], "anonymous ()");

    for action in ["close", "acknowledge"] {
        let (status, body) = app.post(&format!("/api/incidents/{id}/{action}")).await;
        assert_eq!(status, 409, "{action}: {body}");
        assert_eq!(body["error"]["code"], "incident_closed", "{action}");
    }
    let (status, body) = app
        .post(&format!("/api/incidents/{}/close", Uuid::now_v7()))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "incident_not_found");
    let (status, body) = app.post("/api/incidents/nonsense/acknowledge").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_incident_id");
    app.stop().await;
}

#[tokio::test]
async fn a_stuck_orders_incident_closed_by_hand_is_announced_resolved_and_a_new_one_opens_while_it_stays_stuck()
 {
    let app = spawn_app().await;
    let order = stuck_order(&app, 1).await;
    let id = app.incidents().await[0]["id"].as_str().unwrap().to_owned();
    app.webhook.expect(1).await;

    let (status, closed) = app.post(&format!("/api/incidents/{id}/close")).await;
    assert_eq!(status, 200, "{closed}");
    let notifications = app.webhook.expect(2).await;
    assert_eq!(notifications[1]["status"], "resolved");
    assert_eq!(
        notifications[1]["alerts"][0]["labels"]["order_id"],
        order.to_string()
    );
    // Closing did not make the order move: it is still stuck.
    assert_eq!(app.stuck().await.len(), 1);

    // Its system of record still holds it where it was at the next re-confirmation: a new one.
    app.clock
        .advance(RECONFIRM_INTERVAL + Duration::from_secs(1));
    let reopened = testkit::wait::until(
        "a new incident for the order still stuck",
        Duration::from_secs(10),
        || async {
            app.incidents()
                .await
                .into_iter()
                .find(|i| i["resolved_at"].is_null() && i["order_id"] == order.to_string())
        },
    )
    .await;
    assert_ne!(reopened["id"], id);
    assert_eq!(app.webhook.expect(3).await[2]["status"], "firing");
    app.stop().await;
}
