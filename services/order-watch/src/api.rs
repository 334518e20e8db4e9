//! order-watch's HTTP API and UI.
//!
//! * `GET /api/search?q=…`: find orders by order id, external order id, partner id (its recent
//!   orders) or customer id; partial ids and typos get suggestions, personal data a refusal in
//!   words ([`crate::desk::search`]).
//! * `GET /api/orders/{order_id}/story`: the order's story for support: its status timeline with
//!   stage durations against their thresholds, where it is now, and why, in words, when it is
//!   stuck, failed, rejected, cancelled or dead-lettered ([`crate::desk::story`]).
//! * `GET /api/orders/{order_id}/journey`: the order's stage, status, activity and every span of
//!   every trace, in time order, with the links that join the traces, and each trace as a tree
//!   with database statements and status checks folded ([`crate::desk::trees`]; with a link to
//!   the trace store when `ORDER_WATCH_JAEGER_URL` is set).
//! * `GET /api/floor`: orders in flight per stage, the SLO figures, stuck orders and open
//!   incidents; `GET /api/floor/events`: the same as server-sent events, live
//!   ([`crate::desk::floor`]).
//! * `GET /api/orders/stuck`: orders stuck right now, longest without progress first.
//! * `GET /api/incidents?open=true`: incidents, newest first.
//! * `POST /api/incidents/{id}/acknowledge`, `POST /api/incidents/{id}/close` (admin): someone
//!   is on it; closed by hand.
//! * `DELETE /api/orders/{order_id}` (admin): erase the order's trace data on request;
//!   `GET /api/erasures` (admin): the erasures made.
//! * `POST /api/alerts` (the machine role `alert-sender`): Alertmanager's webhook; its alerts
//!   become incidents.
//! * `GET /api/reconciliation?all=true`: whether the systems agree on the recently changed
//!   orders (accuracy now and over 24 hours), and the orders they disagree on past the threshold
//!   (all disagreeing ones with `all`; one order's alone with `order_id`), with what each
//!   system says.
//! * `POST /api/reconciliation/{order_id}/repair` (developer): ask the owner of the order's
//!   status to publish it again (see [`crate::reconcile::repair`]); audited.
//!   `GET /api/reconciliation/repairs`: the repairs asked for.
//! * `GET /api/config`: the stuck thresholds per stage, the masking rules, the webhook (masked)
//!   and the retention.
//! * `PATCH /api/config` (developer; admin for the retention): change them at run time (a JSON
//!   merge patch).
//! * `GET /api/config/changes`: who changed the configuration, when, from what to what.
//! * `GET /api/me`: who is asking, with their role (and, for a browser's session, the CSRF token
//!   its changes carry).
//! * `GET /login`, `GET /auth/callback`, `POST /logout`: the UI's login (see
//!   [`crate::auth::session`]).
//! * `GET /`, `GET /app.js`, `GET /app.css`: the UI.
//!
//! Every route needs the `support` role unless said otherwise above (see [`crate::auth`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse as _, Response};
use axum::routing::{delete, get, patch, post};
use chrono::{DateTime, Utc};
use platform::error::ApiError;
use platform::extract::{Json, OrderId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{self, Authenticator, Need, Principal, Role};
use crate::clock::Clock;
use crate::config::Thresholds;
use crate::desk::floor::FloorFeed;
use crate::desk::trees;
use crate::erasure::{self, Erasure};
use crate::incidents::{self, AlertmanagerMessage, Announcer, Incident, TransitionError};
use crate::journey::OrderState;
use crate::metrics::Metrics;
use crate::reconcile::repair::{self, RepairError, Repairer};
use crate::reconcile::store::Repair;
use crate::reconcile::{self as reconciliation, ReconcileConfig};
use crate::records::Records;
use crate::runtime_config::{self, LiveConfig};
use crate::store::queries;

#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub clock: Clock,
    pub config: LiveConfig,
    /// Wakes the detector when a change moved deadlines.
    pub detector: Arc<tokio::sync::Notify>,
    /// Announces incidents closed by hand.
    pub announcer: Announcer,
    /// The floor, read for the page and fed to it live.
    pub floor: FloorFeed,
    /// The trace store's UI (`ORDER_WATCH_JAEGER_URL`), for links to each trace.
    pub trace_store: Option<String>,
    /// The systems of record, asked again by a repair.
    pub records: Arc<Records>,
    pub metrics: Arc<Metrics>,
    pub reconcile: ReconcileConfig,
}

