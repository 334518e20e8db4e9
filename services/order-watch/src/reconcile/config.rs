//! The reconciler's settings, each from the environment.

use std::time::Duration;

use domain::held::MAX_CHANGED_PAGE;

/// How the reconciler runs and what it costs (see the module's documentation for the requests
/// a round makes).
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileConfig {
    /// Whether it runs at all. Env: `ORDER_WATCH_RECONCILE` (`true` or `false`; default `true`,
    /// but it runs only with the addresses of all three systems of record).
    pub enabled: bool,
    /// Time between the starts of two rounds, across all replicas. Env:
    /// `ORDER_WATCH_RECONCILE_INTERVAL` (default `10s`).
    pub interval: Duration,
    /// How long an order may disagree before it is listed, alerted on (the
    /// `order_watch_reconciliation_disagreements` gauge) and an incident opens. Env:
    /// `ORDER_WATCH_RECONCILE_AFTER` (default `5m`).
    pub after: Duration,
    /// Each round reads every system's changes again from this long before where the last
    /// round stopped: a status is stamped when its transaction began and may commit later, and a
    /// change committed behind the last page read would otherwise never be seen. Longer than the
    /// longest transaction that writes a status (the outbox relay's batch, which waits for the
    /// broker's confirms). Env: `ORDER_WATCH_RECONCILE_OVERLAP` (default `30s`).
    pub overlap: Duration,
    /// How long an order that agrees stays tracked after its last change: the orders the instant
    /// accuracy is a share of. Env: `ORDER_WATCH_RECONCILE_WINDOW` (default `1h`).
    pub window: Duration,
    /// A disagreeing order with no new change is compared again this often (and exactly when it
    /// is due to be listed). Env: `ORDER_WATCH_RECONCILE_RECHECK_INTERVAL` (default `1m`).
    pub recheck_interval: Duration,
    /// Orders per changed-since page asked for, 1 to 1000. Env: `ORDER_WATCH_RECONCILE_PAGE`
    /// (default 1000).
    pub page_size: usize,
    /// Most changed-since pages read from one system in one round past where the last round
    /// stopped (pages re-reading the overlap behind it do not count); a round that reaches it
    /// is followed by the next at once. Env: `ORDER_WATCH_RECONCILE_MAX_PAGES` (default 5).
    pub max_pages: usize,
    /// Most disagreeing orders compared again in one round. Env:
    /// `ORDER_WATCH_RECONCILE_MAX_RECHECKS` (default 1000).
    pub max_rechecks: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            after: Duration::from_secs(300),
            overlap: Duration::from_secs(30),
            window: Duration::from_secs(3600),
            recheck_interval: Duration::from_secs(60),
            page_size: MAX_CHANGED_PAGE,
            max_pages: 5,
            max_rechecks: 1000,
        }
    }
}

impl ReconcileConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let default = Self::default();
        let config = Self {
            enabled: settings::parse("ORDER_WATCH_RECONCILE", default.enabled)?,
            interval: settings::duration("ORDER_WATCH_RECONCILE_INTERVAL", default.interval)?,
            after: settings::duration("ORDER_WATCH_RECONCILE_AFTER", default.after)?,
            overlap: settings::duration("ORDER_WATCH_RECONCILE_OVERLAP", default.overlap)?,
            window: settings::duration("ORDER_WATCH_RECONCILE_WINDOW", default.window)?,
            recheck_interval: settings::duration(
                "ORDER_WATCH_RECONCILE_RECHECK_INTERVAL",
                default.recheck_interval,
            )?,
            page_size: settings::parse("ORDER_WATCH_RECONCILE_PAGE", default.page_size)?,
            max_pages: settings::parse("ORDER_WATCH_RECONCILE_MAX_PAGES", default.max_pages)?,
            max_rechecks: settings::parse(
                "ORDER_WATCH_RECONCILE_MAX_RECHECKS",
                default.max_rechecks,
            )?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that would make no sense or no progress.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("ORDER_WATCH_RECONCILE_INTERVAL", self.interval),
            ("ORDER_WATCH_RECONCILE_AFTER", self.after),
            ("ORDER_WATCH_RECONCILE_WINDOW", self.window),
            (
                "ORDER_WATCH_RECONCILE_RECHECK_INTERVAL",
                self.recheck_interval,
            ),
        ];
        for (variable, value) in positive {
            if value.is_zero() {
                anyhow::bail!("{variable}: must be longer than 0");
            }
        }
        if !(1..=MAX_CHANGED_PAGE).contains(&self.page_size) {
            anyhow::bail!("ORDER_WATCH_RECONCILE_PAGE: from 1 to {MAX_CHANGED_PAGE}");
        }
        if self.max_pages == 0 || self.max_rechecks == 0 {
            anyhow::bail!(
                "ORDER_WATCH_RECONCILE_MAX_PAGES and ORDER_WATCH_RECONCILE_MAX_RECHECKS: at least 1"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold_and_nonsense_is_refused_by_name() {
        ReconcileConfig::default().validate().unwrap();
        let err = ReconcileConfig {
            interval: Duration::ZERO,
            ..ReconcileConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ORDER_WATCH_RECONCILE_INTERVAL"),
            "{err}"
        );
        let err = ReconcileConfig {
            page_size: 1001,
            ..ReconcileConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().starts_with("ORDER_WATCH_RECONCILE_PAGE"),
            "{err}"
        );
    }
}
