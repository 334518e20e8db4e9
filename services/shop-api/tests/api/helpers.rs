use std::time::Duration;

use access::{AccessConfig, IssuerConfig};
use domain::System;
use lapin::options::BasicGetOptions;
use messaging::{BrokerConfig, Party};
use platform::db::DatabaseConfig;
use platform::storage::StorageConfig;
use serde_json::{Value, json};
use shop_api::{Application, PartnerLimits, Rate, Settings};
use sqlx::PgPool;
use testkit::database::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Small enough to test the size limit without big uploads.
pub const MAX_MODEL_BYTES: usize = 512 * 1024;
/// The key the test app makes order tokens with.
pub const ORDER_TOKEN_KEY: &str = "test-order-token-key";

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    /// The test's namespace with the administrator's account; Shop connects as its own.
    pub broker: BrokerConfig,
    /// Where `spawn_app()` has Shop store models; empty with any other storage.
    pub storage: tempfile::TempDir,
    pub client: reqwest::Client,
    /// Whose tokens it accepts (open unless spawned with `spawn_app_with_access`).
    pub access: AccessConfig,
    cancel: CancellationToken,
    _database: TestDatabase,
    _broker_cleanup: testkit::broker::Cleanup,
}

/// Shop on a free port with a fresh database, its own broker namespace and storage directory.
pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Filesystem {
        root: dir.path().to_owned(),
    };
    spawn(storage, dir, None).await
}

/// Shop as with `spawn_app()`, but storing models in `storage`, such as a `testkit::s3` server.
pub async fn spawn_app_with_storage(storage: StorageConfig) -> TestApp {
    spawn(storage, tempfile::tempdir().unwrap(), None).await
}

/// Shop as with `spawn_app()`, serving its API over TLS with `certificates`' trusted server
/// certificate (`HALLMARK_TLS_CERT`, `HALLMARK_TLS_KEY`); its client trusts that CA.
pub async fn spawn_app_with_tls(certificates: &testkit::tls::Certificates) -> TestApp {
    use platform::tls::{CertifiedKeyFiles, PemFile};
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Filesystem {
        root: dir.path().to_owned(),
    };
    let server = &certificates.trusted.server;
    let tls = CertifiedKeyFiles {
        cert: PemFile::new("HALLMARK_TLS_CERT", &server.cert),
        key: PemFile::new("HALLMARK_TLS_KEY", &server.key),
    };
    let mut app = spawn(storage, dir, Some(tls)).await;
    app.client = testkit::tls::Certificates::client_trusting(&certificates.trusted.ca);
    app
}

/// The partners' rates of the test apps unless a test sets its own: high enough never to get in
/// the way.
pub fn generous_limits() -> PartnerLimits {
    PartnerLimits {
        default: Rate::parse("1000/1m").unwrap(),
        per_partner: Default::default(),
    }
}

/// Two Shop replicas with `limits` on one database, broker namespace and storage: the first as
/// the test app, the address of the second (which stops with the first).
pub async fn spawn_two_replicas(limits: PartnerLimits) -> (TestApp, String) {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Filesystem {
        root: dir.path().to_owned(),
    };
    let app = spawn_with(
        storage.clone(),
        dir,
        None,
        limits.clone(),
        AccessConfig::Open,
    )
    .await;
    let settings = Settings {
        port: 0,
        partner_limits: limits,
        ..settings_of(&app, storage, None)
    };
    let second = Application::build(settings, app.cancel.child_token())
        .await
        .expect("the second replica builds");
    let address = format!("http://127.0.0.1:{}", second.port());
    tokio::spawn(second.run_until_stopped());
    (app, address)
}

/// The settings `app` runs with (its database and broker namespace), on a new port.
fn settings_of(
    app: &TestApp,
    storage: StorageConfig,
    tls: Option<platform::tls::CertifiedKeyFiles>,
) -> Settings {
    Settings {
        host: "127.0.0.1".into(),
        tls,
        port: 0,
        database: DatabaseConfig::new(app._database.url()),
        broker: testkit::broker::as_party(&app.broker, Party::Service(System::Shop)),
        storage,
        max_model_bytes: MAX_MODEL_BYTES,
        order_token_key: ORDER_TOKEN_KEY.to_owned().into(),
        partner_limits: generous_limits(),
        access: app.access.clone(),
    }
}

/// Shop as with `spawn_app()`, accepting the tokens of `issuer` (audience `shop-api`) as a
/// deployment does: partners and staff must authenticate.
pub async fn spawn_app_with_access(issuer: &testkit::oidc::Issuer) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Filesystem {
        root: dir.path().to_owned(),
    };
    let access = AccessConfig::Oidc(IssuerConfig {
        issuer: issuer.url().to_owned(),
        audience: "shop-api".into(),
        roles_claim: "realm_access.roles".into(),
        leeway: Duration::from_secs(5),
    });
    spawn_with(storage, dir, None, generous_limits(), access).await
}

async fn spawn(
    storage: StorageConfig,
    dir: tempfile::TempDir,
    tls: Option<platform::tls::CertifiedKeyFiles>,
) -> TestApp {
    spawn_with(storage, dir, tls, generous_limits(), AccessConfig::Open).await
}

