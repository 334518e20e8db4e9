//! Deletes journeys (spans, telemetry gaps, the order) whose last span is older than the
//! retention period in force (an admin changes it at run time: the next clean-up, which a change
//! starts at once, uses the new one).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::runtime_config::LiveConfig;

/// Orders removed per transaction, so a large clean-up never holds long locks.
const BATCH: i64 = 500;
/// How often the clean-up runs.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Deletes orders (with their spans) last seen before `cutoff`; their open incidents are
/// resolved. Returns how many orders went.
pub async fn purge(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM orders WHERE last_seen < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(cutoff)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(total);
        }
        sqlx::query("DELETE FROM spans WHERE order_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE incidents SET resolved_at = now(), \
                 resolution = 'the journey was deleted after the retention period' \
             WHERE order_id = ANY($1) AND resolved_at IS NULL",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM telemetry_gaps WHERE order_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM orders WHERE order_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        total += ids.len() as u64;
    }
}

/// Purges once per [`EVERY`], and whenever the configuration changes, until cancelled.
pub async fn run(pool: PgPool, clock: Clock, config: LiveConfig, cancel: CancellationToken) {
    let mut changes = config.subscribe();
    while !cancel.is_cancelled() {
        let retention = changes.borrow_and_update().retention();
        let cutoff = clock.now() - chrono::Duration::from_std(retention).unwrap_or_default();
        match purge(&pool, cutoff).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(orders = count, "old journeys deleted"),
            Err(err) => tracing::warn!(error = %err, "journey clean-up failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(EVERY) => {}
            _ = changes.changed() => {}
        }
    }
}
