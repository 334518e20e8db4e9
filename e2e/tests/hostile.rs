//! The hostile-input suite (issue 21): the classes of attack found against Hallmark, replayed
//! against the running system — Shop, CRM and MES as processes with order-watch watching them,
//! on loopback, each volley bounded in size and count — while honest customers keep ordering.
//! After each volley: every refusal is a clear 4xx in the JSON error shape, nothing was stored
//! that should not be, and in the end the honest orders are priced and have their journeys.
//!
//! The component tests prove each defence on its own; this proves they hold together, against
//! the real processes, at the same time.

use std::time::Duration;

use e2e::watch::Watch;
use e2e::{PATIENCE, System};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::{Value, json};
use testkit::otlp::build;
use uuid::Uuid;

/// One part of a hand-made upload: its name, bytes and file name (for a file part).
type Part = (&'static str, Vec<u8>, Option<&'static str>);

fn order_part(order: Value) -> Part {
    ("order", order.to_string().into_bytes(), None)
}

fn model_part(bytes: Vec<u8>) -> Part {
    ("model", bytes, Some("model.stl"))
}

fn customer_order() -> Value {
    json!({
        "customer": {"name": "Mallory Example", "email": "mallory@example.com"},
        "material": "silver_925",
    })
}

async fn upload(system: &System, parts: Vec<Part>, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes, file) in parts {
        let mut part = reqwest::multipart::Part::bytes(bytes);
        if let Some(file) = file {
            part = part.file_name(file);
        }
        form = form.part(name, part);
    }
    let mut request = system
        .client
        .post(format!("{}/api/orders", system.shop.url()))
        .multipart(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("Shop answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An axis-aligned cube of side `s` at `origin`, outward-facing.
fn cube(origin: [f32; 3], s: f32) -> Vec<[[f32; 3]; 3]> {
    let p = |i: u8| {
        [
            origin[0] + s * f32::from(i & 1),
            origin[1] + s * f32::from((i >> 1) & 1),
            origin[2] + s * f32::from((i >> 2) & 1),
        ]
    };
    [
        [0, 2, 3, 1],
        [4, 5, 7, 6],
        [0, 1, 5, 4],
        [2, 6, 7, 3],
        [0, 4, 6, 2],
        [1, 3, 7, 5],
    ]
    .into_iter()
    .flat_map(|[a, b, c, d]| [[p(a), p(b), p(c)], [p(a), p(c), p(d)]])
    .collect()
}

/// `count` cubes nested inside each other (a Russian doll of bodies).
fn nested_cubes(count: usize) -> Vec<u8> {
    let triangles: Vec<_> = (0..count)
        .flat_map(|k| {
            // The innermost of 1,001 is still 19.9 mm across.
            let k = k as f32 * 0.04;
            cube([k, k, k], 100.0 - 2.0 * k)
        })
        .collect();
    domain::stl::to_binary(&triangles)
}

fn assert_refused(what: &str, (status, body): (u16, Value), expected: (u16, &str)) {
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap_or_default()),
        expected,
        "{what}: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: no message in {body}");
}

/// What a customer-visible reason must never show: internals.
fn assert_no_internals(what: &str, text: &str) {
    for internal in [
        "panicked",
        ".rs:",
        "/src/",
        "sqlx",
        "stack backtrace",
        "rustc",
    ] {
        assert!(
            !text.contains(internal),
            "{what} shows `{internal}`: {text}"
        );
    }
}

