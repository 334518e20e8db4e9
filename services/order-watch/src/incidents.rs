//! Incidents: a stuck order opens one (the detector), its next span resolves it (the writer),
//! and alerts Alertmanager sends become incidents too.
//!
//! Exactly one open incident per stuck order, however many replicas run: the database enforces
//! it (a partial unique index), and the detector claims due orders with `SKIP LOCKED`.
//! Notifications to the configured webhook use Alertmanager's webhook format, so any receiver
//! that takes Alertmanager's (chat bridges, paging tools) takes ours. They are written in the
//! transaction that opens or resolves the incident and sent with retries by whichever replica
//! claims them, so a crash between the two loses nothing.

use backon::{BackoffBuilder as _, ExponentialBuilder};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::journey::OrderState;

/// Whether and how incidents are announced.
#[derive(Debug, Clone)]
pub struct Announcer {
    /// Notifications are written only when a webhook is configured.
    pub enabled: bool,
    /// order-watch's own address, for links in notifications.
    pub external_url: String,
}

/// Why an incident closed when its order made progress again.
pub const MOVING_AGAIN: &str = "the order is moving again";

/// What an incident of a stuck order says: where it stopped, since when, and how sure that is.
fn stuck_summary(order: &OrderState) -> String {
    let mut summary = format!(
        "no progress in {} since {} (last: {} in {})",
        order.stage,
        order.last_progress.to_rfc3339(),
        order.last_span,
        order.last_service
    );
    if let Some(confirmation) = &order.confirmation {
        summary.push_str("; ");
        summary.push_str(confirmation);
    }
    summary
}

fn alert(
    incident_id: Uuid,
    status: &str,
    order: &OrderState,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
    announcer: &Announcer,
) -> Value {
    json!({
        "status": status,
        "labels": {
            "alertname": "OrderStuck",
            "severity": "warning",
            "stage": order.stage.as_str(),
            "status": order.status.map(|s| s.as_str()).unwrap_or("unknown"),
            "order_id": order.order_id.to_string(),
            "confirmation": order.stuck_confirmation.map_or("none", |c| c.as_str()),
        },
        "annotations": {
            "summary": format!("order {} is stuck in {}", order.order_id, order.stage),
            "description": stuck_summary(order),
        },
        "startsAt": starts_at.to_rfc3339(),
        "endsAt": ends_at.map_or("0001-01-01T00:00:00Z".to_owned(), |t| t.to_rfc3339()),
        "generatorURL": format!("{}/#{}", announcer.external_url, order.order_id),
        "fingerprint": incident_id.simple().to_string(),
    })
}

/// The Alertmanager webhook message around `alerts`.
fn message(status: &str, alerts: Vec<Value>, announcer: &Announcer) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"OrderStuck\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "order-watch",
        "groupLabels": {"alertname": "OrderStuck"},
        "commonLabels": {"alertname": "OrderStuck"},
        "commonAnnotations": {},
        "externalURL": announcer.external_url,
        "alerts": alerts,
    })
}

async fn notify(tx: &mut PgConnection, payload: Value) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO notifications (payload) VALUES ($1)")
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Opens an incident for each newly stuck order (skipping any that already has one open); its
/// summary says whether the order's system of record confirmed it. Returns how many were opened.
pub async fn open_for_stuck(
    tx: &mut PgConnection,
    announcer: &Announcer,
    orders: &[OrderState],
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut alerts = Vec::new();
    for order in orders {
        let id = Uuid::now_v7();
        let opened = sqlx::query(
            "INSERT INTO incidents (id, kind, order_id, stage, status, summary, opened_at) \
             VALUES ($1, 'stuck_order', $2, $3, $4, $5, $6) \
             ON CONFLICT (order_id) WHERE resolved_at IS NULL AND kind = 'stuck_order' DO NOTHING",
        )
        .bind(id)
        .bind(order.order_id)
        .bind(order.stage.as_str())
        .bind(order.status.map(|s| s.as_str()))
        .bind(stuck_summary(order))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if opened == 1 {
            tracing::warn!(order_id = %order.order_id, stage = %order.stage, "order stuck, incident opened");
            alerts.push(alert(id, "firing", order, now, None, announcer));
        }
    }
    let opened = alerts.len() as u64;
    if announcer.enabled && !alerts.is_empty() {
        notify(tx, message("firing", alerts, announcer)).await?;
    }
    Ok(opened)
}

