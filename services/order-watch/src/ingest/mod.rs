//! OTLP trace ingest: from an export request to the spans of orders.
//!
//! Only spans that carry `order.id` matter; the rest are counted and dropped after a look at
//! their attribute keys, without converting anything. A span whose ids or times are malformed,
//! or whose `order.id` is not a UUID, is rejected and reported back as a partial success, as the
//! OTLP specification asks; the rest of its request is still accepted.

pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use domain::OrderStatus;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Map, Value};
use telemetry::attr;
use uuid::Uuid;

use crate::journey::{SpanRecord, activity_of};
use crate::masking::Masking;
use crate::metrics::Metrics;
use crate::runtime_config::LiveConfig;
use crate::store::{StoreError, Writer};

/// What the receivers share.
#[derive(Clone)]
pub struct Ingest {
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    /// Largest request accepted, decompressed.
    pub max_request_bytes: usize,
    /// Spans are taken when they start within the retention before now (this clock's).
    pub clock: crate::clock::Clock,
    /// The retention and the masking rules in force.
    pub config: LiveConfig,
}

/// What an exporter is told when its spans could not be stored: to retry, and nothing of why
/// (the cause is logged).
pub const UNAVAILABLE_MESSAGE: &str = "order-watch cannot store spans right now; retry";

/// Why a request was not taken; both are worth a retry by the exporter.
#[derive(Debug)]
pub enum IngestError {
    Busy,
    /// The spans could not be stored; the cause goes to the log, not to the exporter.
    Unavailable(StoreError),
}

impl Ingest {
    /// Stores the spans of orders in `request`; answers once they are committed.
    pub async fn export(
        &self,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let config = self.config.get();
        let extracted = extract(
            &request,
            Window::around(self.clock.now(), config.retention()),
            &config.masking,
        );
        let accepted = extracted.spans.len() as u64;
        match self.writer.write(extracted.spans).await {
            Ok(_) => {}
            Err(StoreError::Busy) => return Err(IngestError::Busy),
            Err(err) => return Err(IngestError::Unavailable(err)),
        }
        self.metrics
            .record_ingest(accepted, extracted.ignored, extracted.rejected);
        let partial_success = (extracted.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: extracted.rejected as i64,
            error_message: extracted.rejection.unwrap_or_default(),
        });
        Ok(ExportTraceServiceResponse { partial_success })
    }
}

/// order-watch's own spans are never part of a journey (looking at a journey must not move it).
pub const OWN_SERVICE: &str = "order-watch";

/// Longest attribute string kept; longer values are cut (with `…`).
const MAX_VALUE_CHARS: usize = 1024;
/// Most attributes kept per span.
const MAX_ATTRIBUTES: usize = 128;

/// What one export request held.
#[derive(Debug, Default)]
pub struct Extracted {
    pub spans: Vec<SpanRecord>,
    /// Spans without `order.id` (or order-watch's own).
    pub ignored: u64,
    /// Spans refused as malformed.
    pub rejected: u64,
    /// Why the first rejected span was refused, for the partial-success answer.
    pub rejection: Option<String>,
}

impl Extracted {
    fn reject(&mut self, why: String) {
        self.rejected += 1;
        if self.rejection.is_none() {
            self.rejection = Some(why);
        }
    }
}

/// `text` as it can be stored and shown: at most `max` characters (cut with `…`), and no NUL,
/// which PostgreSQL refuses in text and JSON (it becomes U+FFFD); other control characters are
/// kept, escaped by JSON.
pub fn clean(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let mut out: String = chars
        .by_ref()
        .take(max)
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Longest span name, status message, attribute key or service name kept.
const MAX_NAME_CHARS: usize = 256;

/// The services whose names become metric labels as they are; any other `service.name` a
/// caller sends is counted as `other`, so that no caller can make series without end.
pub const KNOWN_SERVICES: [&str; 4] = ["shop-api", "crm-api", "mes-api", "mes-calc"];

/// `service` as a metric label: itself when known, else `other`.
pub fn service_label(service: &str) -> &'static str {
    KNOWN_SERVICES
        .into_iter()
        .find(|known| *known == service)
        .unwrap_or("other")
}