/// The routes, each behind the role it needs (see [`crate::auth`]).
pub fn router(authenticator: Arc<Authenticator>) -> Router<ApiState> {
    let needs = |need: Need| {
        axum::middleware::from_fn_with_state((authenticator.clone(), need), auth::require)
    };
    let read = Router::new()
        .route("/", get(ui))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/api/orders/stuck", get(stuck))
        .route("/api/orders/{order_id}/journey", get(journey))
        .route("/api/incidents", get(list_incidents))
        .route("/api/config", get(config))
        .route("/api/config/changes", get(config_changes))
        .route("/api/reconciliation", get(reconciliation_view))
        .route("/api/reconciliation/repairs", get(list_repairs))
        .route("/api/me", get(me))
        .merge(crate::desk::routes())
        .route_layer(needs(Role::Support.into()));
    // A change of the retention needs more: the handler checks it.
    let configure = Router::new()
        .route("/api/config", patch(change_config))
        .route(
            "/api/reconciliation/{order_id}/repair",
            post(repair_disagreement),
        )
        .route_layer(needs(Role::Developer.into()));
    let administer = Router::new()
        .route("/api/orders/{order_id}", delete(erase_order))
        .route("/api/erasures", get(list_erasures))
        .route(
            "/api/incidents/{id}/acknowledge",
            post(acknowledge_incident),
        )
        .route("/api/incidents/{id}/close", post(close_incident))
        .route_layer(needs(Role::Admin.into()));
    let machines = Router::new()
        .route("/api/alerts", post(alerts))
        .route_layer(needs(Need::AlertSender));
    read.merge(configure)
        .merge(administer)
        .merge(machines)
        .merge(authenticator.login_routes())
}

/// `GET /api/me`: who the request is from, as order-watch sees them.
async fn me(axum::Extension(principal): axum::Extension<Principal>) -> axum::Json<Principal> {
    axum::Json(principal)
}

async fn ui() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

/// The page's script and style, served with the page (no build step): revalidated on every
/// load, so an upgrade is never mixed with a cached older half.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    )
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("../static/app.css"))
}

/// An order's summary as the API shows it.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub order_id: Uuid,
    pub status: Option<String>,
    pub stage: String,
    pub terminal: bool,
    /// `telemetry` when a transition span announced the status, or the service whose own
    /// record order-watch took it from because the spans of the move never arrived.
    pub status_source: String,
    pub first_seen: DateTime<Utc>,
    /// End of the latest span of any kind.
    pub last_seen: DateTime<Utc>,
    /// When the order last made progress: reads of it do not count.
    pub last_progress: DateTime<Utc>,
    /// Seconds since the last progress.
    pub silent_seconds: f64,
    /// Requests that only read the order (a status check) since its last progress.
    pub observations_since_progress: i64,
    pub stuck: bool,
    pub stuck_since: Option<DateTime<Utc>>,
    /// For a stuck order: `confirmed` by its system of record, or `unconfirmed` (that system
    /// could not be asked).
    pub stuck_confirmation: Option<&'static str>,
    /// What the system of record answered when last asked.
    pub confirmation: Option<String>,
    pub confirmed_at: Option<DateTime<Utc>>,
    /// When the order counts as stuck if nothing happens (none once terminal).
    pub deadline: Option<DateTime<Utc>>,
    /// The stage's threshold in seconds.
    pub threshold_seconds: Option<u64>,
    pub span_count: i64,
    pub error_count: i64,
    pub max_retries: i64,
    pub dead_letters: i64,
    /// Service and name of the latest progress span.
    pub last_service: String,
    pub last_span: String,
}

pub(crate) fn summary(state: OrderState, now: DateTime<Utc>, thresholds: &Thresholds) -> Summary {
    Summary {
        order_id: state.order_id,
        status: state.status.map(|s| s.as_str().to_owned()),
        stage: state.stage.as_str().to_owned(),
        terminal: state.terminal,
        status_source: state.status_source,
        first_seen: state.first_seen,
        last_seen: state.last_seen,
        last_progress: state.last_progress,
        silent_seconds: ((now - state.last_progress).num_milliseconds().max(0) as f64) / 1000.0,
        observations_since_progress: state.observations_since_progress,
        stuck: state.stuck_since.is_some(),
        stuck_since: state.stuck_since,
        stuck_confirmation: state.stuck_confirmation.map(|c| c.as_str()),
        confirmation: state.confirmation,
        confirmed_at: state.confirmed_at,
        deadline: state.deadline,
        threshold_seconds: (!state.terminal).then(|| thresholds.for_stage(state.stage).as_secs()),
        span_count: state.span_count,
        error_count: state.error_count,
        max_retries: state.max_retries,
        dead_letters: state.dead_letters,
        last_service: state.last_service,
        last_span: state.last_span,
    }
}

