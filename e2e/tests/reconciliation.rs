//! Reconciliation of the real services: disagreement injected the ways it happens — a status
//! event dead-lettered in one consumer, a consumer stopped while the others go on, an order
//! missing from CRM — is found, listed with what each system says, counted, paged on as an
//! incident, and repaired by the owner publishing again, after which the systems agree.
//!
//! The services run as processes (open: no identity provider); order-watch reconciles every
//! second and lists a disagreement after three. The faults are `messaging::faults`.

use std::time::Duration;

use e2e::watch::Watch;
use e2e::{PATIENCE, Service, System};
use messaging::faults;
use serde_json::Value;
use uuid::Uuid;

/// How long the systems may disagree here before an order is listed.
const AFTER_SECONDS: f64 = 3.0;

/// The services with `faults` in their environment, and order-watch reconciling them.
async fn reconciled_system(env: &[(&str, &str)]) -> (System, Watch) {
    let system = System::start_with(env).await;
    let watch = Watch::watching(
        &system,
        "",
        &[
            ("ORDER_WATCH_RECONCILE_INTERVAL", "1s"),
            ("ORDER_WATCH_RECONCILE_AFTER", "3s"),
            ("ORDER_WATCH_RECONCILE_RECHECK_INTERVAL", "1s"),
        ],
    )
    .await;
    (system, watch)
}

fn fault(point: &str, subject: &str) -> String {
    format!("{point}@{subject}")
}

