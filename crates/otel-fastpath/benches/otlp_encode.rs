//! What encoding a batch of spans for OTLP costs: `otel_fastpath::otlp::encode` against the
//! `opentelemetry-proto` transform plus `prost` that `opentelemetry-otlp` runs (a benchmark
//! binary, not a test).
//!
//! ```text
//! cargo bench -p otel-fastpath --bench otlp_encode
//! ```
//!
//! A batch of 512 database spans as Shop makes them (six attributes, one of them the order id),
//! encoded 200 times each way; prints the best of five rounds per span. Both produce the same
//! bytes (the encoder's unit tests compare them); this checks the sizes agree.

use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use otel_fastpath::otlp::encode::export_request;
use prost::Message as _;

const SPANS: u64 = 512;
const REPEATS: u32 = 200;
const ROUNDS: usize = 5;

fn main() {
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "shop-api"),
            KeyValue::new("service.version", "0.1.0"),
            KeyValue::new("deployment.environment.name", "bench"),
        ])
        .build();
    let spans = database_batch();
    let attributes = ResourceAttributesWithSchema::from(&resource);

    let ours = best(|| export_request(&resource, &spans).len());
    let upstream = best(|| {
        // The upstream exporter owns its batch; the clone is its input, as in production.
        let batch = spans.clone();
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &attributes),
        }
        .encode_to_vec()
        .len()
    });
    assert_eq!(ours.1, upstream.1, "both encodings have the same size");
    println!(
        "{SPANS} spans, {} bytes per batch: otel_fastpath::otlp::encode {:.2} µs per span, \
         opentelemetry-proto + prost {:.2} µs per span (upstream time includes cloning the batch)",
        ours.1, ours.0, upstream.0
    );
}

/// The best round's time per span in µs, and the encoded size.
fn best(mut encode: impl FnMut() -> usize) -> (f64, usize) {
    let mut size = 0;
    let fastest = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..REPEATS {
                size = black_box(encode());
            }
            started.elapsed()
        })
        .min()
        .unwrap_or(Duration::ZERO);
    let per_span = fastest.as_secs_f64() * 1e6 / f64::from(REPEATS) / SPANS as f64;
    (per_span, size)
}

fn database_batch() -> Vec<SpanData> {
    let scope = InstrumentationScope::builder("shop-api").build();
    let trace_id = TraceId::from(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128);
    let started = SystemTime::now();
    (0..SPANS)
        .map(|i| SpanData {
            span_context: SpanContext::new(
                trace_id,
                SpanId::from(i + 1),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(10_000 + i / 8),
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Borrowed("INSERT orders"),
            start_time: started,
            end_time: started + Duration::from_micros(400),
            attributes: vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.namespace", "shop"),
                KeyValue::new("db.operation.name", "INSERT"),
                KeyValue::new("db.collection.name", "orders"),
                KeyValue::new("db.query.summary", "INSERT orders"),
                KeyValue::new("order.id", format!("019ad4f2-0012-7345-8123-{i:012x}")),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        })
        .collect()
}
