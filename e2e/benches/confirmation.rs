//! What confirming a stuck order with its system of record costs, and what it does to the
//! detection delay (a benchmark binary, not a timed test; `docs/benchmarks.md`).
//!
//! ```text
//! cargo build --release --workspace --bins && cargo bench -p e2e --bench confirmation
//! HALLMARK_BENCH_STUCK=500 cargo bench -p e2e --bench confirmation
//! ```
//!
//! The real system runs as processes (Shop, CRM and MES on PostgreSQL and RabbitMQ), with a
//! calculation engine that never answers, so every order placed hangs in `pricing` — MES holds
//! it there, as a stuck order is held. Two order-watch processes receive the same spans:
//! **confirming** asks the services before it calls an order stuck (as `scripts/run` sets it
//! up); **unasked** has no address for them, so it flags the same orders at once, unconfirmed —
//! the detection path without the question, the baseline. `HALLMARK_BENCH_STUCK` orders
//! (default 200) are placed; both order-watches flag every one of them after its stage's
//! threshold, and the benchmark reports
//!
//! 1. the detection delay of each (the incident's `opened_at`, stamped once the verdict is in,
//!    minus the order's deadline), p50 / p99 / max, and
//! 2. the CPU time each order-watch process spent from just before the first deadline until
//!    every order was flagged (both polled alike meanwhile; two order-watches set up alike
//!    differ here by tens of milliseconds, so this is context, not the question's cost);
//! 3. MES's status listing itself, the question's cost in the service: its latency and MES's CPU
//!    time per request, asking about 1 order and about 200 (the most one request may name);
//! 4. the question's cost in order-watch alone: the CPU time its client
//!    (`order_watch::records::Records`) spends per question, on a thread of its own.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use e2e::System;
use e2e::watch::Watch;
use serde_json::Value;
use testkit::measure::{percentile, process_cpu, this_thread_cpu};
use uuid::Uuid;

/// The machine stages' threshold: the orders fall due this long after their last progress,
/// long enough for all of them to be placed before the first falls due.
const STUCK_AFTER: &str = "40s";
/// Listing requests timed per size.
const LISTING_REQUESTS: usize = 300;

fn main() -> anyhow::Result<()> {
    let stuck: usize = std::env::var("HALLMARK_BENCH_STUCK")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("HALLMARK_BENCH_STUCK")?
        .unwrap_or(200);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(stuck))
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    process_cpu(pid).context("the process's CPU time")
}

fn pid_of(process: &testkit::process::ServiceProcess) -> anyhow::Result<u32> {
    process.pid().context("the process is running")
}

/// A calculation engine that never answers.
fn hanging_engine() -> anyhow::Result<tempfile::TempPath> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(file, "#!/bin/sh\nexec sleep 600")?;
    let path = file.into_temp_path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

