use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use domain::held::{
    ChangedSince, HeldStatus, HeldStatuses, Republished, RepublishedMessage, STATUSES_PATH,
};
use domain::{OrderStatus, System};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use order_watch::auth::AuthConfig;
use order_watch::clock::Clock;
use order_watch::config::Thresholds;
use order_watch::reconcile::ReconcileConfig;
use order_watch::records::RecordsConfig;
use order_watch::startup::Ports;
use order_watch::webhook::WebhookUrl;
use order_watch::{Application, Settings};
use platform::db::DatabaseConfig;
use prost::Message;
use serde_json::Value;
use testkit::database::TestDatabase;
use testkit::otlp::build;
pub use testkit::webhook::Webhook;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The threshold the tests use for the machine stages.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);

/// How a stand-in system of record answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    /// With what it holds.
    Normally,
    /// With this HTTP status and no listing.
    Failing(u16),
    /// Not before order-watch gives up waiting.
    Hanging,
}

#[derive(Default)]
struct RecordsState {
    held: HashMap<(System, uuid::Uuid), HeldStatus>,
    answering: BTreeMap<System, Answering>,
    asked: BTreeMap<System, usize>,
    /// Republish requests, in the order they came.
    republished: Vec<(System, uuid::Uuid)>,
}

/// Shop's, CRM's and MES's status listings (`domain::held`: by ids and changed since) and
/// republish requests for order-watch's component tests, which drive order-watch's clock by hand
/// and need each system's answer (holding, moved on, failing, hanging) on cue. The same listing served by the real services is tested in e2e
/// (`e2e/tests/order_watch.rs`), where order-watch asks them.
#[derive(Clone)]
pub struct StandInRecords {
    base: String,
    state: Arc<Mutex<RecordsState>>,
}

impl StandInRecords {
    pub async fn start() -> Self {
        Self::serving(None).await
    }

    /// As [`StandInRecords::start`], serving https with `tls`.
    pub async fn start_tls(tls: &platform::tls::ServerTls) -> Self {
        Self::serving(Some(tls)).await
    }

    async fn serving(tls: Option<&platform::tls::ServerTls>) -> Self {
        let state = Arc::new(Mutex::new(RecordsState::default()));
        let app = axum::Router::new()
            .route(&format!("/{{system}}{STATUSES_PATH}"), get(listing))
            .route(
                "/{system}/api/orders/{order_id}/republish",
                axum::routing::post(republish),
            )
            .with_state(state.clone());
        let (listener, port) = platform::server::bind_with("127.0.0.1", 0, tls)
            .await
            .unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://127.0.0.1:{port}");
        tokio::spawn(platform::server::serve(
            listener,
            app,
            CancellationToken::new(),
        ));
        Self { base, state }
    }

    /// Settings pointing order-watch at these systems, asked with `timeout`.
    pub fn config(&self, timeout: Duration) -> RecordsConfig {
        RecordsConfig {
            urls: System::ALL
                .into_iter()
                .map(|s| (s, format!("{}/{}", self.base, path_of(s))))
                .collect(),
            timeout,
            ca: None,
            identity: None,
        }
    }

    /// `system` holds `order` in `status` since `since`.
    pub fn hold(&self, system: System, order: uuid::Uuid, status: &str, since: DateTime<Utc>) {
        let status: OrderStatus = status.parse().unwrap();
        self.state.lock().unwrap().held.insert(
            (system, order),
            HeldStatus {
                order_id: order,
                status,
                updated_at: since,
            },
        );
    }

    pub fn answer(&self, system: System, answering: Answering) {
        self.state
            .lock()
            .unwrap()
            .answering
            .insert(system, answering);
    }

    /// `system` no longer knows `order`.
    pub fn forget(&self, system: System, order: uuid::Uuid) {
        self.state.lock().unwrap().held.remove(&(system, order));
    }

    /// The republish requests received, in order.
    pub fn republished(&self) -> Vec<(System, uuid::Uuid)> {
        self.state.lock().unwrap().republished.clone()
    }

    /// How many listing requests `system` received.
    pub fn asked(&self, system: System) -> usize {
        self.state
            .lock()
            .unwrap()
            .asked
            .get(&system)
            .copied()
            .unwrap_or(0)
    }
}

fn path_of(system: System) -> &'static str {
    match system {
        System::Shop => "shop",
        System::Crm => "crm",
        System::Mes => "mes",
    }
}

