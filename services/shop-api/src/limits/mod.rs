//! Partners' rates as operators and incidents change them (issue 18): an override replaces a
//! partner's configured rate (`SHOP_PARTNER_RATE`, `SHOP_PARTNER_RATES`) until it expires.
//!
//! * `GET /api/partner-limits`: every partner with a rate of its own or an override, the default
//!   rate, and what is in force (`support`, `workshop` and above, or `limit-controller`).
//! * `GET /api/partner-limits/changes`: who set or lifted which override when (the same).
//! * `PUT /api/partner-limits/{partner}` `{"rate": "10/1m", "ttl": "5m", "reason": "…",
//!   "incident": "…"}`: sets or renews an override (`developer`, `admin`, or
//!   `limit-controller`, order-watch's service identity). Idempotent; `ttl` defaults to 1 h and
//!   is at most 7 days.
//! * `DELETE /api/partner-limits/{partner}`: lifts it (the same roles); 204 whether or not there
//!   was one.
//!
//! Invariants: every override expires, so one that nobody renews (order-watch gone while an
//! incident was open) lapses and the configured rate applies again; order-watch's overrides
//! (source `incident`) never replace or lift one a person set (`manual`), which is answered 409
//! `manual_limit_in_force`; a change of rate, source or incident is recorded with who made it.

mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use access::{Gate, Identity, Need, role};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use opentelemetry::KeyValue;
use platform::error::ApiError;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::orders::{PartnerLimits, Rate};
use crate::startup::AppState;
pub(crate) use store::{Override, Source};

/// Who may read the limits: staff who may read orders, and order-watch.
const READ: Need = Need(&[role::SUPPORT, role::WORKSHOP, role::LIMIT_CONTROLLER]);
/// Who may change them: developers and admins, and order-watch for incidents.
const CHANGE: Need = Need(&[role::DEVELOPER, role::LIMIT_CONTROLLER]);
/// The longest an override may be set for.
const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);
/// An override's time to live when the request names none.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

pub(crate) fn router(gate: &Arc<Gate>) -> Router<AppState> {
    let read = Router::new()
        .route("/api/partner-limits", get(list))
        .route("/api/partner-limits/changes", get(changes));
    let change = Router::new().route(
        "/api/partner-limits/{partner}",
        axum::routing::put(set).delete(lift),
    );
    gate.guard(READ, read).merge(gate.guard(CHANGE, change))
}

/// The rate a new order of `partner` is held to, and where it comes from (`config`,
/// `incident` or `manual`).
pub(crate) async fn effective(
    state: &AppState,
    partner: &str,
) -> Result<(Rate, &'static str), ApiError> {
    Ok(match store::in_force(&state.pool, partner).await? {
        Some(o) => (o.rate, o.source.as_str()),
        None => (state.partner_limits.rate_of(partner), "config"),
    })
}

#[derive(Serialize)]
struct Listing {
    #[serde(serialize_with = "display")]
    default: Rate,
    partners: Vec<PartnerLimit>,
}

#[derive(Serialize)]
struct PartnerLimit {
    partner_id: String,
    /// Its configured rate.
    #[serde(serialize_with = "display")]
    configured: Rate,
    /// The rate in force now.
    #[serde(serialize_with = "display")]
    effective: Rate,
    #[serde(rename = "override")]
    overridden: Option<Override>,
}

fn display<S: serde::Serializer>(rate: &Rate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(rate)
}

fn listing(limits: &PartnerLimits, overrides: Vec<Override>) -> Listing {
    let mut partners: BTreeMap<String, PartnerLimit> = limits
        .per_partner
        .iter()
        .map(|(partner, rate)| {
            let limit = PartnerLimit {
                partner_id: partner.clone(),
                configured: *rate,
                effective: *rate,
                overridden: None,
            };
            (partner.clone(), limit)
        })
        .collect();
    for o in overrides {
        let configured = limits.rate_of(&o.partner_id);
        partners.insert(
            o.partner_id.clone(),
            PartnerLimit {
                partner_id: o.partner_id.clone(),
                configured,
                effective: o.rate,
                overridden: Some(o),
            },
        );
    }
    Listing {
        default: limits.default,
        partners: partners.into_values().collect(),
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<Listing>, ApiError> {
    let overrides = store::all_in_force(&state.pool).await?;
    Ok(Json(listing(&state.partner_limits, overrides)))
}

async fn changes(State(state): State<AppState>) -> Result<Json<Vec<store::Change>>, ApiError> {
    Ok(Json(store::changes(&state.pool, 200).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRequest {
    rate: String,
    ttl: Option<String>,
    reason: String,
    incident: Option<Uuid>,
}

/// Who is changing a limit, for the record, and the source of what they set: order-watch's
/// service identity sets an incident's override, a person a manual one. Where the gate is open
/// (development), a request that names an incident counts as order-watch's.
fn actor(identity: Option<&Identity>, names_incident: bool) -> (String, Source) {
    match identity {
        Some(identity) if identity.has(role::LIMIT_CONTROLLER) => {
            (identity.audit_name(), Source::Incident)
        }
        Some(identity) => (identity.audit_name(), Source::Manual),
        None if names_incident => ("anonymous".into(), Source::Incident),
        None => ("anonymous".into(), Source::Manual),
    }
}

fn valid_partner(partner: &str) -> Result<(), ApiError> {
    let ok = !partner.is_empty()
        && partner.len() <= 100
        && partner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_partner",
            "a partner id has 1 to 100 letters, digits, `-`, `_` and `.`",
        ))
    }
}

async fn set(
    State(state): State<AppState>,
    Path(partner): Path<String>,
    identity: Option<Extension<Identity>>,
    platform::extract::Json(request): platform::extract::Json<SetRequest>,
) -> Result<Response, ApiError> {
    valid_partner(&partner)?;
    let rate =
        Rate::parse(&request.rate).map_err(|e| ApiError::unprocessable("invalid_rate", e))?;
    let ttl = match &request.ttl {
        Some(text) => humantime::parse_duration(text.trim())
            .map_err(|e| ApiError::unprocessable("invalid_ttl", format!("`{text}`: {e}")))?,
        None => DEFAULT_TTL,
    };
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(ApiError::unprocessable(
            "invalid_ttl",
            "an override lasts more than 0 and at most 7 days",
        ));
    }
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_reason",
            "say why, in 1 to 500 characters without control characters",
        ));
    }
    let (by, source) = actor(identity.as_deref(), request.incident.is_some());
    let outcome = store::set(
        &state.pool,
        store::NewOverride {
            partner: &partner,
            rate,
            source,
            reason,
            incident_id: request.incident,
            by: &by,
            ttl,
        },
    )
    .await?;
    match outcome {
        store::SetOutcome::Set(set) => {
            tracing::info!(partner = %partner, rate = %set.rate, source = set.source.as_str(), by = %by, "partner limit set");
            Ok((StatusCode::OK, Json(set)).into_response())
        }
        store::SetOutcome::ManualInForce(manual) => Err(ApiError::conflict(
            "manual_limit_in_force",
            format!(
                "{} set partner `{partner}`'s rate to {} by hand until {}; an incident does not replace it",
                manual.set_by,
                manual.rate,
                manual.expires_at.to_rfc3339()
            ),
        )),
    }
}

