//! Tracing overhead in Shop API (a benchmark binary, not a timed test).
//!
//! ```text
//! cargo bench -p shop-api --bench overhead
//! HALLMARK_BENCH_ROUNDS=20 HALLMARK_BENCH_ORDERS=300 HALLMARK_BENCH_WARMUP=300 \
//!     HALLMARK_BENCH_CLIENTS=4 cargo bench -p shop-api --bench overhead
//! # models go to /dev/shm (one round's at a time, about 130 MB with the defaults); elsewhere:
//! HALLMARK_BENCH_STORAGE_DIR=/var/tmp cargo bench -p shop-api --bench overhead
//! # the paced phase at a rate of your choice (default: half the throughput without telemetry)
//! HALLMARK_BENCH_RATE=150 cargo bench -p shop-api --bench overhead
//! # the servers' RUST_LOG, e.g. without database spans (the default filter, then an override)
//! HALLMARK_BENCH_RUST_LOG="info,sqlx=warn,lapin=warn,hyper=warn,telemetry::db=off" \
//!     cargo bench -p shop-api --bench overhead
//! # instructions per order under valgrind instead of timings (see `count_instructions`)
//! HALLMARK_BENCH_INSTRUCTIONS=1 cargo bench -p shop-api --bench overhead
//! # ... keeping the profiles, then where the difference is
//! HALLMARK_BENCH_INSTRUCTIONS=1 HALLMARK_BENCH_PROFILES=/tmp/profiles \
//!     cargo bench -p shop-api --bench overhead
//! callgrind_annotate --inclusive=yes /tmp/profiles/callgrind.on | less
//! ```
//!
//! Measures create-order throughput and latency of the real Shop [`Application`] with telemetry
//! on and with telemetry off, in one run on one machine, and prints the results as Markdown.
//!
//! **On** is Shop as its `main` runs it ([`platform::service::run`]): `telemetry::init` with
//! the OpenTelemetry SDK, the `tracing` layer, the order-baggage processor, the masking exporter
//! and the batch span processor exporting OTLP/HTTP protobuf to a local receiver, metrics on
//! `/metrics`, and JSON logs (on stdout, which goes to `/dev/null`). **Off** never calls
//! `telemetry::init`: spans and log events find no subscriber.
//!
//! Why child processes: `telemetry::init` installs process-wide state that cannot be removed
//! again (the global `tracing` subscriber, the global tracer and meter providers, the Prometheus
//! registry), so one process cannot serve with telemetry on and then off. This binary therefore
//! coordinates, and re-executes itself as the server with `HALLMARK_BENCH_SERVE=on` or `off`.
//! Both servers run the same code in the same kind of process, each with a fresh database
//! (`testkit::database`), broker namespace (`testkit::broker`) and storage directory.
//!
//! Both servers are started side by side and warmed up (`HALLMARK_BENCH_WARMUP` orders each,
//! default 300, not measured). Then come `HALLMARK_BENCH_ROUNDS` rounds (default 20): in each,
//! one server and then the other takes `HALLMARK_BENCH_ORDERS` orders (default 300) from
//! `HALLMARK_BENCH_CLIENTS` concurrent clients (default 4), each client posting the multipart
//! order with the torus fixture (435 KB) as soon as its previous one was answered (201). A round
//! ends when the server's outbox relay has published everything its orders caused
//! (`order.created`, then the `submitted` event), not at the last answer: the relay is part of
//! what an order costs Shop (with telemetry, its publish spans are), and work it had left at the
//! last answer would otherwise go uncounted and land in the other server's round. Which
//! server goes first alternates, and only one is loaded at a time; short alternating rounds
//! spread the drift of a shared machine (page cache, PostgreSQL checkpoints and autovacuum,
//! other load) evenly over both. Reported: each round's throughputs, p99 latencies and CPU time
//! per order of the server (from `/proc`), and per mode the medians over rounds and p50/p99 over
//! all measured orders. The verdicts compare within rounds: the median of the rounds' throughput
//! ratios and of their p99 differences, so that a disturbance hitting one round does not decide
//! them. Each comes with a 95 % interval over the rounds ([`median_interval`]), and a target is
//! reported "met" or "not met" only when the whole interval lies on one side of it, "undecided"
//! otherwise: on a shared machine, one run of 20 rounds often cannot tell. A paced phase
//! follows: the same rounds again, but orders arrive at a fixed rate that leaves the machine
//! room to spare (an open loop, see [`pace`]), which measures the latency
//! telemetry adds to a request rather than the queueing that lost throughput causes at
//! saturation. The receiver is this process: it answers exports as a
//! collector does and only counts bytes, so a collector's decoding work does not land on the
//! shared CPUs; exported and dropped span counts come from the telemetry server's `/metrics`.

