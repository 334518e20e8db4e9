//! order-watch as a process beside a [`System`], fed by nothing but the services' own OTLP
//! export and asking the services themselves before it calls an order stuck: the set-up
//! `scripts/run` gives a new user.
//!
//! The services export to the system's OTLP capture, which passes their traces on to
//! order-watch as a collector would ([`testkit::otlp::OtlpCapture::forward_to`]): so order-watch
//! can start after the services whose addresses it needs, and a test can lose one service's
//! spans on purpose.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::database::TestDatabase;
use testkit::oidc::Issuer;
use testkit::process::{ServiceProcess, free_port};
use uuid::Uuid;

use crate::System;

pub struct Watch {
    pub process: ServiceProcess,
    /// order-watch's OTLP/HTTP endpoint.
    pub otlp_endpoint: String,
    pub client: reqwest::Client,
    /// Who reads the API when order-watch is behind the identity provider ([`Watch::read_as`]).
    reader: Option<Reader>,
    _database: TestDatabase,
    _config: tempfile::NamedTempFile,
}

/// A person's token for order-watch's API, renewed before it expires (the test realm's tokens
/// live five minutes).
struct Reader {
    issuer: Issuer,
    user: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl Reader {
    const RENEW_AFTER: Duration = Duration::from_secs(240);

    async fn token(&self) -> String {
        let mut token = self.token.lock().await;
        if let Some((current, at)) = token.as_ref()
            && at.elapsed() < Self::RENEW_AFTER
        {
            return current.clone();
        }
        let fresh = self
            .issuer
            .password_token("hallmark-cli", &self.user, &self.user)
            .await
            .unwrap_or_else(|err| panic!("a token for {}: {err:#}", self.user));
        *token = Some((fresh.clone(), Instant::now()));
        fresh
    }
}

impl Watch {
    /// order-watch watching `system`, with `config` as its TOML configuration file (stuck
    /// thresholds) and `env` on top of what it needs to run; it receives the system's traces
    /// from now on.
    pub async fn watching(system: &System, config: &str, env: &[(&str, &str)]) -> Self {
        let watch = Self::alongside(system, config, env).await;
        system.otlp.forward_to(&watch.otlp_endpoint);
        watch
    }

    /// order-watch asking `system`'s services, as [`Watch::watching`], but fed by whatever the
    /// caller points at [`Watch::otlp_endpoint`] (a collector).
    pub async fn alongside(system: &System, config: &str, env: &[(&str, &str)]) -> Self {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend([
            ("ORDER_WATCH_SHOP_URL".to_owned(), system.shop.url()),
            ("ORDER_WATCH_CRM_URL".to_owned(), system.crm.url()),
            ("ORDER_WATCH_MES_URL".to_owned(), system.mes.url()),
        ]);
        Self::start_choosing(config, &env, free_port).await
    }

    /// The port of its OTLP/HTTP receiver.
    pub fn otlp_port(&self) -> u16 {
        self.process.port_of("ORDER_WATCH_OTLP_HTTP_PORT")
    }

