//! The manager endpoints: order list and details (the `support` role and above: they show
//! customers' contact data), shipping and delivery (the `workshop` role, or `admin`).

use std::sync::Arc;

use access::{Gate, Identity, Need};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use domain::events::Reason;
use domain::pricing::Quote;
use domain::{OrderStatus, Stage};
use orderbook::{Change, HistoryEntry};
use platform::db::{Corrupt, json_column, parse_column};
use platform::error::ApiError;
use platform::extract::OrderId;
use serde::{Deserialize, Serialize};
use telemetry::db::Traced;
use uuid::Uuid;

use crate::startup::AppState;

pub(crate) fn router(gate: &Arc<Gate>) -> Router<AppState> {
    let read = Router::new()
        .route("/api/orders", get(list))
        .route("/api/orders/{order_id}", get(show));
    let floor = Router::new()
        .route("/api/orders/{order_id}/ship", post(ship))
        .route("/api/orders/{order_id}/deliver", post(deliver));
    gate.guard(Need::READ, read)
        .merge(gate.guard(Need::WORKSHOP, floor))
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

/// A row of the order list: CRM's order joined with its status in the order book.
#[derive(sqlx::FromRow)]
struct SummaryRow {
    id: Uuid,
    customer_name: String,
    material: String,
    external_id: Option<String>,
    partner_id: Option<String>,
    created_at: DateTime<Utc>,
    status: String,
    /// A [`Quote`], once priced.
    price: Option<serde_json::Value>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<SummaryRow> for OrderSummary {
    type Error = Corrupt;

    fn try_from(row: SummaryRow) -> Result<Self, Corrupt> {
        let status: OrderStatus = parse_column(row.id, "status", &row.status)?;
        let price: Option<Quote> = row
            .price
            .map(|price| json_column(row.id, "price", price))
            .transpose()?;
        Ok(Self {
            order_id: row.id,
            status,
            stage: status.stage(),
            customer_name: row.customer_name,
            material: row.material,
            external_order_id: row.external_id,
            partner_id: row.partner_id,
            total: price.as_ref().map(|p| p.total_cents as f64 / 100.0),
            currency: price.map(|p| p.currency),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
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
    let rows: Vec<SummaryRow> = sqlx::query_as(
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
        .into_iter()
        .map(OrderSummary::try_from)
        .collect::<Result<Vec<_>, Corrupt>>()?;
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

/// CRM's own row of an order, for its details.
#[derive(sqlx::FromRow)]
struct DetailRow {
    customer_id: Uuid,
    customer_name: String,
    customer_email: String,
    customer_phone: Option<String>,
    source: String,
    partner_id: Option<String>,
    external_id: Option<String>,
    material: String,
    size: Option<String>,
    comment: Option<String>,
    model_key: String,
    model_file_name: String,
    tracking_number: Option<String>,
    created_at: DateTime<Utc>,
}

async fn load(state: &AppState, order_id: Uuid) -> Result<OrderDetail, ApiError> {
    let mut conn = platform::db::snapshot(&state.pool).await?;
    let current = state
        .orderbook
        .get(&mut conn, order_id)
        .await?
        .ok_or_else(|| ApiError::order_not_found(order_id))?;
    let row: DetailRow = sqlx::query_as(
        "SELECT customer_id, customer_name, customer_email, customer_phone, source, partner_id, \
             external_id, material, size, comment, model_key, model_file_name, \
             tracking_number, created_at \
         FROM orders WHERE id = $1",
    )
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
            id: row.customer_id,
            name: row.customer_name,
            email: row.customer_email,
            phone: row.customer_phone,
        },
        source: row.source,
        partner_id: row.partner_id,
        external_order_id: row.external_id,
        material: row.material,
        size: row.size,
        comment: row.comment,
        model_key: row.model_key,
        model_file_name: row.model_file_name,
        price: current.price,
        reason: current.reason,
        tracking_number: row.tracking_number,
        history,
        created_at: row.created_at,
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
    caller: Option<Extension<Identity>>,
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
    step(&state, &mut tx, order_id, OrderStatus::Shipped, caller).await?;
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
    caller: Option<Extension<Identity>>,
) -> Result<axum::Json<OrderDetail>, ApiError> {
    let mut tx = state.pool.begin().await?;
    step(&state, &mut tx, order_id, OrderStatus::Delivered, caller).await?;
    tx.commit().await?;
    Ok(axum::Json(load(&state, order_id).await?))
}

/// A manager's step: new work by a person, linked to the order's earlier trace, and recorded in
/// the history under their name (when the service takes tokens).
async fn step(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    order_id: Uuid,
    to: OrderStatus,
    caller: Option<Extension<Identity>>,
) -> Result<(), ApiError> {
    let mut change = Change::to(to);
    if let Some(Extension(person)) = caller {
        change = change.by(person.audit_name());
    }
    state.orderbook.decide(tx, order_id, change).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, price: Option<serde_json::Value>) -> SummaryRow {
        SummaryRow {
            id: Uuid::now_v7(),
            customer_name: "Ada".into(),
            material: "gold_750".into(),
            external_id: None,
            partner_id: None,
            created_at: Utc::now(),
            status: status.into(),
            price,
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_listed_order_reads_its_status_and_price() {
        let price = serde_json::json!({
            "volume_mm3": 8000.0, "metal_weight_g": 123.2, "metal_cents": 100, "labour_cents": 50,
            "total_cents": 12345, "currency": "EUR"
        });
        let summary = OrderSummary::try_from(row("priced", Some(price))).unwrap();
        assert_eq!(summary.stage, Stage::CustomerConfirmation);
        assert_eq!(
            (summary.total, summary.currency.as_deref()),
            (Some(123.45), Some("EUR"))
        );
    }

    #[test]
    fn a_listed_order_with_a_status_no_release_knows_is_an_error_naming_it() {
        let row = row("teleported", None);
        let order = row.id;
        let err = OrderSummary::try_from(row).unwrap_err();
        assert_eq!((err.order_id, err.column), (order, "status"));
        assert_eq!(
            err.to_string(),
            format!("order {order} holds a malformed status: \"teleported\"")
        );
    }

    #[test]
    fn a_listed_order_with_a_malformed_price_is_an_error_not_an_order_without_one() {
        let row = row("priced", Some(serde_json::json!({"total": "a lot"})));
        let order = row.id;
        let err = OrderSummary::try_from(row).unwrap_err();
        assert_eq!((err.order_id, err.column), (order, "price"));
        assert!(err.value.contains("a lot"), "{err}");
    }
}
