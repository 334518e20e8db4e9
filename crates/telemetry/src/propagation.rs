//! The order a piece of work is for, in its context: `order.id` in W3C baggage, so that it
//! crosses every boundary (HTTP, AMQP, stored rows, a child process's environment) with the
//! trace, and what the work does to the order ([`Activity`]), which stays in the process.
//!
//! The carriers live with their transports (HTTP in `platform::http`, AMQP in `messaging`,
//! stored rows in `platform::db`); all of them use `otel_fastpath`'s propagator. `order.id` is
//! trusted only from our own hops: the HTTP edge drops a caller's ([`without_order`]) and sets
//! it from the request path instead.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::{Context, StringValue};
use otel_fastpath::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE, extract, inject};
use uuid::Uuid;

use crate::attributes::BAGGAGE_ORDER_ID;

/// What work for an order does to it, as every span of that work says in `order.activity`.
///
/// order-watch judges whether an order is stuck by its progress alone: a customer who keeps
/// reading the status of an order that hangs must not make it look alive. The mark lives in the
/// context, not in baggage: it never crosses a process boundary, and each process's entry point
/// for an order's work says what that work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Work that moves the order: a status transition, processing its messages, publishing
    /// them, pricing it, storing its model. A progress span that fails is not progress.
    Progress,
    /// Work that only reads the order: the status a customer, partner or manager looks up,
    /// and any request until it does something that moves the order.
    Observation,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progress => "progress",
            Self::Observation => "observation",
        }
    }
}

/// `cx` with `order.id` added to its baggage (other entries are kept), for work that is
/// `activity`.
pub fn with_order(cx: &Context, order_id: Uuid, activity: Activity) -> Context {
    let mut baggage = baggage_without_order(cx);
    let value = StringValue::from(Arc::<str>::from(order_id.to_string()));
    let _ = baggage.insert(BAGGAGE_ORDER_ID, value.clone());
    cx.with_baggage(baggage)
        .with_value(KnownOrder(order_id, value))
        .with_value(activity)
}

/// `cx` for work that moves its order: spans started under it are progress.
pub fn as_progress(cx: &Context) -> Context {
    cx.with_value(Activity::Progress)
}

/// What work under `cx` does to its order; work nobody marked only observes it.
pub fn activity(cx: &Context) -> Activity {
    cx.get::<Activity>()
        .copied()
        .unwrap_or(Activity::Observation)
}

/// The order id [`with_order`] put into a context's baggage, already parsed, beside the
/// baggage entry itself. Every span of an order reads its order id at start (and every log line
/// in its span), and this spares each of them parsing and formatting the id again.
#[derive(Debug)]
struct KnownOrder(Uuid, StringValue);

/// The order id carried in `cx`'s baggage, when it is a well-formed UUID, with its canonical
/// text (the baggage value itself, cheap to clone, when [`with_order`] put it there).
pub fn order_entry(cx: &Context) -> Option<(Uuid, StringValue)> {
    let entry = cx.baggage().get(BAGGAGE_ORDER_ID)?;
    // The same allocation as the baggage entry: nothing has replaced it since it was parsed.
    if let Some(KnownOrder(id, value)) = cx.get::<KnownOrder>()
        && std::ptr::eq(value.as_str(), entry.as_str())
    {
        return Some((*id, value.clone()));
    }
    let id = Uuid::try_parse(entry.as_str()).ok()?;
    Some((id, StringValue::from(id.to_string())))
}

/// The order id carried in `cx`'s baggage, when it is a well-formed UUID.
pub fn order_id(cx: &Context) -> Option<Uuid> {
    order_entry(cx).map(|(id, _)| id)
}

/// `cx` without `order.id` in its baggage: what an edge that takes contexts from callers it
/// does not trust continues.
pub fn without_order(cx: Context) -> Context {
    if cx.baggage().get(BAGGAGE_ORDER_ID).is_none() {
        return cx;
    }
    let baggage = baggage_without_order(&cx);
    cx.with_baggage(baggage)
}

