//! CRM API settings, all from the environment.

use access::AccessConfig;
use domain::System;
use messaging::{BrokerConfig, Party};
use platform::db::DatabaseConfig;
use platform::tls::CertifiedKeyFiles;

/// Everything CRM needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interface to listen on. Env: `CRM_HOST` (default `127.0.0.1`).
    pub host: String,
    /// The certificate and key the API serves TLS with; plain HTTP without. Env:
    /// `HALLMARK_TLS_CERT` and `HALLMARK_TLS_KEY` (PEM files, both or neither; see
    /// [`CertifiedKeyFiles::service_from_env`]).
    pub tls: Option<CertifiedKeyFiles>,
    /// Who may call the API: the identity provider whose tokens it accepts (see
    /// `access::AccessConfig`). Env: `HALLMARK_OIDC_ISSUER` (required unless `HALLMARK_ENV`
    /// is `development` or `test`, where the API is open without it),
    /// `HALLMARK_OIDC_AUDIENCE` (default `crm-api`), `HALLMARK_OIDC_ROLES_CLAIM`,
    /// `HALLMARK_OIDC_LEEWAY`.
    pub access: AccessConfig,
    /// Port to listen on; 0 picks a free one. Env: `CRM_PORT` (default 8082).
    pub port: u16,
    /// Env: `CRM_DATABASE_URL` (required unless `HALLMARK_ENV` is `development` or `test`, where it defaults to `postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_crm`).
    pub database: DatabaseConfig,
    /// Env: `HALLMARK_AMQP_*` (see `messaging::BrokerConfig`); the URL names this service's own
    /// broker account (development default `hallmark-crm`).
    pub broker: BrokerConfig,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            host: settings::string("CRM_HOST", "127.0.0.1"),
            tls: CertifiedKeyFiles::service_from_env()?,
            access: AccessConfig::from_env(
                "HALLMARK_OIDC",
                crate::SERVICE_NAME,
                "CRM holds customers' contact data and ships orders",
            )?,
            port: settings::parse("CRM_PORT", 8082)?,
            database: DatabaseConfig::new(settings::credential(
                "CRM_DATABASE_URL",
                "postgres://hallmark:hallmark@127.0.0.1:5432/hallmark_crm",
            )?),
            broker: BrokerConfig::from_env(Party::Service(System::Crm))?,
        })
    }
}