use std::fmt::Write as _;
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use shop_api::{Application, SERVICE, Settings};
use testkit::database::TestDatabase;
use testkit::measure::{median, median_interval, percentile, process_cpu};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The allocator the shop-api binary runs with: this binary serves as Shop.
#[global_allocator]
static ALLOCATOR: platform::Allocator = platform::Allocator;

/// In a child process: serve Shop with telemetry `on` or `off` instead of coordinating.
const SERVE: &str = "HALLMARK_BENCH_SERVE";

/// Boundary of the multipart bodies the clients send.
const BOUNDARY: &str = "hallmark-bench-7c1d3f";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telemetry {
    Off,
    On,
}

impl Telemetry {
    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
        }
    }
}

fn main() -> anyhow::Result<()> {
    // The same runtime `#[tokio::main]` gives the shop-api binary.
    let runtime = tokio::runtime::Runtime::new()?;
    match std::env::var(SERVE).ok().as_deref() {
        None => runtime.block_on(coordinate()),
        Some("on") => runtime.block_on(serve(Telemetry::On)),
        Some("off") => runtime.block_on(serve(Telemetry::Off)),
        Some(other) => bail!("{SERVE}={other}: expected `on` or `off`"),
    }
}

/// The server: Shop exactly as its `main` runs it, or without `telemetry::init`.
async fn serve(telemetry: Telemetry) -> anyhow::Result<()> {
    let app = |cancel: CancellationToken| async move {
        Application::build(Settings::from_env()?, cancel)
            .await?
            .run_until_stopped()
            .await
    };
    match telemetry {
        Telemetry::On => platform::service::run(SERVICE, app).await,
        Telemetry::Off => app(platform::server::shutdown_on_signal()).await,
    }
}

struct BenchSettings {
    rounds: usize,
    warmup: usize,
    orders: usize,
    clients: usize,
    /// Orders per second of the paced phase; `None`: half the median throughput without
    /// telemetry in the saturated phase.
    rate: Option<f64>,
}

fn setting(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value} is not a count")),
        Err(_) => Ok(default),
    }
}

/// Instead of timing: count the instructions Shop runs per order with telemetry on and off.
const INSTRUCTIONS: &str = "HALLMARK_BENCH_INSTRUCTIONS";

/// A directory to keep the instruction count's callgrind profiles in (`callgrind.off`,
/// `callgrind.on`), for `callgrind_annotate`; by default they are deleted.
const PROFILES: &str = "HALLMARK_BENCH_PROFILES";

/// `RUST_LOG` for both servers; by default they run with none, i.e. the services' default filter.
/// Telemetry's spans obey it as they do in production, so it can take a kind of span out of
/// the measurement: `…,telemetry::db=off` leaves out the database spans.
const RUST_LOG: &str = "HALLMARK_BENCH_RUST_LOG";

/// Orders counted per mode in the instruction count.
const COUNTED_ORDERS: usize = 200;

/// Orders before the count starts, per mode. With telemetry, the count also waits for the first
/// export to arrive, so that most of what happens once (the exporter's connection, buffers
/// growing to size, the masking expressions' first states) is not counted as if it happened for
/// every order. The expressions' lazy automata still add states for inputs they have not seen.
const WARMUP_ORDERS: usize = 50;

