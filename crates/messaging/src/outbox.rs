//! The transactional outbox: [`enqueue`] writes a message in the caller's transaction, next to
//! the business change it announces, and [`OutboxRelay`] publishes committed rows.
//!
//! Guarantees: a committed row is published at least once (the relay retries until the broker
//! confirms); a rolled-back transaction publishes nothing. The relay may publish a row twice when
//! it dies between the confirm and marking the row, which the consumers' inbox absorbs. Several
//! relays can run against one database: rows are claimed with `FOR UPDATE SKIP LOCKED`.
//!
//! Tracing: the row stores the context of the transaction that wrote it. The relay's PRODUCER
//! span `publish hallmark.orders` is that context's child, and the message carries the PRODUCER
//! span as its creation context, so the trace runs on from the request to every consumer.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::types::FieldTable;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use platform::db::{Carrier, StoredTrace, from_carrier};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use telemetry::attr::semconv::{
    MESSAGING_DESTINATION_NAME, MESSAGING_MESSAGE_BODY_SIZE, MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME, MESSAGING_OPERATION_TYPE, MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
    MESSAGING_SYSTEM,
};
use telemetry::db::Traced;
use telemetry::propagation::{Activity, with_order};

use crate::headers::inject_amqp;
use telemetry::{attr, spans};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use domain::events::Envelope;

use crate::broker::{Backoff, Broker};
use crate::crash;
use crate::publisher::{Outgoing, PublishError, Publisher};

/// The `NOTIFY` channel that wakes the relay when a row is written.
pub const NOTIFY_CHANNEL: &str = "hallmark_outbox";

/// Writes `envelope` to the outbox inside the caller's transaction, with the current trace context.
pub async fn enqueue(tx: &mut PgConnection, envelope: &Envelope) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO messaging.outbox (message_id, routing_key, kind, order_id, body, trace) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(envelope.message_id)
    .bind(envelope.routing_key())
    .bind(&envelope.kind)
    .bind(envelope.order_id)
    .bind(envelope.to_vec())
    .bind(platform::db::current_trace())
    .execute(&mut *tx)
    .db("INSERT outbox")
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A message [`republish`] put back into the outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Requeued {
    pub message_id: Uuid,
    pub kind: String,
    pub routing_key: String,
    /// When the relay had published it; `None` when it was still waiting to go out (and is left
    /// as it was).
    pub published_at: Option<DateTime<Utc>>,
}

