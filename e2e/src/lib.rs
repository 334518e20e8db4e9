//! The whole Hallmark system for one test: fresh databases, its own broker namespace and storage
//! directory, an OTLP receiver, and Shop, CRM and MES running as real processes.

pub mod checker;
pub mod stack;
pub mod watch;

use std::time::Duration;

use messaging::dead_letters;
use messaging::{Broker, BrokerConfig, Party};
use serde_json::{Value, json};
use testkit::database::TestDatabase;
use testkit::otlp::OtlpCapture;
use testkit::process::{ServiceProcess, binary};
use uuid::Uuid;

/// How long a test waits for an order to reach a status.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct System {
    /// Prefix of this system's exchanges and queues.
    pub namespace: String,
    /// The services' broker settings with the administrator's account, for looking at their
    /// queues; each service connects with its own ([`Service::party`]).
    pub broker: BrokerConfig,
    pub shop: ServiceProcess,
    pub crm: ServiceProcess,
    pub mes: ServiceProcess,
    pub otlp: OtlpCapture,
    pub client: reqwest::Client,
    /// The customer's token of each order placed through this system, for Shop's order URLs.
    tokens: std::sync::Mutex<std::collections::HashMap<Uuid, String>>,
    /// A person's token for every other URL, when the services take the identity provider's
    /// tokens ([`System::act_as`]).
    staff: std::sync::Mutex<Option<String>>,
    /// What every service is started with (its database URL and broker account come on top).
    env: Vec<(String, String)>,
    /// Shop's, CRM's and MES's, in that order.
    databases: [TestDatabase; 3],
    _storage: tempfile::TempDir,
    /// Last, so the processes are gone first.
    _broker_cleanup: testkit::broker::Cleanup,
}

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Shop,
    Crm,
    Mes,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Shop, Service::Crm, Service::Mes];

    pub fn binary(self) -> &'static str {
        match self {
            Self::Shop => "shop-api",
            Self::Crm => "crm-api",
            Self::Mes => "mes-api",
        }
    }

    fn port_variable(self) -> &'static str {
        match self {
            Self::Shop => "SHOP_PORT",
            Self::Crm => "CRM_PORT",
            Self::Mes => "MES_PORT",
        }
    }

    fn database_variable(self) -> &'static str {
        match self {
            Self::Shop => "SHOP_DATABASE_URL",
            Self::Crm => "CRM_DATABASE_URL",
            Self::Mes => "MES_DATABASE_URL",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn system(self) -> domain::System {
        match self {
            Self::Shop => domain::System::Shop,
            Self::Crm => domain::System::Crm,
            Self::Mes => domain::System::Mes,
        }
    }

    /// Who it is on the broker: it connects with this party's own account.
    pub fn party(self) -> Party {
        Party::Service(self.system())
    }
}

/// A placed order and the answer to placing it.
pub struct Placed {
    pub id: Uuid,
    pub response: Value,
    /// The customer's token for the order (`customer_token`), which Shop wants for reading or
    /// deciding it.
    pub token: String,
    /// The `traceresponse` header: `00-{trace_id}-{span_id}-{flags}`.
    pub trace_id: String,
}

impl System {
    /// Starts everything; `extra_env` is given to every service (e.g. masking rules, or a
    /// crash point: `messaging::crash`).
    pub async fn start_with(extra_env: &[(&str, &str)]) -> Self {
        let broker = testkit::broker::isolated();
        let storage = tempfile::tempdir().expect("a storage directory");
        let otlp = OtlpCapture::start().await;
        let mut env = otlp.env();
        env.push((
            "HALLMARK_STORAGE_DIR".into(),
            storage.path().display().to_string(),
        ));
        env.push(("HALLMARK_ENV".into(), "test".into()));
        env.push((
            "MES_CALC_BIN".into(),
            binary("mes-calc").display().to_string(),
        ));
        env.push(("MES_CALC_RETRY_DELAY".into(), "200ms".into()));
        env.push(("RUST_LOG".into(), "info".into()));
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );

