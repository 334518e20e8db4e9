//! Telemetry for every Hallmark process.
//!
//! [`init`] wires `tracing` to OpenTelemetry and returns a [`TelemetryGuard`] that flushes on
//! shutdown. Export is configured only through the standard `OTEL_*` environment variables:
//!
//! | variable | effect |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `…_METRICS_ENDPOINT` | where to send (default `http://localhost:4318` for http/protobuf, `:4317` for grpc) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (and per-signal variants) | `http/protobuf` (default) or `grpc` |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_COMPRESSION` | request headers, per-export timeout, `gzip` |
//! | `OTEL_EXPORTER_OTLP_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY` (and per-signal variants) | for an `https` endpoint: the CA certificates (PEM) to trust instead of the built-in roots, and a client certificate and key for a collector that asks for one; http/protobuf only, an unusable file stops the start (`otel_fastpath::otlp::tls`) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling (default `parentbased_always_on`) |
//! | `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME` | extra resource attributes; override the defaults |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | the bounded span queue |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | OTLP metric push interval (ms) |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`, `OTEL_METRICS_EXPORTER=none` | turn OTLP export off (`/metrics` stays) |
//!
//! Hallmark's own variables: `HALLMARK_ENV` (`deployment.environment.name`, default
//! `development`), `HALLMARK_MASK_KEYS` / `HALLMARK_MASK_PATTERNS` (see [`mask`]), and `RUST_LOG`
//! for the log and span filter.
//!
//! A request never waits for the collector: spans go into a bounded queue that a background
//! thread exports; when the queue is full spans are dropped and counted in the standard
//! `otel.sdk.processor.span.processed{error.type="queue_full"}` metric, and spans of a batch the
//! collector did not take in `otel.sdk.exporter.span.exported{error.type=…}` (see [`export`]).
//! Shutdown flushes within a fixed budget ([`SHUTDOWN_BUDGET`], [`CLI_SHUTDOWN_BUDGET`]).

pub mod attributes;
pub mod db;
pub mod metrics;
pub mod processor;
pub mod propagation;
pub mod spans;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use otel_fastpath::logging::{ContextField, log_filter, subscriber};
use otel_fastpath::{export, otlp};
use tracing_subscriber::util::SubscriberInitExt;

pub use attributes as attr;
pub use otel_fastpath::mask;
/// For [`spans_enabled!`], which expands in the caller's crate.
#[doc(hidden)]
pub use tracing as __tracing;

/// Default `RUST_LOG` filter: our crates at info, chatty libraries at warn.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,amq_protocol=warn,h2=warn,hyper=warn,tonic=warn,tower=warn,opentelemetry=warn,opentelemetry_sdk=warn";

/// Who is reporting: the resource of every span, metric and log line.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// `service.name`, one of the names fixed in the architecture notes (`shop-api`, …).
    pub name: &'static str,
    /// `service.version`, normally `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Mask(#[from] mask::MaskConfigError),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot build the Prometheus exporter: {0}")]
    Prometheus(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized,
}

/// Flushes and stops export when dropped or when [`TelemetryGuard::shutdown`] is called.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    /// How long shutdown may wait for the collector.
    budget: Duration,
    shut_down: bool,
}

