//! OTLP export of spans.
//!
//! With `http/protobuf`, the default protocol, spans are encoded straight from the SDK's
//! `SpanData` into the protobuf body ([`encode`]) and posted by [`http::HttpSpanExporter`]:
//! `opentelemetry-otlp` first turns every span into a tree of protobuf structs with a `String`
//! for each attribute key and value, which was a third of what tracing cost a service per
//! request. With `grpc` (or any other protocol), and always with the `reference` feature,
//! `opentelemetry-otlp` exports.

pub mod encode;
pub mod http;

use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The first of `names` (a trace-specific variable, then its general form) that is set and not
/// blank: which one, and its value trimmed.
pub(crate) fn setting(
    lookup: &impl Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| {
        let value = lookup(name)?;
        let value = value.trim();
        (!value.is_empty()).then(|| (name, value.to_owned()))
    })
}

/// The trace exporter the OTLP variables ask for.
#[derive(Debug)]
pub enum OtlpSpanExporter {
    Http(http::HttpSpanExporter),
    Upstream(Box<opentelemetry_otlp::SpanExporter>),
}

impl OtlpSpanExporter {
    /// From `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` and the variables of that protocol.
    pub fn from_env() -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).ok();
        let protocol = setting(
            &env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        )
        .map_or("http/protobuf".to_owned(), |(_, p)| p.to_ascii_lowercase());
        if protocol == "http/protobuf" && cfg!(not(feature = "reference")) {
            let config = http::HttpConfig::from_env().map_err(|e| e.to_string())?;
            return http::HttpSpanExporter::new(config)
                .map(Self::Http)
                .map_err(|e| e.to_string());
        }
        opentelemetry_otlp::SpanExporter::builder()
            .build()
            .map(|exporter| Self::Upstream(Box::new(exporter)))
            .map_err(|e| e.to_string())
    }
}

impl SpanExporter for OtlpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            Self::Http(exporter) => exporter.export(batch).await,
            Self::Upstream(exporter) => exporter.export(batch).await,
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Self::Http(exporter) => exporter.shutdown_with_timeout(timeout),
            Self::Upstream(exporter) => exporter.shutdown_with_timeout(timeout),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        match self {
            Self::Http(exporter) => exporter.force_flush(),
            Self::Upstream(exporter) => exporter.force_flush(),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Self::Http(exporter) => exporter.set_resource(resource),
            Self::Upstream(exporter) => exporter.set_resource(resource),
        }
    }
}
