//! How Hallmark services define metrics, and the one every service shares.
//!
//! Instruments are OpenTelemetry instruments from [`meter`]: the same measurement goes out over
//! OTLP and is served in Prometheus text format ([`render_prometheus`], on each service's
//! `/metrics`; names there follow the Prometheus conversion: dots become underscores and the
//! unit is appended, e.g. `hallmark_queue_wait_seconds`). Each instrument is defined by the
//! code that records it (messaging's, the order book's, each service's); what they share is
//! here: the meter, the latency buckets and the failure counter. No label ever carries an order
//! id, customer or other unbounded value.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

/// Latency buckets in seconds: from a fast local hop to a slow model calculation.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// The meter of Hallmark's own instruments. From the global meter provider, so instruments
/// made before [`crate::init`] (or in tests without telemetry) record nothing: make them on
/// first use, in a `OnceLock`.
pub fn meter() -> Meter {
    opentelemetry::global::meter("hallmark")
}

/// A latency histogram in seconds with Hallmark's buckets.
pub fn seconds_histogram(name: &'static str, description: &'static str) -> Histogram<f64> {
    meter()
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(SECONDS_BUCKETS.to_vec())
        .build()
}

/// Counts an operation that failed, in `hallmark.operations.failed`: `operation` (e.g.
/// `consume`, `price`), `stage` (the order stage or `none`) and `error_code` as labels.
pub fn record_failure(operation: &'static str, stage: &str, error_code: &str) {
    static FAILED: OnceLock<Counter<u64>> = OnceLock::new();
    FAILED
        .get_or_init(|| {
            meter()
                .u64_counter("hallmark.operations.failed")
                .with_description("Operations that failed, by operation, stage and error code")
                .build()
        })
        .add(
            1,
            &[
                KeyValue::new("operation", operation),
                KeyValue::new("stage", stage.to_owned()),
                KeyValue::new("error_code", error_code.to_owned()),
            ],
        );
}

pub(crate) fn set_registry(registry: prometheus::Registry) {
    let _ = REGISTRY.set(registry);
}

/// Renders the Prometheus text exposition of everything this process records; empty before
/// [`crate::init`].
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
