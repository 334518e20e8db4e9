//! MES API: prices models and runs production.
//!
//! * Consumes `mes.pricing`: queues a price calculation (`registered → pricing`).
//! * Calc workers run each job through the calc engine (`mes-calc`, a separate process, the way a
//!   closed vendor tool is wrapped) and make the order `priced` or `rejected` (or `failed` when
//!   the engine keeps failing).
//! * Consumes `mes.production`: follows the other services' status changes (`confirmed`,
//!   `cancelled`, shipping, delivery).
//! * `POST /api/orders/{order_id}/production` (`{"step": "in_production" | "quality_check" |
//!   "ready"}`) and `GET /api/orders/{order_id}`.

mod calc;
mod config;
mod events;
mod orders;
mod startup;

pub use config::Settings;
pub use startup::Application;

/// `service.name` of this service.
pub const SERVICE_NAME: &str = "mes-api";

/// This service as telemetry describes it.
pub const SERVICE: telemetry::ServiceInfo = telemetry::ServiceInfo {
    name: SERVICE_NAME,
    version: env!("CARGO_PKG_VERSION"),
};
