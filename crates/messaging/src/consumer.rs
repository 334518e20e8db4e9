//! Consuming through the inbox, with retries and dead-lettering.
//!
//! For each delivery the consumer opens a transaction, records `(queue, message_id)` in the
//! inbox and runs the [`Handler`] in the same transaction; it acknowledges only after the commit.
//! A redelivered message finds its inbox row and is acknowledged without running the handler
//! again, so effects happen exactly once per message id.
//!
//! Before any of that, the message must come from its owner (`domain::events::Event::owner`):
//! its sender ([`crate::sender`], from the AMQP `user-id` the broker checked) must be the
//! owner's account. A message from anyone else, or from nobody, goes to `{queue}.dlq` with the
//! code `forged_sender`, is counted in `hallmark.messages.forged` and touches neither the inbox
//! nor the service's data, so a forged copy cannot take the inbox key of a real message.
//!
//! Failures:
//! * a body that is not a valid envelope can never succeed: it goes straight to `{queue}.dlq`;
//! * [`HandlerError::Permanent`]: likewise, with the handler's code and message;
//! * [`HandlerError::Transient`] (and database errors): the message is re-published to the next
//!   retry queue and comes back after that queue's delay; once the delays are used up it goes to
//!   the dead-letter queue.
//!
//! Each delivery is one CONSUMER span `process hallmark.orders`, a child of the message's creation
//! context and linked to it, with queue wait, retry count, duplicate flag and dead-letter route.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::metrics;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use sqlx::{PgConnection, PgPool};
use telemetry::attr::semconv::{
    MESSAGING_DESTINATION_NAME, MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
    MESSAGING_MESSAGE_BODY_SIZE, MESSAGING_MESSAGE_ID, MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE, MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
    MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, MESSAGING_SYSTEM,
};
use telemetry::db::Traced;
use telemetry::propagation::{Activity, order_id as baggage_order_id, with_order};
use telemetry::{attr, spans};

use crate::headers::extract_amqp;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use domain::events::Envelope;

use crate::broker::{Backoff, Broker};
use crate::crash;
use crate::publisher::{
    HEADER_ERROR_CODE, HEADER_ERROR_MESSAGE, HEADER_FAILED_QUEUE, HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_ROUTING_KEY, HEADER_ORIGINAL_USER_ID, HEADER_PUBLISHED_AT_US,
    HEADER_RETRY_COUNT, Outgoing, Publisher, header_i64, header_str,
};
use crate::sender::{self, FORGED_SENDER};
use crate::topology::QueueSpec;

/// A message handed to a [`Handler`].
#[derive(Debug, Clone)]
pub struct Incoming {
    pub envelope: Envelope,
    /// Logical queue name, e.g. `crm.orders`.
    pub queue: &'static str,
    /// Retries this message has been through (0 on the first attempt).
    pub retry_count: u32,
    /// When the message was first published.
    pub published_at: Option<DateTime<Utc>>,
    /// The message's creation context (the producer's span), for links from later work.
    pub creation_context: Context,
}

/// Why a handler could not apply a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later: a dependency is down, or an event arrived before one it depends on.
    #[error("{message}")]
    Transient { code: &'static str, message: String },
    /// Can never work: the message goes to the dead-letter queue now.
    #[error("{message}")]
    Permanent { code: &'static str, message: String },
    /// This service's database is down or restarting: not the message's fault. The consumer
    /// holds the message and tries again with back-off until the database is back, without
    /// spending the message's retries.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
}

impl HandlerError {
    pub fn transient(code: &'static str, message: impl Into<String>) -> Self {
        Self::Transient {
            code,
            message: message.into(),
        }
    }

    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        Self::Permanent {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Transient { code, .. } | Self::Permanent { code, .. } => code,
            Self::Unavailable(_) => "database_unavailable",
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(err: sqlx::Error) -> Self {
        if platform::db::is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::transient("database_error", err.to_string())
        }
    }
}

/// A stored order that does not read fails the message like any other failure: it is retried,
/// then dead-lettered, and can be replayed once the row is repaired.
impl From<platform::db::Corrupt> for HandlerError {
    fn from(err: platform::db::Corrupt) -> Self {
        Self::transient("corrupt_record", err.to_string())
    }
}

impl From<platform::db::ReadError> for HandlerError {
    fn from(err: platform::db::ReadError) -> Self {
        match err {
            platform::db::ReadError::Database(err) => err.into(),
            platform::db::ReadError::Corrupt(err) => err.into(),
        }
    }
}

/// Applies one message inside the inbox transaction.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called (in its own transaction) when a message is dead-lettered, so the service can mark
    /// the order failed with the reason. The default does nothing.
    fn on_dead_letter(
        &self,
        _tx: &mut PgConnection,
        _message: &Incoming,
        _code: &str,
        _reason: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async { Ok(()) }
    }
}

