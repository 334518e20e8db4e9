//! The workshop endpoints: an order's production view (the `support` role and above) and the
//! production steps (the `workshop` role, or `admin`).

use std::sync::Arc;

use access::{Gate, Identity, Need};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use domain::events::Reason;
use domain::pricing::Quote;
use domain::{OrderStatus, Stage};
use orderbook::{Change, HistoryEntry};
use platform::error::ApiError;
use platform::extract::{Json, OrderId};
use serde::{Deserialize, Serialize};
use telemetry::db::Traced;
use uuid::Uuid;

use crate::startup::AppState;

pub(crate) fn router(gate: &Arc<Gate>) -> Router<AppState> {
    let read = Router::new().route("/api/orders/{order_id}", get(show));
    let floor = Router::new().route("/api/orders/{order_id}/production", post(production_step));
    gate.guard(Need::READ, read)
        .merge(gate.guard(Need::WORKSHOP, floor))
}

#[derive(Debug, Serialize)]
struct CalcView {
    state: String,
    attempts: i32,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct OrderView {
    order_id: Uuid,
    status: OrderStatus,
    stage: Stage,
    material: String,
    model_key: String,
    price: Option<Quote>,
    reason: Option<Reason>,
    calculation: Option<CalcView>,
    history: Vec<HistoryEntry>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// MES's row of an order with its price calculation, if one was queued.
#[derive(sqlx::FromRow)]
struct ProductionRow {
    material: String,
    model_key: String,
    created_at: DateTime<Utc>,
    calc_state: Option<String>,
    calc_attempts: Option<i32>,
    calc_last_error: Option<String>,
}

async fn load(state: &AppState, order_id: Uuid) -> Result<OrderView, ApiError> {
    let mut conn = platform::db::snapshot(&state.pool).await?;
    let current = state
        .orderbook
        .get(&mut conn, order_id)
        .await?
        .ok_or_else(|| ApiError::order_not_found(order_id))?;
    let row: ProductionRow = sqlx::query_as(
        "SELECT o.material, o.model_key, o.created_at, j.state AS calc_state, \
             j.attempts AS calc_attempts, j.last_error AS calc_last_error \
         FROM orders o LEFT JOIN calc_jobs j ON j.order_id = o.id WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .db("SELECT orders")
    .await?
    .ok_or_else(|| ApiError::order_not_found(order_id))?;
    let history = state.orderbook.history(&mut conn, order_id).await?;
    // `state` and `attempts` are NOT NULL: both are NULL only when the order has no job.
    let calculation = row
        .calc_state
        .zip(row.calc_attempts)
        .map(|(state, attempts)| CalcView {
            state,
            attempts,
            last_error: row.calc_last_error,
        });
    Ok(OrderView {
        order_id,
        status: current.status,
        stage: current.status.stage(),
        material: row.material,
        model_key: row.model_key,
        price: current.price,
        reason: current.reason,
        calculation,
        history,
        created_at: row.created_at,
        updated_at: current.updated_at,
    })
}

/// `GET /api/orders/{order_id}`.
async fn show(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<OrderView>, ApiError> {
    Ok(axum::Json(load(&state, order_id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepRequest {
    /// `in_production`, `quality_check` or `ready`.
    step: String,
}

/// The statuses the workshop floor reports.
const STEPS: [OrderStatus; 3] = [
    OrderStatus::InProduction,
    OrderStatus::QualityCheck,
    OrderStatus::Ready,
];

/// `POST /api/orders/{order_id}/production`: a production step, reported by a person; its trace
/// links to the order's earlier one.
async fn production_step(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
    caller: Option<Extension<Identity>>,
    Json(request): Json<StepRequest>,
) -> Result<axum::Json<OrderView>, ApiError> {
    let step = request
        .step
        .parse::<OrderStatus>()
        .ok()
        .filter(|s| STEPS.contains(s))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_step",
                format!(
                    "`{}` is not a production step; use one of: in_production, quality_check, ready",
                    request.step
                ),
            )
        })?;
    let mut change = Change::to(step);
    if let Some(Extension(person)) = caller {
        change = change.by(person.audit_name());
    }
    let mut tx = state.pool.begin().await?;
    state.orderbook.decide(&mut tx, order_id, change).await?;
    tx.commit().await?;
    Ok(axum::Json(load(&state, order_id).await?))
}
