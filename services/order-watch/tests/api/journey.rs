use chrono::{Duration, Utc};
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{order_span, spawn_app, transition};

#[tokio::test]
async fn a_journey_stitches_the_spans_of_one_order_across_its_traces() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let other = Uuid::now_v7();
    let t0 = app.clock.now() - Duration::seconds(60);
    let (creation, confirmation) = ([1; 16], [2; 16]);

    let shop = build::request(
        "shop-api",
        vec![
            transition(order, creation, 1, "created", t0),
            order_span(
                order,
                creation,
                2,
                "INSERT orders",
                t0 + Duration::milliseconds(5),
                vec![],
            ),
            // A person confirms later: a new trace that links to the first one.
            build::with_relations(
                transition(
                    order,
                    confirmation,
                    3,
                    "confirmed",
                    t0 + Duration::seconds(30),
                ),
                None,
                &[(creation, [1; 8])],
            ),
            transition(other, [9; 16], 1, "created", t0),
            build::span([7; 16], [7; 8], "GET /health", 0, 1, vec![]),
        ],
    );
    assert_eq!(app.export(&shop).await.status(), 200);
    let mes = build::request(
        "mes-api",
        vec![transition(
            order,
            creation,
            4,
            "priced",
            t0 + Duration::seconds(10),
        )],
    );
    assert_eq!(app.export(&mes).await.status(), 200);

    let journey = app.journey(order).await;
    assert_eq!(journey["order_id"], order.to_string());
    assert_eq!(journey["status"], "confirmed");
    assert_eq!(journey["stage"], "production_queue");
    assert_eq!(journey["span_count"], 4);
    let names: Vec<&str> = journey["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "order created",
            "INSERT orders",
            "order priced",
            "order confirmed"
        ]
    );
    assert_eq!(journey["spans"][2]["service"], "mes-api");
    assert_eq!(journey["traces"].as_array().unwrap().len(), 2);
    assert_eq!(journey["joins"][0]["from_trace_id"], hex(&confirmation));
    assert_eq!(journey["joins"][0]["to_trace_id"], hex(&creation));
    assert_eq!(
        journey["last_seen"].as_str().unwrap()[..19],
        (t0 + Duration::seconds(30)).to_rfc3339()[..19]
    );
    assert_eq!(app.journey(other).await["span_count"], 1);
}

#[tokio::test]
async fn an_older_status_arriving_late_does_not_move_the_order_back() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let t0 = Utc::now();
    app.export(&build::request(
        "mes-api",
        vec![transition(order, [1; 16], 2, "priced", t0)],
    ))
    .await;
    app.export(&build::request(
        "crm-api",
        vec![transition(order, [1; 16], 1, "registered", t0)],
    ))
    .await;
    assert_eq!(app.journey(order).await["status"], "priced");
}

#[tokio::test]
async fn a_span_sent_twice_is_stored_once() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let request = build::request(
        "shop-api",
        vec![transition(order, [1; 16], 1, "created", Utc::now())],
    );
    app.export(&request).await;
    app.export(&request).await;
    assert_eq!(app.journey(order).await["span_count"], 1);
}

#[tokio::test]
async fn an_unknown_order_is_a_404_and_a_malformed_id_a_400() {
    let app = spawn_app().await;
    let (status, body) = app
        .get(&format!("/api/orders/{}/journey", Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("order_not_found"))
    );
    let (status, _) = app.get("/api/orders/nope/journey").await;
    assert_eq!(status, 400);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_journey_answer_holds_at_most_its_stated_number_of_spans_the_latest_ones() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let t0 = app.clock.now() - Duration::seconds(3_600);
    let limit = order_watch::api::MAX_JOURNEY_SPANS;
    let mut spans = vec![transition(order, [1; 16], 1, "created", t0)];
    // One more than the answer holds, each a millisecond after the one before, spread over
    // traces so that every (trace, span) pair is new.
    for n in 0..limit {
        let trace = [2 + (n / 200) as u8; 16];
        let at = t0 + Duration::milliseconds(1 + n as i64);
        spans.push(order_span(
            order,
            trace,
            (n % 200) as u8 + 1,
            "SELECT orders",
            at,
            Vec::new(),
        ));
    }
    for chunk in spans.chunks(500) {
        let response = app
            .export(&build::request("shop-api", chunk.to_vec()))
            .await;
        assert!(response.status().is_success());
    }

    let journey = app.journey(order).await;
    let shown = journey["spans"].as_array().unwrap();
    assert_eq!(shown.len(), limit);
    assert_eq!(journey["spans_truncated"], true);
    assert_eq!(
        shown[0]["name"], "SELECT orders",
        "the oldest, the transition, is left out"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_order_flooded_with_spans_stores_no_more_than_its_limit_but_still_moves() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let limit = order_watch::store::MAX_SPANS_PER_ORDER as usize;
    let t0 = app.clock.now() - Duration::seconds(3_600);
    let mut spans = vec![transition(order, [1; 16], 1, "created", t0)];
    for n in 0..limit + 49 {
        let trace = [
            2 + (n / 250) as u8,
            (n % 250) as u8,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
        ];
        let at = t0 + Duration::milliseconds(1 + n as i64 / 10);
        spans.push(order_span(order, trace, 1, "SELECT orders", at, Vec::new()));
    }
    // The order moves after the flood: that is kept.
    spans.push(transition(
        order,
        [1; 16],
        2,
        "submitted",
        t0 + Duration::seconds(60),
    ));
    for chunk in spans.chunks(2_000) {
        let response = app
            .export(&build::request("shop-api", chunk.to_vec()))
            .await;
        assert!(response.status().is_success());
    }

    let journey = app.journey(order).await;
    assert_eq!(
        journey["span_count"],
        limit as u64 + 1,
        "the limit and the transition"
    );
    assert_eq!(journey["status"], "submitted");
    app.stop().await;
}
