//! Configuration changed while order-watch runs: the stuck thresholds, the masking rules, the
//! incident webhook (developer) and the retention (admin).
//!
//! The environment and the file give what order-watch starts with ([`Defaults`]); a change made
//! through `PATCH /api/config` (a JSON merge patch of what `GET /api/config` shows) is stored in
//! PostgreSQL, outlives restarts (a part changed at run time wins over the environment and the
//! file from then on; the parts never changed keep following them), is audited (who, when, and
//! each part it touched before and after, the webhook only in its masked form) and applies at
//! once:
//!
//! * on the replica that took it, before the answer is sent: the deadlines of open orders that
//!   are not stuck are planned again in the change's transaction, and the detector is woken;
//! * on every other replica within [`crate::Settings::config_reload_interval`]: each compares
//!   the stored `version` with the one it applied ([`follow`]) and loads a newer one.
//!
//! Changes are serialised by a transaction lock, and each is applied to what the last one
//! stored (another replica's included), not to what this process happens to hold. Orders
//! already stuck stay stuck until they move or their system of record says they have.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::Stage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use telemetry::db::Traced;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::Role;
use crate::config::Thresholds;
use crate::masking::{Masking, MaskingRules, RuleError};
use crate::webhook::{WebhookError, WebhookUrl};

/// The longest threshold a change may set.
pub const MAX_THRESHOLD: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest retention a change may set, in days (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3650;

/// What order-watch starts with before any change made at run time: the environment and the
/// configuration file.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub thresholds: Thresholds,
    pub webhook: Option<WebhookUrl>,
    pub retention_days: u32,
}

/// The configuration in force.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub thresholds: Thresholds,
    /// Applied to the attributes of every span stored from now on.
    pub masking: Masking,
    /// Where incident notifications go; none: incidents are not announced.
    pub webhook: Option<WebhookUrl>,
    /// Journeys whose last span is older are deleted, and spans that start earlier are refused.
    pub retention_days: u32,
    /// The stored version this is (0 while nothing was ever changed at run time).
    pub version: i64,
}

impl RuntimeConfig {
    fn from_defaults(defaults: &Defaults) -> Self {
        Self {
            thresholds: defaults.thresholds.clone(),
            masking: Masking::default(),
            webhook: defaults.webhook.clone(),
            retention_days: defaults.retention_days,
            version: 0,
        }
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 24 * 3600)
    }

    /// As `GET /api/config` shows it: every stage's threshold, the rules, the webhook masked.
    pub fn view(&self) -> Value {
        let per_stage: BTreeMap<&str, u64> = self
            .thresholds
            .all()
            .into_iter()
            .map(|(stage, d)| (stage.as_str(), d.as_secs()))
            .collect();
        json!({
            "stuck_after_seconds": per_stage,
            "default_stuck_after_seconds": self.thresholds.default.as_secs(),
            "masking": self.masking.rules(),
            "webhook": self.webhook.as_ref().map(WebhookUrl::shown),
            "retention_days": self.retention_days,
            "version": self.version,
        })
    }
}

/// The configuration in force, shared by ingest, the detector, the notifier, the retention and
/// the API, and replaced whole when a change is applied (here or, through [`follow`], on
/// another replica).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    current: Arc<watch::Sender<Arc<RuntimeConfig>>>,
    defaults: Arc<Defaults>,
}

impl LiveConfig {
    /// What `defaults` and the stored changes make.
    pub fn new(defaults: Defaults, stored: Option<Stored>) -> Result<Self, Unreadable> {
        let config = match &stored {
            Some(stored) => stored.in_force(&defaults)?,
            None => RuntimeConfig::from_defaults(&defaults),
        };
        Ok(Self {
            current: Arc::new(watch::Sender::new(Arc::new(config))),
            defaults: Arc::new(defaults),
        })
    }

    /// Only `defaults` (nothing stored), for tests and tools.
    pub fn fixed(defaults: Defaults) -> Self {
        Self::new(defaults, None).expect("nothing stored, nothing to read")
    }

    pub fn get(&self) -> Arc<RuntimeConfig> {
        self.current.borrow().clone()
    }