/// How one queue is consumed.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerConfig {
    pub queue: QueueSpec,
    /// Messages processed at the same time. 1 keeps the queue's order.
    pub concurrency: usize,
}

/// What the consumer did with a delivery, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Duplicate,
    Retried,
    DeadLettered,
    Requeued,
}

struct Shared<H> {
    pool: PgPool,
    broker: Broker,
    handler: Arc<H>,
    queue: &'static str,
    /// Whose copies of this queue's messages name their first sender.
    republishers: [String; 2],
    cancel: CancellationToken,
}

/// Consumes `config.queue` until `cancel` fires, reconnecting with back-off whenever the broker
/// connection or channel is lost. On cancellation it stops taking deliveries, finishes the ones
/// in progress and returns; deliveries prefetched but not started go back to the queue.
pub async fn run<H: Handler>(
    pool: PgPool,
    broker: Broker,
    handler: Arc<H>,
    config: ConsumerConfig,
    cancel: CancellationToken,
) {
    let republishers =
        sender::republishers(&config.queue, &broker.config().accounts).map(str::to_owned);
    let shared = Arc::new(Shared {
        pool,
        broker,
        handler,
        queue: config.queue.name,
        republishers,
        cancel: cancel.clone(),
    });
    if crate::faults::holds(config.queue.name) {
        tracing::warn!(
            queue = config.queue.name,
            "{}: not consuming this queue",
            crate::faults::ENV
        );
        cancel.cancelled().await;
        return;
    }
    let mut backoff = Backoff::default();
    while !cancel.is_cancelled() {
        match consume(&shared, config, &cancel, &mut backoff).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(queue = config.queue.name, error = %err, "consumer lost the broker, reconnecting");
                if !backoff.wait(&cancel).await {
                    break;
                }
            }
        }
    }
    tracing::info!(queue = config.queue.name, "consumer stopped");
}

async fn consume<H: Handler>(
    shared: &Arc<Shared<H>>,
    config: ConsumerConfig,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> lapin::Result<()> {
    let channel = shared.broker.channel().await?;
    let prefetch = u16::try_from(config.concurrency * 2).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let queue = shared.broker.names().queue(config.queue.name);
    let tag = format!("{}-{}", config.queue.name, Uuid::now_v7());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = Arc::new(Publisher::open(&shared.broker).await?);
    tracing::info!(queue = %queue, "consumer started");
    backoff.reset();

    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut in_flight = JoinSet::new();
    let result = loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        // Without its publisher (the broker closed that channel, e.g. refusing a publish) every
        // retry or dead letter would be requeued at once, again and again: start over instead.
        if !publisher.is_open() {
            break Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                lapin::ChannelState::Closed,
                "publisher",
            )));
        }
        let delivery = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let shared = shared.clone();
                let publisher = publisher.clone();
                in_flight.spawn(async move {
                    process(&shared, &publisher, delivery).await;
                    drop(permit);
                });
            }
            Some(Err(err)) => break Err(err),
            None => {
                break Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Closed,
                    "consumer",
                )));
            }
        }
        while in_flight.try_join_next().is_some() {}
    };
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    while in_flight.join_next().await.is_some() {}
    let _ = channel.close(200, "consumer stopped".into()).await;
    result
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

