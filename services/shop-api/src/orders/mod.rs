//! The order endpoints.

mod caller;
mod intake;
mod limit;
mod store;
mod token;

pub use limit::{PartnerLimits, Rate};
pub use token::OrderTokens;

use axum::Router;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use domain::OrderStatus;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use orderbook::Change;
use platform::extract::OrderId;
use telemetry::propagation::{Activity, with_order};
use telemetry::{attr, spans};
use uuid::Uuid;

use crate::startup::AppState;
use caller::{Action, Caller};
use platform::error::ApiError;
use store::{Created, OrderView};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/orders", post(create))
        .route("/api/orders/{order_id}", get(show))
        .route("/api/orders/{order_id}/confirm", post(confirm))
        .route("/api/orders/{order_id}/cancel", post(cancel))
}

/// `POST /api/orders`: 201 with the new order, or the original answer again for a repeated
/// `Idempotency-Key` with the same request (marked `Idempotent-Replayed: true`).
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let caller = Caller::of(&state, &headers).await?;
    let key = intake::idempotency_key(&headers)?;
    let mut upload = intake::read(multipart, state.max_model_bytes).await?;
    let partner =
        caller.partner_for_new_order(state.gate.is_open(), upload.order.partner_id.as_deref())?;
    upload.order.set_partner(partner);
    let scope = upload.order.partner_id.clone().unwrap_or_default();
    if let Some(key) = &key
        && let Some(existing) = store::find_by_key(&state.pool, &scope, key).await?
    {
        return replay(&state, existing, &upload.request_hash).await;
    }
    // A partner's new order draws on its budget before anything is stored.
    let verdict = match &upload.order.partner_id {
        Some(partner) => {
            let (rate, source) = crate::limits::effective(&state, partner).await?;
            let verdict = limit::take(&state.pool, partner, rate).await?;
            if let Some(refusal) = verdict.refusal(partner) {
                let span = Context::current();
                span.span()
                    .set_attribute(KeyValue::new(attr::PARTNER_ID, partner.clone()));
                span.span()
                    .set_attribute(KeyValue::new(attr::RATE_LIMITED, true));
                span.span()
                    .set_attribute(KeyValue::new(attr::RATE_LIMIT_SOURCE, source));
                partner_orders_limited().add(
                    1,
                    &[KeyValue::new(
                        "partner",
                        state.partner_limits.label_of(partner),
                    )],
                );
                tracing::info!(partner = %partner, rate = %rate, source, retry_after_s = verdict.reset_secs, "partner over its rate: refused");
                return Err(refusal);
            }
            Some(verdict)
        }
        None => None,
    };

    let order_id = Uuid::now_v7();
    let key = key.unwrap_or_else(|| order_id.to_string());
    let cx = order_span(order_id, Activity::Progress, |request| {
        let order = &upload.order;
        let mut attributes = Vec::with_capacity(9);
        attributes.extend([
            KeyValue::new(attr::ORDER_SOURCE, order.source.as_str()),
            KeyValue::new(attr::ORDER_IDEMPOTENCY_KEY, key.clone()),
            KeyValue::new(attr::ORDER_MATERIAL, order.material.as_str()),
            KeyValue::new(attr::ORDER_STATUS_TO, OrderStatus::Created.as_str()),
            KeyValue::new(attr::ORDER_STAGE, OrderStatus::Created.stage().as_str()),
        ]);
        if let Some(external_id) = &order.external_id {
            attributes.push(KeyValue::new(attr::ORDER_EXTERNAL_ID, external_id.clone()));
        }
        if let Some(partner_id) = &order.partner_id {
            attributes.push(KeyValue::new(attr::PARTNER_ID, partner_id.clone()));
        }
        spans::child("order create", SpanKind::Internal, attributes, request)
    });
    let work = async {
        match store::create(&state, order_id, &key, &scope, &upload).await? {
            Created::New(view) => {
                tracing::info!(order_id = %order_id, "order accepted");
                Ok(respond_created(&state, *view, false))
            }
            // A concurrent request with the same key won the race; answer like a replay.
            Created::KeyTaken => {
                let existing = store::find_by_key(&state.pool, &scope, &key)
                    .await?
                    .ok_or_else(idempotency_key_reused)?;
                replay(&state, existing, &upload.request_hash).await
            }
        }
    };
    let result = spans::under(cx.as_ref(), work).await;
    spans::end_in(cx.as_ref());
    let mut response = result?;
    for (name, value) in verdict.iter().flat_map(limit::Verdict::headers) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

/// Partners' orders refused for their rate, by partner (one with a rate of its own, else
/// `other`, so that names in requests cannot grow the series).
fn partner_orders_limited() -> &'static opentelemetry::metrics::Counter<u64> {
    static LIMITED: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    LIMITED.get_or_init(|| {
        telemetry::metrics::meter()
            .u64_counter("hallmark.partner_orders.limited")
            .with_description("Partners' orders refused with 429 for being over the partner's rate")
            .build()
    })
}

