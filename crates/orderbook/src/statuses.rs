//! `GET /api/orders/statuses?ids=…`: the status this service holds for each of up to
//! [`MAX_IDS`] orders ([`domain::held`] is the contract). order-watch asks the system that owns
//! an order's stage before it calls the order stuck; reconciliation compares the systems' answers.
//!
//! The request names no single order in its path, so its spans belong to no order's journey:
//! asking about orders is not activity of theirs.

use axum::Router;
use axum::extract::{FromRef, Query, State};
use axum::routing::get;
use chrono::{DateTime, Utc};
use domain::held::{HeldStatus, HeldStatuses, MAX_IDS, STATUSES_PATH};
use platform::db::{Corrupt, parse_column};
use platform::error::ApiError;
use serde::Deserialize;
use sqlx::PgPool;
use telemetry::db::Traced;
use uuid::Uuid;

/// The listing, for a service whose router state holds its database pool.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
{
    Router::new().route(STATUSES_PATH, get(statuses))
}

#[derive(Debug, Deserialize)]
struct IdsQuery {
    /// Order ids separated by commas.
    ids: Option<String>,
}

/// The ids of a listing request, each a UUID, at least one and at most [`MAX_IDS`].
fn parse_ids(text: Option<&str>) -> Result<Vec<Uuid>, ApiError> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Err(ApiError::bad_request(
            "missing_ids",
            "name the orders in `ids`, separated by commas",
        ));
    }
    let ids = text
        .split(',')
        .map(|id| {
            let id = id.trim();
            Uuid::try_parse(id).map_err(|_| {
                let shown: String = id.chars().take(40).collect();
                ApiError::bad_request(
                    "invalid_order_id",
                    format!("`{shown}` in `ids` is not an order id (a UUID)"),
                )
            })
        })
        .take(MAX_IDS + 1)
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad_request(
            "too_many_ids",
            format!("ask about at most {MAX_IDS} orders at once"),
        ));
    }
    Ok(ids)
}

async fn statuses(
    State(pool): State<PgPool>,
    Query(query): Query<IdsQuery>,
) -> Result<axum::Json<HeldStatuses>, ApiError> {
    let ids = parse_ids(query.ids.as_deref())?;
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT order_id, status, updated_at FROM orderbook.orders WHERE order_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .db("SELECT orders")
    .await?;
    let orders = rows
        .into_iter()
        .map(HeldStatus::try_from)
        .collect::<Result<Vec<_>, Corrupt>>()?;
    Ok(axum::Json(HeldStatuses { orders }))
}

/// What the listing reads of an order's row.
#[derive(sqlx::FromRow)]
struct HeldRow {
    order_id: Uuid,
    status: String,
    updated_at: DateTime<Utc>,
}

impl TryFrom<HeldRow> for HeldStatus {
    type Error = Corrupt;

    fn try_from(row: HeldRow) -> Result<Self, Corrupt> {
        Ok(Self {
            order_id: row.order_id,
            status: parse_column(row.order_id, "status", &row.status)?,
            updated_at: row.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_separated_by_commas_and_bounded() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(parse_ids(Some(&format!("{a}, {b}"))).unwrap(), vec![a, b]);
        let code = |text: Option<&str>| match parse_ids(text) {
            Err(ApiError::BadRequest { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(None), "missing_ids");
        assert_eq!(code(Some(" ")), "missing_ids");
        assert_eq!(code(Some(&format!("{a},nope"))), "invalid_order_id");
        assert_eq!(code(Some(&format!("{a},"))), "invalid_order_id");
        let many = vec![a.to_string(); MAX_IDS + 1].join(",");
        assert_eq!(code(Some(&many)), "too_many_ids");
        let enough = vec![a.to_string(); MAX_IDS].join(",");
        assert_eq!(parse_ids(Some(&enough)).unwrap().len(), MAX_IDS);
    }
}