/// The exchange and routing key a message was first published with.
struct Origin {
    exchange: String,
    routing_key: String,
}

impl Origin {
    fn of(delivery: &Delivery, headers: &FieldTable) -> Self {
        Self {
            exchange: header_str(headers, HEADER_ORIGINAL_EXCHANGE)
                .unwrap_or(delivery.exchange.as_str())
                .to_owned(),
            routing_key: header_str(headers, HEADER_ORIGINAL_ROUTING_KEY)
                .unwrap_or(delivery.routing_key.as_str())
                .to_owned(),
        }
    }

    fn headers(&self) -> [(&'static str, AMQPValue); 2] {
        [
            (
                HEADER_ORIGINAL_EXCHANGE,
                AMQPValue::LongString(LongString::from(self.exchange.as_str())),
            ),
            (
                HEADER_ORIGINAL_ROUTING_KEY,
                AMQPValue::LongString(LongString::from(self.routing_key.as_str())),
            ),
        ]
    }
}

async fn process<H: Handler>(shared: &Shared<H>, publisher: &Publisher, delivery: Delivery) {
    let started = Instant::now();
    let headers = headers_of(&delivery);
    let user_id = delivery.properties.user_id().as_ref().map(|u| u.as_str());
    let [own, operator] = &shared.republishers;
    let sender = sender::sender_of(user_id, &headers, [own, operator]);
    let creation = extract_amqp(&headers);
    let retry_count = header_i64(&headers, HEADER_RETRY_COUNT)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    let published_at = header_i64(&headers, HEADER_PUBLISHED_AT_US)
        .and_then(DateTime::<Utc>::from_timestamp_micros);
    let parsed = Envelope::from_slice(&delivery.data);
    let order_id = parsed
        .as_ref()
        .ok()
        .map(|e| e.order_id)
        .or_else(|| baggage_order_id(&creation));
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    let queue_wait = published_at.map(|p| (Utc::now() - p).to_std().unwrap_or_default());
    // A retried message comes back through the requeue exchange; describe where it was first sent.
    let origin = Origin::of(&delivery, &headers);

    let parent = match order_id {
        Some(order) => with_order(&creation, order, Activity::Progress),
        None => creation.clone(),
    };
    let cx = if telemetry::spans_enabled!() {
        let mut attributes = Vec::with_capacity(14);
        attributes.extend([
            KeyValue::new(MESSAGING_SYSTEM, "rabbitmq"),
            KeyValue::new(MESSAGING_OPERATION_TYPE, "process"),
            KeyValue::new(MESSAGING_OPERATION_NAME, "process"),
            KeyValue::new(MESSAGING_DESTINATION_NAME, origin.exchange.clone()),
            KeyValue::new(MESSAGING_DESTINATION_SUBSCRIPTION_NAME, shared.queue),
            KeyValue::new(
                MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                origin.routing_key.clone(),
            ),
            KeyValue::new(
                MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                delivery.delivery_tag as i64,
            ),
            KeyValue::new(MESSAGING_MESSAGE_ID, message_id.clone()),
            KeyValue::new(MESSAGING_MESSAGE_BODY_SIZE, delivery.data.len() as i64),
            KeyValue::new(attr::RETRY_COUNT, i64::from(retry_count)),
        ]);
        if let Some(sender) = &sender {
            attributes.push(KeyValue::new(attr::MESSAGE_SENDER, sender.clone()));
        }
        if let Some(wait) = queue_wait {
            attributes.push(KeyValue::new(attr::QUEUE_WAIT_MS, wait.as_millis() as i64));
        }
        spans::child_linked(
            format!("process {}", origin.exchange),
            SpanKind::Consumer,
            attributes,
            vec![creation.span().span_context().clone()],
            &parent,
        )
    } else {
        None
    };
    if let Some(wait) = queue_wait {
        metrics()
            .queue_wait
            .record(wait.as_secs_f64(), &[KeyValue::new("queue", shared.queue)]);
    }

    let outcome = async {
        let envelope = match parsed {
            Ok(envelope) => envelope,
            Err(err) => {
                return dead_letter(
                    shared,
                    publisher,
                    &delivery,
                    Verdict::new("message_malformed", &err.to_string(), &sender),
                )
                .await;
            }
        };
        spans::record(KeyValue::new(attr::MESSAGE_TYPE, envelope.kind.clone()));
        // Checked before the inbox: a forged copy must neither be applied nor take the inbox
        // key of the real message.
        if let Err(forged) = sender::check(
            &envelope.data,
            sender.as_deref(),
            &shared.broker.config().accounts,
        ) {
            metrics().forged.add(
                1,
                &[
                    KeyValue::new("queue", shared.queue),
                    KeyValue::new("claimed_owner", forged.owner.service_name()),
                ],
            );
            telemetry::metrics::record_failure("consume", shared.queue, FORGED_SENDER);
            return dead_letter(
                shared,
                publisher,
                &delivery,
                Verdict::new(FORGED_SENDER, &forged.to_string(), &sender),
            )
            .await;
        }
        let incoming = Incoming {
            envelope,
            queue: shared.queue,
            retry_count,
            published_at,
            creation_context: creation,
        };
        if crate::faults::dead_letter(shared.queue, &origin.routing_key) {
            let message = format!("dead-lettered by {}", crate::faults::ENV);
            let verdict = Verdict::new(crate::faults::INJECTED, &message, &sender).of(&incoming);
            return dead_letter(shared, publisher, &delivery, verdict).await;
        }
        let mut backoff = Backoff::default();
        let applied = loop {
            match apply(shared, &incoming).await {
                Err(HandlerError::Unavailable(err)) => {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "database unavailable, holding the message"
                    );
                    if !backoff.wait(&shared.cancel).await {
                        return requeue(&delivery).await;
                    }
                }
                other => break other,
            }
        };
        match applied {
            Ok(applied) => {
                ack(&delivery).await;
                if applied {
                    if let Some(published) = published_at {
                        let latency = (Utc::now() - published).to_std().unwrap_or_default();
                        metrics().event_delivery.record(
                            latency.as_secs_f64(),
                            &[
                                KeyValue::new("queue", shared.queue),
                                KeyValue::new("type", incoming.envelope.kind.clone()),
                            ],
                        );
                    }
                    Outcome::Applied
                } else {
                    spans::record(KeyValue::new(attr::MESSAGE_DUPLICATE, true));
                    metrics()
                        .duplicates_skipped
                        .add(1, &[KeyValue::new("queue", shared.queue)]);
                    tracing::info!(message_id = %incoming.envelope.message_id, "duplicate message skipped");
                    Outcome::Duplicate
                }
            }
            Err(err) => {
                spans::record(KeyValue::new(attr::ERROR_CODE, err.code()));
                telemetry::metrics::record_failure("consume", shared.queue, err.code());
                match err {
                    HandlerError::Transient { code, message } => {
                        let verdict = Verdict::new(code, &message, &sender).of(&incoming);
                        retry_or_dead_letter(shared, publisher, &delivery, verdict).await
                    }
                    HandlerError::Permanent { code, message } => {
                        let verdict = Verdict::new(code, &message, &sender).of(&incoming);
                        dead_letter(shared, publisher, &delivery, verdict).await
                    }
                    HandlerError::Unavailable(_) => unreachable!("waited out above"),
                }
            }
        }
    };
    // Without a span of its own, the work still runs for its order (log lines name it).
    let current = cx.clone().unwrap_or(parent);
    let outcome = spans::under(Some(&current), outcome).await;
    let _entered = spans::enter(Some(&current));
    tracing::debug!(outcome = ?outcome, elapsed_ms = started.elapsed().as_millis() as u64, "delivery handled");
    spans::end_in(cx.as_ref());
}

