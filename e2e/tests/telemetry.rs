//! The telemetry of one order, captured from the services' real OTLP export.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use e2e::{PATIENCE, Service, System};
use serde_json::{Value, json};
use testkit::otlp::{CapturedSpan, kind};
use uuid::Uuid;

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

    // Every span of the order carries its id, database and storage spans included, and says
    // that it moved the order: this trace is the pipeline's work on it.
    let order_id = order.id.to_string();
    for span in &spans {
        assert_eq!(
            span.attr("order.id").as_deref(),
            Some(order_id.as_str()),
            "{} {} lacks order.id",
            span.service,
            span.name
        );
        assert_eq!(
            span.attr("order.activity").as_deref(),
            Some("progress"),
            "{} {}",
            span.service,
            span.name
        );
    }

    // A customer reading the order only observes it, down to the database.
    let url = format!("{}/api/orders/{}", system.shop.url(), order.id);
    let read = system
        .as_customer(&url, system.client.get(&url))
        .send()
        .await
        .unwrap();
    let read_trace = e2e::trace_id_of(&read);
    let read_spans = trace_when(&system, &read_trace, |spans| {
        spans.iter().any(|s| s.kind == kind::SERVER) && spans.iter().any(|s| s.kind == kind::CLIENT)
    })
    .await;
    for span in &read_spans {
        assert_eq!(
            (span.attr("order.id"), span.attr("order.activity")),
            (Some(order_id.clone()), Some("observation".to_owned())),
            "{} {}",
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

    // A move reads and writes the order once. Shop's relay locks the order before publishing
    // `order.created` and moves it to `submitted` under that lock; a service following another's
    // move stores the trace context with the new status, not in an update of its own.
    // Spans `what` picks out beneath `ancestor` in its own process (not in the services its
    // messages reach).
    let beneath = |ancestor: &CapturedSpan, what: &dyn Fn(&CapturedSpan) -> bool| {
        spans
            .iter()
            .filter(|s| {
                what(s)
                    && path_to_root(&spans, s)[1..]
                        .iter()
                        .take_while(|a| a.service == ancestor.service)
                        .any(|a| a.span_id == ancestor.span_id)
            })
            .count()
    };
    let named = |name: &'static str| move |s: &CapturedSpan| s.name == name;
    let publish_created = spans
        .iter()
        .find(|s| {
            s.service == "shop-api"
                && s.kind == kind::PRODUCER
                && s.attr("hallmark.message.type").as_deref() == Some("order.created")
        })
        .expect("Shop's publish of order.created");
    assert_eq!(beneath(publish_created, &named("SELECT orders")), 1);
    // Consumers that followed a move without making one (none, one or, where the event came
    // late, no update).
    let updates: Vec<(String, usize)> = spans
        .iter()
        .filter(|s| s.kind == kind::CONSUMER && s.attr("order.status").is_some())
        .filter(|s| beneath(s, &|s: &CapturedSpan| s.attr("order.status.to").is_some()) == 0)
        .map(|s| {
            let what = format!("{} {}", s.service, s.name);
            (what, beneath(s, &named("UPDATE orders")))
        })
        .collect();
    assert!(updates.iter().any(|(_, n)| *n == 1), "{updates:?}");
    assert!(updates.iter().all(|(_, n)| *n <= 1), "{updates:?}");

    // No personal data left any process.
    let exported = String::from_utf8_lossy(&system.otlp.raw_bytes()).into_owned();
    for personal in ["Jane Doe", "jane.doe@example.com", "+49 170 1234567"] {
        assert!(!exported.contains(personal), "`{personal}` was exported");
    }

    // Every query ran under the request or message it was made for: the only database spans
    // without a parent are the outbox and inbox clean-up, which serves no single order.
    let orphans: Vec<String> = system
        .otlp
        .spans()
        .into_iter()
        .filter(|s| {
            s.parent_span_id.is_empty()
                && s.attr("db.system.name").is_some()
                && !s.name.starts_with("DELETE ")
        })
        .map(|s| format!("{} {}", s.service, s.name))
        .collect();
    assert!(
        orphans.is_empty(),
        "database spans under no request or message: {orphans:?}"
    );

    // Shop's own `submitted` is not routed back to Shop (its queue binds every other status).
    let submitted = status_changed("submitted");
    assert!(
        !system.otlp.spans().iter().any(|s| s.service == "shop-api"
            && s.kind == kind::CONSUMER
            && s.attr("messaging.rabbitmq.destination.routing_key")
                .as_ref()
                == Some(&submitted)),
        "Shop consumed its own {submitted}"
    );
}

#[tokio::test]
async fn a_partners_order_names_the_partner_on_its_intake_and_registration_spans() {
    let system = System::start().await;
    let order = system
        .place_partner_order("20mm-xyz-cube.stl", "silver_925", "acme-jewels")
        .await;
    assert_eq!(order.response["partner_id"], "acme-jewels");

    let spans = trace_when(&system, &order.trace_id, |spans| {
        spans.iter().any(is_registration)
    })
    .await;
    let create = order_create(&spans);
    let registration = registration_in(&spans);
    for span in [create, registration] {
        let what = format!("{} {}", span.service, span.name);
        assert_eq!(
            span.attr("partner.id").as_deref(),
            Some("acme-jewels"),
            "{what}"
        );
        assert_eq!(
            span.attr("order.source").as_deref(),
            Some("partner_api"),
            "{what}"
        );
    }
}

/// Shop's span of taking the order in.
fn order_create(spans: &[CapturedSpan]) -> &CapturedSpan {
    spans
        .iter()
        .find(|s| s.service == "shop-api" && s.name == "order create")
        .expect("Shop's `order create` span")
}

/// CRM's CONSUMER span of an `order.created`: where it registers the order.
fn is_registration(span: &CapturedSpan) -> bool {
    span.service == "crm-api"
        && span.kind == kind::CONSUMER
        && span.attr("hallmark.message.type").as_deref() == Some("order.created")
}

fn registration_in(spans: &[CapturedSpan]) -> &CapturedSpan {
    spans
        .iter()
        .find(|s| is_registration(s))
        .expect("CRM's registration span")
}

/// The services an order passes through; each consumes every status change another service
/// announces (Shop's queue leaves out `submitted`, which only Shop announces).
const SERVICES: [&str; 3] = ["crm-api", "mes-api", "shop-api"];

/// The routing key of the event announcing a move to `status`.
fn status_changed(status: &str) -> String {
    format!("order.status_changed.{status}")
}

/// Whether every service has processed the event announcing the move to `status`.
fn consumed_everywhere(spans: &[CapturedSpan], status: &str) -> bool {
    let key = status_changed(status);
    SERVICES.iter().all(|service| {
        spans.iter().any(|s| {
            s.service == *service
                && s.kind == kind::CONSUMER
                && s.attr("messaging.rabbitmq.destination.routing_key") == Some(key.clone())
        })
    })
}

/// Something a person did to an order through an HTTP endpoint, and the trace it started.
struct Action {
    service: &'static str,
    /// The endpoint's route, as the SERVER span names it.
    route: &'static str,
    from: &'static str,
    to: &'static str,
    trace_id: String,
}

impl Action {
    /// POSTs the action to `url` and notes the trace its answer names in `traceresponse`.
    async fn take(
        system: &System,
        (service, route): (&'static str, &'static str),
        (from, to): (&'static str, &'static str),
        url: String,
        body: Option<Value>,
    ) -> Self {
        let request = system.as_customer(&url, system.client.post(&url));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.send().await.expect("the service answers");
        let status = response.status();
        let trace_id = e2e::trace_id_of(&response);
        assert_eq!(
            status,
            200,
            "POST {url}: {}",
            response.text().await.unwrap_or_default()
        );
        assert_eq!(
            trace_id.len(),
            32,
            "POST {url} answers with a traceresponse"
        );
        Self {
            service,
            route,
            from,
            to,
            trace_id,
        }
    }
}

/// An order placed and driven to `delivered` by people: the customer confirms the price, the
/// workshop reports production steps, a manager ships and records the delivery. Each of these
/// requests starts a trace of its own whose root links to the context the service kept with the
/// order, and the services that consume the resulting event do so inside that new trace. Over
/// all of the order's spans: `order.id` everywhere, `order.status.from/to` on every status
/// change, the RabbitMQ messaging conventions, the attributes docs/telemetry.md registers for
/// intake and registration, and no personal data in anything exported.
#[tokio::test]
async fn every_step_a_person_takes_starts_its_own_trace_linked_to_the_orders_previous_one() {
    let system = System::start().await;
    let key = format!("e2e-{}", Uuid::new_v4().simple());
    let order = system
        .place_order_with_headers("torus.STL", "gold_585", &[("Idempotency-Key", &key)])
        .await;
    let id = order.id;
    system.until_shop_status(id, "priced").await;

    // The customer confirms at Shop, the workshop reports its steps at MES, a manager ships and
    // records the delivery at CRM; each waits until the service it talks to knows the last move.
    let shop = system.shop.url();
    let mes = system.mes.url();
    let crm = system.crm.url();
    let mut actions = vec![
        Action::take(
            &system,
            ("shop-api", "/api/orders/{order_id}/confirm"),
            ("priced", "confirmed"),
            format!("{shop}/api/orders/{id}/confirm"),
            None,
        )
        .await,
    ];
    system.until_status_in("mes", id, "confirmed").await;
    for (from, to) in [
        ("confirmed", "in_production"),
        ("in_production", "quality_check"),
        ("quality_check", "ready"),
    ] {
        actions.push(
            Action::take(
                &system,
                ("mes-api", "/api/orders/{order_id}/production"),
                (from, to),
                format!("{mes}/api/orders/{id}/production"),
                Some(json!({"step": to})),
            )
            .await,
        );
    }
    system.until_status_in("crm", id, "ready").await;
    actions.push(
        Action::take(
            &system,
            ("crm-api", "/api/orders/{order_id}/ship"),
            ("ready", "shipped"),
            format!("{crm}/api/orders/{id}/ship"),
            Some(json!({"tracking_number": "1Z999AA10123456784"})),
        )
        .await,
    );
    actions.push(
        Action::take(
            &system,
            ("crm-api", "/api/orders/{order_id}/deliver"),
            ("shipped", "delivered"),
            format!("{crm}/api/orders/{id}/deliver"),
            None,
        )
        .await,
    );
    system.until_shop_status(id, "delivered").await;

    // The order's first trace, then each action's, once every service has consumed its event.
    let mut spans = trace_when(&system, &order.trace_id, |spans| {
        consumed_everywhere(spans, "priced")
    })
    .await;
    for action in &actions {
        spans.extend(
            trace_when(&system, &action.trace_id, |spans| {
                consumed_everywhere(spans, action.to)
            })
            .await,
        );
    }
    let traces: BTreeSet<_> = std::iter::once(&order.trace_id)
        .chain(actions.iter().map(|a| &a.trace_id))
        .collect();
    assert_eq!(
        traces.len(),
        1 + actions.len(),
        "each action has a trace of its own"
    );

    let mut previous_trace = &order.trace_id;
    for action in &actions {
        let what = format!("{} at {}", action.to, action.service);
        let trace: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == action.trace_id)
            .collect();

        // A new trace, rooted in the request of the service the person talked to …
        let roots: Vec<_> = trace
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "{what}: one root: {roots:#?}");
        let root = roots[0];
        assert_eq!(
            (root.service.as_str(), root.kind, root.name.as_str()),
            (
                action.service,
                kind::SERVER,
                format!("POST {}", action.route).as_str()
            ),
            "{what}"
        );

        // … linked to the context that service kept with the order: the last work on it, in the
        // trace before this one.
        assert_eq!(root.links.len(), 1, "{what}: {:?}", root.links);
        let (linked_trace, linked_span) = &root.links[0];
        assert_eq!(
            linked_trace, previous_trace,
            "{what} links to the previous trace"
        );
        let linked = spans
            .iter()
            .find(|s| &s.trace_id == linked_trace && &s.span_id == linked_span)
            .unwrap_or_else(|| panic!("{what}: the linked span {linked_span} was exported"));
        assert_eq!(
            linked.service, action.service,
            "{what}: linked to {linked:#?}"
        );
        previous_trace = &action.trace_id;

        // The move itself, and its announcement, belong to the new trace.
        let transition = trace
            .iter()
            .find(|s| s.name == format!("order {}", action.to))
            .unwrap_or_else(|| panic!("{what}: a transition span"));
        assert_eq!(transition.service, action.service, "{what}");
        assert_eq!(
            transition.attr("order.status.from").as_deref(),
            Some(action.from)
        );
        let routing_key = status_changed(action.to);
        let routed = |s: &&&CapturedSpan| {
            s.attr("messaging.rabbitmq.destination.routing_key")
                .as_deref()
                == Some(routing_key.as_str())
        };
        let producer = trace
            .iter()
            .filter(routed)
            .find(|s| s.kind == kind::PRODUCER)
            .unwrap_or_else(|| panic!("{what}: a PRODUCER span"));
        assert_eq!(producer.service, action.service, "{what}");

        // Every service processes the event as a child of (and linked to) its publication.
        let consumers: Vec<_> = trace
            .iter()
            .filter(routed)
            .filter(|s| s.kind == kind::CONSUMER)
            .collect();
        let consuming: BTreeSet<_> = consumers.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(consuming, BTreeSet::from(SERVICES), "{what}");
        for consumer in consumers {
            let who = format!("{what}, consumed by {}", consumer.service);
            assert_eq!(consumer.parent_span_id, producer.span_id, "{who}");
            assert_eq!(
                consumer.links,
                [(producer.trace_id.clone(), producer.span_id.clone())],
                "{who}"
            );
            assert_eq!(
                consumer.attr("messaging.message.id"),
                producer.attr("messaging.message.id"),
                "{who}"
            );
            // The projection's status after the event: this one, or a later one when events
            // were processed out of order.
            if consumer.service != action.service {
                assert!(consumer.attr("order.status").is_some(), "{who}");
            }
        }
    }

    // Every span of the order says which order it belongs to, except Shop's look-up of the
    // Idempotency-Key, which runs before the order exists.
    let order_id = id.to_string();
    let create = order_create(&spans);
    let key_lookup = |span: &CapturedSpan| {
        span.parent_span_id == create.parent_span_id
            && span.name == "SELECT orders"
            && span.end_unix_nano <= create.start_unix_nano
    };
    for span in spans.iter().filter(|s| !key_lookup(s)) {
        assert_eq!(
            span.attr("order.id").as_deref(),
            Some(order_id.as_str()),
            "{span:#?} lacks order.id",
        );
    }

    // Every status change, in the service that owns it, says from and to.
    let transitions: BTreeSet<(String, String, String)> = spans
        .iter()
        .filter(|s| s.name.starts_with("order ") && s.attr("order.status.to").is_some())
        .map(|s| {
            (
                s.service.clone(),
                s.attr("order.status.from").unwrap_or_default(),
                s.attr("order.status.to").unwrap_or_default(),
            )
        })
        .collect();
    for (service, from, to) in [
        ("shop-api", "", "created"),
        ("shop-api", "created", "submitted"),
        ("crm-api", "submitted", "registered"),
        ("mes-api", "registered", "pricing"),
        ("mes-api", "pricing", "priced"),
        ("shop-api", "priced", "confirmed"),
        ("mes-api", "confirmed", "in_production"),
        ("mes-api", "in_production", "quality_check"),
        ("mes-api", "quality_check", "ready"),
        ("crm-api", "ready", "shipped"),
        ("crm-api", "shipped", "delivered"),
    ] {
        let step = (service.to_owned(), from.to_owned(), to.to_owned());
        assert!(
            transitions.contains(&step),
            "missing {step:?} in {transitions:#?}"
        );
    }
    for span in spans.iter().filter(|s| s.attr("order.status.to").is_some()) {
        assert!(
            span.attr("order.stage").is_some(),
            "{} {} lacks order.stage",
            span.service,
            span.name
        );
        if span.service != "mes-api" {
            assert_eq!(
                span.attr("order.idempotency_key"),
                Some(key.clone()),
                "{} {}",
                span.service,
                span.name
            );
        }
    }

    // Messaging spans follow the conventions for RabbitMQ.
    let messaging: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("publish ") || s.name.starts_with("process "))
        .collect();
    for span in messaging {
        let what = format!("{} {}", span.service, span.name);
        let (kind, operation) = if span.name.starts_with("publish ") {
            (kind::PRODUCER, "send")
        } else {
            (kind::CONSUMER, "process")
        };
        assert_eq!(span.kind, kind, "{what}");
        assert_eq!(
            span.attr("messaging.system").as_deref(),
            Some("rabbitmq"),
            "{what}"
        );
        assert_eq!(
            span.attr("messaging.operation.type").as_deref(),
            Some(operation),
            "{what}"
        );
        assert!(
            span.attr("messaging.message.id")
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        for present in [
            "messaging.destination.name",
            "messaging.rabbitmq.destination.routing_key",
            "hallmark.message.type",
        ] {
            assert!(span.attr(present).is_some(), "{what} lacks {present}");
        }
        if kind == kind::CONSUMER {
            for present in [
                "messaging.destination.subscription.name",
                "hallmark.queue.wait_ms",
                "hallmark.retry.count",
            ] {
                assert!(span.attr(present).is_some(), "{what} lacks {present}");
            }
        }
    }

    // Where the order came from and who placed it, in Shop's intake and CRM's registration.
    let customer_id = order.response["customer_id"].as_str().unwrap().to_owned();
    let external_id = order.response["external_order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let registration = registration_in(&spans);
    for span in [create, registration] {
        let what = format!("{} {}", span.service, span.name);
        assert_eq!(
            span.attr("order.external_id"),
            Some(external_id.clone()),
            "{what}"
        );
        assert_eq!(
            span.attr("order.idempotency_key"),
            Some(key.clone()),
            "{what}"
        );
        assert_eq!(span.attr("order.source").as_deref(), Some("web"), "{what}");
        assert_eq!(
            span.attr("customer.id"),
            Some(customer_id.clone()),
            "{what}"
        );
        assert_eq!(
            span.attr("partner.id"),
            None,
            "{what}: a web order has no partner"
        );
    }
    assert_eq!(create.attr("order.material").as_deref(), Some("gold_585"));
    let pricing = spans
        .iter()
        .find(|s| s.name == "price model")
        .expect("MES's `price model` span");
    assert_eq!(pricing.attr("order.material").as_deref(), Some("gold_585"));

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
    for (service, mut families) in expected {
        // Every service samples its outbox backlog.
        families.extend([
            "hallmark_outbox_pending{",
            "hallmark_outbox_oldest_age_seconds{",
        ]);
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

/// Every line a service logs is a JSON object; a line written inside a request or message span
/// carries the trace and span id of an exported span, and no line shows the customer's contact
/// data. JSON (`telemetry::logging::JsonLines`) is the only format the services write, so no
/// setting is needed to select it.
#[tokio::test]
async fn service_logs_are_json_lines_that_lead_to_the_trace_and_never_show_personal_data() {
    let system = System::start().await;
    let order = system.place_order("torus.STL", "gold_585").await;
    system.until_shop_status(order.id, "priced").await;
    let spans = trace_when(&system, &order.trace_id, |spans| {
        consumed_everywhere(spans, "priced")
    })
    .await;

    // A line each service writes while working on the order, inside a request or message span.
    let expected = [
        (&system.shop, "shop-api", "order accepted"),
        (&system.crm, "crm-api", "order registered, price requested"),
        (&system.mes, "mes-api", "price calculation queued"),
    ];
    for (process, service, message) in expected {
        let text = process.log_text();
        // Only whole lines: the service may be writing one right now.
        let lines: Vec<Value> = text
            .split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("{service} wrote a line that is not JSON ({e}): {line}")
                })
            })
            .collect();
        for line in &lines {
            for field in ["timestamp", "level", "target", "message"] {
                assert!(line[field].is_string(), "{service}: no `{field}` in {line}");
            }
            assert_eq!(line["service"], service, "{line}");
            if line.get("trace_id").is_some() || line.get("span_id").is_some() {
                let id_of_length = |field: &str, length: usize| {
                    line[field].as_str().is_some_and(|id| {
                        id.len() == length && id.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                };
                assert!(
                    id_of_length("trace_id", 32) && id_of_length("span_id", 16),
                    "{service}: a line inside a span without a well-formed trace and span id: {line}"
                );
            }
        }

        let line = lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("{service} logged `{message}`:\n{text}"));
        assert_eq!(line["trace_id"], order.trace_id.as_str(), "{line}");
        assert_eq!(line["order_id"], order.id.to_string(), "{line}");
        assert!(
            spans
                .iter()
                .any(|s| s.service == service
                    && Some(s.span_id.as_str()) == line["span_id"].as_str()),
            "{service}: the line's span_id names an exported span of the order: {line}"
        );

        for personal in ["Jane Doe", "jane.doe@example.com", "+49 170 1234567"] {
            assert!(!text.contains(personal), "{service} logged `{personal}`");
        }
    }
}