async fn run(count: usize) -> anyhow::Result<()> {
    let engine = hanging_engine()?;
    let engine = engine.display().to_string();
    let system = System::start_with(&[("MES_CALC_BIN", &engine), ("MES_CALC_TIMEOUT", "1h")]).await;
    let config = "[stuck_after]\ncustomer_confirmation = \"1h\"\n";
    let env = [
        ("ORDER_WATCH_STUCK_AFTER", STUCK_AFTER),
        ("RUST_LOG", "warn"),
    ];
    let confirming = Watch::watching(&system, config, &env).await;
    let unasked = {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let watch = Watch::start_choosing(config, &env, testkit::process::free_port).await;
        system.otlp.forward_to(&watch.otlp_endpoint);
        watch
    };

    eprintln!("placing {count} orders that will hang in pricing…");
    let mut placed = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(8) {
        let orders = futures::future::join_all(
            chunk
                .iter()
                .map(|_| system.place_order("torus.STL", "gold_585")),
        )
        .await;
        placed.extend(orders.into_iter().map(|o| o.id));
    }
    let ids: Vec<String> = placed.iter().map(Uuid::to_string).collect();
    testkit::wait::until(
        "every order pricing at MES",
        Duration::from_secs(300),
        || async {
            let held = listing(&system, &ids).await.ok()?;
            (held.iter().filter(|o| o["status"] == "pricing").count() == count).then_some(())
        },
    )
    .await;

    // Both have every order by now, none due yet: the window for the CPU figures starts here.
    let (confirming_pid, unasked_pid, mes_pid) = (
        pid_of(&confirming.process)?,
        pid_of(&unasked.process)?,
        pid_of(&system.mes)?,
    );
    let before = [cpu_of(confirming_pid)?, cpu_of(unasked_pid)?];
    ensure!(
        flagged(&confirming).await + flagged(&unasked).await == 0.0,
        "orders fell due while they were still being placed; raise STUCK_AFTER"
    );
    eprintln!("waiting until both order-watches flagged all {count}…");
    // Both are asked the same, cheap question (a counter of orders flagged) equally often, so
    // the benchmark's own polling costs them the same.
    testkit::wait::until("every order flagged", Duration::from_secs(600), || async {
        let done = flagged(&confirming).await >= count as f64;
        (flagged(&unasked).await >= count as f64 && done).then_some(())
    })
    .await;
    let after = [cpu_of(confirming_pid)?, cpu_of(unasked_pid)?];
    let confirming_delays = delays(&confirming, &placed, "confirmed").await?;
    let unasked_delays = delays(&unasked, &placed, "unconfirmed").await?;

    eprintln!("timing MES's status listing…");
    let one = time_listing(&system, mes_pid, &ids[..1]).await?;
    let most = time_listing(&system, mes_pid, &ids[..ids.len().min(200)]).await?;
    eprintln!("timing order-watch's question…");
    let asking_one = time_asking(system.mes.url(), placed[..1].to_vec())?;
    let asking_most = time_asking(system.mes.url(), placed[..placed.len().min(200)].to_vec())?;

    let window = |i: usize| (after[i] - before[i]).as_secs_f64() * 1e3;
    println!("\n### Confirming {count} stuck orders\n");
    println!("| | detection delay p50 / p99 / max | order-watch CPU while they fell due |");
    println!("|---|---|---|");
    for (i, (name, delays)) in [
        ("asks MES (confirmed)", &confirming_delays),
        ("asks nobody (unconfirmed)", &unasked_delays),
    ]
    .into_iter()
    .enumerate()
    {
        println!(
            "| {name} | {:.1} / {:.1} / {:.1} ms | {:.0} ms |",
            percentile(delays, 50),
            percentile(delays, 99),
            percentile(delays, 100),
            window(i),
        );
    }
    println!("\n### order-watch asking MES ({ASKS} questions each, one thread)\n");
    println!("| orders asked about | CPU per question in order-watch | per order |");
    println!("|---|---|---|");
    for (asked, cpu) in [(1, asking_one), (placed.len().min(200), asking_most)] {
        println!(
            "| {asked} | {:.0} µs | {:.2} µs |",
            cpu.as_secs_f64() * 1e6,
            cpu.as_secs_f64() * 1e6 / asked as f64
        );
    }
    println!("\n### MES's status listing ({LISTING_REQUESTS} requests each)\n");
    println!("| orders asked about | latency p50 / p99 | MES CPU per request | per order |");
    println!("|---|---|---|---|");
    for (asked, timing) in [(1, &one), (ids.len().min(200), &most)] {
        println!(
            "| {asked} | {:.2} / {:.2} ms | {:.0} µs | {:.1} µs |",
            percentile(&timing.latencies, 50),
            percentile(&timing.latencies, 99),
            timing.cpu_per_request.as_secs_f64() * 1e6,
            timing.cpu_per_request.as_secs_f64() * 1e6 / asked as f64,
        );
    }
    Ok(())
}

/// How many orders `watch` has flagged stuck so far (its detection-delay histogram's count).
async fn flagged(watch: &Watch) -> f64 {
    watch
        .metric("order_watch_detection_delay_seconds_count", &[])
        .await
}

