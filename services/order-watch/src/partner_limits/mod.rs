//! Partners' rates tightened at Shop while an incident their orders feed is open, and lifted
//! when it resolves (issue 18).
//!
//! An incident tightens the rate of the partners it affects: a stuck order in one of the
//! configured stages, its order's partner; an alert of the configured names (or labelled with
//! such a stage), every partner with orders in flight there. Each pair (incident, partner) is a
//! row of `incident_partner_limits`, shown on the incident. Every round (one replica at a time,
//! under an advisory lock) puts the rate at Shop for each pair of an open incident that was not
//! put, or not within [`PartnerLimitsConfig::renew_after`], and lifts each partner whose last
//! open incident resolved.
//!
//! The control path is Shop's `PUT`/`DELETE /api/partner-limits/{partner}` with order-watch's
//! service identity (role `limit-controller`): idempotent, so a round repeated after a crash or
//! by another replica changes nothing; state is in the database, so either side may restart;
//! and every tightening expires at Shop after [`PartnerLimitsConfig::ttl`] unless renewed, so
//! when order-watch is gone partners' rates return to normal by themselves. A rate a person set
//! by hand at Shop wins (409): the pair records that and is not put again before its renewal.

pub mod config;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::System;
use opentelemetry::KeyValue;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use telemetry::db::Traced as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::PartnerLimitsConfig;

use crate::clock::Clock;
use crate::records::{AskError, Records};

/// The lock one replica holds for a round.
const LOCK: i64 = 0x6f77_5f6c_696d_6974; // "ow_limit"

/// A partner's rate tightened for an incident, as the incident shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SwitchedLimit {
    pub incident_id: Uuid,
    pub partner_id: String,
    pub rate: String,
    /// When Shop first took it; `None` while it could not be put.
    pub switched_on_at: Option<DateTime<Utc>>,
    pub renewed_at: Option<DateTime<Utc>>,
    /// When it was lifted (or handed over to another open incident of the same partner).
    pub lifted_at: Option<DateTime<Utc>>,
    /// Why the last attempt did not take (Shop unreachable, a limit set by hand in force).
    pub last_error: Option<String>,
}

