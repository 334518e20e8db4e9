//! What the holders' answers about one order mean — the pure rule reconciliation judges by, and
//! the repair it implies. No I/O, no clock.
//!
//! **The reference** is the owner's word: among the statuses the holders hold, those whose
//! owner ([`OrderStatus::owner`]) holds exactly that status are *confirmed*; the reference is the
//! most advanced confirmed one. A status nobody's owner confirms (order-watch saw the span of a
//! move whose transaction was rolled back; a system's data restored from an older backup) is
//! never the reference. Two confirmed ends that exclude each other (Shop's `cancelled`, MES's
//! `failed`) both stay where they are, since projections never leave an end: the first, by its
//! owner's time, is the reference and the other is `diverged`.
//!
//! **Each holder** then agrees (holds the reference), or is
//! * `lagging`: holds a status the reference is a step forward from;
//! * `ahead`: holds a status forward from the reference, which its owner does not confirm;
//! * `missing`: does not know the order although it should by now ([`Holder::due`]);
//! * `diverged`: holds another end.
//!
//! The order agrees when every holder does.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::{OrderStatus, System};
use serde::{Deserialize, Serialize};

/// Who holds a status of an order: one of the systems of record, or order-watch itself (the
/// status it derived from the spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    System(System),
    OrderWatch,
}

impl Holder {
    pub const ALL: [Holder; 4] = [
        Self::System(System::Shop),
        Self::System(System::Crm),
        Self::System(System::Mes),
        Self::OrderWatch,
    ];

    /// Its `service.name`, as labels and answers name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::System(system) => system.service_name(),
            Self::OrderWatch => crate::SERVICE_NAME,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|holder| holder.name() == name)
    }

    /// Whether it knows every order whose reference status is `reference`, once the messages
    /// already sent have arrived: Shop and order-watch know every order from its creation; CRM
    /// is told by `order.created`, sent when the order is `submitted`; MES by CRM's price
    /// request, sent with `registered`. An order that ends (`cancelled`, `rejected`, `failed`)
    /// reaches every system: MES records the end of an order it was never asked to price.
    pub fn due(self, reference: OrderStatus) -> bool {
        use OrderStatus::{Created, Submitted};
        match self {
            Self::System(System::Shop) | Self::OrderWatch => true,
            Self::System(System::Crm) => reference != Created,
            Self::System(System::Mes) => !matches!(reference, Created | Submitted),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Holder {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Holder {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("`{name}` holds no order status")))
    }
}

/// A status as one holder holds it, and since when (its own record's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub status: OrderStatus,
    pub since: DateTime<Utc>,
}

/// What each holder said: `None` for a holder that does not know the order.
pub type Views = BTreeMap<Holder, Option<View>>;

/// How a holder disagrees with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Lagging,
    Ahead,
    Missing,
    Diverged,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Self::Lagging, Self::Ahead, Self::Missing, Self::Diverged];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lagging => "lagging",
            Self::Ahead => "ahead",
            Self::Missing => "missing",
            Self::Diverged => "diverged",
        }
    }
}

/// One holder that disagrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    #[serde(rename = "system")]
    pub holder: Holder,
    pub kind: Kind,
    /// What it holds (none when missing).
    pub holds: Option<OrderStatus>,
}

impl Mismatch {
    /// "crm-api lags behind (holds pricing)".
    pub fn describe(&self) -> String {
        let holds = self.holds.map_or("nothing", OrderStatus::as_str);
        match self.kind {
            Kind::Lagging => format!("{} lags behind (holds {holds})", self.holder),
            Kind::Ahead => format!("{} is ahead of the owner (holds {holds})", self.holder),
            Kind::Missing => format!("{} does not know the order", self.holder),
            Kind::Diverged => format!("{} holds another end ({holds})", self.holder),
        }
    }

    /// `crm-api/lagging`: how a disagreement remembers the mismatches it counted.
    pub fn key(&self) -> String {
        format!("{}/{}", self.holder, self.kind.as_str())
    }
}

/// The owner's word on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub status: OrderStatus,
    pub owner: System,
    /// When the owner recorded it.
    pub since: DateTime<Utc>,
}

