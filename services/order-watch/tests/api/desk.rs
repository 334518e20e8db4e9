//! The support desk's API against a real database: finding orders by the ids people quote,
//! their story, their traces as trees, and the floor (also live).

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{OrderStatus, System};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;
use testkit::journeys::Journeys;
use testkit::otlp::{build, flatten};
use uuid::Uuid;

use crate::helpers::{STUCK_AFTER, TestApp, order_span, spawn_app, spawn_app_with};

/// Sends `order`'s creation by shop-api at `end`, carrying `ids` (`order.external_id`, …).
async fn create(app: &TestApp, order: Uuid, end: DateTime<Utc>, ids: &[(&str, &str)]) {
    let mut attributes = vec![build::string("order.status.to", "created")];
    attributes.extend(ids.iter().map(|(k, v)| build::string(k, *v)));
    let trace: [u8; 16] = order.into_bytes();
    let span = order_span(order, trace, 1, "order create", end, attributes);
    let response = app.export(&build::request("shop-api", vec![span])).await;
    assert_eq!(response.status(), 200);
}

async fn search(app: &TestApp, q: &str) -> Value {
    let url = format!(
        "/api/search?q={}",
        percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, body) = app.get(&url).await;
    assert_eq!(status, 200, "{q}: {body}");
    body
}

