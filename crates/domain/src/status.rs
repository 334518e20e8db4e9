//! The order status machine: one vocabulary for every service, event and span.
//!
//! Two rules live here and nowhere else:
//!
//! * [`OrderStatus::transition`] is the *owner's* rule. The service that performs a transition
//!   (Shop creates and confirms, CRM registers and ships, MES prices and produces) checks it before
//!   writing, and an illegal move is refused with a [`TransitionError`].
//! * [`OrderStatus::supersedes`] is the *projection's* rule. Every service keeps its own view of
//!   orders it does not own, fed by `order.status_changed` events that can arrive late, twice or out
//!   of order. A projection only ever moves forward, so replaying or reordering events converges on
//!   the same state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where an order is. Wire form is the lowercase snake_case name (`in_production`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Shop accepted the order and stored its model; the hand-over to CRM is in Shop's outbox.
    Created,
    /// The `order.created` event reached the broker (publisher-confirmed).
    Submitted,
    /// CRM registered the order and asked MES for a price.
    Registered,
    /// MES is computing the price from the model.
    Pricing,
    /// MES produced a price; the customer has to confirm it.
    Priced,
    /// The customer accepted the price.
    Confirmed,
    InProduction,
    QualityCheck,
    /// Produced and checked; waiting to be shipped.
    Ready,
    Shipped,
    Delivered,
    /// Terminal: the order cannot be made, e.g. its model is not a closed solid.
    Rejected,
    /// Terminal: the customer withdrew the order before production.
    Cancelled,
    /// Terminal: processing failed for good (e.g. a message dead-lettered after all retries).
    Failed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 14] = [
        Self::Created,
        Self::Submitted,
        Self::Registered,
        Self::Pricing,
        Self::Priced,
        Self::Confirmed,
        Self::InProduction,
        Self::QualityCheck,
        Self::Ready,
        Self::Shipped,
        Self::Delivered,
        Self::Rejected,
        Self::Cancelled,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Submitted => "submitted",
            Self::Registered => "registered",
            Self::Pricing => "pricing",
            Self::Priced => "priced",
            Self::Confirmed => "confirmed",
            Self::InProduction => "in_production",
            Self::QualityCheck => "quality_check",
            Self::Ready => "ready",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// No transition leaves a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Rejected | Self::Cancelled | Self::Failed
        )
    }

    /// The position on the happy path; terminal statuses rank above everything else so that a
    /// projection that has seen the end never moves back.
    fn rank(self) -> u8 {
        match self {
            Self::Created => 0,
            Self::Submitted => 1,
            Self::Registered => 2,
            Self::Pricing => 3,
            Self::Priced => 4,
            Self::Confirmed => 5,
            Self::InProduction => 6,
            Self::QualityCheck => 7,
            Self::Ready => 8,
            Self::Shipped => 9,
            Self::Delivered | Self::Rejected | Self::Cancelled | Self::Failed => 10,
        }
    }

    /// Whether `next` is a legal move from `self` for the service that owns it.
    pub fn can_transition_to(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        match (self, next) {
            (Created, Submitted)
            | (Submitted, Registered)
            | (Registered, Pricing)
            | (Pricing, Priced)
            | (Priced, Confirmed)
            | (Confirmed, InProduction)
            | (InProduction, QualityCheck)
            | (QualityCheck, Ready)
            // A failed quality check sends the piece back to the bench.
            | (QualityCheck, InProduction)
            | (Ready, Shipped)
            | (Shipped, Delivered) => true,
            // Only a model that cannot be made is rejected, and that is found while pricing.
            (Pricing, Rejected) => true,
            // The customer may withdraw until production starts.
            (Created | Submitted | Registered | Pricing | Priced | Confirmed, Cancelled) => true,
            (from, Failed) => !from.is_terminal(),
            _ => false,
        }
    }

    /// The owner's rule: `Ok(next)` when legal, otherwise an error naming both ends.
    pub fn transition(self, next: OrderStatus) -> Result<OrderStatus, TransitionError> {
        if self.can_transition_to(next) {
            Ok(next)
        } else {
            Err(TransitionError {
                from: self,
                to: next,
            })
        }
    }

    /// The projection's rule: whether an observed status `next` should replace `self` in a view
    /// that does not own the order. Forward-only, so duplicates and stale events are no-ops.
    pub fn supersedes(next: OrderStatus, current: OrderStatus) -> bool {
        if current.is_terminal() {
            return false;
        }
        // Quality check may loop back to production; within that loop the owner's events
        // are the only source, so accept the step back as long as the order is not finished.
        if current == Self::QualityCheck && next == Self::InProduction {
            return true;
        }
        next.rank() > current.rank()
    }

    /// Whether an order now in `current` has passed through `self` on its way there: an event
    /// announcing `self` that arrives after one announcing `current` was overtaken, and still
    /// belongs in the order's history. Terminal statuses are never passed through.
    pub fn overtaken_by(self, current: OrderStatus) -> bool {
        !self.is_terminal() && self.rank() < current.rank()
    }

    /// The system that moves an order into this status: the only one whose record of that move
    /// is authoritative, and whose spans announce it.
    pub fn owner(self) -> System {
        match self {
            Self::Created | Self::Submitted | Self::Confirmed | Self::Cancelled => System::Shop,
            Self::Registered | Self::Shipped | Self::Delivered => System::Crm,
            Self::Pricing
            | Self::Priced
            | Self::Rejected
            | Self::InProduction
            | Self::QualityCheck
            | Self::Ready
            | Self::Failed => System::Mes,
        }
    }

    /// The moves an order makes on the way from `self` (or from nowhere) to `to`, in order and
    /// ending with `to`: the happy path between the two, and a terminal status or a step back
    /// from quality check as the single move it is. Empty when `to` is not ahead of `self`.
    pub fn moves_to(from: Option<OrderStatus>, to: OrderStatus) -> Vec<OrderStatus> {
        if from.is_some_and(|from| !Self::supersedes(to, from)) {
            return Vec::new();
        }
        let after = from.map_or(0, |from| from.rank() + 1);
        if to.rank() < after || to.rank() == 10 && to != Self::Delivered {
            return vec![to];
        }
        Self::ALL
            .into_iter()
            .filter(|s| !s.is_terminal() || *s == Self::Delivered)
            .filter(|s| (after..=to.rank()).contains(&s.rank()))
            .collect()
    }

    /// The stage an order in this status is waiting in; each stage has its own "stuck" threshold.
    pub fn stage(self) -> Stage {
        match self {
            Self::Created => Stage::Intake,
            Self::Submitted => Stage::Registration,
            Self::Registered => Stage::PricingQueue,
            Self::Pricing => Stage::Pricing,
            Self::Priced => Stage::CustomerConfirmation,
            Self::Confirmed => Stage::ProductionQueue,
            Self::InProduction => Stage::Production,
            Self::QualityCheck => Stage::QualityCheck,
            Self::Ready => Stage::Shipping,
            Self::Shipped => Stage::Delivery,
            Self::Delivered | Self::Rejected | Self::Cancelled | Self::Failed => Stage::Done,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "status",
                name: s.to_owned(),
            })
    }
}

