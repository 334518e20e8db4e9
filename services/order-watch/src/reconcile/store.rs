//! Reconciliation's state in PostgreSQL: the lease that lets one replica run a round, where each
//! system's changes were read up to, the tracked orders with their last comparison, the samples
//! the 24-hour accuracy is taken from, and the repairs' audit.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use domain::held::ChangedSince;
use domain::{OrderStatus, System};
use platform::db::{Corrupt, ReadError, json_column, parse_column};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use telemetry::db::Traced;
use uuid::Uuid;

use super::verdict::{Holder, Kind, Mismatch, View, Views};

/// Takes the lease for a round when one is due and no other replica holds it: `true` when
/// this replica (`holder`) may run the round, until `until`.
pub async fn claim_lease(
    pool: &PgPool,
    holder: Uuid,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let claimed: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO reconcile_lease (id, holder, until, next_round_at) VALUES (true, $1, $3, $2) \
         ON CONFLICT (id) DO UPDATE SET holder = $1, until = $3 \
         WHERE reconcile_lease.next_round_at <= $2 \
           AND (reconcile_lease.until <= $2 OR reconcile_lease.holder = $1) \
         RETURNING holder",
    )
    .bind(holder)
    .bind(now)
    .bind(until)
    .fetch_optional(pool)
    .db("INSERT reconcile_lease")
    .await?;
    Ok(claimed == Some(holder))
}

/// When the next round is due (none before the first round).
pub async fn next_round_at(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT next_round_at FROM reconcile_lease")
        .fetch_optional(pool)
        .db("SELECT reconcile_lease")
        .await
}

/// Ends this replica's round in its applying transaction: the next is due at `next_round_at`.
/// `false` (and nothing changed) when another replica took the lease meanwhile: this round's
/// results are then to be dropped.
pub async fn finish_round(
    tx: &mut PgConnection,
    holder: Uuid,
    now: DateTime<Utc>,
    next_round_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let current: Option<Uuid> = sqlx::query_scalar("SELECT holder FROM reconcile_lease FOR UPDATE")
        .fetch_optional(&mut *tx)
        .db("SELECT reconcile_lease")
        .await?;
    if current != Some(holder) {
        return Ok(false);
    }
    sqlx::query("UPDATE reconcile_lease SET until = $1, next_round_at = $2")
        .bind(now)
        .bind(next_round_at)
        .execute(&mut *tx)
        .db("UPDATE reconcile_lease")
        .await?;
    Ok(true)
}

/// Where a system's changes were read up to, and when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    /// The position after the last change read.
    pub position: ChangedSince,
    /// When the round that read up to `position` began (none for a cursor saved before this was
    /// recorded).
    pub read_at: Option<DateTime<Utc>>,
    /// Whether that round read to the end of the system's changes (not stopped at `max_pages`).
    pub caught_up: bool,
}

/// Where each system's changes were read up to.
pub async fn cursors(pool: &PgPool) -> Result<BTreeMap<System, Cursor>, sqlx::Error> {
    type Row = (
        String,
        DateTime<Utc>,
        Option<Uuid>,
        Option<DateTime<Utc>>,
        bool,
    );
    let rows: Vec<Row> =
        sqlx::query_as("SELECT system, since, after, read_at, caught_up FROM reconcile_cursors")
            .fetch_all(pool)
            .db("SELECT reconcile_cursors")
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(name, since, after, read_at, caught_up)| match Holder::parse(&name) {
                Some(Holder::System(system)) => Some((
                    system,
                    Cursor {
                        position: ChangedSince { since, after },
                        read_at,
                        caught_up,
                    },
                )),
                _ => None,
            },
        )
        .collect())
}

pub async fn save_cursor(
    tx: &mut PgConnection,
    system: System,
    cursor: Cursor,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reconcile_cursors (system, since, after, read_at, caught_up) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (system) DO UPDATE SET since = $2, after = $3, read_at = $4, caught_up = $5",
    )
    .bind(system.service_name())
    .bind(cursor.position.since)
    .bind(cursor.position.after)
    .bind(cursor.read_at)
    .bind(cursor.caught_up)
    .execute(&mut *tx)
    .db("INSERT reconcile_cursors")
    .await?;
    Ok(())
}

/// Tracked orders due to be compared again without a change, earliest first.
pub async fn due_rechecks(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT order_id FROM reconcile_orders WHERE recheck_at <= $1 ORDER BY recheck_at LIMIT $2",
    )
    .bind(now)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .db("SELECT reconcile_orders")
    .await
}

