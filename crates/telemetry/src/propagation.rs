//! W3C trace context and baggage across every boundary Hallmark has: HTTP headers, AMQP message
//! headers, rows stored for later (outbox, jobs, orders) and the environment of a child process.
//!
//! Extraction never fails: a missing, malformed or hostile `traceparent` yields a context without
//! a remote parent, so the receiver starts a fresh trace. Baggage is bounded by the propagator
//! (at most 64 entries and 8 KiB), and `order.id` is trusted only from our own hops: the HTTP edge
//! drops it ([`extract_http`]) and sets it from the request path instead.

use std::sync::Arc;

use opentelemetry::baggage::{Baggage, BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
use opentelemetry::{Context, StringValue, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize as _;
use uuid::Uuid;

use crate::attributes::BAGGAGE_ORDER_ID;

/// Installs the W3C trace-context + baggage propagator ([`W3c`]) process-wide, for libraries
/// that ask the global API; Hallmark's own carriers below use it directly.
pub fn install_propagator() {
    global::set_text_map_propagator(W3c::default());
}

/// W3C trace context and baggage: what the SDK's `TraceContextPropagator` and
/// `BaggagePropagator` do together, with the same injected bytes, written without `format!` and
/// iterator chains, except that an empty `tracestate` is not sent (W3C: vendors "SHOULD avoid
/// sending" it), and the same extracted context: theirs, with its validation and limits, except
/// that the form our own hops write is read directly. Every order injects its context about six
/// times (outbox rows, the order's stored context, message headers) and reads it back at every
/// hop, and the SDK's formatting and splitting were most of what that cost.
#[derive(Debug)]
pub struct W3c {
    trace_context: TraceContextPropagator,
    baggage: BaggagePropagator,
    fields: [String; 3],
}

impl Default for W3c {
    fn default() -> Self {
        Self {
            trace_context: TraceContextPropagator::new(),
            baggage: BaggagePropagator::new(),
            fields: [TRACEPARENT, TRACESTATE, BAGGAGE].map(str::to_owned),
        }
    }
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const BAGGAGE: &str = "baggage";

/// What the SDK's baggage propagator percent-encodes in keys and values.
const BAGGAGE_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b';').add(b',').add(b'=');

impl TextMapPropagator for W3c {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            injector.set(TRACEPARENT, traceparent(span_context));
            // W3C: vendors "SHOULD avoid sending" an empty tracestate.
            let trace_state = span_context.trace_state().header();
            if !trace_state.is_empty() {
                injector.set(TRACESTATE, trace_state);
            }
        }
        let baggage = cx.baggage();
        if !baggage.is_empty() {
            injector.set(BAGGAGE, baggage_header(baggage));
        }
    }

    /// The SDK propagators' extraction, with a shortcut for the form every Hallmark hop writes
    /// (a version-00 `traceparent` as it is written, baggage of one plain `key=value` entry):
    /// the same context, without splitting, collecting and percent-decoding. Anything else
    /// takes the SDK's way.
    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let cx = match extractor.get(TRACEPARENT).and_then(plain_traceparent) {
            Some((trace_id, span_id, flags)) => {
                let trace_state = extractor
                    .get(TRACESTATE)
                    .and_then(|header| header.parse().ok())
                    .unwrap_or_default();
                let span_context = SpanContext::new(trace_id, span_id, flags, true, trace_state);
                if span_context.is_valid() {
                    cx.with_remote_span_context(span_context)
                } else {
                    cx.clone()
                }
            }
            None => self.trace_context.extract_with_context(cx, extractor),
        };
        match extractor.get(BAGGAGE).and_then(plain_baggage) {
            Some(entry) => cx.with_baggage([entry]),
            None => self.baggage.extract_with_context(&cx, extractor),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// The ids and flags of a `traceparent` in the exact form [`traceparent`] writes: version 00,
/// lowercase hex, 55 bytes. The SDK's parser gives the same for such a header; it also accepts
/// other versions and surrounding space, so anything else is `None` and left to it.
fn plain_traceparent(header: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let bytes = header.as_bytes();
    let is_hex = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if bytes.len() != 55
        || !bytes.starts_with(b"00-")
        || bytes[35] != b'-'
        || bytes[52] != b'-'
        || !is_hex(3..35)
        || !is_hex(36..52)
        || !is_hex(53..55)
    {
        return None;
    }
    let trace_id = u128::from_str_radix(&header[3..35], 16).ok()?;
    let span_id = u64::from_str_radix(&header[36..52], 16).ok()?;
    let flags = u8::from_str_radix(&header[53..55], 16).ok()?;
    Some((
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// The one entry of a baggage header that holds a single `key=value` with nothing the SDK
/// would decode or split (no `%`, `,`, `;` or second `=`), trimmed as the SDK trims it; `None`
/// for anything else, which is left to the SDK's parser.
fn plain_baggage(header: &str) -> Option<KeyValueMetadata> {
    if header.len() > MAX_BAGGAGE_BYTES || header.bytes().any(|b| matches!(b, b'%' | b',' | b';')) {
        return None;
    }
    let (key, value) = header.split_once('=')?;
    if value.contains('=') {
        return None;
    }
    Some(KeyValueMetadata::new(
        key.trim().to_owned(),
        value.trim().to_owned(),
        "",
    ))
}

/// The longest baggage header the SDK's propagator reads (W3C's limit); a longer one is dropped.
const MAX_BAGGAGE_BYTES: usize = 8192;

/// `00-{trace id}-{span id}-{flags}`, only the sampled flag kept (as the SDK writes it).
fn traceparent(span_context: &SpanContext) -> String {
    let flags = (span_context.trace_flags() & TraceFlags::SAMPLED).to_u8();
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    push_hex(&mut out, &span_context.trace_id().to_bytes());
    out.push(b'-');
    push_hex(&mut out, &span_context.span_id().to_bytes());
    out.push(b'-');
    push_hex(&mut out, &[flags]);
    String::from_utf8(out).expect("hex digits and dashes are ASCII")
}

/// Appends `bytes` as lowercase hex digits, as ids are written in headers and log lines.
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0xf)]);
    }
}