/// Runs the handler in the inbox transaction. `Ok(false)` for a duplicate, which is counted on
/// its inbox row instead.
async fn apply<H: Handler>(shared: &Shared<H>, incoming: &Incoming) -> Result<bool, HandlerError> {
    let mut tx = shared.pool.begin().await?;
    // `xmax = 0` holds for a row this statement inserted, not for one it updated.
    let first: bool = sqlx::query_scalar(
        "INSERT INTO messaging.inbox AS i (consumer, message_id) VALUES ($1, $2) \
         ON CONFLICT (consumer, message_id) DO UPDATE \
         SET duplicates = i.duplicates + 1, last_duplicate_at = now() \
         RETURNING (xmax = 0)",
    )
    .bind(shared.queue)
    .bind(incoming.envelope.message_id)
    .fetch_one(&mut *tx)
    .db("INSERT inbox")
    .await?;
    if first {
        shared.handler.handle(&mut tx, incoming).await?;
        crash::at(crash::CONSUMER_BEFORE_COMMIT, shared.queue);
    }
    tx.commit().await?;
    if first {
        crash::at(crash::CONSUMER_AFTER_COMMIT, shared.queue);
    }
    Ok(first)
}

async fn ack(delivery: &Delivery) {
    if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
        // The broker will redeliver it; the inbox makes that harmless.
        tracing::warn!(error = %err, "ack failed; the message will be redelivered");
    }
}

