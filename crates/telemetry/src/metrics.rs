//! The metrics every Hallmark service records, defined once.
//!
//! Instruments are OpenTelemetry instruments: the same measurement goes out over OTLP and is
//! served in Prometheus text format on `/metrics` (names there follow the Prometheus conversion:
//! dots become underscores and the unit is appended, e.g. `hallmark_queue_wait_seconds`).
//! No label ever carries an order id, customer or other unbounded value.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// Latency buckets in seconds: from a fast local hop to a slow model calculation.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Hallmark's instruments. Obtain with [`metrics()`].
pub struct Metrics {
    /// Wall time of one price calculation through the calc engine. Labels: `material`,
    /// `outcome` (`priced`, `rejected`, `failed`).
    pub price_calculation: Histogram<f64>,
    /// From publication of a message to the commit of its consumption. Labels: `queue`, `type`.
    pub event_delivery: Histogram<f64>,
    /// From publication of a message to the start of its processing. Label: `queue`.
    pub queue_wait: Histogram<f64>,
    /// Operations that failed. Labels: `operation` (e.g. `consume`, `publish`, `price`),
    /// `stage` (the order stage or `none`), `error_code`.
    pub failed_operations: Counter<u64>,
    /// Messages moved to a dead-letter queue. Label: `queue`.
    pub dead_lettered: Counter<u64>,
    /// Messages the inbox recognised as already processed. Label: `queue`.
    pub duplicates_skipped: Counter<u64>,
    /// Status transitions performed by this service. Labels: `from`, `to`.
    pub status_transitions: Counter<u64>,
    /// HTTP server request duration (OpenTelemetry HTTP semantic conventions). Labels:
    /// `http.request.method`, `http.route`, `http.response.status_code`.
    pub http_server_duration: Histogram<f64>,
    /// Outbox rows not published yet, sampled periodically. No labels (the service is in the
    /// resource). Growing means the relay cannot reach the broker: orders wait in this service.
    pub outbox_pending: Gauge<u64>,
    /// Age of the oldest unpublished outbox row, 0 when there is none.
    pub outbox_oldest_age: Gauge<f64>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// The process's instruments. Created on first use from the global meter provider, so call
/// [`crate::init`] first; before that (or in tests without telemetry) they record nothing.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter("hallmark")))
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        Self {
            price_calculation: seconds(
                "hallmark.price_calculation.duration",
                "Wall time of one price calculation through the calc engine",
            ),
            event_delivery: seconds(
                "hallmark.event.delivery.duration",
                "Time from publication of a message to the commit of its consumption",
            ),
            queue_wait: seconds(
                "hallmark.queue.wait",
                "Time a message waited between publication and the start of its processing",
            ),
            failed_operations: meter
                .u64_counter("hallmark.operations.failed")
                .with_description("Operations that failed, by operation, stage and error code")
                .build(),
            dead_lettered: meter
                .u64_counter("hallmark.messages.dead_lettered")
                .with_description("Messages moved to a dead-letter queue")
                .build(),
            duplicates_skipped: meter
                .u64_counter("hallmark.messages.duplicates")
                .with_description("Redelivered messages the inbox recognised and skipped")
                .build(),
            status_transitions: meter
                .u64_counter("hallmark.order.status_transitions")
                .with_description("Order status transitions performed by this service")
                .build(),
            http_server_duration: seconds(
                "http.server.request.duration",
                "Duration of HTTP server requests",
            ),
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
        }
    }

    pub fn record_failure(&self, operation: &'static str, stage: &str, error_code: &str) {
        self.failed_operations.add(
            1,
            &[
                KeyValue::new("operation", operation),
                KeyValue::new("stage", stage.to_owned()),
                KeyValue::new("error_code", error_code.to_owned()),
            ],
        );
    }
}

/// Seconds as the f64 the histograms take.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

pub(crate) fn set_registry(registry: prometheus::Registry) {
    let _ = REGISTRY.set(registry);
}

/// Renders the Prometheus text exposition of everything this process records.
pub fn render_prometheus() -> String {
    use prometheus::Encoder;
    let Some(registry) = REGISTRY.get() else {
        return String::new();
    };
    let mut buffer = Vec::new();
    if let Err(err) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        tracing::warn!(error = %err, "prometheus encoding failed");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Axum handler for `GET /metrics`.
pub async fn metrics_handler() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_prometheus(),
    )
        .into_response()
}
