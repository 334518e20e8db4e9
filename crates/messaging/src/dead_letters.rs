//! What an operator does with dead letters: see what sits in a queue's `.dlq` and why, and send
//! messages back to the queue they failed in once the cause is fixed.
//!
//! Listing takes messages without acknowledging them and closes its channel, which returns them
//! to the dead-letter queue unchanged (a return by channel close does not count as a failed
//! delivery). Replaying publishes a copy to the queue the message failed in, through the requeue
//! exchange so that no other queue sees it again, with publisher confirms, and only then
//! acknowledges the dead letter: a crash in between leaves a message in both places, which the
//! consumer's inbox makes harmless. The replayed copy keeps its message id and trace context,
//! starts its retries from zero and counts its replays in `x-replay-count`. It is published
//! with the operator's account and names the message's first sender (`x-original-user-id`) as
//! the consumer would judge it ([`crate::sender`]): a replay vouches for no more than the dead
//! letter did, so a forged message replayed is refused again.
//!
//! The `hallmark dlq` command drives this module; see docs/reliability.md.

use std::collections::BTreeMap;

use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Serialize;
use uuid::Uuid;

use crate::broker::Broker;
use crate::publisher::{
    HEADER_ERROR_CODE, HEADER_ERROR_MESSAGE, HEADER_FAILED_QUEUE, HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_ORIGINAL_USER_ID, HEADER_PUBLISHED_AT_US, HEADER_RETRY_COUNT, Outgoing, PublishError,
    Publisher, header_i64, header_str,
};
use crate::sender;
use crate::topology::{QUEUES, QueueSpec};

/// Header counting how often an operator replayed a message.
pub const HEADER_REPLAY_COUNT: &str = "x-replay-count";

/// One message in a dead-letter queue, as an operator needs to see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Logical name of the queue it failed in, e.g. `mes.pricing`.
    pub queue: &'static str,
    /// The AMQP `message-id`: the inbox key, the same on every copy of the message.
    pub message_id: Option<String>,
    /// The AMQP `type`, e.g. `order.pricing_requested`.
    pub kind: Option<String>,
    /// From the body, when it is an envelope.
    pub order_id: Option<Uuid>,
    /// The routing key it was first published with.
    pub routing_key: Option<String>,
    /// The broker account that first sent it, as its consumer judges it; `None` when it came
    /// without one.
    pub sender: Option<String>,
    /// Why it was dead-lettered (`x-error-code` / `x-error-message`).
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Retries it went through before giving up.
    pub retries: i64,
    /// How often it was replayed before.
    pub replays: i64,
    /// The body, as text when it is UTF-8 (bodies are JSON), cut at 4 KiB.
    pub body: String,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    /// The messages with this `message-id`.
    MessageId(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(
        "unknown queue `{0}`; the queues are crm.orders, mes.pricing, mes.production and shop.status"
    )]
    UnknownQueue(String),
    #[error("broker unavailable: {0}")]
    Broker(#[from] lapin::Error),
    #[error("cannot send a dead letter back: {0}")]
    Publish(#[from] PublishError),
}

/// The consumer queue with this logical name.
pub fn queue(logical: &str) -> Result<QueueSpec, DeadLetterError> {
    QUEUES
        .into_iter()
        .find(|spec| spec.name == logical)
        .ok_or_else(|| DeadLetterError::UnknownQueue(logical.to_owned()))
}

/// Messages waiting in each dead-letter queue, in the order of [`QUEUES`]. A queue that does not
/// exist yet (its service has never connected: each declares its own) holds none.
pub async fn counts(broker: &Broker) -> Result<Vec<(&'static str, u32)>, DeadLetterError> {
    let mut channel = broker.channel().await?;
    let mut counts = Vec::with_capacity(QUEUES.len());
    for spec in QUEUES {
        let count = match depth(&channel, broker, spec).await {
            Ok(count) => count,
            Err(err) if crate::topology::reply_code(&err) == Some(404) => {
                // The broker closed the channel over it.
                channel = broker.channel().await?;
                0
            }
            Err(err) => return Err(err.into()),
        };
        counts.push((spec.name, count));
    }
    let _ = channel.close(200, "dead letters counted".into()).await;
    Ok(counts)
}

/// Up to `limit` dead letters of `spec`, oldest first, left where they are.
pub async fn list(
    broker: &Broker,
    spec: QueueSpec,
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let channel = broker.channel().await?;
    let dlq = broker.names().dead_letter_queue(spec.name);
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(message) = get(&channel, &dlq).await? else {
            break;
        };
        letters.push(describe(broker, spec, &message));
    }
    // Closing without acknowledging returns every message taken, in order.
    let _ = channel.close(200, "dead letters listed".into()).await;
    Ok(letters)
}