/// What the holders' answers mean for one order.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// `None` when no holder holds a status its owner confirms.
    pub reference: Option<Reference>,
    /// The holders that disagree, in [`Holder::ALL`]'s order.
    pub mismatches: Vec<Mismatch>,
    /// The latest time any holder recorded its status: when the present state arose.
    pub changed_at: DateTime<Utc>,
}

impl Judgement {
    /// The status every holder holds, when they agree.
    pub fn agreed_on(&self) -> Option<OrderStatus> {
        self.reference
            .filter(|_| self.mismatches.is_empty())
            .map(|r| r.status)
    }

    /// For an agreement: how long after its owner recorded the status the last holder recorded
    /// it too (never negative: the holders' clocks may differ a little).
    pub fn agreement_time(&self) -> Option<chrono::Duration> {
        self.agreed_on()?;
        let reference = self.reference?;
        Some((self.changed_at - reference.since).max(chrono::Duration::zero()))
    }

    /// "the owner mes-api holds priced; crm-api lags behind (holds pricing)".
    pub fn describe(&self) -> String {
        let mut parts = vec![match self.reference {
            Some(r) => format!("the owner {} holds {}", r.owner, r.status),
            None => "no owner holds a status of it".to_owned(),
        }];
        parts.extend(self.mismatches.iter().map(Mismatch::describe));
        parts.join("; ")
    }
}

/// Judges one order from every holder's view; `None` when no holder knows it.
pub fn judge(views: &Views) -> Option<Judgement> {
    let held: Vec<(Holder, View)> = views
        .iter()
        .filter_map(|(holder, view)| view.map(|view| (*holder, view)))
        .collect();
    let changed_at = held.iter().map(|(_, view)| view.since).max()?;
    let reference = reference(views, &held);
    let mismatches = Holder::ALL
        .into_iter()
        .filter_map(|holder| {
            let view = views.get(&holder).copied().flatten();
            mismatch(holder, view, reference.map(|r| r.status))
        })
        .collect();
    Some(Judgement {
        reference,
        mismatches,
        changed_at,
    })
}

/// The most advanced status its owner confirms; of two ends, the earlier.
fn reference(views: &Views, held: &[(Holder, View)]) -> Option<Reference> {
    let confirmed = held.iter().filter_map(|(_, view)| {
        let owner = view.status.owner();
        let owners = views.get(&Holder::System(owner)).copied().flatten()?;
        (owners.status == view.status).then_some(Reference {
            status: view.status,
            owner,
            since: owners.since,
        })
    });
    confirmed.reduce(|best, candidate| {
        if OrderStatus::supersedes(candidate.status, best.status) {
            candidate
        } else if OrderStatus::supersedes(best.status, candidate.status) {
            best
        } else if candidate.since < best.since {
            candidate
        } else {
            best
        }
    })
}

fn mismatch(
    holder: Holder,
    view: Option<View>,
    reference: Option<OrderStatus>,
) -> Option<Mismatch> {
    let holds = view.map(|v| v.status);
    let kind = match (holds, reference) {
        (Some(held), Some(reference)) if held == reference => return None,
        (Some(held), Some(reference)) if OrderStatus::supersedes(reference, held) => Kind::Lagging,
        (Some(held), Some(reference)) if OrderStatus::supersedes(held, reference) => Kind::Ahead,
        (Some(_), Some(_)) => Kind::Diverged,
        (Some(_), None) => Kind::Ahead,
        (None, Some(reference)) if holder.due(reference) => Kind::Missing,
        (None, _) => return None,
    };
    Some(Mismatch {
        holder,
        kind,
        holds,
    })
}

/// What a repair does for a disagreeing order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The systems asked to republish, in this order: the ones that introduce the order to a
    /// system missing it (Shop to CRM, CRM to MES), then the owner of the reference.
    pub ask: Vec<System>,
    /// order-watch lags: it takes the owner's record (a telemetry gap, as the stuck detector
    /// records one), since the spans it missed will not come again.
    pub adopt: bool,
    /// What republishing cannot mend: a holder ahead of its owner or at another end, Shop
    /// missing an order, order-watch without a journey. A person decides.
    pub left: Vec<Mismatch>,
}

