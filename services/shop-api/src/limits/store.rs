//! Overrides of partners' rates and their history, in Shop's database (shared by every replica).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use telemetry::db::Traced as _;
use uuid::Uuid;

use crate::orders::Rate;

/// Who set an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// order-watch, while an incident that the partner's orders feed is open.
    Incident,
    /// A developer or admin.
    Manual,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incident => "incident",
            Self::Manual => "manual",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "manual" {
            Self::Manual
        } else {
            Self::Incident
        }
    }
}

/// A partner's rate in force instead of the configured one, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Override {
    pub partner_id: String,
    #[serde(serialize_with = "display")]
    pub rate: Rate,
    pub source: Source,
    pub reason: String,
    pub incident_id: Option<Uuid>,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

fn display<S: serde::Serializer>(rate: &Rate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(rate)
}

#[derive(sqlx::FromRow)]
struct OverrideRow {
    partner_id: String,
    quota: i32,
    window_ms: i64,
    source: String,
    reason: String,
    incident_id: Option<Uuid>,
    set_by: String,
    set_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl From<OverrideRow> for Override {
    fn from(row: OverrideRow) -> Self {
        Self {
            partner_id: row.partner_id,
            rate: Rate {
                quota: row.quota.max(1) as u32,
                window: Duration::from_millis(row.window_ms.max(1) as u64),
            },
            source: Source::parse(&row.source),
            reason: row.reason,
            incident_id: row.incident_id,
            set_by: row.set_by,
            set_at: row.set_at,
            expires_at: row.expires_at,
        }
    }
}

const COLUMNS: &str =
    "partner_id, quota, window_ms, source, reason, incident_id, set_by, set_at, expires_at";

/// `partner`'s override, if one is in force.
pub async fn in_force(pool: &PgPool, partner: &str) -> Result<Option<Override>, sqlx::Error> {
    let row: Option<OverrideRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM partner_limit_overrides \
         WHERE partner_id = $1 AND expires_at > clock_timestamp()"
    ))
    .bind(partner)
    .fetch_optional(pool)
    .db("SELECT partner_limit_overrides")
    .await?;
    Ok(row.map(Override::from))
}

/// Every override in force, by partner.
pub async fn all_in_force(pool: &PgPool) -> Result<Vec<Override>, sqlx::Error> {
    let rows: Vec<OverrideRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM partner_limit_overrides \
         WHERE expires_at > clock_timestamp() ORDER BY partner_id"
    ))
    .fetch_all(pool)
    .db("SELECT partner_limit_overrides")
    .await?;
    Ok(rows.into_iter().map(Override::from).collect())
}

/// The rate of every override in force, by partner, for the metrics: a background sample that
/// belongs to no request, so it makes no span (a database span under nothing would be a trace of
/// its own every ten seconds).
pub async fn rates_in_force(pool: &PgPool) -> Result<Vec<(String, Rate)>, sqlx::Error> {
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT partner_id, quota, window_ms FROM partner_limit_overrides \
         WHERE expires_at > clock_timestamp()",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(partner, quota, window_ms)| {
            let rate = Rate {
                quota: quota.max(1) as u32,
                window: Duration::from_millis(window_ms.max(1) as u64),
            };
            (partner, rate)
        })
        .collect())
}

/// An override asked for.
pub struct NewOverride<'a> {
    pub partner: &'a str,
    pub rate: Rate,
    pub source: Source,
    pub reason: &'a str,
    pub incident_id: Option<Uuid>,
    pub by: &'a str,
    pub ttl: Duration,
}

/// What setting an override did.
pub enum SetOutcome {
    Set(Override),
    /// An incident's override does not replace one a person set, which stays in force.
    ManualInForce(Override),
}

