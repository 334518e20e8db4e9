//! The order pipeline end to end: Shop, CRM and MES as real processes on real PostgreSQL,
//! RabbitMQ and storage.

use e2e::System;
use serde_json::json;

/// Mesh volumes of the closed fixtures in mm³, as trimesh 5.2.0 measures them (multibody.stl
/// after orienting each of its two bodies; see crates/domain/src/stl.rs).
const EXPECTED_VOLUMES: [(&str, f64); 4] = [
    ("20mm-xyz-cube.stl", 7_938.681_876_334_8),
    ("unit_sphere.STL", 4.152_740_749_0),
    ("torus.STL", 4.917_547_322_3),
    ("multibody.stl", 0.007_423_220_547),
];

#[tokio::test]
async fn closed_models_are_priced_with_their_exact_volume() {
    let system = System::start().await;
    let mut placed = Vec::new();
    for (fixture, volume) in EXPECTED_VOLUMES {
        placed.push((
            fixture,
            volume,
            system.place_order(fixture, "gold_750").await,
        ));
    }
    for (fixture, volume, order) in placed {
        let priced = system.until_shop_status(order.id, "priced").await;
        let price = &priced["price"];
        let measured = price["volume_mm3"].as_f64().unwrap();
        assert!(
            (measured - volume).abs() <= volume * 1e-6,
            "{fixture}: volume {measured} mm³, expected {volume} mm³"
        );
        // 18K gold weighs 15.5 g/cm³; the weight is rounded to 0.01 g.
        let weight = price["metal_weight_g"].as_f64().unwrap();
        let expected_weight = (volume / 1000.0 * 15.5 * 100.0).round() / 100.0;
        assert!(
            (weight - expected_weight).abs() < 1e-9,
            "{fixture}: weight {weight}"
        );
        assert!(price["total"].as_f64().unwrap() > 0.0, "{fixture}: {price}");
        assert_eq!(price["currency"], "EUR");
        let statuses: Vec<_> = priced["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["status"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            statuses,
            ["created", "submitted", "registered", "pricing", "priced"],
            "{fixture}"
        );
    }
}

#[tokio::test]
async fn models_that_cannot_be_made_are_rejected_with_a_reason_the_customer_can_act_on() {
    let system = System::start().await;
    let cases = [
        ("teapot.stl", "stl_not_closed"),
        ("soup.stl", "stl_not_closed"),
        ("empty.stl", "stl_empty"),
    ];
    let mut placed = Vec::new();
    for (fixture, code) in cases {
        placed.push((
            fixture,
            code,
            system.place_order(fixture, "silver_925").await,
        ));
    }
    for (fixture, code, order) in placed {
        let rejected = system.until_shop_status(order.id, "rejected").await;
        assert_eq!(rejected["rejection_code"], code, "{fixture}");
        let reason = rejected["rejection_reason"].as_str().unwrap();
        assert!(reason.len() > 20, "{fixture}: reason too short: {reason}");
        assert!(rejected["price"].is_null(), "{fixture}");
        let crm = system.until_status_in("crm", order.id, "rejected").await;
        assert_eq!(crm["reason"]["code"], code, "{fixture}");
    }
}

