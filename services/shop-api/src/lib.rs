//! Shop API: where customers and partners place orders with a 3D model and follow them.
//!
//! * `POST /api/orders` (multipart: `order` JSON + `model` STL, optional `Idempotency-Key`)
//!   answers the order with its `customer_token`;
//! * `GET /api/orders/{order_id}`, `POST /api/orders/{order_id}/confirm`,
//!   `POST /api/orders/{order_id}/cancel`, each with the order's token (`Authorization: Bearer
//!   ord_…`; see [`OrderTokens`]), the client token of the partner that placed it, or a staff
//!   token (`orders::caller`);
//! * `GET /api/partner-limits`, `PUT`/`DELETE /api/partner-limits/{partner}`: partners' rates
//!   as incidents and operators tighten them (`limits`).
//!
//! Shop owns the transitions `created`, `submitted` (when `order.created` reached the broker),
//! `confirmed` and `cancelled`; it follows every other status through the `shop.status` queue.

mod config;
mod events;
mod limits;
mod orders;
mod startup;

pub use config::Settings;
pub use orders::{OrderTokens, PartnerLimits, Rate};
pub use startup::Application;

/// `service.name` of this service.
pub const SERVICE_NAME: &str = "shop-api";

/// This service as telemetry describes it.
pub const SERVICE: telemetry::ServiceInfo = telemetry::ServiceInfo {
    name: SERVICE_NAME,
    version: env!("CARGO_PKG_VERSION"),
};
