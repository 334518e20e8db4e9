//! An order's journey as order-watch understands it, with no storage and no clock of its own:
//! the spans of an order ([`SpanRecord`]), what each did to it ([`activity_of`]), and how they fold
//! into the order's state ([`merge`]) — status by the status machine's projection rule, last
//! progress, deadline, observations. The writer (`store`) applies it inside its transactions; the
//! detector, the incidents and the metrics read its types.

use chrono::{DateTime, Utc};
use domain::{OrderStatus, Stage};
use serde_json::{Map, Value};
use telemetry::attr;
use telemetry::propagation::Activity;
use uuid::Uuid;

use crate::config::Thresholds;

/// A span ending further in the future than this (a skewed clock) counts as ending now + this.
const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);

/// One span of an order, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub order_id: Uuid,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Option<Vec<u8>>,
    pub service: String,
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i16,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i16,
    pub status_message: String,
    pub attributes: Map<String, Value>,
    /// `(trace_id, span_id)` in hex.
    pub links: Vec<(String, String)>,
    /// The status an owner moved the order to in this span (`order.status.to`).
    pub status_to: Option<OrderStatus>,
    /// What the span's work was to its order ([`activity_of`]).
    pub activity: Activity,
}

impl SpanRecord {
    pub fn attribute_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    pub fn attribute_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }

    pub fn is_error(&self) -> bool {
        self.status_code == 2
    }

    /// Whether the span moved its order: progress that did not fail. Failed work (a refused
    /// transition, a failed attempt) is part of the journey, and begins one, but does not show
    /// that the order is moving.
    pub fn moves_order(&self) -> bool {
        self.activity == Activity::Progress && !self.is_error()
    }

    /// Sets [`SpanRecord::status_to`] and [`SpanRecord::activity`] from the attributes, for
    /// records built by hand.
    #[cfg(test)]
    pub(crate) fn classified(mut self) -> Self {
        self.status_to = self
            .attribute_str(attr::ORDER_STATUS_TO)
            .and_then(|s| s.parse().ok());
        self.activity = activity_of(
            self.attribute_str(attr::ORDER_ACTIVITY),
            self.status_to.is_some(),
        );
        self
    }
}

/// What a span's work was to its order, the one rule for stored and arriving spans alike: what
/// it says (`order.activity`). A span without the mark, from a producer that does not know it,
/// is progress when it is a transition (it carries `order.status.to`) and an observation
/// otherwise.
pub fn activity_of(marked: Option<&str>, transition: bool) -> Activity {
    let progress = match marked {
        Some(mark) => mark == Activity::Progress.as_str(),
        None => transition,
    };
    if progress {
        Activity::Progress
    } else {
        Activity::Observation
    }
}

/// [`OrderState::status_source`] of a status a transition span announced.
pub const FROM_TELEMETRY: &str = "telemetry";

/// How sure order-watch is that a stuck order is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// The system that owns the order's stage holds it where order-watch does.
    Confirmed,
    /// That system could not be asked; the order is flagged all the same (fail safe).
    Unconfirmed,
}

impl Confirmation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Unconfirmed => "unconfirmed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Confirmed, Self::Unconfirmed]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// An order's journey summary as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderState {
    pub order_id: Uuid,
    pub first_seen: DateTime<Utc>,
    /// End of its latest span of any kind.
    pub last_seen: DateTime<Utc>,
    /// End of its latest progress span, or when its system of record says it last moved.
    pub last_progress: DateTime<Utc>,
    pub status: Option<OrderStatus>,
    pub status_at: Option<DateTime<Utc>>,
    /// [`FROM_TELEMETRY`], or the `service.name` whose own record the status was taken from.
    pub status_source: String,
    pub stage: Stage,
    pub terminal: bool,
    /// Last progress + the stage's threshold; none once terminal.
    pub deadline: Option<DateTime<Utc>>,
    /// When the detector looks at the order next (see the migration).
    pub check_at: Option<DateTime<Utc>>,
    pub stuck_since: Option<DateTime<Utc>>,
    /// Set while stuck.
    pub stuck_confirmation: Option<Confirmation>,
    /// What the system of record answered when last asked, in words.
    pub confirmation: Option<String>,
    pub confirmed_at: Option<DateTime<Utc>>,
    /// Requests that only read the order since its last progress.
    pub observations_since_progress: i64,
    pub span_count: i64,
    pub error_count: i64,
    pub max_retries: i64,
    pub dead_letters: i64,
    /// Service and name of the latest progress span.
    pub last_service: String,
    pub last_span: String,
}

