//! The whole floor at a glance: orders in flight per stage (how many, the longest-waiting one,
//! how many stuck), the SLO figures, the stuck orders and the open incidents — and a live feed
//! of it for the page, as server-sent events.
//!
//! What each part costs and how fresh it is:
//! * the per-stage counts are the metrics' snapshot ([`Metrics::refresh`], every
//!   `ORDER_WATCH_GAUGE_INTERVAL`): counting every open order is a scan, done once per interval
//!   for the gauges and the floor together, never per viewer; `counted_at` says when;
//! * the SLO figures are in memory ([`Metrics::slo`]);
//! * the stuck orders and open incidents are read when the floor is, from their indexes.
//!
//! The feed ([`FloorFeed`]) reads the floor every [`FLOOR_INTERVAL`] while at least one page
//! watches, once for all of them, and each page's stream sends every reading. A stream ends after
//! [`MAX_STREAM`] (the browser reconnects at once, and the reconnection is authenticated afresh,
//! so an ended session or a revoked role stops the feed) and when order-watch shuts down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event;
use chrono::{DateTime, Utc};
use domain::Stage;
use futures::Stream;
use platform::db::ReadError;
use serde::Serialize;
use sqlx::PgPool;
use telemetry::db::Traced;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::words;
use crate::api::{Summary, summary};
use crate::clock::Clock;
use crate::incidents::{self, Incident};
use crate::metrics::{Metrics, SloFigures};
use crate::reconcile::{self, ReconcileConfig};
use crate::runtime_config::LiveConfig;
use crate::store::queries;

/// How often the feed reads the floor while someone watches.
pub const FLOOR_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a page's stream lasts before it reconnects.
pub const MAX_STREAM: Duration = Duration::from_secs(10 * 60);
/// How soon a browser reconnects after its stream ended or broke.
pub const RECONNECT_AFTER: Duration = Duration::from_secs(2);
/// Most stuck orders and open incidents on the floor.
pub const MAX_LISTED: i64 = 50;

/// One stage of the floor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRow {
    pub stage: Stage,
    /// "waiting for customer confirmation".
    pub waiting_for: &'static str,
    /// The service that makes the next move.
    pub owner: Option<&'static str>,
    /// Open orders waiting here.
    pub open: u64,
    /// Of them, stuck as their system of record confirmed, and flagged unconfirmed.
    pub stuck: u64,
    pub unconfirmed: u64,
    /// The last progress of the longest-waiting one.
    pub oldest_progress: Option<DateTime<Utc>>,
    pub oldest_seconds: Option<u64>,
    pub threshold_seconds: u64,
    /// The longest-waiting one has waited longer than the threshold.
    pub over_threshold: bool,
}

/// A stuck order on the floor: its journey's summary and the external id people quote.
#[derive(Debug, Serialize)]
pub struct StuckOrder {
    #[serde(flatten)]
    pub summary: Summary,
    pub external_id: Option<String>,
}

/// The floor's SLO figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slo {
    #[serde(flatten)]
    pub figures: SloFigures,
    /// The share of open orders stuck without progress for over 24 hours.
    pub stuck_24h_ratio: f64,
    /// The share of open orders without progress for over 24 hours, stuck or not (an order
    /// waiting for its customer's decision is not stuck).
    pub without_progress_24h_ratio: f64,
}

/// `GET /api/floor`'s answer, and each event of `GET /api/floor/events`.
#[derive(Debug, Serialize)]
pub struct Floor {
    pub at: DateTime<Utc>,
    /// When the per-stage counts were made (none before the first count).
    pub counted_at: Option<DateTime<Utc>>,
    pub open: u64,
    pub stuck: u64,
    /// Every stage an open order can wait in, in the order orders pass them.
    pub stages: Vec<StageRow>,
    pub slo: Slo,
    /// Stuck orders, longest without progress first.
    pub stuck_orders: Vec<StuckOrder>,
    /// Open incidents, newest first, each with its timeline (opened, acknowledged).
    pub incidents: Vec<Incident>,
    /// Whether the systems agree: the figures and the disagreements past the threshold, the
    /// longest [`MAX_LISTED`] (as `GET /api/reconciliation` answers).
    pub reconciliation: reconcile::Overview,
}

/// What the feed last read.
#[derive(Debug, Clone)]
enum Reading {
    Floor(Arc<Floor>),
    /// The floor could not be read (the database is away); the page says so and keeps what it
    /// showed.
    Unavailable(String),
}

/// Reads the floor, and feeds it to the pages that watch it.
#[derive(Clone)]
pub struct FloorFeed {
    pool: PgPool,
    metrics: Arc<Metrics>,
    config: LiveConfig,
    reconcile: ReconcileConfig,
    clock: Clock,
    latest: Arc<watch::Sender<Option<Reading>>>,
    cancel: CancellationToken,
}

