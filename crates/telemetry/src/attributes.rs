//! Every attribute name Hallmark puts on telemetry, defined once.
//!
//! Our own names are registered with their meaning in `docs/telemetry.md`; keep the two in step.
//! Standard names are re-exported from the semantic-conventions crate so that no service spells
//! them by hand.

/// The order's id (UUID). Travels in W3C baggage and is copied onto every span of the order.
pub const ORDER_ID: &str = "order.id";
/// The id the partner or shop front end gave the order (`external_order_id`).
pub const ORDER_EXTERNAL_ID: &str = "order.external_id";
/// The `Idempotency-Key` the order was created with.
pub const ORDER_IDEMPOTENCY_KEY: &str = "order.idempotency_key";
/// Where the order came from: `web`, `partner_api` or `crm`.
pub const ORDER_SOURCE: &str = "order.source";
/// Status before a transition (on every span that changes an order's status).
pub const ORDER_STATUS_FROM: &str = "order.status.from";
/// Status after a transition.
pub const ORDER_STATUS_TO: &str = "order.status.to";
/// What the span's work did to the order: `progress` (it moved the order or worked on moving it)
/// or `observation` (it only read the order). Only progress shows an order is not stuck.
pub const ORDER_ACTIVITY: &str = "order.activity";
/// The order's current status as the span's service knows it.
pub const ORDER_STATUS: &str = "order.status";
/// The stage the order waits in after this span (see `domain::Stage`).
pub const ORDER_STAGE: &str = "order.stage";
/// Pseudonymous customer id (a UUID, never contact data).
pub const CUSTOMER_ID: &str = "customer.id";
/// The partner that placed the order through the API.
pub const PARTNER_ID: &str = "partner.id";
/// `true` on a request refused because its partner was over its order rate.
pub const RATE_LIMITED: &str = "hallmark.rate_limited";
/// Where the rate a partner was refused under comes from: `config` (its configured rate),
/// `incident` (tightened by order-watch while an incident is open) or `manual` (set by hand).
pub const RATE_LIMIT_SOURCE: &str = "hallmark.rate_limit.source";
/// Why a request was refused 401 or 403: the error code it was answered with (e.g.
/// `unauthenticated`, `forbidden`, `order_token_invalid`, `not_your_order`).
pub const ACCESS_REFUSED: &str = "hallmark.access.refused";
/// Milliseconds the message waited between publication and the start of processing.
pub const QUEUE_WAIT_MS: &str = "hallmark.queue.wait_ms";
/// How many times this message was retried before this attempt (0 on the first attempt).
pub const RETRY_COUNT: &str = "hallmark.retry.count";
/// Where a message that cannot be processed went: `{exchange} -> {queue}`.
pub const DLQ_ROUTE: &str = "hallmark.dlq.route";
/// Stable machine-readable error code, e.g. `stl_not_closed`.
pub const ERROR_CODE: &str = "hallmark.error.code";
/// True when the inbox recognised the message as already processed and skipped it.
pub const MESSAGE_DUPLICATE: &str = "hallmark.message.duplicate";
/// The event type carried by a message, e.g. `order.status_changed`.
pub const MESSAGE_TYPE: &str = "hallmark.message.type";
/// The broker account that sent a message: its AMQP `user-id`, or the first sender a retry or
/// replay names. Absent when the message has none.
pub const MESSAGE_SENDER: &str = "hallmark.message.sender";
/// Material of the piece, e.g. `gold_750`.
pub const ORDER_MATERIAL: &str = "order.material";
/// Where models are stored: `s3` or `filesystem`.
pub const STORAGE_BACKEND: &str = "hallmark.storage.backend";
/// Size in bytes of an object stored or read.
pub const STORAGE_SIZE_BYTES: &str = "hallmark.storage.size_bytes";

/// The attributes Hallmark defines, for the registry test and for order-watch.
pub const REGISTRY: &[&str] = &[
    ORDER_ID,
    ORDER_EXTERNAL_ID,
    ORDER_IDEMPOTENCY_KEY,
    ORDER_SOURCE,
    ORDER_STATUS_FROM,
    ORDER_STATUS_TO,
    ORDER_STATUS,
    ORDER_ACTIVITY,
    ORDER_STAGE,
    ORDER_MATERIAL,
    CUSTOMER_ID,
    PARTNER_ID,
    RATE_LIMITED,
    RATE_LIMIT_SOURCE,
    ACCESS_REFUSED,
    QUEUE_WAIT_MS,
    RETRY_COUNT,
    DLQ_ROUTE,
    ERROR_CODE,
    MESSAGE_DUPLICATE,
    MESSAGE_TYPE,
    MESSAGE_SENDER,
    STORAGE_BACKEND,
    STORAGE_SIZE_BYTES,
];

/// The W3C baggage key that carries the order id between processes.
pub const BAGGAGE_ORDER_ID: &str = ORDER_ID;

/// Standard attribute names used by Hallmark (OpenTelemetry semantic conventions).
pub mod semconv {
    pub use opentelemetry_semantic_conventions::attribute::{
        AWS_S3_BUCKET, AWS_S3_KEY, DB_COLLECTION_NAME, DB_NAMESPACE, DB_OPERATION_NAME,
        DB_QUERY_SUMMARY, DB_SYSTEM_NAME, ERROR_TYPE, EXCEPTION_MESSAGE, EXCEPTION_TYPE,
        HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, MESSAGING_DESTINATION_NAME,
        MESSAGING_DESTINATION_SUBSCRIPTION_NAME, MESSAGING_MESSAGE_BODY_SIZE, MESSAGING_MESSAGE_ID,
        MESSAGING_OPERATION_NAME, MESSAGING_OPERATION_TYPE,
        MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY, MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
        MESSAGING_SYSTEM, NETWORK_PROTOCOL_VERSION, PROCESS_COMMAND, PROCESS_EXIT_CODE,
        PROCESS_PID, SERVER_ADDRESS, SERVER_PORT, URL_PATH, URL_SCHEME,
    };
    pub use opentelemetry_semantic_conventions::resource::{
        DEPLOYMENT_ENVIRONMENT_NAME, SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION,
    };
}

/// Span names other components look for (order-watch derives metrics from them).
pub mod span_names {
    /// One price-calculation attempt in MES (storage read plus calc engine).
    pub const PRICE_MODEL: &str = "price model";
    /// MES's CLIENT span around the calc-engine process.
    pub const CALC_ENGINE_RUN: &str = "mes-calc run";
}
