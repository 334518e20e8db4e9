//! Configuration changed while order-watch runs — thresholds, masking rules, the incident
//! webhook, the retention: applied at once, on every replica, stored, audited.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::otlp::build;
use testkit::webhook::Webhook;
use uuid::Uuid;

use crate::helpers::{STUCK_AFTER, TestApp, order_span, spawn_app, spawn_on, transition};

async fn patch(app: &TestApp, body: Value) -> (u16, Value) {
    app.patch_config(body).await
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
    let (before, after) = (&changes[0]["before"], &changes[0]["after"]);
    assert_eq!(
        before["thresholds"]["default_seconds"],
        STUCK_AFTER.as_secs()
    );
    assert_eq!(after["thresholds"]["default_seconds"], 120);
    assert!(before["thresholds"]["per_stage_seconds"]["shipping"].is_u64());
    assert!(after["thresholds"]["per_stage_seconds"]["shipping"].is_null());
    assert_eq!(
        before.as_object().unwrap().len(),
        1,
        "only the part the change touched: {before}"
    );

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
        json!({ "retention_days": 0 }),
        json!({ "webhook": "ftp://files.example.com/alerts" }),
        json!({ "masking": { "mask_patterns": ["(unclosed"] } }),
        json!({ "stuck_after_seconds": { "pricing": 60 }, "colour": "red" }),
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
    assert_eq!(
        changes[0]["before"]["thresholds"]["per_stage_seconds"]["pricing"],
        60
    );
    second.stop().await;
    first.stop().await;
}

/// The attributes of the journey's only span.
async fn stored_attributes(app: &TestApp, order: Uuid) -> Value {
    let journey = app.journey(order).await;
    let spans = journey["spans"].as_array().unwrap();
    spans.last().expect("a span")["attributes"].clone()
}

/// A progress span of `order` with a customer's VAT number, an API key and a note.
fn span_with_personal_data(
    order: Uuid,
    id: u8,
    end: chrono::DateTime<chrono::Utc>,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    build::request(
        "shop-api",
        vec![order_span(
            order,
            [id; 16],
            id,
            "POST /api/orders",
            end,
            vec![
                build::string("order.activity", "progress"),
                build::string("customer.vat_id", "DE123456789"),
                build::string("http.request.header.x-api-key", "k-live-42"),
                build::string("note", "invoice to DE987654321 please"),
            ],
        )],
    )
}

async fn export_ok(
    app: &TestApp,
    request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) {
    assert_eq!(app.export(&request).await.status(), 200);
}