/// `key=value;metadata` entries joined by `,`, keys and values trimmed and percent-encoded.
fn baggage_header(baggage: &Baggage) -> String {
    // Enough unless something needs escaping, so the text is written without growing.
    let mut out = String::with_capacity(
        baggage
            .iter()
            .map(|(key, (value, metadata))| {
                key.as_str().len() + value.as_str().len() + metadata.as_str().len() + 3
            })
            .sum(),
    );
    for (index, (key, (value, metadata))) in baggage.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.extend(utf8_percent_encode(key.as_str().trim(), BAGGAGE_ESCAPED));
        out.push('=');
        out.extend(utf8_percent_encode(value.as_str().trim(), BAGGAGE_ESCAPED));
        let metadata = metadata.as_str().trim();
        if !metadata.is_empty() {
            out.push(';');
            out.push_str(metadata);
        }
    }
    out
}

/// The one propagator every carrier of this module uses.
fn propagator() -> &'static W3c {
    static W3C: std::sync::LazyLock<W3c> = std::sync::LazyLock::new(W3c::default);
    &W3C
}

/// What work for an order does to it, as every span of that work says in `order.activity`.
///
/// order-watch judges whether an order is stuck by its progress alone: a customer who keeps
/// reading the status of an order that hangs must not make it look alive. The mark lives in the
/// context, not in baggage: it never crosses a process boundary, and each process's entry point
/// for an order's work says what that work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Work that moves the order: a status transition, processing its messages, publishing
    /// them, pricing it, storing its model. A progress span that fails is not progress.
    Progress,
    /// Work that only reads the order: the status a customer, partner or manager looks up,
    /// and any request until it does something that moves the order.
    Observation,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progress => "progress",
            Self::Observation => "observation",
        }
    }
}

/// `cx` with `order.id` added to its baggage (other entries are kept), for work that is
/// `activity`.
pub fn with_order(cx: &Context, order_id: Uuid, activity: Activity) -> Context {
    let mut baggage = baggage_without_order(cx);
    let value = StringValue::from(Arc::<str>::from(order_id.to_string()));
    let _ = baggage.insert(BAGGAGE_ORDER_ID, value.clone());
    cx.with_baggage(baggage)
        .with_value(KnownOrder(order_id, value))
        .with_value(activity)
}

