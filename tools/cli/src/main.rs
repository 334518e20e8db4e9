//! `hallmark`: place an order with a model and follow it from a terminal.
//!
//! ```text
//! hallmark demo  --shop http://127.0.0.1:8081 --model ring.stl [--material gold_585]
//! hallmark place --shop http://127.0.0.1:8081 --model ring.stl [--material gold_585]
//! hallmark show  --shop http://127.0.0.1:8081 <order_id>
//! hallmark dlq   list [QUEUE] [--limit N]
//! hallmark dlq   replay QUEUE MESSAGE_ID|all
//! ```
//!
//! `demo` places a sample order and prints every status it reaches until it is priced (or
//! rejected, or fails); `place` prints the new order as JSON; `show` prints an order.
//!
//! `dlq` is for operators: `list` without a queue counts the dead letters of every queue, with
//! one (e.g. `mes.pricing`) it prints them as JSON with their reason and leaves them there;
//! `replay` sends one message (by message id) or all of a queue's dead letters back to the queue
//! they failed in. It reads the broker settings (`HALLMARK_AMQP_URL`, `HALLMARK_AMQP_NAMESPACE`,
//! `HALLMARK_RETRY_DELAYS`, ...) from the environment, exactly as the services do, and must be
//! given the same values.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use messaging::dead_letters::{self, Selection};
use messaging::{Broker, BrokerConfig};
use serde_json::{Value, json};

const USAGE: &str = "usage:
  hallmark demo  --shop URL --model FILE [--material MATERIAL]
  hallmark place --shop URL --model FILE [--material MATERIAL]
  hallmark show  --shop URL ORDER_ID
  hallmark dlq   list [QUEUE] [--limit N]
  hallmark dlq   replay QUEUE MESSAGE_ID|all";

struct Args {
    command: String,
    options: HashMap<String, String>,
    positional: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context(USAGE)?;
    let mut options = HashMap::new();
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--") {
            Some(name) => {
                let value = args
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?;
                options.insert(name.to_owned(), value);
            }
            None => positional.push(arg),
        }
    }
    Ok(Args {
        command,
        options,
        positional,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let shop = args
        .options
        .get("shop")
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    match args.command.as_str() {
        "demo" => demo(&client, &shop, &args).await,
        "place" => {
            let order = place(&client, &shop, &args).await?;
            println!("{}", serde_json::to_string_pretty(&order)?);
            Ok(())
        }
        "show" => {
            let id = args.positional.first().context(USAGE)?;
            let order = show(&client, &shop, id).await?;
            println!("{}", serde_json::to_string_pretty(&order)?);
            Ok(())
        }
        "dlq" => dlq(&args).await,
        _ => bail!("{USAGE}"),
    }
}

async fn dlq(args: &Args) -> anyhow::Result<()> {
    let config = BrokerConfig::from_env()?;
    let broker = Broker::new(config, "hallmark-cli");
    match args.positional.as_slice() {
        [list] if list == "list" => {
            for (queue, count) in dead_letters::counts(&broker).await? {
                println!("{queue}\t{count}");
            }
        }
        [list, queue] if list == "list" => {
            let limit = match args.options.get("limit") {
                Some(limit) => limit.parse().context("--limit takes a whole number")?,
                None => 100,
            };
            let letters = dead_letters::list(&broker, dead_letters::queue(queue)?, limit).await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
        }
        [replay, queue, which] if replay == "replay" => {
            let selection = match which.as_str() {
                "all" => Selection::All,
                id => Selection::MessageId(id.to_owned()),
            };
            let spec = dead_letters::queue(queue)?;
            let replayed = dead_letters::replay(&broker, spec, &selection).await?;
            if replayed.is_empty() && selection != Selection::All {
                bail!("no dead letter with message id {which} in {queue}");
            }
            println!("{}", serde_json::to_string_pretty(&replayed)?);
            eprintln!("replayed {} message(s) to {queue}", replayed.len());
        }
        _ => bail!("{USAGE}"),
    }
    Ok(())
}

async fn place(client: &reqwest::Client, shop: &str, args: &Args) -> anyhow::Result<Value> {
    let path = args
        .options
        .get("model")
        .context("--model FILE is required")?;
    let material = args
        .options
        .get("material")
        .map_or("gold_585", String::as_str);
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let file_name = std::path::Path::new(path)
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

async fn show(client: &reqwest::Client, shop: &str, id: &str) -> anyhow::Result<Value> {
    let response = client
        .get(format!("{shop}/api/orders/{id}"))
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

async fn demo(client: &reqwest::Client, shop: &str, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let order = place(client, shop, args).await?;
    let id = order["order_id"]
        .as_str()
        .context("no order_id")?
        .to_owned();
    println!("order {id} placed");
    let mut printed = 0;
    loop {
        let order = show(client, shop, &id).await?;
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
