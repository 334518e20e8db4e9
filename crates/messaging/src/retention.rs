//! Deletes what the outbox and inbox no longer need: published outbox rows after
//! `outbox_retention`, inbox keys after `inbox_retention` (see [`BrokerConfig`]). Every service
//! runs [`run`] next to its relay; with several replicas each deletes the same old rows, which is
//! harmless.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use telemetry::db::Traced;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;

/// How often the clean-up runs.
pub const INTERVAL: Duration = Duration::from_secs(600);

/// Rows deleted per statement, so no delete holds its locks for long.
const BATCH: i64 = 10_000;

/// What one clean-up deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub outbox: u64,
    pub inbox: u64,
}

/// Cleans up at start and then every [`INTERVAL`] until `cancel` fires. A failed round (the
/// database down) is logged and tried again at the next one.
pub async fn run(pool: PgPool, config: BrokerConfig, cancel: CancellationToken) {
    loop {
        match clean(&pool, config.outbox_retention, config.inbox_retention).await {
            Ok(cleaned) if cleaned != Cleaned::default() => {
                tracing::info!(
                    outbox = cleaned.outbox,
                    inbox = cleaned.inbox,
                    "old outbox and inbox rows deleted"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "outbox and inbox clean-up failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// Deletes published outbox rows older than `outbox_retention` and inbox keys older than
/// `inbox_retention`. Unpublished outbox rows are never deleted, however old.
pub async fn clean(
    pool: &PgPool,
    outbox_retention: Duration,
    inbox_retention: Duration,
) -> Result<Cleaned, sqlx::Error> {
    let outbox = delete_in_batches(
        pool,
        "DELETE FROM messaging.outbox WHERE id IN (SELECT id FROM messaging.outbox \
         WHERE published_at IS NOT NULL AND published_at < $1 LIMIT $2)",
        "DELETE outbox",
        outbox_retention,
    )
    .await?;
    let inbox = delete_in_batches(
        pool,
        "DELETE FROM messaging.inbox WHERE (consumer, message_id) IN \
         (SELECT consumer, message_id FROM messaging.inbox WHERE received_at < $1 LIMIT $2)",
        "DELETE inbox",
        inbox_retention,
    )
    .await?;
    Ok(Cleaned { outbox, inbox })
}

async fn delete_in_batches(
    pool: &PgPool,
    statement: &'static str,
    summary: &'static str,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let cutoff = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|age| Utc::now().checked_sub_signed(age))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(statement)
            .bind(cutoff)
            .bind(BATCH)
            .execute(pool)
            .db(summary)
            .await?
            .rows_affected();
        deleted += batch;
        if batch < BATCH as u64 {
            return Ok(deleted);
        }
    }
}
