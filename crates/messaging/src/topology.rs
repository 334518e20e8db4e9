//! The exchanges and queues of Hallmark. Each service declares the shared exchanges and its own
//! queues, retry queues included (a [`Scope`]), so it starts on a fresh broker by itself and
//! needs no right over another service's queues.
//!
//! ```text
//! hallmark.orders (topic) ──order.created, order.status_changed.#──▶ crm.orders
//!                         ──order.pricing_requested─────────────────▶ mes.pricing
//!                         ──order.status_changed.#──────────────────▶ mes.production
//!                         ──order.status_changed.{not submitted}────▶ shop.status
//! hallmark.retry (topic, key {n}.{queue}) ▶ {service}.retry.{n} (TTL = n-th delay) ─dead-letter─▶
//!     hallmark.requeue (topic, bound *.{queue}) ▶ the original queue
//! hallmark.dlx (topic, key = queue name) ▶ {queue}.dlq
//! ```
//!
//! Every consumer queue is a quorum queue with a delivery limit and at-least-once
//! dead-lettering to `hallmark.dlx`, so a message a consumer keeps crashing on still ends in its
//! `.dlq`. Publishing is mandatory, so a missing route is an error, not silence: a message for a
//! queue whose service has never started waits in the publisher's outbox until it has.
//!
//! Each service has retry queues of its own (`shop.retry.1`, …): RabbitMQ lets only an account
//! that may read a queue create it with a dead-letter exchange, and a shared retry queue would
//! be readable by every service, with every service's retried messages in it.
//!
//! All four exchanges are topic exchanges, even where the keys are plain queue names, because
//! RabbitMQ's topic permissions restrict routing keys (publishing) and binding keys (reading) on
//! topic exchanges only: that is what keeps a service to its own keys on the shared dead-letter,
//! retry and requeue exchanges (`crate::permissions`). Earlier versions declared
//! `hallmark.dlx` and `hallmark.requeue` as direct exchanges, which [`declare`] replaces, and
//! shared retry queues `hallmark.retry.{n}` with a fanout exchange each, which it leaves alone:
//! what they still hold returns to its queue by the plain queue-name key each queue also binds on
//! `hallmark.requeue`; an operator deletes them once they are empty.

use domain::System;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::BrokerConfig;

/// A consumer queue and the routing keys it binds.
#[derive(Debug, Clone, Copy)]
pub struct QueueSpec {
    /// Logical name, e.g. `crm.orders`.
    pub name: &'static str,
    /// The service that consumes it: the only one that may read it, and whose account may
    /// republish its messages (retries, dead letters).
    pub consumer: System,
    pub bindings: &'static [&'static str],
    /// Bindings an earlier version declared and this one removes at start-up, so that a queue
    /// created by that version stops receiving what it no longer should.
    pub retired: &'static [&'static str],
}

/// CRM registers new orders and keeps its projection of every status change.
pub const CRM_ORDERS: QueueSpec = QueueSpec {
    name: "crm.orders",
    consumer: System::Crm,
    bindings: &["order.created", "order.status_changed.#"],
    retired: &[],
};
/// MES prices models on CRM's request.
pub const MES_PRICING: QueueSpec = QueueSpec {
    name: "mes.pricing",
    consumer: System::Mes,
    bindings: &["order.pricing_requested"],
    retired: &[],
};
/// MES follows the order's life around production: it starts when the customer confirms, a
/// queued calculation is dropped when the order is cancelled, and the workshop sees shipping
/// and delivery.
pub const MES_PRODUCTION: QueueSpec = QueueSpec {
    name: "mes.production",
    consumer: System::Mes,
    bindings: &["order.status_changed.#"],
    retired: &[],
};
/// Shop follows every status change for the customer-facing view, except `submitted`: only
/// Shop's own relay announces that one, for every order, and Shop has written it already.
pub const SHOP_STATUS: QueueSpec = QueueSpec {
    name: "shop.status",
    consumer: System::Shop,
    bindings: &[
        "order.status_changed.registered",
        "order.status_changed.pricing",
        "order.status_changed.priced",
        "order.status_changed.confirmed",
        "order.status_changed.in_production",
        "order.status_changed.quality_check",
        "order.status_changed.ready",
        "order.status_changed.shipped",
        "order.status_changed.delivered",
        "order.status_changed.rejected",
        "order.status_changed.cancelled",
        "order.status_changed.failed",
    ],
    retired: &["order.status_changed.#"],
};

pub const QUEUES: [QueueSpec; 4] = [CRM_ORDERS, MES_PRICING, MES_PRODUCTION, SHOP_STATUS];

/// The queues `system` consumes.
pub fn queues_of(system: System) -> impl Iterator<Item = QueueSpec> {
    QUEUES
        .into_iter()
        .filter(move |spec| spec.consumer == system)
}

