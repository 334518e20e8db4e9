//! An order's story, as support tells it: each status it reached, when, and which service
//! recorded it; how long it spent in each stage against that stage's threshold; where it is now
//! ("waiting for customer confirmation for 2 d 4 h of 7 d"); and, for a stuck, failed, rejected,
//! cancelled or dead-lettered order, why — in words a support agent can repeat to a customer,
//! with the error code for developers.
//!
//! Derived, with no storage or clock of its own, from the order's state, its telemetry gaps and
//! its *telling spans* ([`crate::store::queries::telling_spans`]: the transitions, and any span that failed,
//! carries an error code or dead-lettered a message).
//!
//! The timeline follows the transition spans that moved the order (progress that did not fail),
//! in time order, one step per status reached; a status a system of record reported because its
//! spans never arrived (a telemetry gap) is a step too, marked as taken from that record. Spans
//! whose clocks disagree are put back in the status machine's order, so a step never precedes
//! the one it follows; a repeat of a status is no new step, but for the workshop's loop between
//! production and quality check.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{OrderStatus, Stage};
use serde::Serialize;
use serde_json::Value;
use telemetry::attr;

use super::words;
use crate::config::Thresholds;
use crate::identity::Identity;
use crate::incidents::Incident;
use crate::journey::{FROM_TELEMETRY, OrderState};
use crate::store::queries::{Gap, StoredSpan};

/// One status the order reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub status: OrderStatus,
    /// What happened, in words ("Price calculated; sent to the customer").
    pub event: &'static str,
    pub at: DateTime<Utc>,
    /// The service that recorded it.
    pub service: String,
    /// `telemetry` (its transition span), or `record`: a system of record reported it because
    /// the spans of the move never arrived.
    pub source: &'static str,
    /// The statuses passed on the way whose spans never arrived (for a step from a record).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<OrderStatus>,
    /// The stage the order then waited in.
    pub stage: Stage,
    /// How long it waited there: until the next step, or until now for the current one; none
    /// once finished.
    pub stage_seconds: Option<u64>,
    /// The stage's threshold (none for `done`).
    pub threshold_seconds: Option<u64>,
    /// It waited there longer than the threshold.
    pub over_threshold: bool,
    /// This is where the order is now.
    pub current: bool,
    /// The span that recorded it, to find in the technical journey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// Where the order is now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Now {
    pub stage: Stage,
    /// "waiting for customer confirmation", "finished".
    pub waiting_for: &'static str,
    /// Since when (the last step, or the order's first span before any).
    pub since: DateTime<Utc>,
    pub waited_seconds: u64,
    pub threshold_seconds: Option<u64>,
    /// "2 d 4 h of 7 d", "12 min" (no threshold), none once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited: Option<String>,
    /// When the order last made progress, and how long ago in words.
    pub last_progress: DateTime<Utc>,
    pub last_progress_ago: String,
}

/// What kind of trouble an explanation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trouble {
    Stuck,
    Rejected,
    Failed,
    Cancelled,
    DeadLettered,
}

/// Why the order is where it is, when that is trouble.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub trouble: Trouble,
    /// In words a support agent can repeat to a customer.
    pub for_customer: String,
    /// What staff and developers need besides: what the system said, where.
    pub detail: String,
    /// `hallmark.error.code` of the span that tells why, for developers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The span that tells why, to find in the technical journey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// `GET /api/orders/{order_id}/story`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Story {
    pub order_id: uuid::Uuid,
    pub external_id: Option<String>,
    pub partner_id: Option<String>,
    pub customer_id: Option<String>,
    pub status: Option<OrderStatus>,
    pub stage: Stage,
    pub terminal: bool,
    pub stuck: bool,
    /// The order's situation in one sentence: "Waiting for customer confirmation for 2 d 4 h of
    /// 7 d.", "Rejected 3 h ago.".
    pub headline: String,
    pub now: Now,
    pub timeline: Vec<Step>,
    /// Why it is stuck, failed, rejected, cancelled or has a dead-lettered message; empty when
    /// all is well.
    pub explanations: Vec<Explanation>,
    /// The order's incidents, newest first.
    pub incidents: Vec<Incident>,
}

