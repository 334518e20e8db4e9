//! The telemetry of one order, captured from the services' real OTLP export.

use std::collections::{BTreeSet, HashMap};

use e2e::{PATIENCE, System};
use testkit::otlp::{CapturedSpan, kind};

/// Spans of `trace_id` once every span's parent has arrived too (export is batched) and
/// `complete` holds.
async fn trace_when(
    system: &System,
    trace_id: &str,
    complete: impl Fn(&[CapturedSpan]) -> bool,
) -> Vec<CapturedSpan> {
    testkit::wait::until(
        &format!("a complete trace {trace_id}"),
        PATIENCE,
        || async {
            let spans: Vec<_> = system
                .otlp
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let ids: BTreeSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
            let connected = spans
                .iter()
                .all(|s| s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id));
            (connected && complete(&spans)).then_some(spans)
        },
    )
    .await
}

fn path_to_root<'a>(spans: &'a [CapturedSpan], from: &'a CapturedSpan) -> Vec<&'a CapturedSpan> {
    let by_id: HashMap<_, _> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut path = vec![from];
    let mut current = from;
    while let Some(parent) = by_id.get(current.parent_span_id.as_str()) {
        path.push(parent);
        current = parent;
    }
    path
}

#[tokio::test]
async fn one_order_is_one_connected_trace_from_the_http_request_through_the_calc_engine() {
    let system = System::start().await;
    let order = system.place_order("torus.STL", "gold_585").await;
    assert_eq!(
        order.trace_id.len(),
        32,
        "Shop answers with a traceresponse header"
    );
    system.until_shop_status(order.id, "priced").await;

    let spans = trace_when(&system, &order.trace_id, |spans| {
        let calc = spans.iter().any(|s| s.service == "mes-calc");
        let shop_saw_price = spans.iter().any(|s| {
            s.service == "shop-api"
                && s.kind == kind::CONSUMER
                && s.attr("messaging.rabbitmq.destination.routing_key")
                    .as_deref()
                    == Some("order.status_changed.priced")
        });
        calc && shop_saw_price
    })
    .await;

    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    let root = roots[0];
    assert_eq!(root.service, "shop-api");
    assert_eq!(root.kind, kind::SERVER);
    assert_eq!(root.name, "POST /api/orders");
    assert_eq!(
        root.attr("http.response.status_code").as_deref(),
        Some("201")
    );

    // From the calc engine back to the HTTP request, through every hop.
    let calc = spans
        .iter()
        .find(|s| s.service == "mes-calc" && s.name == "calculate price")
        .expect("the calc engine's own span");
    let path = path_to_root(&spans, calc);
    let hops: Vec<(String, String)> = path
        .iter()
        .rev()
        .filter(|s| s.kind != kind::INTERNAL)
        .map(|s| {
            let name = s.name.replace(&format!("{}.", system.namespace), "");
            (s.service.clone(), name)
        })
        .collect();
    let expected = [
        ("shop-api", "POST /api/orders"),
        ("shop-api", "publish hallmark.orders"),
        ("crm-api", "process hallmark.orders"),
        ("crm-api", "publish hallmark.orders"),
        ("mes-api", "process hallmark.orders"),
        ("mes-api", "mes-calc run"),
        ("mes-calc", "calculate price"),
    ];
    let hops: Vec<(&str, &str)> = hops.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        hops, expected,
        "the chain of non-internal spans from the request to the engine"
    );

    // Every span of the order carries its id, database and storage spans included.
    let order_id = order.id.to_string();
    for span in &spans {
        assert_eq!(
            span.attr("order.id").as_deref(),
            Some(order_id.as_str()),
            "{} {} lacks order.id",
            span.service,
            span.name
        );
    }
    assert!(
        spans
            .iter()
            .any(|s| s.attr("db.system.name").as_deref() == Some("postgresql"))
    );
    assert!(
        spans
            .iter()
            .any(|s| s.attr("aws.s3.key").is_some()
                && s.attr("hallmark.storage.size_bytes").is_some())
    );

    // Consumers are children of the creation context and link to it.
    for consumer in spans.iter().filter(|s| s.kind == kind::CONSUMER) {
        assert_eq!(
            consumer.links.len(),
            1,
            "{} {}",
            consumer.service,
            consumer.name
        );
        assert_eq!(consumer.links[0].1, consumer.parent_span_id);
        assert!(consumer.attr("messaging.message.id").is_some());
        assert!(consumer.attr("hallmark.queue.wait_ms").is_some());
    }

    // Status changes say from and to.
    let transitions: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.name.starts_with("order ") && s.attr("order.status.to").is_some())
        .map(|s| {
            (
                s.attr("order.status.from").unwrap_or_default(),
                s.attr("order.status.to").unwrap_or_default(),
            )
        })
        .collect();
    for step in [
        ("created", "submitted"),
        ("submitted", "registered"),
        ("registered", "pricing"),
        ("pricing", "priced"),
    ] {
        assert!(
            transitions.contains(&(step.0.to_owned(), step.1.to_owned())),
            "missing {step:?} in {transitions:?}"
        );
    }

    // No personal data left any process.
    let exported = String::from_utf8_lossy(&system.otlp.raw_bytes()).into_owned();
    for personal in ["Jane Doe", "jane.doe@example.com", "+49 170 1234567"] {
        assert!(!exported.contains(personal), "`{personal}` was exported");
    }
}