/// Sets (or renews) an override; a change of rate, source or incident is recorded.
pub async fn set(pool: &PgPool, new: NewOverride<'_>) -> Result<SetOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let existing: Option<OverrideRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM partner_limit_overrides \
         WHERE partner_id = $1 AND expires_at > clock_timestamp() FOR UPDATE"
    ))
    .bind(new.partner)
    .fetch_optional(&mut *tx)
    .db("SELECT partner_limit_overrides")
    .await?;
    let existing = existing.map(Override::from);
    if new.source == Source::Incident
        && let Some(manual) = existing.as_ref().filter(|o| o.source == Source::Manual)
    {
        return Ok(SetOutcome::ManualInForce(manual.clone()));
    }
    let row: OverrideRow = sqlx::query_as(&format!(
        "INSERT INTO partner_limit_overrides ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp(), clock_timestamp() + $8) \
         ON CONFLICT (partner_id) DO UPDATE SET quota = $2, window_ms = $3, source = $4, \
             reason = $5, incident_id = $6, set_by = $7, set_at = clock_timestamp(), \
             expires_at = clock_timestamp() + $8 \
         RETURNING {COLUMNS}"
    ))
    .bind(new.partner)
    .bind(new.rate.quota as i32)
    .bind(new.rate.window.as_millis() as i64)
    .bind(new.source.as_str())
    .bind(new.reason)
    .bind(new.incident_id)
    .bind(new.by)
    .bind(new.ttl)
    .fetch_one(&mut *tx)
    .db("INSERT partner_limit_overrides")
    .await?;
    let set = Override::from(row);
    let changed = existing.as_ref().is_none_or(|old| {
        old.rate != set.rate || old.source != set.source || old.incident_id != set.incident_id
    });
    if changed {
        record(&mut tx, &set.partner_id, "set", Some(&set), new.by).await?;
    }
    tx.commit().await?;
    Ok(SetOutcome::Set(set))
}

/// Lifts `partner`'s override (only one of an incident's when `incident_only`): the one lifted.
pub async fn lift(
    pool: &PgPool,
    partner: &str,
    incident_only: bool,
    by: &str,
) -> Result<Option<Override>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<OverrideRow> = sqlx::query_as(&format!(
        "DELETE FROM partner_limit_overrides \
         WHERE partner_id = $1 AND (NOT $2 OR source = 'incident') RETURNING {COLUMNS}"
    ))
    .bind(partner)
    .bind(incident_only)
    .fetch_optional(&mut *tx)
    .db("DELETE partner_limit_overrides")
    .await?;
    let lifted = row.map(Override::from);
    if let Some(lifted) = &lifted {
        record(&mut tx, partner, "lift", Some(lifted), by).await?;
    }
    tx.commit().await?;
    Ok(lifted)
}

async fn record(
    tx: &mut sqlx::PgConnection,
    partner: &str,
    action: &str,
    what: Option<&Override>,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO partner_limit_changes \
             (at, partner_id, action, source, rate, reason, incident_id, made_by, expires_at) \
         VALUES (clock_timestamp(), $1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(partner)
    .bind(action)
    .bind(what.map_or("manual", |o| o.source.as_str()))
    .bind(what.map(|o| o.rate.to_string()))
    .bind(what.map(|o| o.reason.clone()))
    .bind(what.and_then(|o| o.incident_id))
    .bind(by)
    .bind(what.map(|o| o.expires_at))
    .execute(&mut *tx)
    .db("INSERT partner_limit_changes")
    .await?;
    Ok(())
}

/// A recorded change.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Change {
    pub at: DateTime<Utc>,
    pub partner_id: String,
    pub action: String,
    pub source: String,
    pub rate: Option<String>,
    pub reason: Option<String>,
    pub incident_id: Option<Uuid>,
    pub made_by: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The latest `limit` changes, newest first.
pub async fn changes(pool: &PgPool, limit: i64) -> Result<Vec<Change>, sqlx::Error> {
    sqlx::query_as(
        "SELECT at, partner_id, action, source, rate, reason, incident_id, made_by, expires_at \
         FROM partner_limit_changes ORDER BY at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .db("SELECT partner_limit_changes")
    .await
}