async fn listing(
    State(state): State<Arc<Mutex<RecordsState>>>,
    Path(system): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let system = System::ALL
        .into_iter()
        .find(|s| path_of(*s) == system)
        .expect("a known system");
    let answering = {
        let mut state = state.lock().unwrap();
        *state.asked.entry(system).or_default() += 1;
        state
            .answering
            .get(&system)
            .copied()
            .unwrap_or(Answering::Normally)
    };
    match answering {
        Answering::Failing(status) => {
            return StatusCode::from_u16(status).unwrap().into_response();
        }
        Answering::Hanging => tokio::time::sleep(Duration::from_secs(3600)).await,
        Answering::Normally => {}
    }
    let state = state.lock().unwrap();
    if let Some(since) = query.get("changed_since") {
        let from = ChangedSince {
            since: since.parse().expect("an RFC 3339 time"),
            after: query
                .get("after")
                .map(|id| id.parse().expect("an order id")),
        };
        let limit: usize = query.get("limit").map_or(1000, |l| l.parse().unwrap());
        let mut orders: Vec<HeldStatus> = state
            .held
            .iter()
            .filter(|((holder, _), held)| {
                *holder == system
                    && (held.updated_at, held.order_id)
                        > (from.since, from.after.unwrap_or_else(uuid::Uuid::nil))
            })
            .map(|(_, held)| held.clone())
            .collect();
        orders.sort_by_key(|held| (held.updated_at, held.order_id));
        let next = (orders.len() > limit).then(|| ChangedSince::after(&orders[limit - 1]));
        orders.truncate(limit);
        return Json(HeldStatuses { orders, next }).into_response();
    }
    let orders = query
        .get("ids")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter_map(|id| id.parse().ok())
        .filter_map(|id| state.held.get(&(system, id)).cloned())
        .collect();
    Json(HeldStatuses { orders, next: None }).into_response()
}

/// A system's republish answer: one status event of the order it holds, as if sent again.
async fn republish(
    State(state): State<Arc<Mutex<RecordsState>>>,
    Path((system, order)): Path<(String, uuid::Uuid)>,
) -> Response {
    let system = System::ALL
        .into_iter()
        .find(|s| path_of(*s) == system)
        .expect("a known system");
    let mut state = state.lock().unwrap();
    if let Some(Answering::Failing(status)) = state.answering.get(&system) {
        return StatusCode::from_u16(*status).unwrap().into_response();
    }
    state.republished.push((system, order));
    let Some(held) = state.held.get(&(system, order)) else {
        let error =
            serde_json::json!({"error": {"code": "order_not_found", "message": "no such order"}});
        return (StatusCode::NOT_FOUND, Json(error)).into_response();
    };
    Json(Republished {
        order_id: order,
        messages: vec![RepublishedMessage {
            message_id: uuid::Uuid::now_v7(),
            kind: "order.status_changed".into(),
            routing_key: format!("order.status_changed.{}", held.status),
            published_at: Some(held.updated_at),
        }],
    })
    .into_response()
}

pub struct TestApp {
    pub ports: Ports,
    /// `https` when the app serves TLS.
    pub scheme: &'static str,
    pub clock: Clock,
    pub client: reqwest::Client,
    pub database: Arc<TestDatabase>,
    pub webhook: Webhook,
    pub records: StandInRecords,
    cancel: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// How long order-watch waits for a stand-in system of record here.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);
/// How often order-watch asks again about a stuck order here.
pub const RECONFIRM_INTERVAL: Duration = Duration::from_secs(600);
/// How often a replica looks for another's configuration change here.
pub const CONFIG_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

fn settings(
    database: &TestDatabase,
    webhook: &Webhook,
    records: &StandInRecords,
    auth: AuthConfig,
) -> Settings {
    Settings {
        thresholds: Thresholds {
            default: STUCK_AFTER,
            ..Thresholds::default()
        },
        webhook: Some(WebhookUrl::parse(&webhook.url).expect("the test webhook's URL")),
        config_reload_interval: CONFIG_RELOAD_INTERVAL,
        max_request_bytes: 1024 * 1024,
        gauge_interval: Duration::from_secs(3600),
        records: records.config(CONFIRM_TIMEOUT),
        reconfirm_interval: RECONFIRM_INTERVAL,
        auth,
        // Off unless a test turns it on: its listings would count as the stuck detector's.
        reconcile: ReconcileConfig {
            enabled: false,
            ..ReconcileConfig::default()
        },
        ..Settings::local(DatabaseConfig::new(database.url()))
    }
}

/// As [`spawn_app`], with `change` made to its settings first.
pub async fn spawn_app_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    let database = Arc::new(TestDatabase::create("watch").await);
    let webhook = Webhook::start().await;
    let records = StandInRecords::start().await;
    let mut settings = settings(&database, &webhook, &records, AuthConfig::Open);
    change(&mut settings);
    run_app(
        settings,
        database,
        Clock::manual(Utc::now()),
        webhook,
        records,
    )
    .await
}

/// order-watch on free ports with a fresh database, a manual clock, a webhook receiver and
/// stand-in systems of record that know no order until told.
pub async fn spawn_app() -> TestApp {
    spawn_app_with_auth(AuthConfig::Open).await
}

/// As [`spawn_app`], answering only whom `auth` lets in.
pub async fn spawn_app_with_auth(auth: AuthConfig) -> TestApp {
    let database = Arc::new(TestDatabase::create("watch").await);
    spawn_with(
        database,
        Clock::manual(Utc::now()),
        Webhook::start().await,
        StandInRecords::start().await,
        auth,
    )
    .await
}

