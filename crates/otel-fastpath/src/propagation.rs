//! W3C trace context and baggage, as one propagator.
//!
//! [`propagator`] is what every carrier uses: [`W3c`], or with the `reference` feature the
//! SDK's `TraceContextPropagator` and `BaggagePropagator` composed, which [`W3c`] is tested
//! against. Extraction never fails: a missing, malformed or hostile `traceparent` yields a
//! context without a remote parent, and baggage is bounded (at most 64 entries and 8 KiB).

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// The propagator every carrier uses, process-wide: [`W3c`], or the SDK's own propagators
/// composed when the `reference` feature is on.
pub fn propagator() -> &'static (dyn TextMapPropagator + Send + Sync) {
    #[cfg(not(feature = "reference"))]
    {
        static W3C: std::sync::LazyLock<W3c> = std::sync::LazyLock::new(W3c::default);
        &*W3C
    }
    #[cfg(feature = "reference")]
    {
        use opentelemetry::propagation::TextMapCompositePropagator;
        static SDK: std::sync::LazyLock<TextMapCompositePropagator> =
            std::sync::LazyLock::new(|| {
                TextMapCompositePropagator::new(vec![
                    Box::new(TraceContextPropagator::new()),
                    Box::new(BaggagePropagator::new()),
                ])
            });
        &*SDK
    }
}

/// Makes [`propagator`] the process-wide one, for libraries that ask the global API.
pub fn install_global() {
    opentelemetry::global::set_text_map_propagator(Configured);
}

/// [`propagator`] as a value of its own, for the global API.
#[derive(Debug)]
struct Configured;

impl TextMapPropagator for Configured {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        propagator().inject_context(cx, injector);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        propagator().extract_with_context(cx, extractor)
    }

    fn fields(&self) -> FieldIter<'_> {
        propagator().fields()
    }
}

/// The context `extractor` carries (see [`propagator`]).
pub fn extract(extractor: &dyn Extractor) -> Context {
    propagator().extract(extractor)
}

/// Writes `cx` into `injector` (see [`propagator`]).
pub fn inject(cx: &Context, injector: &mut dyn Injector) {
    propagator().inject_context(cx, injector);
}

/// The context a `traceparent` header names, as a receiver continues it (a context without a
/// parent when the header is not valid).
pub fn remote_parent(traceparent: &str) -> Context {
    let carrier =
        std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    extract(&carrier)
}

/// Whether `cx` holds a valid (possibly remote) span to continue or link to.
pub fn has_span(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// W3C trace context and baggage: what the SDK's `TraceContextPropagator` and
/// `BaggagePropagator` do together, with the same injected bytes, written without `format!` and
/// iterator chains, except that an empty `tracestate` is not sent (W3C: vendors "SHOULD avoid
/// sending" it), and the same extracted context: theirs, with its validation and limits, except
/// that the form it writes itself is read directly. A service that hands a request's context on
/// several times per request (stored rows, message headers) and reads it back at every hop
/// spent most of that on the SDK's formatting and splitting.
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

/// The W3C header names (lowercase), also the keys of every carrier.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const BAGGAGE: &str = "baggage";

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

    /// The SDK propagators' extraction, with a shortcut for the form [`W3c`] writes
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
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::KeyValue;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

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
        let order = "0192f5d4-7a3e-7c1b-9d2e-5f6a7b8c9d0e";
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
        let _ = odd.insert("order.id", "0192f5d4-7a3e-7c1b-9d2e-5f6a7b8c9d0e");
        let _ = odd.insert("tenant", "acme");
        let contexts = [
            Context::new(),
            Context::new().with_remote_span_context(span(1, "")),
            Context::new().with_remote_span_context(span(0, "")),
            Context::new().with_remote_span_context(span(0xff, "a=1,b=2")),
            Context::new()
                .with_remote_span_context(span(1, "vendor=x"))
                .with_baggage(vec![KeyValue::new(
                    "order.id",
                    "0192f5d4-7a3e-7c1b-9d2e-5f6a7b8c9d0e",
                )]),
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
}
