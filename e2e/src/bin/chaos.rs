//! A randomized reliability run, after Jepsen: clients place many orders at once while faults hit
//! the system at random moments, then the checker judges every order Shop acknowledged. The
//! numbers of a run are in docs/reliability.md.
//!
//! ```text
//! cargo build --workspace --bins
//! target/debug/chaos [--orders 300] [--clients 4] [--think-ms 300] [--seed N] [--outages]
//! ```
//!
//! Faults: a service killed (SIGKILL) and restarted after a random pause, a service stopped with
//! SIGTERM and restarted, and the broker connections cut; with `--outages` also RabbitMQ stopped
//! for a few seconds and PostgreSQL restarted, which disturbs everything else on the machine
//! using them. Each client waits a random 0 to 2 × `--think-ms` between orders, so the run lasts
//! long enough for faults to land in the middle of it. Clients behave like careful partners: each order carries an Idempotency-Key, and
//! a request without an answer is repeated with the same key until Shop acknowledges it.
//! A fifth of the orders are models that cannot be made (expected `rejected`), the rest
//! `priced`. It exits non-zero unless lost = applied twice = unexpected = 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::checker;
use e2e::{Service, System, place_order_at};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::faults;
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

/// How long a client keeps repeating one order before it gives up on it.
const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Options {
    orders: usize,
    clients: usize,
    /// Mean pause of a client between two orders, in milliseconds.
    think_ms: u64,
    seed: u64,
    outages: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        orders: 300,
        clients: 4,
        think_ms: 300,
        seed: rand::rng().random(),
        outages: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} takes a whole number"))
        };
        match arg.as_str() {
            "--orders" => options.orders = value("--orders")? as usize,
            "--clients" => options.clients = value("--clients")?.max(1) as usize,
            "--think-ms" => options.think_ms = value("--think-ms")?,
            "--seed" => options.seed = value("--seed")?,
            "--outages" => options.outages = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill(usize),
    Terminate(usize),
    CutConnections,
    BrokerOutage,
    PostgresRestart,
}