/// Sends the selected dead letters of `spec` back to their queue; returns those it sent. It
/// stops when the dead-letter queue is empty or shows a message it already sent back (one that
/// failed again at once), so one call replays each message at most once.
pub async fn replay(
    broker: &Broker,
    spec: QueueSpec,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let channel = broker.channel().await?;
    let publisher = Publisher::open(broker).await?;
    let dlq = broker.names().dead_letter_queue(spec.name);
    let queue = broker.names().queue(spec.name);
    let requeue = broker.names().requeue_exchange();
    let key = broker.names().requeue_key("replay", &queue);
    let mut replayed: Vec<DeadLetter> = Vec::new();
    while let Some(message) = get(&channel, &dlq).await? {
        let letter = describe(broker, spec, &message);
        if letter.message_id.is_some() && replayed.iter().any(|r| r.message_id == letter.message_id)
        {
            break;
        }
        let selected = match selection {
            Selection::All => true,
            Selection::MessageId(id) => letter.message_id.as_deref() == Some(id.as_str()),
        };
        if !selected {
            continue;
        }
        let kind = letter.kind.clone().unwrap_or_default();
        publisher
            .publish(
                &requeue,
                &key,
                Outgoing {
                    message_id: letter
                        .message_id
                        .as_deref()
                        .and_then(|id| Uuid::parse_str(id).ok())
                        .unwrap_or_else(Uuid::now_v7),
                    kind: &kind,
                    body: &message.delivery.data,
                    headers: replay_headers(&message, letter.replays + 1, &letter.sender),
                    occurred_at: chrono::Utc::now(),
                },
            )
            .await?;
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(DeadLetterError::Broker)?;
        tracing::info!(
            queue = spec.name,
            message_id = letter.message_id.as_deref().unwrap_or(""),
            order_id = letter.order_id.map(|id| id.to_string()).unwrap_or_default(),
            error_code = letter.error_code.as_deref().unwrap_or(""),
            "dead letter replayed"
        );
        replayed.push(letter);
    }
    publisher.close().await;
    // Messages not selected were taken without an ack: closing returns them.
    let _ = channel.close(200, "dead letters replayed".into()).await;
    Ok(replayed)
}

async fn depth(channel: &Channel, broker: &Broker, spec: QueueSpec) -> lapin::Result<u32> {
    let queue = channel
        .queue_declare(
            ShortString::from(broker.names().dead_letter_queue(spec.name)),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.message_count())
}

/// The next message of `queue`; `None` when it is empty or does not exist yet (its service has
/// never connected), after which the broker has closed the channel.
async fn get(channel: &Channel, queue: &str) -> lapin::Result<Option<BasicGetMessage>> {
    match channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
        .await
    {
        Err(err) if crate::topology::reply_code(&err) == Some(404) => Ok(None),
        other => other,
    }
}

fn describe(broker: &Broker, spec: QueueSpec, message: &BasicGetMessage) -> DeadLetter {
    let properties = &message.delivery.properties;
    let headers = properties.headers().clone().unwrap_or_default();
    let text = |key| header_str(&headers, key).map(str::to_owned);
    let user_id = properties.user_id().as_ref().map(|u| u.as_str());
    let republishers = sender::republishers(&spec, &broker.config().accounts);
    let body = &message.delivery.data;
    const BODY_PREVIEW: usize = 4096;
    DeadLetter {
        queue: spec.name,
        message_id: properties.message_id().as_ref().map(|m| m.to_string()),
        kind: properties.kind().as_ref().map(|k| k.to_string()),
        order_id: serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("order_id")?.as_str().map(str::to_owned))
            .and_then(|id| Uuid::parse_str(&id).ok()),
        routing_key: text(HEADER_ORIGINAL_ROUTING_KEY),
        sender: sender::sender_of(user_id, &headers, republishers),
        error_code: text(HEADER_ERROR_CODE),
        error_message: text(HEADER_ERROR_MESSAGE),
        retries: header_i64(&headers, HEADER_RETRY_COUNT).unwrap_or(0),
        replays: header_i64(&headers, HEADER_REPLAY_COUNT).unwrap_or(0),
        body: String::from_utf8_lossy(&body[..body.len().min(BODY_PREVIEW)]).into_owned(),
    }
}

/// The dead letter's headers (trace context, origin) without its verdict, with a fresh retry
/// budget and publication time, the replay counted, and its first sender named (empty for
/// none).
fn replay_headers(message: &BasicGetMessage, replays: i64, sender: &Option<String>) -> FieldTable {
    const VERDICT: [&str; 5] = [
        HEADER_ERROR_CODE,
        HEADER_ERROR_MESSAGE,
        HEADER_FAILED_QUEUE,
        HEADER_RETRY_COUNT,
        HEADER_PUBLISHED_AT_US,
    ];
    let mut headers: FieldTable = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .map(|headers| {
            headers
                .inner()
                .iter()
                .filter(|(key, _)| !VERDICT.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect::<BTreeMap<_, _>>()
                .into()
        })
        .unwrap_or_default();
    headers.insert(HEADER_REPLAY_COUNT.into(), AMQPValue::LongLongInt(replays));
    headers.insert(
        HEADER_ORIGINAL_USER_ID.into(),
        AMQPValue::LongString(sender.as_deref().unwrap_or_default().into()),
    );
    headers
}
