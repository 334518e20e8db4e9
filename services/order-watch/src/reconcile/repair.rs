//! The repair of a disagreement, asked by a developer or an admin
//! (`POST /api/reconciliation/{order_id}/repair`).
//!
//! It compares the order afresh (every system asked by id, order-watch's own view read), and
//! what the holders say then decides ([`verdict::plan`]):
//!
//! * a system lags behind the owner's status: the **owner is asked to republish** its messages of
//!   the order (`POST /api/orders/{id}/republish`, [`crate::records::Records::republish`]): its
//!   latest status event goes out again through its outbox with its original message id, so the
//!   consumers that applied it drop it (inbox) and the one that missed it applies it;
//! * a system does not know the order: the system that introduces orders to it is asked first
//!   (Shop's `order.created` to CRM, CRM's price request to MES), then the owner;
//! * order-watch lags (its spans of a move were lost and will not come again): it **takes the
//!   owner's record**, with a telemetry gap, as the stuck detector does at a stage's threshold;
//! * a holder ahead of its owner, or at another end, or Shop without the order: nothing
//!   republishing can mend — it is left to a person, and the repair says so.
//!
//! Every repair is audited (`reconcile_repairs`: who, when, the order, the owner's status, whom
//! it asked and what each answered, the outcome), those that found nothing to do included. The
//! next round compares the order again; it is listed until the holders agree.

use chrono::{DateTime, Utc};
use domain::{OrderStatus, System};
use futures::future::join_all;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{self, NewRepair, Repair};
use super::verdict::{self, Holder, Judgement, Plan, Reference, Views};
use crate::incidents::{self, Announcer};
use crate::metrics::Metrics;
use crate::records::Records;
use crate::runtime_config::LiveConfig;

/// What a repair needs.
pub struct Repairer<'a> {
    pub pool: &'a PgPool,
    pub records: &'a Records,
    pub metrics: &'a Metrics,
    /// The thresholds order-watch's own view is planned with when it takes an owner's record.
    pub config: &'a LiveConfig,
    pub announcer: &'a Announcer,
}

/// Why a repair did nothing that could be audited.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("no system holds order {0}")]
    Unknown(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] platform::db::Corrupt),
}

impl From<platform::db::ReadError> for RepairError {
    fn from(err: platform::db::ReadError) -> Self {
        match err {
            platform::db::ReadError::Database(err) => err.into(),
            platform::db::ReadError::Corrupt(err) => err.into(),
        }
    }
}

/// The outcomes as audited.
pub const REPUBLISHED: &str = "republished";
pub const FAILED: &str = "failed";
pub const NOT_NEEDED: &str = "not_needed";
pub const NOT_REPAIRABLE: &str = "not_repairable";

