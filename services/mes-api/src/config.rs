//! MES API settings, all from the environment.

use std::path::PathBuf;
use std::time::Duration;

use access::AccessConfig;
use domain::System;
use messaging::{BrokerConfig, Party};
use platform::db::DatabaseConfig;
use platform::storage::StorageConfig;
use platform::tls::CertifiedKeyFiles;

/// Everything MES needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interface to listen on. Env: `MES_HOST` (default `127.0.0.1`).
    pub host: String,
    /// The certificate and key the API serves TLS with; plain HTTP without. Env:
    /// `HALLMARK_TLS_CERT` and `HALLMARK_TLS_KEY` (PEM files, both or neither; see
    /// [`CertifiedKeyFiles::service_from_env`]).
    pub tls: Option<CertifiedKeyFiles>,
    /// Who may call the API: the identity provider whose tokens it accepts (see
    /// `access::AccessConfig`). Env: `HALLMARK_OIDC_ISSUER` (required unless `HALLMARK_ENV`
    /// is `development` or `test`, where the API is open without it),
    /// `HALLMARK_OIDC_AUDIENCE` (default `mes-api`), `HALLMARK_OIDC_ROLES_CLAIM`,
    /// `HALLMARK_OIDC_LEEWAY`.
    pub access: AccessConfig,
    /// Port to listen on; 0 picks a free one. Env: `MES_PORT` (default 8083).
    pub port: u16,
    /// Env: `MES_DATABASE_URL` (required unless `HALLMARK_ENV` is `development` or `test`, where it defaults to `postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_mes`).
    pub database: DatabaseConfig,
    /// Env: `HALLMARK_AMQP_*` (see `messaging::BrokerConfig`); the URL names this service's own
    /// broker account (development default `hallmark-mes`).
    pub broker: BrokerConfig,
    /// Where Shop stored the models. Env: `HALLMARK_STORAGE_DIR` or `HALLMARK_S3_*`.
    pub storage: StorageConfig,
    pub calc: CalcSettings,
}

/// How price calculations run.
#[derive(Debug, Clone)]
pub struct CalcSettings {
    /// The calc engine executable. Env: `MES_CALC_BIN` (default: `mes-calc` next to this
    /// program).
    pub binary: PathBuf,
    /// A run taking longer is killed and counts as a failed attempt. Env: `MES_CALC_TIMEOUT`
    /// (default `120s`).
    pub timeout: Duration,
    /// Calculations running at the same time. Env: `MES_CALC_WORKERS` (default 2).
    pub workers: usize,
    /// Attempts before an order is marked `failed`. Env: `MES_CALC_MAX_ATTEMPTS` (default 3).
    pub max_attempts: i32,
    /// Wait before the second attempt; doubled for each one after. Env: `MES_CALC_RETRY_DELAY`
    /// (default `5s`).
    pub retry_delay: Duration,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            host: settings::string("MES_HOST", "127.0.0.1"),
            tls: CertifiedKeyFiles::service_from_env()?,
            access: AccessConfig::from_env(
                "HALLMARK_OIDC",
                crate::SERVICE_NAME,
                "MES moves orders through production",
            )?,
            port: settings::parse("MES_PORT", 8083)?,
            database: DatabaseConfig::new(settings::credential(
                "MES_DATABASE_URL",
                "postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_mes",
            )?),
            broker: BrokerConfig::from_env(Party::Service(System::Mes))?,
            storage: StorageConfig::from_env()?,
            calc: CalcSettings {
                binary: match settings::optional("MES_CALC_BIN") {
                    Some(path) => PathBuf::from(path),
                    None => default_calc_binary()?,
                },
                timeout: settings::duration("MES_CALC_TIMEOUT", Duration::from_secs(120))?,
                workers: settings::parse("MES_CALC_WORKERS", 2)?,
                max_attempts: settings::parse("MES_CALC_MAX_ATTEMPTS", 3)?,
                retry_delay: settings::duration("MES_CALC_RETRY_DELAY", Duration::from_secs(5))?,
            },
        })
    }
}

/// `mes-calc` in the directory of the running executable: the two are installed side by side.
fn default_calc_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("cannot tell the directory of {}", exe.display()))?;
    Ok(dir.join("mes-calc"))
}