/// Each server in turn, alone, under `callgrind` (valgrind): [`WARMUP_ORDERS`] to warm up, then
/// [`COUNTED_ORDERS`] orders from one client with instrumentation on, and a pause for the relay
/// and the span export to finish them. Instruction counts do not depend on what else the machine
/// is doing, so this tells apart changes far smaller than the noise of the timed rounds; it does
/// not see waiting, lock contention or cache effects. Under valgrind, `sha2` uses its portable
/// code instead of the CPU's SHA instructions, which inflates both modes alike: compare the
/// added instructions, not the ratio.
async fn count_instructions() -> anyhow::Result<()> {
    let model = Bytes::from(testkit::fixtures::stl("torus.STL"));
    let receiver = Receiver::start().await?;
    let client = reqwest::Client::new();
    let scratch = tempfile::tempdir()?;
    let profiles = match std::env::var_os(PROFILES) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => scratch.path().to_owned(),
    };
    std::fs::create_dir_all(&profiles)?;
    let mut per_order = Vec::new();
    for telemetry in [Telemetry::Off, Telemetry::On] {
        let profile = profiles.join(format!("callgrind.{}", telemetry.name()));
        let server = Server::start_under(telemetry, &receiver, &client, Some(&profile)).await?;
        let exported = receiver.bytes();
        drive(&client, &server.base, &model, WARMUP_ORDERS, 1).await?;
        if telemetry == Telemetry::On {
            let deadline = Instant::now() + Duration::from_secs(30);
            while receiver.bytes() == exported {
                ensure!(
                    Instant::now() < deadline,
                    "no spans exported within 30 s of the warm-up"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        callgrind_control(server.pid, "on")?;
        drive(&client, &server.base, &model, COUNTED_ORDERS, 1).await?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        callgrind_control(server.pid, "off")?;
        server.stop().await;
        let instructions = callgrind_total(&profile)?;
        per_order.push(instructions / COUNTED_ORDERS as f64);
        eprintln!(
            "telemetry {:>3}: {:.0} instructions per order",
            telemetry.name(),
            per_order[per_order.len() - 1]
        );
    }
    println!(
        "Instructions Shop runs per order (callgrind, {COUNTED_ORDERS} orders from one client): \
         {:.0} with telemetry off, {:.0} on; telemetry adds {:.0}.",
        per_order[0],
        per_order[1],
        per_order[1] - per_order[0]
    );
    Ok(())
}

fn callgrind_control(pid: u32, instrumentation: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("callgrind_control")
        .args(["-i", instrumentation, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("cannot run callgrind_control (valgrind)")?;
    ensure!(
        status.success(),
        "callgrind_control -i {instrumentation} failed"
    );
    Ok(())
}

/// The instruction total of a callgrind profile (its `totals:` line).
fn callgrind_total(profile: &std::path::Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(profile)
        .with_context(|| format!("no callgrind profile at {}", profile.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|total| total.trim().parse().ok())
        .context("a callgrind profile without totals")
}

/// Pause after each measurement, so that the server just measured has exported its spans and
/// gone quiet before the other one is measured.
const SETTLE: Duration = Duration::from_millis(500);

/// How often a round's end looks whether the server's outbox is drained.
const RELAY_POLL: Duration = Duration::from_millis(1);

async fn coordinate() -> anyhow::Result<()> {
    if std::env::var_os(INSTRUCTIONS).is_some() {
        return count_instructions().await;
    }
    let settings = BenchSettings {
        rounds: setting("HALLMARK_BENCH_ROUNDS", 20)?,
        warmup: setting("HALLMARK_BENCH_WARMUP", 300)?,
        orders: setting("HALLMARK_BENCH_ORDERS", 300)?,
        clients: setting("HALLMARK_BENCH_CLIENTS", 4)?,
        rate: match std::env::var("HALLMARK_BENCH_RATE") {
            Ok(value) => Some(
                value
                    .parse()
                    .with_context(|| format!("HALLMARK_BENCH_RATE={value} is not a rate"))?,
            ),
            Err(_) => None,
        },
    };
    ensure!(
        settings.rounds > 0 && settings.orders > 0 && settings.clients > 0,
        "rounds, orders and clients must be positive"
    );
    let model = Bytes::from(testkit::fixtures::stl("torus.STL"));
    let receiver = Receiver::start().await?;
    let client = reqwest::Client::new();
    let off = Server::start(Telemetry::Off, &receiver, &client).await?;
    let on = Server::start(Telemetry::On, &receiver, &client).await?;
    for server in [&off, &on] {
        drive(
            &client,
            &server.base,
            &model,
            settings.warmup,
            settings.clients,
        )
        .await?;
    }
    tokio::time::sleep(SETTLE).await;

    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        let order = if round % 2 == 0 {
            [&off, &on]
        } else {
            [&on, &off]
        };
        for server in order {
            let measured = server.measure(&client, &model, &settings).await?;
            eprintln!(
                "round {} telemetry {:>3}: {:7.1} orders/s",
                round + 1,
                server.telemetry.name(),
                measured.orders_per_second
            );
            rounds.push(measured);
            server.clear_storage()?;
            tokio::time::sleep(SETTLE).await;
        }
    }
    let rate = settings
        .rate
        .unwrap_or_else(|| summarize(&rounds, Telemetry::Off).orders_per_second / 2.0);
    let mut paced = Vec::new();
    for round in 0..settings.rounds {
        let order = if round % 2 == 0 {
            [&on, &off]
        } else {
            [&off, &on]
        };
        for server in order {
            let measured = server
                .measure_paced(&client, &model, &settings, rate)
                .await?;
            eprintln!(
                "paced round {} telemetry {:>3}: p99 {:6.2} ms",
                round + 1,
                server.telemetry.name(),
                measured.p99_ms()
            );
            paced.push(measured);
            server.clear_storage()?;
            tokio::time::sleep(SETTLE).await;
        }
    }
    let spans = SpanCounts::of(&client, &on).await?;
    off.stop().await;
    on.stop().await;
    print!(
        "{}",
        report(&settings, &rounds, &spans, model.len(), receiver.bytes())
    );
    print!("{}", report_paced(&settings, &paced, rate));
    Ok(())
}

/// A Shop server in a child process of this one, with a database, broker namespace and storage
/// directory of its own.
struct Server {
    telemetry: Telemetry,
    process: Child,
    pid: u32,
    base: String,
    /// One connection to the server's database, to see when its outbox is drained.
    outbox: sqlx::PgPool,
    _database: TestDatabase,
    /// Where the server stores models; emptied after every round ([`Server::clear_storage`]).
    storage: tempfile::TempDir,
}

/// What one server did in one round.
struct Measurement {
    telemetry: Telemetry,
    /// Orders per second until the last one was relayed: what the server sustains.
    orders_per_second: f64,
    /// Orders per second until the last one was answered; the relay may still be behind then.
    answered_per_second: f64,
    /// From the last answer until the outbox was drained.
    relay_tail: Duration,
    latencies: Vec<Duration>,
    cpu_ms_per_order: f64,
}

impl Server {
    async fn start(
        telemetry: Telemetry,
        receiver: &Receiver,
        client: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        Self::start_under(telemetry, receiver, client, None).await
    }

    /// As [`Server::start`], run by `callgrind` (writing its profile to `profile`) when given.
    async fn start_under(
        telemetry: Telemetry,
        receiver: &Receiver,
        client: &reqwest::Client,
        profile: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let database = TestDatabase::create("bench_shop").await;
        let broker = testkit::broker::isolated();
        // Shop declares only its own queue; CRM's must exist for its orders to be routed.
        testkit::broker::declare_everything(&broker).await;
        let storage = storage_dir()?;
        let port = testkit::process::free_port();
        let mut command = match profile {
            None => Command::new(std::env::current_exe()?),
            Some(profile) => {
                let mut valgrind = Command::new("valgrind");
                valgrind
                    .arg("--tool=callgrind")
                    .arg("--instr-atstart=no")
                    .arg(format!("--callgrind-out-file={}", profile.display()))
                    .arg(std::env::current_exe()?);
                valgrind
            }
        };
        let mut process = command
            .env(SERVE, telemetry.name())
            .env("SHOP_PORT", port.to_string())
            .env("SHOP_DATABASE_URL", database.url())
            .env("HALLMARK_STORAGE_DIR", storage.path())
            .envs(testkit::broker::env(&testkit::broker::as_party(
                &broker,
                messaging::Party::Service(domain::System::Shop),
            )))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env_remove("RUST_LOG")
            .envs(std::env::var(RUST_LOG).map(|filter| ("RUST_LOG", filter)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server")?;
        let pid = process.id().context("the server has a pid")?;
        let base = format!("http://127.0.0.1:{port}");
        wait_until_healthy(client, &base, &mut process).await?;
        let outbox = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(database.url())
            .await
            .context("cannot connect to the server's database")?;
        Ok(Self {
            telemetry,
            process,
            pid,
            base,
            outbox,
            _database: database,
            storage,
        })
    }

    /// Places `settings.orders` orders (saturated) and notes how fast they were taken.
    async fn measure(
        &self,
        client: &reqwest::Client,
        model: &Bytes,
        settings: &BenchSettings,
    ) -> anyhow::Result<Measurement> {
        let load = drive(client, &self.base, model, settings.orders, settings.clients);
        self.measure_load(settings.orders, load).await
    }

    /// Places `settings.orders` orders at `rate` per second, open loop (see [`pace`]).
    async fn measure_paced(
        &self,
        client: &reqwest::Client,
        model: &Bytes,
        settings: &BenchSettings,
        rate: f64,
    ) -> anyhow::Result<Measurement> {
        let load = pace(client, &self.base, model, settings.orders, rate);
        self.measure_load(settings.orders, load).await
    }

    /// Runs `load` (placing `orders` orders), then waits until the outbox relay has published
    /// everything they caused. The round ends there: its time and the server's CPU time count
    /// the relay's work for the round's orders too, and none of it spills into the next round,
    /// which belongs to the other server.
    async fn measure_load(
        &self,
        orders: usize,
        load: impl Future<Output = anyhow::Result<Vec<Duration>>>,
    ) -> anyhow::Result<Measurement> {
        let cpu_before = process_cpu(self.pid).context("the server's CPU time")?;
        let started = Instant::now();
        let latencies = load.await?;
        let answered = started.elapsed();
        self.relayed().await?;
        let elapsed = started.elapsed();
        let cpu = process_cpu(self.pid).context("the server's CPU time")? - cpu_before;
        Ok(Measurement {
            telemetry: self.telemetry,
            orders_per_second: orders as f64 / elapsed.as_secs_f64(),
            answered_per_second: orders as f64 / answered.as_secs_f64(),
            relay_tail: elapsed - answered,
            latencies,
            cpu_ms_per_order: cpu.as_secs_f64() * 1000.0 / orders as f64,
        })
    }

    /// Returns once no outbox row of this server waits to be published. Shop's relay writes an
    /// order's `submitted` event in the transaction that marks its `order.created` published,
    /// so an empty backlog means both of its messages are out.
    async fn relayed(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pending: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM messaging.outbox WHERE published_at IS NULL)",
            )
            .fetch_one(&self.outbox)
            .await
            .context("cannot read the server's outbox")?;
            if !pending {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the {} server's outbox did not drain within a minute",
                self.telemetry.name()
            );
            tokio::time::sleep(RELAY_POLL).await;
        }
    }

    /// Removes the models stored so far. Nothing reads them again in the benchmark, and in
    /// `/dev/shm` they take memory: 300 orders of 435 KB per round and server, 20 rounds in two
    /// phases, would otherwise hold 10 GB by the end (and a run with longer rounds could let
    /// the kernel kill PostgreSQL or RabbitMQ for memory).
    fn clear_storage(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(self.storage.path())? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// SIGTERM, as in production, so that telemetry flushes; killed if that takes too long.
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.process.wait())
            .await
            .is_err()
        {
            let _ = self.process.kill().await;
        }
    }
}

async fn wait_until_healthy(
    client: &reqwest::Client,
    base: &str,
    process: &mut Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = process.try_wait()? {
            bail!("the server exited with {status} before it was ready");
        }
        let health = client
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the servers store models: `HALLMARK_BENCH_STORAGE_DIR`, else `/dev/shm` when there is
/// one. The benchmark writes about 10 GB of models in all (each round's are removed after it);
/// on a disk, page-cache write-back of that much stalls both servers for up to a second at random moments, which is noise around a
/// difference of a fraction of a millisecond. In memory, neither server waits for the disk.
fn storage_dir() -> anyhow::Result<tempfile::TempDir> {
    let parent = match std::env::var_os("HALLMARK_BENCH_STORAGE_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None if std::path::Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix("hallmark-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a storage directory in {}", parent.display()))
}

/// The telemetry server's own count of the spans it exported and dropped (queue full or export
/// failed), warm-up included; spans it has not handed to the exporter yet are in neither.
struct SpanCounts {
    exported: f64,
    dropped: f64,
}

impl SpanCounts {
    async fn of(client: &reqwest::Client, server: &Server) -> anyhow::Result<Self> {
        let metrics = client
            .get(format!("{}/metrics", server.base))
            .send()
            .await?
            .text()
            .await?;
        let exported = counter_total(&metrics, "otel_sdk_exporter_span_exported_total", "");
        let failed = counter_total(
            &metrics,
            "otel_sdk_exporter_span_exported_total",
            "error_type=",
        );
        let queue_full = counter_total(
            &metrics,
            "otel_sdk_processor_span_processed_total",
            r#"error_type="queue_full""#,
        );
        Ok(Self {
            exported: exported - failed,
            dropped: queue_full + failed,
        })
    }
}

/// A multipart order for the model, with a customer of its own (orders of one customer would
/// queue for the same row).
fn order_body(model: &[u8]) -> Vec<u8> {
    let order = serde_json::json!({
        "customer": {
            "name": "Bench Customer",
            "email": format!("bench-{}@example.com", Uuid::new_v4().simple()),
            "phone": "+49 170 0000000",
        },
        "material": "gold_585",
        "size": "17",
        "external_order_id": format!("BENCH-{}", Uuid::new_v4().simple()),
    });
    let mut body = Vec::with_capacity(model.len() + 1024);
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"order\"\r\n\
             Content-Type: application/json\r\n\r\n{order}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"; filename=\"torus.STL\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(model);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Places `count` orders from `clients` concurrent clients, each sending its next order when the
/// previous one was answered; returns every order's latency.
async fn drive(
    client: &reqwest::Client,
    base: &str,
    model: &Bytes,
    count: usize,
    clients: usize,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/api/orders");
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, next, url, content_type, model) = (
            client.clone(),
            next.clone(),
            url.clone(),
            content_type.clone(),
            model.clone(),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let body = order_body(&model);
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .header(CONTENT_TYPE, &content_type)
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                let answer = response.bytes().await?;
                latencies.push(started.elapsed());
                ensure!(
                    status == 201,
                    "placing an order: {status} {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    Ok(latencies)
}

/// Places `count` orders at `rate` per second, each at its scheduled time whether or not the
/// ones before were answered (an open loop, as independent customers arrive). Latency counts
/// from the scheduled time, so a server that falls behind is charged for the wait as well.
async fn pace(
    client: &reqwest::Client,
    base: &str,
    model: &Bytes,
    count: usize,
    rate: f64,
) -> anyhow::Result<Vec<Duration>> {
    let url = format!("{base}/api/orders");
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let body = order_body(model);
        let scheduled = start + interval * index as u32;
        tokio::time::sleep_until(scheduled).await;
        let (client, url, content_type) = (client.clone(), url.clone(), content_type.clone());
        tasks.spawn(async move {
            let response = client
                .post(&url)
                .header(CONTENT_TYPE, &content_type)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let answer = response.bytes().await?;
            let latency = scheduled.elapsed();
            ensure!(
                status == 201,
                "placing an order: {status} {}",
                String::from_utf8_lossy(&answer)
            );
            anyhow::Ok(latency)
        });
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        latencies.push(done??);
    }
    Ok(latencies)
}

/// A local OTLP/HTTP receiver: answers every export as a collector does (200 with an empty,
/// i.e. fully successful, protobuf response) and counts the bytes it was sent.
struct Receiver {
    endpoint: String,
    bytes: Arc<AtomicU64>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        let export = move |body: Bytes| {
            counted.fetch_add(body.len() as u64, Ordering::Relaxed);
            async { ([(CONTENT_TYPE, "application/x-protobuf")], Bytes::new()) }
        };
        let app = axum::Router::new().route("/v1/{signal}", axum::routing::post(export));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { endpoint, bytes })
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The sum of the samples of Prometheus counter `name` whose labels include `label`.
fn counter_total(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        // From +0.0: `sum()` of no samples would be -0.0.
        .fold(0.0, |total, value| total + value)
}

/// Whether the target is met, judged on the whole interval: "met" or "not met" only when the
/// rounds agree, "undecided" when the interval reaches both sides.
fn verdict(interval: (f64, f64), meets: impl Fn(f64) -> bool) -> &'static str {
    match (meets(interval.0), meets(interval.1)) {
        (true, true) => "met",
        (false, false) => "not met",
        _ => "undecided",
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The summary of one mode over all rounds.
struct Summary {
    orders_per_second: f64,
    p50: Duration,
    p99: Duration,
    median_round_p99_ms: f64,
    cpu_ms_per_order: f64,
}

impl Measurement {
    fn latency_ms(&self, percent: usize) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        ms(percentile(&sorted, percent))
    }

    fn p99_ms(&self) -> f64 {
        self.latency_ms(99)
    }
}

/// The rounds' measurements as (off, on) pairs; each round measured both servers in turn.
fn paired(measurements: &[Measurement]) -> impl Iterator<Item = (&Measurement, &Measurement)> {
    measurements
        .chunks_exact(2)
        .map(|pair| match pair[0].telemetry {
            Telemetry::Off => (&pair[0], &pair[1]),
            Telemetry::On => (&pair[1], &pair[0]),
        })
}

fn summarize(rounds: &[Measurement], telemetry: Telemetry) -> Summary {
    let mine: Vec<&Measurement> = rounds.iter().filter(|r| r.telemetry == telemetry).collect();
    let mut latencies: Vec<Duration> = mine
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    latencies.sort();
    Summary {
        orders_per_second: median(mine.iter().map(|r| r.orders_per_second).collect()),
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
        median_round_p99_ms: median(mine.iter().map(|r| r.p99_ms()).collect()),
        cpu_ms_per_order: median(mine.iter().map(|r| r.cpu_ms_per_order).collect()),
    }
}

fn report(
    settings: &BenchSettings,
    measurements: &[Measurement],
    spans: &SpanCounts,
    model_bytes: usize,
    otlp_bytes: u64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Both servers up side by side; {} warm-up orders each, then {} rounds of {} orders per \
         server from {} concurrent clients, alternating which server goes first; model \
         torus.STL ({} KB).\n",
        settings.warmup,
        settings.rounds,
        settings.orders,
        settings.clients,
        model_bytes / 1000
    );
    let _ = writeln!(
        out,
        "| round | off orders/s | on orders/s | on/off | on/off answered | off relay tail ms | on relay tail ms | off p99 ms | on p99 ms | off CPU ms/order | on CPU ms/order |"
    );
    let _ = writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut ratios = Vec::new();
    let mut answered_ratios = Vec::new();
    let mut added_p99s = Vec::new();
    for (index, (off, on)) in paired(measurements).enumerate() {
        let ratio = on.orders_per_second / off.orders_per_second;
        let answered_ratio = on.answered_per_second / off.answered_per_second;
        ratios.push(ratio);
        answered_ratios.push(answered_ratio);
        added_p99s.push(on.p99_ms() - off.p99_ms());
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {ratio:.3} | {answered_ratio:.3} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            index + 1,
            off.orders_per_second,
            on.orders_per_second,
            ms(off.relay_tail),
            ms(on.relay_tail),
            off.p99_ms(),
            on.p99_ms(),
            off.cpu_ms_per_order,
            on.cpu_ms_per_order,
        );
    }

    let off = summarize(measurements, Telemetry::Off);
    let on = summarize(measurements, Telemetry::On);
    let _ = writeln!(
        out,
        "\n| telemetry | orders/s (median of rounds) | p50 ms (all orders) | p99 ms (all orders) | p99 ms (median of rounds) | Shop CPU ms/order (median of rounds) |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, summary) in [("off", &off), ("on", &on)] {
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            summary.orders_per_second,
            ms(summary.p50),
            ms(summary.p99),
            summary.median_round_p99_ms,
            summary.cpu_ms_per_order
        );
    }
    let interval = median_interval(&ratios);
    let ratio = median(ratios);
    let answered_ratio = median(answered_ratios);
    let added_p99 = median(added_p99s);
    let _ = writeln!(
        out,
        "\nThroughput on/off (orders relayed per second, median of the rounds' ratios): \
         {ratio:.3} ({:+.1} %; 95 % interval {:.3} to {:.3}; target within 5 %: {}). Counting only until the last answer, with \
         the relay possibly behind: {answered_ratio:.3}. Added p99 at saturation (median of the rounds' differences; mostly queueing, the \
         latency target is judged in the paced phase below): {added_p99:+.2} ms; over all orders \
         of a mode: {:+.2} ms. Added p50: {:+.2} ms. Added Shop CPU per order: {:+.2} ms. Spans exported by the \
         telemetry server: {:.0}, dropped: {:.0}; OTLP received: {:.1} MB.",
        (ratio - 1.0) * 100.0,
        interval.0,
        interval.1,
        verdict(interval, |ratio| ratio >= 0.95),
        ms(on.p99) - ms(off.p99),
        ms(on.p50) - ms(off.p50),
        on.cpu_ms_per_order - off.cpu_ms_per_order,
        spans.exported,
        spans.dropped,
        otlp_bytes as f64 / 1e6,
    );
    out
}

/// The paced phase: latency at a load the machine carries with room to spare, so that what
/// telemetry adds to each request is not multiplied by queueing.
fn report_paced(settings: &BenchSettings, measurements: &[Measurement], rate: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nPaced: {} rounds of {} orders per server at {rate:.1} orders/s, open loop (each order \
         sent at its time, latency from that time), alternating which server goes first.\n",
        settings.rounds, settings.orders
    );
    let _ = writeln!(
        out,
        "| round | off p50 ms | on p50 ms | off p99 ms | on p99 ms | off CPU ms/order | on CPU ms/order |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut added_p99s = Vec::new();
    for (index, (off, on)) in paired(measurements).enumerate() {
        added_p99s.push(on.p99_ms() - off.p99_ms());
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            index + 1,
            off.latency_ms(50),
            on.latency_ms(50),
            off.p99_ms(),
            on.p99_ms(),
            off.cpu_ms_per_order,
            on.cpu_ms_per_order,
        );
    }
    let off = summarize(measurements, Telemetry::Off);
    let on = summarize(measurements, Telemetry::On);
    let _ = writeln!(
        out,
        "\n| telemetry | p50 ms (all orders) | p99 ms (all orders) | p99 ms (median of rounds) | Shop CPU ms/order (median of rounds) |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    for (name, summary) in [("off", &off), ("on", &on)] {
        let _ = writeln!(
            out,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(summary.p50),
            ms(summary.p99),
            summary.median_round_p99_ms,
            summary.cpu_ms_per_order
        );
    }
    let interval = median_interval(&added_p99s);
    let added_p99 = median(added_p99s);
    let _ = writeln!(
        out,
        "\nAdded p99 at {rate:.1} orders/s (median of the rounds' differences): {added_p99:+.2} ms \
         (95 % interval {:+.2} to {:+.2} ms; target under 1 ms: {}); over all orders of a mode: \
         {:+.2} ms. Added p50: {:+.2} ms. Added Shop CPU per order: {:+.2} ms.",
        interval.0,
        interval.1,
        verdict(interval, |added| added < 1.0),
        ms(on.p99) - ms(off.p99),
        ms(on.p50) - ms(off.p50),
        on.cpu_ms_per_order - off.cpu_ms_per_order,
    );
    out
}
