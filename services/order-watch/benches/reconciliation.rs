//! Reconciliation's cost and detection delay (a benchmark binary, not a timed test;
//! `docs/benchmarks.md`, "Reconciliation: cost and detection delay").
//!
//! ```text
//! cargo bench -p order-watch --bench reconciliation
//! HALLMARK_BENCH_RATES=1000 HALLMARK_BENCH_SECONDS=60 cargo bench -p order-watch --bench reconciliation
//! ORDER_WATCH_RECONCILE_MAX_PAGES=100 HALLMARK_BENCH_RATES=60000 cargo bench -p order-watch --bench reconciliation
//! ```
//!
//! For each rate in `HALLMARK_BENCH_RATES` (changed orders per minute, default
//! `1000,10000,60000`), on a fresh database ([`TestDatabase`]: the server named by
//! `HALLMARK_TEST_DATABASE_URL`, as for the tests):
//!
//! * **The systems of record** are stand-ins: three HTTP servers on port 0 (Shop, CRM, MES)
//!   serving the [`domain::held`] listing by ids and changed since (keyset pages of
//!   `(updated_at, order_id)`), holding their orders in memory with an index in that order, so a
//!   page costs them a range lookup. They stand in the way the API tests' stand-ins do
//!   (`tests/api/helpers.rs`), with that index added for the volume.
//! * **A steady stream of changed orders**: every 100 ms as many orders change as the rate
//!   asks. Each change is an order of its own (no order changes twice in a run, so orders and
//!   changes are the same count), in the statuses `created` to `delivered` in turn. The status's
//!   owner records it at once; the other systems that know the order by then (Shop always, CRM
//!   from `submitted`, MES from `registered`, as [`order_watch::reconcile::verdict`] expects)
//!   record it one tick later, and order-watch gets the owner's transition span (ending when the
//!   owner recorded it) over OTLP/HTTP one tick later too.
//! * **order-watch** runs in this process ([`Application`] on a runtime of its own, the system
//!   clock, no identity provider) with its own reconciliation off; **the reconciler** is the
//!   [`Reconciler`] order-watch's start-up spawns, spawned here on a runtime of its own (threads
//!   named `reconciler`) with a pool of its own, so its CPU time and its statements can be told
//!   apart: its connections go through a proxy in this process that counts the PostgreSQL
//!   protocol's statements (Execute and simple Query messages) and commits. Its settings are
//!   order-watch's (`ORDER_WATCH_RECONCILE_*` from the environment, defaults otherwise), but for
//!   `ORDER_WATCH_RECONCILE_AFTER`, 30 s here unless set.
//!
//! After a warm-up (overlap + two intervals), the benchmark counts over `HALLMARK_BENCH_SECONDS`
//! (default 90): the requests each stand-in received, grouped into rounds (a round's requests are
//! those before its commit), with the orders each changed-since page held and the ids each
//! request by ids named; `order_watch_reconciliation_requests_total` and the rounds'
//! `order_watch_reconciliation_round_duration_seconds` from the reconciler's own metrics; the
//! reconciler's statements and commits, and the whole database's `xact_commit`
//! (`pg_stat_database`); the CPU time of the reconciler's threads and of the PostgreSQL
//! backends serving its connections (`/proc/…/schedstat`, nanoseconds); and how far behind each
//! system's cursor is at the end.
//!
//! **Detection delay**: `HALLMARK_BENCH_PROBES` orders (default 6), agreeing in `pricing` since
//! ten minutes before the start (so no listing of recent changes holds them), are moved to
//! `priced` by MES during the window, 7 s apart (so they fall at different points of the rounds'
//! interval); Shop and order-watch follow, CRM never does. The benchmark polls
//! `GET /api/reconciliation` every 250 ms and reports for each probe when a round first saw the
//! disagreement (`detected_at` after MES's change), when it was listed (`listed_at`, the
//! reconciler's stamp, and when the poll first saw it) after it became due (`disagreeing_since`
//! + the threshold). A probe not listed a minute after it was due counts as not listed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use chrono::{DateTime, SubsecRound as _, Utc};
use domain::held::{ChangedSince, HeldStatus, HeldStatuses, MAX_IDS, STATUSES_PATH};
use domain::{OrderStatus, System};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use order_watch::clock::Clock;
use order_watch::config::Thresholds;
use order_watch::incidents::Announcer;
use order_watch::metrics::Metrics;
use order_watch::reconcile::{ReconcileConfig, Reconciler};
use order_watch::records::{Records, RecordsConfig};
use order_watch::runtime_config::{Defaults, LiveConfig};
use order_watch::startup::Ports;
use order_watch::{Application, Settings};
use platform::db::DatabaseConfig;
use prost::Message as _;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::database::TestDatabase;
use testkit::measure::{BackendsCpu, load_average, on_cpu, percentile, thousands};
use testkit::otlp::build;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Name of the threads of order-watch's runtime (API, ingest, detector).
const SERVICE_THREADS: &str = "order-watch";
/// Name of the threads of the reconciler's runtime: its CPU time is what is measured.
const RECONCILER_THREADS: &str = "reconciler";
/// Name of the threads of the benchmark's own runtime (stand-ins, stream, proxy, polling).
const LOAD_THREADS: &str = "bench-load";
/// `application_name` of the reconciler's database connections.
const RECONCILER_APPLICATION: &str = "order-watch-reconciler";
/// `application_name` of the benchmark's own database connections.
const BENCH_APPLICATION: &str = "order-watch-bench";
/// How often the stream changes orders; the other systems and order-watch follow one tick later.
const TICK: Duration = Duration::from_millis(100);
/// The threshold of the detection runs unless `ORDER_WATCH_RECONCILE_AFTER` is set.
const AFTER: Duration = Duration::from_secs(30);
/// The first probe changes this long into the window, the others this far apart.
const PROBE_LEAD: Duration = Duration::from_secs(5);
const PROBE_SPACING: Duration = Duration::from_secs(7);
/// How often `GET /api/reconciliation` is polled for the probes.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A probe not listed this long after it became due counts as not listed.
const LISTING_PATIENCE: Duration = Duration::from_secs(60);
/// How often the CPU time of the reconciler's PostgreSQL backends is read.
const POSTGRES_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// The stream's statuses, one change each in turn.
const STREAM: [OrderStatus; 11] = [
    OrderStatus::Created,
    OrderStatus::Submitted,
    OrderStatus::Registered,
    OrderStatus::Pricing,
    OrderStatus::Priced,
    OrderStatus::Confirmed,
    OrderStatus::InProduction,
    OrderStatus::QualityCheck,
    OrderStatus::Ready,
    OrderStatus::Shipped,
    OrderStatus::Delivered,
];

fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let service = runtime(SERVICE_THREADS)?;
    let reconciler = runtime(RECONCILER_THREADS)?;
    let load = runtime(LOAD_THREADS)?;
    let runtimes = Runtimes {
        service: service.handle().clone(),
        reconciler: reconciler.handle().clone(),
    };
    load.block_on(run(config, runtimes))
}

fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()?)
}

struct Runtimes {
    service: Handle,
    reconciler: Handle,
}

/// What to run, from the environment.
#[derive(Debug, Clone)]
struct Config {
    rates: Vec<u64>,
    window: Duration,
    probes: usize,
    reconcile: ReconcileConfig,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let text = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, value: &str| -> anyhow::Result<u64> {
            value
                .trim()
                .replace('_', "")
                .parse()
                .with_context(|| format!("{name}=`{value}` is not a whole number"))
        };
        let rates = text("HALLMARK_BENCH_RATES")
            .unwrap_or_else(|| "1000,10000,60000".into())
            .split(',')
            .map(|rate| number("HALLMARK_BENCH_RATES", rate))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let seconds = text("HALLMARK_BENCH_SECONDS")
            .map(|v| number("HALLMARK_BENCH_SECONDS", &v))
            .transpose()?
            .unwrap_or(90);
        let probes = text("HALLMARK_BENCH_PROBES")
            .map(|v| number("HALLMARK_BENCH_PROBES", &v))
            .transpose()?
            .unwrap_or(6) as usize;
        let mut reconcile = ReconcileConfig::from_env()?;
        if text("ORDER_WATCH_RECONCILE_AFTER").is_none() {
            reconcile.after = AFTER;
        }
        reconcile.enabled = true;
        reconcile.validate()?;
        ensure!(
            !rates.is_empty() && rates.iter().all(|r| *r > 0),
            "HALLMARK_BENCH_RATES: rates above 0"
        );
        ensure!(seconds >= 10, "HALLMARK_BENCH_SECONDS: at least 10");
        Ok(Self {
            rates,
            window: Duration::from_secs(seconds),
            probes,
            reconcile,
        })
    }

    /// Before the window: the first rounds read from before the stream began.
    fn warm_up(&self) -> Duration {
        self.reconcile.overlap + 2 * self.reconcile.interval
    }
}

