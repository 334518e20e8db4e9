//! Who may use order-watch: the identity provider it trusts, how its tokens name roles, and the
//! UI's login client.

use access::{AccessConfig, IssuerConfig};
use settings::ConfigError;

/// The OpenID Connect provider whose access tokens order-watch accepts, and how the UI logs in
/// with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer and how its tokens are checked (`access::IssuerConfig`). Env:
    /// `ORDER_WATCH_OIDC_ISSUER` (e.g. `http://127.0.0.1:8180/realms/hallmark`),
    /// `ORDER_WATCH_OIDC_AUDIENCE` (default `order-watch`), `ORDER_WATCH_OIDC_ROLES_CLAIM`
    /// (default `realm_access.roles`), `ORDER_WATCH_OIDC_LEEWAY` (default `30s`).
    pub token: IssuerConfig,
    /// The client the UI logs in as (authorization code with PKCE). Env:
    /// `ORDER_WATCH_OIDC_CLIENT_ID` (default `order-watch`).
    pub client_id: String,
    /// Where browsers reach order-watch, for the login's redirect URI (e.g.
    /// `https://watch.example.com`). Env: `ORDER_WATCH_PUBLIC_URL` (default: the host each
    /// request names, over the scheme the API serves).
    pub public_url: Option<String>,
}

/// How order-watch authenticates people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// Bearer tokens of this provider, on every route but the machines' ones.
    Oidc(OidcConfig),
    /// Nobody is asked who they are: only where `HALLMARK_ENV` is `development` or `test` and
    /// no issuer is configured. Start-up logs a warning.
    Open,
}

impl AuthConfig {
    /// From the environment. Outside development and tests an issuer is required: order-watch
    /// never answers anyone who reaches it there.
    pub fn from_env() -> Result<Self, ConfigError> {
        let access = AccessConfig::from_env(
            "ORDER_WATCH_OIDC",
            "order-watch",
            "order-watch shows customers' orders",
        )?;
        Ok(match access {
            AccessConfig::Open => Self::Open,
            AccessConfig::Oidc(token) => Self::Oidc(OidcConfig {
                token,
                client_id: settings::string("ORDER_WATCH_OIDC_CLIENT_ID", "order-watch"),
                public_url: settings::optional("ORDER_WATCH_PUBLIC_URL"),
            }),
        })
    }
}