/// What the story is told from.
pub struct Facts<'a> {
    pub state: &'a OrderState,
    pub identity: Option<Identity>,
    /// The telling spans, in time order.
    pub spans: &'a [StoredSpan],
    pub gaps: &'a [Gap],
    pub incidents: Vec<Incident>,
    pub thresholds: &'a Thresholds,
    pub now: DateTime<Utc>,
}

/// The order's story.
pub fn tell(facts: Facts<'_>) -> Story {
    let Facts {
        state,
        identity,
        spans,
        gaps,
        incidents,
        thresholds,
        now,
    } = facts;
    let timeline = timeline(spans, gaps, thresholds, now);
    let since = timeline.last().map_or(state.first_seen, |s| s.at);
    let threshold = (!state.terminal).then(|| thresholds.for_stage(state.stage));
    let waited = seconds(now - since);
    let now_at = Now {
        stage: state.stage,
        waiting_for: words::waiting_for(state.stage),
        since,
        waited_seconds: waited,
        threshold_seconds: threshold.map(|t| t.as_secs()),
        waited: (!state.terminal).then(|| match threshold {
            Some(t) => format!(
                "{} of {}",
                words::duration(Duration::from_secs(waited)),
                words::duration(t)
            ),
            None => words::duration(Duration::from_secs(waited)),
        }),
        last_progress: state.last_progress,
        last_progress_ago: words::chrono_duration(now - state.last_progress),
    };
    let explanations = explain(state, spans, &incidents, thresholds, now);
    let identity = identity.unwrap_or_default();
    Story {
        order_id: state.order_id,
        external_id: identity.external_id,
        partner_id: identity.partner_id,
        customer_id: identity.customer_id,
        status: state.status,
        stage: state.stage,
        terminal: state.terminal,
        stuck: state.stuck_since.is_some(),
        headline: headline(state, &now_at, now),
        now: now_at,
        timeline,
        explanations,
        incidents,
    }
}

fn seconds(duration: chrono::Duration) -> u64 {
    duration.num_seconds().max(0) as u64
}

fn text<'a>(span: &'a StoredSpan, key: &str) -> Option<&'a str> {
    span.attributes.get(key).and_then(Value::as_str)
}

/// The status a span moved the order to, if it did.
fn moved_to(span: &StoredSpan) -> Option<OrderStatus> {
    if span.activity != "progress" || span.status == "error" {
        return None;
    }
    text(span, attr::ORDER_STATUS_TO)?.parse().ok()
}

