use std::collections::BTreeMap;

use serde_json::Value;
use shop_api::{PartnerLimits, Rate};

use crate::helpers::{Part, TestApp, error_code, order_json, spawn_two_replicas};

/// Places the ring at the Shop at `address`, as partner `partner` when given.
async fn place(app: &TestApp, address: &str, partner: Option<&str>) -> reqwest::Response {
    let mut order = order_json();
    if let Some(partner) = partner {
        order["partner_id"] = partner.into();
    }
    let parts = vec![
        Part::Order(order.to_string()),
        Part::Model("ring.stl", testkit::fixtures::stl("torus.STL")),
    ];
    app.post_order_to(address, parts, None).await
}

#[tokio::test]
async fn a_partner_over_its_rate_gets_429_with_the_draft_headers_across_replicas_and_nothing_is_stored()
 {
    let limits = PartnerLimits {
        default: Rate::parse("100/1m").unwrap(),
        per_partner: BTreeMap::from([("bulk".to_owned(), Rate::parse("3/1m").unwrap())]),
    };
    let (app, second) = spawn_two_replicas(limits).await;
    let first = app.address.clone();

    // Its burst of three, through both replicas: one shared budget.
    for (n, address) in [&first, &second, &first].into_iter().enumerate() {
        let accepted = place(&app, address, Some("bulk")).await;
        assert_eq!(accepted.status(), 201, "order {n}");
        assert_eq!(
            accepted.headers()["ratelimit-policy"],
            "\"partner\";q=3;w=60"
        );
        let remaining = accepted.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            remaining.starts_with(&format!("\"partner\";r={};t=", 2 - n)),
            "order {n}: {remaining}"
        );
    }
    for address in [&second, &first] {
        let refused = place(&app, address, Some("bulk")).await;
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&retry_after), "{retry_after}");
        assert_eq!(
            refused.headers()["ratelimit-policy"],
            "\"partner\";q=3;w=60"
        );
        assert!(
            refused.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"partner\";r=0;t="),
        );
        let (status, code, message) = error_code(refused).await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"));
        assert!(message.contains("bulk"), "{message}");
    }
    assert_eq!(app.count("orders").await, 3, "nothing stored for a refusal");
    assert_eq!(
        app.count("messaging.outbox WHERE routing_key = 'order.created'")
            .await,
        3,
        "nothing published for a refusal"
    );

    // Another partner, and customers of the web shop, are not held back by it.
    assert_eq!(place(&app, &second, Some("acme")).await.status(), 201);
    let web = place(&app, &first, None).await;
    assert_eq!(web.status(), 201);
    assert!(web.headers().get("ratelimit").is_none());
    let created: Value = web.json().await.unwrap();
    assert_eq!(created["source"], "web");
}
