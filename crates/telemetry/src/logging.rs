//! One log style for every Hallmark process: a JSON object per line.
//!
//! ```json
//! {"timestamp":"2026-11-24T10:00:00.123456Z","level":"INFO","service":"shop-api",
//!  "target":"shop_api::orders","message":"order accepted","trace_id":"…","span_id":"…",
//!  "order_id":"…","fields":{"status":"created"}}
//! ```
//!
//! Messages are short lowercase sentences without a trailing period; values go into fields, not
//! into the message. `trace_id`/`span_id` come from the active OpenTelemetry context so a log line
//! leads straight to its trace, and `order_id` from the context's baggage. Every message and field
//! passes through the same [`Masker`] as the spans.

use std::fmt;

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::mask::{MASK, Masker};
use crate::propagation::order_id;

/// The JSON line format (see the module docs).
pub struct JsonLines {
    service: &'static str,
    masker: Masker,
}

impl JsonLines {
    pub fn new(service: &'static str, masker: Masker) -> Self {
        Self { service, masker }
    }
}

/// The log layer's formatter of span fields: nothing. A log line names its span and carries the
/// trace and span ids; the span's fields go to the trace. Without this, the layer would format
/// every span's fields as text each time a span starts, on the request path, for nothing.
pub struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: RecordFields>(&self, _writer: Writer<'writer>, _fields: R) -> fmt::Result {
        Ok(())
    }
}

struct FieldVisitor<'a> {
    masker: &'a Masker,
    message: Option<String>,
    fields: Map<String, Value>,
}

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        let value = match value {
            _ if self.masker.is_sensitive_key(name) => Value::String(MASK.to_owned()),
            Value::String(s) => Value::String(self.masker.mask_text(&s).into_owned()),
            other => other,
        };
        if name == "message" {
            self.message = value.as_str().map(str::to_owned);
        } else if !name.starts_with("log.") {
            self.fields.insert(name.to_owned(), value);
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.put(field, Value::String(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut visitor = FieldVisitor {
            masker: &self.masker,
            message: None,
            fields: Map::new(),
        };
        event.record(&mut visitor);

        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("service".into(), Value::String(self.service.to_owned()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        line.insert(
            "message".into(),
            Value::String(visitor.message.unwrap_or_default()),
        );
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), Value::String(span.name().to_owned()));
        }
        let cx = Context::current();
        let span_context = cx.span().span_context().clone();
        if span_context.is_valid() {
            line.insert(
                "trace_id".into(),
                Value::String(span_context.trace_id().to_string()),
            );
            line.insert(
                "span_id".into(),
                Value::String(span_context.span_id().to_string()),
            );
        }
        if let Some(order) = order_id(&cx) {
            line.insert("order_id".into(), Value::String(order.to_string()));
        }
        if !visitor.fields.is_empty() {
            line.insert("fields".into(), Value::Object(visitor.fields));
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}
