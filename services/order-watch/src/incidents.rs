//! Incidents: a stuck order opens one (the detector), its next span resolves it (the writer);
//! an order whose systems disagree past reconciliation's threshold opens one, their agreement
//! resolves it (the reconciler); and alerts Alertmanager sends become incidents too. An admin acknowledges an open incident
//! ("someone is on it") and closes one by hand; each is recorded with who and when.
//!
//! Exactly one open incident per stuck order, however many replicas run: the database enforces
//! it (a partial unique index), and the detector claims due orders with `SKIP LOCKED`. An
//! incident closed by hand while its condition persists is followed by a new one: for a stuck
//! order when its system of record confirms it still stuck at the next re-confirmation, for an
//! alert when Alertmanager sends it firing again.
//!
//! Notifications to the configured webhook use Alertmanager's webhook format, so any receiver
//! that takes Alertmanager's (chat bridges, paging tools) takes ours. They are written in the
//! transaction that opens or resolves the incident and sent with retries by whichever replica
//! claims them, so a crash between the two loses nothing. The webhook is the one in force when a
//! notification is written and sent ([`crate::runtime_config`]: a developer changes it at run
//! time); its URL may hold a credential and never appears in a log or an error kept.

use backon::{BackoffBuilder as _, ExponentialBuilder};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use telemetry::db::Traced;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::journey::OrderState;
use crate::runtime_config::LiveConfig;
use crate::webhook::WebhookUrl;

/// Whether and how incidents are announced.
#[derive(Debug, Clone)]
pub struct Announcer {
    /// order-watch's own address, for links in notifications.
    pub external_url: String,
    /// Notifications are written only while a webhook is configured.
    pub config: LiveConfig,
}

impl Announcer {
    fn enabled(&self) -> bool {
        self.config.get().webhook.is_some()
    }
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

/// The kinds of incident held open at most once per order (each by its own partial unique
/// index, which `ON CONFLICT` must name by its predicate).
#[derive(Clone, Copy)]
enum OpenKind {
    StuckOrder,
    Disagreement,
}

/// Opens an incident of `kind` for `order_id` unless one is open; its id when opened.
async fn open_one(
    tx: &mut PgConnection,
    kind: OpenKind,
    order_id: Uuid,
    stage: Option<&str>,
    status: Option<&str>,
    summary: &str,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let query = match kind {
        OpenKind::StuckOrder => {
            "INSERT INTO incidents (id, kind, order_id, stage, status, summary, opened_at) \
             VALUES ($1, 'stuck_order', $2, $3, $4, $5, $6) \
             ON CONFLICT (order_id) WHERE resolved_at IS NULL AND kind = 'stuck_order' DO NOTHING"
        }
        OpenKind::Disagreement => {
            "INSERT INTO incidents (id, kind, order_id, stage, status, summary, opened_at) \
             VALUES ($1, 'disagreement', $2, $3, $4, $5, $6) \
             ON CONFLICT (order_id) WHERE resolved_at IS NULL AND kind = 'disagreement' DO NOTHING"
        }
    };
    let id = Uuid::now_v7();
    let opened = sqlx::query(query)
        .bind(id)
        .bind(order_id)
        .bind(stage)
        .bind(status)
        .bind(summary)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok((opened == 1).then_some(id))
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
        let opened = open_one(
            tx,
            OpenKind::StuckOrder,
            order.order_id,
            Some(order.stage.as_str()),
            order.status.map(|s| s.as_str()),
            &stuck_summary(order),
            now,
        )
        .await?;
        if let Some(id) = opened {
            tracing::warn!(order_id = %order.order_id, stage = %order.stage, "order stuck, incident opened");
            alerts.push(alert(id, "firing", order, now, None, announcer));
        }
    }
    let opened = alerts.len() as u64;
    if announcer.enabled() && !alerts.is_empty() {
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
    if announcer.enabled() && !alerts.is_empty() {
        notify(tx, message("resolved", alerts, announcer)).await?;
    }
    Ok(())
}

/// An order whose holders disagree past the threshold (reconciliation), for its incident.
#[derive(Debug, Clone)]
pub struct Disagreeing {
    pub order_id: Uuid,
    /// The owner's status.
    pub status: Option<domain::OrderStatus>,
    pub since: DateTime<Utc>,
    /// The owner's status and each holder that disagrees, in words.
    pub summary: String,
    /// `crm-api:lagging` for each holder that disagrees.
    pub mismatches: Vec<String>,
}

impl Disagreeing {
    fn description(&self) -> String {
        format!(
            "the systems disagree on the order since {}: {}",
            self.since.to_rfc3339(),
            self.summary
        )
    }

