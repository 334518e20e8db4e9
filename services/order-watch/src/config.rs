//! order-watch settings: the environment for where things are, a TOML file for the thresholds.
//!
//! ```toml
//! # order-watch.toml (ORDER_WATCH_CONFIG); every key is optional.
//! default_stuck_after = "15m"   # stages not listed below; ORDER_WATCH_STUCK_AFTER overrides it
//! retention_days = 30
//!
//! [stuck_after]                 # per stage (names as in `order.stage`)
//! customer_confirmation = "7d"
//! production = "10d"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use domain::{Stage, System};
use platform::db::DatabaseConfig;
use platform::tls::{CertifiedKeyFiles, PemFile, TlsError};
use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::reconcile::ReconcileConfig;
use crate::records::RecordsConfig;
use crate::runtime_config::MAX_RETENTION_DAYS;
use crate::webhook::WebhookUrl;

/// How long each stage may stay silent before its order is stuck.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// For every stage without its own entry.
    pub default: Duration,
    pub per_stage: BTreeMap<Stage, Duration>,
}

impl Default for Thresholds {
    /// The machine stages (intake, registration, pricing queue, pricing) take seconds when all
    /// is well, so they share the default of 15 minutes. The stages that wait for people get
    /// what people take: a customer has a week to accept a price, production takes days.
    fn default() -> Self {
        let day = Duration::from_secs(24 * 3600);
        Self {
            default: Duration::from_secs(15 * 60),
            per_stage: BTreeMap::from([
                (Stage::CustomerConfirmation, 7 * day),
                (Stage::ProductionQueue, 2 * day),
                (Stage::Production, 10 * day),
                (Stage::QualityCheck, 2 * day),
                (Stage::Shipping, 3 * day),
                (Stage::Delivery, 14 * day),
            ]),
        }
    }
}

impl Thresholds {
    pub fn for_stage(&self, stage: Stage) -> Duration {
        self.per_stage.get(&stage).copied().unwrap_or(self.default)
    }

    /// A threshold for every stage but `done` (which never gets stuck).
    pub fn all(&self) -> Vec<(Stage, Duration)> {
        Stage::ALL
            .into_iter()
            .filter(|s| *s != Stage::Done)
            .map(|s| (s, self.for_stage(s)))
            .collect()
    }
}

/// The optional configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    default_stuck_after: Option<String>,
    #[serde(default)]
    stuck_after: BTreeMap<String, String>,
    retention_days: Option<u32>,
}

