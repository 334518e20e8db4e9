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

/// A CLIENT span for `summary`, `"{operation} {table}"` (`"INSERT orders"`).
pub fn span(summary: &'static str) -> tracing::Span {
    let (operation, collection) = summary.split_once(' ').unwrap_or((summary, ""));
    tracing::info_span!(
        "db.client",
        otel.name = summary,
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = "postgresql",
        db.namespace = NAMESPACE.get().map(String::as_str).unwrap_or_default(),
        db.operation.name = operation,
        db.collection.name = collection,
        db.query.summary = summary,
        error.type = Empty,
    )
}

/// Runs a database future inside a [`span`] and marks the span failed when it errs.
pub trait Traced: Future<Output = Result<Self::Ok, Self::Err>> + Sized {
    type Ok;
    type Err: Display;

    fn db(self, summary: &'static str) -> impl Future<Output = Result<Self::Ok, Self::Err>> {
        let span = span(summary);
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
