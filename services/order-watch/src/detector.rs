//! Stuck detection: an open order whose deadline (last progress + its stage's threshold) passed
//! is stuck — once the system that owns its stage confirms it has not moved.
//!
//! The detector sleeps until the earliest `check_at` in the database (an index lookup), or
//! until the writer says new orders arrived, or at most [`Detector::interval`] so that orders
//! other replicas scheduled are seen too. Each round then
//!
//! 1. **claims** the due orders (`FOR UPDATE SKIP LOCKED`) and moves their `check_at` a
//!    [`LEASE`] ahead, so no other replica asks about them meanwhile and a crashed round is
//!    picked up again — then commits, so no lock is held while the systems are asked;
//! 2. **asks** the owner of each order's stage ([`domain::Stage::owner`]) what it holds, one
//!    listing request per system and [`domain::held::MAX_IDS`] orders, the systems at once;
//! 3. **applies** the verdicts in one transaction, to the orders whose progress and status did
//!    not change in the meantime (a span that arrived during the round has already rescheduled
//!    its order):
//!    * the system holds the order where order-watch does, or does not know it: **stuck,
//!      confirmed**; an incident opens;
//!    * the system cannot be asked: **stuck, unconfirmed**; flagged and an incident opens all
//!      the same (fail safe), saying the confirmation failed;
//!    * the system holds it further along: a **telemetry gap** is recorded (which services'
//!      spans are missing between which statuses), the status is taken from that system and
//!      labelled so, nobody is paged, and an incident the order had is resolved.
//!
//! Stuck orders are asked about again every [`Detector::reconfirm_interval`], so an order whose
//! later spans were lost too does not stay stuck for ever; one still confirmed stuck whose
//! incident an admin closed by hand gets a new incident then. State lives in the database only: a
//! restart loses no deadline, and 1,000,000 open orders cost an index, not memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::{OrderStatus, System};
use futures::future::join_all;
use platform::db::ReadError;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::incidents::{self, Announcer};
use crate::journey::{Confirmation, OrderState};
use crate::metrics::Metrics;
use crate::records::{AskError, Held, Records};
use crate::runtime_config::LiveConfig;
use crate::store;

/// Most orders claimed per round.
const CLAIM_BATCH: i64 = 1000;
/// How long a claimed order is left to the replica that claimed it.
pub const LEASE: Duration = Duration::from_secs(60);

pub struct Detector {
    pub pool: PgPool,
    pub clock: Clock,
    pub announcer: Announcer,
    pub metrics: Arc<Metrics>,
    pub records: Arc<Records>,
    /// The thresholds in force.
    pub config: LiveConfig,
    /// Longest sleep between checks.
    pub interval: Duration,
    /// How often a stuck order's system of record is asked again.
    pub reconfirm_interval: Duration,
    /// Woken by the writer when deadlines may have moved earlier.
    pub wake: Arc<Notify>,
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Orders claimed and asked about.
    pub claimed: usize,
    /// Orders newly flagged stuck.
    pub stuck: usize,
    /// Telemetry gaps recorded.
    pub gaps: usize,
    /// Claimed orders left out because their stored journey does not read.
    pub unreadable: usize,
}

/// What the system of record's answer means for one order.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Stuck {
        confirmation: Confirmation,
        detail: String,
    },
    MovedOn {
        source: System,
        status: OrderStatus,
        since: DateTime<Utc>,
    },
}