/// What an order in a given status is waiting for, and so who is responsible for the next step.
/// `order.stage` on spans and the per-stage thresholds of order-watch use these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Shop has the order; its outbox relay has not yet handed it to the broker.
    Intake,
    /// Waiting for CRM to register the order.
    Registration,
    /// Waiting for MES to pick up the price request.
    PricingQueue,
    /// The calculation engine is working on the model.
    Pricing,
    /// Waiting for the customer to accept the price.
    CustomerConfirmation,
    /// Confirmed; waiting for MES to start production.
    ProductionQueue,
    Production,
    QualityCheck,
    /// Ready; waiting for CRM to ship.
    Shipping,
    /// Shipped; waiting for the delivery to be confirmed.
    Delivery,
    /// Terminal; nothing more is expected.
    Done,
}

impl Stage {
    pub const ALL: [Stage; 11] = [
        Self::Intake,
        Self::Registration,
        Self::PricingQueue,
        Self::Pricing,
        Self::CustomerConfirmation,
        Self::ProductionQueue,
        Self::Production,
        Self::QualityCheck,
        Self::Shipping,
        Self::Delivery,
        Self::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intake => "intake",
            Self::Registration => "registration",
            Self::PricingQueue => "pricing_queue",
            Self::Pricing => "pricing",
            Self::CustomerConfirmation => "customer_confirmation",
            Self::ProductionQueue => "production_queue",
            Self::Production => "production",
            Self::QualityCheck => "quality_check",
            Self::Shipping => "shipping",
            Self::Delivery => "delivery",
            Self::Done => "done",
        }
    }
}

impl Stage {
    /// The system that makes the move out of this stage, and so the system of record to ask
    /// whether an order waiting here has really not moved: Shop hands new orders to the broker
    /// and takes the customer's confirmation, CRM registers, ships and delivers, MES prices and
    /// produces. `None` for `done`.
    pub fn owner(self) -> Option<System> {
        match self {
            Self::Intake | Self::CustomerConfirmation => Some(System::Shop),
            Self::Registration | Self::Shipping | Self::Delivery => Some(System::Crm),
            Self::PricingQueue
            | Self::Pricing
            | Self::ProductionQueue
            | Self::Production
            | Self::QualityCheck => Some(System::Mes),
            Self::Done => None,
        }
    }
}

/// The three systems that keep their own status of every order they know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    Shop,
    Crm,
    Mes,
}

impl System {
    pub const ALL: [System; 3] = [Self::Shop, Self::Crm, Self::Mes];