/// The repair of `judgement`'s disagreement. Republishing only ever moves a holder forward to
/// what the owners confirm.
pub fn plan(judgement: &Judgement) -> Plan {
    let mut plan = Plan::default();
    let Some(reference) = judgement.reference else {
        plan.left = judgement.mismatches.clone();
        return plan;
    };
    let mut owner_asked = false;
    for mismatch in &judgement.mismatches {
        match (mismatch.holder, mismatch.kind) {
            (Holder::System(System::Crm), Kind::Missing) => {
                push_once(&mut plan.ask, System::Shop);
                owner_asked = true;
            }
            (Holder::System(System::Mes), Kind::Missing) => {
                push_once(&mut plan.ask, System::Crm);
                owner_asked = true;
            }
            (Holder::System(_), Kind::Lagging) => owner_asked = true,
            (Holder::OrderWatch, Kind::Lagging) => plan.adopt = true,
            _ => plan.left.push(*mismatch),
        }
    }
    if owner_asked {
        push_once(&mut plan.ask, reference.owner);
    }
    plan
}

fn push_once(systems: &mut Vec<System>, system: System) {
    if !systems.contains(&system) {
        systems.push(system);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    const SHOP: Holder = Holder::System(System::Shop);
    const CRM: Holder = Holder::System(System::Crm);
    const MES: Holder = Holder::System(System::Mes);
    const WATCH: Holder = Holder::OrderWatch;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    /// Views of Shop, CRM, MES and order-watch, each a status since a second, or unknown.
    fn views(held: [Option<(OrderStatus, i64)>; 4]) -> Views {
        Holder::ALL
            .into_iter()
            .zip(held)
            .map(|(holder, view)| {
                let view = view.map(|(status, second)| View {
                    status,
                    since: at(second),
                });
                (holder, view)
            })
            .collect()
    }

    fn kinds(judgement: &Judgement) -> Vec<(Holder, Kind)> {
        judgement
            .mismatches
            .iter()
            .map(|m| (m.holder, m.kind))
            .collect()
    }

    #[test]
    fn holders_that_all_hold_the_owners_status_agree_and_took_as_long_as_the_last_of_them() {
        let judgement = judge(&views([
            Some((Priced, 3)),
            Some((Priced, 5)),
            Some((Priced, 1)),
            Some((Priced, 2)),
        ]))
        .unwrap();
        assert_eq!(judgement.agreed_on(), Some(Priced));
        assert_eq!(
            judgement.reference,
            Some(Reference {
                status: Priced,
                owner: System::Mes,
                since: at(1)
            })
        );
        assert_eq!(
            judgement.agreement_time(),
            Some(chrono::Duration::seconds(4))
        );
    }

    #[test]
    fn a_system_behind_the_owner_lags_and_one_past_it_is_ahead() {
        // MES priced; CRM's priced event went missing; order-watch saw a later move's span of a
        // transaction that did not commit.
        let judgement = judge(&views([
            Some((Priced, 2)),
            Some((Pricing, 1)),
            Some((Priced, 2)),
            Some((Confirmed, 3)),
        ]))
        .unwrap();
        assert_eq!(judgement.reference.unwrap().status, Priced);
        assert_eq!(
            kinds(&judgement),
            vec![(CRM, Kind::Lagging), (WATCH, Kind::Ahead)]
        );
        assert_eq!(judgement.agreed_on(), None);
        assert_eq!(judgement.changed_at, at(3));
        assert_eq!(
            judgement.describe(),
            "the owner mes-api holds priced; crm-api lags behind (holds pricing); \
             order-watch is ahead of the owner (holds confirmed)"
        );
    }

    #[test]
    fn a_system_that_should_know_the_order_and_does_not_is_missing() {
        let submitted = judge(&views([
            Some((Submitted, 1)),
            None,
            None,
            Some((Submitted, 1)),
        ]));
        assert_eq!(kinds(&submitted.unwrap()), vec![(CRM, Kind::Missing)]);
        // MES is told with `registered`; before, it is not missing anything.
        let created = judge(&views([Some((Created, 1)), None, None, Some((Created, 1))]));
        assert_eq!(created.unwrap().agreed_on(), Some(Created));
        let registered = judge(&views([
            Some((Registered, 2)),
            Some((Registered, 2)),
            None,
            Some((Registered, 2)),
        ]));
        assert_eq!(kinds(&registered.unwrap()), vec![(MES, Kind::Missing)]);
        assert!(judge(&views([None, None, None, None])).is_none());
    }

    #[test]
    fn a_status_its_owner_does_not_hold_is_never_the_reference() {
        // MES's data restored to before it priced: the others are ahead of it.
        let judgement = judge(&views([
            Some((Priced, 2)),
            Some((Priced, 2)),
            Some((Pricing, 1)),
            Some((Priced, 2)),
        ]))
        .unwrap();
        assert_eq!(judgement.reference.unwrap().status, Pricing);
        assert_eq!(
            kinds(&judgement),
            vec![
                (SHOP, Kind::Ahead),
                (CRM, Kind::Ahead),
                (WATCH, Kind::Ahead)
            ]
        );
        // Nobody's owner confirms anything: whatever is held is ahead of nothing.
        let judgement = judge(&views([None, None, None, Some((Priced, 2))])).unwrap();
        assert_eq!(judgement.reference, None);
        assert_eq!(kinds(&judgement), vec![(WATCH, Kind::Ahead)]);
    }

    #[test]
    fn two_ends_are_diverged_and_the_first_by_its_owners_time_is_the_reference() {
        let judgement = judge(&views([
            Some((Cancelled, 5)),
            Some((Failed, 6)),
            Some((Failed, 4)),
            Some((Failed, 4)),
        ]))
        .unwrap();
        assert_eq!(judgement.reference.unwrap().status, Failed);
        assert_eq!(kinds(&judgement), vec![(SHOP, Kind::Diverged)]);
    }

    #[test]
    fn a_step_back_from_quality_check_is_the_owners_and_the_others_lag_behind_it() {
        let judgement = judge(&views([
            Some((QualityCheck, 1)),
            Some((QualityCheck, 1)),
            Some((InProduction, 2)),
            Some((InProduction, 2)),
        ]))
        .unwrap();
        assert_eq!(judgement.reference.unwrap().status, InProduction);
        assert_eq!(
            kinds(&judgement),
            vec![(SHOP, Kind::Lagging), (CRM, Kind::Lagging)]
        );
    }

    #[test]
    fn a_repair_asks_the_introducer_of_a_missing_system_and_then_the_owner() {
        let lagging = judge(&views([
            Some((Priced, 2)),
            Some((Pricing, 1)),
            Some((Priced, 2)),
            Some((Priced, 2)),
        ]))
        .unwrap();
        assert_eq!(
            plan(&lagging),
            Plan {
                ask: vec![System::Mes],
                ..Plan::default()
            }
        );
        let missing = judge(&views([
            Some((Submitted, 1)),
            None,
            None,
            Some((Submitted, 1)),
        ]))
        .unwrap();
        assert_eq!(plan(&missing).ask, vec![System::Shop]);
        let mes_missing = judge(&views([
            Some((Confirmed, 3)),
            Some((Confirmed, 3)),
            None,
            Some((Pricing, 1)),
        ]))
        .unwrap();
        let repair = plan(&mes_missing);
        assert_eq!(repair.ask, vec![System::Crm, System::Shop]);
        assert!(
            repair.adopt,
            "order-watch lags too: it takes the owner's record"
        );
    }

    #[test]
    fn what_republishing_cannot_mend_is_left_to_a_person() {
        let ahead = judge(&views([
            Some((Priced, 2)),
            Some((Priced, 2)),
            Some((Pricing, 1)),
            Some((Pricing, 1)),
        ]))
        .unwrap();
        let repair = plan(&ahead);
        assert!(repair.ask.is_empty() && !repair.adopt);
        assert_eq!(repair.left.len(), 2);
        let shop_missing = judge(&views([
            None,
            Some((Registered, 1)),
            None,
            Some((Registered, 1)),
        ]))
        .unwrap();
        let repair = plan(&shop_missing);
        assert_eq!(repair.left[0].holder, SHOP);
        assert_eq!(repair.ask, vec![System::Crm], "MES is told by CRM");
    }

    #[test]
    fn holders_are_named_as_their_services_in_json() {
        let mismatch = Mismatch {
            holder: CRM,
            kind: Kind::Lagging,
            holds: Some(Pricing),
        };
        let json = serde_json::to_value(mismatch).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"system": "crm-api", "kind": "lagging", "holds": "pricing"})
        );
        assert_eq!(serde_json::from_value::<Mismatch>(json).unwrap(), mismatch);
        assert_eq!(mismatch.key(), "crm-api/lagging");
        assert_eq!(Holder::parse("order-watch"), Some(WATCH));
    }
}