/// The limits incidents `ids` switched, by incident.
pub async fn of_incidents(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<SwitchedLimit>, sqlx::Error> {
    sqlx::query_as(
        "SELECT incident_id, partner_id, rate, switched_on_at, renewed_at, lifted_at, last_error \
         FROM incident_partner_limits WHERE incident_id = ANY($1) ORDER BY incident_id, partner_id",
    )
    .bind(ids)
    .fetch_all(pool)
    .db("SELECT incident_partner_limits")
    .await
}

/// Tightens and lifts partners' rates with incidents until cancelled.
pub struct Guard {
    pub pool: PgPool,
    pub records: std::sync::Arc<Records>,
    pub clock: Clock,
    pub config: PartnerLimitsConfig,
}

impl Guard {
    pub async fn run(self, cancel: CancellationToken) {
        let switched = telemetry::metrics::meter()
            .u64_counter("order_watch.partner_limits.switched")
            .with_description(
                "Partners' rates tightened (`on`) and lifted (`off`) at Shop for incidents",
            )
            .build();
        loop {
            if let Err(err) = self.round(&switched).await {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "partner limits: round failed; trying again"
                );
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// One round, when this replica gets the lock.
    async fn round(
        &self,
        switched: &opentelemetry::metrics::Counter<u64>,
    ) -> Result<(), sqlx::Error> {
        let mut lock = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK)
            .fetch_one(&mut *lock)
            .await?;
        if !locked {
            return Ok(());
        }
        let result = self.under_lock(switched).await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK)
            .execute(&mut *lock)
            .await?;
        result
    }

    async fn under_lock(
        &self,
        switched: &opentelemetry::metrics::Counter<u64>,
    ) -> Result<(), sqlx::Error> {
        self.record_affected().await?;
        let now = self.clock.now();
        let renew_before =
            now - chrono::Duration::from_std(self.config.renew_after()).unwrap_or_default();
        let due: Vec<(Uuid, String, bool)> = sqlx::query_as(
            "SELECT l.incident_id, l.partner_id, l.switched_on_at IS NULL \
             FROM incident_partner_limits l JOIN incidents i ON i.id = l.incident_id \
             WHERE i.resolved_at IS NULL AND l.lifted_at IS NULL \
               AND (l.renewed_at IS NULL OR l.renewed_at < $1) \
             ORDER BY l.partner_id, i.opened_at",
        )
        .bind(renew_before)
        .fetch_all(&self.pool)
        .db("SELECT incident_partner_limits")
        .await?;
        // One PUT per partner a round, however many incidents affect it: what it came to.
        let mut put: BTreeMap<String, Result<(), String>> = BTreeMap::new();
        for (incident, partner, first) in due {
            if let Some(earlier) = put.get(&partner) {
                match earlier.clone() {
                    Ok(()) => self.mark(incident, &partner, Ok(()), first).await?,
                    Err(message) => self.note_error(incident, &partner, &message).await?,
                }
                continue;
            }
            let outcome = self.tighten(incident, &partner).await;
            if outcome.is_ok() && first {
                switched.add(1, &[KeyValue::new("action", "on")]);
                tracing::info!(partner = %partner, incident = %incident, rate = %self.config.rate, "partner's rate tightened for an incident");
            }
            let summary = match &outcome {
                Ok(()) | Err(Failure::ManualInForce) => Ok(()),
                Err(err) => Err(otel_fastpath::logging::error_chain(err)),
            };
            put.insert(partner.clone(), summary);
            self.mark(incident, &partner, outcome, first).await?;
        }

        let resolved: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT l.incident_id, l.partner_id \
             FROM incident_partner_limits l JOIN incidents i ON i.id = l.incident_id \
             WHERE i.resolved_at IS NOT NULL AND l.lifted_at IS NULL",
        )
        .fetch_all(&self.pool)
        .db("SELECT incident_partner_limits")
        .await?;
        for (incident, partner) in resolved {
            let still_open: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM incident_partner_limits l \
                     JOIN incidents i ON i.id = l.incident_id \
                     WHERE l.partner_id = $1 AND i.resolved_at IS NULL AND l.lifted_at IS NULL)",
            )
            .bind(&partner)
            .fetch_one(&self.pool)
            .await?;
            let outcome = if still_open {
                Ok(())
            } else {
                self.lift(&partner).await
            };
            match outcome {
                Ok(()) => {
                    if !still_open {
                        switched.add(1, &[KeyValue::new("action", "off")]);
                        tracing::info!(partner = %partner, incident = %incident, "partner's rate lifted: the incident resolved");
                    }
                    sqlx::query(
                        "UPDATE incident_partner_limits SET lifted_at = $3, last_error = NULL \
                         WHERE incident_id = $1 AND partner_id = $2",
                    )
                    .bind(incident)
                    .bind(&partner)
                    .bind(self.clock.now())
                    .execute(&self.pool)
                    .await?;
                }
                Err(err) => {
                    let message = otel_fastpath::logging::error_chain(&err);
                    self.note_error(incident, &partner, &message).await?;
                }
            }
        }
        Ok(())
    }

    /// Adds a row for each partner each open, triggering incident affects that has none yet.
    async fn record_affected(&self) -> Result<(), sqlx::Error> {
        let stages: Vec<&str> = self.config.stages.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "INSERT INTO incident_partner_limits (incident_id, partner_id, rate) \
             SELECT DISTINCT i.id, s.attributes->>'partner.id', $3 \
             FROM incidents i \
             JOIN spans s ON s.order_id = i.order_id \
             WHERE i.resolved_at IS NULL AND i.kind = 'stuck_order' AND i.stage = ANY($1) \
               AND s.attributes ? 'partner.id' \
             UNION \
             SELECT DISTINCT i.id, s.attributes->>'partner.id', $3 \
             FROM incidents i \
             JOIN orders o ON NOT o.terminal AND o.stage = ANY($1) \
             JOIN spans s ON s.order_id = o.order_id \
             WHERE i.resolved_at IS NULL AND i.kind = 'alert' \
               AND (i.labels->>'alertname' = ANY($2) OR i.labels->>'stage' = ANY($1)) \
               AND s.attributes ? 'partner.id' \
             ON CONFLICT DO NOTHING",
        )
        .bind(&stages)
        .bind(&self.config.alerts)
        .bind(&self.config.rate)
        .execute(&self.pool)
        .db("INSERT incident_partner_limits")
        .await?;
        Ok(())
    }

    async fn tighten(&self, incident: Uuid, partner: &str) -> Result<(), Failure> {
        let base = self.records.url(System::Shop)?;
        let url = format!("{base}/api/partner-limits/{partner}");
        let body = json!({
            "rate": self.config.rate,
            "ttl": humantime::format_duration(self.config.ttl).to_string(),
            "reason": format!("incident {incident} at order-watch affects this partner's orders"),
            "incident": incident,
        });
        let response = self
            .records
            .send(|client| client.put(&url).json(&body))
            .await?;
        match response.status().as_u16() {
            200 => Ok(()),
            409 => Err(Failure::ManualInForce),
            status => Err(Failure::Ask(AskError::Refused(status))),
        }
    }

    async fn lift(&self, partner: &str) -> Result<(), Failure> {
        let base = self.records.url(System::Shop)?;
        let url = format!("{base}/api/partner-limits/{partner}");
        let response = self.records.send(|client| client.delete(&url)).await?;
        match response.status().as_u16() {
            204 | 200 => Ok(()),
            status => Err(Failure::Ask(AskError::Refused(status))),
        }
    }

    async fn mark(
        &self,
        incident: Uuid,
        partner: &str,
        outcome: Result<(), Failure>,
        first: bool,
    ) -> Result<(), sqlx::Error> {
        match outcome {
            Ok(()) => {
                sqlx::query(
                    "UPDATE incident_partner_limits \
                     SET switched_on_at = coalesce(switched_on_at, $3), renewed_at = $3, \
                         last_error = NULL \
                     WHERE incident_id = $1 AND partner_id = $2",
                )
                .bind(incident)
                .bind(partner)
                .bind(self.clock.now())
                .execute(&self.pool)
                .await?;
            }
            // A person's limit is in force: nothing to put until the next renewal.
            Err(Failure::ManualInForce) => {
                sqlx::query(
                    "UPDATE incident_partner_limits SET renewed_at = $3, last_error = $4 \
                     WHERE incident_id = $1 AND partner_id = $2",
                )
                .bind(incident)
                .bind(partner)
                .bind(self.clock.now())
                .bind(Failure::ManualInForce.to_string())
                .execute(&self.pool)
                .await?;
            }
            Err(err) => {
                if first {
                    tracing::warn!(partner = %partner, incident = %incident, error = &err as &dyn std::error::Error, "cannot tighten the partner's rate at Shop; trying again");
                }
                let message = otel_fastpath::logging::error_chain(&err);
                self.note_error(incident, partner, &message).await?;
            }
        }
        Ok(())
    }

    async fn note_error(
        &self,
        incident: Uuid,
        partner: &str,
        message: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE incident_partner_limits SET last_error = $3 \
             WHERE incident_id = $1 AND partner_id = $2",
        )
        .bind(incident)
        .bind(partner)
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Why Shop did not take a change.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("Shop")]
    Ask(#[from] AskError),
    #[error("a rate set by hand at Shop is in force; it stays")]
    ManualInForce,
}
