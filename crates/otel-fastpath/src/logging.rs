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
//! span so a log line leads straight to its trace, and any field the process names
//! ([`ContextField`], e.g. an id from the context's baggage) from that context.
//! Every message and field passes through the same [`Masker`] as the spans.

use std::fmt;
use std::io::Write as _;

use chrono::{DateTime, Datelike as _, SecondsFormat, Timelike as _, Utc};

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, StringValue};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{self, Layer, SubscriberExt as _};

use crate::mask::{MASK, Masker};

/// The log layer: writes each event as one JSON line (see the module docs) to `W`.
///
/// A layer of its own rather than a formatter of `tracing_subscriber::fmt`: that layer keeps
/// the formatted fields of every span as it starts, for every span of a request, and log lines
/// here name their span without its fields (those go to the trace).
pub struct JsonLines<W> {
    service: &'static str,
    masker: Masker,
    context_field: Option<ContextField>,
    writer: W,
}

/// A field every log line takes from the OpenTelemetry context it belongs to, when there is
/// one: its name in the line, and how to read it (e.g. an entry of the context's baggage).
pub type ContextField = (&'static str, fn(&Context) -> Option<StringValue>);

impl<W> JsonLines<W> {
    pub fn new(service: &'static str, masker: Masker, writer: W) -> Self {
        Self {
            service,
            masker,
            context_field: None,
            writer,
        }
    }

    /// Lines also carry `field`, read from their context.
    pub fn with_context_field(mut self, field: ContextField) -> Self {
        self.context_field = Some(field);
        self
    }
}

/// Appends `text` to `line` as a JSON string.
fn push_str(line: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *line, text);
}

/// Appends `at` as a JSON string in RFC 3339 with microseconds and `Z`
/// (`"2026-11-24T10:00:00.123456Z"`), the text chrono's `to_rfc3339_opts(Micros, true)` gives,
/// written without its formatting machinery; years outside 0 to 9999 are left to chrono.
fn push_timestamp(line: &mut Vec<u8>, at: DateTime<Utc>) {
    let year = at.year();
    if !(0..=9999).contains(&year) {
        push_str(line, &at.to_rfc3339_opts(SecondsFormat::Micros, true));
        return;
    }
    // chrono keeps a leap second as second 59 with a billion nanoseconds or more, and writes it
    // as second 60.
    let (second, nanos) = match at.nanosecond().checked_sub(1_000_000_000) {
        Some(nanos) => (at.second() + 1, nanos),
        None => (at.second(), at.nanosecond()),
    };
    line.push(b'"');
    for (value, width, then) in [
        (year.unsigned_abs(), 4, b'-'),
        (at.month(), 2, b'-'),
        (at.day(), 2, b'T'),
        (at.hour(), 2, b':'),
        (at.minute(), 2, b':'),
        (second, 2, b'.'),
        (nanos / 1_000, 6, b'Z'),
    ] {
        push_digits(line, value, width);
        line.push(then);
    }
    line.push(b'"');
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_digits(line: &mut Vec<u8>, mut value: u32, width: usize) {
    let mut digits = [b'0'; 6];
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
    line.extend_from_slice(&digits[..width]);
}

/// Appends `bytes` as a JSON string of lowercase hex digits (a trace or span id).
fn push_hex(line: &mut Vec<u8>, bytes: &[u8]) {
    line.push(b'"');
    crate::propagation::push_hex(line, bytes);
    line.push(b'"');
}

/// `err` and every cause under it, as `error: cause: cause`: how a log line writes an error
/// logged as one (`error = &err as &dyn Error`), and for other places that show an error in words.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Writes an event's fields: the message apart, every other field as `,"name":value` into the
/// `fields` object, each value masked.
struct FieldVisitor<'a> {
    masker: &'a Masker,
    message: Option<String>,
    fields: Vec<u8>,
}