/// The context to run an order's work under: the request span gets `order.id` (and
/// `order.activity`), and `start`
/// makes the span of the work as the request's child, with the order in baggage so that every
/// span under it carries the id and says whether the work is `activity` or only observes the
/// order. Without spans (telemetry off or `RUST_LOG`), `None`.
fn order_span(
    order_id: Uuid,
    activity: Activity,
    start: impl FnOnce(&Context) -> Option<Context>,
) -> Option<Context> {
    if !telemetry::spans_enabled!() {
        return None;
    }
    let request = Context::current();
    let span = request.span();
    span.set_attribute(KeyValue::new(attr::ORDER_ID, order_id.to_string()));
    span.set_attribute(KeyValue::new(attr::ORDER_ACTIVITY, activity.as_str()));
    start(&with_order(&request, order_id, activity))
}

/// Answers a repeated request with the order it created the first time.
async fn replay(
    state: &AppState,
    existing: store::KeyOwner,
    request_hash: &str,
) -> Result<Response, ApiError> {
    if existing.request_hash != request_hash {
        return Err(idempotency_key_reused());
    }
    let order_id = existing.order_id;
    // A repeated request moves nothing: it reads the order the first one created.
    let cx = order_span(order_id, Activity::Observation, |request| {
        spans::child("order replay", SpanKind::Internal, Vec::new(), request)
    });
    let view = spans::under(cx.as_ref(), store::load(state, order_id)).await;
    spans::end_in(cx.as_ref());
    let view = view?.ok_or_else(|| ApiError::order_not_found(order_id))?;
    Ok(respond_created(state, view, true))
}

/// The order just created (or created by the first of repeated requests), with the customer's
/// token for it.
#[derive(serde::Serialize)]
struct CreatedOrder {
    #[serde(flatten)]
    view: OrderView,
    /// Reading, confirming and cancelling the order need it (`orders::token`).
    customer_token: String,
}

fn respond_created(state: &AppState, view: OrderView, replayed: bool) -> Response {
    let customer_token = state.tokens.issue(view.order_id);
    let order_id = view.order_id;
    respond(
        StatusCode::CREATED,
        order_id,
        &CreatedOrder {
            view,
            customer_token,
        },
        replayed,
    )
}

fn respond(
    status: StatusCode,
    order_id: Uuid,
    view: &impl serde::Serialize,
    replayed: bool,
) -> Response {
    let mut response = (status, axum::Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/orders/{order_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `GET /api/orders/{order_id}`, with the order's token.
async fn show(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = Caller::of(&state, &headers).await?;
    caller
        .may(&state.pool, &state.tokens, order_id, Action::Read)
        .await?;
    let view = store::load(&state, order_id)
        .await?
        .ok_or_else(|| ApiError::order_not_found(order_id))?;
    Ok(respond(StatusCode::OK, order_id, &view, false))
}

/// `POST /api/orders/{order_id}/confirm`, with the order's token: the customer accepts the price.
async fn confirm(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = Caller::of(&state, &headers).await?;
    caller
        .may(&state.pool, &state.tokens, order_id, Action::Decide)
        .await?;
    decide(
        &state,
        order_id,
        Change::to(OrderStatus::Confirmed),
        &caller,
    )
    .await
}

/// `POST /api/orders/{order_id}/cancel`, with the order's token: the customer withdraws the
/// order before production.
async fn cancel(
    State(state): State<AppState>,
    OrderId(order_id): OrderId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = Caller::of(&state, &headers).await?;
    caller
        .may(&state.pool, &state.tokens, order_id, Action::Decide)
        .await?;
    let change = Change::to(OrderStatus::Cancelled)
        .with_reason("cancelled_by_customer", "the customer cancelled the order");
    decide(&state, order_id, change, &caller).await
}

/// A customer's decision: new work by a person, so its trace links to the order's earlier one;
/// the history names who asked.
async fn decide(
    state: &AppState,
    order_id: Uuid,
    mut change: Change,
    caller: &Caller,
) -> Result<Response, ApiError> {
    if let Some(by) = caller.audit_name() {
        change = change.by(by);
    }
    let mut tx = state.pool.begin().await?;
    state.orderbook.decide(&mut tx, order_id, change).await?;
    tx.commit().await?;
    let view = store::load(state, order_id)
        .await?
        .ok_or_else(|| ApiError::order_not_found(order_id))?;
    Ok(respond(StatusCode::OK, order_id, &view, false))
}

fn idempotency_key_reused() -> ApiError {
    ApiError::unprocessable(
        "idempotency_key_reused",
        "the Idempotency-Key was already used for a different request; use a new key for a new order",
    )
}