/// order-watch's own view of `ids`: the status its journeys derived from the spans, and when
/// (orders without a journey, or without a status yet, are absent).
pub async fn journey_views(pool: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, View>, ReadError> {
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT order_id, status, status_at FROM orders \
         WHERE order_id = ANY($1) AND status IS NOT NULL AND status_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(pool)
    .db("SELECT orders")
    .await?;
    let mut views = HashMap::with_capacity(rows.len());
    for (order_id, status, since) in rows {
        let status = parse_column(order_id, "status", &status)?;
        views.insert(order_id, View { status, since });
    }
    Ok(views)
}

/// A tracked order as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub order_id: Uuid,
    pub changed_at: DateTime<Utc>,
    pub checked_at: Option<DateTime<Utc>>,
    pub agreed_on: Option<OrderStatus>,
    pub reference: Option<OrderStatus>,
    pub owner: Option<System>,
    pub views: Views,
    pub mismatches: Vec<Mismatch>,
    pub disagreeing_since: Option<DateTime<Utc>>,
    pub detected_at: Option<DateTime<Utc>>,
    pub listed_at: Option<DateTime<Utc>>,
    /// The mismatches ([`Mismatch::key`]) this disagreement counted already.
    pub counted: Vec<String>,
    pub recheck_at: Option<DateTime<Utc>>,
}

impl Tracked {
    /// An order seen changed that could not be compared yet.
    pub fn pending(order_id: Uuid, changed_at: DateTime<Utc>) -> Self {
        Self {
            order_id,
            changed_at,
            checked_at: None,
            agreed_on: None,
            reference: None,
            owner: None,
            views: Views::new(),
            mismatches: Vec::new(),
            disagreeing_since: None,
            detected_at: None,
            listed_at: None,
            counted: Vec::new(),
            recheck_at: None,
        }
    }
}

/// A row of `reconcile_orders`, read into a [`Tracked`] with [`TryFrom`].
#[derive(sqlx::FromRow)]
struct TrackedRow {
    order_id: Uuid,
    changed_at: DateTime<Utc>,
    checked_at: Option<DateTime<Utc>>,
    agreed_on: Option<String>,
    reference: Option<String>,
    owner: Option<String>,
    views: Value,
    mismatches: Value,
    disagreeing_since: Option<DateTime<Utc>>,
    detected_at: Option<DateTime<Utc>>,
    listed_at: Option<DateTime<Utc>>,
    counted: Value,
    recheck_at: Option<DateTime<Utc>>,
}

fn system_column(id: Uuid, column: &'static str, name: &str) -> Result<System, Corrupt> {
    match Holder::parse(name) {
        Some(Holder::System(system)) => Ok(system),
        _ => Err(Corrupt::new(id, column, name, "not a system of record")),
    }
}

impl TryFrom<TrackedRow> for Tracked {
    type Error = Corrupt;

    fn try_from(row: TrackedRow) -> Result<Self, Corrupt> {
        let id = row.order_id;
        let status = |column: &'static str, text: Option<String>| {
            text.map(|text| parse_column::<OrderStatus>(id, column, &text))
                .transpose()
        };
        Ok(Self {
            order_id: id,
            changed_at: row.changed_at,
            checked_at: row.checked_at,
            agreed_on: status("agreed_on", row.agreed_on)?,
            reference: status("reference", row.reference)?,
            owner: row
                .owner
                .map(|owner| system_column(id, "owner", &owner))
                .transpose()?,
            views: json_column(id, "views", row.views)?,
            mismatches: json_column(id, "mismatches", row.mismatches)?,
            disagreeing_since: row.disagreeing_since,
            detected_at: row.detected_at,
            listed_at: row.listed_at,
            counted: json_column(id, "counted", row.counted)?,
            recheck_at: row.recheck_at,
        })
    }
}

const TRACKED_COLUMNS: &str = "order_id, changed_at, checked_at, agreed_on, reference, owner, \
    views, mismatches, disagreeing_since, detected_at, listed_at, counted, recheck_at";