/// A copy of `cx`'s baggage without `order.id`: every other entry with its properties.
fn baggage_without_order(cx: &Context) -> Baggage {
    cx.baggage()
        .iter()
        .filter(|(k, _)| k.as_str() != BAGGAGE_ORDER_ID)
        .map(|(k, (v, properties))| (k.clone(), (v.clone(), properties.clone())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Process environments

/// The environment variables of the OpenTelemetry environment-variable carrier.
const ENV_FIELDS: [(&str, &str); 3] = [
    (TRACEPARENT, "TRACEPARENT"),
    (TRACESTATE, "TRACESTATE"),
    (BAGGAGE, "BAGGAGE"),
];

/// Environment variables (`TRACEPARENT`, `TRACESTATE`, `BAGGAGE`) that hand `cx` to a child
/// process, the convention of the OpenTelemetry environment-variable carrier.
pub fn to_env(cx: &Context) -> Vec<(String, String)> {
    let mut fields = HashMap::new();
    inject(cx, &mut fields);
    ENV_FIELDS
        .iter()
        .filter_map(|(field, variable)| {
            // An empty field says nothing (the SDK's propagator writes an empty `tracestate`).
            let value = fields.remove(*field).filter(|value| !value.is_empty())?;
            Some(((*variable).to_owned(), value))
        })
        .collect()
}

/// The parent context a child process was started with (see [`to_env`]).
pub fn from_env() -> Context {
    let fields: HashMap<String, String> = ENV_FIELDS
        .iter()
        .filter_map(|(field, variable)| Some(((*field).to_owned(), settings::optional(variable)?)))
        .collect();
    extract(&fields)
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_context_and_its_order_survive_a_child_process_environment() {
        let remote = otel_fastpath::propagation::remote_parent(PARENT);
        let order = Uuid::now_v7();
        let cx = with_order(&remote, order, Activity::Progress);
        let env = to_env(&cx);
        assert!(env.iter().any(|(k, v)| k == "TRACEPARENT" && v == PARENT));
        assert!(
            env.iter()
                .any(|(k, v)| k == "BAGGAGE" && *v == format!("order.id={order}"))
        );
        assert!(
            !env.iter().any(|(k, _)| k == "TRACESTATE"),
            "empty: not sent"
        );
    }

    #[test]
    fn the_http_edge_forgets_a_callers_order_id_and_keeps_the_rest() {
        let cx = Context::new().with_baggage(vec![
            KeyValue::new(BAGGAGE_ORDER_ID, Uuid::now_v7().to_string()),
            KeyValue::new("tenant", "acme"),
        ]);
        let cx = without_order(cx);
        assert_eq!(order_id(&cx), None);
        assert_eq!(cx.baggage().len(), 1);
    }
    #[test]
    fn the_order_id_is_read_from_the_baggage_entry_it_was_set_with_or_parsed() {
        let order = Uuid::now_v7();
        let cx = with_order(&Context::new(), order, Activity::Progress);
        let (id, text) = order_entry(&cx).unwrap();
        assert_eq!(id, order);
        // Not parsed again: the text handed out is the baggage entry's own.
        let child = cx.with_value(7_u8);
        let entry = child.baggage().get(BAGGAGE_ORDER_ID).unwrap();
        assert!(std::ptr::eq(text.as_str(), entry.as_str()));
        assert!(std::ptr::eq(
            order_entry(&child).unwrap().1.as_str(),
            entry.as_str()
        ));
        // A hop that carried only the baggage: parsed again, and written canonically.
        let simple = Context::new().with_baggage(vec![KeyValue::new(
            BAGGAGE_ORDER_ID,
            order.simple().to_string().to_uppercase(),
        )]);
        let (id, text) = order_entry(&simple).unwrap();
        assert_eq!((id, text.as_str()), (order, order.to_string().as_str()));
        // The baggage entry replaced after `with_order`: the entry wins, not the parsed id.
        let other = Uuid::now_v7();
        let replaced = cx.with_baggage(vec![KeyValue::new(BAGGAGE_ORDER_ID, other.to_string())]);
        assert_eq!(order_id(&replaced), Some(other));
        let removed = cx.with_baggage(Vec::<KeyValue>::new());
        assert_eq!(order_id(&removed), None);
    }

    #[test]
    fn a_malformed_order_id_in_baggage_is_ignored() {
        let cx = Context::new().with_baggage(vec![KeyValue::new("order.id", "not-a-uuid")]);
        assert_eq!(order_id(&cx), None);
    }
}