impl FieldVisitor<'_> {
    /// Starts the field `name` and says whether to write its value (false for `log.*` fields,
    /// which the `log` crate bridge adds, and for the message, kept apart).
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("log.") {
            return false;
        }
        self.fields
            .push(if self.fields.is_empty() { b'{' } else { b',' });
        push_str(&mut self.fields, name);
        self.fields.push(b':');
        true
    }

    fn text(&mut self, field: &Field, value: &str) {
        let masked = if self.masker.is_sensitive_key(field.name()) {
            MASK.into()
        } else {
            self.masker.mask_text(value)
        };
        if field.name() == "message" {
            self.message = Some(masked.into_owned());
        } else if self.key(field) {
            push_str(&mut self.fields, &masked);
        }
    }

    /// A number or boolean: written as it is, unless its key is sensitive or it is the message,
    /// which take the path of text.
    fn plain(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" || self.masker.is_sensitive_key(field.name()) {
            self.text(field, &value.to_string());
        } else if self.key(field) {
            let _ = serde_json::to_writer(&mut self.fields, &value);
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.plain(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.plain(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.plain(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.plain(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, &error_chain(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, &format!("{value:?}"));
    }
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _: layer::Context<'_, S>) {
        let mut visitor = FieldVisitor {
            masker: &self.masker,
            message: None,
            fields: Vec::new(),
        };
        event.record(&mut visitor);

        let meta = event.metadata();
        let mut line = Vec::with_capacity(256 + visitor.fields.len());
        line.extend_from_slice(b"{\"timestamp\":");
        push_timestamp(&mut line, Utc::now());
        line.extend_from_slice(b",\"level\":");
        push_str(&mut line, meta.level().as_str());
        line.extend_from_slice(b",\"service\":");
        push_str(&mut line, self.service);
        line.extend_from_slice(b",\"target\":");
        push_str(&mut line, meta.target());
        line.extend_from_slice(b",\"message\":");
        push_str(&mut line, visitor.message.as_deref().unwrap_or_default());
        // The context the event belongs to: the current one, unless the event names a parent
        // of its own (a `tracing` span, which is no OpenTelemetry span) or none.
        let cx = if event.is_contextual() {
            Context::current()
        } else {
            Context::new()
        };
        let span_context = cx.span().span_context().clone();
        if span_context.is_valid() {
            line.extend_from_slice(b",\"trace_id\":");
            push_hex(&mut line, &span_context.trace_id().to_bytes());
            line.extend_from_slice(b",\"span_id\":");
            push_hex(&mut line, &span_context.span_id().to_bytes());
        }
        if let Some((name, read)) = self.context_field
            && let Some(value) = read(&cx)
        {
            line.push(b',');
            push_str(&mut line, name);
            line.push(b':');
            push_str(&mut line, value.as_str());
        }
        if !visitor.fields.is_empty() {
            line.extend_from_slice(b",\"fields\":");
            line.extend_from_slice(&visitor.fields);
            line.push(b'}');
        }
        line.extend_from_slice(b"}\n");
        // A log line that cannot be written is lost; there is nowhere to report that.
        let _ = self.writer.make_writer_for(meta).write_all(&line);
    }
}

/// Which spans and events are made at all.
pub type Filter = Box<dyn Layer<Registry> + Send + Sync>;

/// The filter `directives` (`RUST_LOG`'s syntax) describe, `default` when they are empty or
/// invalid. When it only
/// names targets and levels, as it almost always does, a static per-target filter: `EnvFilter`
/// also keeps track of every span, on each poll of an instrumented future, for directives about
/// spans and fields, and is used only when the directives have such parts.
pub fn log_filter(directives: &str, default: &str) -> Filter {
    let directives = if directives.trim().is_empty() {
        default
    } else {
        directives
    };
    // `Targets` would take a span directive (`[request]=debug`) for a target name.
    let about_spans = directives.contains(['[', '{']);
    if !about_spans && let Ok(targets) = directives.parse::<Targets>() {
        return targets.boxed();
    }
    match EnvFilter::try_new(directives) {
        Ok(filter) => filter.boxed(),
        Err(_) if directives != default => log_filter(default, default),
        Err(_) => EnvFilter::new(default).boxed(),
    }
}

/// The `tracing` subscriber of every process, as one dispatch: `filter`, and JSON log lines of
/// `service` to `writer`, masked by `masker`, with `context_field` when given. `tracing` is for
/// log lines only: spans are made with the OpenTelemetry API, and a log line names the trace of
/// the current OpenTelemetry context.
pub fn subscriber<W>(
    filter: Filter,
    service: &'static str,
    masker: Masker,
    context_field: Option<ContextField>,
    writer: W,
) -> tracing::Dispatch
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let mut log_layer = JsonLines::new(service, masker, writer);
    if let Some(field) = context_field {
        log_layer = log_layer.with_context_field(field);
    }
    tracing::Dispatch::new(tracing_subscriber::registry().with(filter).with(log_layer))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::trace::{TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use serde_json::Value;
    use uuid::Uuid;

    use super::*;

    /// The order id in a context's baggage, as a process might log it.
    fn order_field() -> ContextField {
        ("order_id", |cx: &Context| {
            use opentelemetry::baggage::BaggageExt as _;
            cx.baggage().get("order.id").cloned()
        })
    }

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

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        use chrono::{NaiveDate, TimeZone as _};
        let at = |y, mo, d, h, mi, s, nanos| {
            Utc.from_utc_datetime(
                &NaiveDate::from_ymd_opt(y, mo, d)
                    .unwrap()
                    .and_hms_nano_opt(h, mi, s, nanos)
                    .unwrap(),
            )
        };
        for instant in [
            Utc::now(),
            DateTime::UNIX_EPOCH,
            at(2026, 12, 2, 9, 5, 7, 123_456_789),
            at(2026, 1, 31, 23, 59, 59, 999_999_999),
            at(2016, 12, 31, 23, 59, 59, 1_500_000_000),
            at(0, 1, 1, 0, 0, 0, 1_000),
            at(9999, 12, 31, 23, 59, 59, 0),
            at(10_000, 1, 1, 0, 0, 0, 0),
            at(-1, 1, 1, 0, 0, 0, 0),
        ] {
            let mut line = Vec::new();
            push_timestamp(&mut line, instant);
            let expected = format!(
                "\"{}\"",
                instant.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
            assert_eq!(String::from_utf8(line).unwrap(), expected);
        }
    }

    #[test]
    fn a_log_line_names_the_trace_and_order_of_the_context_it_is_written_in() {
        let lines = Lines::default();
        let writer = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("test");
        let dispatch = subscriber(
            log_filter("info", "info"),
            "test-service",
            Masker::default(),
            Some(order_field()),
            move || writer.clone(),
        );
        let order = Uuid::now_v7();
        let request = Context::new()
            .with_baggage(vec![opentelemetry::KeyValue::new(
                "order.id",
                order.to_string(),
            )])
            .with_span(tracer.start("request"));
        let request_trace = request.span().span_context().trace_id().to_string();
        tracing::dispatcher::with_default(&dispatch, || {
            {
                let _entered = request.clone().attach();
                tracing::info!(attempt = 1, "inside the request");
                let other = tracing::info_span!(parent: None, "other");
                tracing::warn!(parent: &other, "about a span of its own");
            }
            tracing::info!("outside any span");
        });

        let lines = lines.parsed();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(lines[0]["message"], "inside the request");
        assert_eq!(lines[0]["trace_id"], request_trace.as_str());
        assert_eq!(lines[0]["order_id"], order.to_string().as_str());
        assert_eq!(lines[0]["fields"]["attempt"], 1);
        assert!(lines[1].get("trace_id").is_none() && lines[1].get("order_id").is_none());
        assert!(lines[2].get("trace_id").is_none() && lines[2].get("order_id").is_none());
    }

    #[test]
    fn fields_of_every_type_are_written_as_json_and_masked() {
        let lines = Lines::default();
        let writer = lines.clone();
        let dispatch = subscriber(
            log_filter("info", "info"),
            "test-service",
            Masker::default(),
            None,
            move || writer.clone(),
        );
        #[derive(Debug)]
        struct Failure(std::io::Error);
        impl std::fmt::Display for Failure {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot store the order")
            }
        }
        impl std::error::Error for Failure {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let failure = Failure(std::io::Error::other("connection refused"));
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(
                count = 3_u64,
                delta = -2_i64,
                ratio = 0.5,
                ok = true,
                quoted = "a \"b\"\n",
                note = "write to jane.doe@example.com",
                email = "anything",
                phone = 491701234567_u64,
                debug = ?Some(1),
                error = &failure as &dyn std::error::Error,
                "order for jane.doe@example.com"
            );
        });

        let lines = lines.parsed();
        let fields = &lines[0]["fields"];
        assert_eq!(fields["count"], 3);
        assert_eq!(fields["delta"], -2);
        assert_eq!(fields["ratio"], 0.5);
        assert_eq!(fields["ok"], true);
        assert_eq!(fields["quoted"], "a \"b\"\n");
        assert_eq!(fields["note"], "write to [masked:email]");
        assert_eq!(fields["email"], MASK);
        assert_eq!(fields["phone"], MASK, "a number under a sensitive key");
        assert_eq!(fields["debug"], "Some(1)");
        assert_eq!(
            fields["error"], "cannot store the order: connection refused",
            "an error is written with its causes"
        );
        assert_eq!(lines[0]["message"], "order for [masked:email]");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["service"], "test-service");
    }

    #[test]
    fn rust_log_is_honoured_with_span_directives_and_an_invalid_one_gives_the_default() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let debug_enabled = |directives: &str, in_span: bool| {
            let subscriber = tracing_subscriber::registry().with(log_filter(directives, "info"));
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::warn_span!("request");
                let _entered = in_span.then(|| span.enter());
                (
                    tracing::enabled!(tracing::Level::DEBUG),
                    tracing::enabled!(tracing::Level::INFO),
                )
            })
        };
        assert_eq!(
            debug_enabled("warn,otel_fastpath=debug", false),
            (true, true)
        );
        assert_eq!(debug_enabled("warn", false), (false, false));
        assert_eq!(debug_enabled("warn,[request]=debug", true), (true, true));
        assert_eq!(debug_enabled("warn,[request]=debug", false), (false, false));
        assert_eq!(debug_enabled("not a filter=[", false), (false, true));
        assert_eq!(debug_enabled("", false), (false, true));
    }
}