fn kinds(listed: &Value) -> Vec<(String, String)> {
    listed["mismatches"]
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

/// Waits until metric `name` with `labels` reads `value` (a gauge refreshed every second, or a
/// counter some replica's round has added to).
async fn until_metric(watch: &Watch, name: &str, labels: &[(&str, &str)], value: f64) {
    testkit::wait::until(&format!("{name}{labels:?} = {value}"), PATIENCE, || async {
        (watch.metric(name, labels).await == value).then_some(())
    })
    .await;
}

/// Waits until the mismatch `labels` (system and kind) is counted once and listed once.
async fn until_counted_and_listed(watch: &Watch, labels: &[(&str, &str)]) {
    until_metric(
        watch,
        "order_watch_reconciliation_mismatches_total",
        labels,
        1.0,
    )
    .await;
    until_metric(
        watch,
        "order_watch_reconciliation_disagreements",
        labels,
        1.0,
    )
    .await;
}

/// The open disagreement incident of the order, once there is one.
async fn until_incident(watch: &Watch, id: Uuid) -> Value {
    testkit::wait::until("the disagreement's incident", PATIENCE, || async {
        watch
            .incidents_of(id)
            .await
            .into_iter()
            .find(|i| i["kind"] == "disagreement" && i["resolved_at"].is_null())
    })
    .await
}

async fn until_incident_resolved(watch: &Watch, id: Uuid) -> Value {
    testkit::wait::until("the disagreement's incident resolved", PATIENCE, || async {
        let incidents = watch.incidents_of(id).await;
        let disagreements: Vec<Value> = incidents
            .into_iter()
            .filter(|i| i["kind"] == "disagreement")
            .collect();
        (disagreements.len() == 1 && !disagreements[0]["resolved_at"].is_null())
            .then(|| disagreements[0].clone())
    })
    .await
}

/// Waits until the systems converge after a repair: `service` (`crm`, `mes`) holds `status`,
/// order-watch sees every system agree on it, the disagreement's incident is resolved and the
/// mismatch `labels` is no longer listed. The resolved incident.
async fn until_converged(
    system: &System,
    watch: &Watch,
    id: Uuid,
    (service, status): (&str, &str),
    labels: &[(&str, &str)],
) -> Value {
    system.until_status_in(service, id, status).await;
    watch.until_agreed(id, status).await;
    let resolved = until_incident_resolved(watch, id).await;
    until_metric(
        watch,
        "order_watch_reconciliation_disagreements",
        labels,
        0.0,
    )
    .await;
    resolved
}

async fn repair(watch: &Watch, id: Uuid) -> Value {
    let (status, repair) = watch
        .post(&format!("/api/reconciliation/{id}/repair"))
        .await;
    assert_eq!(status, 200, "{repair}");
    assert_eq!(repair["outcome"], "republished", "{repair}");
    repair
}

/// How often the consumer `queue` of `service` has skipped message `message_id` as a
/// duplicate (its inbox row).
async fn duplicates(system: &System, service: Service, queue: &str, message_id: &str) -> i32 {
    let pool = system.database(service).await;
    let message_id: Uuid = message_id.parse().unwrap();
    testkit::wait::until("the copy consumed", PATIENCE, || async {
        let duplicates: Option<i32> = sqlx::query_scalar(
            "SELECT duplicates FROM messaging.inbox WHERE consumer = $1 AND message_id = $2",
        )
        .bind(queue)
        .bind(message_id)
        .fetch_optional(&pool)
        .await
        .unwrap();
        duplicates.filter(|&d| d > 0)
    })
    .await
}

#[tokio::test]
async fn an_order_missing_from_crm_is_listed_missing_and_shop_announcing_it_again_makes_the_systems_agree()
 {
    let point = fault(faults::CONSUMER_DEAD_LETTER, "crm.orders/order.created");
    let (system, watch) = reconciled_system(&[(faults::ENV, &point)]).await;
    let id = system.place_order("torus.STL", "gold_585").await.id;
    system.until_shop_status(id, "submitted").await;

    let listed = watch.until_listed(id).await;
    assert_eq!(
        kinds(&listed),
        [("crm-api".into(), "missing".into())],
        "{listed}"
    );
    assert_eq!(listed["status"], "submitted");
    assert_eq!(listed["owner"], "shop-api");
    assert_eq!(listed["views"]["shop-api"]["status"], "submitted");
    assert!(listed["views"]["crm-api"].is_null(), "{listed}");
    assert!(
        listed["views"]["mes-api"].is_null(),
        "not told yet: not missing"
    );
    assert!(listed["disagreeing_seconds"].as_f64().unwrap() >= AFTER_SECONDS);
    assert_eq!(
        listed["summary"],
        "the owner shop-api holds submitted; crm-api does not know the order"
    );
    let incident = until_incident(&watch, id).await;
    assert!(
        incident["summary"]
            .as_str()
            .unwrap()
            .contains("crm-api does not know the order"),
        "{incident}"
    );
    let missing = [("system", "crm-api"), ("kind", "missing")];
    until_counted_and_listed(&watch, &missing).await;
    let instant = [("window", "instant")];
    until_metric(
        &watch,
        "order_watch_reconciliation_accuracy_ratio",
        &instant,
        0.0,
    )
    .await;

    assert_eq!(
        watch
            .metric("order_watch_reconciliation_enabled", &[])
            .await,
        1.0,
        "a reconciling replica says so"
    );
    let exposed = watch.metrics().await;
    let behind: Vec<f64> =
        e2e::watch::samples(&exposed, "order_watch_reconciliation_behind_seconds", &[]).collect();
    assert_eq!(behind, [0.0; 3], "every system read to the end: {exposed}");
    let repaired = repair(&watch, id).await;
    assert_eq!(repaired["asked"][0]["system"], "shop-api");
    let sent: Vec<&str> = repaired["asked"][0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["routing_key"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["order.created", "order.status_changed.submitted"]);

    // CRM registers the order, MES prices it, and every system says so.
    let resolved = until_converged(&system, &watch, id, ("crm", "priced"), &missing).await;
    assert_eq!(
        resolved["resolution"],
        "the systems agree again: all hold priced"
    );
    until_metric(
        &watch,
        "order_watch_reconciliation_accuracy_ratio",
        &instant,
        1.0,
    )
    .await;
    let day = watch
        .metric(
            "order_watch_reconciliation_accuracy_ratio",
            &[("window", "24h")],
        )
        .await;
    assert!(0.0 < day && day < 1.0, "disagreeing part of the day: {day}");
    let (_, audit) = watch.get("/api/reconciliation/repairs").await;
    assert_eq!(audit[0]["order_id"], id.to_string());
    assert_eq!(audit[0]["requested_by"], "anonymous ()");
    assert_eq!(audit[0]["outcome"], "republished");
}

#[tokio::test]
async fn a_status_event_dead_lettered_in_one_consumer_leaves_it_lagging_until_the_owner_publishes_it_again()
 {
    let point = fault(
        faults::CONSUMER_DEAD_LETTER,
        "crm.orders/order.status_changed.priced",
    );
    let (system, watch) = reconciled_system(&[(faults::ENV, &point)]).await;
    let id = system.place_order("torus.STL", "gold_585").await.id;
    system.until_shop_status(id, "priced").await;
    testkit::wait::until("the dead letter", PATIENCE, || async {
        let dead: Vec<_> = system.dead_letters().await;
        dead.iter()
            .any(|(queue, _)| *queue == "crm.orders")
            .then_some(())
    })
    .await;

    let listed = watch.until_listed(id).await;
    assert_eq!(
        kinds(&listed),
        [("crm-api".into(), "lagging".into())],
        "{listed}"
    );
    assert_eq!(listed["status"], "priced");
    assert_eq!(listed["owner"], "mes-api");
    assert_eq!(listed["views"]["crm-api"]["status"], "pricing");
    for agreeing in ["shop-api", "mes-api", "order-watch"] {
        assert_eq!(listed["views"][agreeing]["status"], "priced", "{agreeing}");
    }
    until_incident(&watch, id).await;
    let lagging = [("system", "crm-api"), ("kind", "lagging")];
    until_counted_and_listed(&watch, &lagging).await;

    let repaired = repair(&watch, id).await;
    assert_eq!(repaired["asked"][0]["system"], "mes-api");
    let message = &repaired["asked"][0]["messages"][0];
    assert_eq!(message["routing_key"], "order.status_changed.priced");

    until_converged(&system, &watch, id, ("crm", "priced"), &lagging).await;
    // Shop had the event: it dropped the copy.
    let message_id = message["message_id"].as_str().unwrap();
    assert_eq!(
        duplicates(&system, Service::Shop, "shop.status", message_id).await,
        1
    );
    // The repaired agreement took longer than the threshold: MES priced it before CRM had it.
    let took = watch
        .metric(
            "order_watch_reconciliation_agreement_duration_seconds_sum",
            &[("owner", "mes-api")],
        )
        .await;
    assert!(took >= AFTER_SECONDS, "{took}");
    assert_eq!(
        watch
            .metric(
                "order_watch_reconciliation_mismatches_total",
                &[("system", "crm-api"), ("kind", "lagging")]
            )
            .await,
        1.0,
        "counted once however often it was compared"
    );
}

#[tokio::test]
async fn a_consumer_stopped_while_the_others_go_on_lags_and_the_republished_copy_is_dropped_when_it_returns()
 {
    let point = fault(faults::CONSUMER_HOLD, "mes.production");
    let (mut system, watch) = reconciled_system(&[(faults::ENV, &point)]).await;
    let id = system.place_order("torus.STL", "gold_585").await.id;
    system.until_shop_status(id, "priced").await;
    system.confirm(id).await;
    system.until_status_in("crm", id, "confirmed").await;

    let listed = watch.until_listed(id).await;
    assert_eq!(
        kinds(&listed),
        [("mes-api".into(), "lagging".into())],
        "{listed}"
    );
    assert_eq!(listed["status"], "confirmed");
    assert_eq!(listed["owner"], "shop-api");
    assert_eq!(listed["views"]["mes-api"]["status"], "priced");
    let lagging = [("system", "mes-api"), ("kind", "lagging")];
    until_counted_and_listed(&watch, &lagging).await;

    // Asked while MES still does not consume: the copy waits in its queue beside the original.
    let repaired = repair(&watch, id).await;
    assert_eq!(repaired["asked"][0]["system"], "shop-api");
    let confirmed = repaired["asked"][0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["routing_key"] == "order.status_changed.confirmed")
        .cloned()
        .expect("Shop's confirmation went out again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(system.mes_order(id).await["status"], "priced");

    // MES consumes again: it applies the confirmation once and drops the copy.
    system.restart_on_its_port(Service::Mes).await;
    until_converged(&system, &watch, id, ("mes", "confirmed"), &lagging).await;
    let message_id = confirmed["message_id"].as_str().unwrap();
    assert_eq!(
        duplicates(&system, Service::Mes, "mes.production", message_id).await,
        1
    );
}
