//! What one span costs through Hallmark's telemetry stack (a benchmark binary, not a test).
//!
//! ```text
//! cargo bench -p telemetry --bench span_cost
//! ```
//!
//! Runs the same work with and without [`telemetry::init`] (in two child processes: `init`
//! installs process-wide state once) and prints the cost per span: an `order create` span with
//! the order id in its baggage, and under it nine database spans ([`telemetry::db::Traced`]),
//! each around a future that yields once, as a query does. With telemetry, spans are exported
//! over OTLP/HTTP to a receiver in this process that takes every batch and reads nothing into
//! it (`OTEL_EXPORTER_OTLP_ENDPOINT` overrides it), so the whole pipeline runs — batching,
//! masking, encoding, sending — without a collector's work. The queue is large enough that no
//! span is dropped. What is measured is the process's CPU time (user and system, from `/proc`)
//! for all rounds and the flush at shutdown, so the export thread's work counts even when it
//! runs on another core. Metrics export is off; the loop writes no log lines.
//!
//! This isolates what the span API, the SDK and the export pipeline cost per span; the Shop
//! overhead benchmark (`services/shop-api/benches/overhead.rs`) measures a whole request.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use anyhow::Context as _;
use telemetry::db::Traced as _;
use telemetry::spans;
use testkit::measure::this_process_cpu;
use uuid::Uuid;

/// In a child process: `on` or `off`.
const MODE: &str = "HALLMARK_BENCH_SPANS";
/// Orders per round (the rounds run back to back); each has ten spans.
const ORDERS: usize = 20_000;
const SPANS_PER_ORDER: usize = 10;
const ROUNDS: usize = 5;
/// Marks the child's result line among log lines.
const RESULT: &str = "µs per span: ";

fn main() -> anyhow::Result<()> {
    match std::env::var(MODE).ok().as_deref() {
        Some(mode) => measure(mode == "on"),
        None => coordinate(),
    }
}

fn coordinate() -> anyhow::Result<()> {
    let endpoint = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) => endpoint,
        Err(_) => receiver()?,
    };
    let mut results = Vec::new();
    for mode in ["off", "on"] {
        let output = Command::new(std::env::current_exe()?)
            .env(MODE, mode)
            .env_remove("RUST_LOG")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env(
                "OTEL_BSP_MAX_QUEUE_SIZE",
                (2 * ORDERS * SPANS_PER_ORDER * ROUNDS).to_string(),
            )
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "the {mode} run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Log lines (JSON on stdout) may come around the result.
        let stdout = String::from_utf8(output.stdout)?;
        let micros: f64 = stdout
            .lines()
            .find_map(|line| line.strip_prefix(RESULT))
            .ok_or_else(|| anyhow::anyhow!("the {mode} run printed no result:\n{stdout}"))?
            .trim()
            .parse()?;
        results.push(micros);
    }
    println!(
        "per span: {:.2} µs with telemetry, {:.2} µs without (the work itself); \
         telemetry adds {:.2} µs",
        results[1],
        results[0],
        results[1] - results[0]
    );
    Ok(())
}

/// A local OTLP/HTTP receiver: answers every export with 200 and an empty body (a fully
/// successful protobuf response), on keep-alive connections. Returns its base URL.
fn receiver() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    Ok(endpoint)
}

fn answer(mut stream: TcpStream) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
        }
        std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink()).ok()?;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .ok()?;
    }
}

/// Prints the process's CPU time per span over all rounds and the final flush, in µs.
fn measure(on: bool) -> anyhow::Result<()> {
    let telemetry = on
        .then(|| {
            telemetry::init(telemetry::ServiceInfo {
                name: "span-cost-bench",
                version: env!("CARGO_PKG_VERSION"),
            })
        })
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let before = this_process_cpu().context("this process's CPU time")?;
    runtime.block_on(async {
        for _ in 0..ROUNDS * ORDERS {
            one_order().await;
        }
    });
    // Exports what is still queued.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    let cpu = this_process_cpu().context("this process's CPU time")? - before;
    let micros = cpu.as_secs_f64() * 1e6 / (ROUNDS * ORDERS * SPANS_PER_ORDER) as f64;
    println!("{RESULT}{micros}");
    Ok(())
}

async fn one_order() {
    let parent = telemetry::propagation::with_order(
        &opentelemetry::Context::new(),
        Uuid::now_v7(),
        telemetry::propagation::Activity::Progress,
    );
    let order = spans::child(
        "order create",
        opentelemetry::trace::SpanKind::Internal,
        Vec::new(),
        &parent,
    );
    spans::under(order.as_ref(), async {
        for _ in 1..SPANS_PER_ORDER {
            let query = async {
                tokio::task::yield_now().await;
                Ok::<_, String>(())
            };
            let _ = query.db("INSERT orders").await;
        }
    })
    .await;
    spans::end_in(order.as_ref());
}
