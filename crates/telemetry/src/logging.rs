//! One log style for every Hallmark process: a JSON object per line.
//!
//! ```json
//! {"timestamp":"2026-11-24T10:00:00.123456Z","level":"INFO","service":"shop-api",
//!  "target":"shop_api::orders","message":"order accepted","trace_id":"…","span_id":"…",
//!  "order_id":"…","fields":{"status":"created"}}
//! ```
//!
//! Messages are short lowercase sentences without a trailing period; values go into fields, not
//! into the message. `trace_id`/`span_id` come from the OpenTelemetry context of the event's
//! span so a log line leads straight to its trace, and `order_id` from that context's baggage.
//! Every message and field passes through the same [`Masker`] as the spans.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::Id;
use tracing::{Dispatch, Event, Subscriber};
use tracing_opentelemetry::get_otel_context;
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
    contexts: SpanContexts,
}

impl JsonLines {
    /// Lines name the trace of their span once `contexts` is attached to the dispatch this
    /// formatter is part of.
    pub fn new(service: &'static str, masker: Masker, contexts: SpanContexts) -> Self {
        Self {
            service,
            masker,
            contexts,
        }
    }
}

/// Where [`JsonLines`] looks up the OpenTelemetry context of an event's span: the dispatch (the
/// whole subscriber) the OpenTelemetry layer is part of.
///
/// Spans do not make their context the thread's current OpenTelemetry context (see `init`), and
/// while an event is being formatted `tracing` hands out no dispatch (it guards against
/// re-entry), so the formatter keeps a weak handle to its own dispatch. Until one is attached,
/// lines carry no trace ids.
#[derive(Clone, Default)]
pub struct SpanContexts(Arc<OnceLock<WeakDispatch>>);

impl SpanContexts {
    /// Attaches the dispatch; the first one attached stays.
    pub fn attach(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }

    fn of(&self, span: &Id) -> Option<Context> {
        let dispatch = self.0.get()?.upgrade()?;
        get_otel_context(span, &dispatch)
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
        // The span the event belongs to (its explicit parent, else the current span) and that
        // span's OpenTelemetry context.
        let span = ctx.parent_span();
        if let Some(span) = &span {
            line.insert("span".into(), Value::String(span.name().to_owned()));
        }
        let cx = span
            .and_then(|span| self.contexts.of(&span.id()))
            .unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::EnvFilter;
    use uuid::Uuid;

    use super::*;
    use crate::propagation::with_order;

    /// Log lines written into memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn parsed(&self) -> Vec<Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }
    }

    fn trace_id(span: &tracing::Span) -> String {
        span.context().span().span_context().trace_id().to_string()
    }

    #[test]
    fn a_log_line_names_the_trace_and_order_of_the_span_it_belongs_to() {
        let lines = Lines::default();
        let writer = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let dispatch = crate::subscriber(
            EnvFilter::new("info"),
            provider.tracer("test"),
            "test-service",
            Masker::default(),
            move || writer.clone(),
        );
        let order = Uuid::now_v7();
        let (request_trace, other_trace) = tracing::dispatcher::with_default(&dispatch, || {
            let request = tracing::info_span!("request");
            let _ = request.set_parent(with_order(&opentelemetry::Context::new(), order));
            let other = tracing::info_span!(parent: None, "other");
            request.in_scope(|| {
                tracing::info!(attempt = 1, "inside the request");
                tracing::warn!(parent: &other, "about the other span");
            });
            tracing::info!("outside any span");
            (trace_id(&request), trace_id(&other))
        });

        let lines = lines.parsed();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(lines[0]["message"], "inside the request");
        assert_eq!(lines[0]["span"], "request");
        assert_eq!(lines[0]["trace_id"], request_trace.as_str());
        assert_eq!(lines[0]["order_id"], order.to_string().as_str());
        assert_eq!(lines[0]["fields"]["attempt"], 1);
        assert_eq!(lines[1]["span"], "other");
        assert_eq!(lines[1]["trace_id"], other_trace.as_str());
        assert!(lines[1].get("order_id").is_none());
        assert!(lines[2].get("trace_id").is_none() && lines[2].get("span").is_none());
        assert_ne!(request_trace, other_trace);
    }
}
