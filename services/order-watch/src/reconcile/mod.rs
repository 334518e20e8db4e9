//! Reconciliation: do Shop, CRM, MES and order-watch agree on the status of the orders that
//! changed recently, and how long do they take to agree after a change?
//!
//! Each system keeps its own status of every order it knows ([`domain::held`]); order-watch
//! derives one from the spans. The reconciler compares them continuously, through the systems'
//! own listings (never their databases), at a cost that grows with the changes, not with the
//! orders:
//!
//! 1. **claims the round** ([`store::claim_lease`]): one replica at a time, one round per
//!    [`ReconcileConfig::interval`] across replicas; a replica that dies mid-round leaves its
//!    lease to expire after [`LEASE`], and one whose lease was taken meanwhile drops its
//!    results;
//! 2. **reads every system's changes** since where the last round stopped, less
//!    [`ReconcileConfig::overlap`] (changes committed late behind a page already read), a page of
//!    [`ReconcileConfig::page_size`] orders at a time, at most [`ReconcileConfig::max_pages`]
//!    pages per system (the next round then follows at once), the systems at once;
//! 3. **asks** each system by ids about the changed orders its own changes did not list, and
//!    about the disagreeing orders due to be compared again ([`ReconcileConfig::max_rechecks`] at
//!    most), [`domain::held::MAX_IDS`] a request, and reads order-watch's own view;
//! 4. **judges** each order ([`verdict::judge`]) and records, in one transaction: agreement
//!    (with the time the holders took to agree, from their own records), or a disagreement with
//!    the change that began it; a disagreement older than [`ReconcileConfig::after`] is *listed*
//!    (API, UI, the gauge an alert watches), its mismatches are counted once and an incident
//!    opens; agreement resolves it. An order a system could not be asked about is compared again
//!    at the next round.
//!
//! Per round, with `c` changes per system since the last (the overlap included), `m` of the
//! changed orders a system did not list itself and `r` rechecks: `Σ ⌈c / page_size⌉` changed-
//! since requests plus `Σ ⌈(m + r) / 200⌉` requests by ids. Recorded in
//! `order_watch_reconciliation_requests_total`; measured in `docs/benchmarks.md`.
//!
//! A repair ([`repair`]) asks the owner of the order's status to send its messages again.

pub mod config;
pub mod repair;
pub mod store;
pub mod verdict;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::System;
use domain::held::{ChangedSince, HeldStatus, MAX_IDS};
use futures::future::join_all;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::ReconcileConfig;

use crate::clock::Clock;
use crate::incidents::{self, Announcer, Disagreeing};
use crate::metrics::Metrics;
use crate::records::{AskError, Records};
use store::Tracked;
use verdict::{Holder, Judgement, View, Views};

/// How long a round is left to the replica that claimed it.
pub const LEASE: Duration = Duration::from_secs(300);

pub struct Reconciler {
    pub pool: PgPool,
    pub clock: Clock,
    pub records: Arc<Records>,
    pub metrics: Arc<Metrics>,
    pub announcer: Announcer,
    pub config: ReconcileConfig,
    /// This replica, as the lease names it.
    pub replica: Uuid,
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Whether this replica ran it (another holds the lease, or none is due yet).
    pub ran: bool,
    /// Orders compared, and of them those that agree.
    pub compared: usize,
    pub agreeing: usize,
    /// Orders listed for the first time (past the threshold).
    pub listed: usize,
    /// Orders that could not be compared (a system did not answer).
    pub unanswered: usize,
    /// A system had more changes than the round's pages: the next round follows at once.
    pub more: bool,
}

/// One system's changes since the last round.
struct Changes {
    orders: Vec<HeldStatus>,
    /// Where the next round starts.
    cursor: ChangedSince,
    more: bool,
}

