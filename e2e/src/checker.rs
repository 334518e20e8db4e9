//! The reliability tests' verdict, after Jepsen's queue checker: every order acknowledged to a
//! client (answered 2xx) ends in its expected final state in every service's view, or sits
//! visibly in a dead-letter queue. Nothing may be lost, applied twice or end anywhere else;
//! duplicate deliveries are counted (the inboxes count what they skip) to show that they
//! happened and did no harm.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use messaging::Broker;
use messaging::dead_letters;
use messaging::topology::QUEUES;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Service, System};

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Orders acknowledged to clients.
    pub acknowledged: usize,
    /// In their expected final state in Shop, CRM and MES.
    pub completed: usize,
    /// Held up by a message in a dead-letter queue, where an operator sees and can replay it.
    pub dead_lettered: usize,
    /// Acknowledged, but neither completed nor dead-lettered.
    pub lost: Vec<Uuid>,
    /// A status recorded twice for one order in one service, or one event published twice.
    pub applied_twice: Vec<String>,
    /// Completed nowhere near the expectation: another final state, or an order nobody asked
    /// for.
    pub unexpected: Vec<String>,
    /// Copies of messages the inboxes recognised and skipped.
    pub duplicates_delivered: i64,
}

impl Verdict {
    /// Panics with the whole verdict unless lost, applied twice and unexpected are all empty.
    pub fn assert_clean(&self) {
        assert!(
            self.lost.is_empty() && self.applied_twice.is_empty() && self.unexpected.is_empty(),
            "{self}"
        );
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "acknowledged {}, completed {}, dead-lettered {}, lost {}, applied twice {}, \
             unexpected {}, duplicates delivered {}",
            self.acknowledged,
            self.completed,
            self.dead_lettered,
            self.lost.len(),
            self.applied_twice.len(),
            self.unexpected.len(),
            self.duplicates_delivered
        )?;
        for id in &self.lost {
            writeln!(f, "  lost: {id}")?;
        }
        for line in self.applied_twice.iter().chain(&self.unexpected) {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Waits (up to `patience`) until every order of `expected` is in its final status in every
/// service or held by a dead letter, then judges.
pub async fn check(
    system: &System,
    expected: &BTreeMap<Uuid, &'static str>,
    patience: Duration,
) -> Verdict {
    let pools = [
        system.database(Service::Shop).await,
        system.database(Service::Crm).await,
        system.database(Service::Mes).await,
    ];
    let ids: Vec<Uuid> = expected.keys().copied().collect();
    let deadline = tokio::time::Instant::now() + patience;
    let (statuses, held) = loop {
        let statuses = statuses(&pools, &ids).await;
        let held = held_by_dead_letters(system).await;
        let settled = expected.iter().all(|(id, status)| {
            held.contains(id)
                || statuses
                    .iter()
                    .all(|service| service.get(id).map(String::as_str) == Some(*status))
        });
        if settled || tokio::time::Instant::now() >= deadline {
            break (statuses, held);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let mut verdict = Verdict {
        acknowledged: expected.len(),
        ..Verdict::default()
    };
    for (id, want) in expected {
        let seen: Vec<Option<&String>> = statuses.iter().map(|s| s.get(id)).collect();
        if seen.iter().all(|s| s.map(String::as_str) == Some(*want)) {
            verdict.completed += 1;
        } else if held.contains(id) {
            verdict.dead_lettered += 1;
        } else if seen.iter().all(|s| s.is_some_and(|s| is_final(s))) {
            verdict
                .unexpected
                .push(format!("{id}: expected {want}, ended {seen:?}"));
        } else {
            verdict.lost.push(*id);
        }
    }
    for (service, pool) in Service::ALL.into_iter().zip(&pools) {
        verdict
            .applied_twice
            .extend(applied_twice(service, pool).await);
        let strangers: Vec<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM orderbook.orders WHERE NOT order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await
        .expect("the service's database answers");
        // Shop may hold orders whose client saw an error (e.g. a timeout): those were never
        // acknowledged, so they are not counted against anything.
        if service != Service::Shop {
            verdict.unexpected.extend(
                strangers
                    .iter()
                    .map(|id| format!("{}: order {id} nobody placed", service.binary())),
            );
        }
        verdict.duplicates_delivered +=
            sqlx::query_scalar::<_, Option<i64>>("SELECT sum(duplicates) FROM messaging.inbox")
                .fetch_one(pool)
                .await
                .expect("the service's database answers")
                .unwrap_or(0);
    }
    verdict
}

fn is_final(status: &str) -> bool {
    matches!(
        status,
        "priced" | "rejected" | "failed" | "cancelled" | "delivered"
    )
}

/// Each service's status of each order.
async fn statuses(pools: &[PgPool; 3], ids: &[Uuid]) -> Vec<BTreeMap<Uuid, String>> {
    let mut all = Vec::with_capacity(pools.len());
    for pool in pools {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT order_id, status FROM orderbook.orders WHERE order_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        all.push(rows.into_iter().collect());
    }
    all
}

/// Orders some message of which sits in a dead-letter queue.
async fn held_by_dead_letters(system: &System) -> BTreeSet<Uuid> {
    let broker = Broker::new(system.broker.clone(), "e2e-checker");
    let mut held = BTreeSet::new();
    for spec in QUEUES {
        if let Ok(letters) = dead_letters::list(&broker, spec, 10_000).await {
            held.extend(letters.into_iter().filter_map(|l| l.order_id));
        }
    }
    broker.close().await;
    held
}

/// A status recorded twice for one order, or an event of one order published twice.
async fn applied_twice(service: Service, pool: &PgPool) -> Vec<String> {
    let statuses: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT order_id, to_status, count(*) FROM orderbook.history \
         GROUP BY order_id, to_status HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .expect("the service's database answers");
    let events: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT order_id, routing_key, count(*) FROM messaging.outbox \
         GROUP BY order_id, routing_key HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .expect("the service's database answers");
    statuses
        .into_iter()
        .map(|(id, status, n)| format!("{}: {id} became {status} {n} times", service.binary()))
        .chain(
            events.into_iter().map(|(id, key, n)| {
                format!("{}: {id} published {key} {n} times", service.binary())
            }),
        )
        .collect()
}