impl FloorFeed {
    /// A feed that stops its streams when `cancel` fires.
    pub fn new(
        pool: PgPool,
        metrics: Arc<Metrics>,
        config: LiveConfig,
        reconcile: ReconcileConfig,
        clock: Clock,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            pool,
            metrics,
            config,
            reconcile,
            clock,
            latest: Arc::new(watch::Sender::new(None)),
            cancel,
        }
    }

    /// The floor now.
    pub async fn read(&self) -> Result<Floor, ReadError> {
        let now = self.clock.now();
        let config = self.config.get();
        let thresholds = &config.thresholds;
        let snapshot = self.metrics.snapshot();
        let stages: Vec<StageRow> = Stage::ALL
            .into_iter()
            .filter(|s| *s != Stage::Done)
            .map(|stage| {
                let oldest = snapshot.oldest.get(&stage).copied();
                let oldest_seconds = oldest.map(|at| (now - at).num_seconds().max(0) as u64);
                let threshold = thresholds.for_stage(stage).as_secs();
                StageRow {
                    stage,
                    waiting_for: words::waiting_for(stage),
                    owner: stage.owner().map(domain::System::service_name),
                    open: snapshot.open.get(&stage).copied().unwrap_or(0),
                    stuck: snapshot.stuck.get(&stage).copied().unwrap_or(0),
                    unconfirmed: snapshot.unconfirmed.get(&stage).copied().unwrap_or(0),
                    oldest_progress: oldest,
                    oldest_seconds,
                    threshold_seconds: threshold,
                    over_threshold: oldest_seconds.is_some_and(|s| s > threshold),
                }
            })
            .collect();
        let stuck = queries::stuck(&self.pool, MAX_LISTED).await?;
        let ids: Vec<Uuid> = stuck.iter().map(|o| o.order_id).collect();
        let external = external_ids(&self.pool, &ids).await?;
        let stuck_orders = stuck
            .into_iter()
            .map(|order| StuckOrder {
                external_id: external.get(&order.order_id).cloned(),
                summary: summary(order, now, thresholds),
            })
            .collect();
        let incidents = incidents::list(&self.pool, true, MAX_LISTED).await?;
        let reconciliation = reconcile::Overview::read(
            &self.pool,
            &self.reconcile,
            now,
            reconcile::Listing {
                all: false,
                order_id: None,
                limit: MAX_LISTED,
            },
        )
        .await?;
        Ok(Floor {
            at: now,
            counted_at: snapshot.counted_at,
            open: stages.iter().map(|s| s.open).sum(),
            stuck: stages.iter().map(|s| s.stuck + s.unconfirmed).sum(),
            stages,
            slo: Slo {
                figures: self.metrics.slo(now),
                stuck_24h_ratio: snapshot.stuck_24h_ratio,
                without_progress_24h_ratio: snapshot.silent_24h_ratio,
            },
            stuck_orders,
            incidents,
            reconciliation,
        })
    }

    /// Reads the floor every [`FLOOR_INTERVAL`] while a page watches, until cancelled.
    pub async fn run(self) {
        loop {
            if self.latest.receiver_count() > 0 {
                let reading = match self.read().await {
                    Ok(floor) => Reading::Floor(Arc::new(floor)),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the floor");
                        Reading::Unavailable(unavailable())
                    }
                };
                self.latest.send_replace(Some(reading));
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(FLOOR_INTERVAL) => {}
            }
        }
    }

    /// A page's stream: `first`, then every reading of the feed, for at most [`MAX_STREAM`].
    pub fn stream(
        &self,
        first: Result<Floor, ReadError>,
    ) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
        let first = match first {
            Ok(floor) => Reading::Floor(Arc::new(floor)),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the floor");
                Reading::Unavailable(unavailable())
            }
        };
        let mut receiver = self.latest.subscribe();
        receiver.mark_unchanged();
        let cancel = self.cancel.clone();
        let ends = tokio::time::Instant::now() + MAX_STREAM;
        futures::stream::unfold((Some(first), receiver), move |(first, mut receiver)| {
            let cancel = cancel.clone();
            async move {
                let reading = match first {
                    Some(reading) => reading,
                    None => {
                        tokio::select! {
                            changed = receiver.changed() => {
                                changed.ok()?;
                                receiver.borrow_and_update().clone()?
                            }
                            _ = cancel.cancelled() => return None,
                            _ = tokio::time::sleep_until(ends) => return None,
                        }
                    }
                };
                Some((Ok(event(&reading)), (None, receiver)))
            }
        })
    }
}

fn unavailable() -> String {
    "order-watch cannot read its database right now; showing what it read last".to_owned()
}

/// The server-sent event of a reading: `floor` with the floor, or `unavailable` with why.
fn event(reading: &Reading) -> Event {
    let event = Event::default().retry(RECONNECT_AFTER);
    match reading {
        Reading::Floor(floor) => event
            .event("floor")
            .json_data(floor.as_ref())
            .unwrap_or_else(|_| Event::default().event("unavailable")),
        Reading::Unavailable(message) => event
            .event("unavailable")
            .json_data(serde_json::json!({ "message": message }))
            .unwrap_or_else(|_| Event::default().event("unavailable")),
    }
}

/// The external ids of `orders` that have one.
async fn external_ids(
    pool: &PgPool,
    orders: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    if orders.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT order_id, external_id FROM order_identities \
         WHERE order_id = ANY($1) AND external_id IS NOT NULL",
    )
    .bind(orders)
    .fetch_all(pool)
    .db("SELECT order_identities")
    .await?;
    Ok(rows.into_iter().collect())
}
