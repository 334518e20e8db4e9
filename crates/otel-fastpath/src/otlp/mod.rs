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
pub mod tls;

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
    Http(Box<http::HttpSpanExporter>),
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
        let error = |e: &dyn std::error::Error| http::with_causes(e);
        if protocol != "http/protobuf" {
            // opentelemetry-otlp's gRPC exporter is built without TLS here: its variables
            // would be ignored, so they are refused instead.
            let tls =
                tls::TlsConfig::from_lookup(&env, tls::Signal::Traces).map_err(|e| error(&e))?;
            refuse_tls_without_http(&tls, &protocol)?;
            return opentelemetry_otlp::SpanExporter::builder()
                .build()
                .map(|exporter| Self::Upstream(Box::new(exporter)))
                .map_err(|e| error(&e));
        }
        let config = http::HttpConfig::from_env().map_err(|e| error(&e))?;
        if cfg!(not(feature = "reference")) {
            return http::HttpSpanExporter::new(config)
                .map(|exporter| Self::Http(Box::new(exporter)))
                .map_err(|e| error(&e));
        }
        reference_http(&config).map_err(|e| error(e.as_ref()))
    }
}

/// An error when TLS variables are set for `protocol`, which is not `http/protobuf`:
/// `opentelemetry-otlp`'s gRPC exporter is built without TLS here, so the variables would be
/// ignored.
fn refuse_tls_without_http(tls: &tls::TlsConfig, protocol: &str) -> Result<(), String> {
    let given = tls
        .certificate
        .as_ref()
        .map(|file| file.variable)
        .or(tls.client.as_ref().map(|(cert, _)| cert.variable));
    match given {
        Some(variable) => Err(format!(
            "{variable}: TLS settings are supported with the http/protobuf protocol only, not `{protocol}`"
        )),
        None => Ok(()),
    }
}

/// `opentelemetry-otlp`'s HTTP exporter; with TLS settings, on a client made with them (its own
/// client reads none of these variables).
fn reference_http(
    config: &http::HttpConfig,
) -> Result<OtlpSpanExporter, Box<dyn std::error::Error + Send + Sync>> {
    use opentelemetry_otlp::WithHttpConfig as _;
    let builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if !config.tls.is_set() {
        return Ok(OtlpSpanExporter::Upstream(Box::new(builder.build()?)));
    }
    let client = config.tls.load()?.reference_client(config.timeout)?;
    Ok(OtlpSpanExporter::Upstream(Box::new(
        builder.with_http_client(client).build()?,
    )))
}

/// `opentelemetry-otlp`'s metric exporter as the variables ask for it; over http/protobuf
/// with the TLS variables of metrics (`OTEL_EXPORTER_OTLP_(METRICS_)CERTIFICATE`, …, see
/// [`tls`]), which its own client does not read.
pub fn metric_exporter_from_env() -> Result<opentelemetry_otlp::MetricExporter, String> {
    metric_exporter(|name| std::env::var(name).ok())
}

/// [`metric_exporter_from_env`] with `env` in place of the environment (which also goes on to
/// `opentelemetry-otlp` unchanged when no TLS variable is set).
fn metric_exporter(
    env: impl Fn(&str) -> Option<String>,
) -> Result<opentelemetry_otlp::MetricExporter, String> {
    use opentelemetry_otlp::WithHttpConfig as _;
    let error = |e: &dyn std::error::Error| http::with_causes(e);
    let protocol = setting(
        &env,
        &[
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ],
    )
    .map_or("http/protobuf".to_owned(), |(_, p)| p.to_ascii_lowercase());
    let tls = tls::TlsConfig::from_lookup(&env, tls::Signal::Metrics).map_err(|e| error(&e))?;
    if !tls.is_set() {
        return opentelemetry_otlp::MetricExporter::builder()
            .build()
            .map_err(|e| error(&e));
    }
    if protocol != "http/protobuf" {
        refuse_tls_without_http(&tls, &protocol)?;
    }
    let timeout = match setting(
        &env,
        &[
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    ) {
        None => Duration::from_secs(10),
        Some((variable, ms)) => Duration::from_millis(
            ms.parse()
                .map_err(|_| format!("{variable}={ms}: is not a number of milliseconds"))?,
        ),
    };
    let client = tls
        .load()
        .map_err(|e| error(&e))?
        .reference_client(timeout)
        .map_err(|e| error(&e))?;
    opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(client)
        .build()
        .map_err(|e| error(&e))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let pairs = pairs.to_vec();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_metric_exporter_does_not_start_without_the_trust_it_was_given() {
        let err = metric_exporter(lookup(&[(
            "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
            "/nowhere/ca.pem",
        )]))
        .unwrap_err();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE=/nowhere/ca.pem: cannot read"),
            "{err}"
        );
        let err = metric_exporter(lookup(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem"),
        ]))
        .unwrap_err();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: TLS settings are supported with the http/protobuf protocol only"),
            "{err}"
        );
    }
}
