//! Reconciliation against stand-in systems and a manual clock: which holder disagrees and how,
//! when a disagreement is listed and opens an incident, how agreement closes it, what a repair
//! asks and what its audit says, and that one replica runs a round at a time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::System;
use serde_json::Value;
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{
    Answering, RECONCILE_AFTER, RECONCILE_INTERVAL, TestApp, spawn_app, spawn_reconciling_app,
    transition,
};

const PATIENCE: Duration = Duration::from_secs(10);

impl TestApp {
    /// Runs rounds (one per interval of the manual clock) until `done` holds for the
    /// reconciliation view (every disagreement, listed or not); returns that view.
    async fn reconciled_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        testkit::wait::until(what, PATIENCE, || async {
            self.clock.advance(RECONCILE_INTERVAL);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (status, view) = self.get("/api/reconciliation?all=true").await;
            assert_eq!(status, 200, "{view}");
            done(&view).then_some(view)
        })
        .await
    }

    /// Asks for a repair of `order`'s disagreement: the status and the answer.
    async fn repair(&self, order: Uuid) -> (u16, Value) {
        self.post(&format!("/api/reconciliation/{order}/repair"))
            .await
    }

    /// Every system holds `order` in `statuses` (Shop's, CRM's and MES's; `None`: unknown),
    /// recorded at `at`, and order-watch saw the spans of the moves up to `seen`.
    async fn hold(&self, order: Uuid, statuses: [Option<&str>; 3], seen: &str, at: DateTime<Utc>) {
        for (system, status) in System::ALL.into_iter().zip(statuses) {
            match status {
                Some(status) => self.records.hold(system, order, status, at),
                None => self.records.forget(system, order),
            }
        }
        self.export(&build::request(
            "mes-api",
            vec![transition(order, order.into_bytes(), 1, seen, at)],
        ))
        .await;
    }
}

fn disagreement(view: &Value, order: Uuid) -> Option<&Value> {
    view["disagreements"]
        .as_array()?
        .iter()
        .find(|d| d["order_id"] == order.to_string())
}