/// Everything order-watch needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interface for all listeners. Env: `ORDER_WATCH_HOST` (default `127.0.0.1`).
    pub host: String,
    /// The API and UI. Env: `ORDER_WATCH_PORT` (default 8080).
    pub http_port: u16,
    /// OTLP/gRPC. Env: `ORDER_WATCH_OTLP_GRPC_PORT` (default 14317: the standard 4317 is the
    /// collector's, which feeds order-watch).
    pub otlp_grpc_port: u16,
    /// OTLP/HTTP. Env: `ORDER_WATCH_OTLP_HTTP_PORT` (default 14318; 4318 is the collector's).
    pub otlp_http_port: u16,
    /// The certificate chain (the server's own first) and private key, PEM files, that the API
    /// and UI and both OTLP receivers serve TLS with; plain text when neither is set. Env:
    /// `ORDER_WATCH_TLS_CERT` and `ORDER_WATCH_TLS_KEY` (both or neither; none by default).
    pub tls: Option<CertifiedKeyFiles>,
    /// The CA (a PEM file) whose certificates OTLP clients must present: with it, both OTLP
    /// receivers refuse a client without a certificate signed by it. Needs `tls`. The API and
    /// UI ask for no client certificate (people log in through the identity provider). Env:
    /// `ORDER_WATCH_OTLP_CLIENT_CA` (none by default).
    pub otlp_client_ca: Option<PemFile>,
    /// Env: `ORDER_WATCH_DATABASE_URL` (required unless `HALLMARK_ENV` is `development` or
    /// `test`, where it defaults to
    /// `postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_order_watch`).
    pub database: DatabaseConfig,
    /// The stuck thresholds order-watch starts with (file: `default_stuck_after` and
    /// `[stuck_after]`; env: `ORDER_WATCH_STUCK_AFTER` for the default). Once a developer changed
    /// them at run time, the stored ones hold instead ([`crate::runtime_config`]).
    pub thresholds: Thresholds,
    /// Journeys whose last span is older are deleted, and spans that start earlier are refused.
    /// File: `retention_days`; env: `ORDER_WATCH_RETENTION_DAYS` (default 30, at most 3650).
    /// Once an admin changed it at run time, the stored value holds instead.
    pub retention_days: u32,
    /// Where incident notifications go, in Alertmanager's webhook format; none when unset. Env:
    /// `ORDER_WATCH_WEBHOOK_URL` (an http or https URL; it may hold a credential, and is never
    /// shown in full). Once a developer changed it at run time, the stored one holds instead.
    pub webhook: Option<WebhookUrl>,
    /// How often each replica looks for a configuration change another replica made (a read
    /// of one stored number). Env: `ORDER_WATCH_CONFIG_RELOAD_INTERVAL` (default `5s`).
    pub config_reload_interval: Duration,
    /// Largest OTLP request accepted (after decompression). Env: `ORDER_WATCH_MAX_REQUEST_BYTES`
    /// (default 16 MiB).
    pub max_request_bytes: usize,
    /// The detector checks for due orders at least this often, besides waking exactly at the
    /// earliest deadline it knows. Env: `ORDER_WATCH_DETECT_INTERVAL` (default `1s`).
    pub detect_interval: Duration,
    /// How often the per-stage gauges are recomputed. Env: `ORDER_WATCH_GAUGE_INTERVAL`
    /// (default `15s`).
    pub gauge_interval: Duration,
    /// The systems of record asked before an order is called stuck. Env:
    /// `ORDER_WATCH_SHOP_URL`, `ORDER_WATCH_CRM_URL`, `ORDER_WATCH_MES_URL` (each service's
    /// API base URL; none by default: orders waiting on a system without one are flagged
    /// unconfirmed), `ORDER_WATCH_CONFIRM_TIMEOUT` (longest wait for an answer, default `2s`)
    /// and `ORDER_WATCH_RECORDS_CA` (a PEM file of the CA certificates their https is checked
    /// against instead of the built-in roots; none by default); order-watch's own client at
    /// the identity provider of `ORDER_WATCH_OIDC_ISSUER`, whose tokens the listings require:
    /// `ORDER_WATCH_SERVICE_CLIENT_ID` (default `order-watch-service`) and
    /// `ORDER_WATCH_SERVICE_CLIENT_SECRET` (none by default: no token is sent).
    pub records: RecordsConfig,
    /// Partners' rates tightened at Shop while incidents their orders feed are open (see
    /// [`crate::partner_limits::PartnerLimitsConfig`] for each variable); only when Shop's
    /// address (`ORDER_WATCH_SHOP_URL`) is configured.
    pub partner_limits: crate::partner_limits::PartnerLimitsConfig,
    /// How often a stuck order's system of record is asked again, so an order whose later
    /// spans were lost as well is not left stuck. Env: `ORDER_WATCH_RECONFIRM_INTERVAL`
    /// (default `1m`).
    pub reconfirm_interval: Duration,
    /// Who may use the API and UI: the OIDC provider whose tokens are accepted (see
    /// [`AuthConfig::from_env`]: `ORDER_WATCH_OIDC_*`).
    pub auth: AuthConfig,
    /// The trace store's UI as people reach it (Jaeger, e.g. `https://jaeger.example.com`): the
    /// page links each trace of a journey to `{url}/trace/{trace_id}`. Env:
    /// `ORDER_WATCH_JAEGER_URL` (an http or https URL; none by default: no links).
    pub jaeger_url: Option<String>,
    /// Reconciliation of the systems' statuses (see [`ReconcileConfig`]:
    /// `ORDER_WATCH_RECONCILE*`). It asks the systems of `records` with the same client.
    pub reconcile: ReconcileConfig,
}