/// Puts back into the outbox, in the caller's transaction, the messages by which this service
/// told the others about `order_id`: its latest `order.status_changed` and every other message it
/// wrote for the order (the one that introduced the order to the next system: Shop's
/// `order.created`, CRM's price request). Returns them in the order they go out, which is the
/// order they were first written in; none when the outbox holds none for the order (it wrote
/// none, or they were deleted after the outbox retention).
///
/// Each keeps its message id and body: a consumer that applied it finds its inbox row and drops
/// the copy, one that missed it (the message was dead-lettered, or lost) applies it. That holds
/// while the consumers keep inbox rows longer than the outbox keeps published ones
/// (`HALLMARK_INBOX_RETENTION` over `HALLMARK_OUTBOX_RETENTION`, 14 days over 7 by default).
/// The relay sends them again as it sends any row, under the caller's trace context: the
/// republish joins the trace of the request that asked for it.
pub async fn republish(
    tx: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<Requeued>, sqlx::Error> {
    let status_changed = domain::events::ORDER_STATUS_CHANGED;
    let rows: Vec<Requeued> = sqlx::query_as(
        "SELECT message_id, kind, routing_key, published_at FROM messaging.outbox \
         WHERE id IN ( \
             (SELECT id FROM messaging.outbox WHERE order_id = $1 AND kind = $2 \
              ORDER BY id DESC LIMIT 1) \
             UNION ALL \
             (SELECT id FROM messaging.outbox WHERE order_id = $1 AND kind <> $2)) \
         ORDER BY id FOR UPDATE",
    )
    .bind(order_id)
    .bind(status_changed)
    .fetch_all(&mut *tx)
    .db("SELECT outbox")
    .await?;
    let sent: Vec<Uuid> = rows
        .iter()
        .filter(|row| row.published_at.is_some())
        .map(|row| row.message_id)
        .collect();
    if sent.is_empty() {
        return Ok(rows);
    }
    sqlx::query(
        "UPDATE messaging.outbox SET published_at = NULL, last_error = NULL, trace = $2 \
         WHERE message_id = ANY($1)",
    )
    .bind(&sent)
    .bind(platform::db::current_trace())
    .execute(&mut *tx)
    .db("UPDATE outbox")
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    for row in rows.iter().filter(|row| row.published_at.is_some()) {
        crate::metrics::metrics()
            .republished
            .add(1, &[KeyValue::new("type", row.kind.clone())]);
    }
    Ok(rows)
}

/// An outbox row as the [`PublishHook`] sees it.
#[derive(Debug, Clone)]
pub struct Published {
    pub message_id: Uuid,
    pub kind: String,
    pub routing_key: String,
    pub order_id: Uuid,
    /// When the relay handed the message to the broker.
    pub sent_at: DateTime<Utc>,
}

/// Work a service does in the relay's transaction around publishing, e.g. Shop moving an order
/// from `created` to `submitted` once `order.created` reached the broker.
pub trait PublishHook: Send + Sync + 'static {
    /// What `before_publish` hands to `on_published` for the same message, e.g. the order it
    /// locked, so that it is not read again.
    type Held: Send;

    /// Runs before the message is sent. Locking the rows `on_published` will change makes
    /// anything reacting to the message (which can arrive before the confirm does) wait until
    /// the relay's transaction is committed.
    fn before_publish(
        &self,
        tx: &mut PgConnection,
        message: &Published,
    ) -> impl Future<Output = Result<Self::Held, sqlx::Error>> + Send;

    /// Runs once the broker confirmed the message, before the row is committed as published,
    /// with what `before_publish` returned for it. Not called for a message that was not
    /// confirmed.
    fn on_published(
        &self,
        tx: &mut PgConnection,
        message: &Published,
        held: Self::Held,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// No follow-up work.
impl PublishHook for () {
    type Held = ();

    async fn before_publish(&self, _: &mut PgConnection, _: &Published) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn on_published(
        &self,
        _: &mut PgConnection,
        _: &Published,
        _: (),
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

/// How the relay batches and polls.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed and published per transaction.
    pub batch_size: i64,
    /// Poll interval when no `NOTIFY` arrives (a safety net; notifications wake it at once).
    pub poll_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes committed outbox rows until cancelled.
pub struct OutboxRelay<H> {
    pool: PgPool,
    broker: Broker,
    hook: H,
    config: RelayConfig,
}

struct Claimed {
    id: i64,
    message: Published,
    body: Vec<u8>,
    trace: Carrier,
}

/// An unpublished outbox row as the relay claims it.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    message_id: Uuid,
    routing_key: String,
    kind: String,
    order_id: Uuid,
    body: Vec<u8>,
    trace: StoredTrace,
}

impl From<OutboxRow> for Claimed {
    fn from(row: OutboxRow) -> Self {
        Self {
            id: row.id,
            message: Published {
                message_id: row.message_id,
                kind: row.kind,
                routing_key: row.routing_key,
                order_id: row.order_id,
                sent_at: Utc::now(),
            },
            body: row.body,
            trace: row.trace.0,
        }
    }
}

impl<H: PublishHook> OutboxRelay<H> {
    pub fn new(pool: PgPool, broker: Broker, hook: H, config: RelayConfig) -> Self {
        Self {
            pool,
            broker,
            hook,
            config,
        }
    }

    /// Runs until `cancel` fires. A batch in progress is finished first, so nothing is left
    /// half-published; rows not yet claimed wait for the next start.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut publisher: Option<Publisher> = None;
        let mut listener = self.listen().await;
        while !cancel.is_cancelled() {
            if publisher.as_ref().is_none_or(|p| !p.is_open()) {
                match Publisher::open(&self.broker).await {
                    Ok(p) => publisher = Some(p),
                    Err(err) => {
                        tracing::warn!(error = %err, "outbox relay cannot reach the broker, retrying");
                        if !backoff.wait(&cancel).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let publisher_ref = publisher.as_ref().expect("opened above");
            match self.publish_batch(publisher_ref).await {
                Ok(count) => {
                    backoff.reset();
                    if count as i64 == self.config.batch_size {
                        continue;
                    }
                    self.wait_for_work(&mut listener, &cancel).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay batch failed, retrying");
                    if matches!(err, RelayError::Publish(PublishError::Broker(_))) {
                        publisher = None;
                    }
                    if matches!(err, RelayError::Database(_)) {
                        listener = None;
                    }
                    if !backoff.wait(&cancel).await {
                        break;
                    }
                    if listener.is_none() {
                        listener = self.listen().await;
                    }
                }
            }
        }
        if let Some(publisher) = publisher {
            publisher.close().await;
        }
        tracing::info!("outbox relay stopped");
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }

    async fn wait_for_work(&self, listener: &mut Option<PgListener>, cancel: &CancellationToken) {
        let poll = tokio::time::sleep(self.config.poll_interval);
        match listener {
            Some(l) => {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = poll => {}
                    notification = l.recv() => {
                        if notification.is_err() {
                            *listener = None;
                        }
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = poll => {}
                }
            }
        }
    }

    /// Claims, publishes and marks one batch; returns how many rows were published.
    async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, message_id, routing_key, kind, order_id, body, trace \
             FROM messaging.outbox WHERE published_at IS NULL \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut claimed: Vec<Claimed> = rows.into_iter().map(Claimed::from).collect();

        let exchange = self.broker.names().orders_exchange();
        // Each row's PRODUCER span covers everything the relay does for it, the hook's work
        // before publishing included (so that it lands in the order's trace, not in a root
        // trace of its own).
        let spans: Vec<Option<Context>> = claimed
            .iter()
            .map(|row| publish_span(&exchange, row))
            .collect();
        let mut held = Vec::with_capacity(claimed.len());
        for (row, span) in claimed.iter().zip(&spans) {
            held.push(
                spans::under(
                    span.as_ref(),
                    self.hook.before_publish(&mut tx, &row.message),
                )
                .await?,
            );
        }
        for row in &mut claimed {
            row.message.sent_at = Utc::now();
        }
        let mut sent = Vec::with_capacity(claimed.len());
        for ((row, span), held) in claimed.iter().zip(&spans).zip(held) {
            let mut headers = FieldTable::default();
            match span {
                Some(span) => inject_amqp(span, &mut headers),
                None => inject_amqp(&from_carrier(&row.trace), &mut headers),
            }
            let outgoing = Outgoing {
                message_id: row.message.message_id,
                kind: &row.message.kind,
                body: &row.body,
                headers,
                occurred_at: Utc::now(),
            };
            let pending = spans::under(
                span.as_ref(),
                publisher.send(&exchange, &row.message.routing_key, outgoing),
            )
            .await;
            sent.push((row, span, held, pending));
        }

        let mut published = Vec::with_capacity(sent.len());
        let mut failure = None;
        for (row, span, held, pending) in sent {
            let result = match pending {
                Ok(pending) if failure.is_none() => pending.confirmed().await,
                Ok(_) => continue,
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => published.push((row, span, held)),
                Err(err) => {
                    {
                        let _logged_under = span.as_ref().map(|span| {
                            spans::fail(span, publish_error_type(&err), err.to_string());
                            span.clone().attach()
                        });
                        tracing::warn!(error = %err, "outbox publish failed");
                    }
                    sqlx::query(
                        "UPDATE messaging.outbox SET attempts = attempts + 1, last_error = $2 \
                         WHERE id = $1",
                    )
                    .bind(row.id)
                    .bind(err.to_string())
                    .execute(&mut *tx)
                    .await?;
                    failure = Some(err);
                }
            }
        }

        for (row, ..) in &published {
            crash::at(crash::RELAY_AFTER_CONFIRM, &row.message.routing_key);
        }
        let ids: Vec<i64> = published.iter().map(|(row, ..)| row.id).collect();
        // The relay's own bookkeeping (claiming rows, marking them sent) serves a whole batch of
        // orders at once, so it has no span: it would be a root trace of its own per batch,
        // under no order. Its health shows in the outbox backlog gauge and in failed publishes.
        sqlx::query(
            "UPDATE messaging.outbox SET published_at = now(), attempts = attempts + 1 \
             WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        let count = published.len();
        for (row, span, held) in published {
            spans::under(
                span.as_ref(),
                self.hook.on_published(&mut tx, &row.message, held),
            )
            .await?;
        }
        tx.commit().await?;
        // The spans end here; on an early return (a database error) they end as they are
        // dropped.
        spans.iter().for_each(|span| spans::end_in(span.as_ref()));
        match failure {
            Some(err) => Err(err.into()),
            None => Ok(count),
        }
    }
}

fn publish_error_type(err: &PublishError) -> &'static str {
    match err {
        PublishError::Broker(_) => "broker_unavailable",
        PublishError::Unroutable { .. } => "unroutable",
        PublishError::Nacked { .. } => "nacked",
    }
}

/// The PRODUCER span of one outbox row, a child of the context stored with the row; `None` when
/// spans are off (the stored context is then passed on as it is).
fn publish_span(exchange: &str, row: &Claimed) -> Option<Context> {
    if !telemetry::spans_enabled!() {
        return None;
    }
    let parent = with_order(
        &from_carrier(&row.trace),
        row.message.order_id,
        Activity::Progress,
    );
    let body_size = i64::try_from(row.body.len()).unwrap_or(i64::MAX);
    let attributes = vec![
        KeyValue::new(MESSAGING_SYSTEM, "rabbitmq"),
        KeyValue::new(MESSAGING_OPERATION_TYPE, "send"),
        KeyValue::new(MESSAGING_OPERATION_NAME, "publish"),
        KeyValue::new(MESSAGING_DESTINATION_NAME, exchange.to_owned()),
        KeyValue::new(
            MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
            row.message.routing_key.clone(),
        ),
        KeyValue::new(MESSAGING_MESSAGE_ID, row.message.message_id.to_string()),
        KeyValue::new(MESSAGING_MESSAGE_BODY_SIZE, body_size),
        KeyValue::new(attr::MESSAGE_TYPE, row.message.kind.clone()),
    ];
    spans::child(
        format!("publish {exchange}"),
        SpanKind::Producer,
        attributes,
        &parent,
    )
}

/// How often [`watch_backlog`] samples the outbox.
pub const BACKLOG_INTERVAL: Duration = Duration::from_secs(10);

/// Samples the outbox backlog into the `hallmark.outbox.pending` and
/// `hallmark.outbox.oldest_age` gauges every [`BACKLOG_INTERVAL`] until `cancel` fires. The
/// query is not traced: it is housekeeping under no order, and would be a root trace each time.
pub async fn watch_backlog(pool: PgPool, cancel: CancellationToken) {
    loop {
        match backlog(&pool).await {
            Ok((pending, oldest)) => {
                let metrics = crate::metrics::metrics();
                metrics
                    .outbox_pending
                    .record(u64::try_from(pending).unwrap_or_default(), &[]);
                metrics
                    .outbox_oldest_age
                    .record(oldest.unwrap_or_default().as_secs_f64(), &[]);
            }
            Err(err) => tracing::warn!(error = %err, "cannot sample the outbox backlog"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(BACKLOG_INTERVAL) => {}
        }
    }
}

/// Rows waiting to be published and the age of the oldest, for the backlog gauges.
pub async fn backlog(pool: &PgPool) -> Result<(i64, Option<Duration>), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Backlog {
        pending: i64,
        /// Seconds; `NULL` when nothing is waiting.
        oldest: Option<f64>,
    }
    let backlog: Backlog = sqlx::query_as(
        "SELECT count(*) AS pending, \
                EXTRACT(EPOCH FROM (now() - min(created_at)))::float8 AS oldest \
         FROM messaging.outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok((
        backlog.pending,
        backlog.oldest.map(|s| Duration::from_secs_f64(s.max(0.0))),
    ))
}
