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
//! 2. **reads every system's changes** since where the last round stopped, from
//!    [`ReconcileConfig::overlap`] before that round began when the cursor is not further behind
//!    (changes committed late behind a page already read; `reading_start`), a page of
//!    [`ReconcileConfig::page_size`] orders at a time, at most [`ReconcileConfig::max_pages`]
//!    pages per system past the cursor (the next round then follows at once), the systems at
//!    once;
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
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::ReconcileConfig;

use crate::clock::Clock;
use crate::incidents::{self, Announcer, Disagreeing};
use crate::metrics::Metrics;
use crate::records::{AskError, Records};
use store::{Cursor, Tracked};
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
    cursor: Cursor,
    more: bool,
}

/// What reconciliation says now: `GET /api/reconciliation`'s answer, and the floor's panel.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// How long the systems may disagree on an order before it is listed.
    pub threshold_seconds: u64,
    /// Time between rounds.
    pub interval_seconds: u64,
    #[serde(flatten)]
    pub figures: store::Figures,
    /// Longest disagreeing first.
    pub disagreements: Vec<store::Disagreement>,
}

/// Which disagreements an [`Overview`] lists.
#[derive(Debug, Clone, Copy)]
pub struct Listing {
    /// Those under the threshold (still on their way) too.
    pub all: bool,
    /// Only this order's.
    pub order_id: Option<Uuid>,
    pub limit: i64,
}

impl Overview {
    pub async fn read(
        pool: &PgPool,
        config: &ReconcileConfig,
        now: DateTime<Utc>,
        listing: Listing,
    ) -> Result<Self, platform::db::ReadError> {
        // One snapshot: a round committing between the two reads would otherwise count an order
        // among the listed that the listing no longer has (or the other way round).
        let mut snapshot = platform::db::snapshot(pool).await?;
        let figures = store::figures(&mut snapshot, now).await?;
        let disagreements = store::disagreements(
            &mut snapshot,
            now,
            listing.all,
            listing.order_id,
            listing.limit,
        )
        .await?;
        Ok(Self {
            threshold_seconds: config.after.as_secs(),
            interval_seconds: config.interval.as_secs(),
            figures,
            disagreements,
        })
    }
}

/// Where a round reads a system's changes from. Changes are stamped when their transaction
/// began and may commit up to the overlap later, so a change the last round could not see yet
/// is stamped at or after that round's start less the overlap: the reading starts there, or at
/// the cursor itself when that is earlier — a reading behind by more than the overlap (a
/// backlog, a round that stopped at `max_pages`) goes on where it stopped instead of re-reading
/// the overlap each round and never getting past it. Without a cursor: the overlap before now.
fn reading_start(
    cursor: Option<Cursor>,
    now: DateTime<Utc>,
    overlap: chrono::Duration,
) -> ChangedSince {
    match cursor {
        None => ChangedSince::from(now - overlap),
        Some(Cursor {
            position,
            read_at: Some(read_at),
            ..
        }) => {
            let floor = read_at - overlap;
            if position.since < floor {
                position
            } else {
                ChangedSince::from(floor)
            }
        }
        // A cursor saved before its round's time was kept.
        Some(Cursor {
            position,
            read_at: None,
            ..
        }) => ChangedSince::from(position.since - overlap),
    }
}