/// What a setting is when no variable (or file) gives it: one place for [`Settings::from_env`]
/// and [`Settings::local`].
const DEFAULT_RETENTION_DAYS: u32 = 30;
const DEFAULT_CONFIG_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_DETECT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_GAUGE_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_RECONFIRM_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

impl Settings {
    /// order-watch on loopback with ports the system picks, in plain text, open to anyone,
    /// asking no system of record and storing in `database`; everything else as
    /// [`Settings::from_env`] has it without variables. For tests and benchmarks, which change
    /// what they need.
    pub fn local(database: DatabaseConfig) -> Self {
        Self {
            host: "127.0.0.1".into(),
            http_port: 0,
            otlp_grpc_port: 0,
            otlp_http_port: 0,
            tls: None,
            otlp_client_ca: None,
            database,
            thresholds: Thresholds::default(),
            retention_days: DEFAULT_RETENTION_DAYS,
            webhook: None,
            config_reload_interval: DEFAULT_CONFIG_RELOAD_INTERVAL,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            detect_interval: DEFAULT_DETECT_INTERVAL,
            gauge_interval: DEFAULT_GAUGE_INTERVAL,
            records: RecordsConfig {
                urls: BTreeMap::new(),
                timeout: DEFAULT_CONFIRM_TIMEOUT,
                ca: None,
                identity: None,
            },
            partner_limits: crate::partner_limits::PartnerLimitsConfig::default(),
            reconfirm_interval: DEFAULT_RECONFIRM_INTERVAL,
            auth: AuthConfig::Open,
            jaeger_url: None,
            reconcile: ReconcileConfig::default(),
        }
    }

    pub fn from_env() -> anyhow::Result<Self> {
        let file = settings::optional("ORDER_WATCH_CONFIG").map(PathBuf::from);
        let file_config = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let thresholds = thresholds(&file_config, settings::optional("ORDER_WATCH_STUCK_AFTER"))?;
        let retention_days: u32 = settings::parse(
            "ORDER_WATCH_RETENTION_DAYS",
            file_config.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
        )?;
        let tls = CertifiedKeyFiles::from_env("ORDER_WATCH_TLS_CERT", "ORDER_WATCH_TLS_KEY")?;
        let otlp_client_ca = client_ca(&tls, PemFile::from_env("ORDER_WATCH_OTLP_CLIENT_CA"))?;
        if !(1..=MAX_RETENTION_DAYS).contains(&retention_days) {
            anyhow::bail!(
                "ORDER_WATCH_RETENTION_DAYS (or the file's retention_days): from 1 to {MAX_RETENTION_DAYS} days, not {retention_days}"
            );
        }
        let webhook = settings::optional("ORDER_WATCH_WEBHOOK_URL")
            .map(|url| WebhookUrl::parse(&url))
            .transpose()
            .map_err(|err| anyhow::anyhow!("ORDER_WATCH_WEBHOOK_URL: {err}"))?;
        Ok(Self {
            host: settings::string("ORDER_WATCH_HOST", "127.0.0.1"),
            http_port: settings::parse("ORDER_WATCH_PORT", 8080)?,
            otlp_grpc_port: settings::parse("ORDER_WATCH_OTLP_GRPC_PORT", 14317)?,
            otlp_http_port: settings::parse("ORDER_WATCH_OTLP_HTTP_PORT", 14318)?,
            tls,
            otlp_client_ca,
            database: DatabaseConfig::new(settings::credential(
                "ORDER_WATCH_DATABASE_URL",
                "postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_order_watch",
            )?),
            thresholds,
            retention_days,
            webhook,
            config_reload_interval: settings::duration(
                "ORDER_WATCH_CONFIG_RELOAD_INTERVAL",
                DEFAULT_CONFIG_RELOAD_INTERVAL,
            )?,
            max_request_bytes: settings::parse(
                "ORDER_WATCH_MAX_REQUEST_BYTES",
                DEFAULT_MAX_REQUEST_BYTES,
            )?,
            detect_interval: settings::duration(
                "ORDER_WATCH_DETECT_INTERVAL",
                DEFAULT_DETECT_INTERVAL,
            )?,
            gauge_interval: settings::duration(
                "ORDER_WATCH_GAUGE_INTERVAL",
                DEFAULT_GAUGE_INTERVAL,
            )?,
            records: records_config()?,
            partner_limits: crate::partner_limits::PartnerLimitsConfig::from_env()?,
            reconfirm_interval: settings::duration(
                "ORDER_WATCH_RECONFIRM_INTERVAL",
                DEFAULT_RECONFIRM_INTERVAL,
            )?,
            auth: AuthConfig::from_env()?,
            jaeger_url: settings::optional("ORDER_WATCH_JAEGER_URL")
                .map(|url| base_url("ORDER_WATCH_JAEGER_URL", &url))
                .transpose()?,
            reconcile: ReconcileConfig::from_env()?,
        })
    }
}

