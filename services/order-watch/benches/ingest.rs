//! order-watch ingest and detection benchmark (a benchmark binary, not a timed test).
//!
//! ```text
//! cargo bench -p order-watch --bench ingest
//! HALLMARK_BENCH_SPANS=50000 HALLMARK_BENCH_ORDERS=20000 cargo bench -p order-watch --bench ingest
//! ```
//!
//! The benchmark starts the real order-watch [`Application`] in this process, on a Tokio runtime
//! of its own, against a fresh PostgreSQL database ([`TestDatabase`]: the server named by
//! `HALLMARK_TEST_DATABASE_URL`, as for the tests). Persistence is on: order-watch answers an
//! export only after its span writer committed the spans. The system clock drives it and
//! its metrics go to a Prometheus reader, as in production. The benchmark measures, and prints
//! as Markdown:
//!
//! 1. **Ingest throughput** over OTLP/HTTP protobuf (`POST /v1/traces`) and OTLP/gRPC:
//!    `HALLMARK_BENCH_CLIENTS` concurrent exporters (default 8) send `HALLMARK_BENCH_SPANS` spans
//!    per protocol (default 1,000,000) in requests of 512 spans. Each request is one service's
//!    export (shop-api, crm-api, mes-api or mes-calc) and holds parts of many orders' journeys
//!    ([`testkit::journeys`]), with the attributes those services put on their spans
//!    (`order.*`, `customer.id`, `hallmark.*`, `http.*`, `db.*`, `messaging.*`, `process.*`)
//!    and one transition span (`order.status.from/to`, `order.stage`) per status change, so
//!    orders stand open in every stage. Every span carries `order.id`, so every span sent is a span stored. Throughput is
//!    given per wall-clock second and per CPU-second of order-watch (this process's CPU time
//!    minus that of the load generator's threads), and per CPU-second of order-watch plus the
//!    PostgreSQL processes serving its database.
//! 2. **Memory and detection with many open orders**: more journeys go in over OTLP/HTTP until
//!    at least `HALLMARK_BENCH_ORDERS` orders are open (default 1,000,000); then the process's resident
//!    memory and the database size are read. `HALLMARK_BENCH_PROBES` probe orders (default 100)
//!    are then sent with spans dated so that their deadlines fall at known instants a few
//!    seconds ahead, once with ingest idle and once under full ingest load. For each probe the
//!    benchmark reports how long after its deadline the detector flagged it (the incident's
//!    `opened_at`, which the detector stamps once MES, a stand-in listing here, confirmed it)
//!    and how long until the benchmark, polling every 5 ms, saw it committed as stuck.
//!
//! Everything shares the machine: order-watch, the load generator and PostgreSQL. The load
//! generator's own CPU time is measured and left out of order-watch's figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use chrono::{DateTime, Utc};
use domain::OrderStatus;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use order_watch::clock::Clock;
use order_watch::config::Thresholds;
use order_watch::startup::Ports;
use order_watch::{Application, Settings};
use platform::db::DatabaseConfig;
use prost::Message as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use testkit::database::TestDatabase;
use testkit::journeys::{BATCH_SPANS, Journeys, Service, exporter_of};
use testkit::measure::{
    BackendsCpu, Memory, cpu_time, load_average, memory, mib, percentile, this_process_cpu,
    thousands,
};
use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Name of the threads of order-watch's runtime.
const SERVICE_THREADS: &str = "order-watch";
/// Name of the threads of the load generator's runtime; their CPU time is not order-watch's.
const LOAD_THREADS: &str = "bench-load";
/// `application_name` of the benchmark's own database connections, so their CPU time is not
/// counted as PostgreSQL working for order-watch.
const BENCH_APPLICATION: &str = "order-watch-bench";
/// The threshold of the machine stages (intake to pricing; 15 minutes in production): long
/// enough that no background order falls due even in a slow run. The probe orders are dated
/// back by this much instead.
const MACHINE_STAGE_THRESHOLD: Duration = Duration::from_secs(6 * 3600);
/// The first probe deadline lies this far after the probes are sent, so they are stored first.
const PROBE_LEAD: Duration = Duration::from_secs(3);
/// The probe deadlines are spread evenly over this long.
const PROBE_SPREAD: Duration = Duration::from_secs(5);
/// How often the benchmark looks for probe orders marked stuck.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// A probe not detected this long after its deadline fails the benchmark.
const DETECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the CPU time of PostgreSQL's processes is read during an ingest run.
const POSTGRES_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    install_metrics()?;
    let service = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVICE_THREADS)
        .enable_all()
        .build()?;
    let load = tokio::runtime::Builder::new_multi_thread()
        .thread_name(LOAD_THREADS)
        .enable_all()
        .build()?;
    load.block_on(run(config, service.handle().clone()))
}