    fn alert(
        &self,
        incident_id: Uuid,
        status: &str,
        starts_at: DateTime<Utc>,
        ends_at: Option<DateTime<Utc>>,
        announcer: &Announcer,
    ) -> Value {
        json!({
            "status": status,
            "labels": {
                "alertname": DISAGREEMENT_ALERT,
                "severity": "warning",
                "status": self.status.map_or("unknown", |s| s.as_str()),
                "order_id": self.order_id.to_string(),
                "mismatches": self.mismatches.join(","),
            },
            "annotations": {
                "summary": format!("the systems disagree on order {}", self.order_id),
                "description": self.description(),
            },
            "startsAt": starts_at.to_rfc3339(),
            "endsAt": ends_at.map_or("0001-01-01T00:00:00Z".to_owned(), |t| t.to_rfc3339()),
            "generatorURL": format!("{}/#{}", announcer.external_url, self.order_id),
            "fingerprint": incident_id.simple().to_string(),
        })
    }
}

/// The `alertname` of a disagreement's notifications.
pub const DISAGREEMENT_ALERT: &str = "OrderDisagreement";

/// The Alertmanager webhook message around disagreement `alerts`.
fn disagreement_message(status: &str, alerts: Vec<Value>, announcer: &Announcer) -> Value {
    let mut message = message(status, alerts, announcer);
    message["groupKey"] = json!(format!("{{}}:{{alertname=\"{DISAGREEMENT_ALERT}\"}}"));
    message["groupLabels"] = json!({"alertname": DISAGREEMENT_ALERT});
    message["commonLabels"] = json!({"alertname": DISAGREEMENT_ALERT});
    message
}

/// Opens an incident for each order whose holders disagree past the threshold, unless it has
/// one open (so a disagreement whose incident was closed by hand while it lasts gets a new one
/// when it is compared again). Returns how many were opened.
pub async fn open_for_disagreements(
    tx: &mut PgConnection,
    announcer: &Announcer,
    orders: &[Disagreeing],
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut alerts = Vec::new();
    for order in orders {
        let opened = open_one(
            tx,
            OpenKind::Disagreement,
            order.order_id,
            order.status.map(|s| s.stage().as_str()),
            order.status.map(|s| s.as_str()),
            &order.description(),
            now,
        )
        .await?;
        if let Some(id) = opened {
            tracing::warn!(order_id = %order.order_id, disagreement = %order.summary,
                "the systems disagree on an order past the threshold, incident opened");
            alerts.push(order.alert(id, "firing", now, None, announcer));
        }
    }
    let opened = alerts.len() as u64;
    if announcer.enabled() && !alerts.is_empty() {
        notify(tx, disagreement_message("firing", alerts, announcer)).await?;
    }
    Ok(opened)
}

/// Resolves the open disagreement incidents of orders whose holders agree again on `status`.
pub async fn resolve_agreed(
    tx: &mut PgConnection,
    announcer: &Announcer,
    orders: &[(Disagreeing, domain::OrderStatus)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut alerts = Vec::new();
    for (order, status) in orders {
        let resolution = format!("the systems agree again: all hold {status}");
        let resolved: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "UPDATE incidents SET resolved_at = $2, resolution = $3 \
             WHERE kind = 'disagreement' AND resolved_at IS NULL AND order_id = $1 \
             RETURNING id, opened_at",
        )
        .bind(order.order_id)
        .bind(now)
        .bind(&resolution)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, opened_at)) = resolved {
            tracing::info!(order_id = %order.order_id, resolution, "incident resolved");
            alerts.push(order.alert(id, "resolved", opened_at, Some(now), announcer));
        }
    }
    if announcer.enabled() && !alerts.is_empty() {
        notify(tx, disagreement_message("resolved", alerts, announcer)).await?;
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
    /// When someone said they are on it, and who.
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    /// When it closed: by itself (its order moved, Alertmanager resolved the alert) or by hand.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Why it closed.
    pub resolution: Option<String>,
    /// Who closed it by hand (none when it resolved by itself).
    pub closed_by: Option<String>,
    /// The partners' rates it tightened at Shop ([`crate::partner_limits`]).
    #[sqlx(skip)]
    pub partner_limits: Vec<crate::partner_limits::SwitchedLimit>,
}