impl OrderState {
    /// A new journey whose first span starts at `first_seen`.
    pub(crate) fn new(order_id: Uuid, first_seen: DateTime<Utc>) -> Self {
        Self {
            order_id,
            first_seen,
            last_seen: first_seen,
            last_progress: first_seen,
            status: None,
            status_at: None,
            status_source: FROM_TELEMETRY.to_owned(),
            stage: Stage::Intake,
            terminal: false,
            deadline: None,
            check_at: None,
            stuck_since: None,
            stuck_confirmation: None,
            confirmation: None,
            confirmed_at: None,
            observations_since_progress: 0,
            span_count: 0,
            error_count: 0,
            max_retries: 0,
            dead_letters: 0,
            last_service: String::new(),
            last_span: String::new(),
        }
    }

    /// Sets stage, terminal, deadline and the next check from status and last progress, and
    /// clears `stuck`: what follows whenever the order is known to have moved.
    /// (`runtime_config::change` applies the same deadline rule in SQL to every open order when
    /// the thresholds change.)
    pub fn moved(&mut self, thresholds: &Thresholds) {
        self.stage = self.status.map_or(Stage::Intake, OrderStatus::stage);
        self.terminal = self.status.is_some_and(OrderStatus::is_terminal);
        self.deadline = (!self.terminal).then(|| {
            self.last_progress
                + chrono::Duration::from_std(thresholds.for_stage(self.stage)).unwrap_or_default()
        });
        self.check_at = self.deadline;
        self.stuck_since = None;
        self.stuck_confirmation = None;
        self.confirmation = None;
    }
}

/// Folds an order's new spans into its state. Only progress that did not fail moves the order:
/// its last progress, status, stage and deadline, and whether it is stuck. Observations are
/// counted.
pub fn merge(
    previous: Option<OrderState>,
    order_id: Uuid,
    spans: &[&SpanRecord],
    now: DateTime<Utc>,
    thresholds: &Thresholds,
) -> OrderState {
    let latest_allowed = now + MAX_CLOCK_SKEW;
    let earliest = spans
        .iter()
        .map(|s| s.start.min(latest_allowed))
        .min()
        .unwrap_or(now);
    let is_new = previous.is_none();
    let mut state = previous.unwrap_or_else(|| OrderState::new(order_id, earliest));
    let before = (state.last_progress, state.status);
    let mut ordered: Vec<&&SpanRecord> = spans.iter().collect();
    ordered.sort_by_key(|s| s.end);
    for span in ordered {
        let end = span.end.min(latest_allowed);
        state.first_seen = state.first_seen.min(span.start.min(latest_allowed));
        state.last_seen = state.last_seen.max(end);
        if span.moves_order() {
            if end >= state.last_progress {
                state.last_progress = end;
                state.last_service = span.service.clone();
                state.last_span = span.name.clone();
                state.observations_since_progress = 0;
            }
            if let Some(to) = span.status_to {
                let forward = match state.status {
                    None => true,
                    Some(current) => OrderStatus::supersedes(to, current),
                };
                if forward {
                    state.status = Some(to);
                    state.status_at = Some(end);
                    state.status_source = FROM_TELEMETRY.to_owned();
                }
            }
        } else if span.kind == SERVER_KIND && end > state.last_progress {
            state.observations_since_progress += 1;
        }
        state.span_count += 1;
        state.error_count += i64::from(span.is_error());
        if let Some(retries) = span.attribute_i64(attr::RETRY_COUNT) {
            state.max_retries = state.max_retries.max(retries);
        }
        if span.attribute_str(attr::DLQ_ROUTE).is_some() {
            state.dead_letters += 1;
        }
    }
    if is_new || (state.last_progress, state.status) != before {
        state.moved(thresholds);
    }
    state
}