#[tokio::test]
async fn a_callers_trace_is_continued_and_a_malformed_one_is_replaced() {
    let system = System::start().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let continued = system
        .place_order_with_headers(
            "20mm-xyz-cube.stl",
            "silver_925",
            &[(
                "traceparent",
                &format!("00-{caller_trace}-00f067aa0ba902b7-01"),
            )],
        )
        .await;
    assert_eq!(continued.trace_id, caller_trace);

    let fresh = system
        .place_order_with_headers(
            "20mm-xyz-cube.stl",
            "silver_925",
            &[
                ("traceparent", "00-not-a-trace-01"),
                ("baggage", &"x=y,".repeat(5000)),
            ],
        )
        .await;
    assert_eq!(fresh.trace_id.len(), 32);
    assert_ne!(fresh.trace_id, caller_trace);
    assert_ne!(fresh.trace_id, "0".repeat(32));
}

#[tokio::test]
async fn each_service_serves_its_slo_metrics_for_prometheus_without_order_ids() {
    let system = System::start().await;
    let order = system.place_order("torus.STL", "gold_585").await;
    system.until_shop_status(order.id, "priced").await;

    let expected = [
        (
            &system.mes,
            vec![
                "hallmark_price_calculation_duration_seconds_bucket{",
                "hallmark_queue_wait_seconds_bucket{",
                "hallmark_event_delivery_duration_seconds_bucket{",
                "hallmark_order_status_transitions_total{",
            ],
        ),
        (
            &system.crm,
            vec![
                "hallmark_queue_wait_seconds_bucket{",
                "hallmark_event_delivery_duration_seconds_bucket{",
            ],
        ),
        (
            &system.shop,
            vec![
                "hallmark_event_delivery_duration_seconds_bucket{",
                "http_server_request_duration_seconds_bucket{",
            ],
        ),
    ];
    for (service, families) in expected {
        let metrics = testkit::wait::until("the service's metrics", PATIENCE, || async {
            let metrics = system
                .client
                .get(format!("{}/metrics", service.url()))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            families
                .iter()
                .all(|f| metrics.contains(f))
                .then_some(metrics)
        })
        .await;
        assert!(
            metrics.contains("queue=\""),
            "queue wait and delivery are labelled by queue:\n{metrics}"
        );
        assert!(
            !metrics.contains(&order.id.to_string()),
            "an order id in a label:\n{metrics}"
        );
    }
}
