use std::time::Duration;

use chrono::Utc;
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{STUCK_AFTER, TestApp, spawn_app, spawn_on, transition};

const PATIENCE: Duration = Duration::from_secs(10);

/// Lets the detector run on the current clock and checks, twice, that nothing is stuck.
async fn assert_nothing_stuck(app: &TestApp) {
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(app.stuck().await.is_empty());
    }
}

#[tokio::test]
async fn an_order_silent_past_its_stages_threshold_is_stuck_and_opens_one_incident() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let start = app.clock.now();
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 1, "pricing", start)],
    ))
    .await;

    app.clock.advance(STUCK_AFTER - Duration::from_secs(1));
    assert_nothing_stuck(&app).await;

    app.clock.advance(Duration::from_secs(2));
    let stuck = app.until_stuck(1).await;
    assert_eq!(stuck[0]["order_id"], order.to_string());
    assert_eq!(stuck[0]["stage"], "pricing");
    assert_eq!(stuck[0]["status"], "pricing");
    assert!(stuck[0]["silent_seconds"].as_f64().unwrap() >= STUCK_AFTER.as_secs_f64());

    // Time passes; still one incident.
    app.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let incidents = app.incidents().await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["kind"], "stuck_order");
    assert_eq!(incidents[0]["order_id"], order.to_string());
    assert!(incidents[0]["resolved_at"].is_null());

    let notifications = app.webhook.expect(1).await;
    assert_eq!(notifications[0]["version"], "4");
    assert_eq!(notifications[0]["status"], "firing");
    assert_eq!(
        notifications[0]["alerts"][0]["labels"]["alertname"],
        "OrderStuck"
    );
    assert_eq!(notifications[0]["alerts"][0]["labels"]["stage"], "pricing");
}

#[tokio::test]
async fn a_new_span_clears_stuck_and_resolves_the_incident() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    app.export(&build::request(
        "crm-api",
        vec![transition(order, [1; 16], 1, "registered", app.clock.now())],
    ))
    .await;
    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    app.until_stuck(1).await;

    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 2, "pricing", app.clock.now())],
    ))
    .await;
    assert!(app.stuck().await.is_empty());
    let incidents = app.incidents().await;
    assert!(!incidents[0]["resolved_at"].is_null());
    let notifications = app.webhook.expect(2).await;
    assert_eq!(notifications[1]["status"], "resolved");
    assert_eq!(app.journey(order).await["stage"], "pricing");
}

#[tokio::test]
async fn each_stage_has_its_own_threshold() {
    let app = spawn_app().await;
    let waiting_for_customer = Uuid::now_v7();
    app.export(&build::request(
        "mes-api",
        vec![transition(
            waiting_for_customer,
            [1; 16],
            1,
            "priced",
            app.clock.now(),
        )],
    ))
    .await;
    // Far past the machine stages' threshold, well within a week for a customer.
    app.clock.advance(Duration::from_secs(24 * 3600));
    assert_nothing_stuck(&app).await;
    app.clock.advance(Duration::from_secs(7 * 24 * 3600));
    let stuck = app.until_stuck(1).await;
    assert_eq!(stuck[0]["stage"], "customer_confirmation");
}

#[tokio::test]
async fn finished_orders_never_get_stuck() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 1, "rejected", app.clock.now())],
    ))
    .await;
    app.clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert_nothing_stuck(&app).await;
    let journey = app.journey(order).await;
    assert_eq!(
        (journey["terminal"].as_bool(), journey["deadline"].is_null()),
        (Some(true), true)
    );
}

#[tokio::test]
async fn deadlines_survive_a_restart() {
    let app = spawn_app().await;
    let (database, clock, webhook, records) = (
        app.database.clone(),
        app.clock.clone(),
        app.webhook.clone(),
        app.records.clone(),
    );
    let order = Uuid::now_v7();
    app.export(&build::request(
        "shop-api",
        vec![transition(order, [1; 16], 1, "created", clock.now())],
    ))
    .await;
    app.stop().await;

    clock.advance(STUCK_AFTER + Duration::from_secs(1));
    let restarted = spawn_on(database, clock, webhook, records).await;
    let stuck = restarted.until_stuck(1).await;
    assert_eq!(stuck[0]["order_id"], order.to_string());
}

#[tokio::test]
async fn two_replicas_on_one_database_open_one_incident_per_stuck_order() {
    let first = spawn_app().await;
    let second = first.replica().await;
    let orders: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for (i, order) in orders.iter().enumerate() {
        let replica = if i % 2 == 0 { &first } else { &second };
        replica
            .export(&build::request(
                "crm-api",
                vec![transition(
                    *order,
                    [1; 16],
                    1,
                    "registered",
                    first.clock.now(),
                )],
            ))
            .await;
    }
    first.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    first.until_stuck(20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(first.incidents().await.len(), 20);
    let notified: usize = first
        .webhook
        .expect(1)
        .await
        .iter()
        .map(|n| n["alerts"].as_array().unwrap().len())
        .sum();
    assert_eq!(notified, 20);
}

#[tokio::test]
async fn alertmanager_alerts_become_incidents_and_resolve() {
    let app = spawn_app().await;
    let alert = |status: &str| {
        serde_json::json!({
            "version": "4", "status": status, "receiver": "order-watch",
            "alerts": [{
                "status": status,
                "labels": {"alertname": "HighDeadLetterRate", "queue": "mes.pricing"},
                "annotations": {"summary": "dead letters in mes.pricing"},
                "startsAt": Utc::now().to_rfc3339(),
                "fingerprint": "c0ffee"
            }]
        })
    };
    for _ in 0..2 {
        let response = app
            .client
            .post(app.api("/api/alerts"))
            .json(&alert("firing"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let incidents = app.incidents().await;
    assert_eq!(incidents.len(), 1, "the same alert twice is one incident");
    assert_eq!(incidents[0]["summary"], "dead letters in mes.pricing");
    app.client
        .post(app.api("/api/alerts"))
        .json(&alert("resolved"))
        .send()
        .await
        .unwrap();
    assert!(!app.incidents().await[0]["resolved_at"].is_null());

    let bad = app
        .client
        .post(app.api("/api/alerts"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn old_journeys_are_deleted_after_the_retention_period() {
    let app = spawn_app().await;
    let old = Uuid::now_v7();
    let recent = Uuid::now_v7();
    let now = app.clock.now();
    app.export(&build::request(
        "shop-api",
        vec![
            transition(
                old,
                [1; 16],
                1,
                "delivered",
                now - chrono::Duration::days(40),
            ),
            transition(
                recent,
                [2; 16],
                1,
                "delivered",
                now - chrono::Duration::days(1),
            ),
        ],
    ))
    .await;
    let pool = app.database.connect().await;
    // The service purges at start-up too, which may already have taken the old journey, and a
    // purge skips rows another transaction holds (the detector's claim, a write): the end state
    // is what counts, reached by purging until the old journey is gone.
    let old_journey = format!("/api/orders/{old}/journey");
    testkit::wait::until("the old journey purged", PATIENCE, || async {
        let deleted = order_watch::retention::purge(&pool, now - chrono::Duration::days(30))
            .await
            .unwrap();
        assert!(deleted <= 1, "only the old journey goes ({deleted})");
        (app.get(&old_journey).await.0 == 404).then_some(())
    })
    .await;
    assert_eq!(app.journey(recent).await["span_count"], 1);
}