        let databases = [
            TestDatabase::create("shop").await,
            TestDatabase::create("crm").await,
            TestDatabase::create("mes").await,
        ];
        let start = |service: Service| {
            let env = service_env(&env, &broker, &databases, service);
            async move { ServiceProcess::start(service.binary(), service.port_variable(), &env).await }
        };
        let mes = start(Service::Mes).await;
        let crm = start(Service::Crm).await;
        let shop = start(Service::Shop).await;
        let broker_config = broker.clone();
        Self {
            namespace: broker.namespace.clone(),
            broker,
            shop,
            crm,
            mes,
            otlp,
            client: reqwest::Client::new(),
            tokens: Default::default(),
            staff: Default::default(),
            env,
            databases,
            _storage: storage,
            _broker_cleanup: testkit::broker::cleanup_on_drop(&broker_config),
        }
    }

    pub fn process(&mut self, service: Service) -> &mut ServiceProcess {
        match service {
            Service::Shop => &mut self.shop,
            Service::Crm => &mut self.crm,
            Service::Mes => &mut self.mes,
        }
    }

    /// Starts `service` again (killing what is left of it first), with the environment it was
    /// started with but without a crash point or a fault: the process a supervisor would bring
    /// back. It listens on a new port.
    pub async fn restart(&mut self, service: Service) {
        self.restart_choosing(service, testkit::process::free_port)
            .await;
    }

    /// [`System::restart`] on the port it listened on, for those who know its address (an
    /// order-watch asking it).
    pub async fn restart_on_its_port(&mut self, service: Service) {
        let port = self.process(service).port();
        self.restart_choosing(service, || port).await;
    }

    async fn restart_choosing(&mut self, service: Service, choose: impl FnMut() -> u16) {
        self.process(service).kill().await;
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != messaging::crash::ENV && k != messaging::faults::ENV)
            .cloned()
            .collect();
        let env = service_env(&env, &self.broker, &self.databases, service);
        *self.process(service) = ServiceProcess::start_choosing(
            service.binary(),
            &[service.port_variable()],
            &env,
            choose,
        )
        .await;
    }

    /// A connection to `service`'s own database, for counting what it holds.
    pub async fn database(&self, service: Service) -> sqlx::PgPool {
        self.databases[service.index()].connect().await
    }

    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Places an order for `fixture` in `material` through Shop's HTTP API.
    pub async fn place_order(&self, fixture: &str, material: &str) -> Placed {
        self.place_order_with_headers(fixture, material, &[]).await
    }

    /// As [`System::place_order`], with extra request headers (e.g. a `traceparent`).
    pub async fn place_order_with_headers(
        &self,
        fixture: &str,
        material: &str,
        headers: &[(&str, &str)],
    ) -> Placed {
        self.try_place_order(fixture, material, headers)
            .await
            .unwrap_or_else(|err| panic!("placing {fixture}: {err}"))
    }

    /// Keeps the order's token for the Shop URLs of this order.
    fn remember(&self, placed: Result<Placed, String>) -> Result<Placed, String> {
        if let Ok(placed) = &placed {
            self.remember_token(placed.id, &placed.token);
        }
        placed
    }

    /// Keeps `token` for Shop's URLs of order `id`, placed some other way than through this
    /// system's own methods.
    pub fn remember_token(&self, id: Uuid, token: &str) {
        self.tokens
            .lock()
            .expect("tokens")
            .insert(id, token.to_owned());
    }

    /// The customer's token of an order placed through this system.
    pub fn token_of(&self, id: Uuid) -> Option<String> {
        self.tokens.lock().expect("tokens").get(&id).cloned()
    }

    /// Makes this system's own requests to CRM and MES (and to Shop for orders it holds no
    /// customer's token of) with `token`, a person's access token: for services started with an
    /// identity provider (`HALLMARK_OIDC_ISSUER`).
    pub fn act_as(&self, token: &str) {
        *self.staff.lock().expect("staff token") = Some(token.to_owned());
    }

    /// `request` with the order's token when `url` is one of Shop's order URLs of an order
    /// placed through this system, else with the person's token of [`System::act_as`], if any.
    pub fn as_customer(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> reqwest::RequestBuilder {
        let order = url
            .strip_prefix(&format!("{}/api/orders/", self.shop.url()))
            .and_then(|rest| rest.split('/').next())
            .and_then(|id| id.parse::<Uuid>().ok());
        let token = order
            .and_then(|id| self.token_of(id))
            .or_else(|| self.staff.lock().expect("staff token").clone());
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Places an order and returns what Shop acknowledged, or why it did not (an error status
    /// or no answer at all), for tests where refusals are expected.
    pub async fn try_place_order(
        &self,
        fixture: &str,
        material: &str,
        headers: &[(&str, &str)],
    ) -> Result<Placed, String> {
        self.remember(
            place_order_at(
                &self.client,
                &self.shop.url(),
                fixture,
                material,
                headers,
                None,
            )
            .await,
        )
    }

    /// Places an order as partner `partner` does through the API.
    pub async fn place_partner_order(
        &self,
        fixture: &str,
        material: &str,
        partner: &str,
    ) -> Placed {
        self.remember(
            place_order_at(
                &self.client,
                &self.shop.url(),
                fixture,
                material,
                &[],
                Some(partner),
            )
            .await,
        )
        .unwrap_or_else(|err| panic!("placing {fixture} for {partner}: {err}"))
    }

    async fn get(&self, url: String) -> Value {
        let response = self
            .as_customer(&url, self.client.get(&url))
            .send()
            .await
            .expect("service answers");
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn shop_order(&self, id: Uuid) -> Value {
        self.get(format!("{}/api/orders/{id}", self.shop.url()))
            .await
    }

    pub async fn crm_order(&self, id: Uuid) -> Value {
        self.get(format!("{}/api/orders/{id}", self.crm.url()))
            .await
    }

    pub async fn mes_order(&self, id: Uuid) -> Value {
        self.get(format!("{}/api/orders/{id}", self.mes.url()))
            .await
    }

    /// Waits until Shop shows `status` for the order and returns Shop's view.
    pub async fn until_shop_status(&self, id: Uuid, status: &str) -> Value {
        testkit::wait::until(
            &format!("order {id} to be {status} in shop"),
            PATIENCE,
            || async {
                let order = self.shop_order(id).await;
                (order["status"] == status).then_some(order)
            },
        )
        .await
    }

    /// Waits until `service`'s view (`crm` or `mes`) shows `status`; a service that does not
    /// know the order yet (404) is waited for too.
    pub async fn until_status_in(&self, service: &str, id: Uuid, status: &str) -> Value {
        let base = match service {
            "crm" => self.crm.url(),
            "mes" => self.mes.url(),
            _ => self.shop.url(),
        };
        let url = format!("{base}/api/orders/{id}");
        testkit::wait::until(
            &format!("order {id} to be {status} in {service}"),
            PATIENCE,
            || async {
                let response = self
                    .as_customer(&url, self.client.get(&url))
                    .send()
                    .await
                    .ok()?;
                if response.status() == 404 {
                    return None;
                }
                assert!(
                    response.status().is_success(),
                    "GET {url}: {}",
                    response.status()
                );
                let order: Value = response.json().await.ok()?;
                (order["status"] == status).then_some(order)
            },
        )
        .await
    }

    /// The dead letters in every queue, as `(queue, count)` for those that have any.
    pub async fn dead_letters(&self) -> Vec<(&'static str, u32)> {
        let broker = Broker::new(self.broker.clone(), "e2e-test");
        let counts = dead_letters::counts(&broker)
            .await
            .expect("the broker answers");
        counts.into_iter().filter(|(_, n)| *n > 0).collect()
    }

    /// POSTs `body` (JSON, or nothing) and returns status and JSON answer.
    /// The customer accepts `id`'s price at Shop; Shop's answer (the order), asserted 200.
    pub async fn confirm(&self, id: Uuid) -> Value {
        let (status, body) = self
            .post(format!("{}/api/orders/{id}/confirm", self.shop.url()), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn post(&self, url: String, body: Option<Value>) -> (u16, Value) {
        let request = self.as_customer(&url, self.client.post(&url));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.send().await.expect("service answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// What `service` is started with: `common`, its own database, and the broker settings with its
/// own account.
fn service_env(
    common: &[(String, String)],
    broker: &BrokerConfig,
    databases: &[TestDatabase; 3],
    service: Service,
) -> Vec<(String, String)> {
    let mut env = common.to_vec();
    env.extend(testkit::broker::env(&testkit::broker::as_party(
        broker,
        service.party(),
    )));
    env.push((
        service.database_variable().into(),
        databases[service.index()].url().into(),
    ));
    env
}

/// The broker settings of `party` in `system`'s namespace as environment variables, e.g. for the
/// `hallmark dlq` command as the operator.
pub fn broker_env(system: &System, party: Party) -> Vec<(String, String)> {
    testkit::broker::env(&testkit::broker::as_party(&system.broker, party))
}

/// Places an order for `fixture` at the Shop at `shop_url` (multipart, with a customer whose
/// personal data the telemetry must mask), placed through the API by `partner` when given;
/// what Shop acknowledged, or why not.
pub async fn place_order_at(
    client: &reqwest::Client,
    shop_url: &str,
    fixture: &str,
    material: &str,
    headers: &[(&str, &str)],
    partner: Option<&str>,
) -> Result<Placed, String> {
    let mut order = json!({
        "customer": {"name": "Jane Doe", "email": "jane.doe@example.com", "phone": "+49 170 1234567"},
        "material": material,
        "size": 17,
        "external_order_id": format!("PO-{}", Uuid::new_v4().simple()),
    });
    if let Some(partner) = partner {
        order["partner_id"] = json!(partner);
    }
    let form = reqwest::multipart::Form::new()
        .part(
            "order",
            reqwest::multipart::Part::text(order.to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            "model",
            reqwest::multipart::Part::bytes(testkit::fixtures::stl(fixture))
                .file_name(fixture.to_owned()),
        );
    let mut request = client
        .post(format!("{shop_url}/api/orders"))
        .timeout(Duration::from_secs(30))
        .multipart(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if response.status() != 201 {
        let status = response.status();
        return Err(format!(
            "{status}: {}",
            response.text().await.unwrap_or_default()
        ));
    }
    let trace_id = trace_id_of(&response);
    let response: Value = response.json().await.map_err(|e| e.to_string())?;
    let id = response["order_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("no order_id in {response}"))?;
    let token = response["customer_token"]
        .as_str()
        .ok_or_else(|| format!("no customer_token in {response}"))?
        .to_owned();
    Ok(Placed {
        id,
        response,
        token,
        trace_id,
    })
}

/// A calc engine that never answers (it sleeps five minutes), so that orders stay in `pricing`
/// for a whole test: give MES its path as `MES_CALC_BIN` (and a long `MES_CALC_TIMEOUT`). The
/// script is deleted when the returned path is dropped.
pub fn hanging_calc_engine() -> tempfile::TempPath {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = tempfile::NamedTempFile::new().expect("a script file");
    writeln!(file, "#!/bin/sh\nexec sleep 300").expect("the script is written");
    let path = file.into_temp_path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("the script is executable");
    path
}

/// The trace a response names in its W3C `traceresponse` header (`00-{trace_id}-{span_id}-{flags}`);
/// empty when there is none.
pub fn trace_id_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .unwrap_or_default()
        .to_owned()
}
