//! W3C trace context and baggage across every boundary Hallmark has: HTTP headers, AMQP message
//! headers, rows stored for later (outbox, jobs, orders) and the environment of a child process.
//!
//! Extraction never fails: a missing, malformed or hostile `traceparent` yields a context without
//! a remote parent, so the receiver starts a fresh trace. Baggage is bounded by the propagator
//! (at most 64 entries and 8 KiB), and `order.id` is trusted only from our own hops: the HTTP edge
//! drops it ([`extract_http`]) and sets it from the request path instead.

use std::collections::HashMap;

use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use uuid::Uuid;

use crate::attributes::BAGGAGE_ORDER_ID;

/// Installs the W3C trace-context + baggage propagator process-wide.
pub fn install_propagator() {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
}

/// `cx` with `order.id` added to its baggage (other entries are kept).
pub fn with_order(cx: &Context, order_id: Uuid) -> Context {
    let mut baggage: Baggage = cx
        .baggage()
        .iter()
        .map(|(k, (v, _))| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let _ = baggage.insert(BAGGAGE_ORDER_ID, order_id.to_string());
    cx.with_baggage(baggage)
}

/// The order id carried in `cx`'s baggage, when it is a well-formed UUID.
pub fn order_id(cx: &Context) -> Option<Uuid> {
    cx.baggage()
        .get(BAGGAGE_ORDER_ID)
        .and_then(|v| Uuid::parse_str(v.as_str()).ok())
}

/// `cx` without `order.id` in its baggage.
fn without_order(cx: Context) -> Context {
    if cx.baggage().get(BAGGAGE_ORDER_ID).is_none() {
        return cx;
    }
    let baggage: Baggage = cx
        .baggage()
        .iter()
        .filter(|(k, _)| k.as_str() != BAGGAGE_ORDER_ID)
        .map(|(k, (v, _))| KeyValue::new(k.clone(), v.clone()))
        .collect();
    cx.with_baggage(baggage)
}

fn extract(extractor: &dyn Extractor) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(extractor))
}

fn inject(cx: &Context, injector: &mut dyn Injector) {
    global::get_text_map_propagator(|propagator| propagator.inject_context(cx, injector));
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

/// `cx` as a `traceparent`/`tracestate`/`baggage` map, for storing with a row so the work that
/// picks the row up later continues (or links to) this trace.
pub fn to_carrier(cx: &Context) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    inject(cx, &mut carrier);
    carrier
}

/// The context stored by [`to_carrier`].
pub fn from_carrier(carrier: &HashMap<String, String>) -> Context {
    extract(carrier)
}

/// Environment variables (`TRACEPARENT`, `TRACESTATE`, `BAGGAGE`) that hand `cx` to a child
/// process, the convention of the OpenTelemetry environment-variable carrier.
pub fn to_env(cx: &Context) -> Vec<(String, String)> {
    to_carrier(cx)
        .into_iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect()
}

/// The parent context a child process was started with (see [`to_env`]).
pub fn from_env() -> Context {
    let carrier: HashMap<String, String> = ["traceparent", "tracestate", "baggage"]
        .into_iter()
        .filter_map(|k| {
            std::env::var(k.to_ascii_uppercase())
                .ok()
                .map(|v| (k.to_owned(), v))
        })
        .collect();
    from_carrier(&carrier)
}

/// Whether `cx` holds a valid (possibly remote) span to continue or link to.
pub fn has_span(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

#[cfg(test)]
mod tests {
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
            "order.id=0192f5d4-7a3e-7c1b-9d2e-5f6a7b8c9d0e,tenant=acme",
        )]));
        assert_eq!(order_id(&cx), None);
        assert_eq!(
            cx.baggage().get("tenant").map(|v| v.as_str().to_string()),
            Some("acme".to_string())
        );
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
        let cx = with_order(&remote, order);

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
    fn a_malformed_order_id_in_baggage_is_ignored() {
        let cx = Context::new().with_baggage(vec![KeyValue::new("order.id", "not-a-uuid")]);
        assert_eq!(order_id(&cx), None);
    }
}
