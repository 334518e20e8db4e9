//! CRM API: registers every new order, asks MES for its price, and gives managers the order list,
//! the order details (with the customer's contact data) and the shipping steps.
//!
//! * `GET /api/orders?status=&limit=&before=`, `GET /api/orders/{order_id}`
//! * `POST /api/orders/{order_id}/ship` (optional `{"tracking_number": "…"}`),
//!   `POST /api/orders/{order_id}/deliver`
//!
//! CRM owns the transitions `registered`, `shipped` and `delivered`, and follows all others
//! through the `crm.orders` queue.

mod config;
mod events;
mod orders;
mod startup;

pub use config::Settings;
pub use startup::Application;

/// `service.name` of this service.
pub const SERVICE_NAME: &str = "crm-api";

/// This service as telemetry describes it.
pub const SERVICE: telemetry::ServiceInfo = telemetry::ServiceInfo {
    name: SERVICE_NAME,
    version: env!("CARGO_PKG_VERSION"),
};
