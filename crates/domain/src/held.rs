//! What each system holds of an order, as its status listing answers: the contract between the
//! services (which serve `GET /api/orders/statuses`) and those who compare their view with a
//! system's own record — order-watch before it calls an order stuck, and reconciliation.
//!
//! The listing answers one of two questions:
//!
//! * **by ids** (`?ids=a,b,…`, at most [`MAX_IDS`]): what the system holds of these orders;
//! * **changed since** (`?changed_since=<RFC 3339>&after=<order id>&limit=N`, at most
//!   [`MAX_CHANGED_PAGE`] a page): the orders whose status the system recorded at or after a
//!   time, oldest change first, keyset-paged by `(updated_at, order_id)`: a page's
//!   [`HeldStatuses::next`] names where the next one starts, and is absent on the last page.
//!   `updated_at` is when the system's transaction wrote the status, which may commit a little
//!   later: a reader that must see every change reads again from a little before the last page's
//!   end (reconciliation's overlap).
//!
//! And each service republishes, on request, the messages by which it told the others about an
//! order ([`republish_path`], [`Republished`]): its latest status event and the message that
//! introduced the order to the next system (Shop's `order.created`, CRM's price request), each
//! with its original message id, so the consumers that applied it drop it and the one that
//! missed it applies it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::OrderStatus;

/// Where every service serves its listing.
pub const STATUSES_PATH: &str = "/api/orders/statuses";

/// Most ids one listing request may ask about.
pub const MAX_IDS: usize = 200;

/// Most orders one page of a changed-since listing holds (and its default size).
pub const MAX_CHANGED_PAGE: usize = 1000;

/// One order as a system holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStatus {
    pub order_id: Uuid,
    pub status: OrderStatus,
    /// When the system recorded that status.
    pub updated_at: DateTime<Utc>,
}

/// The answer to a listing request: the orders the system knows, in no particular order for a
/// request by ids (an order it does not know is left out), oldest change first for a
/// changed-since page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStatuses {
    pub orders: Vec<HeldStatus>,
    /// For a changed-since page that is not the last: where the next page starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ChangedSince>,
}

/// A position in a system's changes: the changes recorded at `since` or later, leaving out
/// those at exactly `since` of orders up to `after` (in id order): what a page ending with order
/// `after`, changed at `since`, has shown already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedSince {
    pub since: DateTime<Utc>,
    pub after: Option<Uuid>,
}

impl ChangedSince {
    /// Every change at `since` or later.
    pub fn from(since: DateTime<Utc>) -> Self {
        Self { since, after: None }
    }

    /// The position right after `order`, changed at `since`.
    pub fn after(order: &HeldStatus) -> Self {
        Self {
            since: order.updated_at,
            after: Some(order.order_id),
        }
    }

    /// The query string of a page of at most `limit` orders from here (without the `?`).
    /// Times go with microseconds, as PostgreSQL keeps them, so a page's end is exact.
    pub fn query(&self, limit: usize) -> String {
        let mut query = format!(
            "changed_since={}&limit={limit}",
            self.since.to_rfc3339_opts(SecondsFormat::Micros, true)
        );
        if let Some(after) = self.after {
            query.push_str(&format!("&after={after}"));
        }
        query
    }
}

/// The path of `order_id`'s republish request (`POST`).
pub fn republish_path(order_id: Uuid) -> String {
    format!("/api/orders/{order_id}/republish")
}

/// The answer to a republish request: the messages put back into the service's outbox, in the
/// order they go out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Republished {
    pub order_id: Uuid,
    pub messages: Vec<RepublishedMessage>,
}

/// One message put back into the outbox, with the id it was first sent with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepublishedMessage {
    pub message_id: Uuid,
    /// `order.created`, `order.pricing_requested` or `order.status_changed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub routing_key: String,
    /// When the relay had published it before; absent when it was still waiting to go out.
    pub published_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_a_query_with_microseconds_and_the_order_it_follows() {
        let since: DateTime<Utc> = "2026-03-01T10:00:00.123456Z".parse().unwrap();
        assert_eq!(
            ChangedSince::from(since).query(500),
            "changed_since=2026-03-01T10:00:00.123456Z&limit=500"
        );
        let order = HeldStatus {
            order_id: Uuid::nil(),
            status: OrderStatus::Priced,
            updated_at: since,
        };
        assert_eq!(
            ChangedSince::after(&order).query(1),
            format!(
                "changed_since=2026-03-01T10:00:00.123456Z&limit=1&after={}",
                Uuid::nil()
            )
        );
    }

    #[test]
    fn an_answer_by_ids_carries_no_next_page() {
        let json = serde_json::to_value(HeldStatuses::default()).unwrap();
        assert_eq!(json, serde_json::json!({"orders": []}));
        let read: HeldStatuses = serde_json::from_str(r#"{"orders": []}"#).unwrap();
        assert_eq!(read.next, None);
    }
}