/// OTLP's SERVER span kind: a request someone made.
const SERVER_KIND: i16 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_span_is_progress_when_it_says_so_or_is_an_unmarked_transition() {
        use Activity::{Observation, Progress};
        assert_eq!(activity_of(Some("progress"), false), Progress);
        assert_eq!(activity_of(Some("observation"), true), Observation);
        assert_eq!(activity_of(Some("anything"), false), Observation);
        assert_eq!(activity_of(None, true), Progress);
        assert_eq!(activity_of(None, false), Observation);
    }

    /// A span of `order` ending `end_offset_s` after `base`, moving it to `status_to` when given,
    /// marked with `activity` when given.
    fn span(status_to: Option<&str>, end_offset_s: i64, base: DateTime<Utc>) -> SpanRecord {
        let mut attributes = serde_json::Map::new();
        if let Some(to) = status_to {
            attributes.insert("order.status.to".into(), Value::String(to.into()));
        }
        SpanRecord {
            order_id: Uuid::nil(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: None,
            service: "mes-api".into(),
            name: "order priced".into(),
            kind: 1,
            start: base + chrono::Duration::seconds(end_offset_s - 1),
            end: base + chrono::Duration::seconds(end_offset_s),
            status_code: 0,
            status_message: String::new(),
            attributes,
            links: vec![],
            status_to: None,
            activity: Activity::Observation,
        }
        .classified()
    }

    fn marked(mut span: SpanRecord, activity: Activity, kind: i16) -> SpanRecord {
        span.attributes.insert(
            telemetry::attr::ORDER_ACTIVITY.into(),
            Value::String(activity.as_str().into()),
        );
        span.kind = kind;
        span.classified()
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            default: Duration::from_secs(60),
            per_stage: Default::default(),
        }
    }

    #[test]
    fn the_status_only_moves_forward_and_sets_the_stage_and_deadline() {
        let now = Utc::now();
        let late_registered = span(Some("registered"), 5, now);
        let priced = span(Some("priced"), 3, now);
        let state = merge(
            None,
            Uuid::nil(),
            &[&late_registered, &priced],
            now,
            &thresholds(),
        );
        assert_eq!(state.status, Some(OrderStatus::Priced));
        assert_eq!(state.stage, Stage::CustomerConfirmation);
        assert_eq!(state.last_progress, now + chrono::Duration::seconds(5));
        assert_eq!(state.deadline, Some(now + chrono::Duration::seconds(65)));
        assert_eq!(state.check_at, state.deadline);
        assert_eq!(state.span_count, 2);
    }

    #[test]
    fn a_terminal_order_has_no_deadline_and_progress_unsticks_an_order() {
        let now = Utc::now();
        let mut stuck = merge(
            None,
            Uuid::nil(),
            &[&span(Some("pricing"), 0, now)],
            now,
            &thresholds(),
        );
        stuck.stuck_since = Some(now);
        stuck.stuck_confirmation = Some(Confirmation::Confirmed);
        let attempt = marked(span(None, 10, now), Activity::Progress, 1);
        let moved = merge(Some(stuck), Uuid::nil(), &[&attempt], now, &thresholds());
        assert_eq!(moved.stuck_since, None);
        assert_eq!(moved.stuck_confirmation, None);
        assert_eq!(moved.status, Some(OrderStatus::Pricing));
        assert_eq!(moved.deadline, Some(now + chrono::Duration::seconds(70)));
        let done = merge(
            Some(moved),
            Uuid::nil(),
            &[&span(Some("rejected"), 20, now)],
            now,
            &thresholds(),
        );
        assert!(done.terminal);
        assert_eq!((done.deadline, done.check_at), (None, None));
    }

    #[test]
    fn reads_of_a_stuck_order_are_counted_and_change_neither_its_deadline_nor_its_verdict() {
        let now = Utc::now();
        let mut stuck = merge(
            None,
            Uuid::nil(),
            &[&span(Some("registered"), 0, now)],
            now,
            &thresholds(),
        );
        stuck.stuck_since = stuck.deadline;
        stuck.stuck_confirmation = Some(Confirmation::Confirmed);
        stuck.check_at = Some(now + chrono::Duration::seconds(3600));
        let before = stuck.clone();
        let read = marked(span(None, 30, now), Activity::Observation, 2);
        let statement = marked(span(None, 30, now), Activity::Observation, 3);
        let after = merge(
            Some(stuck),
            Uuid::nil(),
            &[&read, &statement],
            now,
            &thresholds(),
        );
        assert_eq!(
            after.observations_since_progress, 1,
            "one request, not its statement"
        );
        assert_eq!(after.last_seen, now + chrono::Duration::seconds(30));
        assert_eq!(
            (
                after.last_progress,
                after.deadline,
                after.check_at,
                after.stuck_since
            ),
            (
                before.last_progress,
                before.deadline,
                before.check_at,
                before.stuck_since
            )
        );
        assert_eq!(
            after.last_span, before.last_span,
            "the last progress span is kept"
        );
    }

    #[test]
    fn a_failed_transition_neither_moves_the_status_nor_counts_as_progress() {
        let now = Utc::now();
        let state = merge(
            None,
            Uuid::nil(),
            &[&span(Some("priced"), 0, now)],
            now,
            &thresholds(),
        );
        let mut refused = marked(span(Some("confirmed"), 30, now), Activity::Progress, 1);
        refused.status_code = 2;
        let after = merge(
            Some(state.clone()),
            Uuid::nil(),
            &[&refused],
            now,
            &thresholds(),
        );
        assert_eq!(after.status, Some(OrderStatus::Priced));
        assert_eq!(after.deadline, state.deadline);
        assert_eq!(after.error_count, 1);
    }

    #[test]
    fn a_span_from_the_future_counts_as_now_plus_the_allowed_skew() {
        let now = Utc::now();
        let future = span(Some("created"), 86_400, now);
        let state = merge(None, Uuid::nil(), &[&future], now, &Thresholds::default());
        assert_eq!(state.last_seen, now + MAX_CLOCK_SKEW);
        assert_eq!(state.last_progress, now + MAX_CLOCK_SKEW);
    }
}