/// A collector address where nothing listens.
fn nothing_listening() -> String {
    format!("http://127.0.0.1:{}", testkit::process::free_port())
}

/// A collector that accepts connections and never answers; it lives as long as the test.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let endpoint = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    endpoint
}

/// The sum of the samples of Prometheus counter `name` whose labels include `label`.
fn counter_total(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Places orders while the services export to `collector`, which takes nothing: every request
/// answers at once, every order is priced without waiting for export timeouts, and each service
/// counts the spans it drops, both for want of room in its (deliberately tiny) queue and from
/// exports that failed.
async fn orders_flow_and_dropped_spans_are_counted_while_exporting_to(collector: &str) {
    let system = System::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
    ])
    .await;
    let mut placed = Vec::new();
    for _ in 0..4 {
        let order = tokio::time::timeout(
            Duration::from_secs(5),
            system.place_order("20mm-xyz-cube.stl", "silver_925"),
        )
        .await
        .expect("Shop answers within 5 s although the collector takes nothing");
        placed.push(order);
    }
    // The exporter gives a collector that never answers 10 s (`OTEL_EXPORTER_OTLP_TIMEOUT`);
    // the calc engine, whose exit MES awaits, must not wait that long for every calculation.
    tokio::time::timeout(Duration::from_secs(20), async {
        for order in &placed {
            system.until_shop_status(order.id, "priced").await;
        }
    })
    .await
    .expect("every order is priced within 20 s");

    for service in [&system.shop, &system.crm, &system.mes] {
        testkit::wait::until(
            "the service to count spans dropped in its queue and in failed exports",
            PATIENCE,
            || async {
                let metrics = system
                    .client
                    .get(format!("{}/metrics", service.url()))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                let queue_full = counter_total(
                    &metrics,
                    "otel_sdk_processor_span_processed_total",
                    r#"error_type="queue_full""#,
                );
                let failed = counter_total(
                    &metrics,
                    "otel_sdk_exporter_span_exported_total",
                    "error_type=",
                );
                (queue_full > 0.0 && failed > 0.0).then_some(())
            },
        )
        .await;
    }
    assert!(
        system.otlp.spans().is_empty(),
        "the services exported to {collector}, not to the test's receiver"
    );
}