/// `cx` for work that moves its order: spans started under it are progress.
pub fn as_progress(cx: &Context) -> Context {
    cx.with_value(Activity::Progress)
}

/// What work under `cx` does to its order; work nobody marked only observes it.
pub fn activity(cx: &Context) -> Activity {
    cx.get::<Activity>()
        .copied()
        .unwrap_or(Activity::Observation)
}

/// The order id [`with_order`] put into a context's baggage, already parsed, beside the
/// baggage entry itself. Every span of an order reads its order id at start (and every log line
/// in its span), and this spares each of them parsing and formatting the id again.
#[derive(Debug)]
struct KnownOrder(Uuid, StringValue);

/// The order id carried in `cx`'s baggage, when it is a well-formed UUID, with its canonical
/// text (the baggage value itself, cheap to clone, when [`with_order`] put it there).
pub fn order_entry(cx: &Context) -> Option<(Uuid, StringValue)> {
    let entry = cx.baggage().get(BAGGAGE_ORDER_ID)?;
    // The same allocation as the baggage entry: nothing has replaced it since it was parsed.
    if let Some(KnownOrder(id, value)) = cx.get::<KnownOrder>()
        && std::ptr::eq(value.as_str(), entry.as_str())
    {
        return Some((*id, value.clone()));
    }
    let id = Uuid::try_parse(entry.as_str()).ok()?;
    Some((id, StringValue::from(id.to_string())))
}

/// The order id carried in `cx`'s baggage, when it is a well-formed UUID.
pub fn order_id(cx: &Context) -> Option<Uuid> {
    order_entry(cx).map(|(id, _)| id)
}

/// `cx` without `order.id` in its baggage.
fn without_order(cx: Context) -> Context {
    if cx.baggage().get(BAGGAGE_ORDER_ID).is_none() {
        return cx;
    }
    let baggage = baggage_without_order(&cx);
    cx.with_baggage(baggage)
}

/// A copy of `cx`'s baggage without `order.id`: every other entry with its properties.
fn baggage_without_order(cx: &Context) -> Baggage {
    cx.baggage()
        .iter()
        .filter(|(k, _)| k.as_str() != BAGGAGE_ORDER_ID)
        .map(|(k, (v, properties))| (k.clone(), (v.clone(), properties.clone())))
        .collect()
}

fn extract(extractor: &dyn Extractor) -> Context {
    propagator().extract(extractor)
}

fn inject(cx: &Context, injector: &mut dyn Injector) {
    propagator().inject_context(cx, injector);
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The caller's context from request headers, with any caller-supplied `order.id` dropped.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    without_order(extract(&HeaderExtractor(headers)))
}

/// Writes `cx` into outgoing request headers.
pub fn inject_http(cx: &Context, headers: &mut http::HeaderMap) {
    inject(cx, &mut HeaderInjector(headers));
}

// ---------------------------------------------------------------------------------------------
// AMQP

struct AmqpExtractor<'a>(&'a lapin::types::FieldTable);

impl Extractor for AmqpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        use lapin::types::AMQPValue;
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

struct AmqpInjector<'a>(&'a mut lapin::types::FieldTable);

impl Injector for AmqpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            key.into(),
            lapin::types::AMQPValue::LongString(value.into()),
        );
    }
}

/// The creation context of a message, from its headers.
pub fn extract_amqp(headers: &lapin::types::FieldTable) -> Context {
    extract(&AmqpExtractor(headers))
}

/// Writes `cx` into message headers.
pub fn inject_amqp(cx: &Context, headers: &mut lapin::types::FieldTable) {
    inject(cx, &mut AmqpInjector(headers));
}

// ---------------------------------------------------------------------------------------------
// Stored carriers (outbox rows, jobs, an order's last context) and process environments

