//! `POST /api/orders/{order_id}/republish`: this service sends again the messages by which it
//! told the others about the order — its latest status event and the message that introduced
//! the order to the next system — each with its original message id, through the outbox
//! ([`messaging::outbox::republish`]). The consumers that applied a message drop the copy, the
//! one that missed it applies it: the repair reconciliation asks of the owner of an order's
//! latest status when another system lags behind it or lacks the order.
//!
//! Behind the role `status-republisher` (order-watch's service identity) or `admin`
//! ([`access::Need::REPUBLISH`]); each request is logged with who asked and what went out. 404
//! `order_not_found` for an order this service does not know; 409 `nothing_to_republish` when
//! its outbox holds no message of the order any more (deleted after the outbox retention).

use axum::extract::{FromRef, State};
use axum::routing::post;
use axum::{Extension, Router};
use domain::held::{Republished, RepublishedMessage};
use platform::error::ApiError;
use platform::extract::OrderId;
use sqlx::PgPool;
use telemetry::db::Traced;

/// The route, for a service whose router state holds its database pool.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
{
    Router::new().route("/api/orders/{order_id}/republish", post(republish))
}

async fn republish(
    State(pool): State<PgPool>,
    caller: Option<Extension<access::Identity>>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<Republished>, ApiError> {
    let mut tx = pool.begin().await?;
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orderbook.orders WHERE order_id = $1)")
            .bind(order_id)
            .fetch_one(&mut *tx)
            .db("SELECT orders")
            .await?;
    if !known {
        return Err(ApiError::order_not_found(order_id));
    }
    let requeued = messaging::outbox::republish(&mut tx, order_id).await?;
    if requeued.is_empty() {
        return Err(ApiError::conflict(
            "nothing_to_republish",
            format!(
                "the outbox holds no message of order {order_id} any more: they are deleted after \
                 HALLMARK_OUTBOX_RETENTION"
            ),
        ));
    }
    tx.commit().await?;
    let caller = caller.map_or_else(
        || "anyone (open API)".to_owned(),
        |Extension(identity)| identity.audit_name(),
    );
    let kinds: Vec<&str> = requeued.iter().map(|m| m.routing_key.as_str()).collect();
    tracing::info!(order_id = %order_id, caller = %caller, messages = ?kinds,
        "the order's messages put back into the outbox on request");
    Ok(axum::Json(Republished {
        order_id,
        messages: requeued
            .into_iter()
            .map(|m| RepublishedMessage {
                message_id: m.message_id,
                kind: m.kind,
                routing_key: m.routing_key,
                published_at: m.published_at,
            })
            .collect(),
    }))
}
