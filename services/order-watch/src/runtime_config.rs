//! Configuration a developer changes while order-watch runs: the stuck thresholds.
//!
//! The file and the environment give the thresholds order-watch starts with; a change made
//! through `PATCH /api/config` is stored in PostgreSQL, outlives restarts (a stored change wins
//! over the file), is audited (who, when, before and after) and applies at once: the deadlines
//! of open orders that are not stuck are planned again in the same transaction, and the
//! detector is woken to act on them. Orders already stuck stay stuck until they move or their
//! system of record says they have.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::Stage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use telemetry::db::Traced;

use crate::config::Thresholds;

/// The longest threshold a change may set.
pub const MAX_THRESHOLD: Duration = Duration::from_secs(365 * 24 * 3600);

/// The thresholds in force, shared by ingest, the detector and the API, replaced whole when a
/// change is applied.
#[derive(Clone)]
pub struct LiveThresholds(Arc<RwLock<Arc<Thresholds>>>);

impl LiveThresholds {
    pub fn new(thresholds: Thresholds) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(thresholds))))
    }

    pub fn get(&self) -> Arc<Thresholds> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, thresholds: Thresholds) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(thresholds);
    }
}

/// The stored form of [`Thresholds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredThresholds {
    default_seconds: u64,
    per_stage_seconds: BTreeMap<String, u64>,
}

impl From<&Thresholds> for StoredThresholds {
    fn from(thresholds: &Thresholds) -> Self {
        Self {
            default_seconds: thresholds.default.as_secs(),
            per_stage_seconds: thresholds
                .per_stage
                .iter()
                .map(|(stage, d)| (stage.as_str().to_owned(), d.as_secs()))
                .collect(),
        }
    }
}

impl TryFrom<StoredThresholds> for Thresholds {
    type Error = ChangeError;

    fn try_from(stored: StoredThresholds) -> Result<Self, ChangeError> {
        let per_stage = stored
            .per_stage_seconds
            .into_iter()
            .map(|(stage, seconds)| Ok((parse_stage(&stage)?, seconds_of(&stage, seconds)?)))
            .collect::<Result<_, ChangeError>>()?;
        Ok(Thresholds {
            default: seconds_of("default", stored.default_seconds)?,
            per_stage,
        })
    }
}

/// Why a change was refused; each is the caller's to correct.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error(
        "`{0}` is not a stage (stages: intake, registration, pricing_queue, pricing, customer_confirmation, production_queue, production, quality_check, shipping, delivery)"
    )]
    UnknownStage(String),
    #[error(
        "the threshold of `{0}` must be a whole number of seconds from 1 to 31536000 (365 days)"
    )]
    OutOfRange(String),
    #[error(
        "`{0}` cannot be changed here; changeable: default_stuck_after_seconds, stuck_after_seconds"
    )]
    NotChangeable(String),
    #[error("a change is a JSON object (a JSON merge patch of GET /api/config)")]
    NotAnObject,
}

fn parse_stage(name: &str) -> Result<Stage, ChangeError> {
    name.parse::<Stage>()
        .ok()
        .filter(|stage| *stage != Stage::Done)
        .ok_or_else(|| ChangeError::UnknownStage(name.to_owned()))
}

fn seconds_of(what: &str, seconds: u64) -> Result<Duration, ChangeError> {
    let duration = Duration::from_secs(seconds);
    if seconds == 0 || duration > MAX_THRESHOLD {
        return Err(ChangeError::OutOfRange(what.to_owned()));
    }
    Ok(duration)
}

/// `current` with the JSON merge patch (RFC 7396) `patch` applied, over the shape of
/// `GET /api/config`: `default_stuck_after_seconds` sets the default; in
/// `stuck_after_seconds`, a stage's number sets its own threshold and `null` removes it (the
/// stage follows the default again).
pub fn apply_patch(current: &Thresholds, patch: &Value) -> Result<Thresholds, ChangeError> {
    let patch = patch.as_object().ok_or(ChangeError::NotAnObject)?;
    let mut next = current.clone();
    for (key, value) in patch {
        match key.as_str() {
            "default_stuck_after_seconds" => {
                next.default = seconds_of("default", whole(key, value)?)?;
            }
            "stuck_after_seconds" => {
                let stages = value.as_object().ok_or(ChangeError::NotAnObject)?;
                for (name, value) in stages {
                    let stage = parse_stage(name)?;
                    if value.is_null() {
                        next.per_stage.remove(&stage);
                    } else {
                        next.per_stage
                            .insert(stage, seconds_of(name, whole(name, value)?)?);
                    }
                }
            }
            other => return Err(ChangeError::NotChangeable(other.to_owned())),
        }
    }
    Ok(next)
}

fn whole(what: &str, value: &Value) -> Result<u64, ChangeError> {
    value
        .as_u64()
        .ok_or_else(|| ChangeError::OutOfRange(what.to_owned()))
}

/// The stored thresholds, when a change was ever made.
pub async fn load(pool: &PgPool) -> anyhow::Result<Option<Thresholds>> {
    let stored: Option<sqlx::types::Json<StoredThresholds>> =
        sqlx::query_scalar("SELECT thresholds FROM runtime_config")
            .fetch_optional(pool)
            .db("SELECT runtime_config")
            .await?;
    stored
        .map(|json| Thresholds::try_from(json.0))
        .transpose()
        .map_err(|err| anyhow::anyhow!("the stored thresholds do not read: {err}"))
}