fn kinds(disagreement: &Value) -> Vec<(String, String)> {
    disagreement["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["system"].as_str().unwrap().to_owned(),
                m["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_system_lagging_past_the_threshold_is_listed_with_one_incident_until_the_systems_agree() {
    let app = spawn_reconciling_app().await;
    let lagging = Uuid::now_v7();
    let agreeing = Uuid::now_v7();
    let t0 = app.clock.now();
    app.hold(
        lagging,
        [Some("pricing"), Some("registered"), Some("pricing")],
        "pricing",
        t0,
    )
    .await;
    app.hold(
        agreeing,
        [Some("pricing"), Some("pricing"), Some("pricing")],
        "pricing",
        t0,
    )
    .await;

    let view = app
        .reconciled_until("the lag seen", |view| {
            disagreement(view, lagging).is_some() && view["tracked"] == 2
        })
        .await;
    let seen = disagreement(&view, lagging).unwrap();
    assert_eq!(kinds(seen), [("crm-api".into(), "lagging".into())]);
    assert_eq!(seen["status"], "pricing");
    assert_eq!(seen["owner"], "mes-api");
    assert_eq!(seen["views"]["crm-api"]["status"], "registered");
    assert_eq!(seen["views"]["order-watch"]["status"], "pricing");
    assert!(seen["listed_at"].is_null(), "not past the threshold yet");
    assert_eq!(view["agreeing"], 1);
    assert_eq!(view["accuracy"], 0.5);
    let (_, listed) = app.get("/api/reconciliation").await;
    assert_eq!(listed["disagreements"], serde_json::json!([]));
    assert!(app.incidents().await.is_empty());
    // Asked about one order, the answer has its disagreement alone, or none.
    let (_, one) = app
        .get(&format!("/api/reconciliation?all=true&order_id={lagging}"))
        .await;
    assert_eq!(one["disagreements"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["disagreements"][0]["order_id"], lagging.to_string());
    let (_, none) = app
        .get(&format!("/api/reconciliation?all=true&order_id={agreeing}"))
        .await;
    assert_eq!(none["disagreements"], serde_json::json!([]));

    // Past the threshold: listed, with one incident, announced.
    app.clock.advance(RECONCILE_AFTER);
    let view = app
        .reconciled_until("the lag listed", |view| {
            disagreement(view, lagging).is_some_and(|d| !d["listed_at"].is_null())
        })
        .await;
    let listed = disagreement(&view, lagging).unwrap();
    let since: DateTime<Utc> = listed["disagreeing_since"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (since - t0).abs() < chrono::Duration::milliseconds(1),
        "{since} is {t0}"
    );
    assert!(listed["disagreeing_seconds"].as_f64().unwrap() >= RECONCILE_AFTER.as_secs_f64());
    assert_eq!(
        listed["summary"],
        "the owner mes-api holds pricing; crm-api lags behind (holds registered)"
    );
    // The floor's live reading carries it as the API lists it.
    let (_, floor) = app.get("/api/floor").await;
    let on_floor = &floor["reconciliation"];
    assert_eq!(on_floor["listed_orders"], 1, "{on_floor}");
    assert_eq!(
        on_floor["disagreements"][0]["order_id"],
        lagging.to_string()
    );
    assert_eq!(
        on_floor["threshold_seconds"],
        RECONCILE_AFTER.as_secs(),
        "{on_floor}"
    );
    let incidents = app.incidents().await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["kind"], "disagreement");
    assert_eq!(incidents[0]["order_id"], lagging.to_string());
    assert_eq!(listed["incident_id"], incidents[0]["id"]);
    let notifications = app.webhook.expect(1).await;
    let alert = &notifications[0]["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "OrderDisagreement");
    assert_eq!(alert["labels"]["mismatches"], "crm-api:lagging");

    // Compared again a few times: still one incident.
    app.clock.advance(Duration::from_secs(30));
    app.reconciled_until("another look", |_| true).await;
    assert_eq!(app.incidents().await.len(), 1);

    // CRM catches up: they agree, the incident resolves.
    app.records
        .hold(System::Crm, lagging, "pricing", app.clock.now());
    let view = app
        .reconciled_until("agreement", |view| view["agreeing"] == 2)
        .await;
    assert_eq!(view["disagreements"], serde_json::json!([]));
    assert_eq!(view["accuracy"], 1.0);
    let incidents = app.incidents().await;
    assert_eq!(
        incidents[0]["resolution"],
        "the systems agree again: all hold pricing"
    );
    let notifications = app.webhook.expect(2).await;
    assert_eq!(notifications[1]["status"], "resolved");
}

#[tokio::test]
async fn a_repair_asks_the_owner_to_republish_and_the_audit_says_who_asked_and_what_came_of_it() {
    let app = spawn_reconciling_app().await;
    let order = Uuid::now_v7();
    let t0 = app.clock.now();
    app.hold(
        order,
        [Some("priced"), Some("pricing"), Some("priced")],
        "priced",
        t0,
    )
    .await;

    let (status, repair) = app.repair(order).await;
    assert_eq!(status, 200, "{repair}");
    assert_eq!(repair["outcome"], "republished");
    assert_eq!(repair["reference"], "priced");
    assert_eq!(repair["owner"], "mes-api");
    assert_eq!(repair["requested_by"], "anonymous ()");
    assert_eq!(repair["asked"][0]["system"], "mes-api");
    assert_eq!(
        repair["detail"],
        "mes-api sent 1 message again (order.status_changed.priced)"
    );
    assert_eq!(app.records.republished(), vec![(System::Mes, order)]);

    // A system missing the order: the one that introduces orders to it is asked first.
    let missing = Uuid::now_v7();
    app.hold(missing, [Some("submitted"), None, None], "submitted", t0)
        .await;
    let (status, repair) = app.repair(missing).await;
    assert_eq!(status, 200, "{repair}");
    assert_eq!(app.records.republished()[1], (System::Shop, missing));

    // Nothing to do, and nothing republishing can do: refused, and audited all the same.
    app.records
        .hold(System::Crm, order, "priced", app.clock.now());
    let (status, body) = app.repair(order).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("systems_agree")),
        "{body}"
    );
    let ahead = Uuid::now_v7();
    app.hold(
        ahead,
        [Some("confirmed"), Some("priced"), Some("priced")],
        "priced",
        t0,
    )
    .await;
    app.records.hold(System::Shop, ahead, "priced", t0);
    app.records.hold(System::Crm, ahead, "confirmed", t0);
    let (status, body) = app.repair(ahead).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_repairable")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("crm-api is ahead of the owner (holds confirmed)"),
        "{body}"
    );
    let (status, body) = app
        .post(&format!("/api/reconciliation/{}/repair", Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("order_not_found"))
    );

    // An owner that cannot be asked: the repair failed, and says why.
    app.records
        .hold(System::Crm, order, "pricing", app.clock.now());
    app.records.answer(System::Mes, Answering::Failing(503));
    let (status, repair) = app.repair(order).await;
    assert_eq!(
        (status, repair["outcome"].as_str()),
        (200, Some("failed")),
        "{repair}"
    );
    assert!(
        repair["detail"]
            .as_str()
            .unwrap()
            .starts_with("the order could not be compared: mes-api could not be asked"),
        "{repair}"
    );

    let (status, audit) = app.get("/api/reconciliation/repairs").await;
    assert_eq!(status, 200);
    let outcomes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "failed",
            "not_repairable",
            "not_needed",
            "republished",
            "republished"
        ]
    );
}