/// Resolves the open incidents of orders that turned out not to be stuck, saying why
/// (`resolution`: [`MOVING_AGAIN`], or the telemetry gap their system of record revealed).
pub async fn resolve_recovered(
    tx: &mut PgConnection,
    announcer: &Announcer,
    orders: &[OrderState],
    resolution: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    /// An incident this resolved.
    #[derive(sqlx::FromRow)]
    struct Resolved {
        id: Uuid,
        order_id: Uuid,
        opened_at: DateTime<Utc>,
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let rows: Vec<Resolved> = sqlx::query_as(
        "UPDATE incidents SET resolved_at = $2, resolution = $3 \
         WHERE kind = 'stuck_order' AND resolved_at IS NULL AND order_id = ANY($1) \
         RETURNING id, order_id, opened_at",
    )
    .bind(&ids)
    .bind(now)
    .bind(resolution)
    .fetch_all(&mut *tx)
    .await?;
    let mut alerts = Vec::new();
    for row in rows {
        tracing::info!(order_id = %row.order_id, resolution, "incident resolved");
        if let Some(order) = orders.iter().find(|o| o.order_id == row.order_id) {
            alerts.push(alert(
                row.id,
                "resolved",
                order,
                row.opened_at,
                Some(now),
                announcer,
            ));
        }
    }
    if announcer.enabled && !alerts.is_empty() {
        notify(tx, message("resolved", alerts, announcer)).await?;
    }
    Ok(())
}

/// An incident as the API shows it, which is its row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Incident {
    pub id: Uuid,
    pub kind: String,
    pub order_id: Option<Uuid>,
    pub fingerprint: Option<String>,
    pub stage: Option<String>,
    pub status: Option<String>,
    pub summary: String,
    pub labels: Value,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Why it closed.
    pub resolution: Option<String>,
}

/// Incidents, newest first; only open ones when `open_only`.
pub async fn list(
    pool: &PgPool,
    open_only: bool,
    limit: i64,
) -> Result<Vec<Incident>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, order_id, fingerprint, stage, status, summary, labels, opened_at, \
             resolved_at, resolution \
         FROM incidents WHERE (NOT $1 OR resolved_at IS NULL) \
         ORDER BY opened_at DESC LIMIT $2",
    )
    .bind(open_only)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// An alert in an Alertmanager webhook message (only the fields order-watch uses).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncomingAlert {
    pub status: String,
    #[serde(default)]
    pub labels: serde_json::Map<String, Value>,
    #[serde(default)]
    pub annotations: serde_json::Map<String, Value>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub fingerprint: Option<String>,
}

/// An Alertmanager webhook message.
#[derive(Debug, Deserialize)]
pub struct AlertmanagerMessage {
    pub alerts: Vec<IncomingAlert>,
}

