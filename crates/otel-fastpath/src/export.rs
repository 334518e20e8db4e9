//! Counts what became of every exported span, in the OpenTelemetry SDK's self-diagnostic metric
//! `otel.sdk.exporter.span.exported` (with `error.type` when the export failed).
//!
//! Spans a service drops when its collector is down are counted in two places: the batch span
//! processor counts those it had no room for (`otel.sdk.processor.span.processed` with
//! `error.type="queue_full"`), and [`CountingExporter`] those of a batch the collector did not
//! take (refused, timed out, or rejected). On `/metrics`:
//!
//! ```text
//! otel_sdk_processor_span_processed_total{error_type="queue_full",…} 368
//! otel_sdk_exporter_span_exported_total{error_type="export_failed",…} 19
//! ```

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;

/// A span exporter that counts each batch's spans as exported or failed, then passes the result
/// on unchanged.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    exported: Counter<u64>,
}

impl<E> CountingExporter<E> {
    /// Wraps `inner`, counting with an instrument of `meter` (the `otel.sdk` meter of the
    /// process's meter provider).
    pub fn new(inner: E, meter: &Meter) -> Self {
        let exported = meter
            .u64_counter("otel.sdk.exporter.span.exported")
            .with_unit("{span}")
            .with_description(
                "The number of spans for which the export has finished, either successful or failed",
            )
            .build();
        Self { inner, exported }
    }
}

/// `error.type` of a failed export: a small fixed set, whatever the error's text says.
fn error_type(err: &OTelSdkError) -> &'static str {
    match err {
        OTelSdkError::Timeout(_) => "timeout",
        OTelSdkError::AlreadyShutdown => "already_shutdown",
        OTelSdkError::InternalFailure(_) => "export_failed",
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => self.exported.add(spans, &[]),
            Err(err) => self
                .exported
                .add(spans, &[KeyValue::new(ERROR_TYPE, error_type(err))]),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prometheus::{Encoder, Registry, TextEncoder};

    use super::*;

    /// An exporter whose collector takes every batch.
    #[derive(Debug)]
    struct Accepted;

    impl SpanExporter for Accepted {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Ok(())
        }
    }

    /// An exporter whose collector refuses every batch.
    #[derive(Debug)]
    struct Refused;

    impl SpanExporter for Refused {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("connection refused".into()))
        }
    }

    /// Ends `count` spans through `exporter` and returns the Prometheus text of the counter.
    fn counted<E: SpanExporter + 'static>(exporter: E, count: usize) -> String {
        let registry = Registry::new();
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .unwrap();
        let meters = SdkMeterProvider::builder().with_reader(reader).build();
        let tracers = SdkTracerProvider::builder()
            .with_simple_exporter(CountingExporter::new(exporter, &meters.meter("otel.sdk")))
            .build();
        for _ in 0..count {
            tracers.tracer("test").start("work").end();
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn spans_of_refused_batches_are_counted_as_failed_exports() {
        let text = counted(Refused, 3);
        assert!(
            text.lines().any(|line| line
                .starts_with("otel_sdk_exporter_span_exported_total{error_type=\"export_failed\"")
                && line.ends_with(" 3")),
            "{text}"
        );
    }

    #[test]
    fn spans_the_collector_took_are_counted_without_an_error_type() {
        let text = counted(Accepted, 2);
        let line = text
            .lines()
            .find(|line| line.starts_with("otel_sdk_exporter_span_exported_total{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            !line.contains("error_type") && line.ends_with(" 2"),
            "{line}"
        );
    }
}
