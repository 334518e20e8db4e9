//! A real OTLP/HTTP receiver for tests: services export to it exactly as they would to a
//! collector, and the test reads back every span (and every byte, to look for personal data).
//!
//! Like a collector, it can pass the traces on ([`OtlpCapture::forward_to`], e.g. to
//! order-watch, which can then start after the services it asks about), and lose some on
//! purpose: [`OtlpCapture::drop_service`] swallows one service's spans, as a crashed exporter
//! or a lossy pipeline would, while telling the exporter they arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;

/// Span kinds as OTLP numbers them.
pub mod kind {
    pub const INTERNAL: i32 = 1;
    pub const SERVER: i32 = 2;
    pub const CLIENT: i32 = 3;
    pub const PRODUCER: i32 = 4;
    pub const CONSUMER: i32 = 5;
}

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct CapturedSpan {
    /// `service.name` of the exporting resource.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub attributes: BTreeMap<String, Value>,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub events: Vec<String>,
}

impl CapturedSpan {
    /// A string (or any scalar, as text) attribute.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

fn any_value_to_json(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_value_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value
                            .as_ref()
                            .map(any_value_to_json)
                            .unwrap_or(Value::Null),
                    )
                })
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex::encode(b)),
        _ => Value::Null,
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, Value> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value
                    .as_ref()
                    .map(any_value_to_json)
                    .unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// Flattens an export request into spans.
pub fn flatten(request: &ExportTraceServiceRequest) -> Vec<CapturedSpan> {
    let mut spans = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                spans.push(CapturedSpan {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    status_code: span.status.as_ref().map_or(0, |s| s.code),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    events: span.events.iter().map(|e| e.name.clone()).collect(),
                });
            }
        }
    }
    spans
}

#[derive(Default)]
struct Received {
    spans: Vec<CapturedSpan>,
    /// Every decompressed request body, traces and metrics alike.
    raw: Vec<u8>,
}

/// What the receiver's handlers share.
#[derive(Default)]
struct Shared {
    received: Mutex<Received>,
    /// Where traces go on to (OTLP/HTTP endpoints).
    forward: Mutex<Vec<String>>,
    /// Services whose spans are swallowed.
    dropping: Mutex<BTreeSet<String>>,
    /// Export requests refused because an endpoint refused them or could not be reached.
    refused: std::sync::atomic::AtomicU64,
    client: reqwest::Client,
}

/// The receiver; it stops with the test's runtime.
#[derive(Clone)]
pub struct OtlpCapture {
    endpoint: String,
    shared: Arc<Shared>,
}

fn body_bytes(headers: &HeaderMap, body: Bytes) -> Result<Vec<u8>, StatusCode> {
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(out)
}