/// The order's steps, oldest first, with their stage durations.
pub fn timeline(
    spans: &[StoredSpan],
    gaps: &[Gap],
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<Step> {
    let mut reached: Vec<Step> = Vec::new();
    let step = |status: OrderStatus, at, service: &str, source| Step {
        status,
        event: words::status_event(status),
        at,
        service: service.to_owned(),
        source,
        missing: vec![],
        stage: status.stage(),
        stage_seconds: None,
        threshold_seconds: None,
        over_threshold: false,
        current: false,
        trace_id: None,
        span_id: None,
    };
    let mut events: Vec<Step> = spans
        .iter()
        .filter_map(|span| {
            let status = moved_to(span)?;
            let mut step = step(status, span.end, &span.service, FROM_TELEMETRY);
            step.trace_id = Some(span.trace_id.clone());
            step.span_id = Some(span.span_id.clone());
            Some(step)
        })
        .collect();
    for gap in gaps {
        let Ok(to) = gap.to_status.parse::<OrderStatus>() else {
            continue;
        };
        let from = gap.from_status.as_deref().and_then(|s| s.parse().ok());
        let mut step = step(to, gap.status_at, &gap.source, "record");
        step.missing = OrderStatus::moves_to(from, to)
            .into_iter()
            .filter(|s| *s != to)
            .collect();
        events.push(step);
    }
    events.sort_by_key(|e| e.at);
    for event in events {
        let loops = matches!(
            event.status,
            OrderStatus::InProduction | OrderStatus::QualityCheck
        );
        let seen = reached.iter().any(|s| s.status == event.status);
        if reached
            .last()
            .is_some_and(|last| last.status == event.status)
            || (seen && !loops)
        {
            continue;
        }
        // A status announced after one it precedes (clocks that disagree) goes back where the
        // status machine puts it.
        let position = if loops {
            reached.len()
        } else {
            reached
                .iter()
                .rposition(|s| !event.status.overtaken_by(s.status))
                .map_or(0, |i| i + 1)
        };
        reached.insert(position, event);
    }
    let count = reached.len();
    for i in 0..count {
        let terminal = reached[i].status.is_terminal();
        let until = match reached.get(i + 1) {
            Some(next) => Some(next.at),
            None => (!terminal).then_some(now),
        };
        let step = &mut reached[i];
        step.current = i + 1 == count;
        step.stage_seconds = until.map(|until| seconds(until - step.at));
        if !terminal {
            step.threshold_seconds = Some(thresholds.for_stage(step.stage).as_secs());
        }
        step.over_threshold = matches!(
            (step.stage_seconds, step.threshold_seconds),
            (Some(spent), Some(threshold)) if spent > threshold
        );
    }
    reached
}

/// The order's situation in one sentence.
fn headline(state: &OrderState, now_at: &Now, now: DateTime<Utc>) -> String {
    let ago = |at: DateTime<Utc>| words::chrono_duration(now - at);
    match state.status {
        Some(status) if state.terminal => {
            let what = match status {
                OrderStatus::Delivered => "Delivered",
                OrderStatus::Rejected => "Rejected",
                OrderStatus::Cancelled => "Cancelled",
                _ => "Failed",
            };
            format!("{what} {} ago.", ago(now_at.since))
        }
        _ => {
            let mut waiting = now_at.waiting_for.to_owned();
            if let Some(first) = waiting.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            let mut line = format!(
                "{waiting} for {}.",
                now_at.waited.as_deref().unwrap_or_default()
            );
            if state.stuck_since.is_some() {
                line.push_str(&format!(
                    " Stuck: no progress for {}.",
                    ago(state.last_progress)
                ));
            }
            line
        }
    }
}

/// Where a trouble's span is, and its code.
struct Culprit<'a> {
    span: &'a StoredSpan,
    code: Option<String>,
}

impl Culprit<'_> {
    fn explanation(&self, trouble: Trouble, for_customer: String, detail: String) -> Explanation {
        Explanation {
            trouble,
            for_customer,
            detail,
            error_code: self.code.clone(),
            service: Some(self.span.service.clone()),
            trace_id: Some(self.span.trace_id.clone()),
            span_id: Some(self.span.span_id.clone()),
        }
    }
}

/// The span that says why `transition` happened: the code on the transition itself, else on its
/// parent, else the latest code at or before it in its trace, else anywhere before it.
fn why<'a>(spans: &'a [StoredSpan], transition: &'a StoredSpan) -> Culprit<'a> {
    let code = |s: &StoredSpan| text(s, attr::ERROR_CODE).map(str::to_owned);
    if let Some(code) = code(transition) {
        return Culprit {
            span: transition,
            code: Some(code),
        };
    }
    let before = || spans.iter().filter(|s| s.start <= transition.end).rev();
    let parent = transition.parent_span_id.as_ref().and_then(|parent| {
        spans
            .iter()
            .find(|s| &s.span_id == parent && s.trace_id == transition.trace_id)
    });
    let found = parent
        .filter(|p| code(p).is_some())
        .or_else(|| before().find(|s| s.trace_id == transition.trace_id && code(s).is_some()))
        .or_else(|| before().find(|s| code(s).is_some()));
    match found {
        Some(span) => Culprit {
            span,
            code: code(span),
        },
        None => Culprit {
            span: transition,
            code: None,
        },
    }
}

