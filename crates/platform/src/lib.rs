//! What every Hallmark service process needs, so each service's `main.rs` stays a few lines:
//! the database pool ([`db`]), object storage
//! with spans ([`storage`]), the JSON error body ([`error`]), telemetry at the HTTP edge
//! ([`http`]), graceful serving ([`server`]) and TLS for the servers ([`tls`]).

pub mod db;
pub mod error;
pub mod extract;
pub mod http;
pub mod server;
pub mod service;
pub mod storage;
pub mod tls;

/// The memory allocator of the order services (Shop, CRM, MES), declared in each `main.rs`:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: platform::Allocator = platform::Allocator;
/// ```
///
/// Why not the system's: glibc's per-thread arenas give the freed tops of their heaps back to
/// the kernel and fault them in again. Every order allocates and frees a model-sized buffer,
/// and with the spans and export buffers of telemetry on top, Shop took 34 page faults per order
/// (5 with telemetry off); with mimalloc, 4 either way, and telemetry adds about a third less
/// CPU per order (docs/benchmarks.md). order-watch keeps the system allocator, with which its
/// memory figures were measured.
pub use mimalloc::MiMalloc as Allocator;
