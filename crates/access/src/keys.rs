//! The identity provider's signing keys (its JWKS), fetched through OIDC discovery, kept, and
//! fetched again when a token names a key not seen yet (the provider rotated its keys).
//!
//! Invariants: only asymmetric keys are kept (RSA, EC, OKP), so no token can be checked against
//! a shared secret; a fetch is attempted at most once per [`REFETCH_INTERVAL`], so tokens with
//! made-up key ids cannot make order-watch hammer the provider; when the provider cannot be
//! reached, the keys already known keep working and an unknown key is refused: an outage never
//! lets anyone in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// The least time between two fetches of the key set.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long one fetch (discovery and keys) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A key to check signatures with: the key, and the algorithm its JWK names, when it names one.
#[derive(Clone)]
pub struct Key {
    pub key: DecodingKey,
    pub algorithm: Option<Algorithm>,
}

/// Why the keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the identity provider at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the identity provider's answer at {url} is not what OIDC describes")]
    Malformed {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// What OIDC discovery says about the provider.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub jwks_uri: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

pub struct KeySet {
    issuer: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Key>>,
    /// When the last fetch was attempted; held while a fetch runs so that concurrent requests
    /// with an unknown key wait for one fetch instead of each starting their own.
    last_fetch: Mutex<Option<Instant>>,
    discovery: RwLock<Option<Discovery>>,
}

impl KeySet {
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("a TLS backend for the HTTP client"),
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            discovery: RwLock::new(None),
        }
    }

    /// The key `kid` names: a known one, or one the provider lists when asked again (at most
    /// once per [`REFETCH_INTERVAL`]). `None` when the provider has no such key or cannot be
    /// reached.
    pub async fn get(&self, kid: &str) -> Option<Key> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Some(key.clone());
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.keys.read().await.get(kid) {
            return Some(key.clone());
        }
        if last_fetch.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return None;
        }
        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let found = keys.get(kid).cloned();
                *self.keys.write().await = keys;
                found
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot fetch the identity provider's keys; known keys stay in use");
                None
            }
        }
    }

    /// Fetches the key set now (at start-up, so that the first requests need not wait). A
    /// request whose key is not known yet waits for this fetch, as for one it started.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let mut last_fetch = self.last_fetch.lock().await;
        *last_fetch = Some(Instant::now());
        let keys = self.fetch().await?;
        let count = keys.len();
        *self.keys.write().await = keys;
        Ok(count)
    }

    async fn fetch(&self) -> Result<HashMap<String, Key>, FetchError> {
        let discovery = self.discover().await?;
        let set: JwkSet = self.get_json(&discovery.jwks_uri).await?;
        Ok(usable_keys(&set))
    }

    /// The provider's endpoints, from discovery (fetched again every time until it answers,
    /// then kept).
    pub async fn discovery(&self) -> Result<Discovery, FetchError> {
        if let Some(discovery) = self.discovery.read().await.clone() {
            return Ok(discovery);
        }
        self.discover().await
    }

    async fn discover(&self) -> Result<Discovery, FetchError> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.issuer);
        let discovery: Discovery = self.get_json(&discovery_url).await?;
        *self.discovery.write().await = Some(discovery.clone());
        Ok(discovery)
    }

    /// The HTTP client that talks to the provider.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let unreachable = |source| FetchError::Unreachable {
            url: url.to_owned(),
            source,
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?;
        response
            .json()
            .await
            .map_err(|source| FetchError::Malformed {
                url: url.to_owned(),
                source,
            })
    }
}

/// The keys of `set` that can check a token's signature: asymmetric, with a key id, meant for
/// signatures (not encryption), and readable.
pub fn usable_keys(set: &JwkSet) -> HashMap<String, Key> {
    set.keys
        .iter()
        .filter(|jwk| is_signing_key(jwk))
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|alg| format!("{alg:?}").parse::<Algorithm>().ok());
            Some((kid, Key { key, algorithm }))
        })
        .collect()
}

fn is_signing_key(jwk: &Jwk) -> bool {
    use jsonwebtoken::jwk::PublicKeyUse;
    let asymmetric = matches!(
        jwk.algorithm,
        AlgorithmParameters::RSA(_)
            | AlgorithmParameters::EllipticCurve(_)
            | AlgorithmParameters::OctetKeyPair(_)
    );
    let for_signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    asymmetric && for_signing
}
