//! Persistence: the batching span writer and the per-order journey state.
//!
//! Ingest handlers hand spans to the [`Writer`] and wait for its answer, so an OTLP request is
//! acknowledged only once its spans are committed. The writer gathers whatever requests are
//! waiting into one transaction (up to [`MAX_BATCH_SPANS`] spans), which is what makes ingest
//! fast: one round of statements for many requests. Per transaction it
//!
//! 1. locks the rows of the orders concerned (in id order, so concurrent writers and replicas
//!    never deadlock); an order it has no row for gets one only when a span of the batch is
//!    progress (failed or not: work on the order) — a journey begins with progress, so reads of
//!    orders that never moved (a typo, a crawler, a probe) create nothing and are only counted,
//! 2. inserts the spans, skipping any already stored (exporters retry),
//! 3. merges the new spans into the orders in Rust, with the status machine's projection rule
//!    ([`domain::OrderStatus::supersedes`]); observations are kept in the journey and counted,
//! 4. gives an order that progressed its new deadline (last progress + its stage's threshold)
//!    and clears `stuck`; the open incident of an order that was stuck is resolved (and
//!    notified). Observations change neither: a stalled order stays stalled however often its
//!    status is read;
//! 5. records the ids the new spans carry that an order is found by ([`crate::identity`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::OrderStatus;
use platform::db::{Corrupt, ReadError, parse_column};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::identity::{self, Identity};
use crate::incidents::{self, Announcer};
use crate::journey::{Confirmation, OrderState, SpanRecord, activity_of, merge};
use crate::metrics::Metrics;
use crate::runtime_config::LiveConfig;
use telemetry::propagation::Activity;

/// Most spans written in one transaction.
pub const MAX_BATCH_SPANS: usize = 20_000;
/// Requests waiting for the writer before ingest answers "busy" (the exporter retries).
const QUEUE_DEPTH: usize = 256;

/// Why spans were not stored. Cloned to every request of a failed batch, so the causes are
/// shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    /// An order of the batch has a stored journey that does not read; the batch is refused
    /// (and retried by the exporter) rather than merged into a journey read wrong.
    #[error(transparent)]
    Corrupt(Arc<Corrupt>),
    #[error("order-watch is at capacity; retry shortly")]
    Busy,
    #[error("order-watch is shutting down")]
    ShuttingDown,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(Arc::new(err))
    }
}

impl From<ReadError> for StoreError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Database(err) => err.into(),
            ReadError::Corrupt(err) => Self::Corrupt(Arc::new(err)),
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Spans stored for the first time.
    pub new_spans: u64,
    /// Orders whose state changed.
    pub orders: u64,
    /// Observations of orders without a journey, dropped.
    pub without_journey: u64,
}

struct Job {
    spans: Vec<SpanRecord>,
    done: oneshot::Sender<Result<Written, StoreError>>,
}

/// The handle ingest uses.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task; it runs until `cancel` fires and the queue is drained.
    pub fn start(
        context: WriterContext,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (jobs, receiver) = mpsc::channel(QUEUE_DEPTH);
        let task = SpanWriter { context };
        let handle = tokio::spawn(task.run(receiver, cancel));
        (Self { jobs }, handle)
    }

    /// Stores `spans` and returns once they are committed.
    pub async fn write(&self, spans: Vec<SpanRecord>) -> Result<Written, StoreError> {
        if spans.is_empty() {
            return Ok(Written::default());
        }
        let (done, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { spans, done })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                mpsc::error::TrySendError::Closed(_) => StoreError::ShuttingDown,
            })?;
        answer.await.unwrap_or(Err(StoreError::ShuttingDown))
    }
}

/// What the writer works with.
pub struct WriterContext {
    pub pool: PgPool,
    /// The thresholds in force.
    pub config: LiveConfig,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub announcer: Announcer,
    /// Woken after each batch: new orders bring new, possibly earlier, deadlines.
    pub detector: Arc<Notify>,
}

struct SpanWriter {
    context: WriterContext,
}

