//! Shop's API over TLS (`HALLMARK_TLS_CERT`, `HALLMARK_TLS_KEY`, read by platform for every
//! order service): orders taken over https, plain text not answered.

use crate::helpers::{Part, order_json, spawn_app_with_tls};

#[tokio::test]
async fn given_a_certificate_shop_takes_orders_over_https_and_does_not_answer_plain_text() {
    let certificates = testkit::tls::Certificates::generate();
    let app = spawn_app_with_tls(&certificates).await;
    assert!(app.address.starts_with("https://"), "{}", app.address);

    let response = app
        .post_order(
            vec![
                Part::Order(order_json().to_string()),
                Part::Model("ring.stl", testkit::fixtures::stl("20mm-xyz-cube.stl")),
            ],
            None,
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);

    let plain = reqwest::Client::new()
        .get(app.address.replacen("https://", "http://", 1) + "/health")
        .send()
        .await;
    assert!(plain.is_err(), "Shop answered plain text: {plain:?}");
}
