//! `hallmark limits`: partners' rates at Shop, as operators see and change them by hand
//! (`GET`, `PUT`, `DELETE /api/partner-limits`). Changing one needs a token of a developer or
//! admin (`--token`, or `HALLMARK_TOKEN`: an access token of the identity provider, e.g. from
//! the password grant of `hallmark-cli`); reading one of support or above.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What to do with the limits.
#[derive(Debug, clap::Subcommand)]
pub enum Limits {
    /// Print every partner with a rate of its own or an override, and what is in force.
    List,
    /// Print who set or lifted which override, newest first.
    Changes,
    /// Hold a partner to a rate for a while (a manual override; an incident's never replaces it).
    Set {
        partner: String,
        /// `count/duration`, e.g. `10/1m`.
        rate: String,
        /// Why, for the record.
        #[arg(long)]
        reason: String,
        /// How long it lasts (at most 7 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Lift a partner's override: its configured rate applies again.
    Lift { partner: String },
}

pub async fn run(
    client: &reqwest::Client,
    shop: &str,
    token: Option<&str>,
    command: Limits,
) -> anyhow::Result<()> {
    let token = token.context(
        "a token is needed (--token or HALLMARK_TOKEN): an access token of the identity provider for a developer or admin (support may list)",
    )?;
    let base = format!("{shop}/api/partner-limits");
    let request = match &command {
        Limits::List => client.get(&base),
        Limits::Changes => client.get(format!("{base}/changes")),
        Limits::Set {
            partner,
            rate,
            reason,
            ttl,
        } => client
            .put(format!("{base}/{partner}"))
            .json(&json!({"rate": rate, "ttl": ttl, "reason": reason})),
        Limits::Lift { partner } => client.delete(format!("{base}/{partner}")),
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach Shop at {shop}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        bail!("Shop answered {status}: {message}");
    }
    match command {
        Limits::Lift { partner } => eprintln!("{partner}'s override lifted (if it had one)"),
        _ => println!("{}", serde_json::to_string_pretty(&body)?),
    }
    Ok(())
}
