//! The span exporter for OTLP over HTTP with protobuf bodies (`http/protobuf`, the default).
//!
//! Configured by the standard variables, as the OpenTelemetry exporter specification defines
//! them (the trace-specific variable wins over the general one):
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the full URL spans are posted to, used as it is | — |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; `/v1/traces` is appended | `http://localhost:4318` |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` | `key=value` pairs separated by commas, values percent-decoded | none |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` | milliseconds an export may take, retries included | 10000 |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` | `gzip` or `none` | `none` |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY` | TLS: the CAs to trust, the client certificate and key ([`super::tls`]) | the built-in roots, no client certificate |
//!
//! Retries follow the policy `opentelemetry-otlp` recommends: a network error, 502, 504, or a
//! 429 or 503 (after its `Retry-After`, when it gives one in seconds) is tried again up to three
//! times, after 100 ms doubling up to 1.6 s, each with up to as much again of jitter
//! ([`RETRY`]), never beyond the timeout. Any other answer fails the batch at once.

use std::io::Write as _;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder as _, ExponentialBuilder};

use bytes::Bytes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::tls::{Signal, TlsConfig, TlsError};
use super::{encode, setting};

const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
const TRACES_PATH: &str = "/v1/traces";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How an export is tried again: three times, after 100 ms doubling up to 1.6 s, each delay
/// with up to as much again of jitter so that many exporters do not retry in step.
pub const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_millis(1600))
    .with_jitter()
    .with_max_times(3);
/// The longest `Retry-After` taken into account.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Where and how spans are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The URL spans are posted to.
    pub endpoint: String,
    /// Extra request headers (authentication, tenant).
    pub headers: Vec<(String, String)>,
    /// How long one export may take, retries included.
    pub timeout: Duration,
    /// Whether bodies are gzip-compressed.
    pub gzip: bool,
    /// The CAs to trust and the client certificate to present over https.
    pub tls: TlsConfig,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value}: {problem}")]
pub struct ConfigError {
    variable: &'static str,
    value: String,
    problem: &'static str,
}

impl ConfigError {
    pub(crate) fn new(variable: &'static str, problem: &'static str, value: &str) -> Self {
        Self {
            variable,
            value: value.to_owned(),
            problem,
        }
    }
}

impl HttpConfig {
    /// Reads the standard variables (see the module docs).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`HttpConfig::from_env`], with `lookup` in place of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let endpoint = match setting(&lookup, &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) {
            Some(full) => full,
            None => {
                let base = setting(&lookup, &["OTEL_EXPORTER_OTLP_ENDPOINT"])
                    .map_or(DEFAULT_ENDPOINT.to_owned(), |(_, base)| base);
                let endpoint = format!("{}{TRACES_PATH}", base.trim_end_matches('/'));
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            }
        };
        if !(endpoint.1.starts_with("http://") || endpoint.1.starts_with("https://")) {
            return Err(ConfigError::new(
                endpoint.0,
                "is not an http:// or https:// URL",
                &endpoint.1,
            ));
        }

        // General headers first, so that trace-specific ones with the same name replace them.
        let mut headers: Vec<(String, String)> = Vec::new();
        for variable in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            let Some(text) = lookup(variable) else {
                continue;
            };
            for (name, value) in parse_headers(&text) {
                headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(&name));
                headers.push((name, value));
            }
        }

        let timeout =
            match setting(
                &lookup,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                ],
            ) {
                None => DEFAULT_TIMEOUT,
                Some((variable, ms)) => Duration::from_millis(ms.parse().map_err(|_| {
                    ConfigError::new(variable, "is not a number of milliseconds", &ms)
                })?),
            };

        let gzip = match setting(
            &lookup,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ],
        ) {
            None => false,
            Some((variable, value)) => match value.to_ascii_lowercase().as_str() {
                "none" => false,
                "gzip" => true,
                _ => {
                    return Err(ConfigError::new(
                        variable,
                        "is not `gzip` or `none`",
                        &value,
                    ));
                }
            },
        };

        let tls = TlsConfig::from_lookup(&lookup, Signal::Traces)?;

        Ok(Self {
            endpoint: endpoint.1,
            headers,
            timeout,
            gzip,
            tls,
        })
    }
}

/// `key=value,key2=value2`, values percent-decoded; malformed pairs are skipped.
fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let name = name.trim();
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .ok()?;
            (!name.is_empty()).then(|| (name.to_owned(), value.into_owned()))
        })
        .collect()
}

/// Exports spans to an OTLP/HTTP endpoint as protobuf, encoded by [`encode::export_request`]
/// straight from the spans (no intermediate message structs).
pub struct HttpSpanExporter {
    config: HttpConfig,
    client: reqwest::blocking::Client,
    resource: Resource,
}

impl std::fmt::Debug for HttpSpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSpanExporter")
            .field("endpoint", &self.config.endpoint)
            .field("gzip", &self.config.gzip)
            .finish_non_exhaustive()
    }
}

