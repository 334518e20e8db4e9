use std::io::{Read, Write};
use std::process::ExitCode;

use domain::Material;
use domain::pricing::PriceList;
use mes_calc::protocol::{EXIT_PRICED, EXIT_REJECTED, EXIT_USAGE, Output};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use telemetry::{attr, propagation, spans};

const USAGE: &str =
    "usage: mes-calc --material <gold_585|gold_750|silver_925|platinum_950> < model.stl";

fn material_from_args() -> Result<Material, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, value] if flag == "--material" => value.parse().map_err(|e| format!("{e}")),
        _ => Err(USAGE.to_owned()),
    }
}

// One worker thread drives the exporters' network I/O while the calculation runs on the main thread.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> ExitCode {
    let material = match material_from_args() {
        Ok(material) => material,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let service = telemetry::ServiceInfo {
        name: "mes-calc",
        version: env!("CARGO_PKG_VERSION"),
    };
    let telemetry = match telemetry::init_cli(service) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("cannot set up telemetry: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = run(material);
    telemetry.shutdown();
    code
}

fn run(material: Material) -> ExitCode {
    // Every run is work on pricing an order, for the MES process that started it.
    let parent = propagation::as_progress(&propagation::from_env());
    let cx = if telemetry::spans_enabled!() {
        spans::child(
            "calculate price",
            SpanKind::Server,
            vec![KeyValue::new(attr::ORDER_MATERIAL, material.as_str())],
            &parent,
        )
    } else {
        None
    };
    let entered = spans::enter(cx.as_ref());
    let code = calculate(material);
    drop(entered);
    spans::end_in(cx.as_ref());
    code
}

fn calculate(material: Material) -> ExitCode {
    let mut model = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut model) {
        tracing::error!(error = %err, "cannot read the model from stdin");
        return ExitCode::FAILURE;
    }
    let output = mes_calc::calculate(material, &model, &PriceList::default());
    let exit = match &output {
        Output::Priced { quote, .. } => {
            tracing::info!(total_cents = quote.total_cents, "model priced");
            EXIT_PRICED
        }
        Output::Rejected { code, message } => {
            spans::record(KeyValue::new(attr::ERROR_CODE, code.clone()));
            tracing::info!(code = %code, reason = %message, "model rejected");
            EXIT_REJECTED
        }
    };
    let line = serde_json::to_string(&output).expect("the output serializes");
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::from(exit as u8)
}
