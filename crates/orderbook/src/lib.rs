//! The order status machine as each service persists it.
//!
//! Every service keeps, in the `orderbook` schema of its own database, the current status of the
//! orders it knows and their history. Two ways to move an order, matching the two rules of
//! [`domain::status`]:
//!
//! * [`OrderBook::transition`]: the service *owns* the move. It is checked against the status
//!   machine, written with its history row, and announced as `order.status_changed` through the
//!   outbox, all in the caller's transaction. It runs in an INTERNAL span named after the new
//!   status (`order submitted`) carrying `order.status.from`, `order.status.to` and
//!   `order.stage`, the spans order-watch follows.
//! * [`OrderBook::observe`]: another service made the move; the local projection follows only if
//!   it is a step forward, so late, repeated and reordered events are harmless.
//!
//! The row also keeps the trace context of the last work done on the order here, so work a person
//! starts later (confirming a price, a production step) can link its new trace to the old one.

pub mod republish;
pub mod statuses;

/// What each service serves from its order book to order-watch, each behind its gate: the
/// status listing ([`statuses`], `support` or `status-reader`) and the republish request
/// ([`republish`], `admin` or `status-republisher`).
pub fn routes<S>(gate: &std::sync::Arc<access::Gate>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    PgPool: axum::extract::FromRef<S>,
{
    gate.guard(access::Need::STATUSES, statuses::router())
        .merge(gate.guard(access::Need::REPUBLISH, republish::router()))
}

use chrono::{DateTime, Utc};
use domain::events::{Envelope, Event, Reason, StatusChanged};
use domain::pricing::Quote;
use domain::{OrderStatus, TransitionError};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use platform::db::{
    Carrier, Corrupt, ReadError, StoredTrace, current_trace, from_carrier, json_column,
    parse_column,
};
use serde::Serialize;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{PgConnection, PgPool};
use telemetry::db::Traced;
use telemetry::{attr, spans};
use uuid::Uuid;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Status transitions this service performed (`hallmark.order.status_transitions`). Labels:
/// `from`, `to`.
fn status_transitions() -> &'static opentelemetry::metrics::Counter<u64> {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        telemetry::metrics::meter()
            .u64_counter("hallmark.order.status_transitions")
            .with_description("Order status transitions performed by this service")
            .build()
    })
}

/// Creates or upgrades the `orderbook` schema and the `messaging` schema it writes to (outbox,
/// inbox), each with its own migration history.
pub async fn install_schema(pool: &PgPool) -> Result<(), MigrateError> {
    messaging::install_schema(pool).await?;
    platform::db::migrate_schema(pool, "orderbook", &MIGRATOR).await
}

/// One step in an order's life as this service recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub from: Option<OrderStatus>,
    pub status: OrderStatus,
    /// The service that made the move.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Who asked for the move, for one a caller asked for (see [`Change::by`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub at: DateTime<Utc>,
}

/// What this service knows about an order right now.
#[derive(Debug, Clone)]
pub struct Current {
    pub status: OrderStatus,
    pub idempotency_key: Option<String>,
    /// The price, once the order was priced.
    pub price: Option<Quote>,
    /// Why it was rejected, failed or cancelled.
    pub reason: Option<Reason>,
    pub updated_at: DateTime<Utc>,
    trace: Carrier,
}

/// An order [`OrderBook::lock`] read and locked. It is only valid in the transaction that locked
/// it, where nothing else can change the order until that transaction ends.
///
/// It holds what a move under the lock reads: the status it starts from and the key the order
/// was created with.
#[derive(Debug)]
pub struct Locked {
    order_id: Uuid,
    status: OrderStatus,
    idempotency_key: Option<String>,
}

/// Why an owner's transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionFailure {
    #[error("order {0} is not known here")]
    NotFound(Uuid),
    #[error(transparent)]
    Illegal(#[from] TransitionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The order's row holds a value that does not read.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl From<ReadError> for TransitionFailure {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Database(err) => err.into(),
            ReadError::Corrupt(err) => err.into(),
        }
    }
}

