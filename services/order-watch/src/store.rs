//! Persistence: the batching span writer and the per-order journey state.
//!
//! Ingest handlers hand spans to the [`Writer`] and wait for its answer, so an OTLP request is
//! acknowledged only once its spans are committed. The writer gathers whatever requests are
//! waiting into one transaction (up to [`MAX_BATCH_SPANS`] spans), which is what makes ingest
//! fast: one round of statements for many requests. Per transaction it
//!
//! 1. inserts the spans, skipping any already stored (exporters retry),
//! 2. locks the rows of the orders concerned (in id order, so concurrent writers and replicas
//!    never deadlock) and merges the new spans into them in Rust, with the status machine's
//!    projection rule ([`domain::OrderStatus::supersedes`]),
//! 3. gives each order its new deadline (last activity + its stage's threshold) and clears
//!    `stuck`; the open incident of an order that was stuck is resolved (and notified).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::{OrderStatus, Stage};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::Thresholds;
use crate::incidents::{self, Announcer};
use crate::ingest::SpanRecord;
use crate::metrics::Metrics;

/// Most spans written in one transaction.
pub const MAX_BATCH_SPANS: usize = 20_000;
/// Requests waiting for the writer before ingest answers "busy" (the exporter retries).
const QUEUE_DEPTH: usize = 256;
/// A span ending further in the future than this (a skewed clock) counts as ending now + this.
const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Database(String),
    #[error("order-watch is at capacity; retry shortly")]
    Busy,
    #[error("order-watch is shutting down")]
    ShuttingDown,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(err.to_string())
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Spans stored for the first time.
    pub new_spans: u64,
    /// Orders whose state changed.
    pub orders: u64,
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
    pub thresholds: Arc<Thresholds>,
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
        let mut tx = context.pool.begin().await?;
        let new_spans = insert_spans(&mut tx, spans).await?;
        let mut by_order: BTreeMap<Uuid, Vec<&SpanRecord>> = BTreeMap::new();
        for span in &new_spans {
            by_order.entry(span.order_id).or_default().push(span);
        }
        let ids: Vec<Uuid> = by_order.keys().copied().collect();
        let mut existing = lock_orders(&mut tx, &ids).await?;
        let mut merged = Vec::with_capacity(ids.len());
        let mut recovered = Vec::new();
        for (order_id, spans) in &by_order {
            let previous = existing.remove(order_id);
            let was_stuck = previous.as_ref().is_some_and(|p| p.stuck_since.is_some());
            let state = merge(previous, *order_id, spans, now, &context.thresholds);
            if was_stuck {
                recovered.push(state.clone());
            }
            merged.push(state);
        }
        upsert_orders(&mut tx, &merged, now).await?;
        if !recovered.is_empty() {
            incidents::resolve_recovered(&mut tx, &context.announcer, &recovered, now).await?;
        }
        tx.commit().await?;
        context.metrics.record_spans(&new_spans);
        if !merged.is_empty() {
            context.detector.notify_one();
        }
        Ok(Written {
            new_spans: new_spans.len() as u64,
            orders: merged.len() as u64,
        })
    }
}

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
    let rows = sqlx::query(
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
    let stored: Vec<(Uuid, Vec<u8>, Vec<u8>)> = rows
        .iter()
        .map(|row| (row.get("order_id"), row.get("trace_id"), row.get("span_id")))
        .collect();
    let new: HashSet<(Uuid, &[u8], &[u8])> = stored
        .iter()
        .map(|(order, trace, span)| (*order, trace.as_slice(), span.as_slice()))
        .collect();
    Ok(spans
        .iter()
        .copied()
        .filter(|s| new.contains(&(s.order_id, s.trace_id.as_slice(), s.span_id.as_slice())))
        .collect())
}

/// An order's journey summary as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderState {
    pub order_id: Uuid,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub status: Option<OrderStatus>,
    pub status_at: Option<DateTime<Utc>>,
    pub stage: Stage,
    pub terminal: bool,
    pub deadline: Option<DateTime<Utc>>,
    pub stuck_since: Option<DateTime<Utc>>,
    pub span_count: i64,
    pub error_count: i64,
    pub max_retries: i64,
    pub dead_letters: i64,
    pub last_service: String,
    pub last_span: String,
}

impl OrderState {
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Self {
        let status: Option<String> = row.get("status");
        let stage: String = row.get("stage");
        Self {
            order_id: row.get("order_id"),
            first_seen: row.get("first_seen"),
            last_seen: row.get("last_seen"),
            status: status.and_then(|s| s.parse().ok()),
            status_at: row.get("status_at"),
            stage: stage.parse().unwrap_or(Stage::Intake),
            terminal: row.get("terminal"),
            deadline: row.get("deadline"),
            stuck_since: row.get("stuck_since"),
            span_count: row.get("span_count"),
            error_count: row.get("error_count"),
            max_retries: row.get("max_retries"),
            dead_letters: row.get("dead_letters"),
            last_service: row.get("last_service"),
            last_span: row.get("last_span"),
        }
    }
}