/// One trace of the journey.
#[derive(Debug, Serialize)]
struct TraceSummary {
    trace_id: String,
    spans: usize,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    services: BTreeSet<String>,
}

/// A span in one trace that links to a span in another: how the traces of an order join.
#[derive(Debug, Serialize)]
struct Join {
    from_trace_id: String,
    from_span_id: String,
    to_trace_id: String,
    to_span_id: String,
}

#[derive(Debug, Serialize)]
struct Journey {
    #[serde(flatten)]
    summary: Summary,
    traces: Vec<TraceSummary>,
    joins: Vec<Join>,
    /// Stretches whose spans never arrived, found by asking a system of record.
    gaps: Vec<queries::Gap>,
    /// Whether older spans were left out: the answer holds the latest [`MAX_JOURNEY_SPANS`]
    /// (and the traces and joins among them).
    spans_truncated: bool,
    spans: Vec<queries::StoredSpan>,
    /// Each trace as a tree of indexes into `spans`, consecutive status checks folded.
    trees: Vec<trees::Entry>,
}

/// Most spans a journey answer holds, the latest ones: however many spans an order gathers (or a
/// caller sends for it), the answer stays a few megabytes at most.
pub const MAX_JOURNEY_SPANS: usize = 2_000;

/// `GET /api/orders/{order_id}/journey`.
async fn journey(
    State(state): State<ApiState>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<Journey>, ApiError> {
    // Gaps first: the detector records a gap with the status it implies in one transaction, so a
    // gap read here is matched by the order read after it (statements read what was committed
    // when each began); the other way round, a gap could come with the status before it.
    let gaps = queries::gaps(&state.pool, order_id).await?;
    let order = queries::order(&state.pool, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "order_not_found",
            message: format!("order-watch has seen no progress of order {order_id}"),
        })?;
    // One more than shown, to know whether there were more.
    let mut spans = queries::spans(&state.pool, order_id, MAX_JOURNEY_SPANS as i64 + 1).await?;
    let spans_truncated = spans.len() > MAX_JOURNEY_SPANS;
    if spans_truncated {
        spans.remove(0);
    }
    let mut traces: BTreeMap<String, TraceSummary> = BTreeMap::new();
    let mut joins = Vec::new();
    for span in &spans {
        let trace = traces
            .entry(span.trace_id.clone())
            .or_insert_with(|| TraceSummary {
                trace_id: span.trace_id.clone(),
                spans: 0,
                start: span.start,
                end: span.end,
                services: BTreeSet::new(),
            });
        trace.spans += 1;
        trace.start = trace.start.min(span.start);
        trace.end = trace.end.max(span.end);
        trace.services.insert(span.service.clone());
        for link in span.links.as_array().into_iter().flatten() {
            let to_trace = link["trace_id"].as_str().unwrap_or_default();
            if to_trace != span.trace_id {
                joins.push(Join {
                    from_trace_id: span.trace_id.clone(),
                    from_span_id: span.span_id.clone(),
                    to_trace_id: to_trace.to_owned(),
                    to_span_id: link["span_id"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    let mut traces: Vec<TraceSummary> = traces.into_values().collect();
    traces.sort_by_key(|t| t.start);
    let trees = trees::build(&spans, |trace_id| {
        state
            .trace_store
            .as_ref()
            .map(|base| format!("{base}/trace/{trace_id}"))
    });
    Ok(axum::Json(Journey {
        summary: summary(order, state.clock.now(), &state.config.get().thresholds),
        traces,
        joins,
        gaps,
        spans_truncated,
        spans,
        trees,
    }))
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<i64>,
    open: Option<bool>,
}

fn limit(query: &Limit) -> Result<i64, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_limit",
            "`limit` must be between 1 and 1000",
        ))
    }
}

/// `GET /api/orders/stuck`.
async fn stuck(
    State(state): State<ApiState>,
    Query(query): Query<Limit>,
) -> Result<axum::Json<Vec<Summary>>, ApiError> {
    let now = state.clock.now();
    let config = state.config.get();
    let orders = queries::stuck(&state.pool, limit(&query)?).await?;
    Ok(axum::Json(
        orders
            .into_iter()
            .map(|o| summary(o, now, &config.thresholds))
            .collect(),
    ))
}

/// `GET /api/incidents`.
async fn list_incidents(
    State(state): State<ApiState>,
    Query(query): Query<Limit>,
) -> Result<axum::Json<Vec<Incident>>, ApiError> {
    let incidents =
        incidents::list(&state.pool, query.open.unwrap_or(false), limit(&query)?).await?;
    Ok(axum::Json(incidents))
}

/// `POST /api/alerts`: Alertmanager's webhook (a machine with the role `alert-sender`).
async fn alerts(
    State(state): State<ApiState>,
    Json(message): Json<AlertmanagerMessage>,
) -> Result<axum::Json<Value>, ApiError> {
    let (opened, resolved) =
        incidents::record_alerts(&state.pool, &message, state.clock.now()).await?;
    Ok(axum::Json(
        serde_json::json!({"opened": opened, "resolved": resolved}),
    ))
}

/// `GET /api/config`: the configuration in force (the webhook masked).
async fn config(State(state): State<ApiState>) -> axum::Json<Value> {
    axum::Json(state.config.get().view())
}

/// `PATCH /api/config`: a JSON merge patch of what `GET /api/config` shows (see
/// [`runtime_config::apply_patch`]). A patch that touches the retention needs the admin role,
/// and is refused whole without it. Applied at once, stored, and audited under the caller's
/// name; answers the configuration now in force.
async fn change_config(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Json(patch): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    let needed = runtime_config::needed_role(&patch);
    if !principal.may(needed) {
        tracing::info!(user = %principal.name, "configuration change refused: it touches the retention");
        return Err(ApiError::forbidden(
            "forbidden",
            "changing retention_days needs the admin role; nothing was changed",
        ));
    }
    let who = principal.audit_name();
    let change =
        runtime_config::change(&state.pool, &state.config, &patch, &who, state.clock.now())
            .await
            .map_err(|failure| match failure {
                runtime_config::ChangeFailure::Invalid(err) => {
                    ApiError::unprocessable("invalid_config", err.to_string())
                }
                runtime_config::ChangeFailure::Database(err) => ApiError::from(err),
                corrupt @ runtime_config::ChangeFailure::Corrupt(_) => {
                    ApiError::Internal(corrupt.into())
                }
            })?;
    if let Some(change) = change {
        state.detector.notify_one();
        tracing::info!(change = change.id, by = %who, "configuration changed");
    }
    Ok(axum::Json(state.config.get().view()))
}

/// `GET /api/config/changes?limit=N`: who changed what and when, newest first.
async fn config_changes(
    State(state): State<ApiState>,
    Query(query): Query<Limit>,
) -> Result<axum::Json<Vec<runtime_config::Change>>, ApiError> {
    Ok(axum::Json(
        runtime_config::changes(&state.pool, limit(&query)?).await?,
    ))
}

/// The `{id}` path segment of an incident; anything but a UUID is a 400 `invalid_incident_id`.
struct IncidentId(Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IncidentId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<Uuid>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|_| {
                platform::error::error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_incident_id",
                    "the incident id in the path is not a UUID",
                )
            })
    }
}

