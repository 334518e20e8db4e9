//! What masking costs per order: the [`MaskingExporter`] over batches of spans as Shop makes
//! them (a benchmark binary, not a test).
//!
//! ```text
//! cargo bench -p telemetry --bench mask_cost
//! # instructions instead of time: count only the measured batches
//! HALLMARK_BENCH_ORDERS=2040 valgrind --tool=callgrind --toggle-collect='*mask_cost::mask_batch*' \
//!     target/release/deps/mask_cost-<hash>
//! ```
//!
//! An order is Shop's fifteen spans: the HTTP request, `order create`, the model upload, nine
//! database statements, two publishes and `order submitted`, with 108 string values among them
//! as the services set them. Most are literals (`"postgresql"`, `"INSERT orders"`, statuses,
//! stages); the rest are made at run time: the order id (shared by the spans under one context,
//! as the baggage processor shares it), idempotency key, customer and message ids, the storage
//! key, route and span names. Every 50th order has a failed statement whose exception message
//! and status hold an e-mail address. Batches hold 34 orders (510 spans, about the batch span
//! processor's 512) and are masked through the exporter, which hands them to an exporter that
//! keeps them; building and dropping them is not measured.
//!
//! Prints the time per order and per span, the median of the rounds. `HALLMARK_BENCH_ORDERS`
//! sets the orders per round (default 20,400; rounded to whole batches), `HALLMARK_BENCH_ROUNDS`
//! the rounds (default 10). A warm-up of 20 batches first lets the regular expressions build
//! their automata; under callgrind, `--toggle-collect` on `mask_batch` leaves the warm-up out.

use std::borrow::Cow;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{Event, SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use telemetry::attr;
use telemetry::attr::semconv::*;
use telemetry::mask::{Masker, MaskingExporter};
use uuid::Uuid;

const ORDERS_PER_BATCH: usize = 34;
const SPANS_PER_ORDER: usize = 15;
const WARM_UP_BATCHES: usize = 20;
/// Every this many orders, one has an e-mail address in an exception message.
const WITH_EMAIL_EVERY: usize = 50;

fn main() -> anyhow::Result<()> {
    let knob = |name: &str, default: usize| -> anyhow::Result<usize> {
        Ok(match std::env::var(name) {
            Ok(value) => value.parse()?,
            Err(_) => default,
        })
    };
    let batches = knob("HALLMARK_BENCH_ORDERS", 20_400)?.div_ceil(ORDERS_PER_BATCH);
    let rounds = knob("HALLMARK_BENCH_ROUNDS", 10)?.max(1);
    let orders = batches * ORDERS_PER_BATCH;

    let kept = Kept::default();
    let exporter = MaskingExporter::new(Masker::default(), kept.clone());
    let mut numbers = 0..;
    for _ in 0..WARM_UP_BATCHES {
        let batch = build_batch(&mut numbers);
        poll_once(exporter.export(batch))?;
        drop(kept.take());
    }

    let mut per_order = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut masking = Duration::ZERO;
        for index in 0..batches {
            let batch = build_batch(&mut numbers);
            let started = Instant::now();
            mask_batch(&exporter, batch)?;
            masking += started.elapsed();
            let masked = kept.take();
            if round == 0 && index == 0 {
                check(&masked)?;
            }
            drop(black_box(masked));
        }
        per_order.push(masking.as_nanos() as f64 / orders as f64);
    }
    let rounds_shown: Vec<String> = per_order.iter().map(|ns| format!("{ns:.0}")).collect();
    per_order.sort_by(f64::total_cmp);
    let median = per_order[per_order.len() / 2];
    println!(
        "masking: {median:.0} ns per order, {:.0} ns per span (median of {rounds} rounds of \
         {orders} orders, {SPANS_PER_ORDER} spans and {} string values per order; rounds: {})",
        median / SPANS_PER_ORDER as f64,
        string_values(&build_order(0)),
        rounds_shown.join(", ")
    );
    Ok(())
}

/// The measured work, a function of its own so that callgrind can count it alone.
#[inline(never)]
fn mask_batch(exporter: &MaskingExporter<Kept>, batch: Vec<SpanData>) -> anyhow::Result<()> {
    poll_once(exporter.export(batch))
}

/// Runs a future that never waits: the exporter masks and hands the batch on at once.
fn poll_once(future: impl Future<Output = OTelSdkResult>) -> anyhow::Result<()> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Ok(result?),
        Poll::Pending => anyhow::bail!("the exporter waited"),
    }
}

/// The exporter behind masking: keeps the batch, so that dropping it is not measured.
#[derive(Debug, Clone, Default)]
struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl Kept {
    fn take(&self) -> Vec<SpanData> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl SpanExporter for Kept {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        *self.0.lock().unwrap() = batch;
        Ok(())
    }
}