impl Reconciler {
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let more = match self.round().await {
                Ok(round) => {
                    if round.ran {
                        tracing::debug!(?round, "reconciliation round");
                    }
                    round.more
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reconciliation round failed, retrying");
                    false
                }
            };
            if more {
                continue;
            }
            let latest = self.clock.now() + chrono_duration(self.config.interval);
            let wake_at = match store::next_round_at(&self.pool).await {
                Ok(Some(at)) => at.min(latest),
                Ok(None) | Err(_) => latest,
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = self.clock.sleep_until(wake_at) => {}
            }
        }
        tracing::info!("reconciler stopped");
    }

    /// One round, if it is due and no other replica runs it.
    pub async fn round(&self) -> anyhow::Result<Round> {
        let started = Instant::now();
        let now = self.clock.now();
        if !store::claim_lease(&self.pool, self.replica, now, now + chrono_duration(LEASE)).await? {
            return Ok(Round::default());
        }
        let cursors = store::cursors(&self.pool).await?;
        let changes = self.read_changes(&cursors, now).await;
        let rechecks = store::due_rechecks(&self.pool, now, self.config.max_rechecks).await?;

        let mut candidates: BTreeSet<Uuid> = rechecks.into_iter().collect();
        for changed in changes.values().flatten() {
            candidates.extend(changed.orders.iter().map(|o| o.order_id));
        }
        let candidates: Vec<Uuid> = candidates.into_iter().collect();
        let answers = self.ask(&candidates, &changes).await;
        let journeys = store::journey_views(&self.pool, &candidates).await?;

        let mut compared = Vec::with_capacity(candidates.len());
        let mut unanswered = Vec::new();
        for order_id in &candidates {
            let mut views = Views::new();
            let mut answered = true;
            for system in System::ALL {
                match answers.get(&system) {
                    Some(Ok(held)) => {
                        views.insert(Holder::System(system), held.get(order_id).copied());
                    }
                    _ => answered = false,
                }
            }
            if !answered {
                unanswered.push(*order_id);
                continue;
            }
            views.insert(Holder::OrderWatch, journeys.get(order_id).copied());
            compared.push((*order_id, views));
        }
        let more = changes.values().flatten().any(|c| c.more);
        let round = self
            .apply(now, compared, unanswered, &changes, more)
            .await?;
        // A round whose lease another replica took meanwhile recorded nothing: not a round.
        if round.ran {
            self.metrics.record_reconcile_round(started.elapsed());
        }
        Ok(round)
    }

    /// Every system's changes since its cursor (less the overlap), the systems at once.
    async fn read_changes(
        &self,
        cursors: &BTreeMap<System, ChangedSince>,
        now: DateTime<Utc>,
    ) -> BTreeMap<System, Result<Changes, AskError>> {
        let overlap = chrono_duration(self.config.overlap);
        let read = System::ALL.map(|system| {
            let cursor = cursors
                .get(&system)
                .copied()
                .unwrap_or_else(|| ChangedSince::from(now - overlap));
            async move { (system, self.read_system(system, cursor).await) }
        });
        join_all(read).await.into_iter().collect()
    }

    async fn read_system(&self, system: System, cursor: ChangedSince) -> Result<Changes, AskError> {
        let mut from = ChangedSince::from(cursor.since - chrono_duration(self.config.overlap));
        let mut orders = Vec::new();
        let mut pages = 0;
        let mut more = false;
        loop {
            let page = self
                .records
                .changed(system, from, self.config.page_size)
                .await;
            pages += 1;
            self.metrics
                .record_reconcile_requests(system, "changed", page.is_ok(), 1);
            let page = page.inspect_err(|err| {
                tracing::warn!(system = %system, error = %err,
                    "cannot read the system's changes; its orders are compared at a later round");
            })?;
            orders.extend(page.orders);
            match page.next {
                Some(next) if pages < self.config.max_pages => from = next,
                Some(_) => {
                    more = true;
                    break;
                }
                None => break,
            }
        }
        // Where this round's reading ended, never behind where the last one did.
        let cursor = orders
            .last()
            .map(ChangedSince::after)
            .filter(|end| (end.since, end.after) > (cursor.since, cursor.after))
            .unwrap_or(cursor);
        Ok(Changes {
            orders,
            cursor,
            more,
        })
    }

    /// What each system holds of `candidates`: what its changes listed, and for the others an
    /// answer by ids; the systems at once. A system whose changes could not be read is asked
    /// about every candidate.
    async fn ask(
        &self,
        candidates: &[Uuid],
        changes: &BTreeMap<System, Result<Changes, AskError>>,
    ) -> BTreeMap<System, Result<HashMap<Uuid, View>, AskError>> {
        let asked = System::ALL.map(|system| async move {
            let listed: HashMap<Uuid, View> = match changes.get(&system) {
                Some(Ok(changed)) => changed
                    .orders
                    .iter()
                    .map(|o| {
                        let view = View {
                            status: o.status,
                            since: o.updated_at,
                        };
                        (o.order_id, view)
                    })
                    .collect(),
                _ => HashMap::new(),
            };
            let missing: Vec<Uuid> = candidates
                .iter()
                .filter(|id| !listed.contains_key(id))
                .copied()
                .collect();
            if missing.is_empty() {
                return (system, Ok(listed));
            }
            let requests = missing.len().div_ceil(MAX_IDS) as u64;
            let answer = self.records.ask(system, &missing).await;
            self.metrics
                .record_reconcile_requests(system, "ids", answer.is_ok(), requests);
            let held = answer.map(|held| {
                let mut views = listed;
                views.extend(
                    held.into_iter()
                        .map(|(id, (status, since))| (id, View { status, since })),
                );
                views
            });
            if let Err(err) = &held {
                tracing::warn!(system = %system, orders = missing.len(), error = %err,
                    "cannot ask the system about changed orders; they are compared at a later round");
            }
            (system, held)
        });
        join_all(asked).await.into_iter().collect()
    }

    /// Records the round's judgements in one transaction, if this replica still holds the
    /// lease.
    async fn apply(
        &self,
        now: DateTime<Utc>,
        compared: Vec<(Uuid, Views)>,
        unanswered: Vec<Uuid>,
        changes: &BTreeMap<System, Result<Changes, AskError>>,
        more: bool,
    ) -> anyhow::Result<Round> {
        let mut round = Round {
            ran: true,
            unanswered: unanswered.len(),
            more,
            ..Round::default()
        };
        let ids: Vec<Uuid> = compared
            .iter()
            .map(|(id, _)| *id)
            .chain(unanswered.iter().copied())
            .collect();
        let mut tx = self.pool.begin().await?;
        let mut existing = store::lock_tracked(&mut tx, &ids).await?;
        let mut rows = Vec::with_capacity(ids.len());
        let mut forgotten = Vec::new();
        let mut agreements = Vec::new();
        let mut counted = Vec::new();
        let mut listed = Vec::new();
        let mut resolved = Vec::new();
        for (order_id, views) in compared {
            let previous = existing.remove(&order_id);
            let Some(judgement) = verdict::judge(&views) else {
                forgotten.push(order_id);
                continue;
            };
            let row = self.record(
                now,
                order_id,
                views,
                &judgement,
                previous.as_ref(),
                &mut counted,
            );
            round.compared += 1;
            if let Some(status) = row.agreed_on {
                round.agreeing += 1;
                let newly = previous.as_ref().and_then(|p| p.agreed_on) != Some(status);
                if let (true, Some(reference), Some(time)) =
                    (newly, judgement.reference, judgement.agreement_time())
                {
                    agreements.push((reference.owner, time));
                }
                if let Some(previous) = previous.as_ref().filter(|p| p.listed_at.is_some()) {
                    resolved.push((disagreeing(previous), status));
                }
            } else if row.listed_at.is_some() {
                if previous.as_ref().is_none_or(|p| p.listed_at.is_none()) {
                    round.listed += 1;
                }
                listed.push(disagreeing(&row));
            }
            rows.push(row);
        }
        let retry_at = now + chrono_duration(self.config.interval);
        for order_id in unanswered {
            let mut row = existing
                .remove(&order_id)
                .unwrap_or_else(|| Tracked::pending(order_id, now));
            row.recheck_at = Some(row.recheck_at.map_or(retry_at, |at| at.max(retry_at)));
            rows.push(row);
        }
        store::upsert_tracked(&mut tx, &rows).await?;
        store::forget(&mut tx, &forgotten).await?;
        incidents::open_for_disagreements(&mut tx, &self.announcer, &listed, now).await?;
        incidents::resolve_agreed(&mut tx, &self.announcer, &resolved, now).await?;
        for (system, changed) in changes {
            if let Ok(changed) = changed {
                store::save_cursor(&mut tx, *system, changed.cursor).await?;
            }
        }
        store::prune(
            &mut tx,
            now - chrono_duration(self.config.window),
            now - chrono::Duration::hours(24),
        )
        .await?;
        store::sample(&mut tx, now).await?;
        let next = if more { now } else { retry_at };
        if !store::finish_round(&mut tx, self.replica, now, next).await? {
            tx.rollback().await?;
            tracing::warn!(
                "another replica took the reconciliation round over; its results are dropped"
            );
            return Ok(Round::default());
        }
        tx.commit().await?;
        for (owner, time) in agreements {
            let seconds = time.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
            self.metrics.record_agreement(owner, seconds);
        }
        for mismatch in counted {
            self.metrics.record_mismatch(mismatch.holder, mismatch.kind);
        }
        Ok(round)
    }

    /// The tracked row of `order_id` after `judgement`, given what was tracked before; pushes
    /// the mismatches to count now onto `counted`.
    fn record(
        &self,
        now: DateTime<Utc>,
        order_id: Uuid,
        views: Views,
        judgement: &Judgement,
        previous: Option<&Tracked>,
        counted: &mut Vec<verdict::Mismatch>,
    ) -> Tracked {
        let mut row = Tracked {
            order_id,
            changed_at: judgement.changed_at,
            checked_at: Some(now),
            agreed_on: judgement.agreed_on(),
            reference: judgement.reference.map(|r| r.status),
            owner: judgement.reference.map(|r| r.owner),
            views,
            mismatches: judgement.mismatches.clone(),
            ..Tracked::pending(order_id, judgement.changed_at)
        };
        if row.agreed_on.is_some() {
            return row;
        }
        let since = previous
            .and_then(|p| p.disagreeing_since)
            .unwrap_or_else(|| judgement.changed_at.min(now));
        let due = since + chrono_duration(self.config.after);
        row.disagreeing_since = Some(since);
        row.detected_at = Some(previous.and_then(|p| p.detected_at).unwrap_or(now));
        row.listed_at = previous
            .and_then(|p| p.listed_at)
            .or_else(|| (now >= due).then_some(now));
        row.counted = previous.map(|p| p.counted.clone()).unwrap_or_default();
        let recheck = now + chrono_duration(self.config.recheck_interval);
        if row.listed_at.is_some() {
            for mismatch in &judgement.mismatches {
                let key = mismatch.key();
                if !row.counted.contains(&key) {
                    row.counted.push(key);
                    counted.push(*mismatch);
                }
            }
            row.recheck_at = Some(recheck);
        } else {
            row.recheck_at = Some(recheck.min(due));
        }
        row
    }
}

/// What an incident says of a tracked disagreement.
fn disagreeing(row: &Tracked) -> Disagreeing {
    let judgement = Judgement {
        reference: row
            .reference
            .zip(row.owner)
            .map(|(status, owner)| verdict::Reference {
                status,
                owner,
                since: row.changed_at,
            }),
        mismatches: row.mismatches.clone(),
        changed_at: row.changed_at,
    };
    Disagreeing {
        order_id: row.order_id,
        status: row.reference,
        since: row.disagreeing_since.unwrap_or(row.changed_at),
        summary: judgement.describe(),
        mismatches: row
            .mismatches
            .iter()
            .map(|m| format!("{}:{}", m.holder, m.kind.as_str()))
            .collect(),
    }
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or_else(|_| chrono::Duration::days(36_500))
}