/// Another order-watch on the same database, clock and systems (a replica, or the same one
/// restarted).
pub async fn spawn_on(
    database: Arc<TestDatabase>,
    clock: Clock,
    webhook: Webhook,
    records: StandInRecords,
) -> TestApp {
    spawn_with(database, clock, webhook, records, AuthConfig::Open).await
}

/// As [`spawn_app`], serving TLS with `certificates`' trusted server certificate; with
/// `client_certificates`, the OTLP receivers ask for client certificates signed by their CA.
/// The app's client trusts that CA and presents no certificate.
pub async fn spawn_app_with_tls(
    certificates: &testkit::tls::Certificates,
    client_certificates: bool,
) -> TestApp {
    use platform::tls::{CertifiedKeyFiles, PemFile};
    let trusted = &certificates.trusted;
    let mut app = spawn_app_with(|settings| {
        settings.tls = Some(CertifiedKeyFiles {
            cert: PemFile::new("ORDER_WATCH_TLS_CERT", &trusted.server.cert),
            key: PemFile::new("ORDER_WATCH_TLS_KEY", &trusted.server.key),
        });
        settings.otlp_client_ca =
            client_certificates.then(|| PemFile::new("ORDER_WATCH_OTLP_CLIENT_CA", &trusted.ca));
    })
    .await;
    app.scheme = "https";
    app.client = testkit::tls::Certificates::client_trusting(&trusted.ca);
    app
}

/// How long the systems may disagree in the reconciliation tests, and their rounds' interval.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(60);
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// As [`spawn_app`], reconciling the stand-in systems every [`RECONCILE_INTERVAL`] of the manual
/// clock, listing disagreements after [`RECONCILE_AFTER`].
pub async fn spawn_reconciling_app() -> TestApp {
    spawn_app_with(|settings| {
        settings.reconcile = ReconcileConfig {
            interval: RECONCILE_INTERVAL,
            after: RECONCILE_AFTER,
            recheck_interval: Duration::from_secs(10),
            ..ReconcileConfig::default()
        };
    })
    .await
}

async fn spawn_with(
    database: Arc<TestDatabase>,
    clock: Clock,
    webhook: Webhook,
    records: StandInRecords,
    auth: AuthConfig,
) -> TestApp {
    let settings = settings(&database, &webhook, &records, auth);
    run_app(settings, database, clock, webhook, records).await
}

async fn run_app(
    settings: Settings,
    database: Arc<TestDatabase>,
    clock: Clock,
    webhook: Webhook,
    records: StandInRecords,
) -> TestApp {
    let cancel = CancellationToken::new();
    let app = Application::build(settings, clock.clone(), cancel.clone())
        .await
        .expect("order-watch builds");
    let ports = app.ports();
    let handle = tokio::spawn(app.run_until_stopped());
    TestApp {
        ports,
        scheme: "http",
        clock,
        client: reqwest::Client::new(),
        database,
        webhook,
        records,
        cancel,
        handle: Some(handle),
    }
}

impl TestApp {
    /// A replica of this order-watch: the same database, clock, webhook and systems.
    pub async fn replica(&self) -> TestApp {
        spawn_on(
            self.database.clone(),
            self.clock.clone(),
            self.webhook.clone(),
            self.records.clone(),
        )
        .await
    }
}

impl TestApp {
    pub fn api(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.ports.api)
    }

    pub fn otlp(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.ports.otlp_http)
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
        self.call(reqwest::Method::GET, path, None, None).await
    }

    /// `method` on `path` of the API, with `token` as bearer and `body` as JSON when given;
    /// answers the status and the JSON body (`null` when there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.api(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `PATCH /api/config` with `body`, as anyone (an open order-watch).
    pub async fn patch_config(&self, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, "/api/config", None, Some(&body))
            .await
    }

    /// `POST` of `path` without a body, as anyone.
    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, None, None).await
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

    /// Waits until exactly `count` orders are stuck and returns them.
    pub async fn until_stuck(&self, count: usize) -> Vec<Value> {
        testkit::wait::until(
            &format!("{count} stuck orders"),
            Duration::from_secs(10),
            || async {
                let stuck = self.stuck().await;
                (stuck.len() == count).then_some(stuck)
            },
        )
        .await
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

/// A span of `order` ending at `end` that says what it did to the order (`order.activity`), of
/// OTLP kind `kind`.
pub fn activity_span(
    order: Uuid,
    trace: [u8; 16],
    id: u8,
    name: &str,
    end: DateTime<Utc>,
    activity: &str,
    kind: i32,
) -> Span {
    let mut span = order_span(
        order,
        trace,
        id,
        name,
        end,
        vec![build::string("order.activity", activity)],
    );
    span.kind = kind;
    span
}

/// A customer's status check of `order` at `end`: a SERVER span that only observes it.
pub fn status_check(order: Uuid, trace: [u8; 16], id: u8, end: DateTime<Utc>) -> Span {
    activity_span(
        order,
        trace,
        id,
        "GET /api/orders/{order_id}",
        end,
        "observation",
        2,
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
