//! `hallmark`: place an order with a model and follow it from a terminal.
//!
//! ```text
//! hallmark demo  [--shop URL] --model ring.stl [--material gold_585]
//! hallmark place [--shop URL] --model ring.stl [--material gold_585]
//! hallmark show  [--shop URL] <order_id> --token ord_…
//! hallmark dlq   list [QUEUE] [--limit N]
//! hallmark dlq   replay QUEUE MESSAGE_ID|all
//! hallmark broker accounts [--any-namespace] [--topic-namespace NS]...
//! hallmark limits list|changes [--token T]
//! hallmark limits set PARTNER RATE --reason TEXT [--ttl 1h] [--token T]
//! hallmark limits lift PARTNER [--token T]
//! ```
//!
//! `--help` on every command says the rest; `--shop` is also `HALLMARK_SHOP_URL`.
//!
//! `demo` places a sample order and prints every status it reaches until it is priced (or
//! rejected, or fails); `place` prints the new order as JSON; `show` prints an order.
//!
//! `dlq` is for operators: `list` without a queue counts the dead letters of every queue, with
//! one (e.g. `mes.pricing`) it prints them as JSON with their reason and leaves them there;
//! `replay` sends one message (by message id) or all of a queue's dead letters back to the queue
//! they failed in. It reads the broker settings (`HALLMARK_AMQP_URL`, `HALLMARK_AMQP_NAMESPACE`,
//! `HALLMARK_RETRY_DELAYS`, ...) from the environment, exactly as the services do, and must be
//! given the same values, with the operator's own account in the URL (development default
//! `hallmark-ops`).
//!
//! `limits` shows partners' rates at Shop and lets a developer or admin hold a partner to a
//! rate for a while, or lift that (`limits`); `--token` is also `HALLMARK_TOKEN`.
//!
//! `broker accounts` prints the RabbitMQ permissions of every account (`messaging::permissions`)
//! as tab-separated lines, `permissions USER CONFIGURE WRITE READ` and
//! `topic USER EXCHANGE WRITE READ`, for `rabbitmqctl set_permissions` and
//! `set_topic_permissions`; `scripts/broker.sh` applies them to the development broker.

mod limits;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use messaging::dead_letters::{self, Selection};
use messaging::permissions::{self, Namespaces};
use messaging::{Broker, BrokerConfig, Party};
use serde_json::{Value, json};
use uuid::Uuid;