/// The cursor a round that began at `now` leaves, having read up to `end` (the position after
/// its last change), to the end of the listing or not (`more`). A reading that reached the end
/// saw every change from its start that had committed: the cursor takes the round's time. One
/// that stopped at `max_pages` moves the cursor only when it got past it; stopped short (while
/// re-reading the overlap) it leaves the cursor as it was, its round's time included.
fn next_cursor(
    last: Option<Cursor>,
    end: Option<ChangedSince>,
    more: bool,
    now: DateTime<Utc>,
) -> Cursor {
    let key = |p: ChangedSince| (p.since, p.after);
    let advanced = end.filter(|end| last.is_none_or(|last| key(*end) > key(last.position)));
    let read = |position| Cursor {
        position,
        read_at: Some(now),
        caught_up: !more,
    };
    match (advanced, last) {
        (Some(end), _) => read(end),
        (None, Some(last)) if more => last,
        (None, Some(last)) => read(last.position),
        (None, None) => read(ChangedSince::from(now)),
    }
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

    /// Every system's changes since its cursor (see [`reading_start`]), the systems at once.
    async fn read_changes(
        &self,
        cursors: &BTreeMap<System, Cursor>,
        now: DateTime<Utc>,
    ) -> BTreeMap<System, Result<Changes, AskError>> {
        let read = System::ALL.map(|system| {
            let cursor = cursors.get(&system).copied();
            async move { (system, self.read_system(system, cursor, now).await) }
        });
        join_all(read).await.into_iter().collect()
    }

    async fn read_system(
        &self,
        system: System,
        cursor: Option<Cursor>,
        now: DateTime<Utc>,
    ) -> Result<Changes, AskError> {
        let overlap = chrono_duration(self.config.overlap);
        let mut from = reading_start(cursor, now, overlap);
        let mut orders = Vec::new();
        // Pages past the cursor: those re-reading the overlap behind it do not count, so that a
        // round always gets past it, however many changes the overlap holds.
        let mut pages = 0;
        let mut more = false;
        let past_cursor = |at: ChangedSince| {
            cursor.is_none_or(|c| (at.since, at.after) >= (c.position.since, c.position.after))
        };
        loop {
            let page = self
                .records
                .changed(system, from, self.config.page_size)
                .await;
            if past_cursor(from) {
                pages += 1;
            }
            self.metrics
                .record_reconcile_requests(system, "changed", page.is_ok(), 1);
            let page = page.inspect_err(|err| {
                tracing::warn!(system = %system, error = %err,
                    "cannot read the system's changes; its orders are compared at a later round");
            })?;
            orders.extend(page.orders);
            match page.next {
                Some(next) if pages < self.config.max_pages || !past_cursor(next) => from = next,
                Some(_) => {
                    more = true;
                    break;
                }
                None => break,
            }
        }
        let cursor = next_cursor(cursor, orders.last().map(ChangedSince::after), more, now);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn position(seconds: i64) -> ChangedSince {
        ChangedSince {
            since: at(seconds),
            after: Some(Uuid::from_u128(seconds as u128)),
        }
    }

    const OVERLAP: chrono::Duration = chrono::Duration::seconds(30);

    #[test]
    fn a_reading_caught_up_starts_the_overlap_before_its_last_round() {
        let cursor = Cursor {
            position: position(95),
            read_at: Some(at(100)),
            caught_up: true,
        };
        assert_eq!(
            reading_start(Some(cursor), at(110), OVERLAP),
            ChangedSince::from(at(70))
        );
    }

    #[test]
    fn a_reading_behind_by_more_than_the_overlap_goes_on_exactly_where_it_stopped() {
        let cursor = Cursor {
            position: position(20),
            read_at: Some(at(100)),
            caught_up: true,
        };
        assert_eq!(reading_start(Some(cursor), at(101), OVERLAP), position(20));
    }

    #[test]
    fn without_a_cursor_or_its_time_the_reading_starts_an_overlap_back() {
        assert_eq!(
            reading_start(None, at(100), OVERLAP),
            ChangedSince::from(at(70))
        );
        let old = Cursor {
            position: position(95),
            read_at: None,
            caught_up: true,
        };
        assert_eq!(
            reading_start(Some(old), at(100), OVERLAP),
            ChangedSince::from(at(65))
        );
    }

    #[test]
    fn a_round_stopped_short_of_the_cursor_leaves_it_and_its_time_as_they_were() {
        let last = Cursor {
            position: position(95),
            read_at: Some(at(100)),
            caught_up: true,
        };
        assert_eq!(
            next_cursor(Some(last), Some(position(80)), true, at(110)),
            last
        );
        // Having read to the end, it saw everything committed since its start.
        assert_eq!(
            next_cursor(Some(last), Some(position(80)), false, at(110)),
            Cursor {
                position: position(95),
                read_at: Some(at(110)),
                caught_up: true,
            }
        );
        assert_eq!(
            next_cursor(Some(last), Some(position(105)), true, at(110)),
            Cursor {
                position: position(105),
                read_at: Some(at(110)),
                caught_up: false,
            }
        );
    }

    /// The stall the benchmark found: more changes within one overlap than a round may read.
    /// Each round reads at most `cap` changes; a backlog of changes one a second is worked off
    /// instead of the same overlap being read again and again.
    #[test]
    fn a_backlog_larger_than_a_round_is_worked_off() {
        let cap = 10;
        let stamps: Vec<i64> = (0..200).collect();
        let mut cursor = None;
        let now = at(200);
        let mut rounds = 0;
        loop {
            rounds += 1;
            let start = reading_start(cursor, now, OVERLAP);
            // As `read_system` pages: what re-reads the overlap behind the cursor is not
            // counted against the cap.
            let behind = |p: &ChangedSince| {
                cursor.is_some_and(|c: Cursor| {
                    (p.since, p.after) <= (c.position.since, c.position.after)
                })
            };
            let listed: Vec<ChangedSince> = stamps
                .iter()
                .map(|s| position(*s))
                .filter(|p| (p.since, p.after) >= (start.since, start.after))
                .collect();
            let overlap = listed.iter().take_while(|p| behind(p)).count();
            let read: Vec<ChangedSince> = listed.iter().take(overlap + cap).copied().collect();
            let more = listed.len() > read.len();
            let end = read.last().copied();
            cursor = Some(next_cursor(cursor, end, more, now));
            assert_eq!(
                cursor.unwrap().caught_up,
                !more,
                "behind while it works it off"
            );
            if !more {
                break;
            }
            assert!(rounds < 100, "the reading does not advance: {cursor:?}");
        }
        assert_eq!(cursor.unwrap().position, position(199));
    }
}