impl SpanWriter {
    async fn run(self, mut receiver: mpsc::Receiver<Job>, cancel: CancellationToken) {
        loop {
            let first = tokio::select! {
                job = receiver.recv() => job,
                _ = cancel.cancelled() => {
                    receiver.close();
                    receiver.recv().await
                }
            };
            let Some(first) = first else { break };
            let mut jobs = vec![first];
            let mut count = jobs[0].spans.len();
            while count < MAX_BATCH_SPANS {
                match receiver.try_recv() {
                    Ok(job) => {
                        count += job.spans.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let spans: Vec<&SpanRecord> = jobs.iter().flat_map(|j| j.spans.iter()).collect();
            let result = self.write_batch(&spans).await;
            if let Err(err) = &result {
                tracing::warn!(error = %err, spans = spans.len(), "span batch not stored");
            }
            for job in jobs {
                let _ = job.done.send(result.clone());
            }
        }
        tracing::info!("span writer stopped");
    }

    async fn write_batch(&self, spans: &[&SpanRecord]) -> Result<Written, StoreError> {
        let context = &self.context;
        let now = context.clock.now();
        let mut incoming: BTreeMap<Uuid, Vec<&SpanRecord>> = BTreeMap::new();
        for span in spans {
            incoming.entry(span.order_id).or_default().push(span);
        }
        let ids: Vec<Uuid> = incoming.keys().copied().collect();
        let mut tx = context.pool.begin().await?;
        let mut existing = lock_orders(&mut tx, &ids).await?;
        let mut without_journey = Vec::new();
        incoming.retain(|order_id, spans| {
            let begins = existing.contains_key(order_id)
                || spans.iter().any(|s| s.activity == Activity::Progress);
            if !begins {
                without_journey.extend(spans.iter().copied());
            }
            begins
        });
        // An order's stored spans are bounded: past the limit only its transitions are kept
        // (they move it); the rest are counted and dropped.
        let mut over_limit = 0_u64;
        for (order_id, spans) in incoming.iter_mut() {
            let stored = existing.get(order_id).map_or(0, |s| s.span_count);
            let room = usize::try_from(MAX_SPANS_PER_ORDER - stored).unwrap_or(0);
            if spans.len() > room {
                let before = spans.len();
                let mut others = 0;
                spans.retain(|span| {
                    span.status_to.is_some() || {
                        others += 1;
                        others <= room
                    }
                });
                over_limit += (before - spans.len()) as u64;
            }
        }
        let kept: Vec<&SpanRecord> = incoming.into_values().flatten().collect();
        let new_spans = insert_spans(&mut tx, &kept).await?;
        let mut by_order: BTreeMap<Uuid, Vec<&SpanRecord>> = BTreeMap::new();
        for span in &new_spans {
            by_order.entry(span.order_id).or_default().push(span);
        }
        let mut merged = Vec::with_capacity(by_order.len());
        let mut recovered = Vec::new();
        let mut identities = BTreeMap::new();
        let config = context.config.get();
        for (order_id, spans) in &by_order {
            let previous = existing.remove(order_id);
            let was_stuck = previous.as_ref().is_some_and(|p| p.stuck_since.is_some());
            let state = merge(previous, *order_id, spans, now, &config.thresholds);
            if was_stuck && state.stuck_since.is_none() {
                recovered.push(state.clone());
            }
            if let Some(identity) = Identity::of(spans) {
                identities.insert(*order_id, (identity, state.first_seen));
            }
            merged.push(state);
        }
        upsert_orders(&mut tx, &merged, now).await?;
        identity::record(&mut tx, &identities).await?;
        if !recovered.is_empty() {
            incidents::resolve_recovered(
                &mut tx,
                &context.announcer,
                &recovered,
                incidents::MOVING_AGAIN,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        context.metrics.record_spans(&new_spans);
        context.metrics.record_without_journey(&without_journey);
        context.metrics.record_over_limit(over_limit);
        if !merged.is_empty() {
            context.detector.notify_one();
        }
        Ok(Written {
            new_spans: new_spans.len() as u64,
            orders: merged.len() as u64,
            without_journey: without_journey.len() as u64,
        })
    }
}

/// Most spans stored for one order. An order's work makes a few dozen; this many means a loop or
/// a caller flooding one order, and storing more would only cost space and the journey's reads.
pub const MAX_SPANS_PER_ORDER: i64 = 20_000;

/// A link as stored in `spans.links`.
#[derive(serde::Serialize)]
struct StoredLink<'a> {
    trace_id: &'a str,
    span_id: &'a str,
}

/// Inserts `spans`, skipping any already stored, and returns those that were new. The columns
/// borrow from the spans: nothing is copied on the way to the database but the JSON text.
async fn insert_spans<'a>(
    tx: &mut PgConnection,
    spans: &[&'a SpanRecord],
) -> Result<Vec<&'a SpanRecord>, sqlx::Error> {
    fn column<'a, T>(spans: &[&'a SpanRecord], f: impl Fn(&'a SpanRecord) -> T) -> Vec<T> {
        spans.iter().map(|span| f(span)).collect()
    }
    let links = column(spans, |s| {
        Json(
            s.links
                .iter()
                .map(|(trace_id, span_id)| StoredLink { trace_id, span_id })
                .collect::<Vec<_>>(),
        )
    });
    let rows: Vec<SpanKey> = sqlx::query_as(
        "INSERT INTO spans (order_id, trace_id, span_id, parent_span_id, service, name, kind, \
             start_time, end_time, status_code, status_message, attributes, links) \
         SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::text[], \
             $6::text[], $7::int2[], $8::timestamptz[], $9::timestamptz[], $10::int2[], \
             $11::text[], $12::jsonb[], $13::jsonb[]) \
         ON CONFLICT DO NOTHING RETURNING order_id, trace_id, span_id",
    )
    .bind(column(spans, |s| s.order_id))
    .bind(column(spans, |s| s.trace_id.as_slice()))
    .bind(column(spans, |s| s.span_id.as_slice()))
    .bind(column(spans, |s| s.parent_span_id.as_deref()))
    .bind(column(spans, |s| s.service.as_str()))
    .bind(column(spans, |s| s.name.as_str()))
    .bind(column(spans, |s| s.kind))
    .bind(column(spans, |s| s.start))
    .bind(column(spans, |s| s.end))
    .bind(column(spans, |s| s.status_code))
    .bind(column(spans, |s| s.status_message.as_str()))
    .bind(column(spans, |s| Json(&s.attributes)))
    .bind(links)
    .fetch_all(&mut *tx)
    .await?;
    // Usually every span is new; only exporters' retries bring some back.
    if rows.len() == spans.len() {
        return Ok(spans.to_vec());
    }
    let new: HashSet<(Uuid, &[u8], &[u8])> = rows
        .iter()
        .map(|row| {
            (
                row.order_id,
                row.trace_id.as_slice(),
                row.span_id.as_slice(),
            )
        })
        .collect();
    Ok(spans
        .iter()
        .copied()
        .filter(|s| new.contains(&(s.order_id, s.trace_id.as_slice(), s.span_id.as_slice())))
        .collect())
}

/// The key of a stored span, as the insert returns those that were new.
#[derive(sqlx::FromRow)]
struct SpanKey {
    order_id: Uuid,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
}

/// A row of `orders`: an order's journey summary with its status, stage and confirmation as
/// stored text, read into an [`OrderState`] with [`TryFrom`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OrderRow {
    order_id: Uuid,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    last_progress: DateTime<Utc>,
    status: Option<String>,
    status_at: Option<DateTime<Utc>>,
    status_source: String,
    stage: String,
    terminal: bool,
    deadline: Option<DateTime<Utc>>,
    check_at: Option<DateTime<Utc>>,
    stuck_since: Option<DateTime<Utc>>,
    stuck_confirmation: Option<String>,
    confirmation: Option<String>,
    confirmed_at: Option<DateTime<Utc>>,
    observations_since_progress: i64,
    span_count: i64,
    error_count: i64,
    max_retries: i64,
    dead_letters: i64,
    last_service: String,
    last_span: String,
}

impl TryFrom<OrderRow> for OrderState {
    type Error = Corrupt;