/// What a connection declares when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The shared exchanges and retry queues, and the queues this service consumes with their
    /// dead-letter queues and bindings: what a service's account may configure.
    Service(System),
    /// Everything: for tests and tools that connect with an administrator's account.
    Everything,
    /// Nothing: the operator's command works on what the services declared.
    Nothing,
}

impl Scope {
    fn systems(self) -> Vec<System> {
        match self {
            Self::Service(system) => vec![system],
            Self::Everything => System::ALL.to_vec(),
            Self::Nothing => Vec::new(),
        }
    }

    fn queues(self) -> Vec<QueueSpec> {
        self.systems().into_iter().flat_map(queues_of).collect()
    }
}

/// Concrete names under a namespace.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}.")
        };
        Self { prefix }
    }

    /// The topic exchange every business event is published to.
    pub fn orders_exchange(&self) -> String {
        format!("{}hallmark.orders", self.prefix)
    }

    /// Where messages that cannot be processed go, keyed by the queue they failed in.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}hallmark.dlx", self.prefix)
    }

    /// Where a retried or replayed message returns to its queue.
    pub fn requeue_exchange(&self) -> String {
        format!("{}hallmark.requeue", self.prefix)
    }

    /// The key that sends a message back to `queue` (a concrete name) through the requeue
    /// exchange, `{why}.{queue}`: a replay is `replay.{queue}`, a retry comes back with the key
    /// it was delayed with ([`Names::retry_key`]).
    pub fn requeue_key(&self, why: &str, queue: &str) -> String {
        format!("{why}.{queue}")
    }

    /// Where a message whose processing failed is sent for its delay, keyed by
    /// [`Names::retry_key`].
    pub fn retry_exchange(&self) -> String {
        format!("{}hallmark.retry", self.prefix)
    }

    /// `system`'s queue holding its messages for their `level`-th retry (0 is the first).
    pub fn retry_queue(&self, system: System, level: usize) -> String {
        let service = match system {
            System::Shop => "shop",
            System::Crm => "crm",
            System::Mes => "mes",
        };
        format!("{}{service}.retry.{}", self.prefix, level + 1)
    }

    /// The key of `queue`'s (a concrete name) `level`-th retry: `{n}.{queue}`.
    pub fn retry_key(&self, level: usize, queue: &str) -> String {
        format!("{}.{queue}", level + 1)
    }

    pub fn queue(&self, logical: &str) -> String {
        format!("{}{logical}", self.prefix)
    }

    pub fn dead_letter_queue(&self, logical: &str) -> String {
        format!("{}{logical}.dlq", self.prefix)
    }
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn short(text: &str) -> ShortString {
    ShortString::from(text)
}

fn quorum_arguments(config: &BrokerConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("quorum"));
    if let Some(expiry) = config.ephemeral {
        args.insert(
            short("x-expires"),
            AMQPValue::LongLongInt(expiry.as_millis() as i64),
        );
    }
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            short(queue),
            short(exchange),
            short(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The AMQP reply code the broker closed a channel or connection with (e.g. 403 when it
/// refused access, 406 when a declaration differs from what exists); `None` for other errors.
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(error) => Some(error.get_id()),
        _ => None,
    }
}

/// Declares a topic exchange. One an earlier version declared with another type (the broker
/// refuses the declaration with 406 and closes the channel) is deleted and declared again; its
/// bindings go with it, and each service binds its own again when it connects.
async fn topic_exchange(
    connection: &Connection,
    channel: &mut Channel,
    name: &str,
    options: ExchangeDeclareOptions,
) -> lapin::Result<()> {
    let kind = ExchangeKind::Topic;
    let declared = channel
        .exchange_declare(short(name), kind.clone(), options, FieldTable::default())
        .await;
    match declared {
        Err(err) if reply_code(&err) == Some(406) => {
            *channel = connection.create_channel().await?;
            channel
                .exchange_delete(short(name), ExchangeDeleteOptions::default())
                .await?;
            channel
                .exchange_declare(short(name), kind, options, FieldTable::default())
                .await?;
            tracing::warn!(
                exchange = name,
                "exchange of an earlier type replaced by a topic exchange"
            );
            Ok(())
        }
        other => other,
    }
}