#[tokio::test]
async fn requests_answer_at_once_and_orders_are_priced_when_nothing_listens_at_the_collector_address()
 {
    orders_flow_and_dropped_spans_are_counted_while_exporting_to(&nothing_listening()).await;
}

#[tokio::test]
async fn requests_answer_at_once_and_orders_are_priced_when_the_collector_accepts_but_never_answers()
 {
    orders_flow_and_dropped_spans_are_counted_while_exporting_to(&black_hole().await).await;
}

/// A message the broker cannot route (here: `order.created` after CRM's queue was unbound from
/// it) fails its PRODUCER span with the reason, under the order's trace, and the relay's warning
/// is logged under that span.
#[tokio::test]
async fn a_publish_the_broker_cannot_route_fails_its_span_with_the_reason() {
    use messaging::topology::Names;

    let mut system = System::start().await;
    // Only CRM binds its queue, when it connects to the broker, and connecting is not part of
    // starting: wait until it has, then stop it, so that it cannot bind it again after it was
    // unbound.
    testkit::wait::until("CRM to declare its queue", PATIENCE, || {
        let declared = system
            .crm
            .log_text()
            .contains("amqp connected, topology declared");
        async move { declared.then_some(()) }
    })
    .await;
    system
        .process(Service::Crm)
        .stop(Duration::from_secs(10))
        .await;
    let names = Names::new(&system.namespace);
    let connection = lapin::Connection::connect(
        secrecy::ExposeSecret::expose_secret(&system.broker.url),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("the broker");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .queue_unbind(
            names.queue("crm.orders").as_str().into(),
            names.orders_exchange().as_str().into(),
            "order.created".into(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("CRM's queue unbound from order.created");
    let _ = connection.close(200, "unbound".into()).await;

    let order = system.place_order("torus.STL", "gold_585").await;
    let failed_publish = |s: &CapturedSpan| {
        s.service == "shop-api"
            && s.kind == kind::PRODUCER
            && s.status_code == 2
            && s.attr("messaging.rabbitmq.destination.routing_key")
                .as_deref()
                == Some("order.created")
    };
    let spans = trace_when(&system, &order.trace_id, |spans| {
        spans.iter().any(failed_publish)
    })
    .await;
    let publish = spans.iter().find(|s| failed_publish(s)).unwrap();
    assert_eq!(publish.attr("error.type").as_deref(), Some("unroutable"));
    assert_eq!(
        publish.attr("order.id").as_deref(),
        Some(order.id.to_string().as_str())
    );
    let parent = spans
        .iter()
        .find(|s| s.span_id == publish.parent_span_id)
        .expect("the publish span's parent was exported");
    assert_eq!(parent.name, "order create");

    let log = system.shop.log_text();
    let warning: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "outbox publish failed")
        .unwrap_or_else(|| panic!("shop-api logged the failed publish:\n{log}"));
    assert_eq!(warning["trace_id"], order.trace_id.as_str(), "{warning}");
    assert_eq!(warning["span_id"], publish.span_id.as_str(), "{warning}");
    assert_eq!(warning["order_id"], order.id.to_string(), "{warning}");
}
