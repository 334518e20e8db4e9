//! order-watch: where is order X, and which orders are stuck right now?
//!
//! It receives the services' spans over OTLP (gRPC :14317, HTTP :14318, usually from the OpenTelemetry
//! Collector, which has the standard ports), keeps every span of every
//! order across all its traces in PostgreSQL, and follows each order's status and stage. An open
//! order that has made no progress for longer than its stage allows — reads of it do not count —
//! is stuck once the system that owns its stage confirms it has not moved: it shows in the API,
//! the UI and the metrics, an incident is opened once (and a webhook notified), and its next
//! progress closes it. When that system has moved on, the spans in between were lost: order-watch
//! records a telemetry gap instead and pages nobody. And it reconciles: it compares the status
//! Shop, CRM, MES and its own spans hold for every recently changed order, measures how often and
//! how fast they agree, lists and pages on lasting disagreements and repairs them on request
//! ([`reconcile`]). See `docs/order-watch.md`.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod desk;
pub mod detector;
pub mod erasure;
pub mod identity;
pub mod incidents;
pub mod ingest;
pub mod journey;
pub mod masking;
pub mod metrics;
pub mod partner_limits;
pub mod reconcile;
pub mod records;
pub mod retention;
pub mod runtime_config;
pub mod startup;
pub mod store;
pub mod webhook;

pub use config::Settings;
pub use startup::Application;

/// `service.name` of this service.
pub const SERVICE_NAME: &str = ingest::OWN_SERVICE;

/// This service as telemetry describes it.
pub const SERVICE: telemetry::ServiceInfo = telemetry::ServiceInfo {
    name: SERVICE_NAME,
    version: env!("CARGO_PKG_VERSION"),
};