async fn run(config: Config, runtimes: Runtimes) -> anyhow::Result<()> {
    let load_before = load_average()?;
    let mut results = Vec::new();
    for &rate in &config.rates {
        eprintln!("{} changed orders per minute…", thousands(rate));
        results.push(run_rate(&config, &runtimes, rate).await?);
    }
    print_report(&config, &results, [load_before, load_average()?]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What happened, as the stand-ins and the proxy saw it.
// ---------------------------------------------------------------------------------------------

/// Which listing a request asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Changed,
    Ids,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// A stand-in answered: a changed-since page of `orders`, or a request naming `orders` ids.
    Request {
        at: Instant,
        system: System,
        listing: Listing,
        orders: u64,
    },
    /// The reconciler committed a round.
    Commit { at: Instant },
}

impl Event {
    fn at(&self) -> Instant {
        match self {
            Self::Request { at, .. } | Self::Commit { at } => *at,
        }
    }
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn push(&self, event: Event) {
        self.0.lock().expect("not poisoned").push(event);
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().expect("not poisoned").clone()
    }
}

fn index(system: System) -> usize {
    match system {
        System::Shop => 0,
        System::Crm => 1,
        System::Mes => 2,
    }
}

// ---------------------------------------------------------------------------------------------
// The systems of record.
// ---------------------------------------------------------------------------------------------

/// What one system holds: each order's status, and the orders by `(updated_at, order_id)`.
#[derive(Default)]
struct Held {
    orders: HashMap<Uuid, HeldStatus>,
    changes: std::collections::BTreeSet<(DateTime<Utc>, Uuid)>,
}

/// One system's status listing.
#[derive(Clone)]
struct StandIn {
    system: System,
    url: String,
    held: Arc<Mutex<Held>>,
}

impl StandIn {
    async fn start(system: System, log: Log, stop: CancellationToken) -> anyhow::Result<Self> {
        use axum::extract::{Query, State};
        type Shared = (System, Arc<Mutex<Held>>, Log);
        async fn listing(
            State((system, held, log)): State<Shared>,
            Query(query): Query<HashMap<String, String>>,
        ) -> Result<axum::Json<HeldStatuses>, axum::http::StatusCode> {
            fn bad<E>(_: E) -> axum::http::StatusCode {
                axum::http::StatusCode::BAD_REQUEST
            }
            let answer = if let Some(since) = query.get("changed_since") {
                let since = DateTime::parse_from_rfc3339(since)
                    .map_err(bad)?
                    .with_timezone(&Utc);
                let after = query.get("after").map(|id| id.parse::<Uuid>());
                let after = after.transpose().map_err(bad)?;
                let limit: usize = query
                    .get("limit")
                    .map_or(Ok(1000), |l| l.parse())
                    .map_err(bad)?;
                let held = held.lock().expect("not poisoned");
                let from = (since, after.unwrap_or_else(Uuid::nil));
                let mut orders: Vec<HeldStatus> = held
                    .changes
                    .range((std::ops::Bound::Excluded(from), std::ops::Bound::Unbounded))
                    .take(limit + 1)
                    .map(|(_, id)| held.orders[id].clone())
                    .collect();
                drop(held);
                let next = (orders.len() > limit).then(|| ChangedSince::after(&orders[limit - 1]));
                orders.truncate(limit);
                log.push(Event::Request {
                    at: Instant::now(),
                    system,
                    listing: Listing::Changed,
                    orders: orders.len() as u64,
                });
                HeldStatuses { orders, next }
            } else {
                let ids: Vec<Uuid> = query
                    .get("ids")
                    .map(String::as_str)
                    .unwrap_or_default()
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(bad)?;
                let held = held.lock().expect("not poisoned");
                let orders = ids
                    .iter()
                    .filter_map(|id| held.orders.get(id).cloned())
                    .collect();
                drop(held);
                log.push(Event::Request {
                    at: Instant::now(),
                    system,
                    listing: Listing::Ids,
                    orders: ids.len() as u64,
                });
                HeldStatuses { orders, next: None }
            };
            Ok(axum::Json(answer))
        }
        let held = Arc::new(Mutex::new(Held::default()));
        let app = axum::Router::new()
            .route(STATUSES_PATH, axum::routing::get(listing))
            .with_state((system, held.clone(), log));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Ok(Self { system, url, held })
    }

    /// The system records `changes` at `at` (its own transaction's time, to the microsecond as
    /// PostgreSQL keeps it).
    fn record(&self, changes: &[(Uuid, OrderStatus)], at: DateTime<Utc>) {
        let mut held = self.held.lock().expect("not poisoned");
        for &(order_id, status) in changes {
            let now = HeldStatus {
                order_id,
                status,
                updated_at: at,
            };
            if let Some(before) = held.orders.insert(order_id, now) {
                held.changes.remove(&(before.updated_at, order_id));
            }
            held.changes.insert((at, order_id));
        }
    }

    /// Whether this system knows an order once it reached `status`.
    fn knows(&self, status: OrderStatus) -> bool {
        match self.system {
            System::Shop => true,
            System::Crm => status != OrderStatus::Created,
            System::Mes => !matches!(status, OrderStatus::Created | OrderStatus::Submitted),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reconciler's database connections, counted.
// ---------------------------------------------------------------------------------------------

/// What went through the proxy.
#[derive(Default)]
struct DbCounts {
    /// Statements executed: Execute messages (the extended protocol, one per statement) and
    /// simple queries other than BEGIN, COMMIT and ROLLBACK.
    statements: AtomicU64,
    /// Transactions committed: COMMITs, and statements executed outside a transaction.
    commits: AtomicU64,
    rollbacks: AtomicU64,
    /// Bytes to and from PostgreSQL.
    sent: AtomicU64,
    received: AtomicU64,
}

/// A TCP proxy in front of PostgreSQL that reads the client's side of the protocol (plain text:
/// the reconciler connects with `sslmode=disable`) and counts.
struct Proxy {
    port: u16,
    counts: Arc<DbCounts>,
}

impl Proxy {
    async fn start(
        upstream: SocketAddr,
        log: Log,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(DbCounts::default());
        let shared = counts.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                let (counts, log) = (shared.clone(), log.clone());
                tokio::spawn(async move {
                    if let Err(err) = relay(client, upstream, counts, log).await {
                        eprintln!("database proxy: {err}");
                    }
                });
            }
        });
        Ok(Self { port, counts })
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    counts: Arc<DbCounts>,
    log: Log,
) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSS_REQUEST: u32 = 80_877_104;
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, server_write) = server.into_split();
    let down = counts.clone();
    let answers = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = server_read.read(&mut buffer).await?;
            if read == 0 {
                return client_write.shutdown().await;
            }
            down.received.fetch_add(read as u64, Ordering::Relaxed);
            client_write.write_all(&buffer[..read]).await?;
        }
    });
    let mut reader = BufReader::new(client_read);
    let mut writer = BufWriter::new(server_write);
    // The start-up message has no type byte.
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).await?;
    let mut body = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
    reader.read_exact(&mut body).await?;
    let code = body
        .get(..4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    if matches!(code, Some(SSL_REQUEST | GSS_REQUEST)) {
        return Err(std::io::Error::other(
            "the reconciler asked for TLS: it must connect with sslmode=disable to be counted",
        ));
    }
    writer.write_all(&length).await?;
    writer.write_all(&body).await?;
    writer.flush().await?;
    let mut in_transaction = false;
    loop {
        let mut head = [0u8; 5];
        match reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(err),
        }
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; length.saturating_sub(4)];
        reader.read_exact(&mut body).await?;
        match head[0] {
            b'Q' => {
                let text = String::from_utf8_lossy(&body);
                let word = text
                    .trim_start()
                    .split(|c: char| !c.is_ascii_alphabetic())
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" | "START" => in_transaction = true,
                    "COMMIT" | "END" => {
                        in_transaction = false;
                        counts.commits.fetch_add(1, Ordering::Relaxed);
                        log.push(Event::Commit { at: Instant::now() });
                    }
                    "ROLLBACK" => {
                        in_transaction = false;
                        counts.rollbacks.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counts.statements.fetch_add(1, Ordering::Relaxed);
                        if !in_transaction {
                            counts.commits.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            b'E' => {
                counts.statements.fetch_add(1, Ordering::Relaxed);
                if !in_transaction {
                    counts.commits.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        counts
            .sent
            .fetch_add(5 + body.len() as u64, Ordering::Relaxed);
        writer.write_all(&head).await?;
        writer.write_all(&body).await?;
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    drop(writer);
    answers.await.map_err(std::io::Error::other)?
}

// ---------------------------------------------------------------------------------------------
// order-watch and its reconciler.
// ---------------------------------------------------------------------------------------------

/// order-watch running on its own runtime, its reconciliation off.
struct OrderWatch {
    ports: Ports,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl OrderWatch {
    async fn start(database: &TestDatabase, runtime: &Handle) -> anyhow::Result<Self> {
        // The reconciler below asks the systems; this order-watch asks nobody.
        let settings = Settings {
            thresholds: thresholds(),
            reconcile: ReconcileConfig {
                enabled: false,
                ..ReconcileConfig::default()
            },
            ..Settings::local(DatabaseConfig::new(database.url()))
        };
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

/// No stream order falls due in a run: the detector has nothing to do but look.
fn thresholds() -> Thresholds {
    Thresholds {
        default: Duration::from_secs(6 * 3600),
        ..Thresholds::default()
    }
}

/// The reconciler on its own runtime, with its own metrics.
struct Reconciling {
    registry: prometheus::Registry,
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Reconciling {
    async fn start(
        runtime: &Handle,
        database_url: &str,
        proxy: &Proxy,
        systems: &[StandIn],
        api: u16,
        config: ReconcileConfig,
    ) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .build();
        let metrics = Arc::new(Metrics::new(&provider.meter("order-watch")));
        metrics.set_reconciling(true);
        let mut url = reqwest::Url::parse(database_url)?;
        url.set_host(Some("127.0.0.1"))?;
        url.set_port(Some(proxy.port))
            .map_err(|()| anyhow::anyhow!("the database URL takes no port"))?;
        url.query_pairs_mut()
            .append_pair("sslmode", "disable")
            .append_pair("application_name", RECONCILER_APPLICATION);
        let records = Records::new(RecordsConfig {
            urls: systems.iter().map(|s| (s.system, s.url.clone())).collect(),
            timeout: Duration::from_secs(2),
            ca: None,
            identity: None,
        })?;
        let announcer = Announcer {
            external_url: format!("http://127.0.0.1:{api}"),
            config: LiveConfig::fixed(Defaults {
                thresholds: thresholds(),
                webhook: None,
                retention_days: 30,
            }),
        };
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let handle = runtime.spawn(async move {
            let pool = platform::db::connect(&DatabaseConfig::new(url.as_str()), &stop).await?;
            Reconciler {
                pool: pool.clone(),
                clock: Clock::System,
                records: Arc::new(records),
                metrics,
                announcer,
                config,
                replica: Uuid::now_v7(),
            }
            .run(stop)
            .await;
            platform::db::close(&pool).await;
            Ok(())
        });
        Ok(Self {
            registry,
            _provider: provider,
            cancel,
            handle,
        })
    }

    /// The reconciler's metrics as `/metrics` would show them.
    fn scrape(&self) -> anyhow::Result<String> {
        Ok(prometheus::TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.handle.await?
    }
}

/// The sum of the samples of `name` (exactly, with any labels) that carry every one of `labels`.
fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The stream of changed orders.
// ---------------------------------------------------------------------------------------------

/// A change the owner recorded; the other systems (but `skip`) and order-watch follow next tick.
struct Pending {
    order: Uuid,
    status: OrderStatus,
    owner_at: DateTime<Utc>,
    skip: Option<System>,
    step: u8,
}

/// A probe: an order moved to `priced` by MES that CRM never follows.
#[derive(Debug, Clone)]
struct Probe {
    order: Uuid,
    /// When MES recorded `priced`.
    changed_at: Option<DateTime<Utc>>,
}

struct Stream {
    systems: Vec<StandIn>,
    export: tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>,
    per_minute: u64,
    /// Changes made so far.
    changes: Arc<AtomicU64>,
    probes: Arc<Mutex<Vec<Probe>>>,
    probe_at: Vec<Instant>,
}

impl Stream {
    async fn run(self, stop: CancellationToken) {
        let started = Instant::now();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<Pending> = Vec::new();
        let mut next_status = 0usize;
        let mut made = 0u64;
        let mut injected = 0usize;
        let mut first = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = Utc::now().trunc_subsecs(6);
            // The last tick's changes reach the other systems and order-watch.
            let mut follow: Vec<Vec<(Uuid, OrderStatus)>> = vec![Vec::new(); self.systems.len()];
            let mut spans: BTreeMap<&'static str, Vec<Span>> = BTreeMap::new();
            for change in pending.drain(..) {
                let owner = change.status.owner();
                for (system, changes) in self.systems.iter().zip(follow.iter_mut()) {
                    if system.system != owner
                        && Some(system.system) != change.skip
                        && system.knows(change.status)
                    {
                        changes.push((change.order, change.status));
                    }
                }
                spans
                    .entry(owner.service_name())
                    .or_default()
                    .push(transition(
                        change.order,
                        change.status,
                        change.owner_at,
                        change.step,
                    ));
            }
            for (system, changes) in self.systems.iter().zip(&follow) {
                if !changes.is_empty() {
                    system.record(changes, now);
                }
            }
            for (service, spans) in spans {
                let _ = self.export.send(build::request(service, spans));
            }
            // The owners' changes of this tick.
            let mut owned: Vec<Vec<(Uuid, OrderStatus)>> = vec![Vec::new(); self.systems.len()];
            let mut change = |order: Uuid, status: OrderStatus, skip: Option<System>, step: u8| {
                owned[index(status.owner())].push((order, status));
                pending.push(Pending {
                    order,
                    status,
                    owner_at: now,
                    skip,
                    step,
                });
            };
            if first {
                // The probes agree in `pricing` since long before any round's reading began, as
                // an order does whose last change is old: a lagging system's record of it is in
                // no listing of recent changes.
                let long_ago = now - chrono::Duration::minutes(10);
                let probes: Vec<(Uuid, OrderStatus)> = self
                    .probes
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .map(|probe| (probe.order, OrderStatus::Pricing))
                    .collect();
                for system in &self.systems {
                    system.record(&probes, long_ago);
                }
                let spans = probes
                    .iter()
                    .map(|&(order, status)| transition(order, status, long_ago, 1))
                    .collect();
                let _ = self
                    .export
                    .send(build::request(System::Mes.service_name(), spans));
                first = false;
            }
            while injected < self.probe_at.len() && self.probe_at[injected] <= Instant::now() {
                let mut probes = self.probes.lock().expect("not poisoned");
                probes[injected].changed_at = Some(now);
                change(
                    probes[injected].order,
                    OrderStatus::Priced,
                    Some(System::Crm),
                    2,
                );
                injected += 1;
            }
            let due = (started.elapsed().as_secs_f64() * self.per_minute as f64 / 60.0) as u64;
            for _ in made..due {
                let status = STREAM[next_status % STREAM.len()];
                next_status += 1;
                change(Uuid::new_v4(), status, None, 1);
            }
            self.changes
                .fetch_add(due.saturating_sub(made), Ordering::Relaxed);
            made = made.max(due);
            for (system, changes) in self.systems.iter().zip(&owned) {
                if !changes.is_empty() {
                    system.record(changes, now);
                }
            }
        }
    }
}

/// The owner's transition span moving `order` to `status`, ending at `end`.
fn transition(order: Uuid, status: OrderStatus, end: DateTime<Utc>, step: u8) -> Span {
    const DURATION_NS: u64 = 1_000_000;
    let end_ns = end.timestamp_nanos_opt().unwrap_or_default() as u64;
    build::span(
        order.into_bytes(),
        [step; 8],
        &format!("order {status}", status = status.as_str()),
        end_ns - DURATION_NS,
        DURATION_NS,
        vec![
            build::string("order.id", order.to_string()),
            build::string("order.status.to", status.as_str()),
        ],
    )
}

/// Sends the stream's spans to order-watch over OTLP/HTTP, one request at a time, retrying
/// while it says it is busy; counts the requests it refused for good.
async fn export(
    port: u16,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    refused: Arc<AtomicU64>,
) {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/traces");
    while let Some(request) = requests.recv().await {
        let body = bytes::Bytes::from(request.encode_to_vec());
        loop {
            let sent = client
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await;
            match sent.map(|r| r.status().as_u16()) {
                Ok(200) => break,
                Ok(429 | 503) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One rate.
// ---------------------------------------------------------------------------------------------

/// The counters read at the start and at the end of the window.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    changes: u64,
    statements: u64,
    commits: u64,
    rollbacks: u64,
    sent: u64,
    received: u64,
    /// `order_watch_reconciliation_requests_total` per system.
    metric_requests: [f64; 3],
    rounds: f64,
    round_seconds: f64,
    /// The whole database's `xact_commit`.
    database_commits: i64,
    reconciler_cpu: Duration,
}

/// What a rate's run measured.
struct RateResult {
    rate: u64,
    window: Duration,
    start: Reading,
    end: Reading,
    rounds: Vec<RoundTally>,
    postgres_cpu: Duration,
    /// How far behind each system's cursor stood at the end of the window, in seconds.
    cursor_lag: [Option<f64>; 3],
    tracked: u64,
    agreeing: u64,
    probes: Vec<ProbeResult>,
    refused_exports: u64,
}

async fn run_rate(config: &Config, runtimes: &Runtimes, rate: u64) -> anyhow::Result<RateResult> {
    let database = TestDatabase::create("bench_reconcile").await;
    let stop = CancellationToken::new();
    let log = Log::default();
    let mut systems = Vec::new();
    for system in System::ALL {
        systems.push(StandIn::start(system, log.clone(), stop.clone()).await?);
    }
    let options: PgConnectOptions = database.url().parse()?;
    let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await?
        .next()
        .context("the database's address")?;
    let proxy = Proxy::start(upstream, log.clone(), stop.clone()).await?;
    let order_watch = OrderWatch::start(&database, &runtimes.service).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.application_name(BENCH_APPLICATION))
        .await?;
    let reconciling = Reconciling::start(
        &runtimes.reconciler,
        database.url(),
        &proxy,
        &systems,
        order_watch.ports.api,
        config.reconcile.clone(),
    )
    .await?;

    let (export_to, exports) = tokio::sync::mpsc::unbounded_channel();
    let refused = Arc::new(AtomicU64::new(0));
    let exporter = tokio::spawn(export(
        order_watch.ports.otlp_http,
        exports,
        refused.clone(),
    ));
    let started = Instant::now();
    let window_start = started + config.warm_up();
    let probes: Vec<Probe> = (0..config.probes)
        .map(|_| Probe {
            order: Uuid::new_v4(),
            changed_at: None,
        })
        .collect();
    let probes = Arc::new(Mutex::new(probes));
    let changes = Arc::new(AtomicU64::new(0));
    let stream = Stream {
        systems: systems.clone(),
        export: export_to,
        per_minute: rate,
        changes: changes.clone(),
        probes: probes.clone(),
        probe_at: (0..config.probes)
            .map(|k| window_start + PROBE_LEAD + PROBE_SPACING * k as u32)
            .collect(),
    };
    let stream_stop = CancellationToken::new();
    let streaming = tokio::spawn(stream.run(stream_stop.clone()));
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{}", order_watch.ports.api);
    let polling = tokio::spawn(poll_probes(
        client.clone(),
        api.clone(),
        probes.clone(),
        config.reconcile.after,
        stream_stop.clone(),
    ));

    tokio::time::sleep_until(window_start.into()).await;
    let postgres = BackendsCpu::start(
        &pool,
        RECONCILER_BACKENDS,
        RECONCILER_APPLICATION,
        POSTGRES_SAMPLE_INTERVAL,
    )
    .await?;
    let postgres_stop = CancellationToken::new();
    let postgres = tokio::spawn(postgres.follow(postgres_stop.clone()));
    let start = read(&proxy, &reconciling, &changes, &pool).await?;
    tokio::time::sleep_until((window_start + config.window).into()).await;
    let end = read(&proxy, &reconciling, &changes, &pool).await?;
    postgres_stop.cancel();
    let postgres_cpu = postgres.await??;
    let cursor_lag = cursor_lag(&pool).await?;
    let view: Value = client
        .get(format!("{api}/api/reconciliation"))
        .send()
        .await?
        .json()
        .await?;
    eprintln!("  window done; waiting for the probes to be listed…");
    let probes = polling.await??;

    stream_stop.cancel();
    streaming.await?;
    reconciling.stop().await?;
    exporter.abort();
    pool.close().await;
    order_watch.stop().await?;
    stop.cancel();
    let rounds = tally_rounds(&log.events(), start.at, end.at);
    Ok(RateResult {
        rate,
        window: end.at - start.at,
        start,
        end,
        rounds,
        postgres_cpu,
        cursor_lag,
        tracked: view["tracked"].as_u64().unwrap_or(0),
        agreeing: view["agreeing"].as_u64().unwrap_or(0),
        probes,
        refused_exports: refused.load(Ordering::Relaxed),
    })
}

async fn read(
    proxy: &Proxy,
    reconciling: &Reconciling,
    changes: &AtomicU64,
    pool: &PgPool,
) -> anyhow::Result<Reading> {
    let metrics = reconciling.scrape()?;
    let database_commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    let counts = &proxy.counts;
    Ok(Reading {
        at: Instant::now(),
        changes: changes.load(Ordering::Relaxed),
        statements: counts.statements.load(Ordering::Relaxed),
        commits: counts.commits.load(Ordering::Relaxed),
        rollbacks: counts.rollbacks.load(Ordering::Relaxed),
        sent: counts.sent.load(Ordering::Relaxed),
        received: counts.received.load(Ordering::Relaxed),
        metric_requests: System::ALL.map(|system| {
            sample_sum(
                &metrics,
                "order_watch_reconciliation_requests_total",
                &[("system", system.service_name())],
            )
        }),
        rounds: sample_sum(
            &metrics,
            "order_watch_reconciliation_round_duration_seconds_count",
            &[],
        ),
        round_seconds: sample_sum(
            &metrics,
            "order_watch_reconciliation_round_duration_seconds_sum",
            &[],
        ),
        database_commits,
        reconciler_cpu: threads_cpu(RECONCILER_THREADS)?,
    })
}

/// CPU time of this process's threads named `name`, to the nanosecond.
fn threads_cpu(name: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(name) {
            total += on_cpu(&task.to_string_lossy()).unwrap_or_default();
        }
    }
    Ok(total)
}

/// Seconds from each system's cursor to now.
async fn cursor_lag(pool: &PgPool) -> anyhow::Result<[Option<f64>; 3]> {
    let rows: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT system, since FROM reconcile_cursors")
            .fetch_all(pool)
            .await?;
    let now = Utc::now();
    Ok(System::ALL.map(|system| {
        rows.iter()
            .find(|(name, _)| name == system.service_name())
            .map(|(_, since)| (now - *since).num_milliseconds() as f64 / 1000.0)
    }))
}

/// The PostgreSQL backends serving the reconciler's connections.
const RECONCILER_BACKENDS: &str = "SELECT pid FROM pg_stat_activity WHERE application_name = $1";

/// One round as the stand-ins saw it: per system (Shop, CRM, MES).
#[derive(Debug, Clone, Default)]
struct RoundTally {
    pages: [u64; 3],
    /// Orders the changed-since pages held (the formula's `c`).
    listed: [u64; 3],
    id_requests: [u64; 3],
    /// Ids the requests by ids named (the formula's `m + r`).
    ids: [u64; 3],
}

impl RoundTally {
    fn requests(&self) -> u64 {
        self.pages.iter().sum::<u64>() + self.id_requests.iter().sum::<u64>()
    }

    /// The module's formula: `Σ ⌈c / page_size⌉ + Σ ⌈(m + r) / 200⌉`.
    fn formula(&self, page_size: u64) -> u64 {
        self.listed
            .iter()
            .map(|c| c.div_ceil(page_size))
            .sum::<u64>()
            + self
                .ids
                .iter()
                .map(|ids| ids.div_ceil(MAX_IDS as u64))
                .sum::<u64>()
    }
}

/// The rounds committed in `(from, to]`, each with the requests made since the commit before.
fn tally_rounds(events: &[Event], from: Instant, to: Instant) -> Vec<RoundTally> {
    let mut events = events.to_vec();
    events.sort_by_key(Event::at);
    let mut rounds = Vec::new();
    let mut current = RoundTally::default();
    for event in events {
        match event {
            Event::Request {
                system,
                listing,
                orders,
                ..
            } => {
                let i = index(system);
                match listing {
                    Listing::Changed => {
                        current.pages[i] += 1;
                        current.listed[i] += orders;
                    }
                    Listing::Ids => {
                        current.id_requests[i] += 1;
                        current.ids[i] += orders;
                    }
                }
            }
            Event::Commit { at } => {
                let round = std::mem::take(&mut current);
                if at > from && at <= to {
                    rounds.push(round);
                }
            }
        }
    }
    rounds
}

// ---------------------------------------------------------------------------------------------
// Detection delay.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ProbeResult {
    /// MES's change to `priced`.
    changed_at: DateTime<Utc>,
    /// When the poll first found it listed, and what the listing said.
    seen_at: Option<DateTime<Utc>>,
    disagreeing_since: Option<DateTime<Utc>>,
    detected_at: Option<DateTime<Utc>>,
    listed_at: Option<DateTime<Utc>>,
}

impl ProbeResult {
    /// When it became due to be listed.
    fn due(&self, after: Duration) -> Option<DateTime<Utc>> {
        Some(self.disagreeing_since? + chrono::Duration::from_std(after).ok()?)
    }
}

/// Polls `GET /api/reconciliation` until every probe is listed, or each is
/// [`LISTING_PATIENCE`] past when it was due; stops early when `stop` fires.
async fn poll_probes(
    client: reqwest::Client,
    api: String,
    probes: Arc<Mutex<Vec<Probe>>>,
    after: Duration,
    stop: CancellationToken,
) -> anyhow::Result<Vec<ProbeResult>> {
    let count = probes.lock().expect("not poisoned").len();
    let mut found: HashMap<Uuid, ProbeResult> = HashMap::new();
    let patience = chrono::Duration::from_std(after + LISTING_PATIENCE)?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        let view: Value = client
            .get(format!("{api}/api/reconciliation?limit=1000"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let now = Utc::now();
        let snapshot = probes.lock().expect("not poisoned").clone();
        let ids: HashSet<String> = snapshot.iter().map(|p| p.order.to_string()).collect();
        for listed in view["disagreements"].as_array().into_iter().flatten() {
            let Some(id) = listed["order_id"].as_str().filter(|id| ids.contains(*id)) else {
                continue;
            };
            let order: Uuid = id.parse()?;
            let probe = snapshot.iter().find(|p| p.order == order);
            let Some(changed_at) = probe.and_then(|p| p.changed_at) else {
                bail!("probe {order} listed before it was changed: {listed}");
            };
            let time = |key: &str| listed[key].as_str().and_then(|t| t.parse().ok());
            found.entry(order).or_insert_with(|| ProbeResult {
                changed_at,
                seen_at: Some(now),
                disagreeing_since: time("disagreeing_since"),
                detected_at: time("detected_at"),
                listed_at: time("listed_at"),
            });
        }
        let waiting: Vec<&Probe> = snapshot
            .iter()
            .filter(|p| !found.contains_key(&p.order))
            .collect();
        let given_up = waiting
            .iter()
            .all(|p| p.changed_at.is_some_and(|at| now - at > patience));
        if found.len() == count || (!waiting.is_empty() && given_up) {
            break;
        }
    }
    let snapshot = probes.lock().expect("not poisoned").clone();
    Ok(snapshot
        .iter()
        .filter_map(|probe| {
            found.remove(&probe.order).or_else(|| {
                Some(ProbeResult {
                    changed_at: probe.changed_at?,
                    seen_at: None,
                    disagreeing_since: None,
                    detected_at: None,
                    listed_at: None,
                })
            })
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The report.
// ---------------------------------------------------------------------------------------------

fn print_report(config: &Config, results: &[RateResult], load: [String; 2]) {
    let reconcile = &config.reconcile;
    println!("## Reconciliation: cost and detection delay\n");
    println!(
        "Settings: interval {:?}, overlap {:?}, page {} orders, at most {} pages per system and \
         round, at most {} rechecks, threshold {:?}, recheck interval {:?}; window {:?} per rate \
         after a warm-up of {:?}. Load average {} before, {} after.\n",
        reconcile.interval,
        reconcile.overlap,
        reconcile.page_size,
        reconcile.max_pages,
        reconcile.max_rechecks,
        reconcile.after,
        reconcile.recheck_interval,
        config.window,
        config.warm_up(),
        load[0],
        load[1]
    );
    let header: Vec<String> = results
        .iter()
        .map(|r| format!("{}/min", thousands(r.rate)))
        .collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(results.len()));
    let row = |label: &str, cell: &dyn Fn(&RateResult) -> String| {
        let cells: Vec<String> = results.iter().map(cell).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let seconds = |r: &RateResult| r.window.as_secs_f64();
    let per_second = |r: &RateResult, n: f64| n / seconds(r);
    let rounds = |r: &RateResult| r.rounds.len().max(1) as f64;
    let changes = |r: &RateResult| (r.end.changes - r.start.changes) as f64;
    let thousand_per_minute = |r: &RateResult| changes(r) / seconds(r) * 60.0 / 1000.0;
    row("changed orders per minute, measured", &|r| {
        format!("{:.0}", changes(r) / seconds(r) * 60.0)
    });
    row("rounds committed in the window (per minute)", &|r| {
        format!(
            "{} ({:.1})",
            r.rounds.len(),
            r.rounds.len() as f64 / seconds(r) * 60.0
        )
    });
    row("round duration, mean (the round histogram)", &|r| {
        let n = r.end.rounds - r.start.rounds;
        if n > 0.0 {
            format!(
                "{:.0} ms",
                (r.end.round_seconds - r.start.round_seconds) / n * 1000.0
            )
        } else {
            "–".into()
        }
    });
    for system in System::ALL {
        let i = index(system);
        row(
            &format!(
                "requests/s to {}: changed-since + by ids",
                system.service_name()
            ),
            &|r| {
                let pages: u64 = r.rounds.iter().map(|t| t.pages[i]).sum();
                let ids: u64 = r.rounds.iter().map(|t| t.id_requests[i]).sum();
                format!(
                    "{:.2} + {:.2}",
                    per_second(r, pages as f64),
                    per_second(r, ids as f64)
                )
            },
        );
    }
    let all_requests = |r: &RateResult| r.rounds.iter().map(RoundTally::requests).sum::<u64>();
    row("**requests/s, all three systems**", &|r| {
        format!("**{:.2}**", per_second(r, all_requests(r) as f64))
    });
    row("**requests/s per 1,000 changed orders per minute**", &|r| {
        format!(
            "**{:.3}**",
            per_second(r, all_requests(r) as f64) / thousand_per_minute(r)
        )
    });
    row(
        "`order_watch_reconciliation_requests_total`, /s (the stand-ins counted)",
        &|r| {
            let metric: f64 = (0..3)
                .map(|i| r.end.metric_requests[i] - r.start.metric_requests[i])
                .sum();
            format!(
                "{:.2} ({:.2})",
                per_second(r, metric),
                per_second(r, all_requests(r) as f64)
            )
        },
    );
    row(
        "per round: orders in changed-since pages, Shop / CRM / MES (`c`)",
        &|r| {
            let mean =
                |i: usize| r.rounds.iter().map(|t| t.listed[i]).sum::<u64>() as f64 / rounds(r);
            format!("{:.0} / {:.0} / {:.0}", mean(0), mean(1), mean(2))
        },
    );
    row(
        "… predicted: rate × share × (interval + overlap)",
        &|r| {
            let window = (reconcile.interval + reconcile.overlap).as_secs_f64() / 60.0;
            let cap = (reconcile.page_size * reconcile.max_pages) as f64;
            let rate = changes(r) / seconds(r) * 60.0;
            let c = |share: f64| (rate * share * window).min(cap);
            format!(
                "{:.0} / {:.0} / {:.0}",
                c(1.0),
                c(10.0 / 11.0),
                c(9.0 / 11.0)
            )
        },
    );
    row("per round: ids asked, Shop / CRM / MES (`m + r`)", &|r| {
        let mean = |i: usize| r.rounds.iter().map(|t| t.ids[i]).sum::<u64>() as f64 / rounds(r);
        format!("{:.0} / {:.0} / {:.0}", mean(0), mean(1), mean(2))
    });
    row("per round: requests, changed-since + by ids", &|r| {
        let pages: u64 = r.rounds.iter().map(|t| t.pages.iter().sum::<u64>()).sum();
        let ids: u64 = r
            .rounds
            .iter()
            .map(|t| t.id_requests.iter().sum::<u64>())
            .sum();
        format!(
            "{:.2} + {:.2}",
            pages as f64 / rounds(r),
            ids as f64 / rounds(r)
        )
    });
    row(
        "per round: the formula `Σ⌈c/page⌉ + Σ⌈(m+r)/200⌉` on those `c`, `m + r`",
        &|r| {
            let formula: u64 = r
                .rounds
                .iter()
                .map(|t| t.formula(reconcile.page_size as u64))
                .sum();
            format!("{:.2}", formula as f64 / rounds(r))
        },
    );
    row("database statements/s (per round)", &|r| {
        let n = (r.end.statements - r.start.statements) as f64;
        format!("{:.2} ({:.1})", per_second(r, n), n / rounds(r))
    });
    row("database commits/s (per round)", &|r| {
        let n = (r.end.commits - r.start.commits) as f64;
        format!("{:.2} ({:.1})", per_second(r, n), n / rounds(r))
    });
    row("statements/s per 1,000 changed orders per minute", &|r| {
        let n = (r.end.statements - r.start.statements) as f64;
        format!("{:.3}", per_second(r, n) / thousand_per_minute(r))
    });
    row("rollbacks", &|r| {
        format!("{}", r.end.rollbacks - r.start.rollbacks)
    });
    row("bytes/s to / from PostgreSQL", &|r| {
        format!(
            "{} / {}",
            thousands(per_second(r, (r.end.sent - r.start.sent) as f64) as u64),
            thousands(per_second(r, (r.end.received - r.start.received) as f64) as u64)
        )
    });
    row(
        "whole database `xact_commit`/s (order-watch's API, detector, gauges, ingest too)",
        &|r| {
            let n = (r.end.database_commits - r.start.database_commits) as f64;
            format!("{:.1}", per_second(r, n))
        },
    );
    let cpu = |r: &RateResult| (r.end.reconciler_cpu - r.start.reconciler_cpu).as_secs_f64();
    row("reconciler CPU, share of one core", &|r| {
        format!("{:.2} %", cpu(r) / seconds(r) * 100.0)
    });
    row("**reconciler CPU per round**", &|r| {
        format!("**{:.1} ms**", cpu(r) / rounds(r) * 1000.0)
    });
    row("**reconciler CPU per changed order**", &|r| {
        format!("**{:.1} µs**", cpu(r) / changes(r).max(1.0) * 1e6)
    });
    row(
        "PostgreSQL CPU for the reconciler per round (per changed order)",
        &|r| {
            let pg = r.postgres_cpu.as_secs_f64();
            format!(
                "{:.1} ms ({:.1} µs)",
                pg / rounds(r) * 1000.0,
                pg / changes(r).max(1.0) * 1e6
            )
        },
    );
    row("cursor behind now at the end, Shop / CRM / MES", &|r| {
        let lag: Vec<String> = r
            .cursor_lag
            .iter()
            .map(|l| l.map_or("–".into(), |s| format!("{s:.0} s")))
            .collect();
        lag.join(" / ")
    });
    row("tracked orders at the end (agreeing)", &|r| {
        format!("{} ({})", thousands(r.tracked), thousands(r.agreeing))
    });
    row("OTLP exports order-watch refused", &|r| {
        r.refused_exports.to_string()
    });

    println!(
        "\nDetection delay of the probes (CRM lagging behind MES's `priced`), seconds, p50 / max:\n"
    );
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(results.len()));
    let delays = |r: &RateResult, f: &dyn Fn(&ProbeResult) -> Option<f64>| {
        let mut values: Vec<f64> = r.probes.iter().filter_map(f).collect();
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            "–".into()
        } else {
            format!(
                "{:.1} / {:.1}",
                percentile(&values, 50),
                percentile(&values, 100)
            )
        }
    };
    let after = reconcile.after;
    let seconds_between = |a: DateTime<Utc>, b: DateTime<Utc>| {
        (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
    };
    row("probes listed (of those changed)", &|r| {
        format!(
            "{} of {}",
            r.probes.iter().filter(|p| p.seen_at.is_some()).count(),
            r.probes.len()
        )
    });
    row(
        "first seen by a round, after MES's change (`detected_at`)",
        &|r| delays(r, &|p| Some(seconds_between(p.changed_at, p.detected_at?))),
    );
    row(
        "**listed after it was due** (`listed_at` − (`disagreeing_since` + threshold))",
        &|r| delays(r, &|p| Some(seconds_between(p.due(after)?, p.listed_at?))),
    );
    row(
        "in `GET /api/reconciliation` after it was due (polled every 250 ms)",
        &|r| delays(r, &|p| Some(seconds_between(p.due(after)?, p.seen_at?))),
    );
    row("in `GET /api/reconciliation` after MES's change", &|r| {
        delays(r, &|p| Some(seconds_between(p.changed_at, p.seen_at?)))
    });
}