async fn lock_orders(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<BTreeMap<Uuid, OrderState>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows =
        sqlx::query("SELECT * FROM orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE")
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let state = OrderState::from_row(row);
            (state.order_id, state)
        })
        .collect())
}

/// Folds an order's new spans into its state.
pub fn merge(
    previous: Option<OrderState>,
    order_id: Uuid,
    spans: &[&SpanRecord],
    now: DateTime<Utc>,
    thresholds: &Thresholds,
) -> OrderState {
    let latest_allowed = now + MAX_CLOCK_SKEW;
    let earliest = spans
        .iter()
        .map(|s| s.start.min(latest_allowed))
        .min()
        .unwrap_or(now);
    let mut state = previous.unwrap_or_else(|| OrderState {
        order_id,
        first_seen: earliest,
        last_seen: earliest,
        status: None,
        status_at: None,
        stage: Stage::Intake,
        terminal: false,
        deadline: None,
        stuck_since: None,
        span_count: 0,
        error_count: 0,
        max_retries: 0,
        dead_letters: 0,
        last_service: String::new(),
        last_span: String::new(),
    });
    let mut ordered: Vec<&&SpanRecord> = spans.iter().collect();
    ordered.sort_by_key(|s| s.end);
    for span in ordered {
        let end = span.end.min(latest_allowed);
        state.first_seen = state.first_seen.min(span.start.min(latest_allowed));
        if end >= state.last_seen {
            state.last_seen = end;
            state.last_service = span.service.clone();
            state.last_span = span.name.clone();
        }
        if let Some(to) = span.status_to() {
            let forward = match state.status {
                None => true,
                Some(current) => OrderStatus::supersedes(to, current),
            };
            if forward {
                state.status = Some(to);
                state.status_at = Some(end);
            }
        }
        state.span_count += 1;
        state.error_count += i64::from(span.is_error());
        if let Some(retries) = span.attribute_i64(telemetry::attr::RETRY_COUNT) {
            state.max_retries = state.max_retries.max(retries);
        }
        if span.attribute_str(telemetry::attr::DLQ_ROUTE).is_some() {
            state.dead_letters += 1;
        }
    }
    state.stage = state.status.map_or(Stage::Intake, OrderStatus::stage);
    state.terminal = state.status.is_some_and(OrderStatus::is_terminal);
    state.deadline = (!state.terminal).then(|| {
        state.last_seen
            + chrono::Duration::from_std(thresholds.for_stage(state.stage)).unwrap_or_default()
    });
    state.stuck_since = None;
    state
}

