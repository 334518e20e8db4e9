//! Shop's order rows: writing a new order with its outbox message, and reading the order view.

use chrono::{DateTime, Utc};
use domain::events::{Customer, Envelope, Event, ModelRef, OrderCreated};
use domain::pricing::Quote;
use domain::{OrderStatus, Stage};
use opentelemetry::KeyValue;
use orderbook::HistoryEntry;
use serde::Serialize;
use sqlx::PgPool;
use telemetry::db::Traced;
use telemetry::{attr, spans};
use uuid::Uuid;

use super::intake::Upload;
use crate::startup::AppState;
use platform::error::ApiError;

/// Who holds an idempotency key already.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyOwner {
    #[sqlx(rename = "id")]
    pub order_id: Uuid,
    pub request_hash: String,
}

pub(crate) enum Created {
    /// The order as it was written, which is what reading it back would show at this moment.
    New(Box<OrderView>),
    /// Another request with the same key committed first.
    KeyTaken,
}

pub(crate) async fn find_by_key(
    pool: &PgPool,
    scope: &str,
    key: &str,
) -> Result<Option<KeyOwner>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, request_hash FROM orders \
         WHERE idempotency_scope = $1 AND idempotency_key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(pool)
    .db("SELECT orders")
    .await
}

/// Stores the model, then the customer, the order, its first status and the `order.created`
/// message in one transaction. A failure anywhere leaves no order behind (the stored model is
/// removed again), so a client can simply retry.
pub(crate) async fn create(
    state: &AppState,
    order_id: Uuid,
    key: &str,
    scope: &str,
    upload: &Upload,
) -> Result<Created, ApiError> {
    let model_key = ModelRef::key_for(order_id, &upload.model.file_name);
    state
        .storage
        .put(&model_key, upload.model.bytes.clone())
        .await
        .map_err(|err| ApiError::Unavailable {
            code: "storage_unavailable",
            cause: Box::new(err),
        })?;
    let result = write(state, order_id, key, scope, upload, &model_key).await;
    if !matches!(result, Ok(Created::New(_)))
        && let Err(err) = state.storage.delete(&model_key).await
    {
        tracing::warn!(error = %err, key = %model_key, "cannot remove the model of an order that was not created");
    }
    result
}