#[tokio::test]
async fn a_masking_rule_added_at_run_time_masks_the_next_spans_attributes_before_they_are_stored() {
    let app = spawn_app().await;
    let before = Uuid::now_v7();
    export_ok(&app, span_with_personal_data(before, 1, app.clock.now())).await;
    assert_eq!(
        stored_attributes(&app, before).await["customer.vat_id"],
        "DE123456789"
    );

    let (status, config) = patch(
        &app,
        json!({ "masking": {
            "mask_keys": ["customer.vat_id"],
            "drop_keys": ["http.request.header.x-api-key"],
            "mask_patterns": ["DE[0-9]{9}"],
        } }),
    )
    .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["masking"]["mask_keys"], json!(["customer.vat_id"]));

    let after = Uuid::now_v7();
    export_ok(&app, span_with_personal_data(after, 2, app.clock.now())).await;
    let attributes = stored_attributes(&app, after).await;
    assert_eq!(attributes["customer.vat_id"], "[masked]", "{attributes}");
    assert_eq!(attributes["note"], "invoice to [masked] please");
    assert!(
        attributes.get("http.request.header.x-api-key").is_none(),
        "dropped: {attributes}"
    );
    assert_eq!(
        attributes["order.activity"], "progress",
        "what order-watch reads stays"
    );
    // What was stored before the rule stays as it was stored.
    assert_eq!(
        stored_attributes(&app, before).await["customer.vat_id"],
        "DE123456789"
    );

    // A merge patch replaces one list and keeps the others; the audit has before and after.
    let (status, config) = patch(&app, json!({ "masking": { "mask_patterns": null } })).await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["masking"]["mask_patterns"], json!([]));
    assert_eq!(config["masking"]["mask_keys"], json!(["customer.vat_id"]));
    let (_, changes) = app.get("/api/config/changes").await;
    assert_eq!(
        changes[0]["before"]["masking"]["mask_patterns"],
        json!(["DE[0-9]{9}"])
    );
    assert_eq!(changes[0]["after"]["masking"]["mask_patterns"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_masking_rule_that_does_not_compile_is_refused_with_a_message_naming_it() {
    let app = spawn_app().await;
    let (status, answer) = patch(
        &app,
        json!({ "masking": { "mask_patterns": ["DE[0-9]{9}", "(?P<open"] } }),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_config");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("masking.mask_patterns[1]: `(?P<open` is not a regular expression"),
        "{message}"
    );
    for (rules, expected) in [
        (
            json!({ "mask_keys": ["order.status.to"] }),
            "masking.mask_keys: order-watch reads `order.status.to`",
        ),
        (
            json!({ "drop_keys": (0..=200).map(|i| format!("k{i}")).collect::<Vec<_>>() }),
            "masking.drop_keys: at most 200 entries",
        ),
        (
            json!({ "mask_keys": "customer.vat_id" }),
            "masking: expected",
        ),
    ] {
        let (status, answer) = patch(&app, json!({ "masking": rules })).await;
        assert_eq!(status, 422, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(expected), "{message}");
    }
    let (_, changes) = app.get("/api/config/changes").await;
    assert_eq!(changes.as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn the_webhook_changed_at_run_time_gets_the_next_notification_and_is_never_shown_whole() {
    let app = spawn_app().await;
    let other = Webhook::start().await;
    let secret_url = format!("{}?token=s3cret-token", other.url);
    let (status, config) = patch(&app, json!({ "webhook": secret_url })).await;
    assert_eq!(status, 200, "{config}");
    let shown = config["webhook"].as_str().unwrap().to_owned();
    assert!(shown.ends_with("/hook?***"), "{shown}");
    let (_, config) = app.get("/api/config").await;
    let (_, changes) = app.get("/api/config/changes").await;
    for text in [config.to_string(), changes.to_string()] {
        assert!(!text.contains("s3cret"), "{text}");
    }
    assert_eq!(changes[0]["after"]["webhook"], shown);
    assert!(
        changes[0]["before"]["webhook"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{changes}"
    );

    // The next incident is announced to the new webhook, the old one hears nothing.
    let order = Uuid::now_v7();
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 1, "pricing", app.clock.now())],
    ))
    .await;
    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    app.until_stuck(1).await;
    let received = other.expect(1).await;
    assert_eq!(
        received[0]["alerts"][0]["labels"]["order_id"],
        order.to_string()
    );
    assert!(app.webhook.messages().is_empty());

    // Cleared: incidents are no longer announced.
    let (status, config) = patch(&app, json!({ "webhook": null })).await;
    assert_eq!(status, 200);
    assert!(config["webhook"].is_null());
    let second = Uuid::now_v7();
    app.export(&build::request(
        "mes-api",
        vec![transition(second, [2; 16], 2, "pricing", app.clock.now())],
    ))
    .await;
    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    app.until_stuck(2).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(other.messages().len(), 1, "nothing more was sent");

    // The masked form is not taken back as a URL.
    let (status, answer) = patch(&app, json!({ "webhook": shown })).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("masked form"),
        "{answer}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_shorter_retention_set_at_run_time_deletes_older_journeys_and_refuses_older_spans() {
    let app = spawn_app().await;
    let old = Uuid::now_v7();
    let two_days_ago = app.clock.now() - chrono::Duration::days(2);
    // Done with (a terminal order): the detector has nothing to do with it, so the clean-up,
    // which skips rows another task holds, finds it free.
    app.export(&build::request(
        "shop-api",
        vec![transition(old, [1; 16], 1, "cancelled", two_days_ago)],
    ))
    .await;
    app.journey(old).await;

    let (status, config) = patch(&app, json!({ "retention_days": 1 })).await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["retention_days"], 1);
    testkit::wait::until(
        "the journey older than a day deleted",
        Duration::from_secs(10),
        || async { (app.get(&format!("/api/orders/{old}/journey")).await.0 == 404).then_some(()) },
    )
    .await;

    // Ingest takes spans back to the retention only.
    let late = Uuid::now_v7();
    let response = app
        .export(&build::request(
            "shop-api",
            vec![transition(late, [2; 16], 2, "created", two_days_ago)],
        ))
        .await;
    let answer = response.text().await.unwrap();
    assert!(
        answer.contains("outside what order-watch takes"),
        "{answer}"
    );
    let (_, changes) = app.get("/api/config/changes").await;
    assert_eq!(changes[0]["before"], json!({ "retention_days": 30 }));
    assert_eq!(changes[0]["after"], json!({ "retention_days": 1 }));
    app.stop().await;
}

#[tokio::test]
async fn a_change_made_on_one_replica_applies_on_the_other_without_a_restart() {
    let first = spawn_app().await;
    let second = first.replica().await;
    let order = Uuid::now_v7();
    second
        .export(&build::request(
            "mes-api",
            vec![transition(order, [1; 16], 1, "pricing", second.clock.now())],
        ))
        .await;

    let (status, _) = patch(
        &first,
        json!({
            "stuck_after_seconds": { "pricing": 60 },
            "masking": { "mask_keys": ["customer.vat_id"] },
        }),
    )
    .await;
    assert_eq!(status, 200);

    // The other replica loads it within its reload interval: it shows it, plans with it and
    // masks with it.
    testkit::wait::until(
        "the second replica shows the change",
        Duration::from_secs(10),
        || async {
            let (_, config) = second.get("/api/config").await;
            (config["stuck_after_seconds"]["pricing"] == 60
                && config["masking"]["mask_keys"] == json!(["customer.vat_id"]))
            .then_some(())
        },
    )
    .await;
    assert_eq!(second.journey(order).await["threshold_seconds"], 60);
    let masked = Uuid::now_v7();
    export_ok(
        &second,
        span_with_personal_data(masked, 3, second.clock.now()),
    )
    .await;
    assert_eq!(
        stored_attributes(&second, masked).await["customer.vat_id"],
        "[masked]"
    );
    second.stop().await;
    first.stop().await;
}