/// Why an exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl HttpSpanExporter {
    /// The exporter `config` describes; its TLS files are read now, so one that cannot be used
    /// stops the start-up with an error naming its variable.
    pub fn new(config: HttpConfig) -> Result<Self, BuildError> {
        let timeout = config.timeout;
        let tls = config.tls.load()?;
        // The blocking client runs a runtime of its own and refuses to be built inside
        // another one, which is where services call `telemetry::init`.
        let client = std::thread::spawn(move || {
            let builder = reqwest::blocking::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("hallmark-telemetry/", env!("CARGO_PKG_VERSION")));
            tls.apply(builder)?.build()
        })
        .join()
        .expect("building an HTTP client does not panic")
        .map_err(BuildError::Client)?;
        Ok(Self {
            config,
            client,
            resource: Resource::builder_empty().build(),
        })
    }

    /// The request body for `spans`, shared by every attempt to send it.
    fn body(&self, spans: &[SpanData]) -> Result<Bytes, OTelSdkError> {
        let encoded = encode::export_request(&self.resource, spans);
        if !self.config.gzip {
            return Ok(encoded.into());
        }
        let mut gzip = flate2::write::GzEncoder::new(
            Vec::with_capacity(encoded.len() / 4),
            flate2::Compression::default(),
        );
        gzip.write_all(&encoded)
            .and_then(|()| gzip.finish())
            .map(Bytes::from)
            .map_err(|e| OTelSdkError::InternalFailure(format!("cannot compress spans: {e}")))
    }

    /// One attempt: `Ok` when the collector took the batch, else whether and when to retry.
    fn send(&self, body: &Bytes) -> Result<(), Failure> {
        let mut request = self
            .client
            .post(&self.config.endpoint)
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if self.config.gzip {
            request = request.header("content-encoding", "gzip");
        }
        for (name, value) in &self.config.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().map_err(|e| Failure {
            // With its causes: a refused certificate is said only by the innermost one.
            message: format!("cannot reach the collector: {}", with_causes(&e)),
            retry: Retry::AfterBackoff,
        })?;
        let status = response.status();
        if status.is_success() {
            // A collector may take part of a batch; what it refused is not sent again.
            if let Some((rejected, reason)) = response.bytes().ok().and_then(|b| partly_refused(&b))
            {
                tracing::warn!(
                    rejected,
                    reason,
                    "the collector refused part of a span batch"
                );
            }
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
        let retry = match (status.as_u16(), retry_after) {
            (429 | 503, Some(wait)) => Retry::After(wait),
            (429 | 503 | 502 | 504, _) => Retry::AfterBackoff,
            _ => Retry::Never,
        };
        Err(Failure {
            message: format!("the collector answered {status}"),
            retry,
        })
    }
}

/// `err` followed by each of its causes.
pub(crate) fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The spans a collector's answer says it refused, and why: OTLP's partial success.
fn partly_refused(answer: &[u8]) -> Option<(i64, String)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message as _;
    let partial = ExportTraceServiceResponse::decode(answer)
        .ok()?
        .partial_success?;
    (partial.rejected_spans > 0 || !partial.error_message.is_empty())
        .then_some((partial.rejected_spans, partial.error_message))
}

/// Why an attempt failed, and whether trying again can help.
struct Failure {
    message: String,
    retry: Retry,
}

enum Retry {
    /// The collector refused the batch itself (a 4xx other than 429, a 500, ...).
    Never,
    /// Unavailable for now: after the next delay of the back-off.
    AfterBackoff,
    /// After the wait the collector asked for (`Retry-After`).
    After(Duration),
}