fn transition_error(err: TransitionError) -> ApiError {
    match err {
        TransitionError::NotFound(_) => ApiError::NotFound {
            code: "incident_not_found",
            message: err.to_string(),
        },
        TransitionError::Closed { .. } => ApiError::conflict("incident_closed", err.to_string()),
        TransitionError::Acknowledged { .. } => {
            ApiError::conflict("incident_acknowledged", err.to_string())
        }
        TransitionError::Database(err) => ApiError::from(err),
    }
}

/// `POST /api/incidents/{id}/acknowledge` (admin): someone is on an open incident; recorded
/// with who and when. 409 when it is closed or acknowledged already.
async fn acknowledge_incident(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    IncidentId(id): IncidentId,
) -> Result<axum::Json<Incident>, ApiError> {
    let incident =
        incidents::acknowledge(&state.pool, id, &principal.audit_name(), state.clock.now())
            .await
            .map_err(transition_error)?;
    tracing::info!(incident = %id, by = %principal.name, "incident acknowledged");
    Ok(axum::Json(incident))
}

/// `POST /api/incidents/{id}/close` (admin): closes an open incident by hand; recorded with who
/// and when. 409 when it is closed already.
async fn close_incident(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    IncidentId(id): IncidentId,
) -> Result<axum::Json<Incident>, ApiError> {
    let incident = incidents::close(
        &state.pool,
        &state.announcer,
        id,
        &principal.audit_name(),
        state.clock.now(),
    )
    .await
    .map_err(transition_error)?;
    Ok(axum::Json(incident))
}