/// A move an owner wants to make.
#[derive(Debug, Clone)]
pub struct Change {
    pub to: OrderStatus,
    /// Why, for `rejected`, `failed` and `cancelled`.
    pub reason: Option<Reason>,
    /// The price, for `priced`.
    pub price: Option<Quote>,
    /// When it happened, when that was before now (e.g. when a message was sent).
    pub at: Option<DateTime<Utc>>,
    /// Who asked for it: a person's or a client's audit name, recorded in the history.
    pub by: Option<String>,
}

impl Change {
    pub fn to(to: OrderStatus) -> Self {
        Self {
            to,
            reason: None,
            price: None,
            at: None,
            by: None,
        }
    }

    /// Recorded as made at the request of `by` (an audit name).
    pub fn by(mut self, by: impl Into<String>) -> Self {
        self.by = Some(by.into());
        self
    }

    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = Some(at);
        self
    }

    pub fn with_reason(mut self, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.reason = Some(Reason {
            code: code.into(),
            message: message.into(),
        });
        self
    }

    pub fn with_price(mut self, price: Quote) -> Self {
        self.price = Some(price);
        self
    }
}

/// What [`OrderBook::observe`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The projection moved forward, and the order keeps the current span's context.
    Applied,
    /// The event announced a step the order had already passed (it was overtaken by a later
    /// event, e.g. processed concurrently): the step went into the history, the status stayed.
    Late,
    /// The event was stale or repeated; nothing changed.
    Ignored,
    /// This service has never heard of the order.
    Unknown,
}

/// The orderbook of one service.
#[derive(Debug, Clone, Copy)]
pub struct OrderBook {
    /// `service.name` of the owning service; written as `source` on events and history.
    source: &'static str,
}

impl OrderBook {
    pub const fn new(source: &'static str) -> Self {
        Self { source }
    }

