//! The exchanges and queues of Hallmark, declared identically by every service at start-up.
//!
//! ```text
//! hallmark.orders (topic) ──order.created, order.status_changed.#──▶ crm.orders
//!                         ──order.pricing_requested─────────────────▶ mes.pricing
//!                         ──order.status_changed.#──────────────────▶ mes.production
//!                         ──order.status_changed.{not submitted}────▶ shop.status
//! hallmark.retry.{n} (fanout) ▶ hallmark.retry.{n} (TTL = n-th delay) ─dead-letter─▶
//!     hallmark.requeue (direct, key = queue name) ▶ the original queue
//! hallmark.dlx (direct, key = queue name) ▶ {queue}.dlq
//! ```
//!
//! Every consumer queue is a quorum queue with a delivery limit and at-least-once
//! dead-lettering to `hallmark.dlx`, so a message a consumer keeps crashing on still ends in its
//! `.dlq`. Because every service declares the whole topology, a message is routable from the first
//! start of any one service; publishing is mandatory, so a missing route is an error, not silence.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::BrokerConfig;

/// A consumer queue and the routing keys it binds.
#[derive(Debug, Clone, Copy)]
pub struct QueueSpec {
    /// Logical name, e.g. `crm.orders`.
    pub name: &'static str,
    pub bindings: &'static [&'static str],
    /// Bindings an earlier version declared and this one removes at start-up, so that a queue
    /// created by that version stops receiving what it no longer should.
    pub retired: &'static [&'static str],
}

/// CRM registers new orders and keeps its projection of every status change.
pub const CRM_ORDERS: QueueSpec = QueueSpec {
    name: "crm.orders",
    bindings: &["order.created", "order.status_changed.#"],
    retired: &[],
};
/// MES prices models on CRM's request.
pub const MES_PRICING: QueueSpec = QueueSpec {
    name: "mes.pricing",
    bindings: &["order.pricing_requested"],
    retired: &[],
};
/// MES follows the order's life around production: it starts when the customer confirms, a
/// queued calculation is dropped when the order is cancelled, and the workshop sees shipping
/// and delivery.
pub const MES_PRODUCTION: QueueSpec = QueueSpec {
    name: "mes.production",
    bindings: &["order.status_changed.#"],
    retired: &[],
};
/// Shop follows every status change for the customer-facing view, except `submitted`: only
/// Shop's own relay announces that one, for every order, and Shop has written it already.
pub const SHOP_STATUS: QueueSpec = QueueSpec {
    name: "shop.status",
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

    /// Where a retried message returns to its queue after its delay.
    pub fn requeue_exchange(&self) -> String {
        format!("{}hallmark.requeue", self.prefix)
    }

    /// The exchange (and queue) holding messages for their `level`-th retry.
    pub fn retry(&self, level: usize) -> String {
        format!("{}hallmark.retry.{}", self.prefix, level + 1)
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

/// Declares the whole topology. Idempotent; safe to run from every service at every start.
pub async fn declare(channel: &Channel, config: &BrokerConfig) -> lapin::Result<()> {
    let names = Names::new(&config.namespace);
    let exchange_options = ExchangeDeclareOptions {
        durable: true,
        auto_delete: config.ephemeral.is_some(),
        ..Default::default()
    };
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let exchanges = [
        (names.orders_exchange(), ExchangeKind::Topic),
        (names.dead_letter_exchange(), ExchangeKind::Direct),
        (names.requeue_exchange(), ExchangeKind::Direct),
    ];
    for (name, kind) in exchanges {
        channel
            .exchange_declare(short(&name), kind, exchange_options, FieldTable::default())
            .await?;
    }

    for (level, delay) in config.retry_delays.iter().enumerate() {
        let name = names.retry(level);
        channel
            .exchange_declare(
                short(&name),
                ExchangeKind::Fanout,
                exchange_options,
                FieldTable::default(),
            )
            .await?;
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
        channel
            .queue_declare(short(&name), queue_options, args)
            .await?;
        channel
            .queue_bind(
                short(&name),
                short(&name),
                short(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    for spec in QUEUES {
        let queue = names.queue(spec.name);
        let dlq = names.dead_letter_queue(spec.name);

        channel
            .queue_declare(short(&dlq), queue_options, quorum_arguments(config))
            .await?;
        channel
            .queue_bind(
                short(&dlq),
                short(&names.dead_letter_exchange()),
                short(&queue),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

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
            .queue_declare(short(&queue), queue_options, args)
            .await?;
        for key in spec.bindings {
            channel
                .queue_bind(
                    short(&queue),
                    short(&names.orders_exchange()),
                    short(key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
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
        channel
            .queue_bind(
                short(&queue),
                short(&names.requeue_exchange()),
                short(&queue),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
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
        assert_eq!(plain.retry(0), "hallmark.retry.1");
        let test = Names::new("t42");
        assert_eq!(test.queue("shop.status"), "t42.shop.status");
        assert_eq!(test.dead_letter_exchange(), "t42.hallmark.dlx");
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