async fn lift(
    State(state): State<AppState>,
    Path(partner): Path<String>,
    identity: Option<Extension<Identity>>,
) -> Result<StatusCode, ApiError> {
    valid_partner(&partner)?;
    let (by, source) = actor(identity.as_deref(), false);
    let machine = identity
        .as_deref()
        .is_some_and(|i| i.has(role::LIMIT_CONTROLLER));
    let incident_only = machine || source == Source::Incident;
    if let Some(lifted) = store::lift(&state.pool, &partner, incident_only, &by).await? {
        tracing::info!(partner = %partner, rate = %lifted.rate, by = %by, "partner limit lifted");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Keeps `hallmark.partner_orders.rate_limit` (orders per minute in force, by partner) and
/// `hallmark.partner_orders.limit_overridden` (1 while an override is in force) current, every
/// `interval`, for partners with a rate of their own and every partner ever overridden.
pub(crate) async fn watch(
    pool: sqlx::PgPool,
    limits: Arc<PartnerLimits>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let meter = telemetry::metrics::meter();
    let rate_gauge = meter
        .f64_gauge("hallmark.partner_orders.rate_limit")
        .with_unit("{order}/min")
        .with_description(
            "Orders per minute each partner may place now (an override, else its configured rate)",
        )
        .build();
    let overridden_gauge = meter
        .u64_gauge("hallmark.partner_orders.limit_overridden")
        .with_description("1 while an override (an incident's or a person's) replaces the partner's configured rate")
        .build();
    let per_minute = |rate: Rate| f64::from(rate.quota) * 60.0 / rate.window.as_secs_f64();
    let mut seen: BTreeMap<String, ()> =
        limits.per_partner.keys().map(|p| (p.clone(), ())).collect();
    loop {
        match store::rates_in_force(&pool).await {
            Ok(overrides) => {
                let by_partner: BTreeMap<String, Rate> = overrides.into_iter().collect();
                for partner in by_partner.keys() {
                    seen.insert(partner.clone(), ());
                }
                for partner in seen.keys() {
                    let label = [KeyValue::new("partner", partner.clone())];
                    let (rate, overridden) = match by_partner.get(partner) {
                        Some(rate) => (*rate, 1),
                        None => (limits.rate_of(partner), 0),
                    };
                    rate_gauge.record(per_minute(rate), &label);
                    overridden_gauge.record(overridden, &label);
                }
            }
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot read partner limits for their metrics"
                )
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(roles: &[&str]) -> Identity {
        Identity {
            subject: "s".into(),
            name: "dana".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            partner: None,
        }
    }

    #[test]
    fn order_watchs_identity_sets_incident_limits_and_people_manual_ones() {
        let machine = identity(&[role::LIMIT_CONTROLLER]);
        assert_eq!(actor(Some(&machine), false).1, Source::Incident);
        let developer = identity(&[role::DEVELOPER]);
        assert_eq!(actor(Some(&developer), true).1, Source::Manual);
        assert_eq!(actor(None, true).1, Source::Incident);
        assert_eq!(actor(None, false).1, Source::Manual);
        assert!(!CHANGE.allows(&identity(&[role::SUPPORT])));
        assert!(CHANGE.allows(&identity(&[role::ADMIN])));
        assert!(!CHANGE.allows(&identity(&[role::PARTNER])));
    }

    #[test]
    fn partner_ids_in_paths_are_checked_like_those_in_orders() {
        assert!(valid_partner("acme.eu-1_b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(101)] {
            assert!(valid_partner(bad).is_err(), "{bad}");
        }
    }
}