/// Records Alertmanager's alerts: a firing alert opens an incident (once per fingerprint), a
/// resolved one resolves it. Returns (opened, resolved).
pub async fn record_alerts(
    pool: &PgPool,
    message: &AlertmanagerMessage,
    now: DateTime<Utc>,
) -> Result<(u64, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (mut opened, mut resolved) = (0, 0);
    for alert in &message.alerts {
        let fingerprint = alert.fingerprint.clone().unwrap_or_else(|| {
            // Alertmanager always sends one; derive a stable one from the labels otherwise.
            let labels = serde_json::to_string(&alert.labels).unwrap_or_default();
            format!("labels:{labels}")
        });
        let name = alert
            .labels
            .get("alertname")
            .and_then(Value::as_str)
            .unwrap_or("alert");
        let summary = alert
            .annotations
            .get("summary")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_owned();
        if alert.status == "resolved" {
            resolved += sqlx::query(
                "UPDATE incidents SET resolved_at = $2, resolution = 'Alertmanager resolved the alert' \
                 WHERE kind = 'alert' AND fingerprint = $1 AND resolved_at IS NULL",
            )
            .bind(&fingerprint)
            .bind(alert.ends_at.unwrap_or(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        } else {
            let order_id = alert
                .labels
                .get("order_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            opened += sqlx::query(
                "INSERT INTO incidents (id, kind, order_id, fingerprint, summary, labels, opened_at) \
                 VALUES ($1, 'alert', $2, $3, $4, $5, $6) \
                 ON CONFLICT (fingerprint) WHERE resolved_at IS NULL AND kind = 'alert' DO NOTHING",
            )
            .bind(Uuid::now_v7())
            .bind(order_id)
            .bind(&fingerprint)
            .bind(&summary)
            .bind(Value::Object(alert.labels.clone()))
            .bind(alert.starts_at.unwrap_or(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
    }
    tx.commit().await?;
    Ok((opened, resolved))
}

/// Sends due notifications to the webhook until cancelled.
pub async fn send_notifications(
    pool: PgPool,
    url: String,
    clock: Clock,
    cancel: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a plain HTTP client builds");
    while !cancel.is_cancelled() {
        match send_due(&pool, &client, &url, &clock).await {
            Ok(sent) if sent > 0 => continue,
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read pending notifications"),
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// How a webhook notification that failed is tried again: after 1 s doubling up to 10 minutes,
/// for ever (a notification is never dropped).
const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_secs(1))
    .with_max_delay(Duration::from_secs(600))
    .without_max_times();

/// The wait before the next attempt of a notification tried `attempts` times.
fn backoff(attempts: i32) -> chrono::Duration {
    let delay = RETRY
        .build()
        .nth(usize::try_from(attempts).unwrap_or(0))
        .unwrap_or(Duration::from_secs(600));
    // Whole milliseconds: the back-off computes in floating point.
    chrono::Duration::milliseconds(i64::try_from(delay.as_millis()).unwrap_or(600_000))
}

/// A notification due for (another) attempt.
#[derive(sqlx::FromRow)]
struct DueNotification {
    id: i64,
    payload: Value,
    attempts: i32,
}

/// Why a notification did not reach the webhook; its message is kept as `last_error`.
#[derive(Debug, thiserror::Error)]
enum Undelivered {
    #[error(transparent)]
    Unreachable(reqwest::Error),
    #[error("the webhook answered {0}")]
    Refused(reqwest::StatusCode),
}

async fn send_due(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
    clock: &Clock,
) -> Result<usize, sqlx::Error> {
    let now = clock.now();
    let mut tx = pool.begin().await?;
    let rows: Vec<DueNotification> = sqlx::query_as(
        "SELECT id, payload, attempts FROM notifications \
         WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
         ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    for row in &rows {
        let (id, attempts) = (row.id, row.attempts);
        let outcome = client
            .post(url)
            .headers(platform::http::outgoing_headers())
            .json(&row.payload)
            .send()
            .await
            .map_err(Undelivered::Unreachable)
            .and_then(|r| {
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(Undelivered::Refused(r.status()))
                }
            });
        match outcome {
            Ok(()) => {
                sqlx::query("UPDATE notifications SET delivered_at = $2, attempts = attempts + 1 WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            Err(error) => {
                tracing::warn!(error = %error, attempt = attempts + 1, "webhook notification failed, retrying later");
                sqlx::query(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = $2, \
                         next_attempt_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(error.to_string())
                .bind(now + backoff(attempts))
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_notification_waits_one_second_doubling_up_to_ten_minutes() {
        let delays: Vec<i64> = [0, 1, 2, 9, 10, 30]
            .map(|a| backoff(a).num_milliseconds())
            .into();
        assert_eq!(delays, [1_000, 2_000, 4_000, 512_000, 600_000, 600_000]);
    }
}