    /// Told of every configuration applied from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RuntimeConfig>> {
        self.current.subscribe()
    }

    /// Makes `config` the one in force unless a newer version already is. Returns whether it
    /// did.
    fn apply(&self, config: RuntimeConfig) -> bool {
        self.current.send_if_modified(|current| {
            let newer = config.version > current.version;
            if newer {
                *current = Arc::new(config);
            }
            newer
        })
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

/// The row of `runtime_config`: each part `NULL` until it is changed at run time.
#[derive(Debug, sqlx::FromRow)]
struct StoredRow {
    thresholds: Option<Json<StoredThresholds>>,
    masking: Option<Json<MaskingRules>>,
    webhook_set: bool,
    webhook_url: Option<String>,
    retention_days: Option<i32>,
    version: i64,
}

/// The parts changed at run time, as stored (`None`: never changed, the default holds).
#[derive(Debug, Clone, Default)]
pub struct Stored {
    thresholds: Option<Thresholds>,
    masking: Option<MaskingRules>,
    /// `Some(None)`: cleared at run time.
    webhook: Option<Option<WebhookUrl>>,
    retention_days: Option<u32>,
    version: i64,
}

/// A stored part that does not read (never written so by order-watch).
#[derive(Debug, thiserror::Error)]
#[error("the stored configuration's {part} does not read")]
pub struct Unreadable {
    pub part: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl Unreadable {
    fn of(part: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            part,
            source: source.into(),
        }
    }
}

impl TryFrom<StoredRow> for Stored {
    type Error = Unreadable;

    fn try_from(row: StoredRow) -> Result<Self, Unreadable> {
        Ok(Self {
            thresholds: row
                .thresholds
                .map(|json| Thresholds::try_from(json.0))
                .transpose()
                .map_err(|e| Unreadable::of("thresholds", e))?,
            masking: row.masking.map(|json| json.0),
            webhook: if row.webhook_set {
                Some(
                    row.webhook_url
                        .as_deref()
                        .map(WebhookUrl::parse)
                        .transpose()
                        .map_err(|e| Unreadable::of("webhook", e))?,
                )
            } else {
                None
            },
            retention_days: row
                .retention_days
                .map(|days| {
                    u32::try_from(days)
                        .ok()
                        .filter(|d| (1..=MAX_RETENTION_DAYS).contains(d))
                        .ok_or_else(|| Unreadable::of("retention_days", ChangeError::Retention))
                })
                .transpose()?,
            version: row.version,
        })
    }
}

impl Stored {
    /// The configuration these stored parts and `defaults` make together.
    fn in_force(&self, defaults: &Defaults) -> Result<RuntimeConfig, Unreadable> {
        Ok(RuntimeConfig {
            thresholds: self
                .thresholds
                .clone()
                .unwrap_or_else(|| defaults.thresholds.clone()),
            masking: match &self.masking {
                Some(rules) => rules.compile().map_err(|e| Unreadable::of("masking", e))?,
                None => Masking::default(),
            },
            webhook: match &self.webhook {
                Some(webhook) => webhook.clone(),
                None => defaults.webhook.clone(),
            },
            retention_days: self.retention_days.unwrap_or(defaults.retention_days),
            version: self.version,
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
        "`{0}` cannot be changed here; changeable: default_stuck_after_seconds, stuck_after_seconds, masking, webhook, retention_days"
    )]
    NotChangeable(String),
    #[error("a change is a JSON object (a JSON merge patch of GET /api/config)")]
    NotAnObject,
    #[error("stuck_after_seconds: an object of stage names and seconds")]
    StagesNotAnObject,
    #[error(transparent)]
    Masking(#[from] RuleError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("retention_days: a whole number of days from 1 to {MAX_RETENTION_DAYS}")]
    Retention,
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

fn whole(what: &str, value: &Value) -> Result<u64, ChangeError> {
    value
        .as_u64()
        .ok_or_else(|| ChangeError::OutOfRange(what.to_owned()))
}

/// The role a change needs: `admin` for one that touches the retention, `developer` otherwise.
pub fn needed_role(patch: &Value) -> Role {
    match patch.as_object() {
        Some(fields) if fields.contains_key("retention_days") => Role::Admin,
        _ => Role::Developer,
    }
}

/// What a merge patch changes: each part it touches, as it will be.
#[derive(Debug, Default)]
pub struct Patch {
    thresholds: Option<Thresholds>,
    masking: Option<MaskingRules>,
    webhook: Option<Option<WebhookUrl>>,
    retention_days: Option<u32>,
}

impl Patch {
    /// Whether it touches nothing (an empty merge patch).
    pub fn is_empty(&self) -> bool {
        self.thresholds.is_none()
            && self.masking.is_none()
            && self.webhook.is_none()
            && self.retention_days.is_none()
    }
}

/// The JSON merge patch (RFC 7396) `patch` applied to `current`, over the shape of
/// `GET /api/config`:
///
/// * `default_stuck_after_seconds` sets the default; in `stuck_after_seconds`, a stage's number
///   sets its own threshold and `null` removes it (the stage follows the default again);
/// * `masking` is merged into the rules (a list given replaces that list; `null` removes every
///   rule), see [`crate::masking`];
/// * `webhook`: an http(s) URL, or `null` for none;
/// * `retention_days`: whole days, 1 to [`MAX_RETENTION_DAYS`].
pub fn apply_patch(current: &RuntimeConfig, patch: &Value) -> Result<Patch, ChangeError> {
    let patch = patch.as_object().ok_or(ChangeError::NotAnObject)?;
    let mut next = Patch::default();
    for (key, value) in patch {
        match key.as_str() {
            "default_stuck_after_seconds" => {
                let thresholds = next
                    .thresholds
                    .get_or_insert_with(|| current.thresholds.clone());
                thresholds.default = seconds_of("default", whole(key, value)?)?;
            }
            "stuck_after_seconds" => {
                let stages = value.as_object().ok_or(ChangeError::StagesNotAnObject)?;
                let thresholds = next
                    .thresholds
                    .get_or_insert_with(|| current.thresholds.clone());
                for (name, value) in stages {
                    let stage = parse_stage(name)?;
                    if value.is_null() {
                        thresholds.per_stage.remove(&stage);
                    } else {
                        thresholds
                            .per_stage
                            .insert(stage, seconds_of(name, whole(name, value)?)?);
                    }
                }
            }
            "masking" => {
                let mut rules =
                    serde_json::to_value(current.masking.rules()).expect("rules serialize");
                merge(&mut rules, value);
                if rules.is_null() {
                    rules = Value::Object(Map::new());
                }
                next.masking = Some(MaskingRules::from_json(&rules)?);
            }
            "webhook" => {
                next.webhook = Some(match value {
                    Value::Null => None,
                    Value::String(text) => Some(WebhookUrl::parse(text)?),
                    _ => return Err(WebhookError::NotText.into()),
                });
            }
            "retention_days" => {
                let days = value
                    .as_u64()
                    .and_then(|d| u32::try_from(d).ok())
                    .filter(|d| (1..=MAX_RETENTION_DAYS).contains(d))
                    .ok_or(ChangeError::Retention)?;
                next.retention_days = Some(days);
            }
            other => return Err(ChangeError::NotChangeable(other.to_owned())),
        }
    }
    Ok(next)
}

/// RFC 7396: `patch` merged into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("an object now");
    for (key, value) in fields {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The parts `patch` touches, as the audit keeps them (the webhook masked).
fn audited(
    patch: &Patch,
    thresholds: &Thresholds,
    masking: &MaskingRules,
    webhook: Option<&WebhookUrl>,
    retention_days: u32,
) -> Value {
    let mut parts = Map::new();
    if patch.thresholds.is_some() {
        parts.insert(
            "thresholds".into(),
            serde_json::to_value(StoredThresholds::from(thresholds)).expect("serializes"),
        );
    }
    if patch.masking.is_some() {
        parts.insert(
            "masking".into(),
            serde_json::to_value(masking).expect("serializes"),
        );
    }
    if patch.webhook.is_some() {
        parts.insert("webhook".into(), json!(webhook.map(WebhookUrl::shown)));
    }
    if patch.retention_days.is_some() {
        parts.insert("retention_days".into(), json!(retention_days));
    }
    Value::Object(parts)
}

/// The stored changes, when any was ever made.
pub async fn load(pool: &PgPool) -> Result<Option<Stored>, LoadError> {
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT thresholds, masking, webhook_set, webhook_url, retention_days, version \
         FROM runtime_config",
    )
    .fetch_optional(pool)
    .db("SELECT runtime_config")
    .await?;
    Ok(row.map(Stored::try_from).transpose()?)
}

/// Why the stored configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the stored configuration")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
}

/// One audited change.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Change {
    pub id: i64,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
    /// Each part the change touched, as it was (`thresholds`, `masking`, `webhook` masked,
    /// `retention_days`).
    pub before: Value,
    /// The same parts, as the change left them.
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
    #[error(transparent)]
    Corrupt(#[from] Unreadable),
}

/// Applies the merge patch `patch` (made by `who` at `now`) to the configuration in force,
/// stores and audits the result, plans the deadlines of open orders again when the thresholds
/// changed, and makes it the configuration `live` holds. Returns the audited change (none for
/// an empty patch, which changes nothing).
pub async fn change(
    pool: &PgPool,
    live: &LiveConfig,
    patch: &Value,
    who: &str,
    now: DateTime<Utc>,
) -> Result<Option<Change>, ChangeFailure> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('order_watch.runtime_config'))")
        .execute(&mut *tx)
        .db("LOCK runtime_config")
        .await?;
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT thresholds, masking, webhook_set, webhook_url, retention_days, version \
         FROM runtime_config",
    )
    .fetch_optional(&mut *tx)
    .db("SELECT runtime_config")
    .await?;
    let stored = row.map(Stored::try_from).transpose()?.unwrap_or_default();
    let current = stored.in_force(&live.defaults)?;
    let patch = apply_patch(&current, patch)?;
    if patch.is_empty() {
        return Ok(None);
    }
    let next_stored = Stored {
        thresholds: patch.thresholds.clone().or(stored.thresholds),
        masking: patch.masking.clone().or(stored.masking),
        webhook: patch.webhook.clone().or(stored.webhook),
        retention_days: patch.retention_days.or(stored.retention_days),
        version: stored.version + 1,
    };
    let next = next_stored.in_force(&live.defaults)?;
    let before = audited(
        &patch,
        &current.thresholds,
        current.masking.rules(),
        current.webhook.as_ref(),
        current.retention_days,
    );
    let after = audited(
        &patch,
        &next.thresholds,
        next.masking.rules(),
        next.webhook.as_ref(),
        next.retention_days,
    );
    store(&mut tx, &next_stored, who, now).await?;
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
    if patch.thresholds.is_some() {
        plan_deadlines(&mut tx, &next.thresholds).await?;
    }
    tx.commit().await?;
    live.apply(next);
    Ok(Some(change))
}

