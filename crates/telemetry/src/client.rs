//! CLIENT spans made with the OpenTelemetry tracer directly rather than as `tracing` spans: the
//! calls a service makes to the database ([`crate::db`]) and to object storage. Such a span has
//! nothing under it, so a `tracing` span would only cost: the registry entry, the layers'
//! work when it starts, on every poll of the call and when it closes, and a copy of every
//! attribute into a string.
//!
//! A client span is a child of the current `tracing` span (the request or message that caused
//! the call), so it inherits the order id from baggage. Callers decide first whether they want
//! one, with `tracing::enabled!` at their call site, so that `RUST_LOG` still turns them on and
//! off by module as it would `tracing` spans.

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::attributes::semconv::{ERROR_TYPE, EXCEPTION_MESSAGE};

/// A client span: the SDK's span, ended by [`opentelemetry::trace::Span::end`] or on drop.
pub type ClientSpan = Span;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer client spans are made with; `init` installs it. Until then there are none.
pub(crate) fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// Starts a CLIENT span `name` with `attributes` under the current `tracing` span; `None`
/// without telemetry. The span ends when it is dropped, or at [`Span::end`].
pub fn start(name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) -> Option<Span> {
    let tracer = TRACER.get()?;
    let parent = tracing::Span::current().context();
    Some(
        tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent),
    )
}

/// Ends `span` after its call, failed when the call failed with `error`: status ERROR with the
/// error's message, `error.type = error_type`, and an `exception` event with the message.
pub fn end(span: Option<Span>, error_type: &'static str, error: Option<&dyn Display>) {
    let Some(mut span) = span else { return };
    if let Some(error) = error {
        let message = error.to_string();
        span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
        span.add_event(
            "exception",
            vec![KeyValue::new(EXCEPTION_MESSAGE, message.clone())],
        );
        span.set_status(Status::error(message));
    }
    span.end();
}
