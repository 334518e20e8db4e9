//! order-watch as a process, fed by nothing but the services' own OTLP export: the set-up
//! `scripts/run` gives a new user. Thresholds are seconds here, so detection runs in real time.

use std::collections::BTreeSet;

use e2e::{PATIENCE, System};
use serde_json::Value;
use testkit::database::TestDatabase;
use testkit::process::{ServiceProcess, free_port};
use uuid::Uuid;

/// How long a priced order may wait for its customer in these tests.
const CONFIRMATION_THRESHOLD: &str = "3s";

struct Watch {
    process: ServiceProcess,
    /// order-watch's OTLP/HTTP endpoint.
    otlp_endpoint: String,
    client: reqwest::Client,
    _database: TestDatabase,
    _config: tempfile::NamedTempFile,
}

impl Watch {
    async fn start() -> Self {
        Self::start_choosing(free_port).await
    }

    /// order-watch on the ports `choose` gives: its API's first, then its OTLP/HTTP port.
    async fn start_choosing(choose: impl FnMut() -> u16) -> Self {
        let database = TestDatabase::create("order_watch").await;
        let config = tempfile::NamedTempFile::new().expect("a config file");
        std::fs::write(
            config.path(),
            format!("[stuck_after]\ncustomer_confirmation = \"{CONFIRMATION_THRESHOLD}\"\n"),
        )
        .expect("the config file is written");
        let env = [
            ("ORDER_WATCH_DATABASE_URL", database.url().to_owned()),
            // Not used here: port 0 lets order-watch pick a free one itself.
            ("ORDER_WATCH_OTLP_GRPC_PORT", "0".to_owned()),
            ("ORDER_WATCH_CONFIG", config.path().display().to_string()),
            ("ORDER_WATCH_GAUGE_INTERVAL", "1s".to_owned()),
            ("OTEL_TRACES_EXPORTER", "none".to_owned()),
            ("OTEL_METRICS_EXPORTER", "none".to_owned()),
            ("HALLMARK_ENV", "test".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let process = ServiceProcess::start_choosing(
            "order-watch",
            &["ORDER_WATCH_PORT", "ORDER_WATCH_OTLP_HTTP_PORT"],
            &env,
            choose,
        )
        .await;
        let otlp_http = process.port_of("ORDER_WATCH_OTLP_HTTP_PORT");
        Self {
            process,
            otlp_endpoint: format!("http://127.0.0.1:{otlp_http}"),
            client: reqwest::Client::new(),
            _database: database,
            _config: config,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.process.url()))
            .send()
            .await
            .expect("order-watch answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn journey(&self, id: Uuid) -> Option<Value> {
        let (status, journey) = self.get(&format!("/api/orders/{id}/journey")).await;
        (status == 200).then_some(journey)
    }

    async fn stuck(&self) -> Vec<Value> {
        let (status, stuck) = self.get("/api/orders/stuck").await;
        assert_eq!(status, 200, "{stuck}");
        stuck.as_array().cloned().unwrap_or_default()
    }

    async fn incidents_of(&self, id: Uuid) -> Vec<Value> {
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

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.process.url()))
            .send()
            .await
            .expect("order-watch answers")
            .text()
            .await
            .unwrap()
    }
}

/// The whole system, exporting its spans to `watch` only.
async fn system_watched_by(watch: &Watch) -> System {
    System::start_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &watch.otlp_endpoint)]).await
}

