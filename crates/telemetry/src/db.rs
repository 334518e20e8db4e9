//! CLIENT spans for database calls, following the OpenTelemetry database conventions.
//!
//! sqlx emits no spans of its own, so every query a service makes goes through [`Traced::db`]:
//!
//! ```text
//! sqlx::query("INSERT INTO orders …").execute(&mut *tx).db("INSERT", "orders").await?;
//! ```
//!
//! The span is a child of whatever request or message caused the query, so it inherits the
//! order id from baggage. Query text is not recorded: it would be the same for every call and
//! bound values could hold personal data.

use std::fmt::Display;
use std::future::Future;
use std::sync::OnceLock;

use tracing::Instrument;
use tracing::field::Empty;

static NAMESPACE: OnceLock<String> = OnceLock::new();

/// Records the database name (`db.namespace`) for this process's spans. First call wins.
pub fn set_namespace(database: &str) {
    let _ = NAMESPACE.set(database.to_owned());
}

/// A CLIENT span for `operation` (`SELECT`, `INSERT`, …) on `collection` (the table).
pub fn span(operation: &'static str, collection: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db.client",
        otel.name = %format_args!("{operation} {collection}"),
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = "postgresql",
        db.namespace = NAMESPACE.get().map(String::as_str).unwrap_or_default(),
        db.operation.name = operation,
        db.collection.name = collection,
        db.query.summary = %format_args!("{operation} {collection}"),
        error.type = Empty,
    )
}

/// Runs a database future inside a [`span`] and marks the span failed when it errs.
pub trait Traced: Future<Output = Result<Self::Ok, Self::Err>> + Sized {
    type Ok;
    type Err: Display;

    fn db(
        self,
        operation: &'static str,
        collection: &'static str,
    ) -> impl Future<Output = Result<Self::Ok, Self::Err>> {
        let span = span(operation, collection);
        let recorder = span.clone();
        async move {
            let result = self.instrument(span).await;
            if let Err(err) = &result {
                recorder.record("otel.status_code", "ERROR");
                recorder.record("error.type", "database");
                tracing::warn!(parent: &recorder, error = %err, "database call failed");
            }
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