/// A context stored with a row (outbox rows, jobs, an order's last context) so that the work
/// that picks the row up later continues, or links to, its trace: the three W3C fields, stored
/// as a JSON object such as `{"traceparent":"00-…","baggage":"order.id=…"}`. Fields that are
/// missing, or not text, read as absent; other keys are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Carrier {
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub traceparent: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub tracestate: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub baggage: Option<String>,
}

/// A carrier field that is not text (a number, `null`, an object) is as good as absent: a
/// stored context can only ever lose its trace, never fail the row it came with.
fn text_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => Some(text),
        _ => None,
    })
}

impl Carrier {
    /// The fields by their header names, to write; [`Carrier::field`] reads one.
    fn fields(&mut self) -> [(&'static str, &mut Option<String>); 3] {
        [
            (TRACEPARENT, &mut self.traceparent),
            (TRACESTATE, &mut self.tracestate),
            (BAGGAGE, &mut self.baggage),
        ]
    }

    fn field(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            BAGGAGE => self.baggage.as_deref(),
            _ => None,
        }
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if let Some((_, field)) = self.fields().into_iter().find(|(name, _)| *name == key) {
            *field = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.field(key)
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE, BAGGAGE]
            .into_iter()
            .filter(|key| self.field(key).is_some())
            .collect()
    }
}

/// `cx` as a [`Carrier`] to store with a row.
pub fn to_carrier(cx: &Context) -> Carrier {
    let mut carrier = Carrier::default();
    inject(cx, &mut carrier);
    carrier
}

/// The context stored by [`to_carrier`].
pub fn from_carrier(carrier: &Carrier) -> Context {
    extract(carrier)
}

/// Environment variables (`TRACEPARENT`, `TRACESTATE`, `BAGGAGE`) that hand `cx` to a child
/// process, the convention of the OpenTelemetry environment-variable carrier.
pub fn to_env(cx: &Context) -> Vec<(String, String)> {
    to_carrier(cx)
        .fields()
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_ascii_uppercase(), value.take()?)))
        .collect()
}

/// The parent context a child process was started with (see [`to_env`]).
pub fn from_env() -> Context {
    let mut carrier = Carrier::default();
    for (name, value) in carrier.fields() {
        *value = std::env::var(name.to_ascii_uppercase()).ok();
    }
    from_carrier(&carrier)
}

