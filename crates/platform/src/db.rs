//! The service's PostgreSQL pool.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, PgPool, Row as _};
use telemetry::propagation::{Carrier, to_carrier};
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

/// The current span's trace context, to bind as a JSONB `trace` column (see
/// [`telemetry::propagation::Carrier`]).
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
    use super::*;

    #[test]
    fn the_database_password_never_shows_in_debug_output() {
        let config = DatabaseConfig::new("postgres://hallmark:s3cr3t-pw@db:5432/shop");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    }
}