/// Every e-mail address was masked, in the status and the exception, and nothing else was.
fn check(batch: &[SpanData]) -> anyhow::Result<()> {
    let mut texts: Vec<&str> = Vec::new();
    for span in batch {
        let mut attributes: Vec<&KeyValue> = span.attributes.iter().collect();
        attributes.extend(span.events.iter().flat_map(|event| &event.attributes));
        texts.extend(attributes.iter().filter_map(|kv| match &kv.value {
            Value::String(text) => Some(text.as_str()),
            _ => None,
        }));
        if let Status::Error { description } = &span.status {
            texts.push(description);
        }
    }
    let failed = batch
        .iter()
        .filter(|span| matches!(span.status, Status::Error { .. }))
        .count();
    let masked = texts.iter().filter(|text| text.contains("[masked")).count();
    anyhow::ensure!(failed > 0, "the batch has a failed statement");
    anyhow::ensure!(
        masked == 2 * failed && texts.iter().all(|text| !text.contains('@')),
        "the e-mail addresses and only they are masked ({masked} texts masked, {failed} failed spans)"
    );
    Ok(())
}

fn string_values(spans: &[SpanData]) -> usize {
    let strings = |attributes: &[KeyValue]| {
        attributes
            .iter()
            .filter(|kv| matches!(kv.value, Value::String(_)))
            .count()
    };
    spans
        .iter()
        .map(|span| {
            strings(&span.attributes)
                + span
                    .events
                    .iter()
                    .map(|event| strings(&event.attributes))
                    .sum::<usize>()
        })
        .sum()
}

fn build_batch(numbers: &mut impl Iterator<Item = usize>) -> Vec<SpanData> {
    let mut batch = Vec::with_capacity(ORDERS_PER_BATCH * SPANS_PER_ORDER);
    for number in numbers.take(ORDERS_PER_BATCH) {
        batch.extend(build_order(number));
    }
    batch
}