    fn try_from(row: OrderRow) -> Result<Self, Corrupt> {
        let id = row.order_id;
        let stuck_confirmation = row
            .stuck_confirmation
            .map(|text| {
                Confirmation::parse(&text).ok_or_else(|| {
                    Corrupt::new(
                        id,
                        "stuck_confirmation",
                        &text,
                        "neither `confirmed` nor `unconfirmed`",
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            order_id: id,
            first_seen: row.first_seen,
            last_seen: row.last_seen,
            last_progress: row.last_progress,
            status: row
                .status
                .map(|status| parse_column(id, "status", &status))
                .transpose()?,
            status_at: row.status_at,
            status_source: row.status_source,
            stage: parse_column(id, "stage", &row.stage)?,
            terminal: row.terminal,
            deadline: row.deadline,
            check_at: row.check_at,
            stuck_since: row.stuck_since,
            stuck_confirmation,
            confirmation: row.confirmation,
            confirmed_at: row.confirmed_at,
            observations_since_progress: row.observations_since_progress,
            span_count: row.span_count,
            error_count: row.error_count,
            max_retries: row.max_retries,
            dead_letters: row.dead_letters,
            last_service: row.last_service,
            last_span: row.last_span,
        })
    }
}

/// Reads `rows` into orders; the first that does not read fails them all.
pub(crate) fn orders_from_rows(rows: Vec<OrderRow>) -> Result<Vec<OrderState>, Corrupt> {
    rows.into_iter().map(OrderState::try_from).collect()
}

/// Locks the rows of `ids` that exist, in id order, and reads them.
pub(crate) async fn lock_orders(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<BTreeMap<Uuid, OrderState>, ReadError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT * FROM orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(orders_from_rows(rows)?
        .into_iter()
        .map(|state| (state.order_id, state))
        .collect())
}

/// Writes each order's whole state (inserting new orders).
pub(crate) async fn upsert_orders(
    tx: &mut PgConnection,
    orders: &[OrderState],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if orders.is_empty() {
        return Ok(());
    }
    fn column<'a, T>(orders: &'a [OrderState], f: impl Fn(&'a OrderState) -> T) -> Vec<T> {
        orders.iter().map(f).collect()
    }
    sqlx::query(
        "INSERT INTO orders (order_id, first_seen, last_seen, last_progress, status, status_at, \
             status_source, stage, terminal, deadline, check_at, stuck_since, \
             stuck_confirmation, confirmation, confirmed_at, observations_since_progress, \
             span_count, error_count, max_retries, dead_letters, last_service, last_span, \
             updated_at) \
         SELECT u.*, $23 FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], \
             $4::timestamptz[], $5::text[], $6::timestamptz[], $7::text[], $8::text[], \
             $9::bool[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], \
             $13::text[], $14::text[], $15::timestamptz[], $16::int8[], $17::int8[], \
             $18::int8[], $19::int8[], $20::int8[], $21::text[], $22::text[]) AS u \
         ON CONFLICT (order_id) DO UPDATE SET first_seen = EXCLUDED.first_seen, \
             last_seen = EXCLUDED.last_seen, last_progress = EXCLUDED.last_progress, \
             status = EXCLUDED.status, status_at = EXCLUDED.status_at, \
             status_source = EXCLUDED.status_source, stage = EXCLUDED.stage, \
             terminal = EXCLUDED.terminal, deadline = EXCLUDED.deadline, \
             check_at = EXCLUDED.check_at, stuck_since = EXCLUDED.stuck_since, \
             stuck_confirmation = EXCLUDED.stuck_confirmation, \
             confirmation = EXCLUDED.confirmation, confirmed_at = EXCLUDED.confirmed_at, \
             observations_since_progress = EXCLUDED.observations_since_progress, \
             span_count = EXCLUDED.span_count, error_count = EXCLUDED.error_count, \
             max_retries = EXCLUDED.max_retries, dead_letters = EXCLUDED.dead_letters, \
             last_service = EXCLUDED.last_service, last_span = EXCLUDED.last_span, \
             updated_at = EXCLUDED.updated_at",
    )
    .bind(column(orders, |o| o.order_id))
    .bind(column(orders, |o| o.first_seen))
    .bind(column(orders, |o| o.last_seen))
    .bind(column(orders, |o| o.last_progress))
    .bind(column(orders, |o| o.status.map(OrderStatus::as_str)))
    .bind(column(orders, |o| o.status_at))
    .bind(column(orders, |o| o.status_source.as_str()))
    .bind(column(orders, |o| o.stage.as_str()))
    .bind(column(orders, |o| o.terminal))
    .bind(column(orders, |o| o.deadline))
    .bind(column(orders, |o| o.check_at))
    .bind(column(orders, |o| o.stuck_since))
    .bind(column(orders, |o| {
        o.stuck_confirmation.map(Confirmation::as_str)
    }))
    .bind(column(orders, |o| o.confirmation.as_deref()))
    .bind(column(orders, |o| o.confirmed_at))
    .bind(column(orders, |o| o.observations_since_progress))
    .bind(column(orders, |o| o.span_count))
    .bind(column(orders, |o| o.error_count))
    .bind(column(orders, |o| o.max_retries))
    .bind(column(orders, |o| o.dead_letters))
    .bind(column(orders, |o| o.last_service.as_str()))
    .bind(column(orders, |o| o.last_span.as_str()))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Reads for the API.
pub mod queries {
    use super::*;
    use telemetry::attr;

    pub async fn order(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderState>, ReadError> {
        let row: Option<OrderRow> = sqlx::query_as("SELECT * FROM orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(pool)
            .await?;
        Ok(row.map(OrderState::try_from).transpose()?)
    }

    /// One stored span, for a journey.
    #[derive(Debug, Clone, serde::Serialize)]
    pub struct StoredSpan {
        pub trace_id: String,
        pub span_id: String,
        pub parent_span_id: Option<String>,
        pub service: String,
        pub name: String,
        pub kind: &'static str,
        pub start: DateTime<Utc>,
        pub end: DateTime<Utc>,
        pub duration_ms: f64,
        pub status: &'static str,
        #[serde(skip_serializing_if = "String::is_empty")]
        pub status_message: String,
        /// `progress` or `observation`, as the span says (`ingest::activity_of`); failed
        /// progress has status `error`.
        pub activity: &'static str,
        pub attributes: Value,
        pub links: Value,
    }

    fn kind_name(kind: i16) -> &'static str {
        match kind {
            1 => "internal",
            2 => "server",
            3 => "client",
            4 => "producer",
            5 => "consumer",
            _ => "unspecified",
        }
    }

    fn status_name(code: i16) -> &'static str {
        match code {
            1 => "ok",
            2 => "error",
            _ => "unset",
        }
    }

    /// The columns of a [`SpanRow`].
    const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, service, name, kind, \
        start_time, end_time, status_code, status_message, attributes, links";

    /// A row of `spans`, as a journey shows it.
    #[derive(sqlx::FromRow)]
    struct SpanRow {
        trace_id: Vec<u8>,
        span_id: Vec<u8>,
        parent_span_id: Option<Vec<u8>>,
        service: String,
        name: String,
        kind: i16,
        start_time: DateTime<Utc>,
        end_time: DateTime<Utc>,
        status_code: i16,
        status_message: String,
        attributes: Value,
        links: Value,
    }

    impl From<SpanRow> for StoredSpan {
        fn from(row: SpanRow) -> Self {
            let (start, end) = (row.start_time, row.end_time);
            // The same rule as at ingest: a status that does not parse is no transition.
            let activity = activity_of(
                row.attributes
                    .get(telemetry::attr::ORDER_ACTIVITY)
                    .and_then(Value::as_str),
                row.attributes
                    .get(telemetry::attr::ORDER_STATUS_TO)
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.parse::<OrderStatus>().is_ok()),
            );
            Self {
                trace_id: hex::encode(row.trace_id),
                span_id: hex::encode(row.span_id),
                parent_span_id: row.parent_span_id.map(hex::encode),
                service: row.service,
                name: row.name,
                kind: kind_name(row.kind),
                start,
                end,
                duration_ms: (end - start).num_microseconds().unwrap_or_default() as f64 / 1000.0,
                status: status_name(row.status_code),
                status_message: row.status_message,
                activity: activity.as_str(),
                attributes: row.attributes,
                links: row.links,
            }
        }
    }

    /// The latest `limit` spans of the order, in time order.
    pub async fn spans(
        pool: &PgPool,
        order_id: Uuid,
        limit: i64,
    ) -> Result<Vec<StoredSpan>, sqlx::Error> {
        let rows: Vec<SpanRow> = sqlx::query_as(&format!(
            "SELECT * FROM ( \
                 SELECT {SPAN_COLUMNS} \
                 FROM spans WHERE order_id = $1 ORDER BY start_time DESC, end_time DESC LIMIT $2 \
             ) latest ORDER BY start_time, end_time"
        ))
        .bind(order_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(StoredSpan::from).collect())
    }

    /// The spans that tell an order's story (`crate::desk::story`): its transitions, and every
    /// span that failed, carries an error code or dead-lettered a message; at most `limit`, the
    /// transitions first and then the latest others, in time order.
    pub async fn telling_spans(
        pool: &PgPool,
        order_id: Uuid,
        limit: i64,
    ) -> Result<Vec<StoredSpan>, sqlx::Error> {
        let rows: Vec<SpanRow> = sqlx::query_as(&format!(
            "SELECT * FROM ( \
                 SELECT {SPAN_COLUMNS} \
                 FROM spans WHERE order_id = $1 AND (status_code = 2 OR attributes ?| $3) \
                 ORDER BY attributes ? $4 DESC, start_time DESC LIMIT $2 \
             ) telling ORDER BY start_time, end_time"
        ))
        .bind(order_id)
        .bind(limit)
        .bind([attr::ORDER_STATUS_TO, attr::ERROR_CODE, attr::DLQ_ROUTE].as_slice())
        .bind(attr::ORDER_STATUS_TO)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(StoredSpan::from).collect())
    }

    /// Orders stuck right now, longest without progress first.
    pub async fn stuck(pool: &PgPool, limit: i64) -> Result<Vec<OrderState>, ReadError> {
        let rows: Vec<OrderRow> = sqlx::query_as(
            "SELECT * FROM orders WHERE stuck_since IS NOT NULL ORDER BY last_progress LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
        Ok(orders_from_rows(rows)?)
    }

    /// A stretch of an order's life whose spans never arrived.
    #[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
    pub struct Gap {
        pub detected_at: DateTime<Utc>,
        /// The system of record that held the order further along.
        pub source: String,
        pub from_status: Option<String>,
        pub to_status: String,
        /// When that system says the order reached `to_status`.
        pub status_at: DateTime<Utc>,
        /// The services whose transition spans between the two are missing.
        pub missing_services: Vec<String>,
    }

    /// The order's telemetry gaps, oldest first.
    pub async fn gaps(pool: &PgPool, order_id: Uuid) -> Result<Vec<Gap>, sqlx::Error> {
        sqlx::query_as(
            "SELECT detected_at, source, from_status, to_status, status_at, missing_services \
             FROM telemetry_gaps WHERE order_id = $1 ORDER BY detected_at, id",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::Stage;

    /// The row of a stuck order waiting for its price.
    fn row() -> OrderRow {
        let now = Utc::now();
        OrderRow {
            order_id: Uuid::now_v7(),
            first_seen: now,
            last_seen: now,
            last_progress: now,
            status: Some("pricing".into()),
            status_at: Some(now),
            status_source: "telemetry".into(),
            stage: "pricing".into(),
            terminal: false,
            deadline: Some(now),
            check_at: Some(now),
            stuck_since: Some(now),
            stuck_confirmation: Some("confirmed".into()),
            confirmation: Some("confirmed: mes-api holds it pricing".into()),
            confirmed_at: Some(now),
            observations_since_progress: 2,
            span_count: 7,
            error_count: 1,
            max_retries: 0,
            dead_letters: 0,
            last_service: "mes-api".into(),
            last_span: "order pricing".into(),
        }
    }

    #[test]
    fn an_order_row_reads_its_status_stage_and_confirmation() {
        let state = OrderState::try_from(row()).unwrap();
        assert_eq!(state.status, Some(OrderStatus::Pricing));
        assert_eq!(state.stage, Stage::Pricing);
        assert_eq!(state.stuck_confirmation, Some(Confirmation::Confirmed));
        let without_status = OrderState::try_from(OrderRow {
            status: None,
            stage: "intake".into(),
            ..row()
        })
        .unwrap();
        assert_eq!(
            (without_status.status, without_status.stage),
            (None, Stage::Intake)
        );
    }

    #[test]
    fn a_stored_status_stage_or_confirmation_no_release_knows_is_an_error_naming_the_order() {
        let teleported = || Some("teleported".to_owned());
        let cases = [
            (
                "status",
                OrderRow {
                    status: teleported(),
                    ..row()
                },
            ),
            (
                "stage",
                OrderRow {
                    stage: "teleported".into(),
                    ..row()
                },
            ),
            (
                "stuck_confirmation",
                OrderRow {
                    stuck_confirmation: teleported(),
                    ..row()
                },
            ),
        ];
        for (column, row) in cases {
            let order = row.order_id;
            let err = OrderState::try_from(row).unwrap_err();
            assert_eq!((err.order_id, err.column), (order, column));
            assert_eq!(
                err.to_string(),
                format!("order {order} holds a malformed {column}: \"teleported\"")
            );
        }
    }
}