/// What the system said about a culprit, for staff: its status message, and its code's words
/// when there are none for the customer.
fn said(culprit: &Culprit<'_>) -> String {
    let span = culprit.span;
    let mut detail = format!("{} · {}", span.service, span.name);
    if !span.status_message.is_empty() {
        detail.push_str(&format!(": {}", span.status_message));
    }
    detail
}

/// A code's words, or what to say when there are none.
fn in_words(code: Option<&str>, otherwise: &str) -> String {
    match code.and_then(words::error_in_words) {
        Some(words) => words.to_owned(),
        None => otherwise.to_owned(),
    }
}

/// Why the order is in trouble, if it is.
fn explain(
    state: &OrderState,
    spans: &[StoredSpan],
    incidents: &[Incident],
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<Explanation> {
    let mut explanations = Vec::new();
    let terminal = spans
        .iter()
        .rev()
        .find(|s| moved_to(s).is_some_and(|to| Some(to) == state.status && to.is_terminal()));
    match (state.status, terminal) {
        (Some(OrderStatus::Rejected), Some(transition)) => {
            let culprit = why(spans, transition);
            let for_customer = in_words(
                culprit.code.as_deref(),
                "The order was rejected: it cannot be made as it stands. The technical team can tell why from the error code.",
            );
            explanations.push(culprit.explanation(Trouble::Rejected, for_customer, said(&culprit)));
        }
        (Some(OrderStatus::Failed), Some(transition)) => {
            let culprit = why(spans, transition);
            let for_customer = in_words(
                culprit.code.as_deref(),
                "Processing the order failed for good because of a technical fault on our side. The workshop has been notified and will contact the customer.",
            );
            explanations.push(culprit.explanation(Trouble::Failed, for_customer, said(&culprit)));
        }
        (Some(OrderStatus::Cancelled), Some(transition)) => {
            let culprit = Culprit {
                span: transition,
                code: None,
            };
            explanations.push(culprit.explanation(
                Trouble::Cancelled,
                "The order was cancelled before production, at the customer's request or by the shop; nothing more happens to it.".to_owned(),
                said(&culprit),
            ));
        }
        _ => {}
    }
    if state.stuck_since.is_some() {
        explanations.push(stuck(state, spans, incidents, thresholds, now));
    }
    // Each dead-lettered message once, latest first.
    let mut routes: Vec<&str> = Vec::new();
    for span in spans.iter().rev() {
        let Some(route) = text(span, attr::DLQ_ROUTE) else {
            continue;
        };
        if routes.contains(&route) {
            continue;
        }
        routes.push(route);
        let culprit = Culprit {
            span,
            code: text(span, attr::ERROR_CODE).map(str::to_owned),
        };
        let why = in_words(culprit.code.as_deref(), "it could not be processed");
        explanations.push(culprit.explanation(
            Trouble::DeadLettered,
            format!(
                "A message about this order was set aside for the technical team instead of being processed. Until they deal with it, the order may not move on. {why}"
            ),
            format!("{}; dead-lettered to {route}", said(&culprit)),
        ));
    }
    explanations
}

/// Why a stuck order is stuck.
fn stuck(
    state: &OrderState,
    spans: &[StoredSpan],
    incidents: &[Incident],
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> Explanation {
    let silent = words::chrono_duration(now - state.last_progress);
    let threshold = words::duration(thresholds.for_stage(state.stage));
    let mut for_customer = format!(
        "The order is {} and has not moved for {silent}; this normally takes under {threshold}.",
        words::waiting_for(state.stage),
    );
    let on_it = incidents
        .iter()
        .find(|i| i.resolved_at.is_none() && i.acknowledged_at.is_some());
    if state.stage == Stage::CustomerConfirmation {
        for_customer.push_str(" The customer has not accepted the price yet; a reminder may help.");
    } else if on_it.is_some() {
        for_customer.push_str(" The team knows and is working on it.");
    } else {
        for_customer.push_str(" The team has been alerted.");
    }
    let mut detail = format!(
        "waiting on {} ({}); last progress: {} in {}",
        words::waiting_on(state.stage),
        state.stage,
        state.last_span,
        state.last_service
    );
    if let Some(confirmation) = &state.confirmation {
        detail.push_str(&format!("; {confirmation}"));
    }
    if let Some(incident) = on_it {
        detail.push_str(&format!(
            "; incident acknowledged by {}",
            incident.acknowledged_by.as_deref().unwrap_or("someone")
        ));
    }
    // The latest failure since the order last moved says what keeps failing (one before it was
    // overcome by that move).
    let failure = spans.iter().rev().find(|s| {
        s.end > state.last_progress && (s.status == "error" || text(s, attr::ERROR_CODE).is_some())
    });
    match failure {
        Some(span) => {
            let culprit = Culprit {
                span,
                code: text(span, attr::ERROR_CODE).map(str::to_owned),
            };
            if let Some(words) = culprit.code.as_deref().and_then(words::error_in_words) {
                for_customer.push(' ');
                for_customer.push_str(words);
            }
            detail.push_str(&format!("; latest failure: {}", said(&culprit)));
            culprit.explanation(Trouble::Stuck, for_customer, detail)
        }
        None => Explanation {
            trouble: Trouble::Stuck,
            for_customer,
            detail,
            error_code: None,
            service: Some(state.last_service.clone()).filter(|s| !s.is_empty()),
            trace_id: None,
            span_id: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn base() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        base() + chrono::Duration::seconds(seconds)
    }

    /// A span ending `end_s` after the base time, with `attributes`.
    fn span(id: &str, service: &str, name: &str, end_s: i64, attributes: Value) -> StoredSpan {
        StoredSpan {
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: None,
            service: service.into(),
            name: name.into(),
            kind: "internal",
            start: at(end_s) - chrono::Duration::milliseconds(5),
            end: at(end_s),
            duration_ms: 5.0,
            status: "unset",
            status_message: String::new(),
            activity: "progress",
            attributes,
            links: json!([]),
        }
    }

    fn moved(id: &str, service: &str, to: &str, end_s: i64) -> StoredSpan {
        span(
            id,
            service,
            &format!("order {to}"),
            end_s,
            json!({"order.status.to": to}),
        )
    }

    fn thresholds() -> Thresholds {
        Thresholds::default()
    }

    fn order(status: OrderStatus, last_progress_s: i64) -> OrderState {
        let mut state = OrderState::new(Uuid::nil(), base());
        state.status = Some(status);
        state.last_progress = at(last_progress_s);
        state.last_service = "mes-api".into();
        state.last_span = "order pricing".into();
        state.moved(&thresholds());
        state
    }

    fn to_priced() -> Vec<StoredSpan> {
        vec![
            moved("a", "shop-api", "created", 0),
            moved("b", "shop-api", "submitted", 1),
            moved("c", "crm-api", "registered", 2),
            moved("d", "mes-api", "pricing", 3),
            moved("e", "mes-api", "priced", 40),
        ]
    }

    #[test]
    fn a_priced_order_waits_for_its_customer_against_the_weeks_threshold() {
        let spans = to_priced();
        let now = at(40 + 2 * 86_400 + 4 * 3600);
        let state = order(OrderStatus::Priced, 40);
        let story = tell(Facts {
            state: &state,
            identity: None,
            spans: &spans,
            gaps: &[],
            incidents: vec![],
            thresholds: &thresholds(),
            now,
        });
        let statuses: Vec<&str> = story.timeline.iter().map(|s| s.status.as_str()).collect();
        assert_eq!(
            statuses,
            ["created", "submitted", "registered", "pricing", "priced"]
        );
        let pricing = &story.timeline[3];
        assert_eq!(
            (
                pricing.stage,
                pricing.stage_seconds,
                pricing.threshold_seconds
            ),
            (Stage::Pricing, Some(37), Some(900))
        );
        assert!(!pricing.over_threshold);
        let priced = story.timeline.last().unwrap();
        assert!(priced.current);
        assert_eq!(priced.service, "mes-api");
        assert_eq!(priced.trace_id.as_deref(), Some("t1"));
        assert_eq!(story.now.waited.as_deref(), Some("2 d 4 h of 7 d"));
        assert_eq!(
            story.headline,
            "Waiting for customer confirmation for 2 d 4 h of 7 d."
        );
        assert!(story.explanations.is_empty());
    }

    #[test]
    fn repeats_and_failed_moves_are_no_steps_and_late_clocks_do_not_reorder_the_machine() {
        let mut failed_confirmation = moved("x", "shop-api", "confirmed", 50);
        failed_confirmation.status = "error";
        let mut read = moved("y", "shop-api", "priced", 60);
        read.activity = "observation";
        let spans = vec![
            moved("a", "shop-api", "created", 0),
            // CRM's clock runs ahead of MES's: registered seems to come after pricing.
            moved("d", "mes-api", "pricing", 3),
            moved("c", "crm-api", "registered", 4),
            moved("e", "mes-api", "priced", 40),
            moved("e2", "mes-api", "priced", 41),
            failed_confirmation,
            read,
        ];
        let steps = timeline(&spans, &[], &thresholds(), at(100));
        let statuses: Vec<&str> = steps.iter().map(|s| s.status.as_str()).collect();
        assert_eq!(statuses, ["created", "registered", "pricing", "priced"]);
        assert_eq!(steps[1].stage_seconds, Some(0), "no negative stay");
    }

    #[test]
    fn the_workshop_loop_between_production_and_quality_check_shows_each_round() {
        let spans = vec![
            moved("a", "mes-api", "in_production", 0),
            moved("b", "mes-api", "quality_check", 10),
            moved("c", "mes-api", "in_production", 20),
            moved("d", "mes-api", "quality_check", 30),
            moved("e", "mes-api", "ready", 40),
        ];
        let steps = timeline(&spans, &[], &thresholds(), at(50));
        assert_eq!(steps.len(), 5);
        assert_eq!(steps[2].status, OrderStatus::InProduction);
    }

    #[test]
    fn a_status_from_a_system_of_record_is_a_step_naming_the_missing_ones() {
        let spans = vec![moved("a", "shop-api", "created", 0)];
        let gap = Gap {
            detected_at: at(2000),
            source: "mes-api".into(),
            from_status: Some("created".into()),
            to_status: "priced".into(),
            status_at: at(30),
            missing_services: vec!["crm-api".into(), "mes-api".into(), "shop-api".into()],
        };
        let steps = timeline(&spans, &[gap], &thresholds(), at(3000));
        let last = steps.last().unwrap();
        assert_eq!(
            (last.status, last.source, last.service.as_str()),
            (OrderStatus::Priced, "record", "mes-api")
        );
        assert_eq!(
            last.missing,
            [
                OrderStatus::Submitted,
                OrderStatus::Registered,
                OrderStatus::Pricing
            ]
        );
    }

    #[test]
    fn a_stage_that_took_longer_than_its_threshold_says_so() {
        let spans = vec![
            moved("d", "mes-api", "pricing", 0),
            moved("e", "mes-api", "priced", 3600),
        ];
        let steps = timeline(&spans, &[], &thresholds(), at(3700));
        assert!(
            steps[0].over_threshold,
            "an hour of pricing, 15 min allowed"
        );
        assert!(!steps[1].over_threshold);
    }

    #[test]
    fn a_rejected_order_says_why_in_words_with_the_code_of_the_span_that_knew() {
        let mut spans = to_priced();
        spans.truncate(4);
        let mut calc = span(
            "calc",
            "mes-calc",
            "calculate price",
            5,
            json!({"hallmark.error.code": "stl_not_closed"}),
        );
        calc.status = "error";
        calc.status_message = "the model is not a closed solid".into();
        spans.push(calc);
        spans.push(moved("r", "mes-api", "rejected", 6));
        let mut state = order(OrderStatus::Rejected, 6);
        state.moved(&thresholds());
        let story = tell(Facts {
            state: &state,
            identity: None,
            spans: &spans,
            gaps: &[],
            incidents: vec![],
            thresholds: &thresholds(),
            now: at(6 + 3 * 3600),
        });
        assert_eq!(story.headline, "Rejected 3 h ago.");
        let [why] = story.explanations.as_slice() else {
            panic!("{:?}", story.explanations)
        };
        assert_eq!(why.trouble, Trouble::Rejected);
        assert_eq!(why.error_code.as_deref(), Some("stl_not_closed"));
        assert!(
            why.for_customer
                .starts_with("The 3D model is not a closed solid"),
            "{}",
            why.for_customer
        );
        assert_eq!(
            why.detail,
            "mes-calc · calculate price: the model is not a closed solid"
        );
        assert_eq!(why.span_id.as_deref(), Some("calc"));
        let last = story.timeline.last().unwrap();
        assert_eq!((last.stage_seconds, last.threshold_seconds), (None, None));
    }

    #[test]
    fn a_stuck_order_says_how_long_against_what_and_what_keeps_failing() {
        let mut spans = to_priced();
        spans.truncate(4);
        let mut attempt = span(
            "p2",
            "mes-api",
            "price model",
            30,
            json!({"hallmark.error.code": "timeout", "hallmark.retry.count": 1}),
        );
        attempt.status = "error";
        spans.push(attempt);
        let mut state = order(OrderStatus::Pricing, 3);
        state.stuck_since = state.deadline;
        state.confirmation = Some("confirmed: mes-api holds it pricing since …".into());
        let now = at(3 + 2 * 3600);
        let story = tell(Facts {
            state: &state,
            identity: None,
            spans: &spans,
            gaps: &[],
            incidents: vec![],
            thresholds: &thresholds(),
            now,
        });
        assert_eq!(
            story.headline,
            "Waiting for the price calculation for 2 h of 15 min. Stuck: no progress for 2 h."
        );
        let [why] = story.explanations.as_slice() else {
            panic!("{:?}", story.explanations)
        };
        assert_eq!(why.trouble, Trouble::Stuck);
        assert_eq!(
            why.for_customer,
            "The order is waiting for the price calculation and has not moved for 2 h; this \
             normally takes under 15 min. The team has been alerted. An attempt to calculate the \
             price failed for a technical reason on our side; it is retried automatically."
        );
        assert_eq!(why.error_code.as_deref(), Some("timeout"));
        assert!(
            why.detail.contains("confirmed: mes-api holds it pricing"),
            "{}",
            why.detail
        );
    }

    #[test]
    fn a_dead_lettered_message_is_explained_once_with_its_route() {
        let mut spans = to_priced();
        let route = json!({
            "hallmark.dlq.route": "hallmark.dlx -> shop.status.dlq",
            "hallmark.error.code": "forged_sender",
        });
        spans.push(span(
            "q1",
            "shop-api",
            "process hallmark.orders",
            50,
            route.clone(),
        ));
        spans.push(span("q2", "shop-api", "process hallmark.orders", 51, route));
        let state = order(OrderStatus::Priced, 40);
        let story = tell(Facts {
            state: &state,
            identity: None,
            spans: &spans,
            gaps: &[],
            incidents: vec![],
            thresholds: &thresholds(),
            now: at(100),
        });
        let [why] = story.explanations.as_slice() else {
            panic!("{:?}", story.explanations)
        };
        assert_eq!(why.trouble, Trouble::DeadLettered);
        assert_eq!(why.error_code.as_deref(), Some("forged_sender"));
        assert!(
            why.detail
                .ends_with("dead-lettered to hallmark.dlx -> shop.status.dlq"),
            "{}",
            why.detail
        );
    }
}
