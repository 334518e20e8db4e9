//! Outages of the shared servers: RabbitMQ stopped, PostgreSQL restarted, under load. They take
//! down what every other test uses, and RabbitMQ needs a while after a restart to recover every
//! test queue, so these tests are ignored by a plain `cargo test` and `scripts/test` runs them
//! last, on their own (`cargo test -p e2e --test outages -- --ignored`); each holds
//! `testkit::faults::exclusive()` so they take turns.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::System;
use e2e::checker;
use testkit::faults;
use tokio::time::Instant;
use uuid::Uuid;

/// The verdict may take longer here: services reconnect with back-off of up to 10 s.
const SETTLE: Duration = Duration::from_secs(120);

/// Places orders one after another for `duration`; returns those Shop acknowledged and how
/// many it refused (an error status or no answer).
async fn place_for(system: &System, duration: Duration) -> (BTreeMap<Uuid, &'static str>, usize) {
    let mut acknowledged = BTreeMap::new();
    let mut refused = 0;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        match system.try_place_order("torus.STL", "silver_925", &[]).await {
            Ok(placed) => {
                acknowledged.insert(placed.id, "priced");
            }
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (acknowledged, refused)
}

#[tokio::test]
#[ignore = "stops the shared RabbitMQ; scripts/test runs it last"]
async fn orders_placed_while_rabbitmq_is_down_are_all_priced_once_it_is_back() {
    let _exclusive = faults::exclusive().await;
    let system = System::start().await;
    let (mut expected, _) = place_for(&system, Duration::from_secs(1)).await;

    faults::stop_broker().await;
    // Shop keeps accepting orders: they wait in its outbox.
    let (during, refused) = place_for(&system, Duration::from_secs(3)).await;
    assert_eq!(refused, 0, "Shop refused orders while the broker was down");
    assert!(!during.is_empty());
    expected.extend(during);
    faults::start_broker().await;
    let (after, _) = place_for(&system, Duration::from_secs(1)).await;
    expected.extend(after);

    let verdict = checker::check(&system, &expected, SETTLE).await;
    verdict.assert_clean();
    assert_eq!(verdict.completed, expected.len(), "{verdict}");
}

#[tokio::test]
#[ignore = "restarts the shared PostgreSQL; scripts/test runs it last"]
async fn orders_placed_while_postgresql_restarts_are_never_lost_or_applied_twice() {
    let _exclusive = faults::exclusive().await;
    let system = System::start().await;

    let load = place_for(&system, Duration::from_secs(8));
    let restart = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults::restart_postgres().await;
    };
    let ((expected, refused), ()) = tokio::join!(load, restart);
    assert!(!expected.is_empty());

    let verdict = checker::check(&system, &expected, SETTLE).await;
    verdict.assert_clean();
    assert_eq!(verdict.completed, expected.len(), "{verdict}");
    eprintln!("{verdict}refused while PostgreSQL restarted: {refused}");
    // The services are still usable afterwards.
    let placed = system.place_order("torus.STL", "gold_585").await;
    system.until_shop_status(placed.id, "priced").await;
}
