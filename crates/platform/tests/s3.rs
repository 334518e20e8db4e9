//! Object storage against a real S3 server (`testkit::s3`): signed requests over HTTP, the same
//! client code as production.

use std::time::{Duration, Instant};

use bytes::Bytes;
use platform::storage::{ObjectStorage, StorageConfig, StorageError};
use testkit::s3::S3Server;

const KEY: &str = "models/0190a5a4-7c1e-7000-8000-000000000001/ring.stl";

fn storage(config: &StorageConfig) -> ObjectStorage {
    ObjectStorage::new(config).expect("the S3 configuration is valid")
}

#[tokio::test]
async fn an_object_put_into_s3_reads_back_the_same_and_is_gone_after_delete() {
    let s3 = S3Server::start().await;
    let storage = storage(&s3.config());
    assert_eq!(storage.backend(), "s3");
    let model = Bytes::from_static(b"solid ring\nendsolid ring\n");

    storage.put(KEY, model.clone()).await.unwrap();
    assert_eq!(storage.get(KEY).await.unwrap(), model);

    storage.delete(KEY).await.unwrap();
    assert!(matches!(
        storage.get(KEY).await,
        Err(StorageError::NotFound(key)) if key == KEY
    ));
    storage.delete(KEY).await.unwrap();
}

#[tokio::test]
async fn putting_an_existing_key_replaces_the_object() {
    let s3 = S3Server::start().await;
    let storage = storage(&s3.config());

    storage.put(KEY, Bytes::from_static(b"old")).await.unwrap();
    storage.put(KEY, Bytes::from_static(b"new")).await.unwrap();
    assert_eq!(storage.get(KEY).await.unwrap(), Bytes::from_static(b"new"));
}

#[tokio::test]
async fn reading_a_key_that_was_never_stored_is_not_found() {
    let s3 = S3Server::start().await;
    let storage = storage(&s3.config());

    assert!(matches!(
        storage.get("models/nobody/nothing.stl").await,
        Err(StorageError::NotFound(key)) if key == "models/nobody/nothing.stl"
    ));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_a_backend_error_that_says_so() {
    let s3 = S3Server::start().await;
    let mut config = s3.config();
    let StorageConfig::S3 {
        secret_access_key, ..
    } = &mut config
    else {
        unreachable!("the S3 server's configuration is S3");
    };
    *secret_access_key = Some("not-the-secret".into());
    let storage = storage(&config);

    let err = storage
        .put(KEY, Bytes::from_static(b"solid x"))
        .await
        .expect_err("a request signed with the wrong secret is refused");
    let StorageError::Backend(source) = &err else {
        panic!("expected a backend error, got {err:?}");
    };
    assert!(
        matches!(source, object_store::Error::PermissionDenied { .. }),
        "{source:?}"
    );
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
}

#[tokio::test]
async fn a_failing_server_makes_put_fail_within_seconds_and_it_works_again_once_recovered() {
    let s3 = S3Server::start().await;
    let storage = storage(&s3.config());
    s3.set_failing(true);

    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        storage.put(KEY, Bytes::from_static(b"solid x")),
    )
    .await
    .expect("put gives up instead of retrying for long");
    assert!(
        matches!(&result, Err(StorageError::Backend(_))),
        "{result:?}"
    );
    assert!(
        result.unwrap_err().to_string().contains("503"),
        "the error names the server's answer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    s3.set_failing(false);
    storage
        .put(KEY, Bytes::from_static(b"solid x"))
        .await
        .unwrap();
    assert_eq!(
        storage.get(KEY).await.unwrap(),
        Bytes::from_static(b"solid x")
    );
}
