//! order-watch's SLO metrics, served on `/metrics` (and over OTLP like every Hallmark service).
//!
//! Two sources:
//! * spans, as they are stored: price-calculation time, status-event delivery time, spans and
//!   failed spans per service, ingest outcomes;
//! * the database, every few seconds: open orders per stage, stuck orders per stage (confirmed
//!   by their system of record, and flagged unconfirmed apart) and the share of open orders
//!   without progress for over 24 hours (counting a million rows on every scrape would
//!   make scrapes slow, so a background task keeps a snapshot).
//!
//! And reconciliation's: the share of recently changed orders on which Shop, CRM, MES and
//! order-watch agree (now, and over 24 hours), from the database like the gauges above; how long
//! they take to agree after an owner's change, the mismatches found past the threshold and the
//! requests made, recorded by the replica that ran the round.
//!
//! No label carries an order id. The per-stage gauges name the stage's owner in `service`
//! (`domain::Stage::owner`), the service whose trouble would leave orders waiting there.
//!
//! The support desk's floor ([`crate::desk::floor`]) reads the same snapshot (with the oldest
//! order of each stage), and the two SLO figures over the last hour from [`Metrics::slo`]: the
//! samples this replica stored, so with several replicas each shows its share of the traffic
//! (Prometheus's `hallmark:*:p95_5m` over all of them is what alerts use).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::Stage;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use platform::db::parse_column;
use sqlx::PgPool;
use telemetry::attr;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::journey::SpanRecord;
use crate::reconcile::store::Figures;
use crate::reconcile::verdict::{Holder, Kind};

const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// From tens of milliseconds (a status event's way to every consumer) to a day (a disagreement
/// repaired by hand).
const AGREEMENT_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
];

/// One stage's counts, as the gauges' query groups open orders.
#[derive(sqlx::FromRow)]
struct StageCounts {
    stage: String,
    open: i64,
    stuck: i64,
    unconfirmed: i64,
    silent: i64,
    stuck_silent: i64,
    oldest: DateTime<Utc>,
}

/// The price-calculation objective: 99 % of calculations end with a price or a rejection within
/// 10 s (`deploy/prometheus/rules/slo.yml`, whose alerts hold the product to it).
pub const PRICE_CALCULATION_OBJECTIVE: Duration = Duration::from_secs(10);
/// The status-event delivery objective: 99 % of status events committed by their consumer
/// within 5 s of publication.
pub const STATUS_EVENT_DELIVERY_OBJECTIVE: Duration = Duration::from_secs(5);
/// The share of good events both objectives ask for.
pub const OBJECTIVE_TARGET: f64 = 0.99;
/// How far back [`Metrics::slo`] looks.
pub const SLO_WINDOW: Duration = Duration::from_secs(3600);
/// Most samples kept per figure; beyond, the oldest go first.
const MAX_SLO_SAMPLES: usize = 20_000;

/// Recent measurements of one SLO figure: when each ended, how long it took, whether it counted
/// as good.
#[derive(Debug, Default)]
struct Samples(VecDeque<(DateTime<Utc>, f64, bool)>);

impl Samples {
    fn record(&mut self, at: DateTime<Utc>, seconds: f64, good: bool) {
        if self.0.len() == MAX_SLO_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back((at, seconds, good));
    }

    /// The figure over the samples since `since`, against `objective`.
    fn figure(&self, since: DateTime<Utc>, objective: Duration) -> Objective {
        let mut seconds: Vec<f64> = Vec::new();
        let mut good = 0usize;
        for (at, value, ok) in &self.0 {
            if *at >= since {
                seconds.push(*value);
                good += usize::from(*ok);
            }
        }
        seconds.sort_by(f64::total_cmp);
        let p95 = (!seconds.is_empty()).then(|| {
            let rank = ((seconds.len() as f64) * 0.95).ceil() as usize;
            seconds[rank.clamp(1, seconds.len()) - 1]
        });
        let share = (!seconds.is_empty()).then(|| good as f64 / seconds.len() as f64);
        Objective {
            p95_seconds: p95,
            objective_seconds: objective.as_secs_f64(),
            target: OBJECTIVE_TARGET,
            within_objective: share,
            met: share.map(|s| s >= OBJECTIVE_TARGET),
            samples: seconds.len(),
        }
    }
}