/// Puts the delivery back on its queue when neither a retry nor a dead letter could be published.
async fn requeue(delivery: &Delivery) -> Outcome {
    let _ = delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
    Outcome::Requeued
}

fn copy_for_republish(delivery: &Delivery, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut headers = headers_of(delivery);
    for (key, value) in extra {
        headers.insert((*key).into(), value.clone());
    }
    headers
}

fn message_id_of(delivery: &Delivery) -> Uuid {
    delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|m| Uuid::parse_str(m.as_str()).ok())
        .unwrap_or_else(Uuid::now_v7)
}

/// Why a message is republished, and what the copy must say about it.
struct Verdict<'a> {
    code: &'a str,
    message: &'a str,
    /// Its first sender, written into every copy; `None` writes an empty name.
    sender: &'a Option<String>,
    /// The parsed message, for a message from its owner: its handler hears of a dead letter.
    incoming: Option<&'a Incoming>,
}

impl<'a> Verdict<'a> {
    fn new(code: &'a str, message: &'a str, sender: &'a Option<String>) -> Self {
        Self {
            code,
            message,
            sender,
            incoming: None,
        }
    }

    fn of(self, incoming: &'a Incoming) -> Self {
        Self {
            incoming: Some(incoming),
            ..self
        }
    }

    /// The header naming the first sender, for a copy this consumer publishes.
    fn sender_header(&self) -> (&'static str, AMQPValue) {
        let sender = self.sender.as_deref().unwrap_or_default();
        (
            HEADER_ORIGINAL_USER_ID,
            AMQPValue::LongString(LongString::from(sender)),
        )
    }
}