/// Writes the stored parts (the lock is held: this is the whole row as it now is).
async fn store(
    tx: &mut PgConnection,
    stored: &Stored,
    who: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO runtime_config (id, thresholds, masking, webhook_set, webhook_url, \
             retention_days, version, updated_at, updated_by) \
         VALUES (true, $1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET thresholds = $1, masking = $2, webhook_set = $3, \
             webhook_url = $4, retention_days = $5, version = $6, updated_at = $7, updated_by = $8",
    )
    .bind(
        stored
            .thresholds
            .as_ref()
            .map(|t| Json(StoredThresholds::from(t))),
    )
    .bind(stored.masking.as_ref().map(Json))
    .bind(stored.webhook.is_some())
    .bind(
        stored
            .webhook
            .as_ref()
            .and_then(|w| w.as_ref().map(WebhookUrl::expose)),
    )
    .bind(
        stored
            .retention_days
            .map(|d| i32::try_from(d).expect("at most MAX_RETENTION_DAYS")),
    )
    .bind(stored.version)
    .bind(now)
    .bind(who)
    .execute(&mut *tx)
    .db("UPSERT runtime_config")
    .await?;
    Ok(())
}

/// Gives every open order that is not stuck the deadline its stage has under `thresholds`: the
/// rule of `OrderState::moved` (last progress plus the stage's threshold), for all of them at
/// once.
async fn plan_deadlines(tx: &mut PgConnection, thresholds: &Thresholds) -> Result<(), sqlx::Error> {
    let thresholds = Json(StoredThresholds::from(thresholds));
    sqlx::query(
        "UPDATE orders o SET deadline = planned.at, check_at = planned.at \
         FROM (SELECT order_id, last_progress + make_interval(secs => \
                   COALESCE(($1::jsonb -> 'per_stage_seconds' ->> stage)::bigint, \
                            ($1::jsonb ->> 'default_seconds')::bigint)) AS at \
               FROM orders WHERE NOT terminal AND stuck_since IS NULL) planned \
         WHERE o.order_id = planned.order_id",
    )
    .bind(thresholds)
    .execute(&mut *tx)
    .db("UPDATE orders")
    .await?;
    Ok(())
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

/// Loads the stored configuration when another replica changed it: every `interval` it reads
/// the stored version (one row, one column) and, when it is newer than the one `live` holds,
/// the whole, applies it and wakes the detector. Runs until cancelled.
pub async fn follow(
    pool: PgPool,
    live: LiveConfig,
    interval: Duration,
    detector: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let version: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM runtime_config")
                .fetch_optional(&pool)
                .await;
        match version {
            Ok(Some(version)) if version > live.get().version => {}
            Ok(_) => continue,
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot read the configuration's version; keeping the one in force"
                );
                continue;
            }
        }
        let loaded = load(&pool).await.and_then(|stored| {
            stored
                .map(|stored| stored.in_force(&live.defaults))
                .transpose()
                .map_err(LoadError::from)
        });
        match loaded {
            Ok(Some(config)) => {
                let version = config.version;
                if live.apply(config) {
                    tracing::info!(version, "configuration changed on another replica applied");
                    detector.notify_one();
                }
            }
            Ok(None) => {}
            Err(err) => tracing::error!(
                error = &err as &dyn std::error::Error,
                "the stored configuration does not read; keeping the one in force"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn current() -> RuntimeConfig {
        RuntimeConfig::from_defaults(&Defaults {
            thresholds: Thresholds::default(),
            webhook: None,
            retention_days: 30,
        })
    }

    #[test]
    fn a_merge_patch_sets_the_default_sets_a_stage_and_removes_a_stage() {
        let current = current();
        let next = apply_patch(
            &current,
            &json!({
                "default_stuck_after_seconds": 600,
                "stuck_after_seconds": { "pricing": 120, "shipping": null },
            }),
        )
        .unwrap()
        .thresholds
        .unwrap();
        assert_eq!(next.default, Duration::from_secs(600));
        assert_eq!(next.for_stage(Stage::Pricing), Duration::from_secs(120));
        assert_eq!(next.for_stage(Stage::Shipping), Duration::from_secs(600));
        assert_eq!(
            next.for_stage(Stage::Production),
            current.thresholds.for_stage(Stage::Production)
        );
        let stored = StoredThresholds::from(&next);
        assert_eq!(Thresholds::try_from(stored).unwrap(), next);
    }

    #[test]
    fn a_change_that_names_no_stage_or_no_sensible_value_is_refused() {
        let current = current();
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
            refused(json!({ "stuck_after_seconds": 60 })),
            ChangeError::StagesNotAnObject
        );
        assert_eq!(
            refused(json!({ "colour": 3 })),
            ChangeError::NotChangeable("colour".into())
        );
        for days in [json!(0), json!(3651), json!(1.5), json!("30")] {
            assert_eq!(
                refused(json!({ "retention_days": days })),
                ChangeError::Retention
            );
        }
        assert_eq!(
            refused(json!({ "webhook": 42 })),
            ChangeError::Webhook(WebhookError::NotText)
        );
        assert_eq!(refused(json!([1])), ChangeError::NotAnObject);
    }

    #[test]
    fn masking_rules_merge_list_by_list_and_null_removes_them_all() {
        let mut current = current();
        current.masking = MaskingRules::from_json(&json!({
            "drop_keys": ["a"], "mask_keys": ["b"], "mask_patterns": ["c+"]
        }))
        .unwrap()
        .compile()
        .unwrap();
        let merged = apply_patch(&current, &json!({ "masking": { "mask_keys": ["x", "y"] } }))
            .unwrap()
            .masking
            .unwrap();
        assert_eq!(
            serde_json::to_value(&merged).unwrap(),
            json!({ "drop_keys": ["a"], "mask_keys": ["x", "y"], "mask_patterns": ["c+"] })
        );
        let emptied = apply_patch(&current, &json!({ "masking": null }))
            .unwrap()
            .masking
            .unwrap();
        assert!(emptied.is_empty());
    }

    #[test]
    fn only_a_change_that_touches_the_retention_needs_an_admin() {
        assert_eq!(needed_role(&json!({ "retention_days": 7 })), Role::Admin);
        assert_eq!(
            needed_role(&json!({ "webhook": null, "masking": {} })),
            Role::Developer
        );
        assert_eq!(needed_role(&json!([])), Role::Developer);
    }

    #[test]
    fn the_audit_keeps_the_touched_parts_and_the_webhook_only_masked() {
        let patch = Patch {
            webhook: Some(None),
            ..Patch::default()
        };
        let url = WebhookUrl::parse("https://hooks.example.com/services/T/B/secret").unwrap();
        let before = audited(
            &patch,
            &Thresholds::default(),
            &MaskingRules::default(),
            Some(&url),
            30,
        );
        assert_eq!(
            before,
            json!({ "webhook": "https://hooks.example.com/services/…" })
        );
    }
}
