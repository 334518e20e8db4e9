//! Trace context in AMQP message headers: W3C `traceparent`, `tracestate` and `baggage` as
//! long-string headers, written and read with the process's one propagator.

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use otel_fastpath::propagation::{extract, inject};

struct AmqpExtractor<'a>(&'a FieldTable);

impl Extractor for AmqpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
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

struct AmqpInjector<'a>(&'a mut FieldTable);

impl Injector for AmqpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

/// The creation context of a message, from its headers. Never fails: headers that hold no
/// valid context give one without a parent.
pub fn extract_amqp(headers: &FieldTable) -> Context {
    extract(&AmqpExtractor(headers))
}

/// Writes `cx` into message headers.
pub fn inject_amqp(cx: &Context, headers: &mut FieldTable) {
    inject(cx, &mut AmqpInjector(headers));
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;
    use telemetry::propagation::{Activity, order_id, with_order};
    use uuid::Uuid;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_context_and_its_order_survive_message_headers() {
        let remote = otel_fastpath::propagation::remote_parent(PARENT);
        let order = Uuid::now_v7();
        let cx = with_order(&remote, order, Activity::Progress);
        let mut table = FieldTable::default();
        inject_amqp(&cx, &mut table);
        let back = extract_amqp(&table);
        assert_eq!(
            back.span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
        assert_eq!(order_id(&back), Some(order));
    }

    #[test]
    fn headers_of_other_types_or_garbage_give_a_context_without_parent() {
        let mut table = FieldTable::default();
        table.insert("traceparent".into(), AMQPValue::LongInt(7));
        assert!(!otel_fastpath::propagation::has_span(&extract_amqp(&table)));
        table.insert(
            "traceparent".into(),
            AMQPValue::LongString("garbage".into()),
        );
        assert!(!otel_fastpath::propagation::has_span(&extract_amqp(&table)));
    }
}
