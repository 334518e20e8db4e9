use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{MAX_MODEL_BYTES, Part, error_code, order_json, spawn_app};

#[tokio::test]
async fn an_order_with_a_model_is_accepted_and_can_be_read_back() {
    let app = spawn_app().await;
    let response = app.place_ring(None).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["order_id"].as_str().unwrap();
    assert_eq!(location, format!("/api/orders/{id}"));
    assert_eq!(created["status"], "created");

    let order: Value = app.get_order(id).await.json().await.unwrap();
    assert_eq!(order["material"], "gold_585");
    assert_eq!(order["size"], "17");
    assert_eq!(order["external_order_id"], "PO-2026-000123");
    assert_eq!(order["source"], "web");
    assert_eq!(order["model"]["file_name"], "ring.stl");
    assert_eq!(order["history"][0]["status"], "created");
    assert!(
        order.get("customer").is_none(),
        "no contact data in the customer view"
    );

    let stored = app.storage.path().join(format!("models/{id}/ring.stl"));
    assert_eq!(
        std::fs::read(stored).unwrap(),
        testkit::fixtures::stl("torus.STL")
    );
    let email: String = sqlx::query_scalar("SELECT email FROM customers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(email, "jane.doe@example.com");
}

#[tokio::test]
async fn the_answer_to_a_new_order_is_the_order_as_it_was_stored() {
    let app = spawn_app().await;
    let created: Value = app.place_ring(None).await.json().await.unwrap();
    let id = created["order_id"].as_str().unwrap();

    let stored: Value = app.get_order(id).await.json().await.unwrap();
    // The relay may have moved the order on to `submitted` since; what it was created with is
    // the same, to the microsecond.
    for field in [
        "order_id",
        "material",
        "size",
        "comment",
        "external_order_id",
        "partner_id",
        "source",
        "customer_id",
        "model",
        "price",
        "rejection_code",
        "rejection_reason",
        "created_at",
    ] {
        assert_eq!(created[field], stored[field], "{field}");
    }
    assert_eq!(created["history"].as_array().map(Vec::len), Some(1));
    assert_eq!(created["history"][0], stored["history"][0]);
    // Only the answer to the creation carries the customer's token.
    let mut created = created;
    let token = created
        .as_object_mut()
        .unwrap()
        .remove("customer_token")
        .unwrap();
    assert!(token.as_str().unwrap().starts_with("ord_"));
    assert!(stored.get("customer_token").is_none(), "{stored}");
    if stored["status"] == "created" {
        assert_eq!(created, stored);
    }
}

#[tokio::test]
async fn the_order_is_submitted_once_its_message_reached_the_broker() {
    let app = spawn_app().await;
    let created: Value = app.place_ring(None).await.json().await.unwrap();
    let id = created["order_id"].as_str().unwrap().to_owned();

    let (routing_key, envelope) = app
        .next_message("crm.orders")
        .await
        .expect("order.created is published");
    assert_eq!(routing_key, "order.created");
    assert_eq!(envelope["type"], "order.created");
    assert_eq!(envelope["order_id"], id.as_str());
    assert_eq!(envelope["source"], "shop-api");
    assert_eq!(envelope["data"]["material"], "gold_585");
    assert_eq!(
        envelope["data"]["model"]["key"],
        format!("models/{id}/ring.stl").as_str()
    );

    testkit::wait::until(
        "the order to be submitted",
        std::time::Duration::from_secs(10),
        || async {
            let order: Value = app.get_order(&id).await.json().await.unwrap();
            (order["status"] == "submitted").then_some(())
        },
    )
    .await;
    let (routing_key, envelope) = app
        .next_message("crm.orders")
        .await
        .expect("the status change is announced");
    assert_eq!(routing_key, "order.status_changed.submitted");
    assert_eq!(envelope["data"]["from"], "created");
    assert_eq!(envelope["data"]["to"], "submitted");
}

#[tokio::test]
async fn the_same_idempotency_key_twice_creates_one_order() {
    let app = spawn_app().await;
    let first = app.place_ring(Some("checkout-42")).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = app.place_ring(Some("checkout-42")).await;
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["order_id"], second["order_id"]);
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(
        app.count("messaging.outbox WHERE kind = 'order.created'")
            .await,
        1
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_create_one_order() {
    let app = spawn_app().await;
    let (a, b, c) = tokio::join!(
        app.place_ring(Some("double-click")),
        app.place_ring(Some("double-click")),
        app.place_ring(Some("double-click")),
    );
    let mut ids = Vec::new();
    for response in [a, b, c] {
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("orders").await, 1);
    let models: usize = std::fs::read_dir(app.storage.path().join("models"))
        .unwrap()
        .map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(models, 1, "the losers' uploads are removed");
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_refused() {
    let app = spawn_app().await;
    assert_eq!(app.place_ring(Some("k-1")).await.status(), 201);
    let mut changed = order_json();
    changed["material"] = "platinum_950".into();
    let response = app
        .post_order(
            vec![
                Part::Order(changed.to_string()),
                Part::Model("ring.stl", testkit::fixtures::stl("torus.STL")),
            ],
            Some("k-1"),
        )
        .await;
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn bad_uploads_get_a_clear_error_and_store_nothing() {
    let app = spawn_app().await;
    let torus = || testkit::fixtures::stl("torus.STL");
    let mut unknown_material = order_json();
    unknown_material["material"] = "bronze".into();
    let mut no_email = order_json();
    no_email["customer"]["email"] = "not-an-address".into();
    let mut unknown_field = order_json();
    unknown_field["colour"] = "red".into();
    let cases: Vec<(&str, Vec<Part>, u16, &str)> = vec![
        (
            "malformed JSON",
            vec![
                Part::Order("{\"customer\": ".into()),
                Part::Model("a.stl", torus()),
            ],
            400,
            "invalid_json",
        ),
        (
            "no model part",
            vec![Part::Order(order_json().to_string())],
            400,
            "missing_part",
        ),
        (
            "no order part",
            vec![Part::Model("a.stl", torus())],
            400,
            "missing_part",
        ),
        (
            "an unexpected part",
            vec![
                Part::Order(order_json().to_string()),
                Part::Model("a.stl", torus()),
                Part::Other("extra"),
            ],
            400,
            "unknown_part",
        ),
        (
            "an unknown material",
            vec![
                Part::Order(unknown_material.to_string()),
                Part::Model("a.stl", torus()),
            ],
            422,
            "unknown_material",
        ),
        (
            "an invalid e-mail",
            vec![
                Part::Order(no_email.to_string()),
                Part::Model("a.stl", torus()),
            ],
            422,
            "invalid_order",
        ),
        (
            "an unknown field",
            vec![
                Part::Order(unknown_field.to_string()),
                Part::Model("a.stl", torus()),
            ],
            422,
            "invalid_order",
        ),
        (
            "the order part twice",
            vec![
                Part::Order(order_json().to_string()),
                Part::Order(unknown_material.to_string()),
                Part::Model("a.stl", torus()),
            ],
            400,
            "duplicate_part",
        ),
        (
            "the model part twice",
            vec![
                Part::Order(order_json().to_string()),
                Part::Model("a.stl", torus()),
                Part::Model("b.stl", torus()),
            ],
            400,
            "duplicate_part",
        ),
        (
            "a file that is not an STL",
            vec![
                Part::Order(order_json().to_string()),
                Part::Model(
                    "photo.stl",
                    b"\x89PNG\r\n\x1a\n not a model at all".to_vec(),
                ),
            ],
            422,
            "invalid_model",
        ),
        (
            "an empty file",
            vec![
                Part::Order(order_json().to_string()),
                Part::Model("a.stl", Vec::new()),
            ],
            422,
            "invalid_model",
        ),
        (
            "a model over the size limit",
            vec![
                Part::Order(order_json().to_string()),
                Part::Model("huge.stl", vec![b'x'; MAX_MODEL_BYTES + 1]),
            ],
            413,
            "payload_too_large",
        ),
    ];
    for (case, parts, status, code) in cases {
        let (got_status, got_code, message) = error_code(app.post_order(parts, None).await).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{case}: {message}"
        );
        assert!(!message.is_empty(), "{case}");
    }
    let (_, _, message) = error_code(
        app.post_order(
            vec![
                Part::Order(unknown_material.to_string()),
                Part::Model("a.stl", torus()),
            ],
            None,
        )
        .await,
    )
    .await;
    assert!(
        message.contains("gold_585") && message.contains("platinum_950"),
        "{message}"
    );
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("messaging.outbox").await, 0);
}

#[tokio::test]
async fn a_body_that_is_not_multipart_is_refused() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/api/orders", app.address))
        .json(&order_json())
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (400, "invalid_multipart"));
}

#[tokio::test]
async fn unknown_and_malformed_order_ids_are_told_apart() {
    let app = spawn_app().await;
    let (status, code, _) = error_code(app.get_order(&Uuid::now_v7().to_string()).await).await;
    assert_eq!((status, code.as_str()), (404, "order_not_found"));
    let (status, code, _) = error_code(app.get_order("not-a-uuid").await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_order_id"));
    let response = app
        .client
        .get(format!("{}/no/such/route", app.address))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}