/// How far in the future a span may start (clocks disagree a little; an hour ahead is a
/// broken clock or a forgery, and would keep its order from ever looking stuck).
pub const MAX_FUTURE: Duration = Duration::from_secs(10 * 60);

fn value_to_json(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => Value::String(clean(s, MAX_VALUE_CHARS)),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .iter()
                .take(MAX_ATTRIBUTES)
                .map(value_to_json)
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes(&list.values)),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex::encode(bytes)),
        _ => Value::Null,
    }
}

fn attributes(list: &[KeyValue]) -> Map<String, Value> {
    list.iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv| {
            let value = kv.value.as_ref().map(value_to_json).unwrap_or(Value::Null);
            (clean(&kv.key, MAX_NAME_CHARS), value)
        })
        .collect()
}

/// A span's attributes as stored, without `order.id`: the span is stored under its order, so
/// keeping the id again in every span's attributes would only cost conversion and space.
fn span_attributes(list: &[KeyValue]) -> Map<String, Value> {
    list.iter()
        .filter(|kv| kv.key != attr::ORDER_ID)
        .take(MAX_ATTRIBUTES)
        .map(|kv| {
            let value = kv.value.as_ref().map(value_to_json).unwrap_or(Value::Null);
            (clean(&kv.key, MAX_NAME_CHARS), value)
        })
        .collect()
}

fn string_attribute<'a>(list: &'a [KeyValue], key: &str) -> Option<&'a str> {
    list.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

fn time(nanos: u64) -> Option<DateTime<Utc>> {
    if nanos == 0 {
        return None;
    }
    let seconds = (nanos / 1_000_000_000) as i64;
    Utc.timestamp_opt(seconds, (nanos % 1_000_000_000) as u32)
        .single()
}

fn valid_id(bytes: &[u8], len: usize) -> bool {
    bytes.len() == len && bytes.iter().any(|b| *b != 0)
}

/// The time window a span's start must fall in to be taken.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub oldest: DateTime<Utc>,
    pub newest: DateTime<Utc>,
}

impl Window {
    /// From now back as far as journeys are kept, and [`MAX_FUTURE`] ahead.
    pub fn around(now: DateTime<Utc>, retention: Duration) -> Self {
        let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Self {
            oldest: now - span(retention),
            newest: now + span(MAX_FUTURE),
        }
    }
}

fn convert(
    span: &Span,
    service: &str,
    order_id: Uuid,
    window: Window,
    masking: &Masking,
) -> Result<SpanRecord, String> {
    let name = clean(&span.name, MAX_NAME_CHARS);
    if !valid_id(&span.trace_id, 16) {
        return Err(format!("span `{name}` has an invalid trace id"));
    }
    if !valid_id(&span.span_id, 8) {
        return Err(format!("span `{name}` has an invalid span id"));
    }
    let start = time(span.start_time_unix_nano)
        .ok_or_else(|| format!("span `{name}` has no start time"))?;
    if start < window.oldest || start > window.newest {
        return Err(format!(
            "span `{name}` starts at {start}, outside what order-watch takes ({} to {})",
            window.oldest, window.newest
        ));
    }
    let end = time(span.end_time_unix_nano).unwrap_or(start).max(start);
    let parent = valid_id(&span.parent_span_id, 8).then(|| span.parent_span_id.clone());
    // Read once here, from the list as it came, rather than from the map on every use.
    let status_to: Option<OrderStatus> =
        string_attribute(&span.attributes, attr::ORDER_STATUS_TO).and_then(|s| s.parse().ok());
    let activity = activity_of(
        string_attribute(&span.attributes, attr::ORDER_ACTIVITY),
        status_to.is_some(),
    );
    let (status_code, mut status_message) = span.status.as_ref().map_or((0, String::new()), |s| {
        (s.code as i16, clean(&s.message, MAX_VALUE_CHARS))
    });
    let mut attributes = span_attributes(&span.attributes);
    if !masking.is_empty() {
        masking.attributes(&mut attributes);
        masking.text(&mut status_message);
    }
    Ok(SpanRecord {
        order_id,
        trace_id: span.trace_id.clone(),
        span_id: span.span_id.clone(),
        parent_span_id: parent,
        service: service.to_owned(),
        name,
        kind: span.kind as i16,
        start,
        end,
        status_code,
        status_message,
        attributes,
        links: span
            .links
            .iter()
            .filter(|l| valid_id(&l.trace_id, 16) && valid_id(&l.span_id, 8))
            .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
            .collect(),
        status_to,
        activity,
    })
}