/// Whether `cx` holds a valid (possibly remote) span to continue or link to.
pub fn has_span(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::KeyValue;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        install_propagator();
        let cx = extract_http(&headers(&[("traceparent", PARENT)]));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(cx.span().span_context().is_remote());
    }

    #[test]
    fn a_malformed_traceparent_starts_a_fresh_trace() {
        install_propagator();
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "",
        ] {
            let cx = extract_http(&headers(&[("traceparent", bad)]));
            assert!(!has_span(&cx), "{bad:?}");
        }
    }

    #[test]
    fn the_http_edge_does_not_trust_a_callers_order_id() {
        install_propagator();
        let cx = extract_http(&headers(&[(
            "baggage",
            "order.id=0192f5d4-7a3e-7c1b-9d2e-5f6a7b8c9d0e,tenant=acme;source=partner",
        )]));
        assert_eq!(order_id(&cx), None);
        let tenant = |cx: &Context| {
            cx.baggage()
                .get_with_metadata("tenant")
                .map(|(value, properties)| format!("{value};{}", properties.as_str()))
        };
        assert_eq!(tenant(&cx).as_deref(), Some("acme;source=partner"));
        // The order id the edge sets from the path keeps the caller's other entries whole.
        let cx = with_order(&cx, Uuid::now_v7(), Activity::Observation);
        assert_eq!(tenant(&cx).as_deref(), Some("acme;source=partner"));
    }

    #[test]
    fn hostile_baggage_is_bounded() {
        install_propagator();
        let many: Vec<String> = (0..500).map(|i| format!("k{i}=v{i}")).collect();
        let cx = extract_http(&headers(&[("baggage", &many.join(","))]));
        assert!(cx.baggage().len() <= 64);
        let huge = format!("k={}", "x".repeat(20_000));
        let cx = extract_http(&headers(&[("baggage", &huge)]));
        assert_eq!(cx.baggage().len(), 0);
    }

    #[test]
    fn a_context_survives_amqp_headers_a_stored_carrier_and_the_environment() {
        install_propagator();
        let order = Uuid::now_v7();
        let remote = extract_http(&headers(&[("traceparent", PARENT)]));
        let cx = with_order(&remote, order, Activity::Progress);

        let mut table = lapin::types::FieldTable::default();
        inject_amqp(&cx, &mut table);
        let back = extract_amqp(&table);
        assert_eq!(
            back.span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
        assert_eq!(order_id(&back), Some(order));

        let back = from_carrier(&to_carrier(&cx));
        assert_eq!(order_id(&back), Some(order));

        let env = to_env(&cx);
        assert!(env.iter().any(|(k, v)| k == "TRACEPARENT" && v == PARENT));
        assert!(env.iter().any(|(k, _)| k == "BAGGAGE"));
    }

    #[test]
    fn w3c_extracts_what_the_sdk_propagators_extract() {
        use opentelemetry::propagation::TextMapCompositePropagator;

        let sdk = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        // What a context says: its span context and its baggage entries, sorted.
        let seen = |cx: &Context| {
            let mut entries: Vec<String> = cx
                .baggage()
                .iter()
                .map(|(k, (v, m))| format!("{k}={v};{}", m.as_str()))
                .collect();
            entries.sort();
            (cx.span().span_context().clone(), entries)
        };
        // The form our hops write, then every one-byte change of it, then other shapes.
        let mut parents = vec![None, Some(PARENT.to_owned())];
        for at in 0..PARENT.len() {
            for byte in "0af-AG ".chars() {
                let mut changed = PARENT.to_owned();
                changed.replace_range(at..=at, &byte.to_string());
                parents.push(Some(changed));
            }
        }
        for other in [
            "",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-abc-def-01",
        ] {
            parents.push(Some(other.to_owned()));
        }
        let order = Uuid::now_v7();
        let baggages = [
            None,
            Some(String::new()),
            Some(format!("order.id={order}")),
            Some(format!(" order.id = {order} ")),
            Some("k=v=w".to_owned()),
            Some("k=v;prop=1".to_owned()),
            Some("k=%20v%2C".to_owned()),
            Some("a=1,b=2".to_owned()),
            Some("=v".to_owned()),
            Some("k=".to_owned()),
            Some("k".to_owned()),
            Some("key with space=v".to_owned()),
            Some("ключ=значение".to_owned()),
            Some(format!("k={}", "v".repeat(9000))),
        ];
        for parent in &parents {
            for state in [None, Some("vendor=x,other=y"), Some("not a state")] {
                for baggage in &baggages {
                    let mut carrier = HashMap::new();
                    for (key, value) in [
                        (TRACEPARENT, parent.as_deref()),
                        (TRACESTATE, state),
                        (BAGGAGE, baggage.as_deref()),
                    ] {
                        if let Some(value) = value {
                            carrier.insert(key.to_owned(), value.to_owned());
                        }
                    }
                    let ours = W3c::default().extract(&carrier);
                    let theirs = sdk.extract(&carrier);
                    assert_eq!(seen(&ours), seen(&theirs), "{carrier:?}");
                }
            }
        }
    }

    #[test]
    fn w3c_injects_what_the_sdk_propagators_inject() {
        use opentelemetry::baggage::BaggageMetadata;
        use opentelemetry::propagation::TextMapCompositePropagator;
        use opentelemetry::trace::{SpanId, TraceId, TraceState};

        let sdk = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        let span = |flags: u8, state: &str| {
            SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::new(flags),
                true,
                state.parse::<TraceState>().unwrap(),
            )
        };
        let mut odd = Baggage::new();
        let _ = odd.insert_with_metadata(
            " key with space ",
            "v,a;l=u\"e %é ",
            BaggageMetadata::from("prop=1"),
        );
        let _ = odd.insert(BAGGAGE_ORDER_ID, Uuid::now_v7().to_string());
        let _ = odd.insert("tenant", "acme");
        let contexts = [
            Context::new(),
            Context::new().with_remote_span_context(span(1, "")),
            Context::new().with_remote_span_context(span(0, "")),
            Context::new().with_remote_span_context(span(0xff, "a=1,b=2")),
            with_order(
                &Context::new().with_remote_span_context(span(1, "vendor=x")),
                Uuid::now_v7(),
                Activity::Progress,
            ),
            Context::new()
                .with_remote_span_context(span(1, ""))
                .with_baggage(odd),
            Context::new().with_baggage(vec![KeyValue::new("k", "v")]),
        ];
        for cx in contexts {
            let mut ours = HashMap::new();
            W3c::default().inject_context(&cx, &mut ours);
            let mut theirs = HashMap::new();
            sdk.inject_context(&cx, &mut theirs);
            // The one difference: the SDK sends an empty `tracestate`, which W3C asks not to.
            theirs
                .retain(|key: &String, value: &mut String| key != TRACESTATE || !value.is_empty());
            assert_eq!(ours, theirs);
            // The composite keeps its fields in a set, in no particular order.
            let sorted = |fields: FieldIter<'_>| {
                let mut fields: Vec<String> = fields.map(str::to_owned).collect();
                fields.sort();
                fields
            };
            assert_eq!(sorted(W3c::default().fields()), sorted(sdk.fields()));
        }
    }

    #[test]
    fn the_order_id_is_read_from_the_baggage_entry_it_was_set_with_or_parsed() {
        let order = Uuid::now_v7();
        let cx = with_order(&Context::new(), order, Activity::Progress);
        let (id, text) = order_entry(&cx).unwrap();
        assert_eq!(id, order);
        // Not parsed again: the text handed out is the baggage entry's own.
        let child = cx.with_value(7_u8);
        let entry = child.baggage().get(BAGGAGE_ORDER_ID).unwrap();
        assert!(std::ptr::eq(text.as_str(), entry.as_str()));
        assert!(std::ptr::eq(
            order_entry(&child).unwrap().1.as_str(),
            entry.as_str()
        ));
        // A hop that carried only the baggage: parsed again, and written canonically.
        let simple = Context::new().with_baggage(vec![KeyValue::new(
            BAGGAGE_ORDER_ID,
            order.simple().to_string().to_uppercase(),
        )]);
        let (id, text) = order_entry(&simple).unwrap();
        assert_eq!((id, text.as_str()), (order, order.to_string().as_str()));
        // The baggage entry replaced after `with_order`: the entry wins, not the parsed id.
        let other = Uuid::now_v7();
        let replaced = cx.with_baggage(vec![KeyValue::new(BAGGAGE_ORDER_ID, other.to_string())]);
        assert_eq!(order_id(&replaced), Some(other));
        let removed = cx.with_baggage(Vec::<KeyValue>::new());
        assert_eq!(order_id(&removed), None);
    }

    #[test]
    fn a_stored_carrier_is_three_text_fields_and_tolerates_what_older_rows_hold() {
        install_propagator();
        let order = Uuid::now_v7();
        let cx = with_order(
            &extract_http(&headers(&[("traceparent", PARENT)])),
            order,
            Activity::Progress,
        );
        let stored = serde_json::to_value(to_carrier(&cx)).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({ "traceparent": PARENT, "baggage": format!("order.id={order}") })
        );
        let read = |json: serde_json::Value| serde_json::from_value::<Carrier>(json).unwrap();
        // As earlier versions stored it: a map with an empty trace state.
        let older =
            read(serde_json::json!({ "traceparent": PARENT, "tracestate": "", "baggage": "" }));
        assert_eq!(
            from_carrier(&older).span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
        let junk = read(serde_json::json!({ "traceparent": 7, "baggage": null, "other": "x" }));
        assert_eq!(junk, Carrier::default());
        assert!(!has_span(&from_carrier(&junk)));
    }

    #[test]
    fn a_malformed_order_id_in_baggage_is_ignored() {
        let cx = Context::new().with_baggage(vec![KeyValue::new("order.id", "not-a-uuid")]);
        assert_eq!(order_id(&cx), None);
    }
}