#[tokio::test]
async fn an_order_travels_from_upload_to_delivered_in_every_services_view() {
    let system = System::start().await;
    let order = system.place_order("torus.STL", "platinum_950").await;
    let id = order.id;
    system.until_shop_status(id, "priced").await;

    let confirmed = system.confirm(id).await;
    assert_eq!(confirmed["status"], "confirmed");
    system.until_status_in("mes", id, "confirmed").await;

    for step in ["in_production", "quality_check", "ready"] {
        let (status, body) = system
            .post(
                format!("{}/api/orders/{id}/production", system.mes.url()),
                Some(json!({"step": step})),
            )
            .await;
        assert_eq!(status, 200, "{step}: {body}");
    }
    system.until_status_in("crm", id, "ready").await;
    let (status, shipped) = system
        .post(
            format!("{}/api/orders/{id}/ship", system.crm.url()),
            Some(json!({"tracking_number": "1Z999AA10123456784"})),
        )
        .await;
    assert_eq!(status, 200, "{shipped}");
    assert_eq!(shipped["tracking_number"], "1Z999AA10123456784");
    // Delivery comes days later; the customer's view has seen the parcel leave by then.
    system.until_shop_status(id, "shipped").await;
    let (status, delivered) = system
        .post(
            format!("{}/api/orders/{id}/deliver", system.crm.url()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{delivered}");

    let shop = system.until_shop_status(id, "delivered").await;
    system.until_status_in("mes", id, "delivered").await;
    let crm = system.crm_order(id).await;
    assert_eq!(crm["status"], "delivered");
    let statuses: Vec<_> = shop["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses,
        [
            "created",
            "submitted",
            "registered",
            "pricing",
            "priced",
            "confirmed",
            "in_production",
            "quality_check",
            "ready",
            "shipped",
            "delivered"
        ]
    );
    assert_eq!(system.dead_letters().await, []);
}

#[tokio::test]
async fn an_order_cancelled_at_once_ends_cancelled_in_every_view_and_leaves_no_dead_letter() {
    let system = System::start().await;
    let order = system.place_order("torus.STL", "gold_750").await;
    let id = order.id;
    // At once: MES may hear of the cancellation before or after CRM's price request.
    let (status, body) = system
        .post(
            format!("{}/api/orders/{id}/cancel", system.shop.url()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    system.until_status_in("crm", id, "cancelled").await;
    system.until_status_in("mes", id, "cancelled").await;
    let shop = system.until_shop_status(id, "cancelled").await;
    assert!(shop["price"].is_null(), "{shop}");
    assert_eq!(system.dead_letters().await, []);
}

#[tokio::test]
async fn an_illegal_step_is_refused_and_changes_nothing() {
    let system = System::start().await;
    let order = system.place_order("20mm-xyz-cube.stl", "gold_585").await;
    let id = order.id;
    system.until_shop_status(id, "priced").await;
    let (status, body) = system
        .post(
            format!("{}/api/orders/{id}/production", system.mes.url()),
            Some(json!({"step": "ready"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "illegal_transition");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot go from `priced` to `ready`")
    );
    let (status, body) = system
        .post(
            format!("{}/api/orders/{id}/deliver", system.crm.url()),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(system.shop_order(id).await["status"], "priced");
}

#[tokio::test]
async fn every_service_lists_the_status_it_holds_of_the_orders_asked_about() {
    let system = System::start().await;
    let order = system.place_order("torus.STL", "gold_585").await;
    system.until_shop_status(order.id, "priced").await;
    system.until_status_in("crm", order.id, "priced").await;
    let unknown = uuid::Uuid::now_v7();
    for base in [system.shop.url(), system.crm.url(), system.mes.url()] {
        let url = format!("{base}/api/orders/statuses?ids={},{unknown}", order.id);
        let response = system.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let listing: serde_json::Value = response.json().await.unwrap();
        let orders = listing["orders"].as_array().unwrap();
        assert_eq!(
            orders.len(),
            1,
            "an order it does not know is left out: {listing}"
        );
        assert_eq!(orders[0]["order_id"], order.id.to_string());
        assert_eq!(orders[0]["status"], "priced", "{url}");
        assert!(orders[0]["updated_at"].as_str().is_some());

        for (query, code) in [
            ("", "missing_ids"),
            ("?ids=", "missing_ids"),
            ("?ids=12345", "invalid_order_id"),
            (
                &*format!("?ids={}", vec![unknown.to_string(); 201].join(",")),
                "too_many_ids",
            ),
        ] {
            let response = system
                .client
                .get(format!("{base}/api/orders/statuses{query}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{query}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{query}");
        }
    }
}
