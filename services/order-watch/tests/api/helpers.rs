use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use order_watch::clock::Clock;
use order_watch::config::Thresholds;
use order_watch::startup::Ports;
use order_watch::{Application, Settings};
use platform::db::DatabaseConfig;
use prost::Message;
use serde_json::Value;
use testkit::database::TestDatabase;
use testkit::otlp::build;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The threshold the tests use for the machine stages.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);

/// A webhook receiver that keeps what it is sent.
#[derive(Clone, Default)]
pub struct Webhook {
    pub url: String,
    pub received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |Json(body): Json<Value>| {
                let store = store.clone();
                async move {
                    store.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, received }
    }

    /// Waits until `count` notifications arrived and returns them all.
    pub async fn expect(&self, count: usize) -> Vec<Value> {
        testkit::wait::until(
            &format!("{count} webhook notifications"),
            Duration::from_secs(10),
            || async {
                let received = self.received.lock().unwrap().clone();
                (received.len() >= count).then_some(received)
            },
        )
        .await
    }
}

pub struct TestApp {
    pub ports: Ports,
    pub clock: Clock,
    pub client: reqwest::Client,
    pub database: Arc<TestDatabase>,
    pub webhook: Webhook,
    cancel: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn settings(database: &TestDatabase, webhook: &Webhook) -> Settings {
    Settings {
        host: "127.0.0.1".into(),
        http_port: 0,
        otlp_grpc_port: 0,
        otlp_http_port: 0,
        database: DatabaseConfig::new(database.url()),
        thresholds: Thresholds {
            default: STUCK_AFTER,
            ..Thresholds::default()
        },
        retention: Duration::from_secs(30 * 86_400),
        webhook_url: Some(webhook.url.clone()),
        max_request_bytes: 1024 * 1024,
        detect_interval: Duration::from_secs(1),
        gauge_interval: Duration::from_secs(3600),
    }
}

/// order-watch on free ports with a fresh database, a manual clock and a webhook receiver.
pub async fn spawn_app() -> TestApp {
    let database = Arc::new(TestDatabase::create("watch").await);
    spawn_on(database, Clock::manual(Utc::now()), Webhook::start().await).await
}

/// Another order-watch on the same database and clock (a replica, or the same one restarted).
pub async fn spawn_on(database: Arc<TestDatabase>, clock: Clock, webhook: Webhook) -> TestApp {
    let cancel = CancellationToken::new();
    let app = Application::build(settings(&database, &webhook), clock.clone(), cancel.clone())
        .await
        .expect("order-watch builds");
    let ports = app.ports();
    let handle = tokio::spawn(app.run_until_stopped());
    TestApp {
        ports,
        clock,
        client: reqwest::Client::new(),
        database,
        webhook,
        cancel,
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.api)
    }

    pub fn otlp(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.otlp_http)
    }

    /// Stops the app the way SIGTERM would and waits until it has finished.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// Sends `request` over OTLP/HTTP protobuf and returns the HTTP status.
    pub async fn export(&self, request: &ExportTraceServiceRequest) -> reqwest::Response {
        self.client
            .post(self.otlp("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.api(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn journey(&self, order: Uuid) -> Value {
        let (status, body) = self.get(&format!("/api/orders/{order}/journey")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn stuck(&self) -> Vec<Value> {
        self.get("/api/orders/stuck")
            .await
            .1
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn incidents(&self) -> Vec<Value> {
        self.get("/api/incidents")
            .await
            .1
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Nanoseconds since the epoch of `time`.
pub fn nanos(time: DateTime<Utc>) -> u64 {
    time.timestamp_nanos_opt().unwrap() as u64
}

/// A span of `order` in `trace` ending at `end`, with extra attributes.
pub fn order_span(
    order: Uuid,
    trace: [u8; 16],
    id: u8,
    name: &str,
    end: DateTime<Utc>,
    extra: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> Span {
    let mut attributes = vec![build::string("order.id", order.to_string())];
    attributes.extend(extra);
    let duration = 1_000_000;
    build::span(
        trace,
        [id; 8],
        name,
        nanos(end) - duration,
        duration,
        attributes,
    )
}

/// A transition span moving `order` to `status` at `end`.
pub fn transition(order: Uuid, trace: [u8; 16], id: u8, status: &str, end: DateTime<Utc>) -> Span {
    order_span(
        order,
        trace,
        id,
        &format!("order {status}"),
        end,
        vec![build::string("order.status.to", status)],
    )
}