impl Detector {
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            match self.detect_once().await {
                // A full batch, or gaps that may leave orders due at once: look again now.
                Ok(round) if round.claimed as i64 == CLAIM_BATCH || round.gaps > 0 => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "stuck detection failed, retrying"),
            }
            let now = self.clock.now();
            let latest = now + chrono::Duration::from_std(self.interval).unwrap_or_default();
            let wake_at = match self.next_check().await {
                Ok(Some(at)) => at.min(latest),
                Ok(None) | Err(_) => latest,
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = self.wake.notified() => {}
                _ = self.clock.sleep_until(wake_at) => {}
            }
        }
        tracing::info!("stuck detector stopped");
    }

    async fn next_check(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar("SELECT min(check_at) FROM orders WHERE check_at IS NOT NULL")
            .fetch_one(&self.pool)
            .await
    }

    /// One round: claims the due orders, asks their systems of record and applies what they
    /// said.
    pub async fn detect_once(&self) -> Result<Round, ReadError> {
        let (claimed, unreadable) = self.claim().await?;
        let mut round = if claimed.is_empty() {
            Round::default()
        } else {
            let answers = self.ask(&claimed).await;
            let verdicts: Vec<(OrderState, Verdict)> = claimed
                .into_iter()
                .map(|order| {
                    let verdict = verdict(&order, &answers);
                    (order, verdict)
                })
                .collect();
            self.apply(verdicts).await?
        };
        round.claimed += unreadable;
        round.unreadable = unreadable;
        Ok(round)
    }

    /// Claims the due orders; returns those that read and how many did not.
    ///
    /// An order whose stored journey does not read (a status or stage no release knows) is
    /// logged as an error naming it and left out of the round: judging it would mean guessing,
    /// and failing the round would hold back every order claimed with it. It keeps its lease,
    /// so it is reported again every [`LEASE`] until its row is repaired.
    async fn claim(&self) -> Result<(Vec<OrderState>, usize), sqlx::Error> {
        let now = self.clock.now();
        let rows: Vec<store::OrderRow> = sqlx::query_as(
            "WITH due AS ( \
                 SELECT order_id FROM orders WHERE check_at <= $1 \
                 ORDER BY check_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE orders o SET check_at = $3 \
             FROM due WHERE o.order_id = due.order_id RETURNING o.*",
        )
        .bind(now)
        .bind(CLAIM_BATCH)
        .bind(now + chrono::Duration::from_std(LEASE).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let mut orders = Vec::with_capacity(rows.len());
        let mut unreadable = 0;
        for row in rows {
            match OrderState::try_from(row) {
                Ok(order) => orders.push(order),
                Err(err) => {
                    unreadable += 1;
                    tracing::error!(order_id = %err.order_id, error = %err,
                        "stored journey does not read; the order is left out of stuck detection");
                }
            }
        }
        Ok((orders, unreadable))
    }

    /// Asks each system of record about the claimed orders whose stage it owns, all at once.
    async fn ask(&self, orders: &[OrderState]) -> BTreeMap<System, Result<Held, AskError>> {
        let mut by_system: BTreeMap<System, Vec<Uuid>> = BTreeMap::new();
        for order in orders {
            if let Some(system) = order.stage.owner() {
                by_system.entry(system).or_default().push(order.order_id);
            }
        }
        let asked = join_all(by_system.into_iter().map(|(system, ids)| async move {
            let started = Instant::now();
            let answer = self.records.ask(system, &ids).await;
            self.metrics
                .record_confirmation(system, answer.is_ok(), ids.len(), started.elapsed());
            if let Err(err) = &answer {
                tracing::warn!(system = %system, orders = ids.len(), error = %err,
                    "cannot ask the system of record; flagging its orders unconfirmed");
            }
            (system, answer)
        }))
        .await;
        asked.into_iter().collect()
    }

    async fn apply(&self, verdicts: Vec<(OrderState, Verdict)>) -> Result<Round, ReadError> {
        let now = self.clock.now();
        let ids: Vec<Uuid> = verdicts.iter().map(|(o, _)| o.order_id).collect();
        let mut tx = self.pool.begin().await?;
        let mut current = store::lock_orders(&mut tx, &ids).await?;
        let mut round = Round {
            claimed: verdicts.len(),
            ..Round::default()
        };
        let (mut updated, mut newly_stuck, mut still_stuck, mut recovered, mut gaps) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (claimed, verdict) in verdicts {
            // Progress or a new status arrived during the round: the writer rescheduled it.
            let Some(mut order) = current.remove(&claimed.order_id) else {
                continue;
            };
            if (order.last_progress, order.status) != (claimed.last_progress, claimed.status) {
                continue;
            }
            match verdict {
                Verdict::Stuck {
                    confirmation,
                    detail,
                } => {
                    let newly = order.stuck_since.is_none();
                    order.stuck_since = order.stuck_since.or(order.deadline).or(Some(now));
                    order.stuck_confirmation = Some(confirmation);
                    order.confirmation = Some(detail);
                    order.confirmed_at = Some(now);
                    order.check_at = Some(
                        now + chrono::Duration::from_std(self.reconfirm_interval)
                            .unwrap_or_default(),
                    );
                    if newly {
                        newly_stuck.push(order.clone());
                    } else {
                        still_stuck.push(order.clone());
                    }
                }
                Verdict::MovedOn {
                    source,
                    status,
                    since,
                } => {
                    let since = since.min(now);
                    gaps.push(Gap::between(&order, source, status, since));
                    let was_stuck = order.stuck_since.is_some();
                    order.status = Some(status);
                    order.status_at = Some(since);
                    order.status_source = source.service_name().to_owned();
                    order.last_progress = order.last_progress.max(since);
                    order.observations_since_progress = 0;
                    order.confirmed_at = Some(now);
                    order.moved(&self.config.get().thresholds);
                    if was_stuck {
                        recovered
                            .push((order.clone(), gaps.last().expect("just pushed").describe()));
                    }
                }
            }
            updated.push(order);
        }
        store::upsert_orders(&mut tx, &updated, now).await?;
        insert_gaps(&mut tx, &gaps, now).await?;
        incidents::open_for_stuck(&mut tx, &self.announcer, &newly_stuck, now).await?;
        // Confirmed still stuck: one whose incident was closed by hand gets a new one (the others
        // keep theirs: one open incident per order).
        incidents::open_for_stuck(&mut tx, &self.announcer, &still_stuck, now).await?;
        for (order, why) in &recovered {
            let resolution = format!("its system of record had moved on: {why}");
            incidents::resolve_recovered(
                &mut tx,
                &self.announcer,
                std::slice::from_ref(order),
                &resolution,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        for order in &newly_stuck {
            if let Some(deadline) = order.deadline {
                self.metrics.record_detection(order.stage, now - deadline);
            }
        }
        for gap in &gaps {
            self.metrics.record_gap(&gap.missing_services);
            tracing::info!(order_id = %gap.order_id, gap = %gap.describe(),
                "telemetry gap: the system of record had moved on");
        }
        round.stuck = newly_stuck.len();
        round.gaps = gaps.len();
        Ok(round)
    }
}

/// What the owner of `order`'s stage answered means for it.
fn verdict(order: &OrderState, answers: &BTreeMap<System, Result<Held, AskError>>) -> Verdict {
    let Some(system) = order.stage.owner() else {
        // Claimed orders are open, and every open stage has an owner.
        return Verdict::Stuck {
            confirmation: Confirmation::Unconfirmed,
            detail: format!("no system owns stage {}", order.stage),
        };
    };
    let held = match answers.get(&system) {
        Some(Ok(held)) => held,
        Some(Err(err)) => {
            return Verdict::Stuck {
                confirmation: Confirmation::Unconfirmed,
                detail: format!(
                    "not confirmed: {system} could not be asked: {}",
                    otel_fastpath::logging::error_chain(err)
                ),
            };
        }
        None => {
            return Verdict::Stuck {
                confirmation: Confirmation::Unconfirmed,
                detail: format!("not confirmed: {system} was not asked"),
            };
        }
    };
    match held.get(&order.order_id) {
        None => Verdict::Stuck {
            confirmation: Confirmation::Confirmed,
            detail: format!("confirmed: {system} has no record of the order yet"),
        },
        Some(&(status, since))
            if order
                .status
                .is_none_or(|current| OrderStatus::supersedes(status, current)) =>
        {
            Verdict::MovedOn {
                source: system,
                status,
                since,
            }
        }
        Some((status, since)) => Verdict::Stuck {
            confirmation: Confirmation::Confirmed,
            detail: format!(
                "confirmed: {system} holds it {status} since {}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        },
    }
}

/// A telemetry gap about to be recorded.
#[derive(Debug, Clone)]
pub(crate) struct Gap {
    order_id: Uuid,
    source: System,
    from: Option<OrderStatus>,
    to: OrderStatus,
    status_at: DateTime<Utc>,
    pub(crate) missing_services: Vec<&'static str>,
}

impl Gap {
    pub(crate) fn between(
        order: &OrderState,
        source: System,
        to: OrderStatus,
        status_at: DateTime<Utc>,
    ) -> Self {
        let mut missing_services: Vec<&'static str> = OrderStatus::moves_to(order.status, to)
            .into_iter()
            .map(|s| s.owner().service_name())
            .collect();
        missing_services.sort_unstable();
        missing_services.dedup();
        Self {
            order_id: order.order_id,
            source,
            from: order.status,
            to,
            status_at,
            missing_services,
        }
    }

    /// "spans of mes-api missing between registered and priced (mes-api holds priced)".
    pub(crate) fn describe(&self) -> String {
        let from = self.from.map_or("the start", OrderStatus::as_str);
        format!(
            "spans of {} missing between {from} and {} ({} holds {})",
            self.missing_services.join(", "),
            self.to,
            self.source,
            self.to
        )
    }
}

pub(crate) async fn insert_gaps(
    tx: &mut PgConnection,
    gaps: &[Gap],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for gap in gaps {
        sqlx::query(
            "INSERT INTO telemetry_gaps (order_id, detected_at, source, to_status, status_at, \
                 from_status, missing_services) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(gap.order_id)
        .bind(now)
        .bind(gap.source.service_name())
        .bind(gap.to.as_str())
        .bind(gap.status_at)
        .bind(gap.from.map(OrderStatus::as_str))
        .bind(&gap.missing_services)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: Option<OrderStatus>) -> OrderState {
        let now = Utc::now();
        let mut state = OrderState {
            status,
            ..OrderState::new(Uuid::now_v7(), now)
        };
        state.moved(&crate::config::Thresholds::default());
        state
    }

    fn answered(system: System, held: Held) -> BTreeMap<System, Result<Held, AskError>> {
        BTreeMap::from([(system, Ok(held))])
    }

    #[test]
    fn an_order_its_owner_holds_where_order_watch_does_is_confirmed_stuck() {
        let order = order(Some(OrderStatus::Registered));
        let since = Utc::now();
        let held = Held::from([(order.order_id, (OrderStatus::Registered, since))]);
        let Verdict::Stuck {
            confirmation,
            detail,
        } = verdict(&order, &answered(System::Mes, held))
        else {
            panic!("not stuck");
        };
        assert_eq!(confirmation, Confirmation::Confirmed);
        assert!(
            detail.starts_with("confirmed: mes-api holds it registered since"),
            "{detail}"
        );
        // Not known there yet: the hand-over itself is what hangs.
        let unknown = verdict(&order, &answered(System::Mes, Held::new()));
        assert!(matches!(
            unknown,
            Verdict::Stuck {
                confirmation: Confirmation::Confirmed,
                ..
            }
        ));
    }

    #[test]
    fn an_owner_that_holds_the_order_further_along_means_a_gap_and_one_behind_means_stuck() {
        let order = order(Some(OrderStatus::Registered));
        let since = Utc::now();
        let ahead = Held::from([(order.order_id, (OrderStatus::Priced, since))]);
        assert_eq!(
            verdict(&order, &answered(System::Mes, ahead)),
            Verdict::MovedOn {
                source: System::Mes,
                status: OrderStatus::Priced,
                since
            }
        );
        let behind = Held::from([(order.order_id, (OrderStatus::Submitted, since))]);
        assert!(matches!(
            verdict(&order, &answered(System::Mes, behind)),
            Verdict::Stuck {
                confirmation: Confirmation::Confirmed,
                ..
            }
        ));
        // Without any status from the spans, whatever the owner holds is news.
        let bare = order_without_status();
        let held = Held::from([(bare.order_id, (OrderStatus::Created, since))]);
        assert!(matches!(
            verdict(&bare, &answered(System::Shop, held)),
            Verdict::MovedOn {
                status: OrderStatus::Created,
                ..
            }
        ));
    }

    fn order_without_status() -> OrderState {
        order(None)
    }

    #[test]
    fn an_owner_that_cannot_be_asked_leaves_the_order_flagged_unconfirmed() {
        let order = order(Some(OrderStatus::Submitted));
        let answers =
            BTreeMap::from([(System::Crm, Err(AskError::Timeout(Duration::from_secs(2))))]);
        let Verdict::Stuck {
            confirmation,
            detail,
        } = verdict(&order, &answers)
        else {
            panic!("not stuck");
        };
        assert_eq!(confirmation, Confirmation::Unconfirmed);
        assert_eq!(
            detail,
            "not confirmed: crm-api could not be asked: it did not answer within 2s"
        );
    }

    #[test]
    fn a_gap_names_the_owners_of_the_moves_whose_spans_are_missing() {
        let order = order(Some(OrderStatus::Submitted));
        let gap = Gap::between(&order, System::Crm, OrderStatus::Priced, Utc::now());
        assert_eq!(gap.missing_services, vec!["crm-api", "mes-api"]);
        assert_eq!(
            gap.describe(),
            "spans of crm-api, mes-api missing between submitted and priced (crm-api holds priced)"
        );
    }
}