/// Declares what `scope` says on a channel of `connection`. Idempotent; safe to run from every
/// service at every start.
pub async fn declare(
    connection: &Connection,
    config: &BrokerConfig,
    scope: Scope,
) -> lapin::Result<()> {
    if scope == Scope::Nothing {
        return Ok(());
    }
    let mut channel = connection.create_channel().await?;
    let names = Names::new(&config.namespace);
    let exchange_options = ExchangeDeclareOptions {
        durable: true,
        auto_delete: config.ephemeral.is_some(),
        ..Default::default()
    };
    for exchange in [
        names.orders_exchange(),
        names.dead_letter_exchange(),
        names.requeue_exchange(),
        names.retry_exchange(),
    ] {
        topic_exchange(connection, &mut channel, &exchange, exchange_options).await?;
    }
    for system in scope.systems() {
        for (level, delay) in config.retry_delays.iter().enumerate() {
            let name = names.retry_queue(system, level);
            let mut args = quorum_arguments(config);
            args.insert(
                short("x-message-ttl"),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            args.insert(
                short("x-dead-letter-exchange"),
                long(&names.requeue_exchange()),
            );
            args.insert(short("x-dead-letter-strategy"), long("at-least-once"));
            args.insert(short("x-overflow"), long("reject-publish"));
            channel.queue_declare(short(&name), durable(), args).await?;
            for spec in queues_of(system) {
                let key = names.retry_key(level, &names.queue(spec.name));
                bind(&channel, &name, &names.retry_exchange(), &key).await?;
            }
        }
    }

    let queues = scope.queues();
    for spec in &queues {
        let queue = names.queue(spec.name);
        let dlq = names.dead_letter_queue(spec.name);

        channel
            .queue_declare(short(&dlq), durable(), quorum_arguments(config))
            .await?;
        bind(&channel, &dlq, &names.dead_letter_exchange(), &queue).await?;

        let mut args = quorum_arguments(config);
        args.insert(
            short("x-delivery-limit"),
            AMQPValue::LongLongInt(i64::from(config.delivery_limit)),
        );
        args.insert(
            short("x-dead-letter-exchange"),
            long(&names.dead_letter_exchange()),
        );
        args.insert(short("x-dead-letter-routing-key"), long(&queue));
        args.insert(short("x-dead-letter-strategy"), long("at-least-once"));
        args.insert(short("x-overflow"), long("reject-publish"));
        channel
            .queue_declare(short(&queue), durable(), args)
            .await?;
        for key in spec.bindings {
            bind(&channel, &queue, &names.orders_exchange(), key).await?;
        }
        for key in spec.retired {
            // Removing a binding that does not exist is no error for RabbitMQ.
            channel
                .queue_unbind(
                    short(&queue),
                    short(&names.orders_exchange()),
                    short(key),
                    FieldTable::default(),
                )
                .await?;
        }
        let back = names.requeue_key("*", &queue);
        bind(&channel, &queue, &names.requeue_exchange(), &back).await?;
        // What the shared retry queues of earlier versions still hold comes back with the
        // queue's name as its key.
        bind(&channel, &queue, &names.requeue_exchange(), &queue).await?;
    }
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_names_have_no_prefix_and_tests_get_their_own() {
        let plain = Names::new("");
        assert_eq!(plain.orders_exchange(), "hallmark.orders");
        assert_eq!(plain.dead_letter_queue("crm.orders"), "crm.orders.dlq");
        assert_eq!(plain.retry_queue(System::Crm, 0), "crm.retry.1");
        assert_eq!(plain.retry_exchange(), "hallmark.retry");
        assert_eq!(plain.retry_key(0, "crm.orders"), "1.crm.orders");
        let test = Names::new("t42");
        assert_eq!(
            test.retry_key(2, &test.queue("mes.pricing")),
            "3.t42.mes.pricing"
        );
        assert_eq!(
            test.requeue_key("replay", &test.queue("mes.pricing")),
            "replay.t42.mes.pricing"
        );
        assert_eq!(test.queue("shop.status"), "t42.shop.status");
        assert_eq!(test.dead_letter_exchange(), "t42.hallmark.dlx");
    }

    #[test]
    fn each_service_declares_its_own_queues_and_everything_is_all_of_them() {
        let own = |system| Scope::Service(system).queues();
        assert_eq!(own(System::Mes).len(), 2);
        assert!(own(System::Shop).iter().all(|q| q.name == "shop.status"));
        let mut all: Vec<&str> = System::ALL
            .into_iter()
            .flat_map(|s| own(s).into_iter().map(|q| q.name))
            .collect();
        all.sort();
        let mut everything: Vec<&str> = Scope::Everything.queues().iter().map(|q| q.name).collect();
        everything.sort();
        assert_eq!(all, everything);
        assert!(Scope::Nothing.queues().is_empty());
    }

    #[test]
    fn shop_hears_of_every_status_but_its_own_submission() {
        use domain::OrderStatus;
        for status in OrderStatus::ALL {
            let key = format!("order.status_changed.{status}");
            let bound = SHOP_STATUS.bindings.contains(&key.as_str());
            let own = matches!(status, OrderStatus::Created | OrderStatus::Submitted);
            assert_eq!(bound, !own, "{key}");
        }
    }
}