fn service_of(resource_spans: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> String {
    resource_spans
        .resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn traces(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Vec<u8>), StatusCode> {
    let bytes = body_bytes(&headers, body)?;
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut request = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&bytes)
            .map_err(|_| StatusCode::BAD_REQUEST)?
    } else {
        ExportTraceServiceRequest::decode(&bytes[..]).map_err(|_| StatusCode::BAD_REQUEST)?
    };
    shared
        .received
        .lock()
        .expect("not poisoned")
        .raw
        .extend_from_slice(&bytes);
    // The spans count as received once the exporter is told they arrived: a request refused
    // downstream comes again, retried by the exporter.
    let spans = flatten(&request);
    let accepted = || {
        shared
            .received
            .lock()
            .expect("not poisoned")
            .spans
            .extend(spans.iter().cloned());
        Ok((
            StatusCode::OK,
            ExportTraceServiceResponse::default().encode_to_vec(),
        ))
    };
    let forward = shared.forward.lock().expect("not poisoned").clone();
    if forward.is_empty() {
        return accepted();
    }
    {
        let dropping = shared.dropping.lock().expect("not poisoned");
        request
            .resource_spans
            .retain(|spans| !dropping.contains(&service_of(spans)));
    }
    if request.resource_spans.is_empty() {
        return accepted();
    }
    // The first refusal downstream goes back to the exporter, so its retries work end to end.
    let body = request.encode_to_vec();
    let mut answer = Vec::new();
    for endpoint in forward {
        let sent = shared
            .client
            .post(format!("{endpoint}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await;
        let refuse = || {
            shared
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let Ok(response) = sent else {
            refuse();
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        };
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        if !status.is_success() {
            refuse();
            return Ok((status, body));
        }
        answer = body;
    }
    accepted().map(|(status, _)| (status, answer))
}

async fn other_signal(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, StatusCode> {
    let bytes = body_bytes(&headers, body)?;
    shared
        .received
        .lock()
        .expect("not poisoned")
        .raw
        .extend_from_slice(&bytes);
    Ok(Vec::new())
}

impl OtlpCapture {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(other_signal))
            .route("/v1/logs", post(other_signal))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let endpoint = format!("http://{}", listener.local_addr().expect("bound"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, shared }
    }

    /// Passes the traces received from now on to the OTLP/HTTP endpoint `endpoint`
    /// (`http://host:port`) too, answering each exporter with what the endpoints answered (the
    /// first refusal, if any).
    pub fn forward_to(&self, endpoint: &str) {
        self.shared
            .forward
            .lock()
            .expect("not poisoned")
            .push(endpoint.to_owned());
    }

    /// From now on, passes on no span of `service` (its `service.name`) while telling its
    /// exporter they arrived: telemetry lost on the way.
    pub fn drop_service(&self, service: &str) {
        self.shared
            .dropping
            .lock()
            .expect("not poisoned")
            .insert(service.to_owned());
    }

    /// Passes the traces received from now on to `endpoint` only, instead of wherever they went.
    pub fn forward_only_to(&self, endpoint: &str) {
        *self.shared.forward.lock().expect("not poisoned") = vec![endpoint.to_owned()];
    }

    /// Passes `service`'s spans on again.
    pub fn keep_service(&self, service: &str) {
        self.shared
            .dropping
            .lock()
            .expect("not poisoned")
            .remove(service);
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Environment for a process that should export here quickly (100 ms batches).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into()),
        ]
    }

    /// How many export requests were refused because a forwarding endpoint refused them or
    /// could not be reached (the exporter is expected to send them again).
    pub fn refused(&self) -> u64 {
        self.shared
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every span received and acknowledged (when forwarding: once every endpoint took it).
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.shared
            .received
            .lock()
            .expect("not poisoned")
            .spans
            .clone()
    }

    /// Everything received so far, decompressed, in one buffer.
    pub fn raw_bytes(&self) -> Vec<u8> {
        self.shared
            .received
            .lock()
            .expect("not poisoned")
            .raw
            .clone()
    }
}

/// Building OTLP export requests by hand, for tests and benchmarks of receivers.
pub mod build {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Link;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    pub fn int(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
            ..Default::default()
        }
    }

    /// A span of `trace` (16 bytes) with id `id` (8 bytes), from `start_ns` lasting `duration_ns`.
    pub fn span(
        trace: [u8; 16],
        id: [u8; 8],
        name: &str,
        start_ns: u64,
        duration_ns: u64,
        attributes: Vec<KeyValue>,
    ) -> Span {
        Span {
            trace_id: trace.to_vec(),
            span_id: id.to_vec(),
            name: name.into(),
            kind: 1,
            start_time_unix_nano: start_ns,
            end_time_unix_nano: start_ns + duration_ns,
            attributes,
            status: Some(Status::default()),
            ..Default::default()
        }
    }

    /// `span` with a parent and links.
    pub fn with_relations(
        mut span: Span,
        parent: Option<[u8; 8]>,
        links: &[([u8; 16], [u8; 8])],
    ) -> Span {
        if let Some(parent) = parent {
            span.parent_span_id = parent.to_vec();
        }
        span.links = links
            .iter()
            .map(|(trace, id)| Link {
                trace_id: trace.to_vec(),
                span_id: id.to_vec(),
                ..Default::default()
            })
            .collect();
        span
    }

    /// An export request of `spans` from `service`.
    pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}
