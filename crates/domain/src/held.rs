//! What each system holds of an order, as its status listing answers: the contract between the
//! services (which serve `GET /api/orders/statuses?ids=…`) and those who compare their view with
//! a system's own record — order-watch before it calls an order stuck, and reconciliation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::OrderStatus;

/// Where every service serves its listing.
pub const STATUSES_PATH: &str = "/api/orders/statuses";

/// Most ids one listing request may ask about.
pub const MAX_IDS: usize = 200;

/// One order as a system holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStatus {
    pub order_id: Uuid,
    pub status: OrderStatus,
    /// When the system recorded that status.
    pub updated_at: DateTime<Utc>,
}

/// The answer to a listing request: the orders the system knows, in no particular order; an
/// order it does not know is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStatuses {
    pub orders: Vec<HeldStatus>,
}