/// What MES holds of `ids`.
async fn listing(system: &System, ids: &[String]) -> anyhow::Result<Vec<Value>> {
    let mut held = Vec::new();
    for chunk in ids.chunks(200) {
        let url = format!(
            "{}/api/orders/statuses?ids={}",
            system.mes.url(),
            chunk.join(",")
        );
        let answer: Value = system.client.get(&url).send().await?.json().await?;
        held.extend(answer["orders"].as_array().cloned().unwrap_or_default());
    }
    Ok(held)
}

/// Milliseconds from each order's deadline to its incident, sorted.
async fn delays(watch: &Watch, orders: &[Uuid], confirmation: &str) -> anyhow::Result<Vec<f64>> {
    let (_, stuck) = watch.get("/api/orders/stuck?limit=1000").await;
    let (_, incidents) = watch.get("/api/incidents?limit=1000").await;
    let mut delays = Vec::with_capacity(orders.len());
    for order in orders {
        let id = order.to_string();
        let state = stuck
            .as_array()
            .and_then(|s| s.iter().find(|o| o["order_id"] == id))
            .context("a flagged order")?;
        ensure!(state["stuck_confirmation"] == confirmation, "{state}");
        let incident = incidents
            .as_array()
            .and_then(|s| s.iter().find(|i| i["order_id"] == id))
            .context("its incident")?;
        let deadline: DateTime<Utc> = state["deadline"].as_str().context("a deadline")?.parse()?;
        let opened: DateTime<Utc> = incident["opened_at"].as_str().context("opened")?.parse()?;
        delays.push((opened - deadline).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
    }
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}

/// Questions order-watch's client asks per size.
const ASKS: u32 = 2000;

/// CPU time order-watch's own client (`order_watch::records::Records`) spends on one question
/// to MES about `ids`, measured on a thread of its own with a runtime of its own, so that
/// nothing else of this process is counted.
fn time_asking(mes: String, ids: Vec<Uuid>) -> anyhow::Result<Duration> {
    use order_watch::records::{Records, RecordsConfig};
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let records = Records::new(RecordsConfig {
                urls: [(domain::System::Mes, mes)].into(),
                timeout: Duration::from_secs(5),
                ca: None,
                identity: None,
            })?;
            for _ in 0..50 {
                records.ask(domain::System::Mes, &ids).await?;
            }
            let before = this_thread_cpu().context("thread CPU time")?;
            for _ in 0..ASKS {
                let held = records.ask(domain::System::Mes, &ids).await?;
                ensure!(
                    held.len() == ids.len(),
                    "MES holds {} of {}",
                    held.len(),
                    ids.len()
                );
            }
            let after = this_thread_cpu().context("thread CPU time")?;
            Ok((after - before) / ASKS)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the asking thread panicked"))?
}

struct ListingTiming {
    latencies: Vec<f64>,
    cpu_per_request: Duration,
}

async fn time_listing(
    system: &System,
    mes_pid: u32,
    ids: &[String],
) -> anyhow::Result<ListingTiming> {
    let url = format!(
        "{}/api/orders/statuses?ids={}",
        system.mes.url(),
        ids.join(",")
    );
    // Warm up the connection and MES's statement cache.
    for _ in 0..20 {
        system.client.get(&url).send().await?.bytes().await?;
    }
    let cpu_before = cpu_of(mes_pid)?;
    let mut latencies = Vec::with_capacity(LISTING_REQUESTS);
    for _ in 0..LISTING_REQUESTS {
        let started = Instant::now();
        let response = system.client.get(&url).send().await?;
        ensure!(response.status().is_success(), "{}", response.status());
        response.bytes().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu = cpu_of(mes_pid)? - cpu_before;
    latencies.sort_by(f64::total_cmp);
    Ok(ListingTiming {
        latencies,
        cpu_per_request: cpu / LISTING_REQUESTS as u32,
    })
}