async fn retry_or_dead_letter<H: Handler>(
    shared: &Shared<H>,
    publisher: &Publisher,
    delivery: &Delivery,
    verdict: Verdict<'_>,
) -> Outcome {
    let delays = &shared.broker.config().retry_delays;
    let retry_count = verdict.incoming.map_or(0, |incoming| incoming.retry_count);
    let level = retry_count as usize;
    if level >= delays.len() {
        return dead_letter(shared, publisher, delivery, verdict).await;
    }
    let names = shared.broker.names();
    let [exchange, routing_key] = Origin::of(delivery, &headers_of(delivery)).headers();
    let headers = copy_for_republish(
        delivery,
        &[
            (
                HEADER_RETRY_COUNT,
                AMQPValue::LongLongInt(i64::from(retry_count + 1)),
            ),
            exchange,
            routing_key,
            verdict.sender_header(),
        ],
    );
    let kind = delivery
        .properties
        .kind()
        .as_ref()
        .map(|k| k.to_string())
        .unwrap_or_default();
    let result = publisher
        .publish(
            &names.retry_exchange(),
            &names.retry_key(level, &names.queue(shared.queue)),
            Outgoing {
                message_id: message_id_of(delivery),
                kind: &kind,
                body: &delivery.data,
                headers,
                occurred_at: Utc::now(),
            },
        )
        .await;
    match result {
        Ok(()) => {
            tracing::warn!(
                code = verdict.code,
                error = verdict.message,
                retry = retry_count + 1,
                delay_ms = delays[level].as_millis() as u64,
                "message processing failed, retrying later"
            );
            ack(delivery).await;
            Outcome::Retried
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot schedule a retry; requeueing");
            requeue(delivery).await
        }
    }
}

async fn dead_letter<H: Handler>(
    shared: &Shared<H>,
    publisher: &Publisher,
    delivery: &Delivery,
    verdict: Verdict<'_>,
) -> Outcome {
    let Verdict { code, message, .. } = verdict;
    let names = shared.broker.names();
    let exchange = names.dead_letter_exchange();
    let queue = names.queue(shared.queue);
    let route = format!("{exchange} -> {}", names.dead_letter_queue(shared.queue));
    spans::record(KeyValue::new(attr::DLQ_ROUTE, route.clone()));
    spans::record(KeyValue::new(attr::ERROR_CODE, code.to_owned()));
    Context::map_current(|cx| spans::fail(cx, code, ""));

    let [original_exchange, original_routing_key] =
        Origin::of(delivery, &headers_of(delivery)).headers();
    let headers = copy_for_republish(
        delivery,
        &[
            (
                HEADER_ERROR_CODE,
                AMQPValue::LongString(LongString::from(code)),
            ),
            (
                HEADER_ERROR_MESSAGE,
                AMQPValue::LongString(LongString::from(message)),
            ),
            (
                HEADER_FAILED_QUEUE,
                AMQPValue::LongString(LongString::from(queue.as_str())),
            ),
            original_exchange,
            original_routing_key,
            verdict.sender_header(),
        ],
    );
    let kind = delivery
        .properties
        .kind()
        .as_ref()
        .map(|k| k.to_string())
        .unwrap_or_default();
    let result = publisher
        .publish(
            &exchange,
            &queue,
            Outgoing {
                message_id: message_id_of(delivery),
                kind: &kind,
                body: &delivery.data,
                headers,
                occurred_at: Utc::now(),
            },
        )
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "cannot dead-letter a message; requeueing");
        return requeue(delivery).await;
    }
    tracing::error!(code, error = message, route = %route, "message dead-lettered");
    metrics()
        .dead_lettered
        .add(1, &[KeyValue::new("queue", shared.queue)]);
    if let Some(incoming) = verdict.incoming
        && let Err(err) = mark_dead_lettered(shared, incoming, code, message).await
    {
        tracing::warn!(error = %err, "cannot record the dead letter on the order");
    }
    ack(delivery).await;
    Outcome::DeadLettered
}

async fn mark_dead_lettered<H: Handler>(
    shared: &Shared<H>,
    incoming: &Incoming,
    code: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = shared.pool.begin().await?;
    shared
        .handler
        .on_dead_letter(&mut tx, incoming, code, message)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::db::{Corrupt, ReadError};

    #[test]
    fn a_stored_order_that_does_not_read_fails_the_message_naming_the_order() {
        let order = Uuid::now_v7();
        let corrupt = Corrupt::new(order, "status", "teleported", "unknown status");
        let err = HandlerError::from(ReadError::from(corrupt));
        assert_eq!(err.code(), "corrupt_record");
        let HandlerError::Transient { message, .. } = err else {
            panic!("retried like any failure, then dead-lettered: {err:?}");
        };
        assert!(message.contains(&order.to_string()), "{message}");
    }
}
