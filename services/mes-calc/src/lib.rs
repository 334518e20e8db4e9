//! The calc engine's contract with its callers.
//!
//! ```text
//! mes-calc --material gold_750 < model.stl
//! ```
//!
//! The model comes on stdin; the trace context in `TRACEPARENT`/`TRACESTATE`/`BAGGAGE` (its spans
//! become children of the caller's span); exporter settings in the usual `OTEL_*` variables. The
//! answer is one JSON line on stdout, an [`protocol::Output`], with the exit status telling the
//! same story: [`protocol::EXIT_PRICED`], [`protocol::EXIT_REJECTED`] (the model cannot be made,
//! with a reason for the customer), [`protocol::EXIT_USAGE`]. Anything else, or no valid line, is
//! a failure of the engine itself. Logs go to stderr.

pub mod protocol {
    use domain::pricing::Quote;
    use domain::stl::MeshReport;
    use serde::{Deserialize, Serialize};

    /// The model was priced; stdout holds [`Output::Priced`].
    pub const EXIT_PRICED: i32 = 0;
    /// The command line was wrong; nothing was calculated.
    pub const EXIT_USAGE: i32 = 2;
    /// The model cannot be made; stdout holds [`Output::Rejected`].
    pub const EXIT_REJECTED: i32 = 3;

    /// The one line the engine prints.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(tag = "outcome", rename_all = "snake_case")]
    pub enum Output {
        Priced { quote: Quote, mesh: MeshReport },
        Rejected { code: String, message: String },
    }
}

use domain::Material;
use domain::pricing::PriceList;
use protocol::Output;
use telemetry::spans;

/// Runs `work` in an INTERNAL span `name` under the current span.
fn in_span<T>(name: &'static str, work: impl FnOnce() -> T) -> T {
    let cx = if telemetry::spans_enabled!() {
        spans::child(
            name,
            opentelemetry::trace::SpanKind::Internal,
            Vec::new(),
            &opentelemetry::Context::current(),
        )
    } else {
        None
    };
    let entered = spans::enter(cx.as_ref());
    let output = work();
    drop(entered);
    spans::end_in(cx.as_ref());
    output
}

/// Analyses the model and prices it with `prices`.
pub fn calculate(material: Material, model: &[u8], prices: &PriceList) -> Output {
    let mesh = in_span("analyze mesh", || domain::stl::analyze_bytes(model));
    match mesh {
        Ok(mesh) => match domain::pricing::out_of_range(&mesh) {
            Some((code, message)) => Output::Rejected {
                code: code.to_owned(),
                message,
            },
            None => {
                let quote = in_span("quote", || prices.quote(material, &mesh));
                Output::Priced { quote, mesh }
            }
        },
        Err(err) => Output::Rejected {
            code: err.code().to_owned(),
            message: err.to_string(),
        },
    }
}
