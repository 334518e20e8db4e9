//! The support desk: what the page needs to answer "where is my order?" for people who are not
//! tracing experts — finding an order by any id people quote ([`search`]), its story told in
//! words ([`story`]), its traces as trees with the noise folded ([`trees`], served with the
//! journey), and the whole floor live ([`floor`]). [`words`] holds the vocabulary.
//!
//! Every route here only reads, and needs the `support` role like the other reads
//! ([`crate::api::router`] puts them behind it).

pub mod floor;
pub mod search;
pub mod story;
pub mod trees;
pub mod words;

use std::convert::Infallible;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::sse::{KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use platform::error::ApiError;
use platform::extract::OrderId;
use serde::Deserialize;

use crate::api::ApiState;
use crate::identity;
use crate::incidents;
use crate::store::queries;

/// Most telling spans a story is told from (transitions first).
pub const MAX_STORY_SPANS: i64 = 2_000;
/// Most incidents a story lists.
const MAX_STORY_INCIDENTS: i64 = 20;

/// The desk's routes (all reads).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/search", get(find))
        .route("/api/orders/{order_id}/story", get(tell))
        .route("/api/floor", get(floor_now))
        .route("/api/floor/events", get(floor_events))
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

/// `GET /api/search?q=…`.
async fn find(
    State(state): State<ApiState>,
    Query(query): Query<SearchQuery>,
) -> Result<axum::Json<search::Answer>, ApiError> {
    let query = search::Query::parse(query.q.as_deref().unwrap_or_default())
        .map_err(|refusal| ApiError::bad_request("invalid_query", refusal.to_string()))?;
    let retention = state.config.get().retention_days;
    Ok(axum::Json(
        search::search(&state.pool, &query, retention).await?,
    ))
}

/// `GET /api/orders/{order_id}/story`.
async fn tell(
    State(state): State<ApiState>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<story::Story>, ApiError> {
    // Gaps before the order, as the journey reads them (see `api::journey`).
    let gaps = queries::gaps(&state.pool, order_id).await?;
    let order = queries::order(&state.pool, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "order_not_found",
            message: format!(
                "order-watch has seen no progress of order {order_id}; search for it by another id"
            ),
        })?;
    let spans = queries::telling_spans(&state.pool, order_id, MAX_STORY_SPANS).await?;
    let identity = identity::of_order(&state.pool, order_id).await?;
    let incidents = incidents::of_order(&state.pool, order_id, MAX_STORY_INCIDENTS).await?;
    let config = state.config.get();
    Ok(axum::Json(story::tell(story::Facts {
        state: &order,
        identity,
        spans: &spans,
        gaps: &gaps,
        incidents,
        thresholds: &config.thresholds,
        now: state.clock.now(),
    })))
}

/// `GET /api/floor`.
async fn floor_now(State(state): State<ApiState>) -> Result<axum::Json<floor::Floor>, ApiError> {
    Ok(axum::Json(state.floor.read().await?))
}

/// `GET /api/floor/events`: the floor as server-sent events, `floor` every
/// [`floor::FLOOR_INTERVAL`] (or `unavailable` while it cannot be read), starting with the floor
/// now.
async fn floor_events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<axum::response::sse::Event, Infallible>>> {
    let first = state.floor.read().await;
    Sse::new(state.floor.stream(first)).keep_alive(KeepAlive::default())
}