/// Locks the tracked rows of `ids` that exist, in id order, and reads them.
pub async fn lock_tracked(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Tracked>, ReadError> {
    let rows: Vec<TrackedRow> = sqlx::query_as(&format!(
        "SELECT {TRACKED_COLUMNS} FROM reconcile_orders WHERE order_id = ANY($1) \
         ORDER BY order_id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(&mut *tx)
    .db("SELECT reconcile_orders")
    .await?;
    let mut tracked = HashMap::with_capacity(rows.len());
    for row in rows {
        let row = Tracked::try_from(row)?;
        tracked.insert(row.order_id, row);
    }
    Ok(tracked)
}

/// Writes each tracked order whole (inserting new ones).
pub async fn upsert_tracked(tx: &mut PgConnection, rows: &[Tracked]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    fn column<'a, T>(rows: &'a [Tracked], f: impl Fn(&'a Tracked) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let json = |value: serde_json::Result<Value>| value.expect("plain data serializes");
    sqlx::query(
        "INSERT INTO reconcile_orders (order_id, changed_at, checked_at, agreed_on, reference, \
             owner, views, mismatches, disagreeing_since, detected_at, listed_at, counted, \
             recheck_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[], \
             $5::text[], $6::text[], $7::jsonb[], $8::jsonb[], $9::timestamptz[], \
             $10::timestamptz[], $11::timestamptz[], $12::jsonb[], $13::timestamptz[]) \
         ON CONFLICT (order_id) DO UPDATE SET changed_at = EXCLUDED.changed_at, \
             checked_at = EXCLUDED.checked_at, agreed_on = EXCLUDED.agreed_on, \
             reference = EXCLUDED.reference, owner = EXCLUDED.owner, views = EXCLUDED.views, \
             mismatches = EXCLUDED.mismatches, disagreeing_since = EXCLUDED.disagreeing_since, \
             detected_at = EXCLUDED.detected_at, listed_at = EXCLUDED.listed_at, \
             counted = EXCLUDED.counted, recheck_at = EXCLUDED.recheck_at",
    )
    .bind(column(rows, |r| r.order_id))
    .bind(column(rows, |r| r.changed_at))
    .bind(column(rows, |r| r.checked_at))
    .bind(column(rows, |r| r.agreed_on.map(OrderStatus::as_str)))
    .bind(column(rows, |r| r.reference.map(OrderStatus::as_str)))
    .bind(column(rows, |r| r.owner.map(System::service_name)))
    .bind(column(rows, |r| json(serde_json::to_value(&r.views))))
    .bind(column(rows, |r| json(serde_json::to_value(&r.mismatches))))
    .bind(column(rows, |r| r.disagreeing_since))
    .bind(column(rows, |r| r.detected_at))
    .bind(column(rows, |r| r.listed_at))
    .bind(column(rows, |r| json(serde_json::to_value(&r.counted))))
    .bind(column(rows, |r| r.recheck_at))
    .execute(&mut *tx)
    .db("INSERT reconcile_orders")
    .await?;
    Ok(())
}

/// Stops tracking `ids` (no holder knows them any more).
pub async fn forget(tx: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if !ids.is_empty() {
        sqlx::query("DELETE FROM reconcile_orders WHERE order_id = ANY($1)")
            .bind(ids)
            .execute(&mut *tx)
            .db("DELETE reconcile_orders")
            .await?;
    }
    Ok(())
}

/// Most rows one round deletes, so the delete never holds its locks for long.
const PRUNE_BATCH: i64 = 10_000;

/// Stops tracking orders that agree and last changed before `cutoff`, and deletes samples
/// older than `samples_before`.
pub async fn prune(
    tx: &mut PgConnection,
    cutoff: DateTime<Utc>,
    samples_before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let pruned = sqlx::query(
        "DELETE FROM reconcile_orders WHERE order_id IN (SELECT order_id FROM reconcile_orders \
         WHERE changed_at < $1 AND agreed_on IS NOT NULL AND recheck_at IS NULL LIMIT $2)",
    )
    .bind(cutoff)
    .bind(PRUNE_BATCH)
    .execute(&mut *tx)
    .db("DELETE reconcile_orders")
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM reconcile_samples WHERE at < $1")
        .bind(samples_before)
        .execute(&mut *tx)
        .db("DELETE reconcile_samples")
        .await?;
    Ok(pruned)
}

/// Records the share that agrees now, as of `now`.
pub async fn sample(tx: &mut PgConnection, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reconcile_samples (at, tracked, agreeing) \
         SELECT $1, count(*), count(*) FILTER (WHERE agreed_on IS NOT NULL) \
         FROM reconcile_orders WHERE checked_at IS NOT NULL",
    )
    .bind(now)
    .execute(&mut *tx)
    .db("INSERT reconcile_samples")
    .await?;
    Ok(())
}

/// Reconciliation's figures now, as the gauges and the API show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Tracked orders that were compared.
    pub tracked: u64,
    pub agreeing: u64,
    /// Share of the tracked orders on which every holder agrees (1 when none is tracked).
    pub accuracy: f64,
    /// The same share over the samples of the last 24 hours (each round's, weighted by the
    /// orders it counted).
    pub accuracy_24h: f64,
    /// Orders disagreeing past the threshold, per mismatching holder and kind.
    #[serde(skip)]
    pub listed: BTreeMap<(Holder, Kind), u64>,
    /// Orders disagreeing past the threshold.
    pub listed_orders: u64,
    /// How far behind now each system's reading is while it works off a backlog (its last
    /// round stopped at the page limit): the time since its cursor; 0 once a round read to the
    /// end of its changes.
    pub behind_seconds: BTreeMap<String, f64>,
}

/// Reconciliation's figures as of `now`, read on `conn`: in one snapshot (see
/// [`platform::db::snapshot`]) their counts agree with each other, and with a listing read in it.
pub async fn figures(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Figures, sqlx::Error> {
    let (tracked, agreeing, listed_orders): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE agreed_on IS NOT NULL), \
             count(*) FILTER (WHERE listed_at IS NOT NULL) \
         FROM reconcile_orders WHERE checked_at IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .db("SELECT reconcile_orders")
    .await?;
    let (day_tracked, day_agreeing): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT sum(tracked)::int8, sum(agreeing)::int8 FROM reconcile_samples WHERE at >= $1",
    )
    .bind(now - chrono::Duration::hours(24))
    .fetch_one(&mut *conn)
    .db("SELECT reconcile_samples")
    .await?;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT m->>'system', m->>'kind', count(*) FROM reconcile_orders, \
             jsonb_array_elements(mismatches) AS m \
         WHERE listed_at IS NOT NULL GROUP BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .db("SELECT reconcile_orders")
    .await?;
    let cursors: Vec<(String, DateTime<Utc>, bool)> =
        sqlx::query_as("SELECT system, since, caught_up FROM reconcile_cursors")
            .fetch_all(&mut *conn)
            .db("SELECT reconcile_cursors")
            .await?;
    let mut behind_seconds: BTreeMap<String, f64> = System::ALL
        .iter()
        .map(|system| (system.service_name().to_owned(), 0.0))
        .collect();
    for (system, since, caught_up) in cursors {
        if !caught_up && let Some(behind) = behind_seconds.get_mut(&system) {
            *behind = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
        }
    }
    let share = |agreeing: i64, tracked: i64| {
        if tracked <= 0 {
            1.0
        } else {
            agreeing as f64 / tracked as f64
        }
    };
    let listed = rows
        .into_iter()
        .filter_map(|(holder, kind, count)| {
            let holder = Holder::parse(&holder)?;
            let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
            Some(((holder, kind), u64::try_from(count).unwrap_or(0)))
        })
        .collect();
    Ok(Figures {
        tracked: u64::try_from(tracked).unwrap_or(0),
        agreeing: u64::try_from(agreeing).unwrap_or(0),
        accuracy: share(agreeing, tracked),
        accuracy_24h: share(day_agreeing.unwrap_or(0), day_tracked.unwrap_or(0)),
        listed,
        listed_orders: u64::try_from(listed_orders).unwrap_or(0),
        behind_seconds,
    })
}

/// A disagreeing order as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    pub order_id: Uuid,
    /// The owner's status, and the owner.
    pub status: Option<OrderStatus>,
    pub owner: Option<&'static str>,
    /// Since the change that began the disagreement.
    pub disagreeing_since: DateTime<Utc>,
    pub disagreeing_seconds: f64,
    /// When reconciliation first saw it, and when it listed it (past the threshold).
    pub detected_at: Option<DateTime<Utc>>,
    pub listed_at: Option<DateTime<Utc>>,
    /// When the holders were last asked.
    pub checked_at: Option<DateTime<Utc>>,
    /// What each holder said: `null` for one that does not know the order.
    pub views: Views,
    pub mismatches: Vec<Mismatch>,
    /// In words: the owner's status and each holder that disagrees.
    pub summary: String,
    /// The open incident of the disagreement.
    pub incident_id: Option<Uuid>,
}