impl SpanExporter for HttpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.timeout;
        let body = self.body(&batch)?;
        let mut delays = RETRY.build();
        loop {
            let failure = match self.send(&body) {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            // A retry spends a delay of the policy even when the collector says how long to
            // wait, so the number of retries is the policy's either way.
            let wait = match (failure.retry, delays.next()) {
                (_, None) | (Retry::Never, _) => None,
                (Retry::AfterBackoff, Some(delay)) => Some(delay),
                (Retry::After(asked), Some(_)) => Some(asked),
            };
            let Some(wait) = wait else {
                return Err(OTelSdkError::InternalFailure(failure.message));
            };
            if Instant::now() + wait >= deadline {
                return Err(OTelSdkError::InternalFailure(failure.message));
            }
            // The batch processor exports on a thread of its own, never on a runtime's.
            std::thread::sleep(wait);
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message as _;

    use super::*;
    use crate::test_support::Collected;

    fn config(pairs: &[(&str, &str)]) -> Result<HttpConfig, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HttpConfig::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_trace_specific_tls_variables_win_and_a_client_certificate_needs_its_key() {
        assert_eq!(config(&[]).unwrap().tls, TlsConfig::default());
        let tls = config(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/general/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", " /traces/ca.pem "),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                "/general/client.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/general/key.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/traces/key.pem"),
        ])
        .unwrap()
        .tls;
        let certificate = tls.certificate.unwrap();
        assert_eq!(
            (certificate.variable, certificate.path.to_str().unwrap()),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces/ca.pem")
        );
        let (cert, key) = tls.client.unwrap();
        assert_eq!(cert.variable, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE");
        assert_eq!(key.variable, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY");
        assert_eq!(key.path.to_str().unwrap(), "/traces/key.pem");

        let err = config(&[("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "/c.pem")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE=/c.pem: is set without its"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_standard_variables_set_endpoint_headers_timeout_and_compression() {
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        assert!(defaults.headers.is_empty() && !defaults.gzip);

        let base = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/")]).unwrap();
        assert_eq!(base.endpoint, "https://collector:4318/v1/traces");
        let full = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other/custom"),
        ])
        .unwrap();
        assert_eq!(full.endpoint, "http://other/custom");

        let set = config(&[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Basic%20abc, x-tenant=shop,broken",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "X-Tenant=traces"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "GZIP"),
        ])
        .unwrap();
        assert_eq!(
            set.headers,
            [
                ("authorization".to_owned(), "Basic abc".to_owned()),
                ("X-Tenant".to_owned(), "traces".to_owned()),
            ]
        );
        assert_eq!(set.timeout, Duration::from_millis(2500));
        assert!(set.gzip);

        assert!(config(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]).is_err());
        let wrong = config(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
        ])
        .unwrap_err();
        assert!(
            wrong
                .to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=soon"),
            "{wrong}"
        );
        assert!(config(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]).is_err());
        assert!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).is_err());
    }

    /// One request as the collector saw it.
    struct Received {
        headers: Vec<String>,
        body: Vec<u8>,
    }

    /// A collector on a local port that answers the given statuses in turn (then 200).
    fn collector(statuses: &[u16]) -> (String, Arc<Mutex<Vec<Received>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let mut statuses = Vec::from(statuses).into_iter();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    headers.push(line.trim().to_ascii_lowercase());
                }
                let length: usize = headers
                    .iter()
                    .find_map(|h| h.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                log.lock().unwrap().push(Received { headers, body });
                let status = statuses.next().unwrap_or(200);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nretry-after: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (endpoint, received)
    }

    fn one_span() -> Vec<SpanData> {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .build();
        provider.tracer("test").start("INSERT orders").end();
        collected.spans()
    }

    fn exporter(endpoint: &str, gzip: bool) -> HttpSpanExporter {
        HttpSpanExporter::new(HttpConfig {
            endpoint: endpoint.to_owned(),
            headers: vec![("x-tenant".into(), "shop".into())],
            timeout: Duration::from_secs(5),
            gzip,
            tls: TlsConfig::default(),
        })
        .unwrap()
    }

    /// Runs an export as the batch processor does: on a plain thread, outside any runtime.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_batch_is_posted_as_protobuf_and_retried_while_the_collector_is_unavailable() {
        let (endpoint, received) = collector(&[503, 502]);
        block_on(exporter(&endpoint, false).export(one_span())).unwrap();

        let received = received.lock().unwrap();
        assert_eq!(received.len(), 3, "two failures, then taken");
        let last = &received[2];
        assert!(
            last.headers
                .contains(&"content-type: application/x-protobuf".into())
        );
        assert!(last.headers.contains(&"x-tenant: shop".into()));
        let request = ExportTraceServiceRequest::decode(&last.body[..]).unwrap();
        assert_eq!(
            request.resource_spans[0].scope_spans[0].spans[0].name,
            "INSERT orders"
        );
    }

    #[test]
    fn a_partial_success_is_read_from_the_collectors_answer() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(partly_refused(&answer), Some((3, "too old".to_owned())));
        assert_eq!(partly_refused(&[]), None);
        assert_eq!(partly_refused(b"not protobuf"), None);
    }

    #[test]
    fn a_collector_unavailable_for_longer_gets_three_retries_and_the_batch_fails() {
        let (endpoint, received) = collector(&[503, 503, 503, 503, 503]);
        assert!(block_on(exporter(&endpoint, false).export(one_span())).is_err());
        assert_eq!(received.lock().unwrap().len(), 4);
    }

    #[test]
    fn a_batch_the_collector_refuses_is_not_sent_again() {
        let (endpoint, received) = collector(&[400]);
        assert!(block_on(exporter(&endpoint, false).export(one_span())).is_err());
        assert_eq!(received.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_compressed_batch_says_so_and_unpacks_to_the_spans() {
        let (endpoint, received) = collector(&[]);
        block_on(exporter(&endpoint, true).export(one_span())).unwrap();

        let received = received.lock().unwrap();
        assert!(
            received[0]
                .headers
                .contains(&"content-encoding: gzip".into())
        );
        let mut body = Vec::new();
        flate2::read::GzDecoder::new(&received[0].body[..])
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(
            ExportTraceServiceRequest::decode(&body[..])
                .unwrap()
                .resource_spans[0]
                .scope_spans[0]
                .spans
                .len(),
            1
        );
    }

    #[test]
    fn an_unreachable_collector_fails_the_export_within_its_timeout() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut exporter = exporter(&format!("http://127.0.0.1:{port}/v1/traces"), false);
        exporter.config.timeout = Duration::from_secs(1);
        let started = Instant::now();
        assert!(block_on(exporter.export(one_span())).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
