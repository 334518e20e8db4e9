//! The systems of record: Shop's, CRM's and MES's own status of an order, which order-watch
//! asks before it calls an order stuck, and whose recent changes reconciliation compares. Spans
//! get lost (a killed process loses its export queue); a system's own record of an order does
//! not. The listing each service serves, and the republish request reconciliation's repair
//! makes, are the contract in [`domain::held`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::OrderStatus;
use domain::System;
use domain::held::{
    ChangedSince, HeldStatuses, MAX_IDS, Republished, STATUSES_PATH, republish_path,
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Largest listing answer read (200 orders take about 20 KiB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Where the systems of record are and how long to wait for them.
#[derive(Debug, Clone)]
pub struct RecordsConfig {
    /// Base URL of each system's API (`http://shop-api:8081`); a system without one cannot be
    /// asked, and orders waiting on it are flagged unconfirmed.
    pub urls: BTreeMap<System, String>,
    /// Longest wait for one listing answer.
    pub timeout: Duration,
    /// The CA certificates (a PEM file) the systems' https certificates are checked against,
    /// instead of the built-in roots: for services that serve TLS with a CA of their own.
    pub ca: Option<platform::tls::PemFile>,
    /// order-watch's own client at the identity provider, whose tokens (role `status-reader`)
    /// the systems' listings require; without one order-watch asks without a token, which only
    /// open (development) services answer.
    pub identity: Option<access::ClientConfig>,
}

impl RecordsConfig {
    /// The variable that configures `system`'s address.
    pub fn variable(system: System) -> &'static str {
        match system {
            System::Shop => "ORDER_WATCH_SHOP_URL",
            System::Crm => "ORDER_WATCH_CRM_URL",
            System::Mes => "ORDER_WATCH_MES_URL",
        }
    }
}

/// What one system holds of the orders it was asked about: those it does not know are absent.
pub type Held = HashMap<Uuid, (OrderStatus, DateTime<Utc>)>;

/// Why a system could not say what it holds.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    #[error("no address is configured for it ({0})")]
    NotConfigured(&'static str),
    #[error("it did not answer within {0:?}")]
    Timeout(Duration),
    #[error("it cannot be reached")]
    Unreachable(#[source] Arc<reqwest::Error>),
    #[error("it answered HTTP {0}")]
    Refused(u16),
    /// A request it understood and turned down, with its reason (the JSON error body).
    #[error("it answered HTTP {status} {code}: {message}")]
    Declined {
        status: u16,
        code: String,
        message: String,
    },
    #[error("no token for order-watch's service identity")]
    NoToken(#[source] Arc<access::client::TokenError>),
    #[error("its answer is longer than {MAX_ANSWER_BYTES} bytes")]
    TooLong,
    #[error("its answer is not a status listing")]
    Malformed(#[source] Arc<serde_json::Error>),
}

/// The client order-watch asks the systems of record with.
#[derive(Debug, Clone)]
pub struct Records {
    client: reqwest::Client,
    config: RecordsConfig,
    token: Option<Arc<access::ServiceToken>>,
}

impl Records {
    /// The client for `config`; an error when its CA file cannot be used.
    pub fn new(config: RecordsConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut builder = reqwest::Client::builder().timeout(config.timeout);
        if let Some(ca) = &config.ca {
            builder = builder.tls_built_in_root_certs(false);
            for certificate in ca.certificates()? {
                let certificate = reqwest::Certificate::from_der(&certificate)
                    .with_context(|| format!("{}: a certificate cannot be used", ca.setting))?;
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .context("cannot build the client for the systems of record")?;
        let token = config
            .identity
            .clone()
            .map(|identity| Arc::new(access::ServiceToken::new(identity)));
        Ok(Self {
            client,
            config,
            token,
        })
    }

    /// What `system` holds of `ids`, asked [`MAX_IDS`] at a time.
    pub async fn ask(&self, system: System, ids: &[Uuid]) -> Result<Held, AskError> {
        let base = self.url(system)?;
        let mut held = Held::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS) {
            let list: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            let url = format!("{base}{STATUSES_PATH}?ids={}", list.join(","));
            let answer = self.listing(&url).await?;
            held.extend(answer.orders.into_iter().filter_map(|o| {
                chunk
                    .contains(&o.order_id)
                    .then_some((o.order_id, (o.status, o.updated_at)))
            }));
        }
        Ok(held)
    }

    /// One page of `system`'s changes from `from`, at most `limit` orders.
    pub async fn changed(
        &self,
        system: System,
        from: ChangedSince,
        limit: usize,
    ) -> Result<HeldStatuses, AskError> {
        let url = format!("{}{STATUSES_PATH}?{}", self.url(system)?, from.query(limit));
        self.call(reqwest::Method::GET, &url, false).await
    }

    /// Asks `system` to send again the messages by which it told the others about `order_id`
    /// (its latest status event and the order's introduction); a refusal with a reason (404
    /// for an order it does not know, 409 when its outbox holds none any more) is
    /// [`AskError::Declined`].
    pub async fn republish(&self, system: System, order_id: Uuid) -> Result<Republished, AskError> {
        let url = format!("{}{}", self.url(system)?, republish_path(order_id));
        self.call(reqwest::Method::POST, &url, true).await
    }

    /// The base URL of `system`'s API.
    pub fn url(&self, system: System) -> Result<&str, AskError> {
        self.config
            .urls
            .get(&system)
            .map(String::as_str)
            .ok_or(AskError::NotConfigured(RecordsConfig::variable(system)))
    }

    /// Sends the request `build` makes with this client, with order-watch's token when it has
    /// an identity ([`access::ServiceToken::send`]).
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AskError> {
        let request = || build(&self.client);
        match &self.token {
            Some(token) => token.send(request).await.map_err(|err| match err {
                access::client::SendError::Http(err) => self.failed(err),
                access::client::SendError::Token(err) => AskError::NoToken(Arc::new(err)),
            }),
            None => request().send().await.map_err(|err| self.failed(err)),
        }
    }

    fn failed(&self, err: reqwest::Error) -> AskError {
        if err.is_timeout() {
            AskError::Timeout(self.config.timeout)
        } else {
            AskError::Unreachable(Arc::new(err.without_url()))
        }
    }

    async fn listing(&self, url: &str) -> Result<HeldStatuses, AskError> {
        self.call(reqwest::Method::GET, url, false).await
    }

    /// One request, its answer read as JSON. With `reasons`, a 4xx answer's JSON error is
    /// [`AskError::Declined`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: &str,
        reasons: bool,
    ) -> Result<T, AskError> {
        let mut response = self
            .send(|client| {
                client
                    .request(method.clone(), url)
                    .headers(platform::http::outgoing_headers())
            })
            .await?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| self.failed(err))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(AskError::TooLong);
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(match declined(status, &body) {
                Some(declined) if reasons => declined,
                _ => AskError::Refused(status.as_u16()),
            });
        }
        serde_json::from_slice(&body).map_err(|err| AskError::Malformed(Arc::new(err)))
    }
}

/// A 4xx answer's reason, from the JSON error body every Hallmark API answers with.
fn declined(status: reqwest::StatusCode, body: &[u8]) -> Option<AskError> {
    if !status.is_client_error() {
        return None;
    }
    let error: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |key: &str| error["error"][key].as_str().map(str::to_owned);
    Some(AskError::Declined {
        status: status.as_u16(),
        code: text("code")?,
        message: text("message").unwrap_or_default(),
    })
}