/// What to run, from the environment.
#[derive(Debug, Clone, Copy)]
struct Config {
    spans_per_protocol: u64,
    open_orders: u64,
    clients: u64,
    probes: usize,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(text) => text
                    .replace('_', "")
                    .parse()
                    .with_context(|| format!("{name}=`{text}` is not a whole number")),
                Err(_) => Ok(default),
            }
        };
        let config = Self {
            spans_per_protocol: number("HALLMARK_BENCH_SPANS", 1_000_000)?,
            open_orders: number("HALLMARK_BENCH_ORDERS", 1_000_000)?,
            clients: number("HALLMARK_BENCH_CLIENTS", 8)?,
            probes: number("HALLMARK_BENCH_PROBES", 100)? as usize,
        };
        ensure!(
            config.clients > 0,
            "HALLMARK_BENCH_CLIENTS must be at least 1"
        );
        ensure!(
            config.probes > 0,
            "HALLMARK_BENCH_PROBES must be at least 1"
        );
        Ok(config)
    }
}

/// A real meter provider, as `telemetry::init` installs in production, so that recording
/// order-watch's metrics costs what it costs there.
fn install_metrics() -> anyhow::Result<()> {
    let reader = opentelemetry_prometheus::exporter()
        .with_registry(prometheus::Registry::new())
        .build()?;
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .build();
    opentelemetry::global::set_meter_provider(provider);
    Ok(())
}

async fn run(config: Config, service: Handle) -> anyhow::Result<()> {
    let database = TestDatabase::create("bench_watch").await;
    let mes = StandInMes::start().await?;
    let order_watch = OrderWatch::start(&database, &service, &mes).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            database
                .url()
                .parse::<PgConnectOptions>()?
                .application_name(BENCH_APPLICATION),
        )
        .await?;
    let load_before = load_average()?;
    let started = memory()?;

    eprintln!("ingest over OTLP/HTTP protobuf…");
    let mut ingest = vec![measure_ingest(&pool, order_watch.ports, config, Workload::Http).await?];
    eprintln!("ingest over OTLP/gRPC…");
    ingest.push(measure_ingest(&pool, order_watch.ports, config, Workload::Grpc).await?);
    let warmed_up = memory()?;
    let open = count(&pool, "SELECT count(*) FROM orders WHERE NOT terminal").await?;
    let to_open = config.open_orders.saturating_sub(open);
    if to_open > 0 {
        eprintln!("loading {to_open} more open orders over OTLP/HTTP…");
        let workload = Workload::OpenOrders(to_open);
        ingest.push(measure_ingest(&pool, order_watch.ports, config, workload).await?);
    }
    let population = Population::read(&pool).await?;
    let loaded = memory()?;

    eprintln!("detection with ingest idle…");
    let idle = measure_detection(&pool, order_watch.ports, config, Background::Idle).await?;
    eprintln!("detection under ingest load…");
    let busy = measure_detection(&pool, order_watch.ports, config, Background::Ingesting).await?;
    let finished = memory()?;

    print_report(&Report {
        config,
        load_average: [load_before, load_average()?],
        ingest,
        population,
        memory: [started, warmed_up, loaded, finished],
        detection: [idle, busy],
    });
    pool.close().await;
    order_watch.stop().await
}

/// MES's status listing (`domain::held`) as the probes' system of record: it holds every order
/// it is asked about in `pricing`, where order-watch has the probes, so each probe is confirmed
/// stuck after one round trip. It runs on the load generator's runtime, outside order-watch's
/// CPU time; what the real listing costs in a service is measured apart
/// (`docs/benchmarks.md`).
struct StandInMes {
    url: String,
}