impl TelemetryGuard {
    /// Exports what is queued and stops the exporters. Waits at most the budget
    /// ([`SHUTDOWN_BUDGET`], [`CLI_SHUTDOWN_BUDGET`]) when the collector is unreachable or does
    /// not answer; what is not exported by then is lost.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        if std::mem::replace(&mut self.shut_down, true) {
            return;
        }
        // Each provider flushes as it shuts down, which against a collector that never answers
        // lasts as long as the export timeout (and the meter provider ignores any timeout given
        // to it), so both run on threads of their own and the wait for them is bounded.
        let (done, finished) = mpsc::channel();
        let tracer_provider = self.tracer_provider.clone();
        let budget = self.budget;
        let traces_done = done.clone();
        std::thread::spawn(move || {
            let _ = tracer_provider.shutdown_with_timeout(budget);
            let _ = traces_done.send(());
        });
        let meter_provider = self.meter_provider.clone();
        std::thread::spawn(move || {
            let _ = meter_provider.shutdown();
            let _ = done.send(());
        });
        let deadline = Instant::now() + budget;
        for _ in 0..2 {
            if finished
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                tracing::warn!(
                    budget_ms = budget.as_millis() as u64,
                    "telemetry export did not finish in time, the rest is dropped"
                );
                return;
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

fn env_flag(name: &str) -> Option<String> {
    settings::optional(name).map(|v| v.trim().to_ascii_lowercase())
}

fn sdk_disabled() -> bool {
    env_flag("OTEL_SDK_DISABLED").as_deref() == Some("true")
}

fn exporter_enabled(variable: &str) -> bool {
    !sdk_disabled() && env_flag(variable).as_deref() != Some("none")
}

/// The resource: our defaults, overridden by `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`.
pub fn resource(service: &ServiceInfo) -> Resource {
    use attributes::semconv::{
        DEPLOYMENT_ENVIRONMENT_NAME, SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION,
    };
    let environment = settings::string("HALLMARK_ENV", "development");
    let mut builder = Resource::builder_empty()
        .with_attributes([
            KeyValue::new(SERVICE_NAME, service.name),
            KeyValue::new(SERVICE_VERSION, service.version),
            KeyValue::new(DEPLOYMENT_ENVIRONMENT_NAME, environment),
            KeyValue::new(SERVICE_INSTANCE_ID, uuid::Uuid::new_v4().to_string()),
        ])
        .with_detectors(&[
            Box::new(TelemetryResourceDetector) as Box<dyn ResourceDetector>,
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Some(name) = settings::optional("OTEL_SERVICE_NAME") {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// The masking rules: the defaults, and on top `HALLMARK_MASK_KEYS` (comma-separated keys,
/// `*.leaf` for a last segment) and `HALLMARK_MASK_PATTERNS` (regular expressions separated
/// by `;;`).
fn masker_from_env() -> Result<mask::Masker, mask::MaskConfigError> {
    let list = |variable: &str, separator: &str| -> Vec<String> {
        settings::string(variable, "")
            .split(separator)
            .map(str::to_owned)
            .collect()
    };
    mask::Masker::new(
        &list("HALLMARK_MASK_KEYS", ","),
        &list("HALLMARK_MASK_PATTERNS", ";;"),
    )
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogTarget {
    Stdout,
    Stderr,
}

/// Sets up propagation, traces, metrics and JSON logs (on stdout) for a service process.
pub fn init(service: ServiceInfo) -> Result<TelemetryGuard, TelemetryError> {
    init_with(service, LogTarget::Stdout, SHUTDOWN_BUDGET)
}

/// As [`init`], for a command-line tool whose stdout is its output: logs go to stderr, and
/// shutdown waits at most [`CLI_SHUTDOWN_BUDGET`].
pub fn init_cli(service: ServiceInfo) -> Result<TelemetryGuard, TelemetryError> {
    init_with(service, LogTarget::Stderr, CLI_SHUTDOWN_BUDGET)
}

fn init_with(
    service: ServiceInfo,
    logs: LogTarget,
    shutdown_budget: Duration,
) -> Result<TelemetryGuard, TelemetryError> {
    otel_fastpath::propagation::install_global();
    let masker = masker_from_env()?;
    let resource = resource(&service);

    // Metrics first: the batch span processor takes its self-diagnostic counter (dropped spans)
    // from the global meter provider when it is built.
    let registry = prometheus::Registry::new();
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
    metrics::set_registry(registry);
    let mut meter_builder = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(prometheus);
    if exporter_enabled("OTEL_METRICS_EXPORTER") {
        let exporter =
            otel_fastpath::otlp::metric_exporter_from_env().map_err(TelemetryError::Exporter)?;
        meter_builder = meter_builder.with_reader(PeriodicReader::builder(exporter).build());
    }
    let meter_provider = meter_builder.build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());

    // Without an exporter, spans are still made (log lines take their trace ids from them) and
    // go nowhere: no processor at all.
    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource);
    if exporter_enabled("OTEL_TRACES_EXPORTER") {
        let exporter = otlp::OtlpSpanExporter::from_env().map_err(TelemetryError::Exporter)?;
        let exporter = export::CountingExporter::new(
            mask::MaskingExporter::new(masker.clone(), exporter),
            &opentelemetry::global::meter("otel.sdk"),
        );
        tracer_builder = tracer_builder.with_span_processor(processor::OrderBaggage::new(
            BatchSpanProcessor::builder(exporter).build(),
        ));
    }
    let tracer_provider = tracer_builder.build();
    spans::install(tracer_provider.tracer(service.name));
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());

    let filter = log_filter(&settings::string("RUST_LOG", ""), DEFAULT_FILTER);
    let writer =
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
            match logs {
                LogTarget::Stdout => Box::new(std::io::stdout()),
                LogTarget::Stderr => Box::new(std::io::stderr()),
            }
        });
    let dispatch = subscriber(filter, service.name, masker, Some(ORDER_ID_FIELD), writer);
    dispatch
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialized)?;

    Ok(TelemetryGuard {
        tracer_provider,
        meter_provider,
        budget: shutdown_budget,
        shut_down: false,
    })
}

/// Every log line in an order's work names the order (`"order_id":"…"`).
const ORDER_ID_FIELD: ContextField = ("order_id", |cx| {
    propagation::order_entry(cx).map(|(_, id)| id)
});

/// How long [`TelemetryGuard::shutdown`] of a service may take at most when the collector is
/// down.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

/// As [`SHUTDOWN_BUDGET`], for a command-line tool: its caller waits for it to exit (MES for the
/// calc engine, once per price calculation), and a reachable collector takes its last batch in
/// milliseconds.
pub const CLI_SHUTDOWN_BUDGET: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};

    use super::*;

    /// An exporter stuck like one whose collector accepts connections and never answers.
    #[derive(Debug)]
    struct Unanswered;

    impl SpanExporter for Unanswered {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
    }

    #[test]
    fn shutdown_gives_up_on_a_collector_that_never_answers_once_its_budget_is_spent() {
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(Unanswered).build())
            .build();
        tracer_provider.tracer("test").start("work").end();
        let guard = TelemetryGuard {
            tracer_provider,
            meter_provider: SdkMeterProvider::builder().build(),
            budget: Duration::from_millis(200),
            shut_down: false,
        };
        let started = Instant::now();
        guard.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "shutdown took {:?}",
            started.elapsed()
        );
    }
}
