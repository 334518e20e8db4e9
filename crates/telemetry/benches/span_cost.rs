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
//! over OTLP/HTTP to an address where nothing listens (`OTEL_EXPORTER_OTLP_ENDPOINT` overrides
//! it), so the whole pipeline runs — batching, masking, encoding — without a collector's work
//! on the same CPUs. Metrics export is off; the loop writes no log lines.
//!
//! This isolates what `tracing`, `tracing-opentelemetry` and the SDK cost per span; the Shop
//! overhead benchmark (`services/shop-api/benches/overhead.rs`) measures a whole request.

use std::process::Command;
use std::time::Instant;

use telemetry::db::Traced as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

/// In a child process: `on` or `off`.
const MODE: &str = "HALLMARK_BENCH_SPANS";
/// Orders per round; each has ten spans.
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
    let mut results = Vec::new();
    for mode in ["off", "on"] {
        let output = Command::new(std::env::current_exe()?)
            .env(MODE, mode)
            .env_remove("RUST_LOG")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .unwrap_or_else(|_| "http://127.0.0.1:9".into()),
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

/// Prints the best round's time per span, in µs.
fn measure(on: bool) -> anyhow::Result<()> {
    let _telemetry = on
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
    let best = runtime.block_on(async {
        let mut best = f64::MAX;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..ORDERS {
                one_order().await;
            }
            let micros = started.elapsed().as_secs_f64() * 1e6 / (ORDERS * SPANS_PER_ORDER) as f64;
            best = best.min(micros);
        }
        best
    });
    println!("{RESULT}{best}");
    Ok(())
}

async fn one_order() {
    let order = tracing::info_span!("order.create", otel.name = "order create");
    let _ = order.set_parent(telemetry::propagation::with_order(
        &opentelemetry::Context::new(),
        Uuid::now_v7(),
    ));
    async {
        for _ in 1..SPANS_PER_ORDER {
            let query = async {
                tokio::task::yield_now().await;
                Ok::<_, String>(())
            };
            let _ = query.db("INSERT orders").await;
        }
    }
    .instrument(order)
    .await;
}
