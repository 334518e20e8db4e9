//! Who may use order-watch: the identity provider it trusts and how its tokens name roles.

use std::time::Duration;

use settings::ConfigError;

/// The OpenID Connect provider whose access tokens order-watch accepts. Anything that speaks
/// OIDC works the same: these four settings are all order-watch knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer URL, exactly as tokens carry it in `iss`; its keys are found through
    /// `{issuer}/.well-known/openid-configuration`. Env: `ORDER_WATCH_OIDC_ISSUER` (e.g.
    /// `http://127.0.0.1:8180/realms/hallmark`).
    pub issuer: String,
    /// What a token's `aud` must contain. Env: `ORDER_WATCH_OIDC_AUDIENCE` (default
    /// `order-watch`).
    pub audience: String,
    /// Where a token lists its roles: a dotted path to an array of strings. Env:
    /// `ORDER_WATCH_OIDC_ROLES_CLAIM` (default `realm_access.roles`, Keycloak's realm roles).
    pub roles_claim: String,
    /// How far clocks may disagree when `exp` and `nbf` are checked. Env:
    /// `ORDER_WATCH_OIDC_LEEWAY` (default `30s`).
    pub leeway: Duration,
    /// The client the UI logs in as (authorization code with PKCE). Env:
    /// `ORDER_WATCH_OIDC_CLIENT_ID` (default `order-watch`).
    pub client_id: String,
    /// Where browsers reach order-watch, for the login's redirect URI (e.g.
    /// `https://watch.example.com`). Env: `ORDER_WATCH_PUBLIC_URL` (default: the host each
    /// request names, over http).
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
        let issuer = settings::optional("ORDER_WATCH_OIDC_ISSUER");
        let environment = settings::string("HALLMARK_ENV", "development");
        Self::from_settings(issuer, &environment, || {
            Ok(OidcConfig {
                issuer: String::new(),
                audience: settings::string("ORDER_WATCH_OIDC_AUDIENCE", "order-watch"),
                roles_claim: settings::string("ORDER_WATCH_OIDC_ROLES_CLAIM", "realm_access.roles"),
                leeway: settings::duration("ORDER_WATCH_OIDC_LEEWAY", Duration::from_secs(30))?,
                client_id: settings::string("ORDER_WATCH_OIDC_CLIENT_ID", "order-watch"),
                public_url: settings::optional("ORDER_WATCH_PUBLIC_URL"),
            })
        })
    }

    fn from_settings(
        issuer: Option<String>,
        environment: &str,
        rest: impl FnOnce() -> Result<OidcConfig, ConfigError>,
    ) -> Result<Self, ConfigError> {
        match issuer {
            Some(issuer) => Ok(Self::Oidc(OidcConfig {
                issuer: issuer.trim().to_owned(),
                ..rest()?
            })),
            None if matches!(environment.trim(), "development" | "test") => Ok(Self::Open),
            None => Err(ConfigError {
                variable: "ORDER_WATCH_OIDC_ISSUER".to_owned(),
                message: format!(
                    "must be set in `{environment}` (HALLMARK_ENV): order-watch shows customers' orders and answers only people its identity provider vouches for"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest() -> Result<OidcConfig, ConfigError> {
        Ok(OidcConfig {
            issuer: String::new(),
            audience: "order-watch".into(),
            roles_claim: "realm_access.roles".into(),
            leeway: Duration::from_secs(30),
            client_id: "order-watch".into(),
            public_url: None,
        })
    }

    #[test]
    fn without_an_issuer_order_watch_is_open_only_in_development_and_tests() {
        assert_eq!(
            AuthConfig::from_settings(None, "development", rest).unwrap(),
            AuthConfig::Open
        );
        assert_eq!(
            AuthConfig::from_settings(None, "test", rest).unwrap(),
            AuthConfig::Open
        );
        let err = AuthConfig::from_settings(None, "production", rest).unwrap_err();
        assert_eq!(err.variable, "ORDER_WATCH_OIDC_ISSUER");
        let issuer = "https://sso.example.com/realms/hallmark".to_owned();
        match AuthConfig::from_settings(Some(issuer.clone()), "production", rest).unwrap() {
            AuthConfig::Oidc(config) => assert_eq!(config.issuer, issuer),
            other => panic!("{other:?}"),
        }
    }
}
