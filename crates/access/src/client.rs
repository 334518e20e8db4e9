//! A service's own identity for the calls it makes to other APIs: an access token of its
//! confidential client from the client credentials grant, kept until shortly before it expires.
//!
//! Invariants: the secret is only ever sent to the issuer's token endpoint (found through
//! discovery) and never logged or shown by `Debug`; one token request runs at a time, so a burst
//! of calls after expiry asks the provider once; a caller whose token was refused (401) calls
//! [`ServiceToken::forget`] and the next call asks for a new one.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::keys::{FetchError, KeySet};

/// A token is asked for again this long before it expires.
const RENEW_AHEAD: Duration = Duration::from_secs(30);

/// A confidential client of the identity provider.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub secret: SecretString,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// A service's own client at an identity provider: what it needs for [`ServiceToken`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The issuer URL (its token endpoint is found through discovery).
    pub issuer: String,
    pub credentials: ClientCredentials,
}

impl ClientConfig {
    /// From `{prefix}_CLIENT_ID` (default `default_id`) and `{prefix}_CLIENT_SECRET`, for the
    /// issuer in `issuer_variable`: `None` without a secret (the service then calls without a
    /// token, which only open APIs answer), an error with a secret but no issuer.
    pub fn from_env(
        prefix: &str,
        default_id: &str,
        issuer_variable: &str,
    ) -> Result<Option<Self>, settings::ConfigError> {
        let secret_variable = format!("{prefix}_CLIENT_SECRET");
        let Some(secret) = settings::optional(&secret_variable) else {
            return Ok(None);
        };
        let issuer = settings::optional(issuer_variable).ok_or_else(|| settings::ConfigError {
            variable: issuer_variable.to_owned(),
            message: format!("must be set with {secret_variable}: the client's tokens come from that identity provider"),
        })?;
        Ok(Some(Self {
            issuer: issuer.trim().to_owned(),
            credentials: ClientCredentials {
                client_id: settings::string(&format!("{prefix}_CLIENT_ID"), default_id),
                secret: SecretString::from(secret.trim().to_owned()),
            },
        }))
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot find the identity provider's token endpoint")]
    Discovery(#[source] FetchError),
    #[error("the identity provider did not give client {client_id} a token")]
    Refused {
        client_id: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Why a request made with a service's token got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no token for the service's own client")]
    Token(#[source] TokenError),
    #[error("the request failed")]
    Http(#[source] reqwest::Error),
}

/// The tokens of one client, for one issuer.
pub struct ServiceToken {
    credentials: ClientCredentials,
    provider: KeySet,
    current: Mutex<Option<(SecretString, Instant)>>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("client_id", &self.credentials.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl ServiceToken {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            provider: KeySet::new(&config.issuer),
            credentials: config.credentials,
            current: Mutex::new(None),
        }
    }

    pub fn client_id(&self) -> &str {
        &self.credentials.client_id
    }

    /// A token that is valid for at least [`RENEW_AHEAD`] more: the one kept, or a new one.
    pub async fn get(&self) -> Result<SecretString, TokenError> {
        let mut current = self.current.lock().await;
        if let Some((token, renew_at)) = current.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let answer = self.fetch().await?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60));
        let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_AHEAD);
        let token = SecretString::from(answer.access_token);
        *current = Some((token.clone(), renew_at));
        Ok(token)
    }

    /// Drops the kept token (an API refused it: revoked, or keys rotated).
    pub async fn forget(&self) {
        *self.current.lock().await = None;
    }

    /// Sends the request `build` makes with this client's token; a 401 (the token expired early,
    /// was revoked, the keys rotated) drops it and the request is made once more with a new one.
    pub async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.get().await.map_err(SendError::Token)?;
            let response = build()
                .bearer_auth(token.expose_secret())
                .send()
                .await
                .map_err(SendError::Http)?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || attempt > 1 {
                return Ok(response);
            }
            self.forget().await;
        }
    }

    async fn fetch(&self) -> Result<Answer, TokenError> {
        let endpoint = self
            .provider
            .discovery()
            .await
            .map_err(TokenError::Discovery)?
            .token_endpoint;
        let refused = |source| TokenError::Refused {
            client_id: self.credentials.client_id.clone(),
            source,
        };
        self.provider
            .http()
            .post(&endpoint)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &self.credentials.client_id),
                ("client_secret", self.credentials.secret.expose_secret()),
            ])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(refused)?
            .json()
            .await
            .map_err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let credentials = ClientCredentials {
            client_id: "order-watch-service".into(),
            secret: SecretString::from("s3cr3t".to_owned()),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("order-watch-service") && !shown.contains("s3cr3t"));
    }
}
