//! Stuck detection: an open order whose deadline (last span + its stage's threshold) passed.
//!
//! The detector sleeps until the earliest deadline in the database (an index lookup), or until
//! the writer says new orders arrived, or at most [`Settings::detect_interval`]
//! (`crate::config::Settings`) so that deadlines set by other replicas are seen too. It then
//! claims every due order with `FOR UPDATE SKIP LOCKED`, marks it stuck and opens its incident
//! in the same transaction, so replicas never claim the same order twice. State lives in the
//! database only: a restart loses no deadline, and 1,000,000 open orders cost an index, not
//! memory.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::incidents::{self, Announcer};
use crate::metrics::Metrics;
use crate::store::OrderState;

/// Most orders claimed per transaction.
const CLAIM_BATCH: i64 = 1000;

pub struct Detector {
    pub pool: PgPool,
    pub clock: Clock,
    pub announcer: Announcer,
    pub metrics: Arc<Metrics>,
    /// Longest sleep between checks.
    pub interval: Duration,
    /// Woken by the writer when deadlines may have moved earlier.
    pub wake: Arc<Notify>,
}

impl Detector {
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            match self.detect_once().await {
                Ok(claimed) if claimed as i64 == CLAIM_BATCH => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "stuck detection failed, retrying"),
            }
            let now = self.clock.now();
            let latest = now + chrono::Duration::from_std(self.interval).unwrap_or_default();
            let wake_at = match self.next_deadline().await {
                Ok(Some(deadline)) => deadline.min(latest),
                Ok(None) | Err(_) => latest,
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = self.wake.notified() => {}
                _ = self.clock.sleep_until(wake_at) => {}
            }
        }
        tracing::info!("stuck detector stopped");
    }

    async fn next_deadline(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT min(deadline) FROM orders WHERE stuck_since IS NULL AND deadline IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Marks every order whose deadline has passed as stuck and opens its incident. Returns how
    /// many orders it claimed.
    pub async fn detect_once(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "WITH due AS ( \
                 SELECT order_id FROM orders \
                 WHERE stuck_since IS NULL AND deadline IS NOT NULL AND deadline <= $1 \
                 ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE orders o SET stuck_since = o.deadline, updated_at = $1 \
             FROM due WHERE o.order_id = due.order_id RETURNING o.*",
        )
        .bind(now)
        .bind(CLAIM_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let stuck: Vec<OrderState> = rows.iter().map(OrderState::from_row).collect();
        incidents::open_for_stuck(&mut tx, &self.announcer, &stuck, now).await?;
        tx.commit().await?;
        for order in &stuck {
            if let Some(deadline) = order.deadline {
                self.metrics.record_detection(order.stage, now - deadline);
            }
        }
        Ok(stuck.len())
    }
}