/// One order's spans, in the order they end. Values are made the way the services make them:
/// literals where the code has a literal, owned strings where it formats or copies, and one
/// shared allocation for the order id under each context that carries it in baggage.
fn build_order(number: usize) -> Vec<SpanData> {
    let mut ids = (0..).map(|k| uuid_v7(number * 8 + k));
    let id = ids.next().unwrap();
    let request_id = StringValue::from(Arc::<str>::from(id.to_string()));
    let relay_id = StringValue::from(Arc::<str>::from(id.to_string()));
    let namespace = StringValue::from(Arc::<str>::from("shop"));
    let key = ids.next().unwrap().to_string();
    let message_ids = [ids.next().unwrap(), ids.next().unwrap()];
    let customer_id = ids.next().unwrap();
    let under = |order_id: &StringValue, mut attributes: Vec<KeyValue>| {
        attributes.push(KeyValue::new(attr::ORDER_ID, order_id.clone()));
        attributes.push(KeyValue::new(attr::ORDER_ACTIVITY, "progress"));
        attributes
    };
    let database = |order_id: &StringValue, summary: &'static str| {
        let (operation, collection) = summary.split_once(' ').unwrap_or((summary, ""));
        let attributes = under(
            order_id,
            vec![
                KeyValue::new(DB_SYSTEM_NAME, "postgresql"),
                KeyValue::new(DB_OPERATION_NAME, operation),
                KeyValue::new(DB_COLLECTION_NAME, collection),
                KeyValue::new(DB_QUERY_SUMMARY, summary),
                KeyValue::new(DB_NAMESPACE, namespace.clone()),
            ],
        );
        span(summary, SpanKind::Client, attributes)
    };
    let publish = |order_id: &StringValue, kind: &str, message_id: Uuid| {
        let attributes = under(
            order_id,
            vec![
                KeyValue::new(MESSAGING_SYSTEM, "rabbitmq"),
                KeyValue::new(MESSAGING_OPERATION_TYPE, "send"),
                KeyValue::new(MESSAGING_OPERATION_NAME, "publish"),
                KeyValue::new(MESSAGING_DESTINATION_NAME, "orders".to_owned()),
                KeyValue::new(MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY, kind.to_owned()),
                KeyValue::new(MESSAGING_MESSAGE_ID, message_id.to_string()),
                KeyValue::new(MESSAGING_MESSAGE_BODY_SIZE, 412_i64),
                KeyValue::new(attr::MESSAGE_TYPE, kind.to_owned()),
            ],
        );
        span(
            format!("publish {}", "orders"),
            SpanKind::Producer,
            attributes,
        )
    };

    let mut customers = database(&request_id, "INSERT customers");
    customers
        .attributes
        .push(KeyValue::new(attr::CUSTOMER_ID, customer_id.to_string()));
    if number % WITH_EMAIL_EVERY == 1 {
        let message = "duplicate key value violates unique constraint \"customers_email_key\": \
                       Key (email)=(jane.doe@example.com) already exists"
            .to_owned();
        customers
            .attributes
            .push(KeyValue::new(ERROR_TYPE, "database"));
        customers.events.events.push(Event::new(
            "exception",
            SystemTime::UNIX_EPOCH,
            vec![KeyValue::new(EXCEPTION_MESSAGE, message.clone())],
            0,
        ));
        customers.status = Status::error(message);
    }
    vec![
        database(&request_id, "SELECT orders"),
        span(
            format!("S3.{}", "PutObject"),
            SpanKind::Client,
            under(
                &request_id,
                vec![
                    KeyValue::new("rpc.system", "aws-api"),
                    KeyValue::new("rpc.method", "PutObject"),
                    KeyValue::new(AWS_S3_BUCKET, "models".to_owned()),
                    KeyValue::new(AWS_S3_KEY, format!("models/{id}/torus.stl")),
                    KeyValue::new(attr::STORAGE_BACKEND, "s3"),
                    KeyValue::new(attr::STORAGE_SIZE_BYTES, 435_117_i64),
                ],
            ),
        ),
        customers,
        database(&request_id, "INSERT orders"),
        database(&request_id, "INSERT history"),
        database(&request_id, "INSERT outbox"),
        span(
            "order create",
            SpanKind::Internal,
            under(
                &request_id,
                vec![
                    KeyValue::new(attr::ORDER_SOURCE, "web"),
                    KeyValue::new(attr::ORDER_IDEMPOTENCY_KEY, key.clone()),
                    KeyValue::new(attr::ORDER_MATERIAL, "gold_750"),
                    KeyValue::new(attr::ORDER_STATUS_TO, "created"),
                    KeyValue::new(attr::ORDER_STAGE, "intake"),
                ],
            ),
        ),
        span(
            format!("{} {}", "POST", "/api/orders"),
            SpanKind::Server,
            vec![
                KeyValue::new(HTTP_REQUEST_METHOD, "POST".to_owned()),
                KeyValue::new(URL_PATH, "/api/orders".to_owned()),
                KeyValue::new(URL_SCHEME, "http"),
                KeyValue::new(HTTP_ROUTE, "/api/orders".to_owned()),
                KeyValue::new(HTTP_RESPONSE_STATUS_CODE, 201_i64),
                KeyValue::new(attr::ORDER_ID, id.to_string()),
                KeyValue::new(attr::ORDER_ACTIVITY, "progress"),
            ],
        ),
        publish(&relay_id, "order.created", message_ids[0]),
        database(&relay_id, "SELECT orders"),
        database(&relay_id, "UPDATE orders"),
        database(&relay_id, "INSERT history"),
        database(&relay_id, "INSERT outbox"),
        span(
            format!("order {}", "submitted"),
            SpanKind::Internal,
            under(
                &relay_id,
                vec![
                    KeyValue::new(attr::ORDER_STATUS_TO, "submitted"),
                    KeyValue::new(attr::ORDER_STAGE, "pricing"),
                    KeyValue::new(attr::ORDER_STATUS_FROM, "created"),
                    KeyValue::new(attr::ORDER_IDEMPOTENCY_KEY, key),
                ],
            ),
        ),
        publish(&relay_id, "order.status_changed", message_ids[1]),
    ]
}

/// A UUIDv7 as the services make them, but the same on every run: a millisecond per order from
/// late 2026, and pseudo-random bits from `seed` (splitmix64). Masking looks at the digits of ids,
/// so random ids would make runs of the same code differ.
fn uuid_v7(seed: usize) -> Uuid {
    let mix = |z: u64| {
        let mut z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let seed = seed as u64;
    let bits = (u128::from(mix(seed)) << 64 | u128::from(mix(!seed))).to_le_bytes();
    let mut random = [0; 10];
    random.copy_from_slice(&bits[..10]);
    uuid::Builder::from_unix_timestamp_millis(1_796_000_000_000 + seed / 8, &random).into_uuid()
}

fn span(name: impl Into<Cow<'static, str>>, kind: SpanKind, attributes: Vec<KeyValue>) -> SpanData {
    SpanData {
        span_context: SpanContext::empty_context(),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: kind,
        name: name.into(),
        start_time: SystemTime::UNIX_EPOCH,
        end_time: SystemTime::UNIX_EPOCH,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::default(),
    }
}