impl StandInMes {
    async fn start() -> anyhow::Result<Self> {
        use axum::extract::Query;
        use domain::held::{HeldStatus, HeldStatuses, STATUSES_PATH};
        async fn listing(Query(query): Query<HashMap<String, String>>) -> axum::Json<HeldStatuses> {
            let updated_at = Utc::now() - chrono::Duration::hours(1);
            let orders = query
                .get("ids")
                .map(String::as_str)
                .unwrap_or_default()
                .split(',')
                .filter_map(|id| id.parse().ok())
                .map(|order_id| HeldStatus {
                    order_id,
                    status: OrderStatus::Pricing,
                    updated_at,
                })
                .collect();
            axum::Json(HeldStatuses { orders, next: None })
        }
        let app = axum::Router::new().route(STATUSES_PATH, axum::routing::get(listing));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url })
    }
}

/// order-watch running on its own runtime.
struct OrderWatch {
    ports: Ports,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl OrderWatch {
    async fn start(
        database: &TestDatabase,
        runtime: &Handle,
        mes: &StandInMes,
    ) -> anyhow::Result<Self> {
        let mut settings = Settings {
            thresholds: Thresholds {
                default: MACHINE_STAGE_THRESHOLD,
                ..Thresholds::default()
            },
            // What is measured here is ingest and detection; reconciliation has its own
            // benchmark (services/order-watch/benches/reconciliation.rs).
            reconcile: order_watch::reconcile::ReconcileConfig {
                enabled: false,
                ..order_watch::reconcile::ReconcileConfig::default()
            },
            ..Settings::local(DatabaseConfig::new(database.url()))
        };
        // Only the probes fall due, and they wait in a stage MES owns.
        settings
            .records
            .urls
            .insert(domain::System::Mes, mes.url.clone());
        let cancel = CancellationToken::new();
        let app = runtime
            .spawn(Application::build(settings, Clock::System, cancel.clone()))
            .await??;
        let ports = app.ports();
        let handle = runtime.spawn(app.run_until_stopped());
        Ok(Self {
            ports,
            cancel,
            handle,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.handle.await?
    }
}

async fn count(pool: &PgPool, query: &str) -> anyhow::Result<u64> {
    let count: i64 = sqlx::query_scalar(query).fetch_one(pool).await?;
    Ok(count as u64)
}

// ---------------------------------------------------------------------------------------------
// Exporters: how the load reaches order-watch.
// ---------------------------------------------------------------------------------------------

/// How exporters reach order-watch.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// OTLP/HTTP with protobuf bodies.
    Http,
    Grpc,
}

/// One exporter's connection to order-watch, as an OTLP SDK would hold it.
enum Exporter {
    Http {
        client: reqwest::Client,
        url: String,
    },
    Grpc(TraceServiceClient<tonic::transport::Channel>),
}

impl Exporter {
    async fn connect(protocol: Protocol, ports: Ports) -> anyhow::Result<Self> {
        Ok(match protocol {
            Protocol::Http => Self::Http {
                client: reqwest::Client::new(),
                url: format!("http://127.0.0.1:{}/v1/traces", ports.otlp_http),
            },
            Protocol::Grpc => {
                let endpoint = format!("http://127.0.0.1:{}", ports.otlp_grpc);
                Self::Grpc(TraceServiceClient::connect(endpoint).await?)
            }
        })
    }

    /// Sends `request` until order-watch takes it (answering only once the spans are
    /// committed) and returns how often it said "busy, retry" first.
    async fn export(&mut self, request: ExportTraceServiceRequest) -> anyhow::Result<u64> {
        let mut retries = 0;
        match self {
            Self::Http { client, url } => {
                let body = bytes::Bytes::from(request.encode_to_vec());
                loop {
                    let response = client
                        .post(url.as_str())
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                        .await?;
                    match response.status().as_u16() {
                        200 => return Ok(retries),
                        429 | 503 => retries += 1,
                        status => bail!("OTLP/HTTP answered {status}: {}", response.text().await?),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Self::Grpc(client) => loop {
                match client.export(request.clone()).await {
                    Ok(_) => return Ok(retries),
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                        ) =>
                    {
                        retries += 1;
                    }
                    Err(status) => bail!("OTLP/gRPC answered {status}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
        }
    }
}

/// What the exporters sent.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    requests: u64,
    spans: u64,
    retries: u64,
}

impl Sent {
    fn add(&mut self, other: Sent) {
        self.requests += other.requests;
        self.spans += other.spans;
        self.retries += other.retries;
    }
}

/// One exporter's part of a workload.
enum Share {
    /// This many full requests.
    Batches(u64),
    /// Journeys until this many open orders went out, then every span still pending.
    OpenOrders(u64),
    /// Full requests until cancelled.
    Until(CancellationToken),
}

/// Runs one exporter through its share of a workload.
async fn export_share(
    protocol: Protocol,
    ports: Ports,
    seed: u64,
    share: Share,
) -> anyhow::Result<Sent> {
    let mut exporter = Exporter::connect(protocol, ports).await?;
    let mut journeys = Journeys::new(seed);
    let mut sent = Sent::default();
    match share {
        Share::Batches(batches) => {
            for _ in 0..batches {
                sent.add(send(&mut exporter, journeys.next_batch()).await?);
            }
        }
        Share::OpenOrders(orders) => {
            let mut opened = 0;
            while opened < orders {
                opened += u64::from(journeys.add_random_order());
                while let Some(request) = journeys.take_ready() {
                    sent.add(send(&mut exporter, request).await?);
                }
            }
            for request in journeys.drain() {
                sent.add(send(&mut exporter, request).await?);
            }
        }
        Share::Until(stop) => {
            while !stop.is_cancelled() {
                sent.add(send(&mut exporter, journeys.next_batch()).await?);
            }
        }
    }
    Ok(sent)
}

/// Exports one request; returns what it carried.
async fn send(exporter: &mut Exporter, request: ExportTraceServiceRequest) -> anyhow::Result<Sent> {
    let spans = request.resource_spans[0].scope_spans[0].spans.len() as u64;
    let retries = exporter.export(request).await?;
    Ok(Sent {
        requests: 1,
        spans,
        retries,
    })
}

/// Splits `total` over `parts` as evenly as whole numbers allow.
fn split(total: u64, parts: u64, index: u64) -> u64 {
    total / parts + u64::from(index < total % parts)
}

// ---------------------------------------------------------------------------------------------
// Ingest throughput.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Workload {
    /// `spans_per_protocol` spans over OTLP/HTTP protobuf.
    Http,
    /// `spans_per_protocol` spans over OTLP/gRPC.
    Grpc,
    /// Journeys over OTLP/HTTP protobuf until this many more orders are open.
    OpenOrders(u64),
}

impl Workload {
    /// Distinguishes the random streams of the workloads, so that no two generate the same ids.
    fn stream(self) -> u64 {
        match self {
            Self::Http => 1,
            Self::Grpc => 2,
            Self::OpenOrders(_) => 3,
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Self::Http | Self::OpenOrders(_) => Protocol::Http,
            Self::Grpc => Protocol::Grpc,
        }
    }

    /// One exporter's share of the workload.
    fn share(self, config: Config, client: u64) -> Share {
        match self {
            Self::Http | Self::Grpc => {
                let batches = config.spans_per_protocol.div_ceil(BATCH_SPANS as u64);
                Share::Batches(split(batches, config.clients, client))
            }
            Self::OpenOrders(orders) => Share::OpenOrders(split(orders, config.clients, client)),
        }
    }

    fn title(self) -> String {
        match self {
            Self::Http => "OTLP/HTTP protobuf".into(),
            Self::Grpc => "OTLP/gRPC".into(),
            Self::OpenOrders(orders) => {
                format!("OTLP/HTTP, loading {} open orders", thousands(orders))
            }
        }
    }
}

/// One measured ingest run.
struct IngestRun {
    workload: Workload,
    sent: Sent,
    /// Spans the database holds now that it did not before.
    stored: u64,
    wall: Duration,
    cpu: CpuUsage,
}

impl IngestRun {
    fn per_second(&self, seconds: Duration) -> f64 {
        self.stored as f64 / seconds.as_secs_f64()
    }
}

async fn measure_ingest(
    pool: &PgPool,
    ports: Ports,
    config: Config,
    workload: Workload,
) -> anyhow::Result<IngestRun> {
    let before = count(pool, "SELECT count(*) FROM spans").await?;
    let stop_sampling = CancellationToken::new();
    let postgres = tokio::spawn(
        BackendsCpu::start(
            pool,
            POSTGRES_WORKING_FOR_ORDER_WATCH,
            BENCH_APPLICATION,
            POSTGRES_SAMPLE_INTERVAL,
        )
        .await?
        .follow(stop_sampling.clone()),
    );
    let cpu_before = ProcessCpu::now()?;
    let started = Instant::now();
    let mut exporters = JoinSet::new();
    for client in 0..config.clients {
        let seed = workload.stream() << 32 | client;
        let share = workload.share(config, client);
        exporters.spawn(export_share(workload.protocol(), ports, seed, share));
    }
    let mut sent = Sent::default();
    while let Some(result) = exporters.join_next().await {
        sent.add(result??);
    }
    let wall = started.elapsed();
    let cpu_after = ProcessCpu::now()?;
    stop_sampling.cancel();
    let cpu = CpuUsage::new(&cpu_before, &cpu_after, postgres.await??);
    let stored = count(pool, "SELECT count(*) FROM spans").await? - before;
    ensure!(
        stored == sent.spans,
        "{} spans were answered as stored but the database holds {stored} more",
        sent.spans
    );
    Ok(IngestRun {
        workload,
        sent,
        stored,
        wall,
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// CPU time.
// ---------------------------------------------------------------------------------------------

/// CPU time (user + system) of this process so far, read from `/proc`.
struct ProcessCpu {
    total: Duration,
    load_generator: Duration,
}

impl ProcessCpu {
    fn now() -> anyhow::Result<Self> {
        let main_thread = std::process::id().to_string();
        let mut load_generator = Duration::ZERO;
        for task in std::fs::read_dir("/proc/self/task")? {
            let task = task?.path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            // The main thread drives the load generator's runtime.
            let main = task.file_name().and_then(|n| n.to_str()) == Some(main_thread.as_str());
            if main || name.starts_with(LOAD_THREADS) {
                load_generator +=
                    cpu_time(&task.join("stat").to_string_lossy()).unwrap_or_default();
            }
        }
        Ok(Self {
            total: this_process_cpu().context("cannot read /proc/self/stat")?,
            load_generator,
        })
    }
}

/// CPU time spent during a run.
#[derive(Debug, Clone, Copy)]
struct CpuUsage {
    /// This process minus the load generator: order-watch's runtime, and any thread that
    /// ended during the run (counted against order-watch, so it is never flattered).
    order_watch: Duration,
    load_generator: Duration,
    /// See [`POSTGRES_WORKING_FOR_ORDER_WATCH`].
    postgres: Duration,
}

impl CpuUsage {
    fn new(before: &ProcessCpu, after: &ProcessCpu, postgres: Duration) -> Self {
        let load_generator = after.load_generator.saturating_sub(before.load_generator);
        let total = after.total.saturating_sub(before.total);
        Self {
            order_watch: total.saturating_sub(load_generator),
            load_generator,
            postgres,
        }
    }
}

/// The PostgreSQL processes working for order-watch: the backends serving its database (not
/// this benchmark's own connections) and the server's background processes (WAL writer,
/// checkpointer, …).
const POSTGRES_WORKING_FOR_ORDER_WATCH: &str = "SELECT pid FROM pg_stat_activity \
     WHERE (datname = current_database() AND application_name <> $1) \
        OR (datname IS NULL AND backend_type <> 'client backend')";

/// What the database holds once the open orders are loaded.
struct Population {
    open_orders: u64,
    orders: u64,
    spans: u64,
    database_bytes: u64,
    orders_bytes: u64,
    spans_bytes: u64,
}

impl Population {
    async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM orders WHERE NOT terminal) AS open_orders, \
                    (SELECT count(*) FROM orders) AS orders, \
                    (SELECT count(*) FROM spans) AS spans, \
                    pg_database_size(current_database()) AS database_bytes, \
                    pg_total_relation_size('orders') AS orders_bytes, \
                    pg_total_relation_size('spans') AS spans_bytes",
        )
        .fetch_one(pool)
        .await?;
        let get = |column: &str| row.get::<i64, _>(column) as u64;
        Ok(Self {
            open_orders: get("open_orders"),
            orders: get("orders"),
            spans: get("spans"),
            database_bytes: get("database_bytes"),
            orders_bytes: get("orders_bytes"),
            spans_bytes: get("spans_bytes"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Detection delay.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Background {
    Idle,
    /// `clients` exporters keep sending journeys over OTLP/HTTP throughout.
    Ingesting,
}

struct Detection {
    /// Deadline to the incident's `opened_at`, in milliseconds, per probe.
    claimed: Vec<f64>,
    /// Deadline to the benchmark seeing the order committed as stuck, in milliseconds.
    visible: Vec<f64>,
    /// Spans per second ingested meanwhile, if any were.
    background_spans_per_second: Option<f64>,
}

async fn measure_detection(
    pool: &PgPool,
    ports: Ports,
    config: Config,
    background: Background,
) -> anyhow::Result<Detection> {
    let stop = CancellationToken::new();
    let mut load = JoinSet::new();
    let load_started = Instant::now();
    if let Background::Ingesting = background {
        for client in 0..config.clients {
            let share = Share::Until(stop.clone());
            load.spawn(export_share(Protocol::Http, ports, 4 << 32 | client, share));
        }
        // Let the load reach its pace before the probes go in.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Probe orders wait in `pricing` (a machine stage); their last span is dated so that the
    // deadline (last span + threshold) falls at an instant PROBE_LEAD to PROBE_LEAD +
    // PROBE_SPREAD from now.
    let first_deadline = Utc::now() + chrono::Duration::from_std(PROBE_LEAD)?;
    let spacing = PROBE_SPREAD / config.probes as u32;
    let threshold = chrono::Duration::from_std(MACHINE_STAGE_THRESHOLD)?;
    let mut journeys = Journeys::new(match background {
        Background::Idle => 5 << 32,
        Background::Ingesting => 6 << 32,
    });
    let probes: Vec<Uuid> = (0..config.probes as u32)
        .map(|k| {
            let deadline =
                first_deadline + chrono::Duration::from_std(spacing * k).unwrap_or_default();
            journeys.add_order(OrderStatus::Pricing, deadline - threshold)
        })
        .collect();
    // mes-api's requests carry the probes' last spans; sent first, they set the final deadline
    // at once, and the older spans from the other services leave it alone. (The other way
    // round, a probe would be briefly overdue by its earlier steps.)
    let mut requests = journeys.drain();
    requests.sort_by_key(|request| exporter_of(request) != Service::Mes.name());
    let mut exporter = Exporter::connect(Protocol::Http, ports).await?;
    for request in requests {
        exporter.export(request).await?;
    }
    let deadlines: HashMap<Uuid, DateTime<Utc>> =
        sqlx::query("SELECT order_id, deadline FROM orders WHERE order_id = ANY($1)")
            .bind(&probes)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| (row.get("order_id"), row.get("deadline")))
            .collect();
    ensure!(
        deadlines.len() == probes.len(),
        "only {} of {} probe orders were stored",
        deadlines.len(),
        probes.len()
    );
    let earliest = deadlines.values().min().copied().unwrap_or(first_deadline);
    ensure!(
        earliest > Utc::now(),
        "the probes were stored only after their first deadline; raise PROBE_LEAD"
    );

    // Poll for the moment each probe is committed as stuck.
    let latest = deadlines.values().max().copied().unwrap_or(first_deadline);
    let give_up = latest + chrono::Duration::from_std(DETECTION_TIMEOUT)?;
    let mut seen: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    while seen.len() < probes.len() {
        if Utc::now() > give_up {
            bail!(
                "{} of {} probe orders were never detected",
                probes.len() - seen.len(),
                probes.len()
            );
        }
        let stuck: Vec<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM orders WHERE order_id = ANY($1) AND stuck_since IS NOT NULL",
        )
        .bind(&probes)
        .fetch_all(pool)
        .await?;
        let now = Utc::now();
        for order in stuck {
            seen.entry(order).or_insert(now);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    stop.cancel();
    let mut background_sent = Sent::default();
    while let Some(result) = load.join_next().await {
        background_sent.add(result??);
    }
    let background_spans_per_second = matches!(background, Background::Ingesting)
        .then(|| background_sent.spans as f64 / load_started.elapsed().as_secs_f64());

    let incidents = sqlx::query(
        "SELECT order_id, opened_at FROM incidents \
         WHERE kind = 'stuck_order' AND order_id = ANY($1)",
    )
    .bind(&probes)
    .fetch_all(pool)
    .await?;
    ensure!(
        incidents.len() == probes.len(),
        "{} incidents for {} probe orders: each must be detected exactly once",
        incidents.len(),
        probes.len()
    );
    let opened: HashMap<Uuid, DateTime<Utc>> = incidents
        .iter()
        .map(|row| (row.get("order_id"), row.get("opened_at")))
        .collect();
    let millis = |times: &HashMap<Uuid, DateTime<Utc>>| -> Vec<f64> {
        let mut delays: Vec<f64> = probes
            .iter()
            .map(|order| {
                let delay = times[order] - deadlines[order];
                delay.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
            })
            .collect();
        delays.sort_by(f64::total_cmp);
        delays
    };
    Ok(Detection {
        claimed: millis(&opened),
        visible: millis(&seen),
        background_spans_per_second,
    })
}

// ---------------------------------------------------------------------------------------------
// Report.
// ---------------------------------------------------------------------------------------------

struct Report {
    config: Config,
    /// `/proc/loadavg` before and after: how busy the machine was besides.
    load_average: [String; 2],
    ingest: Vec<IngestRun>,
    population: Population,
    /// After start-up, after the throughput runs, with the open orders loaded, at the end.
    memory: [Memory; 4],
    detection: [Detection; 2],
}

fn print_report(report: &Report) {
    let Report {
        config,
        load_average,
        ingest,
        population,
        memory,
        detection,
    } = report;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{cores} cores; load average (1, 5, 15 min) before: {}, after: {}\n",
        load_average[0], load_average[1]
    );
    let row = |label: &str, cell: &dyn Fn(&IngestRun) -> String| {
        let cells: Vec<String> = ingest.iter().map(cell).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let rate = |value: f64| thousands(value.round() as u64);
    println!(
        "### Ingest ({} concurrent exporters, {BATCH_SPANS} spans per request)\n",
        config.clients
    );
    let titles: Vec<String> = ingest.iter().map(|run| run.workload.title()).collect();
    println!("| | {} |", titles.join(" | "));
    println!("|---|{}", "---|".repeat(ingest.len()));
    row("spans stored (checked in the database)", &|r| {
        thousands(r.stored)
    });
    row("requests (answered after commit)", &|r| {
        thousands(r.sent.requests)
    });
    row("\"busy, retry\" answers", &|r| thousands(r.sent.retries));
    row("wall-clock time", &|r| {
        format!("{:.1} s", r.wall.as_secs_f64())
    });
    row(
        "**spans/s, wall clock** (everything on this machine)",
        &|r| rate(r.per_second(r.wall)),
    );
    row("order-watch CPU time", &|r| {
        format!("{:.1} s", r.cpu.order_watch.as_secs_f64())
    });
    row("**spans/s per core of order-watch**", &|r| {
        rate(r.per_second(r.cpu.order_watch))
    });
    row("PostgreSQL CPU time", &|r| {
        format!("{:.1} s", r.cpu.postgres.as_secs_f64())
    });
    row("spans/s per core of order-watch + PostgreSQL", &|r| {
        rate(r.per_second(r.cpu.order_watch + r.cpu.postgres))
    });
    row("load generator CPU time (not counted above)", &|r| {
        format!("{:.1} s", r.cpu.load_generator.as_secs_f64())
    });

    println!("\n### {} open orders\n", thousands(population.open_orders));
    println!("| | |\n|---|---|");
    println!(
        "| orders stored (open + finished) | {} |",
        thousands(population.orders)
    );
    println!(
        "| spans stored | {} ({:.1} per order) |",
        thousands(population.spans),
        population.spans as f64 / population.orders as f64
    );
    println!(
        "| database size | {} (orders {}, spans {}) |",
        mib(population.database_bytes),
        mib(population.orders_bytes),
        mib(population.spans_bytes)
    );
    let [started, warmed_up, loaded, finished] = memory;
    for (when, memory) in [
        ("after start-up", started),
        ("after the throughput runs", warmed_up),
        ("with the open orders loaded", loaded),
        ("at the end", finished),
    ] {
        println!("| resident memory {when} | {} |", mib(memory.resident));
    }
    println!("| peak resident memory | {} |", mib(finished.peak));

    println!(
        "\n### Detection delay among them ({} probe orders per row, ms after the deadline)\n",
        config.probes
    );
    println!(
        "| ingest meanwhile | claimed (incident `opened_at`) p50 / p99 / max | committed and seen (5 ms polling) p50 / p99 / max |"
    );
    println!("|---|---|---|");
    for run in detection {
        let background = match run.background_spans_per_second {
            Some(rate) => format!("full load, {} spans/s", thousands(rate.round() as u64)),
            None => "idle".to_owned(),
        };
        let stats = |values: &[f64]| {
            format!(
                "{:.1} / {:.1} / {:.1}",
                percentile(values, 50),
                percentile(values, 99),
                values.last().copied().unwrap_or_default()
            )
        };
        println!(
            "| {background} | {} | {} |",
            stats(&run.claimed),
            stats(&run.visible)
        );
    }
}
