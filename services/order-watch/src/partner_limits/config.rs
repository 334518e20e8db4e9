//! Which incidents tighten partners' rates at Shop, to what, and for how long at a time.

use std::time::Duration;

use domain::Stage;

/// How order-watch protects the floor from partners' volume while an incident is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerLimitsConfig {
    /// The rate a partner whose orders an incident affects is held to, as Shop reads rates
    /// (`count/duration`). Env: `ORDER_WATCH_INCIDENT_PARTNER_RATE` (default `10/1m`).
    pub rate: String,
    /// How long each tightening lasts at Shop unless order-watch renews it (it does, every third
    /// of this, while the incident is open): if order-watch is gone, partners' rates are back to
    /// normal at most this long after. Env: `ORDER_WATCH_INCIDENT_LIMIT_TTL` (default `5m`, at
    /// least `10s`).
    pub ttl: Duration,
    /// The stages whose stuck orders tighten their partner's rate, and whose partners an alert
    /// of [`Self::alerts`] (or one labelled with such a `stage`) tightens. Env:
    /// `ORDER_WATCH_INCIDENT_LIMIT_STAGES` (default `pricing_queue,pricing`: the stages partners'
    /// volume loads).
    pub stages: Vec<Stage>,
    /// Alerts that tighten the rate of every partner with orders in flight in [`Self::stages`].
    /// Env: `ORDER_WATCH_INCIDENT_LIMIT_ALERTS` (default
    /// `PriceCalculationBudgetBurn,PriceCalculationBudgetBurnSlow`).
    pub alerts: Vec<String>,
    /// How often open and resolved incidents are looked at. Env:
    /// `ORDER_WATCH_INCIDENT_LIMIT_INTERVAL` (default `5s`).
    pub interval: Duration,
}

/// The defaults each variable falls back to.
impl Default for PartnerLimitsConfig {
    fn default() -> Self {
        Self {
            rate: "10/1m".into(),
            ttl: Duration::from_secs(300),
            stages: vec![Stage::PricingQueue, Stage::Pricing],
            alerts: vec![
                "PriceCalculationBudgetBurn".into(),
                "PriceCalculationBudgetBurnSlow".into(),
            ],
            interval: Duration::from_secs(5),
        }
    }
}

impl PartnerLimitsConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let default = Self::default();
        let rate = settings::string("ORDER_WATCH_INCIDENT_PARTNER_RATE", &default.rate);
        check_rate(&rate).map_err(|e| anyhow::anyhow!("ORDER_WATCH_INCIDENT_PARTNER_RATE: {e}"))?;
        let ttl = settings::duration("ORDER_WATCH_INCIDENT_LIMIT_TTL", default.ttl)?;
        if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(86_400) {
            anyhow::bail!("ORDER_WATCH_INCIDENT_LIMIT_TTL: between 10s and 1d");
        }
        let default_stages: Vec<&str> = default.stages.iter().map(|s| s.as_str()).collect();
        let stages = settings::string(
            "ORDER_WATCH_INCIDENT_LIMIT_STAGES",
            &default_stages.join(","),
        );
        let stages = words(&stages)
            .map(|word| {
                Stage::ALL
                    .into_iter()
                    .find(|s| s.as_str() == word)
                    .ok_or_else(|| {
                        anyhow::anyhow!("ORDER_WATCH_INCIDENT_LIMIT_STAGES: `{word}` is no stage")
                    })
            })
            .collect::<anyhow::Result<_>>()?;
        let alerts = settings::string(
            "ORDER_WATCH_INCIDENT_LIMIT_ALERTS",
            &default.alerts.join(","),
        );
        Ok(Self {
            rate,
            ttl,
            stages,
            alerts: words(&alerts).map(str::to_owned).collect(),
            interval: settings::duration("ORDER_WATCH_INCIDENT_LIMIT_INTERVAL", default.interval)?,
        })
    }

    /// How long after the last renewal a tightening is renewed again.
    pub fn renew_after(&self) -> Duration {
        self.ttl / 3
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|w| !w.is_empty())
}

/// The shape Shop takes (`count/duration`), checked here so that a typo stops the start rather
/// than every request to Shop.
fn check_rate(rate: &str) -> Result<(), String> {
    let (count, window) = rate
        .split_once('/')
        .ok_or_else(|| format!("`{rate}` is not a rate like `10/1m`"))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("`{count}` is not a whole number"))?;
    let window =
        humantime::parse_duration(window.trim()).map_err(|e| format!("`{window}`: {e}"))?;
    if count == 0 || window.is_zero() {
        return Err(format!("`{rate}`: at least one order in more than no time"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_checked_as_shop_reads_them() {
        assert!(check_rate("10/1m").is_ok());
        for bad in ["10", "0/1m", "x/1m", "10/soon", "10/0s"] {
            assert!(check_rate(bad).is_err(), "{bad}");
        }
    }
}