/// The orders disagreeing now, longest first: those past the threshold, or all with `all`.
pub async fn disagreements(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    all: bool,
    order_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Disagreement>, ReadError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        tracked: TrackedRow,
        incident_id: Option<Uuid>,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {TRACKED_COLUMNS}, \
             (SELECT i.id FROM incidents i WHERE i.kind = 'disagreement' AND i.resolved_at IS NULL \
              AND i.order_id = r.order_id) AS incident_id \
         FROM reconcile_orders r \
         WHERE disagreeing_since IS NOT NULL AND ($1 OR listed_at IS NOT NULL) \
             AND ($3::uuid IS NULL OR order_id = $3) \
         ORDER BY disagreeing_since, order_id LIMIT $2"
    ))
    .bind(all)
    .bind(limit)
    .bind(order_id)
    .fetch_all(&mut *conn)
    .db("SELECT reconcile_orders")
    .await?;
    let mut listed = Vec::with_capacity(rows.len());
    for row in rows {
        let tracked = Tracked::try_from(row.tracked)?;
        let since = tracked.disagreeing_since.unwrap_or(now);
        let judgement = super::verdict::Judgement {
            reference: tracked.reference.zip(tracked.owner).map(|(status, owner)| {
                super::verdict::Reference {
                    status,
                    owner,
                    since: tracked
                        .views
                        .get(&Holder::System(owner))
                        .copied()
                        .flatten()
                        .map_or(since, |v| v.since),
                }
            }),
            mismatches: tracked.mismatches.clone(),
            changed_at: tracked.changed_at,
        };
        listed.push(Disagreement {
            order_id: tracked.order_id,
            status: tracked.reference,
            owner: tracked.owner.map(System::service_name),
            disagreeing_since: since,
            disagreeing_seconds: (now - since).num_milliseconds().max(0) as f64 / 1000.0,
            detected_at: tracked.detected_at,
            listed_at: tracked.listed_at,
            checked_at: tracked.checked_at,
            summary: judgement.describe(),
            views: tracked.views,
            mismatches: tracked.mismatches,
            incident_id: row.incident_id,
        });
    }
    Ok(listed)
}

