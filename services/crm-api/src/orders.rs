//! The manager endpoints: order list and details, shipping and delivery.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use domain::events::Reason;
use domain::pricing::Quote;
use domain::{OrderStatus, Stage};
use orderbook::{Change, HistoryEntry};
use platform::error::ApiError;
use platform::extract::OrderId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use telemetry::db::Traced;
use uuid::Uuid;

use crate::startup::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/orders", get(list))
        .route("/api/orders/{order_id}", get(show))
        .route("/api/orders/{order_id}/ship", post(ship))
        .route("/api/orders/{order_id}/deliver", post(deliver))
}

const MAX_PAGE: i64 = 200;

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Only orders in this status.
    status: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Cursor: only orders created before this order (the `next` of the previous page).
    before: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct OrderSummary {
    order_id: Uuid,
    status: OrderStatus,
    stage: Stage,
    customer_name: String,
    material: String,
    external_order_id: Option<String>,
    partner_id: Option<String>,
    total: Option<f64>,
    currency: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct Page {
    orders: Vec<OrderSummary>,
    /// Pass as `before` to get the next page; absent on the last page.
    next: Option<Uuid>,
}

fn parse_status(text: &str) -> Result<OrderStatus, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            "unknown_status",
            format!(
                "`{text}` is not a status; use one of: {}",
                OrderStatus::ALL.map(|s| s.as_str()).join(", ")
            ),
        )
    })
}

fn quote(value: Option<serde_json::Value>) -> Option<Quote> {
    value.and_then(|v| serde_json::from_value(v).ok())
}

/// `GET /api/orders`: newest first, cursor-paged.
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Page>, ApiError> {
    let status = query.status.as_deref().map(parse_status).transpose()?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        ));
    }
    // UUIDv7 ids sort by creation time, so the id is the cursor.
    let rows = sqlx::query(
        "SELECT o.id, o.customer_name, o.material, o.external_id, o.partner_id, o.created_at, \
                b.status, b.price, b.updated_at \
         FROM orders o JOIN orderbook.orders b ON b.order_id = o.id \
         WHERE ($1::text IS NULL OR b.status = $1) AND ($2::uuid IS NULL OR o.id < $2) \
         ORDER BY o.id DESC LIMIT $3",
    )
    .bind(status.map(OrderStatus::as_str))
    .bind(query.before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .db("SELECT orders")
    .await?;
    let mut orders = rows
        .iter()
        .map(|row| {
            let status = parse_status(row.get::<&str, _>("status"))?;
            let price = quote(row.get("price"));
            Ok(OrderSummary {
                order_id: row.get("id"),
                status,
                stage: status.stage(),
                customer_name: row.get("customer_name"),
                material: row.get("material"),
                external_order_id: row.get("external_id"),
                partner_id: row.get("partner_id"),
                total: price.as_ref().map(|p| p.total_cents as f64 / 100.0),
                currency: price.map(|p| p.currency),
                created_at: row.get("created_at"),
                updated_at: row.get("updated_at"),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let next = if orders.len() as i64 > limit {
        orders.truncate(limit as usize);
        orders.last().map(|o| o.order_id)
    } else {
        None
    };
    Ok(axum::Json(Page { orders, next }))
}

#[derive(Debug, Serialize)]
struct CustomerView {
    id: Uuid,
    name: String,
    email: String,
    phone: Option<String>,
}

#[derive(Debug, Serialize)]
struct OrderDetail {
    order_id: Uuid,
    status: OrderStatus,
    stage: Stage,
    customer: CustomerView,
    source: String,
    partner_id: Option<String>,
    external_order_id: Option<String>,
    material: String,
    size: Option<String>,
    comment: Option<String>,
    model_key: String,
    model_file_name: String,
    price: Option<Quote>,
    reason: Option<Reason>,
    tracking_number: Option<String>,
    history: Vec<HistoryEntry>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

async fn load(state: &AppState, order_id: Uuid) -> Result<OrderDetail, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let current = state
        .orderbook
        .get(&mut conn, order_id)
        .await?
        .ok_or_else(|| ApiError::order_not_found(order_id))?;
    let row = sqlx::query("SELECT * FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .db("SELECT orders")
        .await?
        .ok_or_else(|| ApiError::order_not_found(order_id))?;
    let history = state.orderbook.history(&mut conn, order_id).await?;
    Ok(OrderDetail {
        order_id,
        status: current.status,
        stage: current.status.stage(),
        customer: CustomerView {
            id: row.get("customer_id"),
            name: row.get("customer_name"),
            email: row.get("customer_email"),
            phone: row.get("customer_phone"),
        },
        source: row.get("source"),
        partner_id: row.get("partner_id"),
        external_order_id: row.get("external_id"),
        material: row.get("material"),
        size: row.get("size"),
        comment: row.get("comment"),
        model_key: row.get("model_key"),
        model_file_name: row.get("model_file_name"),
        price: current.price,
        reason: current.reason,
        tracking_number: row.get("tracking_number"),
        history,
        created_at: row.get("created_at"),
        updated_at: current.updated_at,
    })
}

/// `GET /api/orders/{order_id}`.
async fn show(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<OrderDetail>, ApiError> {
    Ok(axum::Json(load(&state, order_id).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShipRequest {
    tracking_number: Option<String>,
}

/// `POST /api/orders/{order_id}/ship`: the piece left the workshop. Body optional.
async fn ship(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
    body: Bytes,
) -> Result<axum::Json<OrderDetail>, ApiError> {
    let request: ShipRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ShipRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not a valid shipment: {e}"),
            )
        })?
    };
    let tracking = request
        .tracking_number
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if tracking.as_ref().is_some_and(|t| t.len() > 100) {
        return Err(ApiError::unprocessable(
            "invalid_tracking_number",
            "`tracking_number` is longer than 100 characters",
        ));
    }
    let mut tx = state.pool.begin().await?;
    step(&state, &mut tx, order_id, OrderStatus::Shipped).await?;
    if let Some(tracking) = tracking {
        sqlx::query("UPDATE orders SET tracking_number = $2 WHERE id = $1")
            .bind(order_id)
            .bind(tracking)
            .execute(&mut *tx)
            .db("UPDATE orders")
            .await?;
    }
    tx.commit().await?;
    Ok(axum::Json(load(&state, order_id).await?))
}

/// `POST /api/orders/{order_id}/deliver`: the customer has the piece.
async fn deliver(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<OrderDetail>, ApiError> {
    let mut tx = state.pool.begin().await?;
    step(&state, &mut tx, order_id, OrderStatus::Delivered).await?;
    tx.commit().await?;
    Ok(axum::Json(load(&state, order_id).await?))
}

/// A manager's step: new work by a person, linked to the order's earlier trace.
async fn step(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    order_id: Uuid,
    to: OrderStatus,
) -> Result<(), ApiError> {
    state.orderbook.decide(tx, order_id, Change::to(to)).await?;
    Ok(())
}
