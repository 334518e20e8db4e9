//! Stuck means stuck: only progress keeps an order alive, reads of orders that never moved are
//! not orders, and an order is called stuck only after the system that owns its stage was asked.

use std::time::Duration;

use chrono::{SubsecRound as _, Utc};
use domain::System;
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{
    Answering, RECONFIRM_INTERVAL, STUCK_AFTER, TestApp, activity_span, spawn_app, status_check,
    transition,
};

const PATIENCE: Duration = Duration::from_secs(10);

async fn incidents_of(app: &TestApp, order: Uuid) -> Vec<serde_json::Value> {
    app.incidents()
        .await
        .into_iter()
        .filter(|i| i["order_id"] == order.to_string())
        .collect()
}

/// Lets the detector run a few rounds on the current clock.
async fn let_the_detector_run() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test]
async fn an_order_whose_status_a_customer_keeps_checking_is_stuck_like_one_nobody_looks_at() {
    let app = spawn_app().await;
    let (checked, ignored) = (Uuid::now_v7(), Uuid::now_v7());
    let start = app.clock.now();
    app.export(&build::request(
        "crm-api",
        vec![
            transition(checked, [1; 16], 1, "registered", start),
            transition(ignored, [2; 16], 1, "registered", start),
        ],
    ))
    .await;
    app.records.hold(System::Mes, checked, "registered", start);
    app.records.hold(System::Mes, ignored, "registered", start);

    // The customer checks every minute, well past the threshold.
    let checks = 2 * STUCK_AFTER.as_secs() / 60;
    for minute in 1..=checks {
        app.clock.advance(Duration::from_secs(60));
        let at = app.clock.now();
        let id = minute as u8;
        app.export(&build::request(
            "shop-api",
            vec![
                status_check(checked, [10 + id; 16], 1, at),
                activity_span(
                    checked,
                    [10 + id; 16],
                    2,
                    "SELECT orders",
                    at,
                    "observation",
                    3,
                ),
            ],
        ))
        .await;
    }

    let stuck = app.until_stuck(2).await;
    for order in &stuck {
        assert_eq!(order["stage"], "pricing_queue");
        assert_eq!(order["stuck_confirmation"], "confirmed", "{order}");
    }
    let journey = app.journey(checked).await;
    assert_eq!(journey["observations_since_progress"], checks);
    assert!(journey["silent_seconds"].as_f64().unwrap() >= 2.0 * STUCK_AFTER.as_secs_f64());
    assert_eq!(
        journey["last_span"], "order registered",
        "the last progress, not a read"
    );
    assert!(
        journey["confirmation"]
            .as_str()
            .unwrap()
            .starts_with("confirmed: mes-api holds it registered since"),
        "{journey}"
    );
    let observed = journey["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["activity"] == "observation")
        .count();
    assert_eq!(observed as u64, 2 * checks, "reads stay in the journey");
    assert_eq!(incidents_of(&app, checked).await.len(), 1);

    // More reads change nothing; progress does.
    app.export(&build::request(
        "shop-api",
        vec![status_check(checked, [99; 16], 1, app.clock.now())],
    ))
    .await;
    assert_eq!(app.journey(checked).await["stuck"], true);
    app.export(&build::request(
        "mes-api",
        vec![transition(checked, [1; 16], 2, "pricing", app.clock.now())],
    ))
    .await;
    let journey = app.journey(checked).await;
    assert_eq!(
        (
            journey["stuck"].as_bool(),
            journey["observations_since_progress"].as_i64()
        ),
        (Some(false), Some(0))
    );
    let incidents = incidents_of(&app, checked).await;
    assert_eq!(incidents[0]["resolution"], "the order is moving again");
}

#[tokio::test]
async fn reads_of_an_order_never_seen_moving_create_no_journey_and_page_nobody() {
    let app = spawn_app().await;
    let nobody = Uuid::now_v7();
    let at = app.clock.now();
    let response = app
        .export(&build::request(
            "shop-api",
            vec![
                status_check(nobody, [1; 16], 1, at),
                activity_span(nobody, [1; 16], 2, "SELECT orders", at, "observation", 3),
                // Without a mark, a span that is no transition is an observation too.
                crate::helpers::order_span(
                    nobody,
                    [1; 16],
                    3,
                    "GET /api/orders/{order_id}",
                    at,
                    vec![],
                ),
            ],
        ))
        .await;
    assert_eq!(response.status(), 200, "taken, and dropped");
    let (status, body) = app.get(&format!("/api/orders/{nobody}/journey")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "order_not_found");

    app.clock.advance(STUCK_AFTER * 10);
    let_the_detector_run().await;
    assert!(app.stuck().await.is_empty());
    assert!(app.incidents().await.is_empty());
    assert_eq!(app.records.asked(System::Shop), 0, "nothing to ask about");

    // Once the order moves, its journey begins, and later reads join it.
    app.export(&build::request(
        "shop-api",
        vec![transition(nobody, [2; 16], 1, "created", app.clock.now())],
    ))
    .await;
    app.export(&build::request(
        "shop-api",
        vec![status_check(nobody, [3; 16], 1, app.clock.now())],
    ))
    .await;
    let journey = app.journey(nobody).await;
    assert_eq!(journey["span_count"], 2);
    assert_eq!(journey["status"], "created");
}

#[tokio::test]
async fn an_order_whose_system_of_record_moved_on_is_a_telemetry_gap_not_an_incident() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let start = app.clock.now();
    app.export(&build::request(
        "crm-api",
        vec![transition(order, [1; 16], 1, "registered", start)],
    ))
    .await;
    // MES priced it, but none of its spans arrived.
    let priced_at = start + chrono::Duration::seconds(20);
    app.records.hold(System::Mes, order, "priced", priced_at);

    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    let journey = testkit::wait::until("the gap", PATIENCE, || async {
        let journey = app.journey(order).await;
        (!journey["gaps"].as_array()?.is_empty()).then_some(journey)
    })
    .await;
    assert_eq!(journey["status"], "priced");
    assert_eq!(journey["status_source"], "mes-api");
    assert_eq!(journey["stage"], "customer_confirmation");
    assert_eq!(journey["stuck"], false);
    let gap = &journey["gaps"][0];
    assert_eq!(gap["source"], "mes-api");
    assert_eq!(
        (gap["from_status"].as_str(), gap["to_status"].as_str()),
        (Some("registered"), Some("priced"))
    );
    assert_eq!(gap["missing_services"], serde_json::json!(["mes-api"]));
    assert_eq!(
        journey["last_progress"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap(),
        priced_at.trunc_subsecs(6),
        "it last moved when MES priced it"
    );
    let_the_detector_run().await;
    assert!(app.stuck().await.is_empty());
    assert!(app.incidents().await.is_empty(), "nobody is paged");
    assert!(app.webhook.messages().is_empty());

    // A status from a transition span takes over again.
    app.export(&build::request(
        "shop-api",
        vec![transition(order, [2; 16], 1, "confirmed", app.clock.now())],
    ))
    .await;
    let journey = app.journey(order).await;
    assert_eq!(
        (
            journey["status"].as_str(),
            journey["status_source"].as_str()
        ),
        (Some("confirmed"), Some("telemetry"))
    );
}

#[tokio::test]
async fn an_order_whose_system_of_record_cannot_be_asked_is_flagged_and_says_so() {
    let app = spawn_app().await;
    let (refused, unanswered) = (Uuid::now_v7(), Uuid::now_v7());
    let start = app.clock.now();
    app.export(&build::request(
        "shop-api",
        vec![
            transition(refused, [1; 16], 1, "submitted", start),
            transition(unanswered, [2; 16], 1, "pricing", start),
        ],
    ))
    .await;
    app.records.answer(System::Crm, Answering::Failing(503));
    app.records.answer(System::Mes, Answering::Hanging);

    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    let stuck = app.until_stuck(2).await;
    let detail = |id: Uuid| {
        let order = stuck
            .iter()
            .find(|o| o["order_id"] == id.to_string())
            .unwrap();
        assert_eq!(order["stuck_confirmation"], "unconfirmed");
        order["confirmation"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        detail(refused),
        "not confirmed: crm-api could not be asked: it answered HTTP 503"
    );
    assert_eq!(
        detail(unanswered),
        "not confirmed: mes-api could not be asked: it did not answer within 500ms"
    );
    let incident = &incidents_of(&app, refused).await[0];
    assert!(
        incident["summary"]
            .as_str()
            .unwrap()
            .ends_with("it answered HTTP 503"),
        "{incident}"
    );
    let notification = &app.webhook.expect(1).await[0];
    assert_eq!(
        notification["alerts"][0]["labels"]["confirmation"],
        "unconfirmed"
    );
}

#[tokio::test]
async fn a_stuck_order_is_asked_about_again_and_resolved_when_its_system_moved_on_unseen() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let start = app.clock.now();
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 1, "pricing", start)],
    ))
    .await;
    app.records.answer(System::Mes, Answering::Failing(500));
    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    app.until_stuck(1).await;
    let asked = app.records.asked(System::Mes);

    // MES comes back, having priced the order; its spans of that were lost.
    app.records.answer(System::Mes, Answering::Normally);
    app.records
        .hold(System::Mes, order, "priced", app.clock.now());
    app.clock.advance(RECONFIRM_INTERVAL);
    testkit::wait::until("the stuck order resolved", PATIENCE, || async {
        app.stuck().await.is_empty().then_some(())
    })
    .await;
    assert!(app.records.asked(System::Mes) > asked);
    let incident = &incidents_of(&app, order).await[0];
    assert!(!incident["resolved_at"].is_null());
    assert_eq!(
        incident["resolution"],
        "its system of record had moved on: spans of mes-api missing between pricing and priced (mes-api holds priced)"
    );
    let resolved = app.webhook.expect(2).await;
    assert_eq!(resolved[1]["status"], "resolved");
    let journey = app.journey(order).await;
    assert_eq!(
        (journey["status"].as_str(), journey["stuck"].as_bool()),
        (Some("priced"), Some(false))
    );
}

#[tokio::test]
async fn a_refused_transition_does_not_move_the_order() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let start = app.clock.now();
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 1, "pricing", start)],
    ))
    .await;
    // The customer tries to confirm an order that has no price yet: Shop refuses.
    let mut refused = transition(
        order,
        [2; 16],
        1,
        "confirmed",
        start + chrono::Duration::seconds(5),
    );
    refused.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
        code: 2,
        message: String::new(),
    });
    app.export(&build::request("shop-api", vec![refused])).await;
    let journey = app.journey(order).await;
    assert_eq!(journey["status"], "pricing");
    let deadline: chrono::DateTime<Utc> = journey["deadline"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        deadline,
        (start + chrono::Duration::from_std(STUCK_AFTER).unwrap()).trunc_subsecs(6)
    );
}
