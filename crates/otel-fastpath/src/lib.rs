//! A fast path through the OpenTelemetry SDK for a process that makes many spans per request.
//!
//! General-purpose: nothing here knows what the spans are about.
//!
//! * [`otlp`]: span export over OTLP/HTTP with spans encoded straight from the SDK's data
//!   ([`otlp::encode`]), and `opentelemetry-otlp` for every other protocol; TLS with the
//!   standard certificate variables for both, and for the metric exporter ([`otlp::tls`]);
//! * [`export`]: counting what became of every exported span;
//! * [`propagation`]: a W3C trace-context and baggage propagator;
//! * [`logging`]: JSON log lines that name the trace of their span;
//! * [`mask`]: masking personal data in spans and log lines before they leave the process.
//!
//! Each fast part is tested against the reference implementation it replaces, with the same
//! inputs: the encoder against `opentelemetry-proto`'s messages, the propagator against the
//! SDK's `TraceContextPropagator` and `BaggagePropagator`. With the `reference` feature the
//! references themselves are used instead ([`propagation::propagator`],
//! [`otlp::OtlpSpanExporter::from_env`]), for a process where a difference is suspected, and
//! the whole suite runs against them too.

pub mod export;
pub mod logging;
pub mod mask;
pub mod otlp;
pub mod propagation;
#[cfg(test)]
mod test_support;