/// Picks the spans of orders out of an export request, their attributes masked by `masking`.
pub fn extract(
    request: &ExportTraceServiceRequest,
    window: Window,
    masking: &Masking,
) -> Extracted {
    let mut out = Extracted::default();
    for resource_spans in &request.resource_spans {
        let service = clean(
            resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attribute(&r.attributes, "service.name"))
                .unwrap_or("unknown_service"),
            MAX_NAME_CHARS,
        );
        let service = service.as_str();
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                let Some(order) = string_attribute(&span.attributes, attr::ORDER_ID) else {
                    out.ignored += 1;
                    continue;
                };
                if service == OWN_SERVICE {
                    out.ignored += 1;
                    continue;
                }
                let Ok(order_id) = Uuid::parse_str(order) else {
                    out.reject(format!(
                        "span `{}` has an order.id that is not a UUID",
                        span.name
                    ));
                    continue;
                };
                match convert(span, service, order_id, window, masking) {
                    Ok(record) => out.spans.push(record),
                    Err(why) => out.reject(why),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use telemetry::propagation::Activity;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn span(attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "process hallmark.orders".into(),
            kind: 5,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_500_000_000,
            attributes,
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        }
    }

    /// The test spans start in November 2023: a window around then.
    fn take(request: &ExportTraceServiceRequest) -> Extracted {
        let then = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        extract(
            request,
            Window::around(then, Duration::from_secs(30 * 86_400)),
            &Masking::default(),
        )
    }

    fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
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

    #[test]
    fn only_spans_of_orders_are_kept() {
        let order = Uuid::now_v7();
        let extracted = take(&request(
            "crm-api",
            vec![
                span(vec![
                    kv("order.id", &order.to_string()),
                    kv("order.status.to", "registered"),
                ]),
                span(vec![kv("http.route", "/health")]),
            ],
        ));
        assert_eq!(extracted.ignored, 1);
        assert_eq!(extracted.spans.len(), 1);
        let record = &extracted.spans[0];
        assert_eq!(record.order_id, order);
        assert_eq!(record.service, "crm-api");
        assert_eq!(record.status_to, Some(OrderStatus::Registered));
        assert!(record.is_error());
        assert_eq!((record.end - record.start).num_milliseconds(), 500);
    }

    #[test]
    fn malformed_spans_are_rejected_one_by_one() {
        let order = Uuid::now_v7().to_string();
        let mut zero_trace = span(vec![kv("order.id", &order)]);
        zero_trace.trace_id = vec![0; 16];
        let mut short_span_id = span(vec![kv("order.id", &order)]);
        short_span_id.span_id = vec![1, 2, 3];
        let mut no_start = span(vec![kv("order.id", &order)]);
        no_start.start_time_unix_nano = 0;
        let extracted = take(&request(
            "mes-api",
            vec![
                zero_trace,
                short_span_id,
                no_start,
                span(vec![kv("order.id", "not-a-uuid")]),
                span(vec![kv("order.id", &order)]),
            ],
        ));
        assert_eq!(extracted.rejected, 4);
        assert_eq!(extracted.spans.len(), 1);
        assert!(extracted.rejection.unwrap().contains("trace id"));
    }

    #[test]
    fn only_progress_that_did_not_fail_moves_the_order() {
        let order = Uuid::now_v7().to_string();
        let extracted = take(&request(
            "mes-api",
            vec![
                span(vec![
                    kv("order.id", &order),
                    kv("order.activity", "progress"),
                ]),
                span(vec![
                    kv("order.id", &order),
                    kv("order.activity", "observation"),
                ]),
            ],
        ));
        // `span` fails them: the first is failed progress, the second a failed read.
        let [failed_work, failed_read] = &extracted.spans[..] else {
            panic!("two spans");
        };
        assert_eq!(failed_work.activity, Activity::Progress);
        assert!(!failed_work.moves_order());
        assert!(!failed_read.moves_order());
        let mut work = failed_work.clone();
        work.status_code = 1;
        assert!(work.moves_order());
    }

    #[test]
    fn order_watchs_own_spans_are_ignored() {
        let order = Uuid::now_v7().to_string();
        let extracted = take(&request(
            OWN_SERVICE,
            vec![span(vec![kv("order.id", &order)])],
        ));
        assert_eq!((extracted.ignored, extracted.spans.len()), (1, 0));
    }

    #[test]
    fn long_values_are_cut() {
        let order = Uuid::now_v7().to_string();
        let long = "x".repeat(5000);
        let extracted = take(&request(
            "shop-api",
            vec![span(vec![kv("order.id", &order), kv("note", &long)])],
        ));
        let note = extracted.spans[0].attribute_str("note").unwrap();
        assert_eq!(note.chars().count(), MAX_VALUE_CHARS + 1);
    }

    #[test]
    fn text_the_database_refuses_is_cleaned_not_the_batch_refused() {
        let order = Uuid::now_v7();
        let mut bad = span(vec![
            kv(attr::ORDER_ID, &order.to_string()),
            kv("note\0key", "a\0b"),
        ]);
        bad.name = "name\0".into();
        let extracted = take(&request("crm\0api", vec![bad]));
        assert_eq!(extracted.rejected, 0);
        let record = &extracted.spans[0];
        assert_eq!(record.name, "name\u{FFFD}");
        assert_eq!(record.service, "crm\u{FFFD}api");
        assert_eq!(record.attributes["note\u{FFFD}key"], "a\u{FFFD}b");
    }

    #[test]
    fn a_callers_service_name_is_cut_short_and_only_known_ones_become_metric_labels() {
        let order = Uuid::now_v7();
        let huge = "x".repeat(1_000_000);
        let extracted = take(&request(
            &huge,
            vec![span(vec![kv(attr::ORDER_ID, &order.to_string())])],
        ));
        assert_eq!(
            extracted.spans[0].service.chars().count(),
            MAX_NAME_CHARS + 1
        );
        assert_eq!(service_label(&extracted.spans[0].service), "other");
        assert_eq!(service_label("shop-api"), "shop-api");
        assert_eq!(service_label("mes-calc"), "mes-calc");
    }

    #[test]
    fn spans_dated_far_in_the_past_or_the_future_are_rejected_alone() {
        let order = Uuid::now_v7();
        let at = |seconds: u64| {
            let mut span = span(vec![kv(attr::ORDER_ID, &order.to_string())]);
            span.start_time_unix_nano = seconds * 1_000_000_000;
            span.end_time_unix_nano = span.start_time_unix_nano + 1;
            span
        };
        let extracted = take(&request(
            "mes-api",
            vec![
                at(1),                           // 1970
                at(1_700_000_000),               // now
                at(1_700_000_000 + 3_600),       // an hour ahead
                at(1_700_000_000 - 40 * 86_400), // before the retention
            ],
        ));
        assert_eq!(extracted.spans.len(), 1);
        assert_eq!(extracted.rejected, 3);
        assert!(
            extracted
                .rejection
                .as_deref()
                .unwrap()
                .contains("outside what order-watch takes"),
            "{:?}",
            extracted.rejection
        );
    }
}
