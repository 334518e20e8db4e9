//! Publishing with publisher confirms and mandatory routing: a message is sent only when the
//! broker has stored it in at least one queue; anything else is an error the caller retries.

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use lapin::{Confirmation, PublisherConfirm};
use uuid::Uuid;

use crate::broker::Broker;

/// Header holding the publication time in microseconds since the Unix epoch; consumers derive
/// queue wait and delivery latency from it.
pub const HEADER_PUBLISHED_AT_US: &str = "x-published-at-us";
/// Header counting the retries a message has been through (absent on the first attempt).
pub const HEADER_RETRY_COUNT: &str = "x-retry-count";
/// Headers a dead letter carries so an operator sees why and from where.
pub const HEADER_ERROR_CODE: &str = "x-error-code";
pub const HEADER_ERROR_MESSAGE: &str = "x-error-message";
pub const HEADER_FAILED_QUEUE: &str = "x-failed-queue";
pub const HEADER_ORIGINAL_EXCHANGE: &str = "x-original-exchange";
pub const HEADER_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// Header naming who first sent a message that a consumer republished (a retry, a dead letter)
/// or an operator replayed: the AMQP `user-id` of those copies is the republisher's own. Empty
/// when the message came without a sender. Trusted only from the queue's consumer and the
/// operator (see `crate::sender`).
pub const HEADER_ORIGINAL_USER_ID: &str = "x-original-user-id";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed; reconnect and try again.
    #[error("broker unavailable: {0}")]
    Broker(#[from] lapin::Error),
    /// No queue is bound for the routing key: a topology error, never silently dropped.
    #[error("message to `{exchange}` with routing key `{routing_key}` is unroutable")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    /// The broker refused to take responsibility for the message (e.g. a queue at its limit).
    #[error("broker refused message to `{exchange}` with routing key `{routing_key}`")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
}

/// One message to send: the body plus the identity every message carries as AMQP properties.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub message_id: Uuid,
    /// Event type, the AMQP `type` property.
    pub kind: &'a str,
    pub body: &'a [u8],
    /// Trace context and Hallmark headers.
    pub headers: FieldTable,
    /// When the event happened (AMQP `timestamp`, whole seconds).
    pub occurred_at: DateTime<Utc>,
}

/// A confirm-mode channel. Every message it sends carries the connection's account as its AMQP
/// `user-id`, which RabbitMQ checks: the sender identity consumers trust.
pub struct Publisher {
    channel: Channel,
    user: Option<ShortString>,
}

/// A sent message whose confirmation has not arrived yet.
pub struct Pending {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Publisher {
    pub async fn open(broker: &Broker) -> lapin::Result<Self> {
        let channel = broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            user: broker.user().map(ShortString::from),
        })
    }

    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Sends without waiting for the broker; confirm with [`Pending::confirmed`]. Sending many and
    /// confirming afterwards pipelines a batch.
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Outgoing<'_>,
    ) -> Result<Pending, PublishError> {
        let mut headers = message.headers;
        if !headers.inner().contains_key(HEADER_PUBLISHED_AT_US) {
            headers.insert(
                HEADER_PUBLISHED_AT_US.into(),
                AMQPValue::LongLongInt(Utc::now().timestamp_micros()),
            );
        }
        let mut properties = BasicProperties::default();
        if let Some(user) = &self.user {
            properties = properties.with_user_id(user.clone());
        }
        let properties = properties
            .with_message_id(ShortString::from(message.message_id.to_string()))
            .with_type(ShortString::from(message.kind))
            .with_timestamp(message.occurred_at.timestamp().max(0) as u64)
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                message.body,
                properties,
            )
            .await?;
        Ok(Pending {
            confirm,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        })
    }

    /// Sends and waits for the confirmation.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Outgoing<'_>,
    ) -> Result<(), PublishError> {
        self.send(exchange, routing_key, message)
            .await?
            .confirmed()
            .await
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "publisher closed".into()).await;
    }
}

impl Pending {
    /// Waits for the broker: `Ok` once the message is stored in at least one queue.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        match self.confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
            Confirmation::NotRequested => unreachable!("publisher channels are in confirm mode"),
        }
    }
}

/// Reads a string header (long or short string).
pub fn header_str<'a>(headers: &'a FieldTable, key: &str) -> Option<&'a str> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads an integer header of any width.
pub fn header_i64(headers: &FieldTable, key: &str) -> Option<i64> {
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}
