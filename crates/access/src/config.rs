//! Which identity provider an API trusts, and how its tokens name roles.

use std::time::Duration;

use settings::ConfigError;

/// The OpenID Connect provider whose access tokens an API accepts. Anything that speaks OIDC
/// works the same: these four settings are all the API knows of it. The variables are
/// `{PREFIX}_ISSUER`, `{PREFIX}_AUDIENCE`, `{PREFIX}_ROLES_CLAIM` and `{PREFIX}_LEEWAY`, with
/// `PREFIX` `ORDER_WATCH_OIDC` for order-watch and `HALLMARK_OIDC` for Shop, CRM and MES.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The issuer URL, exactly as tokens carry it in `iss`; its keys are found through
    /// `{issuer}/.well-known/openid-configuration` (e.g.
    /// `http://127.0.0.1:8180/realms/hallmark`).
    pub issuer: String,
    /// What a token's `aud` must contain: the API's own name (default: the service's name, e.g.
    /// `crm-api`), so that a token asked for one API is refused by the others.
    pub audience: String,
    /// Where a token lists its roles: a dotted path to an array of strings (default
    /// `realm_access.roles`, Keycloak's realm roles).
    pub roles_claim: String,
    /// How far clocks may disagree when `exp` and `nbf` are checked (default `30s`).
    pub leeway: Duration,
}

/// How an API authenticates its callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessConfig {
    /// Bearer tokens of this provider.
    Oidc(IssuerConfig),
    /// Nobody is asked who they are: only where `HALLMARK_ENV` is `development` or `test` and
    /// no issuer is configured. Start-up logs a warning.
    Open,
}

impl AccessConfig {
    /// From the variables under `prefix` (see [`IssuerConfig`]), with `audience` the default
    /// audience. Outside development and tests an issuer is required; `guards` says what it
    /// protects, for the error.
    pub fn from_env(prefix: &str, audience: &str, guards: &str) -> Result<Self, ConfigError> {
        let issuer = settings::optional(&format!("{prefix}_ISSUER"));
        let environment = settings::string("HALLMARK_ENV", "development");
        Self::from_settings(prefix, issuer, &environment, guards, || {
            Ok(IssuerConfig {
                issuer: String::new(),
                audience: settings::string(&format!("{prefix}_AUDIENCE"), audience),
                roles_claim: settings::string(
                    &format!("{prefix}_ROLES_CLAIM"),
                    "realm_access.roles",
                ),
                leeway: settings::duration(&format!("{prefix}_LEEWAY"), Duration::from_secs(30))?,
            })
        })
    }

    fn from_settings(
        prefix: &str,
        issuer: Option<String>,
        environment: &str,
        guards: &str,
        rest: impl FnOnce() -> Result<IssuerConfig, ConfigError>,
    ) -> Result<Self, ConfigError> {
        match issuer {
            Some(issuer) => Ok(Self::Oidc(IssuerConfig {
                issuer: issuer.trim().to_owned(),
                ..rest()?
            })),
            None if matches!(environment.trim(), "development" | "test") => Ok(Self::Open),
            None => Err(ConfigError {
                variable: format!("{prefix}_ISSUER"),
                message: format!(
                    "must be set in `{environment}` (HALLMARK_ENV): {guards}, and only callers the identity provider vouches for may reach them"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest() -> Result<IssuerConfig, ConfigError> {
        Ok(IssuerConfig {
            issuer: String::new(),
            audience: "crm-api".into(),
            roles_claim: "realm_access.roles".into(),
            leeway: Duration::from_secs(30),
        })
    }

    fn from(issuer: Option<&str>, environment: &str) -> Result<AccessConfig, ConfigError> {
        AccessConfig::from_settings(
            "HALLMARK_OIDC",
            issuer.map(str::to_owned),
            environment,
            "CRM holds customers' contact data",
            rest,
        )
    }

    #[test]
    fn without_an_issuer_an_api_is_open_only_in_development_and_tests() {
        assert_eq!(from(None, "development").unwrap(), AccessConfig::Open);
        assert_eq!(from(None, "test").unwrap(), AccessConfig::Open);
        let err = from(None, "production").unwrap_err();
        assert_eq!(err.variable, "HALLMARK_OIDC_ISSUER");
        assert!(err.message.contains("contact data"), "{}", err.message);
        let issuer = "https://sso.example.com/realms/hallmark";
        match from(Some(&format!(" {issuer}\n")), "production").unwrap() {
            AccessConfig::Oidc(config) => assert_eq!(config.issuer, issuer),
            other => panic!("{other:?}"),
        }
    }
}