/// One SLO figure as the floor shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Objective {
    /// The 95th percentile over the window; none without samples.
    pub p95_seconds: Option<f64>,
    /// What a good event must stay within.
    pub objective_seconds: f64,
    /// The share of good events the objective asks for.
    pub target: f64,
    /// The share of good events in the window.
    pub within_objective: Option<f64>,
    pub met: Option<bool>,
    pub samples: usize,
}

/// The SLO figures over [`SLO_WINDOW`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SloFigures {
    pub window_seconds: u64,
    pub price_calculation: Objective,
    pub status_event_delivery: Objective,
}

/// Reports open orders whose stored `stage` does not read, naming one of them. They are left out
/// of the gauges rather than failing the refresh: one bad row must not freeze the gauges the
/// stuck-order alerts watch.
async fn unreadable_stage(pool: &PgPool, stage: &str) -> Result<(), sqlx::Error> {
    let example: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT order_id FROM orders WHERE NOT terminal AND stage = $1 LIMIT 1")
            .bind(stage)
            .fetch_optional(pool)
            .await?;
    if let Some(order_id) = example
        && let Err(err) = parse_column::<Stage>(order_id, "stage", stage)
    {
        tracing::error!(order_id = %order_id, error = %err,
            "stored stage does not read; its orders are left out of the order gauges");
    }
    Ok(())
}

/// Open and stuck orders per stage, and the share without progress for a day.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub open: BTreeMap<Stage, u64>,
    /// Stuck orders their system of record confirmed.
    pub stuck: BTreeMap<Stage, u64>,
    /// Orders flagged stuck because their system of record could not be asked.
    pub unconfirmed: BTreeMap<Stage, u64>,
    pub silent_24h_ratio: f64,
    /// Share of open orders that are stuck and have made no progress for over 24 hours.
    pub stuck_24h_ratio: f64,
    /// The last progress of each stage's longest-waiting open order.
    pub oldest: BTreeMap<Stage, DateTime<Utc>>,
    /// When it was counted; none before the first count.
    pub counted_at: Option<DateTime<Utc>>,
}

/// Which of the snapshot's per-stage counts a gauge shows.
#[derive(Clone, Copy)]
enum Count {
    Open,
    Stuck,
    Unconfirmed,
}

pub struct Metrics {
    ingested: Counter<u64>,
    spans: Counter<u64>,
    failed_spans: Counter<u64>,
    price_calculation: Histogram<f64>,
    event_delivery: Histogram<f64>,
    detection_delay: Histogram<f64>,
    confirmation: Histogram<f64>,
    gaps: Counter<u64>,
    without_journey: Counter<u64>,
    over_limit: Counter<u64>,
    agreement: Histogram<f64>,
    mismatches: Counter<u64>,
    reconcile_requests: Counter<u64>,
    reconcile_round: Histogram<f64>,
    snapshot: Arc<RwLock<Snapshot>>,
    recent_price: Mutex<Samples>,
    recent_delivery: Mutex<Samples>,
    reconciliation: Arc<RwLock<Figures>>,
    reconciling: Arc<AtomicBool>,
    _gauges: Vec<ObservableGauge<u64>>,
    _ratio: ObservableGauge<f64>,
    _accuracy: ObservableGauge<f64>,
    _behind: ObservableGauge<f64>,
}

