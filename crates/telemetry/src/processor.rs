//! Copies the order id from W3C baggage onto every span as it starts.
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

use crate::attributes::ORDER_ID;
use crate::propagation::order_entry;

/// Sets `order.id` from baggage on each span as it starts, then passes every call on to `inner`.
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
