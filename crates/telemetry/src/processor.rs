//! Copies the order id from W3C baggage onto every span as it starts, with what the span's work
//! does to the order (`order.activity`, [`crate::propagation::Activity`]).
//!
//! This is what lets order-watch and a trace UI find *every* span of an order, including the
//! database, storage and client spans that know nothing about orders: whoever starts work for an
//! order puts `order.id` into the context's baggage ([`crate::propagation::with_order`]) and
//! every span started beneath it carries the attribute.
//!
//! [`OrderBaggage`] wraps the processor that exports instead of standing beside it: the SDK
//! hands an ended span to a lone processor as it is, but to each of several processors as a
//! clone, which cost two copies of every span's attributes and events.

use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::Span as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::attributes::{ORDER_ACTIVITY, ORDER_ID};
use crate::propagation::{activity, order_entry};

/// Sets `order.id` from baggage and `order.activity` from the context on each span as it starts,
/// then passes every call on to `inner`.
#[derive(Debug)]
pub struct OrderBaggage<P> {
    inner: P,
}

impl<P: SpanProcessor> OrderBaggage<P> {
    pub fn new(inner: P) -> Self {
        Self { inner }
    }
}

impl<P: SpanProcessor> SpanProcessor for OrderBaggage<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some((_, id)) = order_entry(cx) {
            span.set_attribute(KeyValue::new(ORDER_ID, id));
            span.set_attribute(KeyValue::new(ORDER_ACTIVITY, activity(cx).as_str()));
        }
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor};
    use uuid::Uuid;

    use super::*;
    use crate::attributes::ORDER_ACTIVITY;
    use crate::propagation::{Activity, as_progress, with_order};
    use opentelemetry_sdk::trace::InMemorySpanExporter as Collected;

    #[test]
    fn spans_of_an_order_say_whether_their_work_moves_it_or_only_looks_at_it() {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(OrderBaggage::new(SimpleSpanProcessor::new(
                collected.clone(),
            )))
            .build();
        let tracer = provider.tracer("test");
        let order = Uuid::now_v7();
        let request = with_order(&Context::new(), order, Activity::Observation);
        let read = tracer.start_with_context("GET /api/orders/{order_id}", &request);
        let request = request.with_span(read);
        // A transition under the request moves the order, and so does what runs beneath it.
        let transition = as_progress(&request);
        let moved = tracer.start_with_context("order confirmed", &transition);
        let statement = tracer.start_with_context("UPDATE orders", &transition.with_span(moved));
        drop(statement);
        // A message's processing is a span whose parent says it is progress; the statements
        // under it find the mark through the context current while it runs.
        let process = with_order(&Context::new(), order, Activity::Progress);
        let process = process.with_span(
            tracer
                .span_builder("process")
                .with_kind(SpanKind::Consumer)
                .start_with_context(&tracer, &process),
        );
        {
            let _entered = process.clone().attach();
            let _ = Context::map_current(|cx| {
                tracer
                    .span_builder("INSERT inbox")
                    .with_kind(SpanKind::Client)
                    .start_with_context(&tracer, cx)
            });
        }
        process.span().end();
        request.span().end();
        let _ = tracer.start("housekeeping");
        provider.force_flush().unwrap();

        let activity = |name: &str| {
            let span = collected
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no span {name}"));
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == ORDER_ACTIVITY)
                .map(|kv| kv.value.as_str().into_owned())
        };
        assert_eq!(
            activity("GET /api/orders/{order_id}").as_deref(),
            Some("observation")
        );
        assert_eq!(activity("order confirmed").as_deref(), Some("progress"));
        assert_eq!(activity("UPDATE orders").as_deref(), Some("progress"));
        assert_eq!(activity("process").as_deref(), Some("progress"));
        assert_eq!(activity("INSERT inbox").as_deref(), Some("progress"));
        assert_eq!(activity("housekeeping"), None, "no order, no mark");
    }
}
