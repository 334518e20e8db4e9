//! The systems of record: Shop's, CRM's and MES's own status of an order, which order-watch
//! asks before it calls an order stuck. Spans get lost (a killed process loses its export
//! queue); a system's own record of an order does not. The listing each service serves is the
//! contract in [`domain::held`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::OrderStatus;
use domain::System;
use domain::held::{HeldStatuses, MAX_IDS, STATUSES_PATH};
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
        let mut response = self
            .send(|client| client.get(url).headers(platform::http::outgoing_headers()))
            .await?;
        if !response.status().is_success() {
            return Err(AskError::Refused(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| self.failed(err))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(AskError::TooLong);
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|err| AskError::Malformed(Arc::new(err)))
    }
}
