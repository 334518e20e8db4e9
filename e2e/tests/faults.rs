//! Delivery guarantees under faults that touch one test's own system only (its processes, its
//! broker connections, its storage), so these tests run in parallel. Each ends with the checker:
//! every order acknowledged to the client completed or is visibly dead-lettered; lost = 0,
//! applied twice = 0, unexpected = 0.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use e2e::checker::{self, Verdict};
use e2e::{PATIENCE, Service, System};
use lapin::types::FieldTable;
use messaging::Party;
use messaging::crash;
use messaging::publisher::{Outgoing, Publisher};
use testkit::otlp::kind;
use testkit::process::binary;
use testkit::s3::S3Server;
use uuid::Uuid;

/// Places `count` orders of `fixture`, all expected to end `status`.
async fn place(
    system: &System,
    count: usize,
    fixture: &str,
    status: &'static str,
) -> BTreeMap<Uuid, &'static str> {
    let mut placed = BTreeMap::new();
    for _ in 0..count {
        placed.insert(system.place_order(fixture, "gold_585").await.id, status);
    }
    placed
}

async fn verdict(system: &System, expected: &BTreeMap<Uuid, &'static str>) -> Verdict {
    let verdict = checker::check(system, expected, PATIENCE).await;
    verdict.assert_clean();
    verdict
}

/// Waits for `service` to die at its crash point, then brings it back.
async fn crash_and_restart(system: &mut System, service: Service) {
    let status = system
        .process(service)
        .exited_within(PATIENCE)
        .await
        .unwrap_or_else(|| panic!("{} did not reach its crash point", service.binary()));
    assert!(!status.success(), "{} crashed: {status}", service.binary());
    system.restart(service).await;
}

#[tokio::test]
async fn a_consumer_killed_after_its_commit_skips_the_redelivered_message() {
    let point = format!("{}@crm.orders", crash::CONSUMER_AFTER_COMMIT);
    let mut system = System::start_with(&[(crash::ENV, &point)]).await;
    let expected = place(&system, 1, "torus.STL", "priced").await;

    crash_and_restart(&mut system, Service::Crm).await;

    let verdict = verdict(&system, &expected).await;
    assert_eq!(verdict.completed, 1);
    assert!(
        verdict.duplicates_delivered >= 1,
        "the message committed before the crash came again and was skipped: {verdict}"
    );
}

#[tokio::test]
async fn a_consumer_killed_before_its_commit_applies_the_redelivered_message_once() {
    let point = format!("{}@mes.pricing", crash::CONSUMER_BEFORE_COMMIT);
    let mut system = System::start_with(&[(crash::ENV, &point)]).await;
    let expected = place(&system, 1, "20mm-xyz-cube.stl", "priced").await;

    crash_and_restart(&mut system, Service::Mes).await;

    let verdict = verdict(&system, &expected).await;
    assert_eq!(verdict.completed, 1);
}

#[tokio::test]
async fn a_message_published_twice_by_a_relay_killed_before_marking_it_sent_is_applied_once() {
    let point = format!("{}@order.created", crash::RELAY_AFTER_CONFIRM);
    let mut system = System::start_with(&[(crash::ENV, &point)]).await;
    // Shop may die before its answer is out: the client then repeats the request with the
    // same Idempotency-Key, as a careful client does.
    let key = [("Idempotency-Key", "relay-crash")];
    let first = system.try_place_order("torus.STL", "gold_585", &key).await;
    crash_and_restart(&mut system, Service::Shop).await;
    let placed = match first {
        Ok(placed) => placed,
        Err(_) => {
            system
                .place_order_with_headers("torus.STL", "gold_585", &key)
                .await
        }
    };
    let expected = BTreeMap::from([(placed.id, "priced")]);

    let verdict = verdict(&system, &expected).await;
    assert_eq!(verdict.completed, 1);
    assert!(
        verdict.duplicates_delivered >= 1,
        "CRM received order.created twice and skipped the copy: {verdict}"
    );
}

