//! CLIENT spans for database calls, following the OpenTelemetry database conventions.
//!
//! sqlx emits no spans of its own, so every query a service makes goes through [`Traced::db`]:
//!
//! ```text
//! sqlx::query("INSERT INTO orders …").execute(&mut *tx).db("INSERT orders").await?;
//! ```
//!
//! The argument is the query summary of the database conventions, `"{operation} {table}"`, as a
//! literal: it names the span as it is, and its two words become `db.operation.name` and
//! `db.collection.name` without formatting anything on the request path.
//!
//! The span is a child of whatever request or message caused the query (the current span, see
//! [`crate::spans`]), so it inherits the order id from baggage. Query text is not recorded: it
//! would be the same for every call and bound values could hold personal data.
//!
//! Database spans are most of an order's spans (nine of Shop's fifteen) and have nothing under
//! them, so they are [`crate::spans::client`] spans, made with the OpenTelemetry tracer directly: the attributes are
//! literals that need no copy, and no `tracing` layer works on each poll of the query. What
//! `RUST_LOG` says still holds: they are made when an INFO span of this module would be enabled.
//! A failed call logs a warning under the caller's span and marks the database span as failed,
//! with an `exception` event.

use std::fmt::Display;
use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::{KeyValue, StringValue};
use opentelemetry_sdk::trace::Span;

use crate::attributes::semconv::{
    DB_COLLECTION_NAME, DB_NAMESPACE, DB_OPERATION_NAME, DB_QUERY_SUMMARY, DB_SYSTEM_NAME,
};
use crate::spans;

static NAMESPACE: OnceLock<StringValue> = OnceLock::new();

/// Records the database name (`db.namespace`) for this process's spans. First call wins.
pub fn set_namespace(database: &str) {
    let _ = NAMESPACE.set(StringValue::from(std::sync::Arc::<str>::from(database)));
}

/// Starts a CLIENT span for `summary`, `"{operation} {table}"` (`"INSERT orders"`), under the
/// current span; `None` without telemetry or when `RUST_LOG` disables such spans.
pub fn span(summary: &'static str) -> Option<Span> {
    if !crate::spans_enabled!() {
        return None;
    }
    let (operation, collection) = summary.split_once(' ').unwrap_or((summary, ""));
    let mut attributes = Vec::with_capacity(7);
    attributes.extend([
        KeyValue::new(DB_SYSTEM_NAME, "postgresql"),
        KeyValue::new(DB_OPERATION_NAME, operation),
        KeyValue::new(DB_COLLECTION_NAME, collection),
        KeyValue::new(DB_QUERY_SUMMARY, summary),
    ]);
    if let Some(namespace) = NAMESPACE.get() {
        attributes.push(KeyValue::new(DB_NAMESPACE, namespace.clone()));
    }
    spans::client(summary, attributes)
}

/// Runs a database future inside a [`span`] and marks the span failed when it errs.
pub trait Traced: Future<Output = Result<Self::Ok, Self::Err>> + Sized {
    type Ok;
    type Err: Display;

    fn db(self, summary: &'static str) -> impl Future<Output = Result<Self::Ok, Self::Err>> {
        let span = span(summary);
        async move {
            let result = self.await;
            let error = result.as_ref().err();
            if let Some(err) = error {
                tracing::warn!(error = %err, query = summary, "database call failed");
            }
            spans::end(span, "database", error.map(|e| e as &dyn Display));
            result
        }
    }
}

impl<F, T, E> Traced for F
where
    F: Future<Output = Result<T, E>>,
    E: Display,
{
    type Ok = T;
    type Err = E;
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, TracerProvider as _};
    use opentelemetry::{Context, Value};
    use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor, SpanData};
    use uuid::Uuid;

    use super::*;
    use crate::attributes::ORDER_ID;
    use crate::attributes::semconv::{ERROR_TYPE, EXCEPTION_MESSAGE};
    use crate::mask::Masker;
    use crate::processor::OrderBaggage;
    use crate::propagation::{Activity, with_order};
    use opentelemetry_sdk::trace::InMemorySpanExporter as Collected;

    fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_query_is_a_client_span_under_its_callers_span_and_a_failed_one_says_why() {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(OrderBaggage::new(SimpleSpanProcessor::new(
                collected.clone(),
            )))
            .build();
        spans::install(provider.tracer("test"));
        set_namespace("shop");
        let dispatch = otel_fastpath::logging::subscriber(
            otel_fastpath::logging::log_filter("info", "info"),
            "test",
            Masker::default(),
            None,
            std::io::sink,
        );
        let order = Uuid::now_v7();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let caller = tracing::dispatcher::with_default(&dispatch, || {
            let request = spans::child(
                "request",
                SpanKind::Server,
                Vec::new(),
                &with_order(&Context::new(), order, Activity::Progress),
            );
            runtime.block_on(spans::under(request.as_ref(), async {
                let _ = async { Ok::<_, String>(1) }.db("SELECT orders").await;
                let _ = async { Err::<(), _>("deadlock detected".to_owned()) }
                    .db("UPDATE orders")
                    .await;
            }));
            spans::end_in(request.as_ref());
            request.unwrap().span().span_context().span_id()
        });
        let spans = collected.get_finished_spans().unwrap();
        let find = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
        };

        let select = find("SELECT orders");
        assert_eq!(select.span_kind, SpanKind::Client);
        assert_eq!(select.parent_span_id, caller);
        assert_eq!(select.status, Status::Unset);
        for (key, value) in [
            (DB_SYSTEM_NAME, "postgresql"),
            (DB_NAMESPACE, "shop"),
            (DB_OPERATION_NAME, "SELECT"),
            (DB_COLLECTION_NAME, "orders"),
            (DB_QUERY_SUMMARY, "SELECT orders"),
            (ORDER_ID, order.to_string().as_str()),
        ] {
            assert_eq!(
                attribute(select, key).map(Value::as_str).as_deref(),
                Some(value),
                "{key}"
            );
        }

        let update = find("UPDATE orders");
        assert_eq!(update.parent_span_id, caller);
        assert_eq!(update.status, Status::error("deadlock detected"));
        assert_eq!(
            attribute(update, ERROR_TYPE).map(Value::as_str).as_deref(),
            Some("database")
        );
        let exception = &update.events.events[0];
        assert_eq!(exception.name, "exception");
        assert_eq!(exception.attributes[0].key.as_str(), EXCEPTION_MESSAGE);
        assert_eq!(exception.attributes[0].value.as_str(), "deadlock detected");
    }
}