    /// order-watch alone, on the ports `choose` gives: its API's first, then its OTLP/HTTP port.
    pub async fn start_choosing(
        config: &str,
        env: &[(String, String)],
        choose: impl FnMut() -> u16,
    ) -> Self {
        let database = TestDatabase::create("order_watch").await;
        let config_file = tempfile::NamedTempFile::new().expect("a config file");
        std::fs::write(config_file.path(), config).expect("the config file is written");
        let mut all: Vec<(String, String)> = [
            ("ORDER_WATCH_DATABASE_URL", database.url().to_owned()),
            // Not used here: port 0 lets order-watch pick a free one itself.
            ("ORDER_WATCH_OTLP_GRPC_PORT", "0".to_owned()),
            (
                "ORDER_WATCH_CONFIG",
                config_file.path().display().to_string(),
            ),
            ("ORDER_WATCH_GAUGE_INTERVAL", "1s".to_owned()),
            ("OTEL_TRACES_EXPORTER", "none".to_owned()),
            ("OTEL_METRICS_EXPORTER", "none".to_owned()),
            ("HALLMARK_ENV", "test".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        all.extend(env.iter().cloned());
        let process = ServiceProcess::start_choosing(
            "order-watch",
            &["ORDER_WATCH_PORT", "ORDER_WATCH_OTLP_HTTP_PORT"],
            &all,
            choose,
        )
        .await;
        let otlp_http = process.port_of("ORDER_WATCH_OTLP_HTTP_PORT");
        Self {
            process,
            otlp_endpoint: format!("http://127.0.0.1:{otlp_http}"),
            client: reqwest::Client::new(),
            reader: None,
            _database: database,
            _config: config_file,
        }
    }

    /// Reads the API from now on as demo user `user` (password equal to the name) of `issuer`:
    /// for an order-watch started with `ORDER_WATCH_OIDC_ISSUER`.
    pub fn read_as(&mut self, issuer: Issuer, user: &str) {
        self.reader = Some(Reader {
            issuer,
            user: user.to_owned(),
            token: tokio::sync::Mutex::new(None),
        });
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path).await
    }

    /// `POST` of `path` without a body.
    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path).await
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.process.url()));
        if let Some(reader) = &self.reader {
            request = request.bearer_auth(reader.token().await);
        }
        let response = request.send().await.expect("order-watch answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The order's journey, once order-watch has one.
    pub async fn journey(&self, id: Uuid) -> Option<Value> {
        let (status, journey) = self.get(&format!("/api/orders/{id}/journey")).await;
        (status == 200).then_some(journey)
    }

    pub async fn stuck(&self) -> Vec<Value> {
        let (status, stuck) = self.get("/api/orders/stuck").await;
        assert_eq!(status, 200, "{stuck}");
        stuck.as_array().cloned().unwrap_or_default()
    }

    /// The order among the stuck ones, if it is.
    pub async fn stuck_order(&self, id: Uuid) -> Option<Value> {
        self.stuck()
            .await
            .into_iter()
            .find(|o| o["order_id"] == id.to_string())
    }

    /// Waits until the order is flagged stuck, and returns it as the stuck list shows it.
    pub async fn until_stuck(&self, id: Uuid) -> Value {
        testkit::wait::until(
            &format!("order {id} flagged stuck"),
            crate::PATIENCE,
            || self.stuck_order(id),
        )
        .await
    }

    pub async fn incidents_of(&self, id: Uuid) -> Vec<Value> {
        let (status, incidents) = self.get("/api/incidents").await;
        assert_eq!(status, 200, "{incidents}");
        incidents
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["order_id"] == id.to_string())
            .cloned()
            .collect()
    }

    /// What reconciliation says now: its figures and the disagreements past the threshold
    /// (every disagreement with `all`).
    pub async fn reconciliation(&self, all: bool) -> Value {
        let (status, view) = self.get(&format!("/api/reconciliation?all={all}")).await;
        assert_eq!(status, 200, "{view}");
        view
    }

    /// Waits until the order is listed as disagreeing past the threshold, and returns it as
    /// listed.
    pub async fn until_listed(&self, id: Uuid) -> Value {
        testkit::wait::until(
            &format!("order {id} listed as disagreeing"),
            crate::PATIENCE,
            || async {
                let view = self.reconciliation(false).await;
                view["disagreements"]
                    .as_array()?
                    .iter()
                    .find(|d| d["order_id"] == id.to_string())
                    .cloned()
            },
        )
        .await
    }

    /// Waits until reconciliation has compared the order and every holder agrees on `status`,
    /// with no disagreement left anywhere.
    pub async fn until_agreed(&self, id: Uuid, status: &str) {
        testkit::wait::until(
            &format!("the systems to agree on order {id} being {status}"),
            crate::PATIENCE,
            || async {
                let view = self.reconciliation(true).await;
                let clear = view["disagreements"].as_array()?.is_empty()
                    && view["tracked"] == view["agreeing"]
                    && view["tracked"].as_u64()? > 0;
                let journey = self.journey(id).await?;
                (clear && journey["status"] == status).then_some(())
            },
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.process.url()))
            .send()
            .await
            .expect("order-watch answers")
            .text()
            .await
            .unwrap()
    }

    /// The sum of the samples of metric `name` whose labels include every one of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        samples(&self.metrics().await, name, labels).sum()
    }
}

/// The values of the samples of metric `name` in Prometheus text `text` whose labels include
/// every one of `labels` (in whatever order the exporter wrote them).
pub fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let wanted = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
}
