//! The ids an order is found by besides its own: the external order id the partner or the shop
//! front end gave it (`order.external_id`), the partner that placed it (`partner.id`) and its
//! customer (`customer.id`, a pseudonymous UUID, never contact data). Recorded in
//! `order_identities` as the spans that carry them arrive, the first value of each winning; a
//! value the masking rules masked (wholly or in part) is not an id and is not recorded.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use telemetry::attr;
use uuid::Uuid;

use crate::journey::SpanRecord;
use crate::masking::MASK;

/// Longest id recorded; ingest already cuts attribute values at 1,024 characters.
const MAX_ID_CHARS: usize = 256;

/// What an order's spans said about its ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub external_id: Option<String>,
    pub partner_id: Option<String>,
    /// Lowercase, as customer ids (UUIDs) are compared.
    pub customer_id: Option<String>,
}

impl Identity {
    /// The ids `spans` carry, the earliest span's first; `None` when they carry none.
    pub fn of(spans: &[&SpanRecord]) -> Option<Self> {
        let mut ordered: Vec<&&SpanRecord> = spans.iter().collect();
        ordered.sort_by_key(|s| s.start);
        let mut identity = Self::default();
        for span in ordered {
            let id = |key: &str| span.attribute_str(key).and_then(usable);
            if identity.external_id.is_none() {
                identity.external_id = id(attr::ORDER_EXTERNAL_ID);
            }
            if identity.partner_id.is_none() {
                identity.partner_id = id(attr::PARTNER_ID);
            }
            if identity.customer_id.is_none() {
                identity.customer_id = id(attr::CUSTOMER_ID).map(|c| c.to_lowercase());
            }
        }
        (identity != Self::default()).then_some(identity)
    }
}

/// `value` as an id: trimmed, not empty, not masked, not absurdly long.
fn usable(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty() && !value.contains(MASK) && value.chars().count() <= MAX_ID_CHARS)
        .then(|| value.to_owned())
}

/// Records the ids of `identities` (order → ids, and when the order was first seen), filling in
/// only those an order has none of yet. The orders' rows must exist (the writer's transaction
/// has just written them).
pub async fn record(
    tx: &mut PgConnection,
    identities: &BTreeMap<Uuid, (Identity, DateTime<Utc>)>,
) -> Result<(), sqlx::Error> {
    if identities.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(identities.len());
    let (mut external, mut partner, mut customer, mut first_seen) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (order_id, (identity, seen)) in identities {
        ids.push(*order_id);
        external.push(identity.external_id.as_deref());
        partner.push(identity.partner_id.as_deref());
        customer.push(identity.customer_id.as_deref());
        first_seen.push(*seen);
    }
    sqlx::query(
        "INSERT INTO order_identities (order_id, external_id, partner_id, customer_id, first_seen) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
         ON CONFLICT (order_id) DO UPDATE SET \
             external_id = COALESCE(order_identities.external_id, EXCLUDED.external_id), \
             partner_id = COALESCE(order_identities.partner_id, EXCLUDED.partner_id), \
             customer_id = COALESCE(order_identities.customer_id, EXCLUDED.customer_id), \
             first_seen = LEAST(order_identities.first_seen, EXCLUDED.first_seen) \
         WHERE (order_identities.external_id IS NULL AND EXCLUDED.external_id IS NOT NULL) \
             OR (order_identities.partner_id IS NULL AND EXCLUDED.partner_id IS NOT NULL) \
             OR (order_identities.customer_id IS NULL AND EXCLUDED.customer_id IS NOT NULL) \
             OR EXCLUDED.first_seen < order_identities.first_seen",
    )
    .bind(ids)
    .bind(external)
    .bind(partner)
    .bind(customer)
    .bind(first_seen)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The ids recorded of `order_id`, if any.
pub async fn of_order(
    pool: &sqlx::PgPool,
    order_id: Uuid,
) -> Result<Option<Identity>, sqlx::Error> {
    let row: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT external_id, partner_id, customer_id FROM order_identities WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(external_id, partner_id, customer_id)| Identity {
        external_id,
        partner_id,
        customer_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};
    use telemetry::propagation::Activity;

    fn span(start_s: i64, attributes: &[(&str, &str)]) -> SpanRecord {
        let base = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let attributes: Map<String, Value> = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        SpanRecord {
            order_id: Uuid::nil(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: None,
            service: "shop-api".into(),
            name: "order create".into(),
            kind: 1,
            start: base + chrono::Duration::seconds(start_s),
            end: base + chrono::Duration::seconds(start_s + 1),
            status_code: 0,
            status_message: String::new(),
            attributes,
            links: vec![],
            status_to: None,
            activity: Activity::Progress,
        }
    }

    #[test]
    fn the_earliest_span_that_carries_each_id_gives_it() {
        let late = span(
            10,
            &[("order.external_id", "PO-2"), ("customer.id", "ABC-DEF")],
        );
        let early = span(0, &[("order.external_id", "PO-1"), ("partner.id", "acme")]);
        let identity = Identity::of(&[&late, &early]).unwrap();
        assert_eq!(
            identity,
            Identity {
                external_id: Some("PO-1".into()),
                partner_id: Some("acme".into()),
                customer_id: Some("abc-def".into()),
            }
        );
    }

    #[test]
    fn masked_empty_and_absent_ids_are_no_ids() {
        let masked = span(
            0,
            &[
                ("order.external_id", "PO-[masked]"),
                ("partner.id", "  "),
                ("customer.id", MASK),
            ],
        );
        assert_eq!(Identity::of(&[&masked]), None);
        assert_eq!(Identity::of(&[&span(0, &[("http.route", "/x")])]), None);
        let later = span(5, &[("order.external_id", "PO-7")]);
        assert_eq!(
            Identity::of(&[&masked, &later]).unwrap().external_id,
            Some("PO-7".into()),
            "a masked value does not hide a later clear one"
        );
    }
}