/// One audited change.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Change {
    pub id: i64,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
    pub before: Value,
    pub after: Value,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeFailure {
    /// The change itself is wrong: the caller's to correct.
    #[error(transparent)]
    Invalid(#[from] ChangeError),
    #[error("cannot store the change")]
    Database(#[from] sqlx::Error),
    /// What is stored does not read (never written so by order-watch).
    #[error("the stored thresholds do not read")]
    Corrupt(#[source] ChangeError),
}

/// Applies the merge patch `patch` (made by `who` at `now`) to the thresholds in force, stores
/// and audits the result, plans the deadlines of open orders again, and makes it the thresholds
/// `live` holds. Changes are serialised by a transaction lock, and each is applied to what the
/// last one stored (another replica's included), not to what this process happens to hold.
pub async fn change(
    pool: &PgPool,
    live: &LiveThresholds,
    patch: &Value,
    who: &str,
    now: DateTime<Utc>,
) -> Result<Change, ChangeFailure> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('order_watch.runtime_config'))")
        .execute(&mut *tx)
        .db("LOCK runtime_config")
        .await?;
    let stored: Option<sqlx::types::Json<StoredThresholds>> =
        sqlx::query_scalar("SELECT thresholds FROM runtime_config")
            .fetch_optional(&mut *tx)
            .db("SELECT runtime_config")
            .await?;
    let current = match stored {
        Some(json) => Thresholds::try_from(json.0).map_err(ChangeFailure::Corrupt)?,
        None => (*live.get()).clone(),
    };
    let next = apply_patch(&current, patch)?;
    let before = serde_json::to_value(StoredThresholds::from(&current)).expect("serializes");
    let after = serde_json::to_value(StoredThresholds::from(&next)).expect("serializes");
    sqlx::query(
        "INSERT INTO runtime_config (id, thresholds, updated_at, updated_by) VALUES (true, $1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET thresholds = $1, updated_at = $2, updated_by = $3",
    )
    .bind(&after)
    .bind(now)
    .bind(who)
    .execute(&mut *tx)
    .db("UPSERT runtime_config")
    .await?;
    let change: Change = sqlx::query_as(
        "INSERT INTO config_changes (changed_at, changed_by, before, after) VALUES ($1, $2, $3, $4) \
         RETURNING id, changed_at, changed_by, before, after",
    )
    .bind(now)
    .bind(who)
    .bind(&before)
    .bind(&after)
    .fetch_one(&mut *tx)
    .db("INSERT config_changes")
    .await?;
    // Every open order that is not stuck gets the deadline its stage has now: the rule of
    // `OrderState::moved` (last progress plus the stage's threshold), for all of them at once.
    sqlx::query(
        "UPDATE orders o SET deadline = planned.at, check_at = planned.at \
         FROM (SELECT order_id, last_progress + make_interval(secs => \
                   COALESCE(($1::jsonb -> 'per_stage_seconds' ->> stage)::bigint, \
                            ($1::jsonb ->> 'default_seconds')::bigint)) AS at \
               FROM orders WHERE NOT terminal AND stuck_since IS NULL) planned \
         WHERE o.order_id = planned.order_id",
    )
    .bind(&after)
    .execute(&mut *tx)
    .db("UPDATE orders")
    .await?;
    tx.commit().await?;
    live.set(next);
    Ok(change)
}

/// The changes made, newest first.
pub async fn changes(pool: &PgPool, limit: i64) -> Result<Vec<Change>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, changed_at, changed_by, before, after FROM config_changes \
         ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .db("SELECT config_changes")
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_merge_patch_sets_the_default_sets_a_stage_and_removes_a_stage() {
        let current = Thresholds::default();
        let next = apply_patch(
            &current,
            &json!({
                "default_stuck_after_seconds": 600,
                "stuck_after_seconds": { "pricing": 120, "shipping": null },
            }),
        )
        .unwrap();
        assert_eq!(next.default, Duration::from_secs(600));
        assert_eq!(next.for_stage(Stage::Pricing), Duration::from_secs(120));
        assert_eq!(next.for_stage(Stage::Shipping), Duration::from_secs(600));
        assert_eq!(
            next.for_stage(Stage::Production),
            current.for_stage(Stage::Production)
        );
        let stored = StoredThresholds::from(&next);
        assert_eq!(Thresholds::try_from(stored).unwrap(), next);
    }

    #[test]
    fn a_change_that_names_no_stage_or_no_sensible_duration_is_refused() {
        let current = Thresholds::default();
        let refused = |patch: Value| apply_patch(&current, &patch).unwrap_err();
        assert_eq!(
            refused(json!({ "stuck_after_seconds": { "lunch": 60 } })),
            ChangeError::UnknownStage("lunch".into())
        );
        assert_eq!(
            refused(json!({ "stuck_after_seconds": { "done": 60 } })),
            ChangeError::UnknownStage("done".into())
        );
        assert_eq!(
            refused(json!({ "default_stuck_after_seconds": 0 })),
            ChangeError::OutOfRange("default".into())
        );
        assert_eq!(
            refused(json!({ "stuck_after_seconds": { "pricing": -5 } })),
            ChangeError::OutOfRange("pricing".into())
        );
        assert_eq!(
            refused(json!({ "stuck_after_seconds": { "pricing": 40_000_000 } })),
            ChangeError::OutOfRange("pricing".into())
        );
        assert_eq!(
            refused(json!({ "retention_days": 3 })),
            ChangeError::NotChangeable("retention_days".into())
        );
        assert_eq!(refused(json!([1])), ChangeError::NotAnObject);
    }
}