#[tokio::test]
async fn the_system_stays_correct_and_responsive_under_hostile_input() {
    let system = System::start_with(&[("SHOP_MAX_MODEL_BYTES", "2000000")]).await;
    let watch = Watch::watching(&system, "", &[]).await;

    // Honest customers order throughout.
    let honest = {
        let client = system.client.clone();
        let shop = system.shop.url();
        tokio::spawn(async move {
            let mut placed = Vec::new();
            for _ in 0..3 {
                let order = e2e::place_order_at(&client, &shop, "torus.STL", "gold_585", &[], None)
                    .await
                    .expect("an honest order is accepted during the attack");
                placed.push(order);
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            placed
        })
    };

    // Malformed uploads: each a clear 4xx, none stored.
    let model = testkit::fixtures::stl("torus.STL");
    let volley = [
        (
            "malformed JSON",
            vec![
                ("order", b"{\"customer\": ".to_vec(), None),
                model_part(model.clone()),
            ],
            (400, "invalid_json"),
        ),
        (
            "a broken STL",
            vec![
                order_part(customer_order()),
                model_part(b"solid x\nfacet normal 0 0\n".to_vec()),
            ],
            (422, "invalid_model"),
        ),
        (
            "an oversized upload",
            vec![
                order_part(customer_order()),
                model_part(vec![b'x'; 2_100_000]),
            ],
            (413, "payload_too_large"),
        ),
        (
            "the order part twice",
            vec![
                order_part(customer_order()),
                order_part(customer_order()),
                model_part(model.clone()),
            ],
            (400, "duplicate_part"),
        ),
        (
            "a NUL in the customer's name",
            vec![
                order_part(json!({
                    "customer": {"name": "Eve\u{0}", "email": "eve@example.com"},
                    "material": "silver_925",
                })),
                model_part(model.clone()),
            ],
            (422, "invalid_order"),
        ),
    ];
    for (what, parts, expected) in volley {
        assert_refused(what, upload(&system, parts, &[]).await, expected);
    }
    // An invalid traceparent is ignored, not trusted: the order is taken in a trace of its own.
    let (status, taken) = upload(
        &system,
        vec![order_part(customer_order()), model_part(model.clone())],
        &[("traceparent", "00-zzzz-not-a-trace-01")],
    )
    .await;
    assert_eq!(status, 201, "{taken}");
    let taken_id: Uuid = taken["order_id"].as_str().unwrap().parse().unwrap();
    system.remember_token(taken_id, taken["customer_token"].as_str().unwrap());

    // Forged customer tokens: nobody acts on an order that is not theirs.
    let (_, other) = upload(
        &system,
        vec![order_part(customer_order()), model_part(model.clone())],
        &[],
    )
    .await;
    let foreign = other["customer_token"].as_str().unwrap();
    for token in [foreign, "ord_AAAA", "not-a-token", ""] {
        let response = system
            .client
            .post(format!(
                "{}/api/orders/{taken_id}/cancel",
                system.shop.url()
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "token `{token}`");
    }

    // Models made to stall or break pricing are refused with a reason a customer can act on.
    let mut rejected = Vec::new();
    for (what, bytes, code) in [
        (
            "a Russian doll of 1,001 bodies",
            nested_cubes(1_001),
            "stl_too_many_bodies",
        ),
        (
            "a cube of 500 m",
            domain::stl::to_binary(&cube([0.0; 3], 500_000.0)),
            "model_too_large",
        ),
    ] {
        let (status, body) = upload(
            &system,
            vec![order_part(customer_order()), model_part(bytes)],
            &[],
        )
        .await;
        assert_eq!(status, 201, "{what}: {body}");
        let id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
        let token = body["customer_token"].as_str().unwrap().to_owned();
        rejected.push((what, id, token, code));
    }
    // A doll within the limit is measured (nested bodies alternate material and cavity).
    let (status, deep) = upload(
        &system,
        vec![order_part(customer_order()), model_part(nested_cubes(999))],
        &[],
    )
    .await;
    assert_eq!(status, 201, "{deep}");
    let deep_id: Uuid = deep["order_id"].as_str().unwrap().parse().unwrap();

    // Hostile telemetry straight at order-watch: garbage, a NUL, a huge service name, 1970.
    let otlp = format!("{}/v1/traces", watch.otlp_endpoint);
    let garbage = system
        .client
        .post(&otlp)
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let victim = Uuid::now_v7();
    let now = u64::try_from(chrono::Utc::now().timestamp_nanos_opt().unwrap()).unwrap();
    let order = |id: Uuid| build::string("order.id", id.to_string());
    let mut request: ExportTraceServiceRequest = build::request(
        &"x".repeat(1 << 20),
        vec![
            build::span(
                [7; 16],
                [1; 8],
                "nul",
                now,
                1_000,
                vec![order(victim), build::string("note", "a\u{0}b")],
            ),
            build::span([7; 16], [2; 8], "1970", 1_000, 1_000, vec![order(victim)]),
        ],
    );
    request.resource_spans[0].scope_spans[0]
        .spans
        .push(build::span(
            [7; 16],
            [3; 8],
            "order created",
            now,
            1_000,
            vec![order(victim), build::string("order.status.to", "created")],
        ));
    let answer = system
        .client
        .post(&otlp)
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "a bad span is refused alone, never its batch"
    );

    // The system stayed correct: honest orders priced with their journeys, hostile models
    // rejected with a customer-readable reason, the deep doll measured.
    for placed in honest.await.unwrap() {
        system.remember_token(placed.id, &placed.token);
        let order = system.until_shop_status(placed.id, "priced").await;
        assert!(
            order["price"]["total"].as_f64().is_some_and(|t| t > 0.0),
            "{order}"
        );
    }
    system.until_shop_status(taken_id, "priced").await;
    for (what, id, token, code) in rejected {
        let mes = testkit::wait::until("MES's verdict", PATIENCE, || async {
            let order: Value = system
                .client
                .get(format!("{}/api/orders/{id}", system.mes.url()))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            matches!(
                order["status"].as_str(),
                Some("rejected" | "failed" | "priced")
            )
            .then_some(order)
        })
        .await;
        assert_eq!(mes["status"], "rejected", "{what}: {mes}");
        assert_eq!(mes["reason"]["code"], code, "{what}: {mes}");
        // What the customer reads at Shop, once the rejection reached it.
        let shop = testkit::wait::until("the rejection at Shop", PATIENCE, || async {
            let order: Value = system
                .client
                .get(format!("{}/api/orders/{id}", system.shop.url()))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (order["status"] == "rejected").then_some(order)
        })
        .await;
        assert_eq!(shop["rejection_code"], code, "{what}: {shop}");
        assert_no_internals(what, shop["rejection_reason"].as_str().unwrap_or_default());
    }
    let deep = system.until_status_in("mes", deep_id, "priced").await;
    assert!(
        deep["price"]["total_cents"].as_i64().is_some_and(|c| c > 0),
        "{deep}"
    );
    testkit::wait::until("the honest span's journey", PATIENCE, || async {
        watch.journey(victim).await
    })
    .await;
    assert!(
        system.dead_letters().await.is_empty(),
        "{:?}",
        system.dead_letters().await
    );
    for base in [
        system.shop.url(),
        system.crm.url(),
        system.mes.url(),
        watch.process.url(),
    ] {
        let health = system
            .client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{base}");
    }
}
