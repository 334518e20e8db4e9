//! The service's PostgreSQL pool.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use otel_fastpath::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE, extract, inject};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, PgPool, Row as _};
use tokio_util::sync::CancellationToken;

use crate::server::CLOSE_TIMEOUT;

/// Connection settings. `Debug` shows no credential.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`: a secret, it holds the password.
    pub url: SecretString,
    /// Upper bound of pooled connections.
    pub max_connections: u32,
}

impl DatabaseConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections: 10,
        }
    }
}

/// Connects, retrying every second until the database answers or `cancel` fires, and records the
/// database name for `db.namespace` on spans.
pub async fn connect(
    config: &DatabaseConfig,
    cancel: &CancellationToken,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config
        .url
        .expose_secret()
        .parse::<PgConnectOptions>()?
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    if let Some(database) = options.get_database() {
        telemetry::db::set_namespace(database);
    }
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(err) if is_unavailable(&err) => {
                tracing::warn!(error = %err, "database unavailable, retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(err),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Closes `pool`, waiting at most [`CLOSE_TIMEOUT`] for the connections in use to be returned;
/// after that they are dropped, so shutdown never hangs on a connection held somewhere.
pub async fn close(pool: &PgPool) {
    if tokio::time::timeout(CLOSE_TIMEOUT, pool.close())
        .await
        .is_err()
    {
        tracing::warn!(
            in_use = (pool.size() as usize).saturating_sub(pool.num_idle()),
            timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
            "database pool not closed in time, connections dropped"
        );
    }
}

/// The current span's trace context, to bind as a JSONB `trace` column (see [`Carrier`]).
pub fn current_trace() -> sqlx::types::Json<Carrier> {
    sqlx::types::Json(opentelemetry::Context::map_current(to_carrier))
}

/// The trace context stored in `row`'s `column` by [`current_trace`]. A missing, `NULL` or
/// malformed value is an empty context: a stored context can lose its trace, never its row.
pub fn stored_trace(row: &PgRow, column: &str) -> Carrier {
    row.try_get::<Option<sqlx::types::Json<Carrier>>, _>(column)
        .ok()
        .flatten()
        .map(|json| json.0)
        .unwrap_or_default()
}

/// A context stored with a row (outbox rows, jobs, an order's last context) so that the work
/// that picks the row up later continues, or links to, its trace: the three W3C fields, stored
/// as a JSON object such as `{"traceparent":"00-…","baggage":"order.id=…"}`. Fields that are
/// missing, or not text, read as absent; other keys are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Carrier {
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub traceparent: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub tracestate: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub baggage: Option<String>,
}

/// A carrier field that is not text (a number, `null`, an object) is as good as absent: a
/// stored context can only ever lose its trace, never fail the row it came with.
fn text_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => Some(text),
        _ => None,
    })
}

impl Carrier {
    fn field(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            BAGGAGE => self.baggage.as_deref(),
            _ => None,
        }
    }
}

impl Injector for Carrier {
    /// An empty field is not stored: it says nothing (the SDK's propagator writes an empty
    /// `tracestate`), and rows stay the same whichever propagator wrote them.
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        let field = match key {
            TRACEPARENT => &mut self.traceparent,
            TRACESTATE => &mut self.tracestate,
            BAGGAGE => &mut self.baggage,
            _ => return,
        };
        *field = Some(value);
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.field(key)
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE, BAGGAGE]
            .into_iter()
            .filter(|key| self.field(key).is_some())
            .collect()
    }
}

/// `cx` as a [`Carrier`] to store with a row.
pub fn to_carrier(cx: &Context) -> Carrier {
    let mut carrier = Carrier::default();
    inject(cx, &mut carrier);
    carrier
}

/// The context stored by [`to_carrier`].
pub fn from_carrier(carrier: &Carrier) -> Context {
    extract(carrier)
}

/// Whether an error means "try again later" (the server is down or restarting) rather than a
/// configuration mistake such as a wrong password or a missing database.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08 (connection exception); admin_shutdown, crash_shutdown,
            // cannot_connect_now (a server starting or stopping).
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether an error is a unique-constraint violation, optionally on a named constraint.
pub fn is_unique_violation(err: &sqlx::Error, constraint: Option<&str>) -> bool {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            constraint.is_none() || db.constraint() == constraint
        }
        _ => false,
    }
}

/// Runs `migrator` inside the PostgreSQL schema `schema` (created if missing), keeping that
/// component's migration history in the schema too, so components sharing one database never
/// see each other's migrations.
pub async fn migrate_schema(
    pool: &PgPool,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("SET search_path TO \"{schema}\""))
        .execute(&mut *conn)
        .await?;
    let result = migrator.run(&mut *conn).await;
    sqlx::query("RESET search_path").execute(&mut *conn).await?;
    result
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId};
    use otel_fastpath::propagation::has_span;
    use telemetry::propagation::{Activity, order_id, with_order};
    use uuid::Uuid;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_database_password_never_shows_in_debug_output() {
        let config = DatabaseConfig::new("postgres://hallmark:s3cr3t-pw@db:5432/shop");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    }

    #[test]
    fn a_stored_carrier_is_three_text_fields_and_tolerates_what_older_rows_hold() {
        let order = Uuid::now_v7();
        let remote = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        ));
        let cx = with_order(&remote, order, Activity::Progress);
        let stored = serde_json::to_value(to_carrier(&cx)).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({ "traceparent": PARENT, "baggage": format!("order.id={order}") })
        );
        let read = |json: serde_json::Value| serde_json::from_value::<Carrier>(json).unwrap();
        // As earlier versions stored it: a map with an empty trace state.
        let older =
            read(serde_json::json!({ "traceparent": PARENT, "tracestate": "", "baggage": "" }));
        assert_eq!(
            from_carrier(&older).span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
        let junk = read(serde_json::json!({ "traceparent": 7, "baggage": null, "other": "x" }));
        assert_eq!(junk, Carrier::default());
        assert!(!has_span(&from_carrier(&junk)));
        assert_eq!(order_id(&from_carrier(&to_carrier(&cx))), Some(order));
    }
}