fn found(answer: &Value) -> Vec<(String, String)> {
    answer["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["matched"].as_str().unwrap().to_owned(),
                o["order_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_order_is_found_by_its_external_id_in_any_case_and_a_partner_by_its_recent_orders() {
    let app = spawn_app().await;
    let now = app.clock.now();
    let (first, second, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let minutes = |m| now - chrono::Duration::minutes(m);
    create(
        &app,
        first,
        minutes(30),
        &[
            ("order.external_id", "PO-4711"),
            ("partner.id", "acme-jewels"),
        ],
    )
    .await;
    create(
        &app,
        second,
        minutes(10),
        &[
            ("order.external_id", "PO-4712"),
            ("partner.id", "acme-jewels"),
        ],
    )
    .await;
    create(
        &app,
        other,
        minutes(5),
        &[("order.external_id", "WEB-00000001")],
    )
    .await;

    let answer = search(&app, "po-4711").await;
    assert_eq!(answer["tier"], "exact");
    assert_eq!(found(&answer), [("external_id".into(), first.to_string())]);
    assert_eq!(answer["hint"], "The order with external id PO-4711.");
    let order = &answer["orders"][0];
    assert_eq!(order["external_id"], "PO-4711");
    assert_eq!(order["partner_id"], "acme-jewels");
    assert_eq!(order["status"], "created");

    let answer = search(&app, "ACME-JEWELS").await;
    assert_eq!(answer["tier"], "exact");
    assert_eq!(
        found(&answer),
        [
            ("partner_id".into(), second.to_string()),
            ("partner_id".into(), first.to_string())
        ],
        "newest first"
    );
    assert_eq!(answer["partners"][0]["partner_id"], "acme-jewels");
    assert_eq!(answer["partners"][0]["orders"], 2);
    assert_eq!(
        answer["hint"],
        "Partner acme-jewels has 2 orders in order-watch; the 2 most recent first."
    );
}

#[tokio::test]
async fn a_customer_id_finds_the_customers_orders_and_the_start_of_an_order_id_finds_the_order() {
    let app = spawn_app().await;
    let customer = Uuid::now_v7();
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let now = app.clock.now();
    for order in [first, second] {
        create(
            &app,
            order,
            now,
            &[("customer.id", &customer.to_string().to_uppercase())],
        )
        .await;
    }
    let answer = search(&app, &customer.to_string()).await;
    assert_eq!(answer["tier"], "exact");
    let mut orders: Vec<String> = found(&answer)
        .into_iter()
        .map(|(kind, id)| {
            assert_eq!(kind, "customer_id");
            id
        })
        .collect();
    orders.sort();
    assert_eq!(orders, [first.to_string(), second.to_string()]);
    assert_eq!(
        answer["orders"][0]["customer_id"],
        customer.to_string(),
        "stored lowercase"
    );

    let answer = search(&app, &first.to_string()).await;
    assert_eq!(found(&answer), [("order_id".into(), first.to_string())]);
    assert_eq!(answer["hint"], format!("Order {first}."));

    // All but the last two digits: ids made in the same millisecond differ before them.
    let start = &first.to_string()[..34];
    let answer = search(&app, start).await;
    assert_eq!(answer["tier"], "partial");
    assert_eq!(found(&answer), [("order_id".into(), first.to_string())]);
}

#[tokio::test]
async fn a_partial_id_lists_what_contains_it_and_a_typo_gets_did_you_mean() {
    let app = spawn_app().await;
    let now = app.clock.now();
    let (order, partner_order) = (Uuid::now_v7(), Uuid::now_v7());
    create(&app, order, now, &[("order.external_id", "WEB-00012345")]).await;
    create(
        &app,
        partner_order,
        now,
        &[
            ("order.external_id", "PO-99881"),
            ("partner.id", "goldsmith-berlin"),
        ],
    )
    .await;

    let answer = search(&app, "12345").await;
    assert_eq!(answer["tier"], "partial");
    assert_eq!(found(&answer), [("external_id".into(), order.to_string())]);
    assert_eq!(
        answer["hint"],
        "No id is exactly “12345”. 1 order whose id contains it:"
    );

    let answer = search(&app, "goldsmith").await;
    assert_eq!(answer["tier"], "partial");
    assert_eq!(answer["partners"][0]["partner_id"], "goldsmith-berlin");

    let answer = search(&app, "WEB-00012354").await;
    assert_eq!(answer["tier"], "similar", "{answer}");
    assert_eq!(found(&answer), [("external_id".into(), order.to_string())]);
    assert_eq!(
        answer["hint"],
        "No id is “WEB-00012354”. Did you mean one of these?"
    );

    let answer = search(&app, "goldsmith-berlni").await;
    assert_eq!(answer["tier"], "similar", "{answer}");
    assert_eq!(answer["partners"][0]["partner_id"], "goldsmith-berlin");

    // An order id with one digit wrong.
    let text = order.to_string();
    let last = text.chars().last().unwrap();
    let typo = format!("{}{}", &text[..35], if last == '0' { '1' } else { '0' });
    let answer = search(&app, &typo).await;
    assert_eq!(answer["tier"], "similar", "{answer}");
    assert_eq!(found(&answer), [("order_id".into(), order.to_string())]);
}

#[tokio::test]
async fn personal_data_and_unknown_ids_are_answered_in_words_and_an_empty_query_is_refused() {
    let app = spawn_app().await;
    create(
        &app,
        Uuid::now_v7(),
        app.clock.now(),
        &[("order.external_id", "PO-1")],
    )
    .await;

    let answer = search(&app, "jane.doe@example.com").await;
    assert_eq!(answer["tier"], "none");
    assert!(
        answer["hint"]
            .as_str()
            .unwrap()
            .contains("order-watch keeps no personal data"),
        "{answer}"
    );
    let answer = search(&app, "ZZZ-nothing-like-it").await;
    assert_eq!(answer["tier"], "none");
    assert!(
        answer["hint"]
            .as_str()
            .unwrap()
            .starts_with("order-watch knows no order by “ZZZ-nothing-like-it”"),
        "{answer}"
    );
    let (status, body) = app.get("/api/search?q=%20").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");
}

#[tokio::test]
async fn an_erased_order_is_found_by_its_ids_no_more() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    create(
        &app,
        order,
        app.clock.now(),
        &[("order.external_id", "PO-ERASE")],
    )
    .await;
    assert_eq!(search(&app, "PO-ERASE").await["tier"], "exact");
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/orders/{order}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(search(&app, "PO-ERASE").await["tier"], "none");
}

/// The spans of one generated journey ending in `last` at `end`, sent; returns the order and the
/// requests.
async fn journey(
    app: &TestApp,
    seed: u64,
    last: OrderStatus,
    end: DateTime<Utc>,
) -> (Uuid, Vec<ExportTraceServiceRequest>) {
    let mut journeys = Journeys::new(seed);
    let order = journeys.add_order(last, end);
    let requests = journeys.drain();
    for request in &requests {
        assert_eq!(app.export(request).await.status(), 200);
    }
    (order, requests)
}

/// The first value of attribute `key` among `order`'s spans.
fn attribute(requests: &[ExportTraceServiceRequest], order: Uuid, key: &str) -> Option<String> {
    requests
        .iter()
        .flat_map(flatten)
        .filter(|s| s.attr("order.id") == Some(order.to_string()))
        .find_map(|s| s.attr(key))
}

async fn story(app: &TestApp, order: Uuid) -> Value {
    let (status, body) = app.get(&format!("/api/orders/{order}/story")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_priced_orders_story_walks_its_statuses_and_waits_for_the_customer() {
    let app = spawn_app().await;
    let end = app.clock.now() - chrono::Duration::hours(2);
    let (order, requests) = journey(&app, 1, OrderStatus::Priced, end).await;
    let story = story(&app, order).await;
    let statuses: Vec<&str> = story["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["created", "submitted", "registered", "pricing", "priced"]
    );
    let services: Vec<&str> = story["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        services,
        ["shop-api", "shop-api", "crm-api", "mes-api", "mes-api"]
    );
    let pricing = &story["timeline"][3];
    assert_eq!(pricing["stage"], "pricing");
    let spent = pricing["stage_seconds"].as_u64().unwrap();
    assert!((89..=90).contains(&spent), "a step every 90 s: {spent}");
    assert_eq!(pricing["threshold_seconds"], STUCK_AFTER.as_secs());
    assert_eq!(pricing["over_threshold"], false);
    assert_eq!(story["timeline"][4]["current"], true);
    assert_eq!(
        story["now"]["waiting_for"],
        "waiting for customer confirmation"
    );
    assert_eq!(story["now"]["waited"], "2 h of 7 d");
    assert_eq!(
        story["headline"],
        "Waiting for customer confirmation for 2 h of 7 d."
    );
    assert_eq!(story["explanations"], serde_json::json!([]));
    assert_eq!(
        story["external_id"].as_str(),
        attribute(&requests, order, "order.external_id").as_deref()
    );
    assert_eq!(
        story["customer_id"].as_str(),
        attribute(&requests, order, "customer.id").as_deref()
    );
}

#[tokio::test]
async fn a_rejected_orders_story_says_why_in_words_with_the_error_code() {
    let app = spawn_app().await;
    let end = app.clock.now() - chrono::Duration::minutes(3);
    let (order, _) = journey(&app, 2, OrderStatus::Rejected, end).await;
    let story = story(&app, order).await;
    assert_eq!(story["status"], "rejected");
    assert_eq!(story["terminal"], true);
    assert_eq!(story["headline"], "Rejected 3 min ago.");
    let why = &story["explanations"][0];
    assert_eq!(why["trouble"], "rejected");
    assert_eq!(why["error_code"], "stl_not_closed");
    assert!(
        why["for_customer"]
            .as_str()
            .unwrap()
            .starts_with("The 3D model is not a closed solid"),
        "{why}"
    );
    let last = story["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["status"].as_str(), last["service"].as_str()),
        (Some("rejected"), Some("mes-api"))
    );
}

#[tokio::test]
async fn a_stuck_orders_story_says_how_long_it_waited_against_its_threshold_and_why() {
    let app = spawn_app().await;
    let (order, _) = journey(&app, 3, OrderStatus::Pricing, app.clock.now()).await;
    app.records
        .hold(System::Mes, order, "pricing", app.clock.now());
    app.clock.advance(STUCK_AFTER + Duration::from_secs(60));
    app.until_stuck(1).await;
    let story = story(&app, order).await;
    assert_eq!(story["stuck"], true);
    assert_eq!(
        story["headline"],
        "Waiting for the price calculation for 6 min of 5 min. Stuck: no progress for 6 min."
    );
    let why = &story["explanations"][0];
    assert_eq!(why["trouble"], "stuck");
    assert_eq!(
        why["for_customer"],
        "The order is waiting for the price calculation and has not moved for 6 min; this \
         normally takes under 5 min. The team has been alerted."
    );
    assert!(
        why["detail"]
            .as_str()
            .unwrap()
            .contains("confirmed: mes-api holds it pricing"),
        "{why}"
    );
    assert_eq!(story["incidents"].as_array().unwrap().len(), 1);
    let current = story["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(current["over_threshold"], true);

    let (status, body) = app
        .get(&format!("/api/orders/{}/story", Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("order_not_found"))
    );
}

#[tokio::test]
async fn the_journey_gives_each_trace_as_a_tree_with_folds_links_and_a_trace_store_link() {
    let app = spawn_app_with(|settings| {
        settings.jaeger_url = Some("https://jaeger.example.com".into());
    })
    .await;
    let end = app.clock.now() - chrono::Duration::minutes(1);
    let (order, _) = journey(&app, 4, OrderStatus::Confirmed, end).await;
    // Five status checks by the customer, each a trace of its own.
    let checks: Vec<_> = (0..5u8)
        .map(|i| crate::helpers::status_check(order, [100 + i; 16], 1, app.clock.now()))
        .collect();
    app.export(&build::request("shop-api", checks)).await;

    let journey = app.journey(order).await;
    let trees = journey["trees"].as_array().unwrap();
    let traces: Vec<&Value> = trees.iter().filter_map(|e| e.get("trace")).collect();
    assert_eq!(
        traces.len(),
        2,
        "the order's work, then the customer's confirmation"
    );
    let confirmation = traces[1];
    assert_eq!(confirmation["statuses"], serde_json::json!(["confirmed"]));
    assert_eq!(
        confirmation["links"][0]["to_trace_id"],
        traces[0]["trace_id"]
    );
    assert_eq!(
        traces[0]["linked_from"][0]["from_trace_id"],
        confirmation["trace_id"]
    );
    assert_eq!(
        confirmation["url"],
        format!(
            "https://jaeger.example.com/trace/{}",
            confirmation["trace_id"].as_str().unwrap()
        )
    );
    let reads = trees.last().unwrap();
    assert_eq!(reads["reads"]["label"], "5 status checks by shop-api");
    assert_eq!(reads["reads"]["traces"].as_array().unwrap().len(), 5);

    // The creation's statement is under the transition span that made it, and every span is in
    // some tree once.
    fn indexes(node: &Value, out: &mut Vec<u64>) {
        if let Some(span) = node["span"].as_u64() {
            out.push(span);
        }
        for child in node["children"].as_array().into_iter().flatten() {
            indexes(child, out);
        }
    }
    let mut all = Vec::new();
    for entry in trees {
        let traces: Vec<&Value> = match entry.get("trace") {
            Some(trace) => vec![trace],
            None => entry["reads"]["traces"]
                .as_array()
                .unwrap()
                .iter()
                .collect(),
        };
        for trace in traces {
            for root in trace["roots"].as_array().unwrap() {
                indexes(root, &mut all);
            }
        }
    }
    all.sort_unstable();
    let count = journey["spans"].as_array().unwrap().len() as u64;
    assert_eq!(all, (0..count).collect::<Vec<_>>());
    let spans = journey["spans"].as_array().unwrap();
    let insert = spans
        .iter()
        .position(|s| s["name"] == "INSERT orders")
        .unwrap();
    let parent = spans[insert]["parent_span_id"].as_str().unwrap();
    assert_eq!(
        spans.iter().find(|s| s["span_id"] == parent).unwrap()["name"],
        "order create"
    );
}

#[tokio::test]
async fn the_floor_counts_orders_per_stage_and_lists_the_stuck_and_the_open_incidents() {
    let app = spawn_app_with(|settings| settings.gauge_interval = Duration::from_millis(100)).await;
    let now = app.clock.now();
    journey(
        &app,
        5,
        OrderStatus::Priced,
        now - chrono::Duration::minutes(30),
    )
    .await;
    let (stuck, _) = journey(&app, 6, OrderStatus::Registered, now).await;
    app.clock.advance(STUCK_AFTER + Duration::from_secs(1));
    app.until_stuck(1).await;
    let floor = testkit::wait::until(
        "the floor counts the stuck order",
        Duration::from_secs(10),
        || async {
            let (status, floor) = app.get("/api/floor").await;
            assert_eq!(status, 200, "{floor}");
            (floor["stuck"] == 1).then_some(floor)
        },
    )
    .await;
    assert_eq!(floor["open"], 2);
    let stage = |name: &str| {
        floor["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap()
            .clone()
    };
    let confirmation = stage("customer_confirmation");
    assert_eq!(confirmation["open"], 1);
    assert_eq!(
        confirmation["waiting_for"],
        "waiting for customer confirmation"
    );
    assert_eq!(confirmation["owner"], "shop-api");
    assert_eq!(confirmation["over_threshold"], false);
    let queue = stage("pricing_queue");
    assert_eq!(
        (queue["open"].as_u64(), queue["stuck"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(queue["over_threshold"], true);
    assert_eq!(floor["stuck_orders"][0]["order_id"], stuck.to_string());
    assert!(floor["stuck_orders"][0]["external_id"].is_string());
    assert_eq!(floor["incidents"][0]["order_id"], stuck.to_string());
    let slo = &floor["slo"];
    assert_eq!(slo["price_calculation"]["objective_seconds"], 10.0);
    assert_eq!(slo["status_event_delivery"]["objective_seconds"], 5.0);
    assert!(
        slo["price_calculation"]["samples"].as_u64().unwrap() >= 1,
        "{slo}"
    );
    assert_eq!(slo["stuck_24h_ratio"], 0.0);
    assert_eq!(slo["without_progress_24h_ratio"], 0.0);
}

#[tokio::test]
async fn the_floor_streams_live_as_server_sent_events_until_shutdown() {
    let app = spawn_app().await;
    let mut events = app
        .client
        .get(app.api("/api/floor/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let floors = |text: &str| text.matches("event: floor\n").count();
    tokio::time::timeout(Duration::from_secs(10), async {
        while floors(&text) < 2 {
            let chunk = events.chunk().await.unwrap().expect("the stream goes on");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("a first floor at once and the next within the interval");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let floor: Value = serde_json::from_str(data).unwrap();
    assert_eq!(floor["stages"].as_array().unwrap().len(), 10);
    assert!(text.contains("retry: 2000"), "{text}");

    app.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends when order-watch stops");
}