async fn spawn_with(
    storage: StorageConfig,
    dir: tempfile::TempDir,
    tls: Option<platform::tls::CertifiedKeyFiles>,
    partner_limits: PartnerLimits,
    access: AccessConfig,
) -> TestApp {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let database = TestDatabase::create("shop").await;
    let broker = testkit::broker::isolated();
    // Shop declares only its own queue: the others' must exist for its messages to be routed.
    testkit::broker::declare_everything(&broker).await;
    let settings = Settings {
        host: "127.0.0.1".into(),
        tls,
        port: 0,
        database: DatabaseConfig::new(database.url()),
        broker: testkit::broker::as_party(&broker, Party::Service(System::Shop)),
        storage,
        max_model_bytes: MAX_MODEL_BYTES,
        order_token_key: ORDER_TOKEN_KEY.to_owned().into(),
        partner_limits,
        access: access.clone(),
    };
    let cancel = CancellationToken::new();
    let app = Application::build(settings, cancel.clone())
        .await
        .expect("shop builds");
    let address = format!("{scheme}://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        pool: database.connect().await,
        broker: broker.clone(),
        storage: dir,
        client: reqwest::Client::new(),
        access,
        cancel,
        _database: database,
        _broker_cleanup: testkit::broker::cleanup_on_drop(&broker),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn order_json() -> Value {
    json!({
        "customer": {"name": "Jane Doe", "email": "Jane.Doe@Example.com", "phone": "+49 170 1234567"},
        "material": "gold_585",
        "size": "17",
        "comment": "engrave: forever",
        "external_order_id": "PO-2026-000123",
    })
}

/// One part of a multipart upload.
pub enum Part {
    Order(String),
    Model(&'static str, Vec<u8>),
    Other(&'static str),
}

impl TestApp {
    pub async fn post_order(&self, parts: Vec<Part>, key: Option<&str>) -> reqwest::Response {
        self.post_order_to(&self.address, parts, key).await
    }

    /// [`TestApp::post_order`] to the Shop at `address` (another replica).
    pub async fn post_order_to(
        &self,
        address: &str,
        parts: Vec<Part>,
        key: Option<&str>,
    ) -> reqwest::Response {
        self.send_order(address, parts, key, None).await
    }

    /// [`TestApp::post_order`] with `Authorization: Bearer {token}` (a partner's client).
    pub async fn post_order_as(&self, token: &str, order: Value) -> reqwest::Response {
        let parts = vec![
            Part::Order(order.to_string()),
            Part::Model("ring.stl", testkit::fixtures::stl("torus.STL")),
        ];
        self.send_order(&self.address, parts, None, Some(token))
            .await
    }

    async fn send_order(
        &self,
        address: &str,
        parts: Vec<Part>,
        key: Option<&str>,
        bearer: Option<&str>,
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for part in parts {
            form = match part {
                Part::Order(text) => form.part(
                    "order",
                    reqwest::multipart::Part::text(text)
                        .mime_str("application/json")
                        .unwrap(),
                ),
                Part::Model(name, bytes) => form.part(
                    "model",
                    reqwest::multipart::Part::bytes(bytes).file_name(name),
                ),
                Part::Other(name) => form.text(name, "x"),
            };
        }
        let mut request = self
            .client
            .post(format!("{address}/api/orders"))
            .multipart(form);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("shop answers")
    }

    /// A valid order with the torus model.
    pub async fn place_ring(&self, key: Option<&str>) -> reqwest::Response {
        self.post_order(
            vec![
                Part::Order(order_json().to_string()),
                Part::Model("ring.stl", testkit::fixtures::stl("torus.STL")),
            ],
            key,
        )
        .await
    }

    /// The token Shop gave (or would give) the customer of `id`.
    pub fn token(&self, id: Uuid) -> String {
        shop_api::OrderTokens::new(ORDER_TOKEN_KEY.to_owned().into()).issue(id)
    }

    /// `GET` of the order, as its customer (with its token) when `id` is an order id.
    pub async fn get_order(&self, id: &str) -> reqwest::Response {
        let mut request = self.client.get(format!("{}/api/orders/{id}", self.address));
        if let Ok(order) = id.parse() {
            request = request.bearer_auth(self.token(order));
        }
        request.send().await.unwrap()
    }

    /// A customer's decision (`confirm` or `cancel`) on the order, with its token.
    pub async fn decide(&self, id: Uuid, decision: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/orders/{id}/{decision}", self.address))
            .bearer_auth(self.token(id))
            .send()
            .await
            .unwrap()
    }

    pub async fn confirm(&self, id: Uuid) -> reqwest::Response {
        self.decide(id, "confirm").await
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The next message waiting in logical queue `queue` of this test's namespace.
    pub async fn next_message(&self, queue: &str) -> Option<(String, Value)> {
        let broker = messaging::Broker::new(self.broker.clone(), "shop-api-test");
        let channel = broker.channel().await.unwrap();
        let name = broker.names().queue(queue);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(message) = channel
                .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
                return Some((message.delivery.routing_key.to_string(), body));
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `error.code` of a JSON error body.
pub async fn error_code(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}