/// Place an order with a model and follow it from a terminal; see and replay dead letters.
#[derive(Debug, Parser)]
#[command(name = "hallmark", version, about)]
struct Cli {
    /// Shop API to talk to.
    #[arg(
        long,
        global = true,
        env = "HALLMARK_SHOP_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    shop: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Place a sample order and print every status it reaches until it is priced (or
    /// rejected, or fails).
    Demo(Model),
    /// Place an order and print it as JSON.
    Place(Model),
    /// Print an order as JSON.
    Show {
        /// The order's id.
        order_id: Uuid,
        /// The order's token (`customer_token` in what `place` printed).
        #[arg(long, env = "HALLMARK_ORDER_TOKEN")]
        token: String,
    },
    /// Dead letters: messages that failed every retry. Reads the broker settings
    /// (HALLMARK_AMQP_URL, HALLMARK_AMQP_NAMESPACE, HALLMARK_RETRY_DELAYS, …) from the
    /// environment exactly as the services do; give it the same values.
    #[command(subcommand)]
    Dlq(Dlq),
    /// The broker's accounts: what each may do.
    #[command(subcommand)]
    Broker(BrokerCommand),
    /// Partners' order rates at Shop: see them, hold a partner to a rate for a while, lift it.
    Limits {
        #[command(subcommand)]
        command: limits::Limits,
        /// An access token of the identity provider (a developer or admin to change limits).
        #[arg(long, env = "HALLMARK_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BrokerCommand {
    /// Print the RabbitMQ permissions of each account (HALLMARK_AMQP_ACCOUNTS) as tab-separated
    /// lines: `permissions USER CONFIGURE WRITE READ` (rabbitmqctl set_permissions) and
    /// `topic USER EXCHANGE WRITE READ` (rabbitmqctl set_topic_permissions), for the namespace
    /// HALLMARK_AMQP_NAMESPACE.
    Accounts {
        /// Let the permissions cover any namespace, for a development broker on which every
        /// test makes its own (topic permissions still name exchanges exactly).
        #[arg(long)]
        any_namespace: bool,
        /// Also print topic permissions for the exchanges of this namespace (repeatable).
        #[arg(long = "topic-namespace", value_name = "NAMESPACE")]
        topic_namespaces: Vec<String>,
    },
}

/// The model of an order and what to make it of.
#[derive(Debug, clap::Args)]
struct Model {
    /// The STL file of the piece.
    #[arg(long)]
    model: PathBuf,
    /// gold_585, gold_750, silver_925 or platinum_950.
    #[arg(long, default_value = "gold_585")]
    material: String,
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// Without a queue, count the dead letters of every queue; with one (e.g. `mes.pricing`),
    /// print them as JSON with their reason, leaving them where they are.
    List {
        queue: Option<String>,
        /// Most dead letters printed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send one dead letter (by message id), or all of a queue's, back to the queue they
    /// failed in.
    Replay {
        queue: String,
        /// A message id, or `all`.
        which: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shop = cli.shop.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    match cli.command {
        Command::Demo(model) => demo(&client, shop, &model).await,
        Command::Place(model) => {
            let order = place(&client, shop, &model).await?;
            println!("{}", serde_json::to_string_pretty(&order)?);
            Ok(())
        }
        Command::Show { order_id, token } => {
            let order = show(&client, shop, &order_id.to_string(), &token).await?;
            println!("{}", serde_json::to_string_pretty(&order)?);
            Ok(())
        }
        Command::Dlq(command) => dlq(command).await,
        Command::Broker(BrokerCommand::Accounts {
            any_namespace,
            topic_namespaces,
        }) => accounts(any_namespace, topic_namespaces),
        Command::Limits { command, token } => {
            limits::run(&client, shop, token.as_deref(), command).await
        }
    }
}

fn accounts(any_namespace: bool, extra_topic_namespaces: Vec<String>) -> anyhow::Result<()> {
    let config = BrokerConfig::shared_from_env()?;
    let namespaces = if any_namespace {
        Namespaces::Any
    } else {
        Namespaces::Exactly(config.namespace.clone())
    };
    let mut topic_namespaces = vec![config.namespace.clone()];
    topic_namespaces.extend(extra_topic_namespaces);
    for account in permissions::all(&config.accounts, &namespaces, &topic_namespaces) {
        let user = &account.user;
        println!(
            "permissions\t{user}\t{}\t{}\t{}",
            account.configure, account.write, account.read
        );
        for topic in &account.topics {
            println!(
                "topic\t{user}\t{}\t{}\t{}",
                topic.exchange, topic.write, topic.read
            );
        }
    }
    Ok(())
}

async fn dlq(command: Dlq) -> anyhow::Result<()> {
    let config = BrokerConfig::from_env(Party::Operator)?;
    let broker = Broker::operator(config, "hallmark-cli");
    match command {
        Dlq::List { queue: None, .. } => {
            for (queue, count) in dead_letters::counts(&broker).await? {
                println!("{queue}\t{count}");
            }
        }
        Dlq::List {
            queue: Some(queue),
            limit,
        } => {
            let letters = dead_letters::list(&broker, dead_letters::queue(&queue)?, limit).await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
        }
        Dlq::Replay { queue, which } => {
            let selection = match which.as_str() {
                "all" => Selection::All,
                id => Selection::MessageId(id.to_owned()),
            };
            let spec = dead_letters::queue(&queue)?;
            let replayed = dead_letters::replay(&broker, spec, &selection).await?;
            if replayed.is_empty() && selection != Selection::All {
                bail!("no dead letter with message id {which} in {queue}");
            }
            println!("{}", serde_json::to_string_pretty(&replayed)?);
            eprintln!("replayed {} message(s) to {queue}", replayed.len());
        }
    }
    Ok(())
}

async fn place(client: &reqwest::Client, shop: &str, model: &Model) -> anyhow::Result<Value> {
    let path = &model.model;
    let material = model.material.as_str();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_name = path
        .file_name()
        .map_or("model.stl".into(), |n| n.to_string_lossy().into_owned());
    let order = json!({
        "customer": {"name": "Demo Customer", "email": "demo@example.com"},
        "material": material,
        "size": "17",
        "comment": "demo order placed by scripts/run",
    });
    let form = reqwest::multipart::Form::new()
        .part(
            "order",
            reqwest::multipart::Part::text(order.to_string()).mime_str("application/json")?,
        )
        .part(
            "model",
            reqwest::multipart::Part::bytes(bytes)
                .file_name(file_name)
                .mime_str("model/stl")?,
        );
    let response = client
        .post(format!("{shop}/api/orders"))
        .multipart(form)
        .send()
        .await
        .with_context(|| format!("cannot reach the shop at {shop}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("the shop did not answer JSON")?;
    if !status.is_success() {
        bail!("the shop refused the order ({status}): {body}");
    }
    Ok(body)
}

async fn show(
    client: &reqwest::Client,
    shop: &str,
    id: &str,
    token: &str,
) -> anyhow::Result<Value> {
    let response = client
        .get(format!("{shop}/api/orders/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the shop at {shop}"))?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

async fn demo(client: &reqwest::Client, shop: &str, model: &Model) -> anyhow::Result<()> {
    let started = Instant::now();
    let order = place(client, shop, model).await?;
    let id = order["order_id"]
        .as_str()
        .context("no order_id")?
        .to_owned();
    let token = order["customer_token"]
        .as_str()
        .context("no customer_token")?
        .to_owned();
    println!("order {id} placed");
    let mut printed = 0;
    loop {
        let order = show(client, shop, &id, &token).await?;
        let status = order["status"].as_str().unwrap_or_default().to_owned();
        let history = order["history"].as_array().cloned().unwrap_or_default();
        for step in history.iter().skip(printed) {
            println!(
                "  {}  {:<14} by {}",
                step["at"].as_str().unwrap_or_default(),
                step["status"].as_str().unwrap_or_default(),
                step["source"].as_str().unwrap_or_default(),
            );
        }
        printed = printed.max(history.len());
        match status.as_str() {
            "priced" => {
                let price = &order["price"];
                println!(
                    "price: {} {} (volume {:.1} mm³, {:.2} g of {})",
                    price["total"],
                    price["currency"].as_str().unwrap_or("EUR"),
                    price["volume_mm3"].as_f64().unwrap_or_default(),
                    price["metal_weight_g"].as_f64().unwrap_or_default(),
                    order["material"].as_str().unwrap_or_default(),
                );
                return Ok(());
            }
            "rejected" | "failed" => {
                bail!("order {status}: {}", order["rejection_reason"]);
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("order {id} did not reach `priced` within two minutes (last status: {status})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