/// `DELETE /api/orders/{order_id}` (admin): erases the order's trace data (see
/// [`crate::erasure`]) and answers what went, as audited. 404 `order_not_found` when
/// order-watch holds none (never seen, or erased already: a retry finds it done).
async fn erase_order(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<Erasure>, ApiError> {
    let erasure = erasure::erase(&state.pool, order_id, &principal.audit_name(), state.clock.now())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "order_not_found",
            message: format!(
                "order-watch holds no trace data of order {order_id} (never seen progressing, or erased already)"
            ),
        })?;
    tracing::info!(order_id = %order_id, by = %principal.name, spans = erasure.spans,
        "an order's trace data erased on request");
    Ok(axum::Json(erasure))
}

/// `GET /api/erasures?limit=N` (admin): the erasures made, newest first.
async fn list_erasures(
    State(state): State<ApiState>,
    Query(query): Query<Limit>,
) -> Result<axum::Json<Vec<Erasure>>, ApiError> {
    Ok(axum::Json(
        erasure::erasures(&state.pool, limit(&query)?).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct ReconciliationQuery {
    limit: Option<i64>,
    /// Every disagreeing order, those under the threshold (in flight) too.
    all: Option<bool>,
    /// Only this order's disagreement, if it has one (the order's story asks so).
    order_id: Option<Uuid>,
}

/// `GET /api/reconciliation?all=true&limit=N`.
async fn reconciliation_view(
    State(state): State<ApiState>,
    Query(query): Query<ReconciliationQuery>,
) -> Result<axum::Json<reconciliation::Overview>, ApiError> {
    let limit = limit(&Limit {
        limit: query.limit,
        open: None,
    })?;
    let view = reconciliation::Overview::read(
        &state.pool,
        &state.reconcile,
        state.clock.now(),
        reconciliation::Listing {
            all: query.all.unwrap_or(false),
            order_id: query.order_id,
            limit,
        },
    )
    .await?;
    Ok(axum::Json(view))
}

/// `POST /api/reconciliation/{order_id}/repair` (developer): see [`crate::reconcile::repair`].
/// Answers the audited repair: 200 when it asked the owners (its `outcome` is `republished`, or
/// `failed` naming the system that could not be asked), 409 `systems_agree` or `not_repairable`
/// when there was nothing republishing could do (audited too), 404 `order_not_found` when no
/// system holds the order.
async fn repair_disagreement(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    OrderId(order_id): OrderId,
) -> Result<axum::Json<Repair>, ApiError> {
    let repairer = Repairer {
        pool: &state.pool,
        records: &state.records,
        metrics: &state.metrics,
        config: &state.config,
        announcer: &state.announcer,
    };
    let repair = repairer
        .repair(order_id, &principal.audit_name(), state.clock.now())
        .await
        .map_err(|err| match err {
            RepairError::Unknown(_) => ApiError::NotFound {
                code: "order_not_found",
                message: err.to_string(),
            },
            RepairError::Database(err) => ApiError::from(err),
            RepairError::Corrupt(err) => ApiError::from(err),
        })?;
    let code = match repair.outcome.as_str() {
        repair::NOT_NEEDED => "systems_agree",
        repair::NOT_REPAIRABLE => "not_repairable",
        _ => return Ok(axum::Json(repair)),
    };
    Err(ApiError::conflict(
        code,
        format!("{} (repair {})", repair.detail, repair.id),
    ))
}

/// `GET /api/reconciliation/repairs?limit=N`: the repairs asked for, newest first.
async fn list_repairs(
    State(state): State<ApiState>,
    Query(query): Query<Limit>,
) -> Result<axum::Json<Vec<Repair>>, ApiError> {
    Ok(axum::Json(
        reconciliation::store::repairs(&state.pool, limit(&query)?).await?,
    ))
}