/// The client CA of the OTLP receivers, which needs TLS: an error rather than receivers that
/// would take anyone's spans in plain text.
fn client_ca(
    tls: &Option<CertifiedKeyFiles>,
    client_ca: Option<PemFile>,
) -> Result<Option<PemFile>, TlsError> {
    match (tls, client_ca) {
        (None, Some(ca)) => Err(TlsError::NeedsTls {
            setting: ca.setting,
        }),
        (_, client_ca) => Ok(client_ca),
    }
}

fn records_config() -> anyhow::Result<RecordsConfig> {
    let mut urls = BTreeMap::new();
    for system in System::ALL {
        let variable = RecordsConfig::variable(system);
        if let Some(url) = settings::optional(variable) {
            urls.insert(system, base_url(variable, &url)?);
        }
    }
    let timeout = settings::duration("ORDER_WATCH_CONFIRM_TIMEOUT", DEFAULT_CONFIRM_TIMEOUT)?;
    if timeout.is_zero() || timeout > MAX_CONFIRM_TIMEOUT {
        anyhow::bail!(
            "ORDER_WATCH_CONFIRM_TIMEOUT: must be more than 0 and at most {MAX_CONFIRM_TIMEOUT:?} \
             (a claimed order is left to its replica for {:?})",
            crate::detector::LEASE
        );
    }
    Ok(RecordsConfig {
        urls,
        timeout,
        ca: PemFile::from_env("ORDER_WATCH_RECORDS_CA"),
        identity: access::ClientConfig::from_env(
            "ORDER_WATCH_SERVICE",
            "order-watch-service",
            "ORDER_WATCH_OIDC_ISSUER",
        )?,
    })
}

/// Longest confirmation timeout: a round must end well within the lease on its orders.
const MAX_CONFIRM_TIMEOUT: Duration = Duration::from_secs(20);

/// An `http` or `https` base URL, without a trailing slash.
fn base_url(variable: &str, text: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|e| anyhow::anyhow!("{variable}: `{text}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        anyhow::bail!("{variable}: `{text}` is not an http(s) URL with a host");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn parse_duration(what: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        anyhow::anyhow!("{what}: `{text}` is not a duration like `90s`, `15m` or `7d` ({e})")
    })
}

