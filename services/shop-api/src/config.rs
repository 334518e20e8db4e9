//! Shop API settings, all from the environment.

use access::AccessConfig;
use domain::System;
use messaging::{BrokerConfig, Party};
use platform::db::DatabaseConfig;
use platform::storage::StorageConfig;
use platform::tls::CertifiedKeyFiles;
use secrecy::SecretString;

use crate::orders::{PartnerLimits, Rate};

/// Everything Shop needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interface to listen on. Env: `SHOP_HOST` (default `127.0.0.1`).
    pub host: String,
    /// The certificate and key the API serves TLS with; plain HTTP without. Env:
    /// `HALLMARK_TLS_CERT` and `HALLMARK_TLS_KEY` (PEM files, both or neither; see
    /// [`CertifiedKeyFiles::service_from_env`]).
    pub tls: Option<CertifiedKeyFiles>,
    /// Who may call the API: the identity provider whose tokens it accepts (see
    /// `access::AccessConfig`). Env: `HALLMARK_OIDC_ISSUER` (required unless `HALLMARK_ENV`
    /// is `development` or `test`, where the API is open without it),
    /// `HALLMARK_OIDC_AUDIENCE` (default `shop-api`), `HALLMARK_OIDC_ROLES_CLAIM`,
    /// `HALLMARK_OIDC_LEEWAY`.
    pub access: AccessConfig,
    /// Port to listen on; 0 picks a free one. Env: `SHOP_PORT` (default 8081).
    pub port: u16,
    /// Env: `SHOP_DATABASE_URL` (required unless `HALLMARK_ENV` is `development` or `test`, where it defaults to `postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_shop`).
    pub database: DatabaseConfig,
    /// Env: `HALLMARK_AMQP_*` (see `messaging::BrokerConfig`); the URL names this service's own
    /// broker account (development default `hallmark-shop`).
    pub broker: BrokerConfig,
    /// Env: `HALLMARK_STORAGE_DIR` or `HALLMARK_S3_*` (see `platform::storage`).
    pub storage: StorageConfig,
    /// Largest model accepted, in bytes; a larger upload gets 413. Env: `SHOP_MAX_MODEL_BYTES`
    /// (default 50 MiB, enough for a finely tessellated ring).
    pub max_model_bytes: usize,
    /// The key customers' order tokens are made with (`orders::token`): a secret; changing it
    /// invalidates every token handed out before. Env: `SHOP_ORDER_TOKEN_KEY` (required unless
    /// `HALLMARK_ENV` is `development` or `test`, where a fixed development key is used).
    pub order_token_key: SecretString,
    /// How many orders each partner may place, shared by every replica (`orders::limit`).
    /// Env: `SHOP_PARTNER_RATE` (every partner's, `count/duration`, default `60/1m`) and
    /// `SHOP_PARTNER_RATES` (some partners' own, e.g. `acme=600/1m,bulk=30/1m`). Customers'
    /// web orders are not limited.
    pub partner_limits: PartnerLimits,
}

pub const DEFAULT_MAX_MODEL_BYTES: usize = 50 * 1024 * 1024;

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            host: settings::string("SHOP_HOST", "127.0.0.1"),
            tls: CertifiedKeyFiles::service_from_env()?,
            access: AccessConfig::from_env(
                "HALLMARK_OIDC",
                crate::SERVICE_NAME,
                "Shop holds customers' orders and contact data",
            )?,
            port: settings::parse("SHOP_PORT", 8081)?,
            database: DatabaseConfig::new(settings::credential(
                "SHOP_DATABASE_URL",
                "postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_shop",
            )?),
            broker: BrokerConfig::from_env(Party::Service(System::Shop))?,
            storage: StorageConfig::from_env()?,
            max_model_bytes: settings::parse("SHOP_MAX_MODEL_BYTES", DEFAULT_MAX_MODEL_BYTES)?,
            partner_limits: partner_limits()?,
            order_token_key: SecretString::from(settings::credential(
                "SHOP_ORDER_TOKEN_KEY",
                "hallmark-order-token-key-for-local-use-only",
            )?),
        })
    }
}

fn partner_limits() -> anyhow::Result<PartnerLimits> {
    let default = Rate::parse(&settings::string("SHOP_PARTNER_RATE", "60/1m"))
        .map_err(|e| anyhow::anyhow!("SHOP_PARTNER_RATE: {e}"))?;
    let per_partner = PartnerLimits::parse_overrides(
        &settings::optional("SHOP_PARTNER_RATES").unwrap_or_default(),
    )
    .map_err(|e| anyhow::anyhow!("SHOP_PARTNER_RATES: {e}"))?;
    Ok(PartnerLimits {
        default,
        per_partner,
    })
}