/// The columns of [`Incident`].
const INCIDENT_COLUMNS: &str = "id, kind, order_id, fingerprint, stage, status, summary, labels, \
    opened_at, acknowledged_at, acknowledged_by, resolved_at, resolution, closed_by";

/// Incidents, newest first, with the partners' rates they tightened; only open ones when
/// `open_only`.
pub async fn list(
    pool: &PgPool,
    open_only: bool,
    limit: i64,
) -> Result<Vec<Incident>, sqlx::Error> {
    let mut incidents: Vec<Incident> = sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE (NOT $1 OR resolved_at IS NULL) \
         ORDER BY opened_at DESC LIMIT $2"
    ))
    .bind(open_only)
    .bind(limit)
    .fetch_all(pool)
    .db("SELECT incidents")
    .await?;
    let ids: Vec<Uuid> = incidents.iter().map(|i| i.id).collect();
    for limit in crate::partner_limits::of_incidents(pool, &ids).await? {
        if let Some(incident) = incidents.iter_mut().find(|i| i.id == limit.incident_id) {
            incident.partner_limits.push(limit);
        }
    }
    Ok(incidents)
}

/// The incidents of `order_id`, newest first.
pub async fn of_order(
    pool: &PgPool,
    order_id: Uuid,
    limit: i64,
) -> Result<Vec<Incident>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE order_id = $1 \
         ORDER BY opened_at DESC LIMIT $2"
    ))
    .bind(order_id)
    .bind(limit)
    .fetch_all(pool)
    .db("SELECT incidents")
    .await
}

/// Why an incident could not be acknowledged or closed.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("there is no incident {0}")]
    NotFound(Uuid),
    #[error("incident {id} is closed already ({resolution}, at {at})")]
    Closed {
        id: Uuid,
        resolution: String,
        at: DateTime<Utc>,
    },
    #[error("incident {id} was acknowledged already, by {by} at {at}")]
    Acknowledged {
        id: Uuid,
        by: String,
        at: DateTime<Utc>,
    },
    #[error("cannot change the incident")]
    Database(#[from] sqlx::Error),
}

/// Why an incident closed by hand closed.
pub const CLOSED_BY_HAND: &str = "closed by hand";

/// Locks incident `id` and checks that it is open.
async fn open_incident(tx: &mut PgConnection, id: Uuid) -> Result<Incident, TransitionError> {
    let incident: Incident = sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .db("SELECT incidents")
    .await?
    .ok_or(TransitionError::NotFound(id))?;
    if let Some(at) = incident.resolved_at {
        return Err(TransitionError::Closed {
            id,
            resolution: incident.resolution.unwrap_or_else(|| "resolved".to_owned()),
            at,
        });
    }
    Ok(incident)
}