    /// Its `service.name`.
    pub fn service_name(self) -> &'static str {
        match self {
            Self::Shop => "shop-api",
            Self::Crm => "crm-api",
            Self::Mes => "mes-api",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.service_name())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "stage",
                name: s.to_owned(),
            })
    }
}

/// An owner tried a move the status machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from `{from}` to `{to}`")]
pub struct TransitionError {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

/// A status or stage name outside the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{name}`")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    const HAPPY_PATH: [OrderStatus; 11] = [
        Created,
        Submitted,
        Registered,
        Pricing,
        Priced,
        Confirmed,
        InProduction,
        QualityCheck,
        Ready,
        Shipped,
        Delivered,
    ];

    #[test]
    fn the_happy_path_is_a_chain_of_legal_transitions() {
        for pair in HAPPY_PATH.windows(2) {
            assert_eq!(pair[0].transition(pair[1]), Ok(pair[1]));
        }
    }

    #[test]
    fn skipping_a_step_is_refused_with_both_ends_named() {
        let err = Created.transition(Priced).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an order cannot go from `created` to `priced`"
        );
        assert!(Priced.transition(InProduction).is_err());
        assert!(Registered.transition(Confirmed).is_err());
    }

    #[test]
    fn a_step_is_overtaken_by_every_later_one_and_an_end_by_none() {
        for (i, step) in HAPPY_PATH.iter().enumerate() {
            for later in &HAPPY_PATH[i + 1..] {
                assert!(step.overtaken_by(*later), "{step} before {later}");
                assert!(!later.overtaken_by(*step), "{later} after {step}");
            }
        }
        assert!(Pricing.overtaken_by(Rejected));
        assert!(!Rejected.overtaken_by(Delivered));
        assert!(!Cancelled.overtaken_by(Failed));
        assert!(!Pricing.overtaken_by(Pricing));
    }

    #[test]
    fn nothing_leaves_a_terminal_status() {
        for from in OrderStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in OrderStatus::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn only_pricing_can_reject_and_production_cannot_be_cancelled() {
        let rejecters: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.can_transition_to(Rejected))
            .collect();
        assert_eq!(rejecters, vec![Pricing]);
        assert!(!InProduction.can_transition_to(Cancelled));
        assert!(Priced.can_transition_to(Cancelled));
    }

    #[test]
    fn a_projection_ignores_stale_and_repeated_events() {
        assert!(OrderStatus::supersedes(Priced, Registered));
        assert!(!OrderStatus::supersedes(Registered, Priced));
        assert!(!OrderStatus::supersedes(Priced, Priced));
        assert!(!OrderStatus::supersedes(Shipped, Delivered));
        assert!(!OrderStatus::supersedes(Delivered, Rejected));
        assert!(OrderStatus::supersedes(Rejected, Pricing));
        assert!(OrderStatus::supersedes(InProduction, QualityCheck));
    }

    #[test]
    fn names_round_trip_through_text_and_json() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
        }
        assert!("shipping".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn every_open_stage_has_an_owner_who_makes_the_move_out_of_it() {
        for status in OrderStatus::ALL {
            let stage = status.stage();
            assert_eq!(stage.owner().is_none(), stage == Stage::Done, "{stage}");
        }
        // The owner of a stage makes every move out of it along the happy path.
        for pair in HAPPY_PATH.windows(2) {
            assert_eq!(
                pair[0].stage().owner(),
                Some(pair[1].owner()),
                "{}",
                pair[1]
            );
        }
        assert_eq!(Priced.stage().owner(), Some(Confirmed.owner()));
        assert_eq!(System::Mes.to_string(), "mes-api");
    }

    #[test]
    fn the_moves_between_two_statuses_are_the_happy_path_between_them() {
        assert_eq!(
            OrderStatus::moves_to(Some(Submitted), Priced),
            vec![Registered, Pricing, Priced]
        );
        assert_eq!(
            OrderStatus::moves_to(None, Submitted),
            vec![Created, Submitted]
        );
        assert_eq!(
            OrderStatus::moves_to(Some(Pricing), Rejected),
            vec![Rejected]
        );
        assert_eq!(
            OrderStatus::moves_to(Some(Ready), Delivered),
            vec![Shipped, Delivered]
        );
        assert_eq!(
            OrderStatus::moves_to(Some(QualityCheck), InProduction),
            vec![InProduction]
        );
        assert!(OrderStatus::moves_to(Some(Priced), Priced).is_empty());
        assert!(OrderStatus::moves_to(Some(Priced), Registered).is_empty());
        assert!(OrderStatus::moves_to(Some(Cancelled), Delivered).is_empty());
    }

    #[test]
    fn every_open_status_waits_in_a_stage_other_than_done() {
        for status in OrderStatus::ALL {
            assert_eq!(
                status.is_terminal(),
                status.stage() == Stage::Done,
                "{status}"
            );
        }
    }
}
