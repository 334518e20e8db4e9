//! The one way Hallmark code makes spans: with the OpenTelemetry tracer directly. `tracing` is
//! for log lines only; its spans are not exported.
//!
//! **The current span is the one of [`Context::current`].** A span made here is current while
//! the work it covers runs: a future run [`under`] the context [`child`] returned (its context is
//! attached on every poll), or synchronous work while [`enter`]'s guard lives. Work under it finds
//! it there: child spans, database and storage spans, log lines (their trace and order ids), and
//! the attributes code records on the span it runs under ([`record`], [`fail`]).
//!
//! Why not `tracing` spans: on the hot path of an order (the HTTP request, `order create`,
//! the outbox relay's publish spans, status transitions), a `tracing` span cost the registry
//! entry, every layer's work when it started, when it was entered and left on each poll of the
//! future it covered, and when it closed, and a copy of every attribute into a string. Attaching
//! a context on a poll is a push onto a thread-local stack.
//!
//! CLIENT spans ([`client`]: the calls a service makes to the database, [`crate::db`], and to
//! object storage) have nothing under them, so they are never made current at all.
//!
//! Callers ask [`spans_enabled!`](crate::spans_enabled) first, so that `RUST_LOG` still turns
//! these spans on and off by module as it would `tracing` spans.

use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::trace::{
    FutureExt as _, Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _,
    Tracer as _,
};
use opentelemetry::{Context, ContextGuard, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::attributes::semconv::{ERROR_TYPE, EXCEPTION_MESSAGE};

/// A client span: the SDK's span, ended by [`opentelemetry::trace::Span::end`] or on drop.
pub type ClientSpan = Span;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether the calling module wants spans: whether `RUST_LOG` enables INFO spans there, as it
/// would for a `tracing` span at the call site. A macro, so that the module it asks about is the
/// caller's.
///
/// Like `tracing`'s own span macros, it keeps a callsite whose interest the dispatcher sets once
/// per filter change: a target `RUST_LOG` enables for every dispatcher answers `true` without
/// asking the filter (`tracing::enabled!` asks it on every call, matching the target against
/// each directive), a disabled one `false`; only when dispatchers disagree is the current one
/// asked.
#[macro_export]
macro_rules! spans_enabled {
    () => {{
        use $crate::__tracing::callsite::{DefaultCallsite, Identifier};
        static META: $crate::__tracing::Metadata<'static> = $crate::__tracing::Metadata::new(
            "spans_enabled",
            ::core::module_path!(),
            $crate::__tracing::Level::INFO,
            ::core::option::Option::Some(::core::file!()),
            ::core::option::Option::Some(::core::line!()),
            ::core::option::Option::Some(::core::module_path!()),
            $crate::__tracing::field::FieldSet::new(&[], Identifier(&CALLSITE)),
            $crate::__tracing::metadata::Kind::SPAN,
        );
        static CALLSITE: DefaultCallsite = DefaultCallsite::new(&META);
        $crate::spans::enabled_at(&CALLSITE)
    }};
}

/// What [`spans_enabled!`](crate::spans_enabled) answers for its callsite.
#[doc(hidden)]
pub fn enabled_at(callsite: &'static tracing::callsite::DefaultCallsite) -> bool {
    use tracing::callsite::Callsite as _;
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return false;
    }
    let interest = callsite.interest();
    interest.is_always()
        || (!interest.is_never()
            && tracing::dispatcher::get_default(|dispatch| dispatch.enabled(callsite.metadata())))
}

/// The tracer spans are made with; `init` installs it. Until then there are none.
pub(crate) fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// Starts a CLIENT span `name` with `attributes` under the current span; `None` without
/// telemetry. The span ends when it is dropped, or at [`Span::end`].
pub fn client(name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) -> Option<Span> {
    let tracer = TRACER.get()?;
    Some(Context::map_current(|parent| {
        tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, parent)
    }))
}

/// Starts a span `name` of `kind` with `attributes` under `parent`, and returns the context that
/// holds it (with `parent`'s baggage), to run the work it covers [`under`] and to end it with
/// [`end_in`]; `None` without telemetry.
pub fn child(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    parent: &Context,
) -> Option<Context> {
    child_linked(name, kind, attributes, Vec::new(), parent)
}

/// As [`child`], with links to the spans of `links` (e.g. the one that published a message).
pub fn child_linked(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    links: Vec<SpanContext>,
    parent: &Context,
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .with_links(
            links
                .into_iter()
                .filter(SpanContext::is_valid)
                .map(Link::with_context)
                .collect(),
        )
        .start_with_context(tracer, parent);
    Some(parent.with_span(span))
}

/// Makes `cx` the current context until the guard is dropped, for synchronous work (and log
/// lines about a span's work after it ran); without one, nothing changes.
#[must_use = "the context is current only while the guard lives"]
pub fn enter(cx: Option<&Context>) -> Option<ContextGuard> {
    cx.map(|cx| cx.clone().attach())
}

/// Runs `future` with `cx` as the current context on every poll; without one, as it is.
pub async fn under<F: Future>(cx: Option<&Context>, future: F) -> F::Output {
    match cx {
        Some(cx) => future.with_context(cx.clone()).await,
        None => future.await,
    }
}

/// Ends the span [`child`] put into `cx`.
pub fn end_in(cx: Option<&Context>) {
    if let Some(cx) = cx {
        cx.span().end();
    }
}

/// Sets `attribute` on the current span.
pub fn record(attribute: KeyValue) {
    Context::map_current(|cx| cx.span().set_attribute(attribute));
}

/// Marks the span of `cx` failed: status ERROR with `message`, and `error.type = error_type`.
pub fn fail(cx: &Context, error_type: &str, message: impl Into<Cow<'static, str>>) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(ERROR_TYPE, error_type.to_owned()));
    span.set_status(Status::error(message));
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

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn spans_are_wanted_as_rust_log_says_for_the_calling_module() {
        let wanted = |directives: &str| {
            let subscriber = tracing_subscriber::registry()
                .with(otel_fastpath::logging::log_filter(directives, "info"));
            tracing::subscriber::with_default(subscriber, || {
                // Once as the callsite registers, once from its cached interest.
                let answers = [(); 2].map(|()| crate::spans_enabled!());
                assert_eq!(answers[0], answers[1], "{directives}");
                answers[0]
            })
        };
        assert!(wanted("info"));
        assert!(!wanted("warn"));
        // The module asked about is this one, where the macro was used, not `telemetry::spans`.
        assert!(!wanted("info,telemetry::spans::tests=warn"));
        assert!(wanted("warn,telemetry::spans::tests=info"));
    }
}