#[tokio::test]
async fn cutting_the_broker_connections_while_orders_flow_loses_nothing() {
    let system = System::start().await;
    let mut expected = BTreeMap::new();
    for round in 0..4 {
        expected.extend(place(&system, 3, "torus.STL", "priced").await);
        if round < 3 {
            // Each service holds one connection; cut them once all are back.
            testkit::wait::until("the services to reconnect", PATIENCE, || async {
                (testkit::faults::broker_connections(&system.namespace).await >= 3).then_some(())
            })
            .await;
            let cut = testkit::faults::cut_broker_connections(&system.namespace).await;
            assert!(cut >= 3, "every service's connection was cut ({cut})");
        }
    }

    let verdict = verdict(&system, &expected).await;
    assert_eq!(verdict.completed, expected.len(), "{verdict}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_a_restart_finishes_the_rest() {
    let mut system = System::start().await;
    let expected = place(&system, 5, "torus.STL", "priced").await;

    for service in [Service::Mes, Service::Crm, Service::Shop] {
        assert!(
            system.process(service).stop(Duration::from_secs(20)).await,
            "{} exits cleanly on SIGTERM",
            service.binary()
        );
    }
    for service in Service::ALL {
        system.restart(service).await;
    }

    let verdict = verdict(&system, &expected).await;
    assert_eq!(verdict.completed, expected.len(), "{verdict}");
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_at_once_and_an_operator_sees_and_replays_it() {
    let system = System::start().await;
    // Sent by CRM's account, whose word a price request is: only its body is wrong.
    let broker = testkit::broker::connect_as(&system.broker, Service::Crm.party());
    let message_id = Uuid::now_v7();
    let publisher = Publisher::open(&broker).await.unwrap();
    publisher
        .publish(
            &broker.names().orders_exchange(),
            "order.pricing_requested",
            Outgoing {
                message_id,
                kind: "order.pricing_requested",
                body: b"{\"not\": \"an envelope\"",
                headers: FieldTable::default(),
                occurred_at: Utc::now(),
            },
        )
        .await
        .unwrap();

    let cli = |args: &[&str]| {
        let output = std::process::Command::new(binary("hallmark"))
            .args(args)
            .envs(e2e::broker_env(&system, Party::Operator))
            .output()
            .expect("the hallmark command runs");
        assert!(output.status.success(), "hallmark {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let listed = testkit::wait::until("the dead letter", PATIENCE, || async {
        let listed: serde_json::Value =
            serde_json::from_str(&cli(&["dlq", "list", "mes.pricing"])).unwrap();
        listed
            .as_array()
            .is_some_and(|l| !l.is_empty())
            .then_some(listed)
    })
    .await;
    assert_eq!(listed[0]["message_id"], message_id.to_string());
    assert_eq!(listed[0]["error_code"], "message_malformed");
    assert_eq!(listed[0]["retries"], 0, "hopeless at once: no retry spent");
    assert!(
        cli(&["dlq", "list"]).contains("mes.pricing\t1"),
        "the overview counts it"
    );

    // The process span says where it went.
    let span = testkit::wait::until("the consumer span", PATIENCE, || async {
        system.otlp.spans().into_iter().find(|s| {
            s.kind == kind::CONSUMER
                && s.attr("messaging.message.id") == Some(message_id.to_string())
        })
    })
    .await;
    assert_eq!(
        span.attr("hallmark.error.code").as_deref(),
        Some("message_malformed")
    );
    assert!(
        span.attr("hallmark.dlq.route")
            .is_some_and(|r| r.ends_with("mes.pricing.dlq")),
        "{span:?}"
    );

    // Replayed, it is still poison: back in the dead-letter queue, its replay counted.
    let replayed = cli(&["dlq", "replay", "mes.pricing", &message_id.to_string()]);
    assert!(replayed.contains(&message_id.to_string()), "{replayed}");
    testkit::wait::until("the replayed copy to fail again", PATIENCE, || async {
        let listed: serde_json::Value =
            serde_json::from_str(&cli(&["dlq", "list", "mes.pricing"])).unwrap();
        (listed[0]["replays"] == 1).then_some(())
    })
    .await;
}

/// The calc engine replaced by a shell script (`MES_CALC_BIN`).
fn engine_script(dir: &tempfile::TempDir, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("mes-calc");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn a_crashing_calc_engine_fails_the_order_with_a_reason_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_script(&dir, "echo 'segmentation fault' >&2; kill -SEGV $$");
    let system = System::start_with(&[("MES_CALC_BIN", &engine)]).await;
    let expected = place(&system, 1, "torus.STL", "failed").await;
    let id = *expected.keys().next().unwrap();

    verdict(&system, &expected).await;
    let shop = system.shop_order(id).await;
    assert_eq!(shop["rejection_code"], "calc_engine_failed", "{shop}");
    let mes = system.mes_order(id).await;
    assert_eq!(mes["calculation"]["attempts"], 3, "{mes}");
}

#[tokio::test]
async fn a_slow_calc_engine_is_waited_for_and_one_past_its_timeout_is_retried_then_failed() {
    let dir = tempfile::tempdir().unwrap();
    let real = binary("mes-calc").display().to_string();
    let slow = engine_script(&dir, &format!("sleep 1; exec {real} \"$@\""));
    let system = System::start_with(&[("MES_CALC_BIN", &slow), ("MES_CALC_TIMEOUT", "10s")]).await;
    verdict(&system, &place(&system, 1, "torus.STL", "priced").await).await;

    let hung = tempfile::tempdir().unwrap();
    let hanging = engine_script(&hung, "sleep 30");
    let system =
        System::start_with(&[("MES_CALC_BIN", &hanging), ("MES_CALC_TIMEOUT", "500ms")]).await;
    let expected = place(&system, 1, "torus.STL", "failed").await;
    verdict(&system, &expected).await;
    let id = *expected.keys().next().unwrap();
    let shop = system.shop_order(id).await;
    let reason = shop["rejection_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("did not finish"), "{shop}");
}

#[tokio::test]
async fn a_partners_queue_of_calculations_does_not_hold_back_another_customers_quote() {
    // One calc worker, each calculation a second and a half: a partner's five orders take
    // seven seconds or more one after another.
    let dir = tempfile::tempdir().unwrap();
    let real = binary("mes-calc").display().to_string();
    let slow = engine_script(&dir, &format!("sleep 1.5; exec {real} \"$@\""));
    let system = System::start_with(&[("MES_CALC_BIN", &slow), ("MES_CALC_WORKERS", "1")]).await;
    let mut partner = Vec::new();
    for _ in 0..5 {
        partner.push(
            system
                .place_partner_order("torus.STL", "gold_585", "bulk-partner")
                .await
                .id,
        );
    }
    // The customer's order is queued once the partner's are.
    for &id in &partner {
        testkit::wait::until("the partner's order to reach MES", PATIENCE, || async {
            let answer = reqwest::get(format!("{}/api/orders/{id}", system.mes.url()))
                .await
                .ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
    }
    let customer = system.place_order("torus.STL", "gold_585").await.id;

    system.until_status_in("mes", customer, "priced").await;
    let mut partner_priced = 0;
    for &id in &partner {
        if system.mes_order(id).await["status"] == "priced" {
            partner_priced += 1;
        }
    }
    // The calculation running when the customer's job arrived, and at most one more that
    // started meanwhile: never the whole queue.
    assert!(
        partner_priced <= 2,
        "{partner_priced} of the partner's 5 orders were priced before the customer's"
    );
    let expected = partner
        .iter()
        .chain([&customer])
        .map(|&id| (id, "priced"))
        .collect();
    verdict(&system, &expected).await;
}

#[tokio::test]
async fn when_storage_fails_on_read_the_calculation_is_retried_until_it_is_back() {
    let s3 = S3Server::start().await;
    let mut env: Vec<(String, String)> = s3.env();
    env.push(("MES_CALC_MAX_ATTEMPTS".into(), "10".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let system = System::start_with(&env).await;

    s3.set_failing_reads(true);
    let expected = place(&system, 2, "torus.STL", "priced").await;
    let id = *expected.keys().next().unwrap();
    let mes = system.database(Service::Mes).await;
    testkit::wait::until("a failed read", PATIENCE, || async {
        let attempts: Option<i32> =
            sqlx::query_scalar("SELECT attempts FROM calc_jobs WHERE order_id = $1")
                .bind(id)
                .fetch_optional(&mes)
                .await
                .unwrap();
        (attempts >= Some(2)).then_some(())
    })
    .await;
    assert_eq!(system.shop_order(id).await["status"], "pricing");
    s3.set_failing_reads(false);

    let verdict = verdict(&system, &expected).await;
    assert_eq!(verdict.completed, 2, "{verdict}");
}

#[tokio::test]
async fn when_storage_is_down_for_good_the_order_fails_with_a_reason_the_customer_sees() {
    let s3 = S3Server::start().await;
    let env: Vec<(String, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let system = System::start_with(&env).await;

    s3.set_failing_reads(true);
    let expected = place(&system, 1, "torus.STL", "failed").await;
    verdict(&system, &expected).await;
    let id = *expected.keys().next().unwrap();
    let shop = system.shop_order(id).await;
    let reason = shop["rejection_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("model"), "{shop}");
}