    /// Registers an order this service sees for the first time, in `status`, which `source` (a
    /// `service.name`) gave it at `occurred_at`. Returns the order's first history entry as
    /// stored, or `None` (and changes nothing) when the order is already known.
    pub async fn open(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        status: OrderStatus,
        idempotency_key: Option<&str>,
        source: &str,
        occurred_at: DateTime<Utc>,
    ) -> Result<Option<HistoryEntry>, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO orderbook.orders (order_id, status, idempotency_key, trace) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(status.as_str())
        .bind(idempotency_key)
        .bind(current_trace())
        .execute(&mut *tx)
        .db("INSERT orders")
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        self.record_history(tx, order_id, None, status, source, None, None, occurred_at)
            .await
            .map(Some)
    }

    pub async fn get(
        &self,
        conn: &mut PgConnection,
        order_id: Uuid,
    ) -> Result<Option<Current>, ReadError> {
        let row: Option<OrderRow> = sqlx::query_as(
            "SELECT order_id, status, idempotency_key, price, reason, trace, updated_at \
             FROM orderbook.orders WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .db("SELECT orders")
        .await?;
        Ok(row.map(Current::try_from).transpose()?)
    }

    /// The order's history in the order the moves happened (by their time; moves recorded at
    /// the same instant in the order they were recorded).
    pub async fn history(
        &self,
        conn: &mut PgConnection,
        order_id: Uuid,
    ) -> Result<Vec<HistoryEntry>, ReadError> {
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT order_id, from_status, to_status, source, reason_code, reason, actor, \
                 occurred_at \
             FROM orderbook.history WHERE order_id = $1 ORDER BY occurred_at, id",
        )
        .bind(order_id)
        .fetch_all(&mut *conn)
        .db("SELECT history")
        .await?;
        Ok(rows
            .into_iter()
            .map(HistoryEntry::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// Makes an owner's move: checks it, writes it and announces it, in the caller's transaction.
    pub async fn transition(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        change: Change,
    ) -> Result<StatusChanged, TransitionFailure> {
        let to = change.to;
        self.in_transition_span(to, async {
            let locked = self
                .lock(tx, order_id)
                .await?
                .ok_or(TransitionFailure::NotFound(order_id))?;
            self.move_locked(tx, locked, change).await
        })
        .await
    }

    /// [`OrderBook::transition`] for an order the caller locked already, in this same
    /// transaction, with [`OrderBook::lock`]: the order is not read a second time.
    pub async fn transition_locked(
        &self,
        tx: &mut PgConnection,
        locked: Locked,
        change: Change,
    ) -> Result<StatusChanged, TransitionFailure> {
        self.in_transition_span(change.to, self.move_locked(tx, locked, change))
            .await
    }

    /// Runs `work`, a move to `to`, in its span (`order submitted`), which records the failure
    /// if there is one.
    async fn in_transition_span(
        &self,
        to: OrderStatus,
        work: impl Future<Output = Result<StatusChanged, TransitionFailure>>,
    ) -> Result<StatusChanged, TransitionFailure> {
        let span = if telemetry::spans_enabled!() {
            let attributes = vec![
                KeyValue::new(attr::ORDER_STATUS_TO, to.as_str()),
                KeyValue::new(attr::ORDER_STAGE, to.stage().as_str()),
            ];
            let parent = telemetry::propagation::as_progress(&Context::current());
            spans::child(
                format!("order {to}"),
                SpanKind::Internal,
                attributes,
                &parent,
            )
        } else {
            None
        };
        let result = spans::under(span.as_ref(), work).await;
        if let (Err(err), Some(span)) = (&result, &span) {
            let code = match err {
                TransitionFailure::NotFound(_) => "order_not_found",
                TransitionFailure::Illegal(_) => "illegal_transition",
                TransitionFailure::Database(_) => "database_unavailable",
                TransitionFailure::Corrupt(_) => "corrupt_record",
            };
            let span = span.span();
            span.set_attribute(KeyValue::new(attr::ERROR_CODE, code));
            span.set_status(Status::error(""));
        }
        spans::end_in(span.as_ref());
        result
    }

    /// The move itself, inside the transition span, on the order as `locked` read it.
    async fn move_locked(
        &self,
        tx: &mut PgConnection,
        locked: Locked,
        change: Change,
    ) -> Result<StatusChanged, TransitionFailure> {
        let Locked {
            order_id,
            status: from,
            idempotency_key,
        } = locked;
        spans::record(KeyValue::new(attr::ORDER_STATUS_FROM, from.as_str()));
        if let Some(key) = idempotency_key {
            spans::record(KeyValue::new(attr::ORDER_IDEMPOTENCY_KEY, key));
        }
        let to = from.transition(change.to)?;
        let now = change.at.unwrap_or_else(Utc::now);
        self.write_status(
            tx,
            order_id,
            to,
            change.price.as_ref(),
            change.reason.as_ref(),
        )
        .await?;
        self.record_history(
            tx,
            order_id,
            Some(from),
            to,
            self.source,
            change.reason.as_ref(),
            change.by.as_deref(),
            now,
        )
        .await?;
        let event = StatusChanged {
            from,
            to,
            reason: change.reason,
            price: change.price,
        };
        let envelope = Envelope::new(
            order_id,
            StatusChanged::idempotency_key(order_id, to),
            self.source,
            now,
            Event::StatusChanged(event.clone()),
        );
        messaging::enqueue(tx, &envelope).await?;
        status_transitions().add(
            1,
            &[
                KeyValue::new("from", from.as_str()),
                KeyValue::new("to", to.as_str()),
            ],
        );
        tracing::info!(from = %from, to = %to, "order status changed");
        Ok(event)
    }

    /// A transition a person asked for (a customer confirming, a manager shipping, a production
    /// step). Such work starts a new trace, so the current span first links to the trace of the
    /// order's previous work; then the move is made as in [`OrderBook::transition`].
    pub async fn decide(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        change: Change,
    ) -> Result<StatusChanged, TransitionFailure> {
        let current = self
            .get(tx, order_id)
            .await?
            .ok_or(TransitionFailure::NotFound(order_id))?;
        current.link_current_span();
        self.transition(tx, order_id, change).await
    }

    /// Follows another service's move when it is a step forward, storing the current span's
    /// context with the order as [`OrderBook::transition`] does; records a step the order
    /// already passed in the history only ([`Observed::Late`]).
    pub async fn observe(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
        change: &StatusChanged,
    ) -> Result<Observed, ReadError> {
        let Some(Locked { status, .. }) = self.lock(tx, envelope.order_id).await? else {
            return Ok(Observed::Unknown);
        };
        spans::record(KeyValue::new(attr::ORDER_STATUS, status.as_str()));
        let forward = OrderStatus::supersedes(change.to, status);
        if forward {
            self.write_status(
                tx,
                envelope.order_id,
                change.to,
                change.price.as_ref(),
                change.reason.as_ref(),
            )
            .await?;
        } else if !change.to.overtaken_by(status)
            || self.has_passed(tx, envelope.order_id, change.to).await?
        {
            return Ok(Observed::Ignored);
        }
        self.record_history(
            tx,
            envelope.order_id,
            Some(change.from),
            change.to,
            &envelope.source,
            change.reason.as_ref(),
            None,
            envelope.occurred_at,
        )
        .await?;
        if !forward {
            return Ok(Observed::Late);
        }
        spans::record(KeyValue::new(attr::ORDER_STATUS, change.to.as_str()));
        Ok(Observed::Applied)
    }

    /// Whether the order's history already shows a move to `status`.
    async fn has_passed(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        status: OrderStatus,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orderbook.history \
                            WHERE order_id = $1 AND to_status = $2)",
        )
        .bind(order_id)
        .bind(status.as_str())
        .fetch_one(&mut *tx)
        .db("SELECT history")
        .await
    }

    /// Reads the order and locks its row until the end of the transaction, so that concurrent
    /// work on the order waits; `None` when the order is not known here. Pass the result to
    /// [`OrderBook::transition_locked`] to move the order later in the same transaction.
    ///
    /// Only the status and the idempotency key are read: a move replaces the price, reason and
    /// trace context rather than reading them, and parsing their JSON on every move would be
    /// for nothing.
    pub async fn lock(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
    ) -> Result<Option<Locked>, ReadError> {
        let row: Option<LockedRow> = sqlx::query_as(
            "SELECT order_id, status, idempotency_key FROM orderbook.orders \
             WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .db("SELECT orders")
        .await?;
        Ok(row.map(Locked::try_from).transpose()?)
    }

    /// Sets the status; a price or reason that comes with it is kept, earlier ones stay otherwise.
    async fn write_status(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        status: OrderStatus,
        price: Option<&Quote>,
        reason: Option<&Reason>,
    ) -> Result<(), sqlx::Error> {
        let json = |v: serde_json::Result<serde_json::Value>| v.expect("plain data serializes");
        sqlx::query(
            "UPDATE orderbook.orders SET status = $2, trace = $3, \
                 price = COALESCE($4, price), reason = COALESCE($5, reason), updated_at = now() \
             WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(status.as_str())
        .bind(current_trace())
        .bind(price.map(|p| json(serde_json::to_value(p))))
        .bind(reason.map(|r| json(serde_json::to_value(r))))
        .execute(&mut *tx)
        .db("UPDATE orders")
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_history(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        from: Option<OrderStatus>,
        to: OrderStatus,
        source: &str,
        reason: Option<&Reason>,
        by: Option<&str>,
        occurred_at: DateTime<Utc>,
    ) -> Result<HistoryEntry, sqlx::Error> {
        // The time as stored (PostgreSQL keeps microseconds), so the entry equals a later read.
        let at = sqlx::query_scalar(
            "INSERT INTO orderbook.history \
             (order_id, from_status, to_status, source, reason_code, reason, actor, occurred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING occurred_at",
        )
        .bind(order_id)
        .bind(from.map(OrderStatus::as_str))
        .bind(to.as_str())
        .bind(source)
        .bind(reason.map(|r| r.code.as_str()))
        .bind(reason.map(|r| r.message.as_str()))
        .bind(by)
        .bind(occurred_at)
        .fetch_one(&mut *tx)
        .db("INSERT history")
        .await?;
        Ok(HistoryEntry {
            from,
            status: to,
            source: source.to_owned(),
            reason: reason.cloned(),
            by: by.map(str::to_owned),
            at,
        })
    }
}

impl Current {
    /// Adds a link from the current span to the trace of the last work on this order: the join
    /// between a new trace started by a person and the order's earlier traces.
    pub fn link_current_span(&self) {
        let previous = from_carrier(&self.trace);
        let previous = previous.span().span_context().clone();
        if previous.is_valid() {
            Context::map_current(|cx| cx.span().add_link(previous, Vec::new()));
        }
    }
}

/// An order's row as [`OrderBook::get`] reads it.
#[derive(sqlx::FromRow)]
struct OrderRow {
    order_id: Uuid,
    status: String,
    idempotency_key: Option<String>,
    /// A [`Quote`], once priced.
    price: Option<serde_json::Value>,
    /// A [`Reason`], once rejected, failed or cancelled.
    reason: Option<serde_json::Value>,
    trace: StoredTrace,
    updated_at: DateTime<Utc>,
}

impl TryFrom<OrderRow> for Current {
    type Error = Corrupt;

    fn try_from(row: OrderRow) -> Result<Self, Corrupt> {
        let id = row.order_id;
        Ok(Self {
            status: parse_column(id, "status", &row.status)?,
            idempotency_key: row.idempotency_key,
            price: row
                .price
                .map(|price| json_column(id, "price", price))
                .transpose()?,
            reason: row
                .reason
                .map(|reason| json_column(id, "reason", reason))
                .transpose()?,
            updated_at: row.updated_at,
            trace: row.trace.0,
        })
    }
}

/// What [`OrderBook::lock`] reads of an order's row.
#[derive(sqlx::FromRow)]
struct LockedRow {
    order_id: Uuid,
    status: String,
    idempotency_key: Option<String>,
}

impl Locked {
    /// The status the order was in when it was locked.
    pub fn status(&self) -> OrderStatus {
        self.status
    }
}

impl TryFrom<LockedRow> for Locked {
    type Error = Corrupt;

    fn try_from(row: LockedRow) -> Result<Self, Corrupt> {
        Ok(Self {
            order_id: row.order_id,
            status: parse_column(row.order_id, "status", &row.status)?,
            idempotency_key: row.idempotency_key,
        })
    }
}

/// A row of `orderbook.history`.
#[derive(sqlx::FromRow)]
struct HistoryRow {
    order_id: Uuid,
    from_status: Option<String>,
    to_status: String,
    source: String,
    reason_code: Option<String>,
    reason: Option<String>,
    actor: Option<String>,
    occurred_at: DateTime<Utc>,
}

impl TryFrom<HistoryRow> for HistoryEntry {
    type Error = Corrupt;

    fn try_from(row: HistoryRow) -> Result<Self, Corrupt> {
        let id = row.order_id;
        // Written from one `Reason`: both columns or neither.
        let reason = match (row.reason_code, row.reason) {
            (Some(code), Some(message)) => Some(Reason { code, message }),
            (None, None) => None,
            (code, message) => {
                return Err(Corrupt::new(
                    id,
                    "reason",
                    format!("code {code:?}, message {message:?}"),
                    "a reason needs both its code and its message",
                ));
            }
        };
        Ok(Self {
            from: row
                .from_status
                .map(|from| parse_column(id, "from_status", &from))
                .transpose()?,
            status: parse_column(id, "to_status", &row.to_status)?,
            source: row.source,
            reason,
            by: row.actor,
            at: row.occurred_at,
        })
    }
}

impl From<TransitionFailure> for platform::error::ApiError {
    fn from(err: TransitionFailure) -> Self {
        match err {
            TransitionFailure::NotFound(id) => Self::order_not_found(id),
            TransitionFailure::Illegal(err) => {
                Self::conflict("illegal_transition", err.to_string())
            }
            TransitionFailure::Database(err) => err.into(),
            TransitionFailure::Corrupt(err) => err.into(),
        }
    }
}