fn services_of(journey: &Value) -> BTreeSet<String> {
    journey["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["service"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn order_watch_starts_again_on_other_ports_when_one_was_taken_before_it_could_bind_it() {
    // Taken by "another test" between choosing the port and order-watch binding it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let taken = holder.local_addr().expect("its address").port();
    let mut handed_out = 0;
    let watch = Watch::start_choosing(|| {
        handed_out += 1;
        if handed_out == 2 { taken } else { free_port() }
    })
    .await;
    assert_eq!(
        handed_out, 4,
        "one retry, with new ports for both variables"
    );
    assert_ne!(watch.process.port_of("ORDER_WATCH_OTLP_HTTP_PORT"), taken);
    let (status, _) = watch.get("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_priced_order_has_one_journey_across_every_service_it_passed() {
    let watch = Watch::start().await;
    let system = system_watched_by(&watch).await;
    let order = system.place_order("torus.STL", "gold_585").await;
    system.until_shop_status(order.id, "priced").await;

    let journey = testkit::wait::until("the journey up to priced", PATIENCE, || async {
        let journey = watch.journey(order.id).await?;
        let services = services_of(&journey);
        let complete = journey["status"] == "priced"
            && ["shop-api", "crm-api", "mes-api", "mes-calc"]
                .iter()
                .all(|s| services.contains(*s));
        complete.then_some(journey)
    })
    .await;

    assert_eq!(journey["stage"], "customer_confirmation");
    assert_eq!(journey["terminal"], false);
    assert!(
        journey["traces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["trace_id"] == order.trace_id.as_str()),
        "the journey holds the trace the shop answered with: {}",
        journey["traces"]
    );
    let spans = journey["spans"].as_array().unwrap();
    let starts: Vec<chrono::DateTime<chrono::Utc>> = spans
        .iter()
        .map(|s| s["start"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "spans in time order"
    );
    for span in spans {
        assert_eq!(
            span["attributes"]["order.id"],
            order.id.to_string(),
            "every span of the journey belongs to the order: {span}"
        );
    }
    let text = journey.to_string();
    for personal in ["Jane Doe", "jane.doe@example.com", "170 1234567"] {
        assert!(!text.contains(personal), "{personal} reached order-watch");
    }
}

#[tokio::test]
async fn an_order_left_waiting_past_its_threshold_is_stuck_until_it_moves_again() {
    let watch = Watch::start().await;
    let system = system_watched_by(&watch).await;
    let order = system.place_order("20mm-xyz-cube.stl", "silver_925").await;
    let id = order.id;
    system.until_shop_status(id, "priced").await;

    // Nobody confirms: after 3 s of silence in customer_confirmation the order is stuck.
    let stuck = testkit::wait::until("the order to be stuck", PATIENCE, || async {
        watch
            .stuck()
            .await
            .into_iter()
            .find(|o| o["order_id"] == id.to_string())
    })
    .await;
    assert_eq!(stuck["stage"], "customer_confirmation");
    assert_eq!(stuck["status"], "priced");
    assert!(stuck["silent_seconds"].as_f64().unwrap() >= 3.0, "{stuck}");
    let incidents = testkit::wait::until("its incident", PATIENCE, || async {
        let incidents = watch.incidents_of(id).await;
        (!incidents.is_empty()).then_some(incidents)
    })
    .await;
    assert_eq!(incidents.len(), 1, "exactly one incident: {incidents:?}");
    assert!(incidents[0]["resolved_at"].is_null());
    testkit::wait::until("the stuck gauge", PATIENCE, || async {
        let metrics = watch.metrics().await;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("order_watch_orders_stuck{")
                    && l.contains("stage=\"customer_confirmation\"")
                    && l.ends_with(" 1")
            })
            .then_some(())
    })
    .await;

    // The customer confirms: new spans, the order moves on, the incident closes.
    let (status, body) = system
        .post(
            format!("{}/api/orders/{id}/confirm", system.shop.url()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    testkit::wait::until("the incident to close", PATIENCE, || async {
        let incidents = watch.incidents_of(id).await;
        incidents
            .iter()
            .all(|i| !i["resolved_at"].is_null())
            .then_some(())
    })
    .await;
    // The confirmation's spans come in several exports; the request's root span, which holds
    // the link to the order's earlier trace, may be among the later ones.
    let journey = testkit::wait::until("the link between the traces", PATIENCE, || async {
        let journey = watch.journey(id).await?;
        (!journey["joins"].as_array()?.is_empty()).then_some(journey)
    })
    .await;
    assert_eq!(journey["stuck"], false);
    assert_ne!(journey["stage"], "customer_confirmation");
}

#[tokio::test]
async fn order_watch_metrics_count_what_the_services_sent_without_order_ids() {
    let watch = Watch::start().await;
    let system = system_watched_by(&watch).await;
    let order = system.place_order("torus.STL", "platinum_950").await;
    system.until_shop_status(order.id, "priced").await;
    testkit::wait::until("the journey", PATIENCE, || async {
        watch.journey(order.id).await.map(|_| ())
    })
    .await;

    let families = [
        "order_watch_spans_ingested_total{outcome=\"accepted\"",
        "order_watch_order_spans_total{service=\"mes-calc\"",
        "order_watch_price_calculation_duration_seconds_bucket",
        "order_watch_status_event_delivery_duration_seconds_bucket",
        "order_watch_orders_open{stage=\"customer_confirmation\"",
        "order_watch_orders_stuck{stage=\"customer_confirmation\"",
        "order_watch_orders_silent_24h_ratio",
    ];
    let metrics = testkit::wait::until("every metric family", PATIENCE, || async {
        let metrics = watch.metrics().await;
        families
            .iter()
            .all(|f| metrics.contains(f))
            .then_some(metrics)
    })
    .await;
    assert!(
        !metrics.contains(&order.id.to_string()),
        "an order id in a label"
    );
}