/// Compares the order again at the next round (a repair was asked for it).
pub async fn recheck_soon(
    pool: &PgPool,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reconcile_orders SET recheck_at = $2 WHERE order_id = $1")
        .bind(order_id)
        .bind(now)
        .execute(pool)
        .db("UPDATE reconcile_orders")
        .await?;
    Ok(())
}

/// A repair as audited and answered.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Repair {
    pub id: i64,
    pub order_id: Uuid,
    pub requested_at: DateTime<Utc>,
    pub requested_by: String,
    /// The owner's status and its owner when the repair was asked.
    pub reference: Option<String>,
    pub owner: Option<String>,
    /// `republished`, `failed`, `not_needed` or `not_repairable`.
    pub outcome: String,
    /// Whom it asked and what each did.
    pub asked: Value,
    /// In words.
    pub detail: String,
}

/// A repair about to be audited.
pub struct NewRepair<'a> {
    pub order_id: Uuid,
    pub requested_at: DateTime<Utc>,
    pub requested_by: &'a str,
    pub reference: Option<OrderStatus>,
    pub owner: Option<System>,
    pub outcome: &'static str,
    pub asked: Value,
    pub detail: String,
}

const REPAIR_COLUMNS: &str =
    "id, order_id, requested_at, requested_by, reference, owner, outcome, asked, detail";

pub async fn record_repair(pool: &PgPool, repair: NewRepair<'_>) -> Result<Repair, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO reconcile_repairs (order_id, requested_at, requested_by, reference, owner, \
             outcome, asked, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING {REPAIR_COLUMNS}"
    ))
    .bind(repair.order_id)
    .bind(repair.requested_at)
    .bind(repair.requested_by)
    .bind(repair.reference.map(OrderStatus::as_str))
    .bind(repair.owner.map(System::service_name))
    .bind(repair.outcome)
    .bind(repair.asked)
    .bind(repair.detail)
    .fetch_one(pool)
    .db("INSERT reconcile_repairs")
    .await
}

/// The repairs asked for, newest first.
pub async fn repairs(pool: &PgPool, limit: i64) -> Result<Vec<Repair>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REPAIR_COLUMNS} FROM reconcile_repairs ORDER BY requested_at DESC, id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .db("SELECT reconcile_repairs")
    .await
}