/// Built-in thresholds, then the file's, then `ORDER_WATCH_STUCK_AFTER` for the default.
fn thresholds(file: &FileConfig, stuck_after: Option<String>) -> anyhow::Result<Thresholds> {
    let mut thresholds = Thresholds::default();
    if let Some(default) = &file.default_stuck_after {
        thresholds.default = parse_duration("default_stuck_after", default)?;
    }
    for (stage, duration) in &file.stuck_after {
        let stage: Stage = stage
            .parse()
            .map_err(|_| anyhow::anyhow!("stuck_after: unknown stage `{stage}`"))?;
        thresholds.per_stage.insert(
            stage,
            parse_duration(&format!("stuck_after.{stage}"), duration)?,
        );
    }
    if let Some(default) = stuck_after {
        thresholds.default = parse_duration("ORDER_WATCH_STUCK_AFTER", &default)?;
    }
    Ok(thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_stages_use_the_default_and_the_variable_overrides_it() {
        let thresholds = thresholds(&FileConfig::default(), Some("90s".into())).unwrap();
        assert_eq!(
            thresholds.for_stage(Stage::Pricing),
            Duration::from_secs(90)
        );
        assert_eq!(thresholds.for_stage(Stage::Intake), Duration::from_secs(90));
        assert_eq!(
            thresholds.for_stage(Stage::CustomerConfirmation),
            Duration::from_secs(7 * 24 * 3600)
        );
    }

    #[test]
    fn the_file_sets_stages_and_the_default() {
        let file: FileConfig = toml::from_str(
            "default_stuck_after = \"20m\"\n[stuck_after]\npricing = \"5m\"\nshipping = \"1d\"\n",
        )
        .unwrap();
        let thresholds = thresholds(&file, None).unwrap();
        assert_eq!(
            thresholds.for_stage(Stage::Pricing),
            Duration::from_secs(300)
        );
        assert_eq!(
            thresholds.for_stage(Stage::Shipping),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            thresholds.for_stage(Stage::Intake),
            Duration::from_secs(1200)
        );
    }

    #[test]
    fn a_system_of_record_is_an_http_base_url() {
        assert_eq!(
            base_url("ORDER_WATCH_CRM_URL", "http://crm-api:8082/").unwrap(),
            "http://crm-api:8082"
        );
        for bad in ["crm-api:8082", "ftp://crm", "not a url", "http://"] {
            let err = base_url("ORDER_WATCH_CRM_URL", bad).unwrap_err();
            assert!(
                err.to_string().starts_with("ORDER_WATCH_CRM_URL"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn client_certificates_for_otlp_need_tls() {
        let ca = PemFile::new(
            "ORDER_WATCH_OTLP_CLIENT_CA",
            "/etc/hallmark/collector-ca.pem",
        );
        let err = client_ca(&None, Some(ca.clone())).unwrap_err().to_string();
        assert!(
            err.starts_with("ORDER_WATCH_OTLP_CLIENT_CA: client certificates need TLS"),
            "{err}"
        );
        let tls = Some(CertifiedKeyFiles {
            cert: PemFile::new("ORDER_WATCH_TLS_CERT", "/cert.pem"),
            key: PemFile::new("ORDER_WATCH_TLS_KEY", "/key.pem"),
        });
        assert_eq!(client_ca(&tls, Some(ca.clone())).unwrap(), Some(ca));
        assert_eq!(client_ca(&None, None).unwrap(), None);
    }

    #[test]
    fn bad_stages_and_durations_are_named() {
        let file: FileConfig = toml::from_str("[stuck_after]\nnowhere = \"5m\"\n").unwrap();
        assert!(
            thresholds(&file, None)
                .unwrap_err()
                .to_string()
                .contains("nowhere")
        );
        let err = thresholds(&FileConfig::default(), Some("soon".into())).unwrap_err();
        assert!(err.to_string().contains("ORDER_WATCH_STUCK_AFTER"));
        assert!(toml::from_str::<FileConfig>("colour = 1").is_err());
    }
}