impl Fault {
    fn pick(rng: &mut StdRng, outages: bool) -> Self {
        let kinds = if outages { 5 } else { 3 };
        let service = rng.random_range(0..Service::ALL.len());
        match rng.random_range(0..kinds) {
            0 => Self::Kill(service),
            1 => Self::Terminate(service),
            2 => Self::CutConnections,
            3 => Self::BrokerOutage,
            _ => Self::PostgresRestart,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Kill(s) => format!("{} killed (SIGKILL)", Service::ALL[s].binary()),
            Self::Terminate(s) => format!("{} stopped (SIGTERM)", Service::ALL[s].binary()),
            Self::CutConnections => "broker connections cut".into(),
            Self::BrokerOutage => "RabbitMQ stopped".into(),
            Self::PostgresRestart => "PostgreSQL restarted".into(),
        }
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Clients {
    /// Acknowledged orders and the status each must end in.
    acknowledged: BTreeMap<Uuid, &'static str>,
    /// Requests repeated after an error or no answer.
    repeats: usize,
    /// Orders never acknowledged within [`CLIENT_PATIENCE`].
    abandoned: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(err) => {
            eprintln!(
                "error: {err}\nusage: chaos [--orders N] [--clients N] [--seed N] [--outages]"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("chaos run: {options:?}");
    let started = Instant::now();
    let mut system = System::start_with(&[("RUST_LOG", "warn")]).await;
    let (shop_url, shop_watch) = watch::channel(system.shop.url());
    let clients = Arc::new(Mutex::new(Clients::default()));
    let next = Arc::new(AtomicUsize::new(0));

    let mut workers = tokio::task::JoinSet::new();
    for client in 0..options.clients {
        let shop = shop_watch.clone();
        let clients = Arc::clone(&clients);
        let next = Arc::clone(&next);
        let mut rng = StdRng::seed_from_u64(options.seed.wrapping_add(client as u64 + 1));
        let orders = options.orders;
        let think_ms = options.think_ms;
        workers.spawn(async move {
            let http = reqwest::Client::new();
            while next.fetch_add(1, Ordering::SeqCst) < orders {
                let think = rng.random_range(0..=2 * think_ms);
                tokio::time::sleep(Duration::from_millis(think)).await;
                let (fixture, expected) = if rng.random_ratio(1, 5) {
                    ("teapot.stl", "rejected")
                } else if rng.random_bool(0.5) {
                    ("torus.STL", "priced")
                } else {
                    ("20mm-xyz-cube.stl", "priced")
                };
                let key = Uuid::new_v4().to_string();
                let deadline = Instant::now() + CLIENT_PATIENCE;
                loop {
                    let url = shop.borrow().clone();
                    let placed = place_order_at(
                        &http,
                        &url,
                        fixture,
                        "gold_750",
                        &[("Idempotency-Key", &key)],
                        None,
                    )
                    .await;
                    let mut clients = clients.lock().await;
                    match placed {
                        Ok(placed) => {
                            clients.acknowledged.insert(placed.id, expected);
                            break;
                        }
                        Err(_) if Instant::now() < deadline => clients.repeats += 1,
                        Err(_) => {
                            clients.abandoned += 1;
                            break;
                        }
                    }
                    drop(clients);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        });
    }

    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    while !workers.is_empty() {
        let pause = Duration::from_millis(rng.random_range(500..3000));
        tokio::select! {
            _ = workers.join_next() => continue,
            _ = tokio::time::sleep(pause) => {}
        }
        let fault = Fault::pick(&mut rng, options.outages);
        inject(&mut system, fault, &mut rng).await;
        let _ = shop_url.send(system.shop.url());
        *injected.entry(fault.describe()).or_default() += 1;
    }
    let placing = started.elapsed();

    let clients = clients.lock().await;
    let verdict = checker::check(&system, &clients.acknowledged, Duration::from_secs(300)).await;
    let clean = verdict.lost.is_empty()
        && verdict.applied_twice.is_empty()
        && verdict.unexpected.is_empty();

    println!("## Chaos run (seed {})\n", options.seed);
    println!(
        "{} orders by {} clients (mean pause {} ms) in {:.0} s{}\n",
        options.orders,
        options.clients,
        options.think_ms,
        placing.as_secs_f64(),
        if options.outages {
            ", with outages"
        } else {
            ""
        }
    );
    println!("| faults injected | count |\n|---|---:|");
    for (fault, count) in &injected {
        println!("| {fault} | {count} |");
    }
    println!("\n| result | count |\n|---|---:|");
    for (name, value) in [
        ("orders attempted", options.orders),
        ("acknowledged by Shop (2xx)", verdict.acknowledged),
        (
            "requests repeated by clients (same Idempotency-Key)",
            clients.repeats,
        ),
        (
            "abandoned by clients (never acknowledged)",
            clients.abandoned,
        ),
        (
            "completed (expected final state in Shop, CRM, MES)",
            verdict.completed,
        ),
        (
            "held in a dead-letter queue (visible)",
            verdict.dead_lettered,
        ),
        ("lost", verdict.lost.len()),
        ("applied twice", verdict.applied_twice.len()),
        ("unexpected", verdict.unexpected.len()),
    ] {
        println!("| {name} | {value} |");
    }
    println!(
        "| duplicate deliveries skipped by inboxes | {} |",
        verdict.duplicates_delivered
    );
    if !clean {
        eprintln!("{verdict}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

async fn inject(system: &mut System, fault: Fault, rng: &mut StdRng) {
    eprintln!("fault: {}", fault.describe());
    match fault {
        Fault::Kill(service) => {
            let service = Service::ALL[service];
            system.process(service).kill().await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            system.restart(service).await;
        }
        Fault::Terminate(service) => {
            let service = Service::ALL[service];
            system.process(service).stop(Duration::from_secs(30)).await;
            system.restart(service).await;
        }
        Fault::CutConnections => {
            faults::cut_broker_connections(&system.namespace).await;
        }
        Fault::BrokerOutage => {
            faults::stop_broker().await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4000))).await;
            faults::start_broker().await;
        }
        Fault::PostgresRestart => faults::restart_postgres().await,
    }
}