impl Repairer<'_> {
    /// Repairs `order_id`'s disagreement as `who` at `now` and answers the audited repair.
    pub async fn repair(
        &self,
        order_id: Uuid,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<Repair, RepairError> {
        let audit = |judgement: Option<&Judgement>, outcome, asked: Vec<Value>, detail: String| {
            let reference = judgement.and_then(|j| j.reference);
            NewRepair {
                order_id,
                requested_at: now,
                requested_by: who,
                reference: reference.map(|r| r.status),
                owner: reference.map(|r| r.owner),
                outcome,
                asked: Value::Array(asked),
                detail,
            }
        };
        let views = match self.compare(order_id).await? {
            Ok(views) => views,
            Err(unasked) => {
                let detail = format!("the order could not be compared: {unasked}");
                let repair = audit(None, FAILED, Vec::new(), detail);
                return Ok(store::record_repair(self.pool, repair).await?);
            }
        };
        let judgement = verdict::judge(&views).ok_or(RepairError::Unknown(order_id))?;
        if let Some(status) = judgement.agreed_on() {
            let detail = format!("nothing to repair: every system and order-watch hold {status}");
            let repair = audit(Some(&judgement), NOT_NEEDED, Vec::new(), detail);
            return Ok(store::record_repair(self.pool, repair).await?);
        }
        let plan = verdict::plan(&judgement);
        if plan.ask.is_empty() && !plan.adopt {
            let detail = format!(
                "republishing cannot mend this, a person decides: {}",
                judgement.describe()
            );
            let repair = audit(Some(&judgement), NOT_REPAIRABLE, Vec::new(), detail);
            return Ok(store::record_repair(self.pool, repair).await?);
        }
        let (asked, mut said, failed) = self.carry_out(order_id, &judgement, &plan, now).await?;
        if !plan.left.is_empty() {
            let left: Vec<String> = plan.left.iter().map(verdict::Mismatch::describe).collect();
            said.push(format!("left to a person: {}", left.join("; ")));
        }
        let outcome = if failed { FAILED } else { REPUBLISHED };
        let repair = audit(Some(&judgement), outcome, asked, said.join("; "));
        let repair = store::record_repair(self.pool, repair).await?;
        store::recheck_soon(self.pool, order_id, now).await?;
        tracing::info!(order_id = %order_id, by = %who, outcome, detail = %repair.detail,
            "disagreement repair");
        Ok(repair)
    }

    /// What every holder says of the order now; or which system could not be asked.
    async fn compare(&self, order_id: Uuid) -> Result<Result<Views, String>, RepairError> {
        let asked =
            join_all(System::ALL.map(|system| async move {
                (system, self.records.ask(system, &[order_id]).await)
            }))
            .await;
        let mut views = Views::new();
        for (system, answer) in asked {
            self.metrics
                .record_reconcile_requests(system, "ids", answer.is_ok(), 1);
            match answer {
                Ok(held) => {
                    let view = held
                        .get(&order_id)
                        .map(|&(status, since)| verdict::View { status, since });
                    views.insert(Holder::System(system), view);
                }
                Err(err) => {
                    let why = otel_fastpath::logging::error_chain(&err);
                    return Ok(Err(format!("{system} could not be asked: {why}")));
                }
            }
        }
        let journeys = store::journey_views(self.pool, &[order_id]).await?;
        views.insert(Holder::OrderWatch, journeys.get(&order_id).copied());
        Ok(Ok(views))
    }

    /// Asks the plan's systems in turn and has order-watch take the owner's record when it
    /// lags: what each did (for the audit), in words, and whether any ask failed.
    async fn carry_out(
        &self,
        order_id: Uuid,
        judgement: &Judgement,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Value>, Vec<String>, bool), RepairError> {
        let mut asked = Vec::new();
        let mut said = Vec::new();
        let mut failed = false;
        for &system in &plan.ask {
            let answer = self.records.republish(system, order_id).await;
            self.metrics
                .record_reconcile_requests(system, "republish", answer.is_ok(), 1);
            match answer {
                Ok(republished) => {
                    let kinds: Vec<&str> = republished
                        .messages
                        .iter()
                        .map(|m| m.routing_key.as_str())
                        .collect();
                    said.push(format!(
                        "{system} sent {} again ({})",
                        plural(republished.messages.len(), "message"),
                        kinds.join(", ")
                    ));
                    asked.push(json!({
                        "system": system.service_name(),
                        "outcome": "republished",
                        "messages": republished.messages,
                    }));
                }
                Err(err) => {
                    failed = true;
                    let why = otel_fastpath::logging::error_chain(&err);
                    said.push(format!("{system} could not be asked to republish: {why}"));
                    asked.push(json!({
                        "system": system.service_name(),
                        "outcome": "failed",
                        "error": why,
                    }));
                }
            }
        }
        if plan.adopt
            && let Some(reference) = judgement.reference
        {
            let gap = self.adopt(order_id, reference, now).await?;
            said.push(match &gap {
                Some(gap) => format!("order-watch took {}'s record: {gap}", reference.owner),
                None => "order-watch's view had moved on meanwhile".to_owned(),
            });
            asked.push(json!({
                "system": crate::SERVICE_NAME,
                "outcome": "adopted",
                "status": reference.status,
                "gap": gap,
            }));
        }
        Ok((asked, said, failed))
    }

    /// order-watch's journey takes the owner's `reference`, with the telemetry gap between,
    /// when it is still behind it (the detector's rule for an owner that moved on): returns
    /// the gap in words.
    async fn adopt(
        &self,
        order_id: Uuid,
        reference: Reference,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, RepairError> {
        let mut tx = self.pool.begin().await?;
        let mut orders = crate::store::lock_orders(&mut tx, &[order_id]).await?;
        let Some(mut order) = orders.remove(&order_id) else {
            return Ok(None);
        };
        if order
            .status
            .is_some_and(|status| !OrderStatus::supersedes(reference.status, status))
        {
            return Ok(None);
        }
        let since = reference.since.min(now);
        let gap = crate::detector::Gap::between(&order, reference.owner, reference.status, since);
        let was_stuck = order.stuck_since.is_some();
        order.status = Some(reference.status);
        order.status_at = Some(since);
        order.status_source = reference.owner.service_name().to_owned();
        order.last_progress = order.last_progress.max(since);
        order.observations_since_progress = 0;
        order.confirmed_at = Some(now);
        order.moved(&self.config.get().thresholds);
        crate::store::upsert_orders(&mut tx, std::slice::from_ref(&order), now).await?;
        crate::detector::insert_gaps(&mut tx, std::slice::from_ref(&gap), now).await?;
        if was_stuck {
            let resolution = format!("its system of record had moved on: {}", gap.describe());
            incidents::resolve_recovered(
                &mut tx,
                self.announcer,
                std::slice::from_ref(&order),
                &resolution,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        self.metrics.record_gap(&gap.missing_services);
        Ok(Some(gap.describe()))
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
