//! Copies the order id from W3C baggage onto every span as it starts.
//!
//! This is what lets order-watch and a trace UI find *every* span of an order, including the
//! database, storage and client spans that know nothing about orders: whoever starts work for an
//! order puts `order.id` into the context's baggage ([`crate::propagation::with_order`]) and
//! every span started beneath it carries the attribute.

use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::Span as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::attributes::ORDER_ID;
use crate::propagation::order_id;

#[derive(Debug, Default)]
pub struct OrderBaggageProcessor;

impl SpanProcessor for OrderBaggageProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(id) = order_id(cx) {
            span.set_attribute(KeyValue::new(ORDER_ID, id.to_string()));
        }
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}
