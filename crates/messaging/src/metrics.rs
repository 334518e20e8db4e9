//! The instruments of message delivery: outbox, consumers, retries and dead letters. Made on
//! first use (see `telemetry::metrics`).

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Gauge, Histogram};
use telemetry::metrics::{meter, seconds_histogram};

pub(crate) struct Metrics {
    /// From publication of a message to the commit of its consumption. Labels: `queue`, `type`.
    pub event_delivery: Histogram<f64>,
    /// From publication of a message to the start of its processing. Label: `queue`.
    pub queue_wait: Histogram<f64>,
    /// Messages moved to a dead-letter queue. Label: `queue`.
    pub dead_lettered: Counter<u64>,
    /// Messages dead-lettered because they did not come from their owner (`forged_sender`),
    /// also counted in `dead_lettered`. Labels: `queue`, `claimed_owner` (the `service.name` of
    /// the message's owner, whom the sender was not).
    pub forged: Counter<u64>,
    /// Messages the inbox recognised as already processed. Label: `queue`.
    pub duplicates_skipped: Counter<u64>,
    /// Outbox rows not published yet, sampled periodically. No labels (the service is in the
    /// resource). Growing means the relay cannot reach the broker: orders wait in this service.
    pub outbox_pending: Gauge<u64>,
    /// Age of the oldest unpublished outbox row, 0 when there is none.
    pub outbox_oldest_age: Gauge<f64>,
    /// Published messages put back into the outbox on request ([`crate::outbox::republish`]).
    /// Label: `type`.
    pub republished: Counter<u64>,
}

pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meter();
        Metrics {
            event_delivery: seconds_histogram(
                "hallmark.event.delivery.duration",
                "Time from publication of a message to the commit of its consumption",
            ),
            queue_wait: seconds_histogram(
                "hallmark.queue.wait",
                "Time a message waited between publication and the start of its processing",
            ),
            dead_lettered: meter
                .u64_counter("hallmark.messages.dead_lettered")
                .with_description("Messages moved to a dead-letter queue")
                .build(),
            forged: meter
                .u64_counter("hallmark.messages.forged")
                .with_description(
                    "Messages dead-lettered because they did not come from their owner's account",
                )
                .build(),
            duplicates_skipped: meter
                .u64_counter("hallmark.messages.duplicates")
                .with_description("Redelivered messages the inbox recognised and skipped")
                .build(),
            outbox_pending: meter
                .u64_gauge("hallmark.outbox.pending")
                .with_unit("{message}")
                .with_description("Outbox rows not published yet")
                .build(),
            outbox_oldest_age: meter
                .f64_gauge("hallmark.outbox.oldest_age")
                .with_unit("s")
                .with_description("Age of the oldest unpublished outbox row (0 when none)")
                .build(),
            republished: meter
                .u64_counter("hallmark.outbox.republished")
                .with_description("Published messages put back into the outbox on request, to be sent again with their message id")
                .build(),
        }
    })
}