/// Records that `who` is on incident `id` (open, not acknowledged yet) at `now`.
pub async fn acknowledge(
    pool: &PgPool,
    id: Uuid,
    who: &str,
    now: DateTime<Utc>,
) -> Result<Incident, TransitionError> {
    let mut tx = pool.begin().await?;
    let incident = open_incident(&mut tx, id).await?;
    if let (Some(at), Some(by)) = (incident.acknowledged_at, incident.acknowledged_by) {
        return Err(TransitionError::Acknowledged { id, by, at });
    }
    let incident: Incident = sqlx::query_as(&format!(
        "UPDATE incidents SET acknowledged_at = $2, acknowledged_by = $3 WHERE id = $1 \
         RETURNING {INCIDENT_COLUMNS}"
    ))
    .bind(id)
    .bind(now)
    .bind(who)
    .fetch_one(&mut *tx)
    .db("UPDATE incidents")
    .await?;
    tx.commit().await?;
    Ok(incident)
}

/// Closes incident `id` (open) by hand, as `who` at `now`. A stuck order's incident is
/// announced resolved, as one that resolved by itself would be; the order stays stuck until it
/// moves, and a new incident opens if its system of record confirms it still stuck at the next
/// re-confirmation.
pub async fn close(
    pool: &PgPool,
    announcer: &Announcer,
    id: Uuid,
    who: &str,
    now: DateTime<Utc>,
) -> Result<Incident, TransitionError> {
    let mut tx = pool.begin().await?;
    open_incident(&mut tx, id).await?;
    let incident: Incident = sqlx::query_as(&format!(
        "UPDATE incidents SET resolved_at = $2, resolution = $3, closed_by = $4 WHERE id = $1 \
         RETURNING {INCIDENT_COLUMNS}"
    ))
    .bind(id)
    .bind(now)
    .bind(CLOSED_BY_HAND)
    .bind(who)
    .fetch_one(&mut *tx)
    .db("UPDATE incidents")
    .await?;
    if incident.kind == "stuck_order"
        && announcer.enabled()
        && let Some(order_id) = incident.order_id
    {
        match crate::store::lock_orders(&mut tx, &[order_id]).await {
            Ok(mut orders) => {
                if let Some(order) = orders.remove(&order_id) {
                    let alert = alert(
                        id,
                        "resolved",
                        &order,
                        incident.opened_at,
                        Some(now),
                        announcer,
                    );
                    notify(&mut tx, message("resolved", vec![alert], announcer)).await?;
                }
            }
            Err(platform::db::ReadError::Database(err)) => return Err(err.into()),
            Err(platform::db::ReadError::Corrupt(err)) => {
                tracing::error!(order_id = %order_id, error = &err as &dyn std::error::Error,
                    "the closed incident's order does not read; its resolution is not announced");
            }
        }
    }
    tx.commit().await?;
    tracing::info!(incident = %id, by = %who, "incident closed by hand");
    Ok(incident)
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

/// Sends due notifications to the webhook in force until cancelled. While none is configured,
/// nothing is sent (and nothing new is written); notifications still pending when it was cleared
/// go to the next one configured.
pub async fn send_notifications(
    pool: PgPool,
    config: LiveConfig,
    clock: Clock,
    cancel: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a plain HTTP client builds");
    while !cancel.is_cancelled() {
        if let Some(webhook) = config.get().webhook.clone() {
            match send_due(&pool, &client, &webhook, &clock).await {
                Ok(sent) if sent > 0 => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "cannot read pending notifications"),
            }
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
    /// The error without the URL it names (which may hold a credential).
    #[error(transparent)]
    Unreachable(reqwest::Error),
    #[error("the webhook answered {0}")]
    Refused(reqwest::StatusCode),
}

async fn send_due(
    pool: &PgPool,
    client: &reqwest::Client,
    webhook: &WebhookUrl,
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
            .post(webhook.expose())
            .headers(platform::http::outgoing_headers())
            .json(&row.payload)
            .send()
            .await
            .map_err(|err| Undelivered::Unreachable(err.without_url()))
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
                tracing::warn!(error = %error, webhook = webhook.shown(), attempt = attempts + 1,
                    "webhook notification failed, retrying later");
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