#[tokio::test]
async fn a_lagging_order_watch_takes_the_owners_record_with_a_telemetry_gap() {
    let app = spawn_reconciling_app().await;
    let order = Uuid::now_v7();
    let t0 = app.clock.now();
    // MES's spans of pricing were lost: order-watch saw registration only.
    app.hold(
        order,
        [Some("priced"), Some("priced"), Some("priced")],
        "registered",
        t0,
    )
    .await;
    let (status, repair) = app.repair(order).await;
    assert_eq!(status, 200, "{repair}");
    assert_eq!(repair["asked"][0]["outcome"], "adopted");
    assert!(app.records.republished().is_empty(), "no system lags");
    let journey = app.journey(order).await;
    assert_eq!(journey["status"], "priced");
    assert_eq!(journey["status_source"], "mes-api");
    assert_eq!(
        journey["gaps"][0]["missing_services"],
        serde_json::json!(["mes-api"])
    );
    app.reconciled_until("agreement", |view| view["agreeing"] == 1)
        .await;
}

#[tokio::test]
async fn an_order_a_system_cannot_be_asked_about_is_compared_once_it_answers() {
    let app = spawn_reconciling_app().await;
    app.records.answer(System::Crm, Answering::Failing(503));
    let order = Uuid::now_v7();
    let t0 = app.clock.now();
    app.hold(
        order,
        [Some("pricing"), Some("registered"), Some("pricing")],
        "pricing",
        t0,
    )
    .await;
    // Past the threshold, and never compared: neither listed nor counted.
    app.clock.advance(RECONCILE_AFTER * 2);
    for _ in 0..3 {
        let view = app.reconciled_until("a round", |_| true).await;
        assert_eq!(view["disagreements"], serde_json::json!([]), "{view}");
        assert_eq!(view["tracked"], 0);
    }
    app.records.answer(System::Crm, Answering::Normally);
    let view = app
        .reconciled_until("the order compared", |view| {
            disagreement(view, order).is_some()
        })
        .await;
    let found = disagreement(&view, order).unwrap();
    assert_eq!(kinds(found), [("crm-api".into(), "lagging".into())]);
    assert!(
        !found["listed_at"].is_null(),
        "it began before the threshold: listed at once"
    );
}

#[tokio::test]
async fn one_replica_runs_a_round_at_a_time_and_one_that_lost_its_lease_records_nothing() {
    use order_watch::reconcile::store::{claim_lease, finish_round};
    let app = spawn_app().await;
    let pool = app.database.connect().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let now = Utc::now();
    let minutes = |m| now + chrono::Duration::minutes(m);
    assert!(claim_lease(&pool, a, now, minutes(5)).await.unwrap());
    assert!(
        !claim_lease(&pool, b, now, minutes(5)).await.unwrap(),
        "A holds it"
    );
    let mut tx = pool.begin().await.unwrap();
    assert!(finish_round(&mut tx, a, now, minutes(1)).await.unwrap());
    tx.commit().await.unwrap();
    assert!(
        !claim_lease(&pool, b, now, minutes(5)).await.unwrap(),
        "not due yet"
    );
    assert!(claim_lease(&pool, b, minutes(1), minutes(6)).await.unwrap());
    // A's next round, past B's lease: B gave up; A's claim wins, B's results are dropped.
    assert!(
        claim_lease(&pool, a, minutes(7), minutes(12))
            .await
            .unwrap()
    );
    let mut tx = pool.begin().await.unwrap();
    assert!(
        !finish_round(&mut tx, b, minutes(7), minutes(8))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_reading_stopped_at_its_page_limit_says_how_far_behind_it_is_until_it_reads_to_the_end() {
    let app = spawn_app().await;
    let pool = app.database.connect().await;
    let now = app.clock.now();
    sqlx::query(
        "INSERT INTO reconcile_cursors (system, since, read_at, caught_up) \
         VALUES ('crm-api', $1, $2, false), ('shop-api', $1, $2, true)",
    )
    .bind(now - chrono::Duration::minutes(10))
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();

    let (status, view) = app.get("/api/reconciliation").await;
    assert_eq!(status, 200, "{view}");
    let behind = &view["behind_seconds"];
    let crm = behind["crm-api"].as_f64().unwrap();
    assert!((600.0..610.0).contains(&crm), "{behind}");
    assert_eq!(
        behind["shop-api"], 0.0,
        "caught up: not behind, however old its cursor"
    );
    assert_eq!(behind["mes-api"], 0.0, "no cursor yet");

    sqlx::query("UPDATE reconcile_cursors SET caught_up = true")
        .execute(&pool)
        .await
        .unwrap();
    let (_, view) = app.get("/api/reconciliation").await;
    assert_eq!(view["behind_seconds"]["crm-api"], 0.0, "{view}");
}
