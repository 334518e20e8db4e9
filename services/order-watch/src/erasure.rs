//! Erasing an order's trace data on request (a customer's right to erasure), by an admin.
//!
//! One transaction removes everything order-watch holds of the order: its spans, its journey
//! (the `orders` row: status, stage, deadline, confirmation; and with it the ids it is found by,
//! `order_identities`), its telemetry gaps, what reconciliation last compared of it
//! (`reconcile_orders`), and its alerts in the webhook notifications (a notification left
//! without any alert goes). Its incidents stay
//! as the operational record they are, without the order: their order id, the order's labels and
//! the summary (which quotes the journey) are removed, and an open one is resolved. The erasure
//! itself is audited in `erasures`: who, when, which order and how many rows went — nothing of
//! the order's data.
//!
//! The order's row is locked first, so a batch of its spans being written waits and is either
//! erased with the rest or comes after: then, like any later span of the order, it begins a new
//! journey if it is progress (and is counted and dropped if it only reads the order, as for an
//! order never seen). Nothing else keeps the data: order-watch's own log lines name order ids
//! (kept as long as the logs are), and the trace store (Jaeger) has its own retention.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use telemetry::db::Traced;
use uuid::Uuid;

/// What an erasure removed, as audited.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Erasure {
    pub id: i64,
    pub order_id: Uuid,
    pub erased_at: DateTime<Utc>,
    pub erased_by: String,
    /// Spans deleted.
    pub spans: i64,
    /// Telemetry gaps deleted.
    pub telemetry_gaps: i64,
    /// Incidents that lost their link to the order (resolved if they were open).
    pub incidents: i64,
    /// Webhook notifications the order's alerts were taken out of.
    pub notifications: i64,
}

/// Why the incidents of an erased order closed, and what they say instead of their summary.
pub const ERASED: &str = "the order's trace data was erased on request";

/// Erases order `order_id`'s trace data as `who` at `now`. `None` when order-watch holds no
/// journey of it (never seen progressing, or erased already).
pub async fn erase(
    pool: &PgPool,
    order_id: Uuid,
    who: &str,
    now: DateTime<Utc>,
) -> Result<Option<Erasure>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM orders WHERE order_id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .db("SELECT orders")
            .await?;
    if found.is_none() {
        return Ok(None);
    }
    let spans = sqlx::query("DELETE FROM spans WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .db("DELETE spans")
        .await?
        .rows_affected();
    let telemetry_gaps = sqlx::query("DELETE FROM telemetry_gaps WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .db("DELETE telemetry_gaps")
        .await?
        .rows_affected();
    let incidents = sqlx::query(
        "UPDATE incidents SET order_id = NULL, summary = $2, labels = labels - 'order_id', \
             resolution = COALESCE(resolution, $2), resolved_at = COALESCE(resolved_at, $3) \
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(ERASED)
    .bind(now)
    .execute(&mut *tx)
    .db("UPDATE incidents")
    .await?
    .rows_affected();
    // The order's alerts out of every notification that carries one (its labels name it).
    let notifications = sqlx::query(
        "UPDATE notifications SET payload = jsonb_set(payload, '{alerts}', \
             (SELECT COALESCE(jsonb_agg(a), '[]'::jsonb) FROM jsonb_array_elements(payload -> 'alerts') a \
              WHERE a -> 'labels' ->> 'order_id' IS DISTINCT FROM $1::text)) \
         WHERE payload -> 'alerts' @> jsonb_build_array(jsonb_build_object('labels', \
             jsonb_build_object('order_id', $1::text)))",
    )
    .bind(order_id.to_string())
    .execute(&mut *tx)
    .db("UPDATE notifications")
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM notifications WHERE payload -> 'alerts' = '[]'::jsonb")
        .execute(&mut *tx)
        .db("DELETE notifications")
        .await?;
    sqlx::query("DELETE FROM orders WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .db("DELETE orders")
        .await?;
    // What reconciliation last compared (the systems' statuses): tracked again only if a system
    // changes the order later.
    sqlx::query("DELETE FROM reconcile_orders WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .db("DELETE reconcile_orders")
        .await?;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let erasure: Erasure = sqlx::query_as(
        "INSERT INTO erasures (order_id, erased_at, erased_by, spans, telemetry_gaps, incidents, \
             notifications) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         RETURNING id, order_id, erased_at, erased_by, spans, telemetry_gaps, incidents, notifications",
    )
    .bind(order_id)
    .bind(now)
    .bind(who)
    .bind(count(spans))
    .bind(count(telemetry_gaps))
    .bind(count(incidents))
    .bind(count(notifications))
    .fetch_one(&mut *tx)
    .db("INSERT erasures")
    .await?;
    tx.commit().await?;
    Ok(Some(erasure))
}

/// The erasures made, newest first.
pub async fn erasures(pool: &PgPool, limit: i64) -> Result<Vec<Erasure>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id, erased_at, erased_by, spans, telemetry_gaps, incidents, \
             notifications FROM erasures ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .db("SELECT erasures")
    .await
}
