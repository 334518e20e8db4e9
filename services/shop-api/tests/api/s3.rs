//! Shop storing models in a real S3 server (`testkit::s3`) instead of a directory.

use platform::storage::ObjectStorage;
use serde_json::Value;
use testkit::s3::S3Server;

use crate::helpers::{error_code, spawn_app_with_storage};

#[tokio::test]
async fn an_order_placed_over_http_stores_its_model_in_the_s3_bucket() {
    let s3 = S3Server::start().await;
    let app = spawn_app_with_storage(s3.config()).await;

    let response = app.place_ring(None).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["order_id"].as_str().unwrap();

    let bucket = ObjectStorage::new(&s3.config()).unwrap();
    let stored = bucket.get(&format!("models/{id}/ring.stl")).await.unwrap();
    assert_eq!(stored, testkit::fixtures::stl("torus.STL"));
}

#[tokio::test]
async fn when_the_s3_server_fails_the_order_is_refused_as_storage_unavailable_and_not_recorded() {
    let s3 = S3Server::start().await;
    let app = spawn_app_with_storage(s3.config()).await;
    s3.set_failing(true);

    let response = app.place_ring(Some("retry-me")).await;
    assert!(
        response.headers().contains_key("retry-after"),
        "the client is told to retry"
    );
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (503, "storage_unavailable"));
    assert_eq!(app.count("orders").await, 0);

    s3.set_failing(false);
    let retried = app.place_ring(Some("retry-me")).await;
    assert_eq!(
        retried.status(),
        201,
        "the same request succeeds once S3 is back"
    );
    assert_eq!(app.count("orders").await, 1);
}