async fn write(
    state: &AppState,
    order_id: Uuid,
    key: &str,
    scope: &str,
    upload: &Upload,
    model_key: &str,
) -> Result<Created, ApiError> {
    let order = &upload.order;
    let mut tx = state.pool.begin().await?;
    let customer_id: Uuid = sqlx::query_scalar(
        "INSERT INTO customers (id, email, name, phone) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name, \
             phone = COALESCE(EXCLUDED.phone, customers.phone), updated_at = now() \
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(&order.email)
    .bind(&order.name)
    .bind(&order.phone)
    .fetch_one(&mut *tx)
    .db("INSERT customers")
    .await?;
    spans::record(KeyValue::new(attr::CUSTOMER_ID, customer_id.to_string()));

    // `created_at` is the transaction's `now()`, which is also the `updated_at` the order book
    // gives the order in this transaction.
    let inserted = sqlx::query_scalar::<_, DateTime<Utc>>(
        "INSERT INTO orders (id, idempotency_key, idempotency_scope, request_hash, customer_id, \
             source, partner_id, external_id, material, size, comment, model_key, \
             model_file_name, model_size_bytes, model_sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         RETURNING created_at",
    )
    .bind(order_id)
    .bind(key)
    .bind(scope)
    .bind(&upload.request_hash)
    .bind(customer_id)
    .bind(order.source.as_str())
    .bind(&order.partner_id)
    .bind(&order.external_id)
    .bind(order.material.as_str())
    .bind(&order.size)
    .bind(&order.comment)
    .bind(model_key)
    .bind(&upload.model.file_name)
    .bind(upload.model.bytes.len() as i64)
    .bind(&upload.model.sha256)
    .fetch_one(&mut *tx)
    .db("INSERT orders")
    .await;
    let created_at = match inserted {
        Ok(created_at) => created_at,
        Err(err) if platform::db::is_unique_violation(&err, Some("orders_idempotency")) => {
            return Ok(Created::KeyTaken);
        }
        Err(err) => return Err(err.into()),
    };

    let now = Utc::now();
    let first_step = state
        .orderbook
        .open(
            &mut tx,
            order_id,
            OrderStatus::Created,
            Some(key),
            crate::SERVICE_NAME,
            now,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("order {order_id} is in the order book already"))?;
    let event = OrderCreated {
        external_id: order.external_id.clone(),
        source: order.source,
        partner_id: order.partner_id.clone(),
        customer: Customer {
            id: customer_id,
            name: order.name.clone(),
            email: order.email.clone(),
            phone: order.phone.clone(),
        },
        material: order.material,
        size: order.size.clone(),
        comment: order.comment.clone(),
        model: ModelRef {
            key: model_key.to_owned(),
            file_name: upload.model.file_name.clone(),
            size_bytes: upload.model.bytes.len() as u64,
            sha256: upload.model.sha256.clone(),
        },
    };
    let envelope = Envelope::new(
        order_id,
        key,
        crate::SERVICE_NAME,
        now,
        Event::OrderCreated(event),
    );
    messaging::enqueue(&mut tx, &envelope).await?;
    tx.commit().await?;
    Ok(Created::New(Box::new(OrderView {
        order_id,
        status: OrderStatus::Created,
        stage: OrderStatus::Created.stage(),
        material: order.material.as_str().to_owned(),
        size: order.size.clone(),
        comment: order.comment.clone(),
        external_order_id: order.external_id.clone(),
        partner_id: order.partner_id.clone(),
        source: order.source.as_str().to_owned(),
        customer_id,
        model: ModelView {
            file_name: upload.model.file_name.clone(),
            size_bytes: upload.model.bytes.len() as i64,
            sha256: upload.model.sha256.clone(),
        },
        price: None,
        rejection_code: None,
        rejection_reason: None,
        history: vec![first_step],
        created_at,
        updated_at: created_at,
    })))
}

/// The price as customers see it: euros, not cents.
#[derive(Debug, Serialize)]
pub(crate) struct PriceView {
    pub total: f64,
    pub currency: String,
    pub metal: f64,
    pub labour: f64,
    pub volume_mm3: f64,
    pub metal_weight_g: f64,
}

impl From<Quote> for PriceView {
    fn from(quote: Quote) -> Self {
        let euros = |cents: i64| cents as f64 / 100.0;
        Self {
            total: euros(quote.total_cents),
            currency: quote.currency,
            metal: euros(quote.metal_cents),
            labour: euros(quote.labour_cents),
            volume_mm3: quote.volume_mm3,
            metal_weight_g: quote.metal_weight_g,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ModelView {
    pub file_name: String,
    pub size_bytes: i64,
    pub sha256: String,
}

/// `GET /api/orders/{id}`: everything a customer may see about an order. Contact data is not
/// repeated here.
#[derive(Debug, Serialize)]
pub(crate) struct OrderView {
    pub order_id: Uuid,
    pub status: OrderStatus,
    pub stage: Stage,
    pub material: String,
    pub size: Option<String>,
    pub comment: Option<String>,
    pub external_order_id: Option<String>,
    pub partner_id: Option<String>,
    pub source: String,
    pub customer_id: Uuid,
    pub model: ModelView,
    pub price: Option<PriceView>,
    pub rejection_code: Option<String>,
    pub rejection_reason: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Shop's own row of an order, for the order view.
#[derive(sqlx::FromRow)]
struct OrderRow {
    material: String,
    size: Option<String>,
    comment: Option<String>,
    external_id: Option<String>,
    partner_id: Option<String>,
    source: String,
    customer_id: Uuid,
    model_file_name: String,
    model_size_bytes: i64,
    model_sha256: String,
    created_at: DateTime<Utc>,
}

pub(crate) async fn load(state: &AppState, order_id: Uuid) -> Result<Option<OrderView>, ApiError> {
    let mut conn = platform::db::snapshot(&state.pool).await?;
    let Some(current) = state.orderbook.get(&mut conn, order_id).await? else {
        return Ok(None);
    };
    let Some(row) = sqlx::query_as::<_, OrderRow>(
        "SELECT material, size, comment, external_id, partner_id, source, customer_id, \
             model_file_name, model_size_bytes, model_sha256, created_at \
         FROM orders WHERE id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .db("SELECT orders")
    .await?
    else {
        return Ok(None);
    };
    let history = state.orderbook.history(&mut conn, order_id).await?;
    let rejection = current
        .reason
        .filter(|_| matches!(current.status, OrderStatus::Rejected | OrderStatus::Failed));
    Ok(Some(OrderView {
        order_id,
        status: current.status,
        stage: current.status.stage(),
        material: row.material,
        size: row.size,
        comment: row.comment,
        external_order_id: row.external_id,
        partner_id: row.partner_id,
        source: row.source,
        customer_id: row.customer_id,
        model: ModelView {
            file_name: row.model_file_name,
            size_bytes: row.model_size_bytes,
            sha256: row.model_sha256,
        },
        price: current.price.map(PriceView::from),
        rejection_code: rejection.as_ref().map(|r| r.code.clone()),
        rejection_reason: rejection.map(|r| r.message),
        history,
        created_at: row.created_at,
        updated_at: current.updated_at,
    }))
}