impl Metrics {
    pub fn new(meter: &Meter) -> Self {
        let snapshot = Arc::new(RwLock::new(Snapshot::default()));
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let per_stage = |name: &'static str, description: &'static str, count: Count| {
            let snapshot = snapshot.clone();
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    let snapshot = snapshot.read().expect("not poisoned");
                    let counts = match count {
                        Count::Open => &snapshot.open,
                        Count::Stuck => &snapshot.stuck,
                        Count::Unconfirmed => &snapshot.unconfirmed,
                    };
                    for stage in Stage::ALL.into_iter().filter(|s| *s != Stage::Done) {
                        let count = counts.get(&stage).copied().unwrap_or(0);
                        // `service`: who owns the stage, so that an alert on it can be routed
                        // and silenced with that service's own.
                        let owner = stage.owner().map_or("", domain::System::service_name);
                        observer.observe(
                            count,
                            &[
                                KeyValue::new("stage", stage.as_str()),
                                KeyValue::new("service", owner),
                            ],
                        );
                    }
                })
                .build()
        };
        let ratio_snapshot = snapshot.clone();
        let reconciliation = Arc::new(RwLock::new(Figures::default()));
        let (accuracy_figures, tracked_figures, listed_figures, behind_figures) = (
            reconciliation.clone(),
            reconciliation.clone(),
            reconciliation.clone(),
            reconciliation.clone(),
        );
        let reconciling = Arc::new(AtomicBool::new(false));
        let reconciling_gauge = reconciling.clone();
        Self {
            ingested: meter
                .u64_counter("order_watch.spans.ingested")
                .with_description("Spans received, by outcome: accepted, ignored (no order.id), rejected (malformed)")
                .build(),
            spans: meter
                .u64_counter("order_watch.order_spans")
                .with_description("Spans of orders stored, by service")
                .build(),
            failed_spans: meter
                .u64_counter("order_watch.order_spans.failed")
                .with_description("Spans of orders with error status, by service")
                .build(),
            price_calculation: seconds(
                "order_watch.price_calculation.duration",
                "Price-calculation attempts as seen in the spans, by material",
            ),
            event_delivery: seconds(
                "order_watch.status_event.delivery.duration",
                "Status events from publication to the end of their processing, by queue",
            ),
            detection_delay: seconds(
                "order_watch.detection.delay",
                "How long after its deadline a stuck order was flagged, its confirmation included, by stage",
            ),
            confirmation: seconds(
                "order_watch.confirmation.duration",
                "Asking a system of record about stuck candidates, by system and outcome (answered, failed)",
            ),
            gaps: meter
                .u64_counter("order_watch.telemetry_gaps")
                .with_description("Telemetry gaps found by asking a system of record, by the service whose spans are missing")
                .build(),
            without_journey: meter
                .u64_counter("order_watch.observations.without_journey")
                .with_description("Spans that only read an order order-watch has seen no progress of, dropped, by service")
                .build(),
            over_limit: meter
                .u64_counter("order_watch.spans.over_limit")
                .with_description("Spans dropped because their order already had the most spans order-watch stores for one")
                .build(),
            agreement: meter
                .f64_histogram("order_watch.reconciliation.agreement.duration")
                .with_unit("s")
                .with_description("From a status change in its owner to every system and order-watch holding it, by owner")
                .with_boundaries(AGREEMENT_BUCKETS.to_vec())
                .build(),
            mismatches: meter
                .u64_counter("order_watch.reconciliation.mismatches")
                .with_description("Systems found disagreeing on an order past the threshold, by system and kind (lagging, ahead, missing, diverged), once per disagreement")
                .build(),
            reconcile_requests: meter
                .u64_counter("order_watch.reconciliation.requests")
                .with_description("Requests reconciliation made to the systems, by system, listing (changed, ids, republish) and outcome (answered, failed)")
                .build(),
            reconcile_round: seconds(
                "order_watch.reconciliation.round.duration",
                "One reconciliation round: reading the changes, asking, comparing and recording",
            ),
            _behind: meter
                .f64_observable_gauge("order_watch.reconciliation.behind")
                .with_unit("s")
                .with_description("How far behind now reconciliation's reading of each system is while it works off a backlog (its last round stopped at the page limit); 0 once a round read to the end")
                .with_callback(move |observer| {
                    let figures = behind_figures.read().expect("not poisoned");
                    for (system, seconds) in &figures.behind_seconds {
                        observer.observe(*seconds, &[KeyValue::new("system", system.clone())]);
                    }
                })
                .build(),
            _accuracy: meter
                .f64_observable_gauge("order_watch.reconciliation.accuracy.ratio")
                .with_description("Share of the recently changed orders on which every system and order-watch agree: now (window=instant) and over the last 24 hours (window=24h)")
                .with_callback(move |observer| {
                    let figures = accuracy_figures.read().expect("not poisoned");
                    observer.observe(figures.accuracy, &[KeyValue::new("window", "instant")]);
                    observer.observe(figures.accuracy_24h, &[KeyValue::new("window", "24h")]);
                })
                .build(),
            _gauges: vec![
                meter
                    .u64_observable_gauge("order_watch.reconciliation.tracked")
                    .with_description("Recently changed orders reconciliation compared, in agreement or not (state)")
                    .with_callback(move |observer| {
                        let figures = tracked_figures.read().expect("not poisoned");
                        let disagreeing = figures.tracked.saturating_sub(figures.agreeing);
                        observer.observe(figures.agreeing, &[KeyValue::new("state", "agreeing")]);
                        observer.observe(disagreeing, &[KeyValue::new("state", "disagreeing")]);
                    })
                    .build(),
                meter
                    .u64_observable_gauge("order_watch.reconciliation.disagreements")
                    .with_description("Orders on which a system disagrees past the threshold, by that system and how (kind): what to alert on")
                    .with_callback(move |observer| {
                        let figures = listed_figures.read().expect("not poisoned");
                        for holder in Holder::ALL {
                            for kind in Kind::ALL {
                                let count = figures.listed.get(&(holder, kind)).copied().unwrap_or(0);
                                observer.observe(
                                    count,
                                    &[
                                        KeyValue::new("system", holder.name()),
                                        KeyValue::new("kind", kind.as_str()),
                                    ],
                                );
                            }
                        }
                    })
                    .build(),
                meter
                    .u64_observable_gauge("order_watch.reconciliation.enabled")
                    .with_description("1 when this replica takes part in reconciliation rounds, 0 when reconciliation is off (ORDER_WATCH_RECONCILE, or no system's address)")
                    .with_callback(move |observer| {
                        observer.observe(u64::from(reconciling_gauge.load(Ordering::Relaxed)), &[]);
                    })
                    .build(),
                per_stage("order_watch.orders.open", "Open (non-terminal) orders per stage", Count::Open),
                per_stage(
                    "order_watch.orders.stuck",
                    "Stuck orders per stage that their system of record confirmed",
                    Count::Stuck,
                ),
                per_stage(
                    "order_watch.orders.stuck.unconfirmed",
                    "Orders per stage flagged stuck because their system of record could not be asked",
                    Count::Unconfirmed,
                ),
            ],
            _ratio: meter
                .f64_observable_gauge("order_watch.orders.silent_24h.ratio")
                .with_description("Share of open orders without progress for over 24 hours")
                .with_callback(move |observer| {
                    let ratio = ratio_snapshot.read().expect("not poisoned").silent_24h_ratio;
                    observer.observe(ratio, &[]);
                })
                .build(),
            snapshot,
            recent_price: Mutex::default(),
            recent_delivery: Mutex::default(),
            reconciliation,
            reconciling,
        }
    }

    /// Says whether this replica runs reconciliation rounds (the `enabled` gauge, which tells
    /// a reconciler switched off from a stalled one).
    pub fn set_reconciling(&self, on: bool) {
        self.reconciling.store(on, Ordering::Relaxed);
    }

    pub fn record_ingest(&self, accepted: u64, ignored: u64, rejected: u64) {
        for (outcome, count) in [
            ("accepted", accepted),
            ("ignored", ignored),
            ("rejected", rejected),
        ] {
            if count > 0 {
                self.ingested
                    .add(count, &[KeyValue::new("outcome", outcome)]);
            }
        }
    }

    /// Records what newly stored spans tell about the system.
    pub fn record_spans(&self, spans: &[&SpanRecord]) {
        // (service, spans, failed spans): one counter update per service, not per span.
        let mut per_service: Vec<(&str, u64, u64)> = Vec::new();
        for span in spans {
            let failed = u64::from(span.is_error());
            match per_service.iter_mut().find(|(s, ..)| *s == span.service) {
                Some((_, count, failures)) => {
                    *count += 1;
                    *failures += failed;
                }
                None => per_service.push((&span.service, 1, failed)),
            }
            let seconds = (span.end - span.start)
                .num_microseconds()
                .unwrap_or_default() as f64
                / 1e6;
            if span.name == attr::span_names::PRICE_MODEL {
                let material = span
                    .attribute_str(attr::ORDER_MATERIAL)
                    .unwrap_or("unknown");
                self.price_calculation
                    .record(seconds, &[KeyValue::new("material", material.to_owned())]);
                let good = !span.is_error() && seconds <= PRICE_CALCULATION_OBJECTIVE.as_secs_f64();
                self.recent_price
                    .lock()
                    .expect("not poisoned")
                    .record(span.end, seconds, good);
            }
            if span.kind == 5
                && span.attribute_str(attr::MESSAGE_TYPE)
                    == Some(domain::events::ORDER_STATUS_CHANGED)
            {
                let waited = span.attribute_i64(attr::QUEUE_WAIT_MS).unwrap_or(0) as f64 / 1000.0;
                let queue = span
                    .attribute_str("messaging.destination.subscription.name")
                    .unwrap_or("unknown");
                self.event_delivery.record(
                    waited + seconds,
                    &[KeyValue::new("queue", queue.to_owned())],
                );
                let delivered = waited + seconds;
                let good =
                    !span.is_error() && delivered <= STATUS_EVENT_DELIVERY_OBJECTIVE.as_secs_f64();
                self.recent_delivery
                    .lock()
                    .expect("not poisoned")
                    .record(span.end, delivered, good);
            }
        }
        for (service, count, failures) in per_service {
            // A caller's own `service.name` is a label only when it is one of ours.
            let service = [KeyValue::new(
                "service",
                crate::ingest::service_label(service),
            )];
            self.spans.add(count, &service);
            if failures > 0 {
                self.failed_spans.add(failures, &service);
            }
        }
    }

    pub fn record_detection(&self, stage: Stage, delay: chrono::Duration) {
        let seconds = delay.num_microseconds().unwrap_or_default().max(0) as f64 / 1e6;
        self.detection_delay
            .record(seconds, &[KeyValue::new("stage", stage.as_str())]);
    }

    /// One round of asking `system` about `orders` stuck candidates.
    pub fn record_confirmation(
        &self,
        system: domain::System,
        answered: bool,
        orders: usize,
        elapsed: Duration,
    ) {
        let outcome = if answered { "answered" } else { "failed" };
        tracing::debug!(system = %system, orders, elapsed_ms = elapsed.as_millis() as u64, outcome, "system of record asked");
        self.confirmation.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("system", system.service_name()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// A telemetry gap: the spans of `services` never arrived.
    pub fn record_gap(&self, services: &[&'static str]) {
        for service in services {
            self.gaps.add(1, &[KeyValue::new("service", *service)]);
        }
    }

    /// Spans dropped because their order had all the spans it may have.
    pub fn record_over_limit(&self, spans: u64) {
        if spans > 0 {
            self.over_limit.add(spans, &[]);
        }
    }

    /// Observations dropped because their order has no journey.
    pub fn record_without_journey(&self, spans: &[&SpanRecord]) {
        let mut per_service: BTreeMap<&str, u64> = BTreeMap::new();
        for span in spans {
            *per_service
                .entry(crate::ingest::service_label(&span.service))
                .or_default() += 1;
        }
        for (service, count) in per_service {
            self.without_journey
                .add(count, &[KeyValue::new("service", service)]);
        }
    }

    /// The holders of an order agreed on a status `seconds` after its owner recorded it.
    pub fn record_agreement(&self, owner: domain::System, seconds: f64) {
        self.agreement
            .record(seconds, &[KeyValue::new("owner", owner.service_name())]);
    }

    /// A holder found disagreeing past the threshold, in one way, for one order.
    pub fn record_mismatch(&self, holder: Holder, kind: Kind) {
        self.mismatches.add(
            1,
            &[
                KeyValue::new("system", holder.name()),
                KeyValue::new("kind", kind.as_str()),
            ],
        );
    }

    /// `requests` requests reconciliation made to `system` of one kind (`changed`, `ids`,
    /// `republish`).
    pub fn record_reconcile_requests(
        &self,
        system: domain::System,
        listing: &'static str,
        answered: bool,
        requests: u64,
    ) {
        if requests == 0 {
            return;
        }
        let outcome = if answered { "answered" } else { "failed" };
        self.reconcile_requests.add(
            requests,
            &[
                KeyValue::new("system", system.service_name()),
                KeyValue::new("listing", listing),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    pub fn record_reconcile_round(&self, elapsed: Duration) {
        self.reconcile_round.record(elapsed.as_secs_f64(), &[]);
    }

    /// Reconciliation's figures as the gauges last showed them.
    pub fn reconciliation(&self) -> Figures {
        self.reconciliation.read().expect("not poisoned").clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().expect("not poisoned").clone()
    }

    /// The SLO figures over the [`SLO_WINDOW`] before `now`, from the spans this replica stored.
    pub fn slo(&self, now: DateTime<Utc>) -> SloFigures {
        let since = now - chrono::Duration::from_std(SLO_WINDOW).unwrap_or_default();
        SloFigures {
            window_seconds: SLO_WINDOW.as_secs(),
            price_calculation: self
                .recent_price
                .lock()
                .expect("not poisoned")
                .figure(since, PRICE_CALCULATION_OBJECTIVE),
            status_event_delivery: self
                .recent_delivery
                .lock()
                .expect("not poisoned")
                .figure(since, STATUS_EVENT_DELIVERY_OBJECTIVE),
        }
    }

    /// Recomputes the per-stage snapshot now.
    pub async fn refresh(&self, pool: &PgPool, clock: &Clock) -> Result<(), sqlx::Error> {
        let now = clock.now();
        let day_ago = now - chrono::Duration::hours(24);
        let rows: Vec<StageCounts> = sqlx::query_as(
            "SELECT stage, count(*) AS open, \
                 count(*) FILTER (WHERE stuck_confirmation = 'confirmed') AS stuck, \
                 count(*) FILTER (WHERE stuck_confirmation = 'unconfirmed') AS unconfirmed, \
                 count(*) FILTER (WHERE last_progress < $1) AS silent, \
                 count(*) FILTER (WHERE last_progress < $1 AND stuck_since IS NOT NULL) \
                     AS stuck_silent, \
                 min(last_progress) AS oldest \
             FROM orders WHERE NOT terminal GROUP BY stage",
        )
        .bind(day_ago)
        .fetch_all(pool)
        .await?;
        let mut snapshot = Snapshot::default();
        let (mut open_total, mut silent_total, mut stuck_silent_total) = (0u64, 0u64, 0u64);
        for row in rows {
            let stage = match row.stage.parse::<Stage>() {
                Ok(stage) => stage,
                Err(_) => {
                    unreadable_stage(pool, &row.stage).await?;
                    continue;
                }
            };
            let open = row.open as u64;
            open_total += open;
            silent_total += row.silent as u64;
            stuck_silent_total += row.stuck_silent as u64;
            snapshot.open.insert(stage, open);
            snapshot.stuck.insert(stage, row.stuck as u64);
            snapshot.unconfirmed.insert(stage, row.unconfirmed as u64);
            snapshot.oldest.insert(stage, row.oldest);
        }
        snapshot.counted_at = Some(now);
        let share = |count: u64| {
            if open_total == 0 {
                0.0
            } else {
                count as f64 / open_total as f64
            }
        };
        snapshot.silent_24h_ratio = share(silent_total);
        snapshot.stuck_24h_ratio = share(stuck_silent_total);
        *self.snapshot.write().expect("not poisoned") = snapshot;
        let mut snapshot = platform::db::snapshot(pool).await?;
        let figures = crate::reconcile::store::figures(&mut snapshot, clock.now()).await?;
        *self.reconciliation.write().expect("not poisoned") = figures;
        Ok(())
    }

    /// Keeps the snapshot fresh until cancelled.
    pub async fn refresh_every(
        self: Arc<Self>,
        pool: PgPool,
        clock: Clock,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        while !cancel.is_cancelled() {
            let started = Utc::now();
            if let Err(err) = self.refresh(&pool, &clock).await {
                tracing::warn!(error = %err, "cannot refresh the order gauges");
            }
            tracing::debug!(
                elapsed_ms = (Utc::now() - started).num_milliseconds(),
                "order gauges refreshed"
            );
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_slo_figure_is_the_p95_and_the_good_share_of_the_samples_in_its_window() {
        let now = Utc::now();
        let mut samples = Samples::default();
        samples.record(now - chrono::Duration::hours(2), 60.0, false);
        for i in 1..=100 {
            // 1 s to 100 s: the 95th of a hundred is 95 s.
            samples.record(now, f64::from(i), i <= 10);
        }
        let figure = samples.figure(now - chrono::Duration::hours(1), Duration::from_secs(10));
        assert_eq!(
            figure.samples, 100,
            "the older sample is outside the window"
        );
        assert_eq!(figure.p95_seconds, Some(95.0));
        assert_eq!(figure.within_objective, Some(0.10));
        assert_eq!(figure.met, Some(false));
        assert_eq!(figure.objective_seconds, 10.0);
        let empty = Samples::default().figure(now, Duration::from_secs(5));
        assert_eq!(
            (empty.p95_seconds, empty.met, empty.samples),
            (None, None, 0)
        );
    }

    #[test]
    fn the_samples_kept_are_bounded_the_oldest_going_first() {
        let now = Utc::now();
        let mut samples = Samples::default();
        for _ in 0..MAX_SLO_SAMPLES {
            samples.record(now, 1.0, true);
        }
        samples.record(now, 100.0, false);
        assert_eq!(samples.0.len(), MAX_SLO_SAMPLES);
        assert_eq!(samples.0.back().map(|s| s.1), Some(100.0));
    }
}
