//! order-watch as a process, fed by nothing but the services' own OTLP export and asking the
//! services themselves before it calls an order stuck: the set-up `scripts/run` gives a new user.
//! Thresholds are seconds here, so detection runs in real time.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::watch::Watch;
use e2e::{PATIENCE, System};
use serde_json::Value;
use testkit::process::free_port;
use uuid::Uuid;

/// How long a priced order may wait for its customer in these tests.
const CONFIRMATION_THRESHOLD: &str = "3s";

/// order-watch's configuration file with the customer's threshold above.
fn config() -> String {
    format!("[stuck_after]\ncustomer_confirmation = \"{CONFIRMATION_THRESHOLD}\"\n")
}

/// The whole system, and order-watch watching it with `env` and [`config`].
async fn watched_system(env: &[(&str, &str)]) -> (System, Watch) {
    watched_system_with(&[], &config(), env).await
}

/// [`watched_system`] with `system_env` for the services and order-watch's `config`.
async fn watched_system_with(
    system_env: &[(&str, &str)],
    config: &str,
    env: &[(&str, &str)],
) -> (System, Watch) {
    let system = System::start_with(system_env).await;
    let watch = Watch::watching(&system, config, env).await;
    (system, watch)
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
    let watch = Watch::start_choosing(&config(), &[], || {
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
    let (system, watch) = watched_system(&[]).await;
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
    // Every span of the journey is one the services sent for this order.
    let sent: BTreeSet<(String, String)> = system
        .otlp
        .spans()
        .into_iter()
        .filter(|s| s.attr("order.id") == Some(order.id.to_string()))
        .map(|s| (s.trace_id, s.span_id))
        .collect();
    for span in spans {
        let id = (
            span["trace_id"].as_str().unwrap().to_owned(),
            span["span_id"].as_str().unwrap().to_owned(),
        );
        assert!(sent.contains(&id), "not a span of the order: {span}");
    }
    let text = journey.to_string();
    for personal in ["Jane Doe", "jane.doe@example.com", "170 1234567"] {
        assert!(!text.contains(personal), "{personal} reached order-watch");
    }
}

#[tokio::test]
async fn an_order_left_waiting_past_its_threshold_is_stuck_until_it_moves_again() {
    let (system, watch) = watched_system(&[]).await;
    let order = system.place_order("20mm-xyz-cube.stl", "silver_925").await;
    let id = order.id;
    system.until_shop_status(id, "priced").await;

    // Nobody confirms: after 3 s without progress in customer_confirmation, and once Shop (who
    // takes the customer's confirmation) says it still holds the order priced, it is stuck.
    let stuck = watch.until_stuck(id).await;
    assert_eq!(stuck["stage"], "customer_confirmation");
    assert_eq!(stuck["status"], "priced");
    assert!(stuck["silent_seconds"].as_f64().unwrap() >= 3.0, "{stuck}");
    assert_eq!(stuck["stuck_confirmation"], "confirmed", "{stuck}");
    assert!(
        stuck["confirmation"]
            .as_str()
            .unwrap()
            .starts_with("confirmed: shop-api holds it priced since"),
        "{stuck}"
    );
    let incidents = testkit::wait::until("its incident", PATIENCE, || async {
        let incidents = watch.incidents_of(id).await;
        (!incidents.is_empty()).then_some(incidents)
    })
    .await;
    assert_eq!(incidents.len(), 1, "exactly one incident: {incidents:?}");
    assert!(incidents[0]["resolved_at"].is_null());
    testkit::wait::until("the stuck gauge", PATIENCE, || async {
        let stuck = watch
            .metric(
                "order_watch_orders_stuck",
                &[("stage", "customer_confirmation")],
            )
            .await;
        (stuck == 1.0).then_some(())
    })
    .await;

    // The customer confirms: new spans, the order moves on, the incident closes.
    system.confirm(id).await;
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
    let (system, watch) = watched_system(&[]).await;
    let order = system.place_order("torus.STL", "platinum_950").await;
    system.until_shop_status(order.id, "priced").await;
    testkit::wait::until("the journey", PATIENCE, || async {
        watch.journey(order.id).await.map(|_| ())
    })
    .await;

    let families: [(&str, &[(&str, &str)]); 8] = [
        (
            "order_watch_spans_ingested_total",
            &[("outcome", "accepted")],
        ),
        ("order_watch_order_spans_total", &[("service", "mes-calc")]),
        ("order_watch_price_calculation_duration_seconds_bucket", &[]),
        (
            "order_watch_status_event_delivery_duration_seconds_bucket",
            &[],
        ),
        (
            "order_watch_orders_open",
            &[("stage", "customer_confirmation"), ("service", "shop-api")],
        ),
        (
            "order_watch_orders_stuck",
            &[("stage", "customer_confirmation"), ("service", "shop-api")],
        ),
        (
            "order_watch_orders_stuck_unconfirmed",
            &[("stage", "customer_confirmation")],
        ),
        ("order_watch_orders_silent_24h_ratio", &[]),
    ];
    let metrics = testkit::wait::until("every metric family", PATIENCE, || async {
        let metrics = watch.metrics().await;
        families
            .iter()
            .all(|(name, labels)| e2e::watch::samples(&metrics, name, labels).next().is_some())
            .then_some(metrics)
    })
    .await;
    assert!(
        !metrics.contains(&order.id.to_string()),
        "an order id in a label"
    );
}

/// Reads `id`'s status from Shop every 300 ms, as a worried customer does, until dropped.
fn keep_checking(system: &System, id: Uuid) -> tokio::task::JoinHandle<()> {
    let url = format!("{}/api/orders/{id}", system.shop.url());
    let client = system.client.clone();
    let token = system
        .token_of(id)
        .expect("an order placed through the system");
    tokio::spawn(async move {
        loop {
            let _ = client.get(&url).bearer_auth(&token).send().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

#[tokio::test]
async fn an_order_whose_customer_keeps_checking_it_is_stuck_when_pricing_hangs() {
    let engine = e2e::hanging_calc_engine();
    let engine_path = engine.display().to_string();
    let (system, watch) = watched_system_with(
        &[("MES_CALC_BIN", &engine_path), ("MES_CALC_TIMEOUT", "10m")],
        &config(),
        &[("ORDER_WATCH_STUCK_AFTER", "3s")],
    )
    .await;
    let checked = system.place_order("torus.STL", "gold_585").await.id;
    let ignored = system.place_order("torus.STL", "gold_585").await.id;
    let customer = keep_checking(&system, checked);
    system.until_status_in("mes", checked, "pricing").await;
    system.until_status_in("mes", ignored, "pricing").await;

    for id in [checked, ignored] {
        let stuck = watch.until_stuck(id).await;
        assert_eq!(stuck["stage"], "pricing", "{stuck}");
        assert_eq!(stuck["stuck_confirmation"], "confirmed", "{stuck}");
        assert!(
            stuck["confirmation"]
                .as_str()
                .unwrap()
                .starts_with("confirmed: mes-api holds it pricing since"),
            "{stuck}"
        );
        assert_eq!(watch.incidents_of(id).await.len(), 1);
    }
    // The customer's reads are in the journey, counted, and kept it from nothing.
    let journey = testkit::wait::until("the checks counted", PATIENCE, || async {
        let journey = watch.journey(checked).await?;
        (journey["observations_since_progress"].as_i64()? >= 3).then_some(journey)
    })
    .await;
    assert_eq!(journey["stuck"], true);
    assert!(
        journey["spans"].as_array().unwrap().iter().any(|s| {
            s["activity"] == "observation" && s["name"] == "GET /api/orders/{order_id}"
        })
    );
    customer.abort();
}

#[tokio::test]
async fn orders_behind_a_frozen_mes_are_flagged_and_say_mes_could_not_confirm_it() {
    let (system, watch) = watched_system(&[
        ("ORDER_WATCH_STUCK_AFTER", "3s"),
        ("ORDER_WATCH_CONFIRM_TIMEOUT", "1s"),
        ("ORDER_WATCH_RECONFIRM_INTERVAL", "2s"),
    ])
    .await;
    system.mes.pause();
    let checked = system.place_order("torus.STL", "gold_585").await.id;
    let ignored = system.place_order("torus.STL", "gold_585").await.id;
    let customer = keep_checking(&system, checked);
    for id in [checked, ignored] {
        let stuck = watch.until_stuck(id).await;
        assert_eq!(stuck["stage"], "pricing_queue", "{stuck}");
        assert_eq!(stuck["stuck_confirmation"], "unconfirmed", "{stuck}");
        assert_eq!(
            stuck["confirmation"],
            "not confirmed: mes-api could not be asked: it did not answer within 1s"
        );
        let incidents = watch.incidents_of(id).await;
        assert_eq!(incidents.len(), 1, "{incidents:?}");
        assert!(
            incidents[0]["summary"]
                .as_str()
                .unwrap()
                .contains("mes-api could not be asked"),
            "{incidents:?}"
        );
    }
    testkit::wait::until("the unconfirmed gauge", PATIENCE, || async {
        let unconfirmed = watch
            .metric(
                "order_watch_orders_stuck_unconfirmed",
                &[("stage", "pricing_queue"), ("service", "mes-api")],
            )
            .await;
        (unconfirmed == 2.0).then_some(())
    })
    .await;

    // MES wakes up and prices them: progress, and the incidents close.
    system.mes.resume();
    for id in [checked, ignored] {
        system.until_shop_status(id, "priced").await;
        testkit::wait::until("the incident resolved", PATIENCE, || async {
            let incidents = watch.incidents_of(id).await;
            incidents
                .iter()
                .all(|i| !i["resolved_at"].is_null())
                .then_some(())
        })
        .await;
    }
    customer.abort();
}

#[tokio::test]
async fn reads_of_orders_no_service_issued_create_no_journey_and_page_nobody() {
    let (system, watch) = watched_system(&[("ORDER_WATCH_STUCK_AFTER", "2s")]).await;
    let unknown: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for id in &unknown {
        // Shop asks for the order's token first (nobody has one); CRM and MES do not know it.
        for (base, status) in [
            (system.shop.url(), 401),
            (system.crm.url(), 404),
            (system.mes.url(), 404),
        ] {
            let response = system
                .client
                .get(format!("{base}/api/orders/{id}"))
                .send()
                .await
                .expect("the service answers");
            assert_eq!(response.status(), status, "{base}");
        }
    }
    // Every read's spans reached order-watch and were counted, not stored: CRM's and MES's
    // (a request and a database span each); Shop refuses a read without the order's token
    // before it looks for the order, so its request spans name no order.
    testkit::wait::until("the reads counted", PATIENCE, || async {
        let dropped = watch
            .metric("order_watch_observations_without_journey_total", &[])
            .await;
        (dropped >= 12.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &unknown {
        assert_eq!(watch.journey(*id).await, None);
        assert!(watch.incidents_of(*id).await.is_empty());
    }
    assert!(watch.stuck().await.is_empty());
}

#[tokio::test]
async fn spans_lost_on_the_way_are_a_telemetry_gap_and_page_nobody() {
    // The customer has an hour: once the gap is filled, nothing is due during the test.
    let (system, watch) = watched_system_with(
        &[],
        "[stuck_after]\ncustomer_confirmation = \"1h\"\n",
        &[("ORDER_WATCH_STUCK_AFTER", "3s")],
    )
    .await;
    // Everything MES and its engine send is lost, while the order moves on.
    system.otlp.drop_service("mes-api");
    system.otlp.drop_service("mes-calc");
    let order = system.place_order("torus.STL", "silver_925").await;
    let id = order.id;
    system.until_shop_status(id, "priced").await;

    // MES's gap. (Under a heavy load another step's spans can arrive later than the 3 s
    // threshold and count as a gap too; a production threshold is minutes.)
    let (journey, gap) = testkit::wait::until("MES's gap", PATIENCE, || async {
        let journey = watch.journey(id).await?;
        let gap = journey["gaps"]
            .as_array()?
            .iter()
            .find(|g| g["source"] == "mes-api")
            .cloned()?;
        (journey["status_source"] == "mes-api").then_some((journey, gap))
    })
    .await;
    assert_eq!(gap["source"], "mes-api");
    assert_eq!(gap["from_status"], "registered");
    assert_eq!(gap["to_status"], "priced");
    assert_eq!(gap["missing_services"], serde_json::json!(["mes-api"]));
    assert_eq!(journey["status"], "priced");
    assert_eq!(journey["status_source"], "mes-api");
    assert_eq!(journey["stage"], "customer_confirmation");
    assert!(
        !services_of(&journey).contains("mes-api"),
        "no span of MES arrived"
    );
    testkit::wait::until("the gap counted", PATIENCE, || async {
        let gaps = watch
            .metric(
                "order_watch_telemetry_gaps_total",
                &[("service", "mes-api")],
            )
            .await;
        (gaps >= 1.0).then_some(())
    })
    .await;
    assert!(watch.incidents_of(id).await.is_empty(), "nobody is paged");
    assert_eq!(watch.journey(id).await.unwrap()["stuck"], false);

    // Back to normal: the customer's confirmation is seen as it happens.
    system.otlp.keep_service("mes-api");
    system.otlp.keep_service("mes-calc");
    system.confirm(id).await;
    testkit::wait::until("the confirmation in the journey", PATIENCE, || async {
        let journey = watch.journey(id).await?;
        (journey["status"] == "confirmed" && journey["status_source"] == "telemetry").then_some(())
    })
    .await;
    assert!(watch.incidents_of(id).await.is_empty());
}
