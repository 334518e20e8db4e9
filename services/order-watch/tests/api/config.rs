//! Thresholds changed while order-watch runs: applied at once, stored, audited.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{STUCK_AFTER, TestApp, spawn_app, spawn_on, transition};

async fn patch(app: &TestApp, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .patch(app.api("/api/config"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_shorter_threshold_applies_at_once_to_orders_already_waiting() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let start = app.clock.now();
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 1, "pricing", start)],
    ))
    .await;
    app.clock.advance(Duration::from_secs(90));
    assert!(
        app.stuck().await.is_empty(),
        "90 s is within {STUCK_AFTER:?}"
    );

    let (status, config) = patch(&app, json!({ "stuck_after_seconds": { "pricing": 60 } })).await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["stuck_after_seconds"]["pricing"], 60);
    assert_eq!(
        config["stuck_after_seconds"]["intake"],
        STUCK_AFTER.as_secs(),
        "other stages keep theirs"
    );

    // Past the new threshold already: flagged without the clock moving again.
    let stuck = app.until_stuck(1).await;
    assert_eq!(stuck[0]["order_id"], order.to_string());
    assert_eq!(stuck[0]["threshold_seconds"], 60);
    app.stop().await;
}

#[tokio::test]
async fn a_change_is_audited_and_outlives_a_restart() {
    let app = spawn_app().await;
    let (status, _) = patch(
        &app,
        json!({ "default_stuck_after_seconds": 120, "stuck_after_seconds": { "shipping": null } }),
    )
    .await;
    assert_eq!(status, 200);

    let (status, changes) = app.get("/api/config/changes").await;
    assert_eq!(status, 200);
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["changed_by"], "anonymous ()");
    assert_eq!(
        changes[0]["before"]["default_seconds"],
        STUCK_AFTER.as_secs()
    );
    assert_eq!(changes[0]["after"]["default_seconds"], 120);
    assert!(changes[0]["before"]["per_stage_seconds"]["shipping"].is_u64());
    assert!(changes[0]["after"]["per_stage_seconds"]["shipping"].is_null());

    let restarted = spawn_on(
        app.database.clone(),
        app.clock.clone(),
        app.webhook.clone(),
        app.records.clone(),
    )
    .await;
    let (_, config) = restarted.get("/api/config").await;
    assert_eq!(config["default_stuck_after_seconds"], 120);
    assert_eq!(config["stuck_after_seconds"]["shipping"], 120);
    restarted.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_change_naming_no_stage_or_no_sensible_duration_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    for body in [
        json!({ "stuck_after_seconds": { "lunch": 60 } }),
        json!({ "default_stuck_after_seconds": 0 }),
        json!({ "default_stuck_after_seconds": "15m" }),
        json!({ "retention_days": 1 }),
        json!([]),
    ] {
        let (status, answer) = patch(&app, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_config", "{body}");
    }
    let response = reqwest::Client::new()
        .patch(app.api("/api/config"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (_, changes) = app.get("/api/config/changes").await;
    assert_eq!(changes.as_array().unwrap().len(), 0);
    let (_, config) = app.get("/api/config").await;
    assert_eq!(config["default_stuck_after_seconds"], STUCK_AFTER.as_secs());
    app.stop().await;
}

#[tokio::test]
async fn a_change_made_on_one_replica_is_kept_by_the_next_change_on_another() {
    let first = spawn_app().await;
    let second = first.replica().await;
    let (status, _) = patch(&first, json!({ "stuck_after_seconds": { "pricing": 60 } })).await;
    assert_eq!(status, 200);
    // The second replica still holds the thresholds it started with; its change builds on the
    // stored ones all the same.
    let (status, config) = patch(
        &second,
        json!({ "stuck_after_seconds": { "shipping": 120 } }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(config["stuck_after_seconds"]["pricing"], 60, "{config}");
    assert_eq!(config["stuck_after_seconds"]["shipping"], 120);
    let (_, changes) = first.get("/api/config/changes").await;
    assert_eq!(changes[0]["before"]["per_stage_seconds"]["pricing"], 60);
    second.stop().await;
    first.stop().await;
}