async fn upsert_orders(
    tx: &mut PgConnection,
    orders: &[OrderState],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if orders.is_empty() {
        return Ok(());
    }
    let column = |f: &dyn Fn(&OrderState) -> String| orders.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let first: Vec<DateTime<Utc>> = orders.iter().map(|o| o.first_seen).collect();
    let last: Vec<DateTime<Utc>> = orders.iter().map(|o| o.last_seen).collect();
    let status: Vec<Option<String>> = orders
        .iter()
        .map(|o| o.status.map(|s| s.as_str().to_owned()))
        .collect();
    let status_at: Vec<Option<DateTime<Utc>>> = orders.iter().map(|o| o.status_at).collect();
    let stage = column(&|o| o.stage.as_str().to_owned());
    let terminal: Vec<bool> = orders.iter().map(|o| o.terminal).collect();
    let deadline: Vec<Option<DateTime<Utc>>> = orders.iter().map(|o| o.deadline).collect();
    let spans: Vec<i64> = orders.iter().map(|o| o.span_count).collect();
    let errors: Vec<i64> = orders.iter().map(|o| o.error_count).collect();
    let retries: Vec<i64> = orders.iter().map(|o| o.max_retries).collect();
    let dead: Vec<i64> = orders.iter().map(|o| o.dead_letters).collect();
    let service = column(&|o| o.last_service.clone());
    let span = column(&|o| o.last_span.clone());
    sqlx::query(
        "INSERT INTO orders (order_id, first_seen, last_seen, status, status_at, stage, terminal, \
             deadline, stuck_since, span_count, error_count, max_retries, dead_letters, \
             last_service, last_span, updated_at) \
         SELECT u.*, $16 FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[], \
             $5::timestamptz[], $6::text[], $7::bool[], $8::timestamptz[], $9::timestamptz[], \
             $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::text[], $15::text[]) AS u \
         ON CONFLICT (order_id) DO UPDATE SET first_seen = EXCLUDED.first_seen, \
             last_seen = EXCLUDED.last_seen, status = EXCLUDED.status, \
             status_at = EXCLUDED.status_at, stage = EXCLUDED.stage, \
             terminal = EXCLUDED.terminal, deadline = EXCLUDED.deadline, \
             stuck_since = EXCLUDED.stuck_since, span_count = EXCLUDED.span_count, \
             error_count = EXCLUDED.error_count, max_retries = EXCLUDED.max_retries, \
             dead_letters = EXCLUDED.dead_letters, last_service = EXCLUDED.last_service, \
             last_span = EXCLUDED.last_span, updated_at = EXCLUDED.updated_at",
    )
    .bind(&ids)
    .bind(&first)
    .bind(&last)
    .bind(&status)
    .bind(&status_at)
    .bind(&stage)
    .bind(&terminal)
    .bind(&deadline)
    .bind(vec![None::<DateTime<Utc>>; orders.len()])
    .bind(&spans)
    .bind(&errors)
    .bind(&retries)
    .bind(&dead)
    .bind(&service)
    .bind(&span)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Reads for the API.
pub mod queries {
    use super::*;

    pub async fn order(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderState>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(pool)
            .await?;
        Ok(row.as_ref().map(OrderState::from_row))
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

    /// Every span of an order, in time order.
    pub async fn spans(pool: &PgPool, order_id: Uuid) -> Result<Vec<StoredSpan>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT trace_id, span_id, parent_span_id, service, name, kind, start_time, end_time, \
                 status_code, status_message, attributes, links \
             FROM spans WHERE order_id = $1 ORDER BY start_time, end_time",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let start: DateTime<Utc> = row.get("start_time");
                let end: DateTime<Utc> = row.get("end_time");
                StoredSpan {
                    trace_id: hex::encode(row.get::<Vec<u8>, _>("trace_id")),
                    span_id: hex::encode(row.get::<Vec<u8>, _>("span_id")),
                    parent_span_id: row
                        .get::<Option<Vec<u8>>, _>("parent_span_id")
                        .map(hex::encode),
                    service: row.get("service"),
                    name: row.get("name"),
                    kind: kind_name(row.get("kind")),
                    start,
                    end,
                    duration_ms: (end - start).num_microseconds().unwrap_or_default() as f64
                        / 1000.0,
                    status: status_name(row.get("status_code")),
                    status_message: row.get("status_message"),
                    attributes: row.get("attributes"),
                    links: row.get("links"),
                }
            })
            .collect())
    }

    /// Orders stuck right now, longest silent first.
    pub async fn stuck(pool: &PgPool, limit: i64) -> Result<Vec<OrderState>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM orders WHERE stuck_since IS NOT NULL ORDER BY last_seen LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
        Ok(rows.iter().map(OrderState::from_row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn span(status_to: Option<&str>, end_offset_s: i64, base: DateTime<Utc>) -> SpanRecord {
        let mut attributes = serde_json::Map::new();
        if let Some(to) = status_to {
            attributes.insert("order.status.to".into(), Value::String(to.into()));
        }
        SpanRecord {
            order_id: Uuid::nil(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: None,
            service: "mes-api".into(),
            name: "order priced".into(),
            kind: 1,
            start: base + chrono::Duration::seconds(end_offset_s - 1),
            end: base + chrono::Duration::seconds(end_offset_s),
            status_code: 0,
            status_message: String::new(),
            attributes,
            links: vec![],
        }
    }

    #[test]
    fn the_status_only_moves_forward_and_sets_the_stage_and_deadline() {
        let now = Utc::now();
        let thresholds = Thresholds {
            default: Duration::from_secs(60),
            per_stage: Default::default(),
        };
        let late_registered = span(Some("registered"), 5, now);
        let priced = span(Some("priced"), 3, now);
        let state = merge(
            None,
            Uuid::nil(),
            &[&late_registered, &priced],
            now,
            &thresholds,
        );
        assert_eq!(state.status, Some(OrderStatus::Priced));
        assert_eq!(state.stage, Stage::CustomerConfirmation);
        assert_eq!(state.last_seen, now + chrono::Duration::seconds(5));
        assert_eq!(state.deadline, Some(now + chrono::Duration::seconds(65)));
        assert_eq!(state.span_count, 2);
    }

    #[test]
    fn a_terminal_order_has_no_deadline_and_a_new_span_unsticks_an_order() {
        let now = Utc::now();
        let thresholds = Thresholds::default();
        let mut stuck = merge(
            None,
            Uuid::nil(),
            &[&span(Some("pricing"), 0, now)],
            now,
            &thresholds,
        );
        stuck.stuck_since = Some(now);
        let moved = merge(
            Some(stuck),
            Uuid::nil(),
            &[&span(None, 10, now)],
            now,
            &thresholds,
        );
        assert_eq!(moved.stuck_since, None);
        assert_eq!(moved.status, Some(OrderStatus::Pricing));
        let done = merge(
            Some(moved),
            Uuid::nil(),
            &[&span(Some("rejected"), 20, now)],
            now,
            &thresholds,
        );
        assert!(done.terminal);
        assert_eq!(done.deadline, None);
    }

    #[test]
    fn a_span_from_the_future_counts_as_now_plus_the_allowed_skew() {
        let now = Utc::now();
        let future = span(None, 86_400, now);
        let state = merge(None, Uuid::nil(), &[&future], now, &Thresholds::default());
        assert_eq!(state.last_seen, now + MAX_CLOCK_SKEW);
    }
}
