//! The service's PostgreSQL pool.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use otel_fastpath::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE, extract, inject};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgTypeInfo, PgValueRef};
use sqlx::types::JsonValue;
use sqlx::{ConnectOptions, Decode, PgPool, Postgres, Type, ValueRef as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::server::CLOSE_TIMEOUT;

/// Connection settings. `Debug` shows no credential.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`: a secret, it holds the password. TLS is
    /// set the way libpq sets it, in the query: `sslmode` (`prefer` when absent: encrypted when
    /// the server offers it, unverified; `verify-full` checks the certificate and the host name
    /// against `sslrootcert`, a PEM file of the CA to trust) and, for client certificates,
    /// `sslcert` and `sslkey`. A certificate that does not verify is an error at once, never a
    /// retry or a plain-text fallback.
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

/// A read-only transaction that sees one snapshot of the database (`REPEATABLE READ`), for
/// reads that must agree with each other: an order's status and its history read by separate
/// statements would otherwise straddle a move committed between them (a status `created` with
/// a history that already holds `submitted`). Dropping it ends it.
pub async fn snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The current span's trace context, to bind as a JSONB `trace` column (see [`Carrier`]).
pub fn current_trace() -> sqlx::types::Json<Carrier> {
    sqlx::types::Json(opentelemetry::Context::map_current(to_carrier))
}

/// The trace context [`current_trace`] stored, as a typed row reads it back. A `NULL` or
/// malformed value is an empty context: a stored context can lose its trace, never its row. (It
/// is telemetry, the one stored value read leniently; everything the order *is* reads strictly,
/// see [`Corrupt`].)
#[derive(Debug, Clone, Default)]
pub struct StoredTrace(pub Carrier);

impl Type<Postgres> for StoredTrace {
    fn type_info() -> PgTypeInfo {
        <JsonValue as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <JsonValue as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for StoredTrace {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.is_null() {
            return Ok(Self::default());
        }
        let json = <JsonValue as Decode<Postgres>>::decode(value)?;
        Ok(Self(Carrier::deserialize(json).unwrap_or_default()))
    }
}

/// A stored value that does not read as what its column holds — a status no release knows, a
/// price that is not a quote. The order's row is wrong (edited by hand, or written by a newer
/// release), not the database: reading it fails with this error, naming the order, the column
/// and the value, and the value is never replaced by a default or skipped.
///
/// Its message is safe for logs and spans, not for API bodies: `ApiError` turns it into a 500
/// that shows none of it.
#[derive(Debug, thiserror::Error)]
#[error("order {order_id} holds a malformed {column}: {value:?}")]
pub struct Corrupt {
    pub order_id: Uuid,
    pub column: &'static str,
    /// The stored value as text (JSON for a JSON column), cut to [`Corrupt::MAX_VALUE_CHARS`].
    pub value: String,
    /// Why it does not read.
    #[source]
    pub source: BoxDynError,
}

impl Corrupt {
    /// Longest stored value quoted in the error.
    pub const MAX_VALUE_CHARS: usize = 200;

    pub fn new(
        order_id: Uuid,
        column: &'static str,
        value: impl std::fmt::Display,
        source: impl Into<BoxDynError>,
    ) -> Self {
        let mut value = value.to_string();
        if let Some((cut, _)) = value.char_indices().nth(Self::MAX_VALUE_CHARS) {
            value.truncate(cut);
            value.push('…');
        }
        Self {
            order_id,
            column,
            value,
            source: source.into(),
        }
    }
}

/// Parses the text `order_id`'s row holds in `column` (a status, a stage, a material).
pub fn parse_column<T>(order_id: Uuid, column: &'static str, text: &str) -> Result<T, Corrupt>
where
    T: std::str::FromStr,
    T::Err: Into<BoxDynError>,
{
    text.parse()
        .map_err(|err| Corrupt::new(order_id, column, text, err))
}

/// Reads the JSON `order_id`'s row holds in `column` (a price, a reason).
pub fn json_column<T: DeserializeOwned>(
    order_id: Uuid,
    column: &'static str,
    json: JsonValue,
) -> Result<T, Corrupt> {
    T::deserialize(&json).map_err(|err| Corrupt::new(order_id, column, &json, err))
}

/// Why rows could not be read: the database failed, or a row holds a value that does not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// For callers whose error type is the driver's (a trait's signature): the error sqlx itself
/// gives for a value that does not decode, with the [`Corrupt`] as its source.
impl From<Corrupt> for sqlx::Error {
    fn from(err: Corrupt) -> Self {
        Self::Decode(Box::new(err))
    }
}

impl From<ReadError> for sqlx::Error {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Database(err) => err,
            ReadError::Corrupt(err) => err.into(),
        }
    }
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
        // A certificate that does not verify arrives as invalid data: not a server away.
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
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
    use opentelemetry::trace::TraceContextExt as _;
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
        let remote = otel_fastpath::propagation::remote_parent(PARENT);
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

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Price {
        cents: i64,
    }

    #[test]
    fn a_malformed_stored_value_is_an_error_naming_the_order_the_column_and_the_value() {
        let order = Uuid::now_v7();
        let err =
            parse_column::<std::net::Ipv4Addr>(order, "address", "not an address").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("order {order} holds a malformed address: \"not an address\"")
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the parse error is kept as its cause"
        );
        let err = json_column::<Price>(order, "price", serde_json_value(r#"{"cents":"12"}"#))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(r#"order {order} holds a malformed price: "{{\"cents\":\"12\"}}""#)
        );
        let price: Price =
            json_column(order, "price", serde_json_value(r#"{"cents":12}"#)).unwrap();
        assert_eq!(price, Price { cents: 12 });
    }

    #[test]
    fn a_long_malformed_value_is_quoted_cut_short() {
        let long = "x".repeat(1000);
        let err = Corrupt::new(Uuid::nil(), "status", &long, "unknown status");
        assert_eq!(err.value.chars().count(), Corrupt::MAX_VALUE_CHARS + 1);
        assert!(err.value.ends_with('…'));
    }

    fn serde_json_value(text: &str) -> JsonValue {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn a_stored_trace_that_is_null_or_malformed_reads_as_an_empty_context() {
        let database = testkit::database::TestDatabase::create("platform").await;
        let pool = database.connect().await;
        let read = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, StoredTrace>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .0
            }
        };
        let stored = read(r#"SELECT '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'::jsonb"#).await;
        assert_eq!(
            stored.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        for sql in [
            "SELECT NULL::jsonb",
            "SELECT '[1, 2]'::jsonb",
            r#"SELECT '"text"'::jsonb"#,
        ] {
            assert_eq!(read(sql).await, Carrier::default(), "{sql}");
        }
    }
}
