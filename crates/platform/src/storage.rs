//! Where uploaded models live: the local filesystem by default, any S3-compatible server when a
//! bucket is configured. The same code runs on both through the `object_store` crate, which also
//! retries transient S3 failures with back-off.
//!
//! Every call is a CLIENT span (`S3.PutObject`, `S3.GetObject`, … or `filesystem.put`, …) with the
//! bucket, key and size, a child of the request or message that caused it, so it carries the
//! order id too. They are `telemetry::spans::client` spans: nothing runs under them, so they need
//! no `tracing` span; `RUST_LOG` turns them on and off as INFO spans of this module.

use secrecy::{ExposeSecret as _, SecretString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use opentelemetry::trace::Span as _;
use opentelemetry::{KeyValue, StringValue};
use telemetry::attr::semconv::{AWS_S3_BUCKET, AWS_S3_KEY};
use telemetry::attr::{STORAGE_BACKEND, STORAGE_SIZE_BYTES};
use telemetry::spans::ClientSpan;

use settings::ConfigError;

/// Which backend, and how to reach it.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// Objects are files under `root`. Env: `HALLMARK_STORAGE_DIR` (default `.hallmark/objects`).
    Filesystem { root: PathBuf },
    /// An S3-compatible server. Chosen when `HALLMARK_S3_BUCKET` is set.
    S3 {
        /// Env: `HALLMARK_S3_BUCKET`.
        bucket: String,
        /// e.g. `http://127.0.0.1:9000` for a local server; AWS when unset.
        /// Env: `HALLMARK_S3_ENDPOINT`.
        endpoint: Option<String>,
        /// Env: `HALLMARK_S3_REGION` (default `us-east-1`).
        region: String,
        /// Env: `HALLMARK_S3_ACCESS_KEY_ID`; when unset, the usual `AWS_*` variables apply.
        access_key_id: Option<String>,
        /// Env: `HALLMARK_S3_SECRET_ACCESS_KEY`. A secret: `Debug` does not show it.
        secret_access_key: Option<SecretString>,
        /// How long one call keeps retrying transient failures (5xx answers, lost connections)
        /// with back-off before it gives up (and never more than 10 retries). A back-off that has
        /// begun still runs out, so a failing call can take up to about three times this. Shop
        /// stores a model while its client waits: this bounds how long an upload hangs on an
        /// unavailable server.
        /// Env: `HALLMARK_S3_RETRY_TIMEOUT` (default `10s`).
        retry_timeout: Duration,
    },
}

/// `retry_timeout` when `HALLMARK_S3_RETRY_TIMEOUT` is unset.
pub const DEFAULT_S3_RETRY_TIMEOUT: Duration = Duration::from_secs(10);

impl StorageConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        match settings::optional("HALLMARK_S3_BUCKET") {
            Some(bucket) => Ok(Self::S3 {
                bucket,
                endpoint: settings::optional("HALLMARK_S3_ENDPOINT"),
                region: settings::string("HALLMARK_S3_REGION", "us-east-1"),
                access_key_id: settings::optional("HALLMARK_S3_ACCESS_KEY_ID"),
                secret_access_key: settings::optional("HALLMARK_S3_SECRET_ACCESS_KEY")
                    .map(SecretString::from),
                retry_timeout: settings::duration(
                    "HALLMARK_S3_RETRY_TIMEOUT",
                    DEFAULT_S3_RETRY_TIMEOUT,
                )?,
            }),
            None => Ok(Self::Filesystem {
                root: PathBuf::from(settings::string(
                    "HALLMARK_STORAGE_DIR",
                    ".hallmark/objects",
                )),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object `{0}` does not exist")]
    NotFound(String),
    #[error("object storage failed: {0}")]
    Backend(#[from] object_store::Error),
    #[error("cannot prepare the storage directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The object store plus what spans need to describe it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    backend: &'static str,
    /// The bucket, or the root directory; shared by every span.
    bucket: StringValue,
}

impl ObjectStorage {
    pub fn new(config: &StorageConfig) -> Result<Self, StorageError> {
        match config {
            StorageConfig::Filesystem { root } => {
                std::fs::create_dir_all(root).map_err(|source| StorageError::Directory {
                    path: root.clone(),
                    source,
                })?;
                Ok(Self {
                    store: Arc::new(LocalFileSystem::new_with_prefix(root)?),
                    backend: "filesystem",
                    bucket: StringValue::from(Arc::<str>::from(root.display().to_string())),
                })
            }
            StorageConfig::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                retry_timeout,
            } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_retry(RetryConfig {
                        retry_timeout: *retry_timeout,
                        ..RetryConfig::default()
                    });
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if let Some(key) = access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = secret_access_key {
                    builder = builder.with_secret_access_key(secret.expose_secret());
                }
                Ok(Self {
                    store: Arc::new(builder.build()?),
                    backend: "s3",
                    bucket: StringValue::from(Arc::<str>::from(bucket.as_str())),
                })
            }
        }
    }

    /// `s3` or `filesystem`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// A CLIENT span for one call, or `None` without telemetry or when `RUST_LOG` disables
    /// INFO spans here.
    fn span(
        &self,
        s3_method: &'static str,
        fs_method: &'static str,
        key: &str,
    ) -> Option<ClientSpan> {
        if !telemetry::spans_enabled!() {
            return None;
        }
        let (name, system) = if self.backend == "s3" {
            (format!("S3.{s3_method}"), "aws-api")
        } else {
            (format!("filesystem.{fs_method}"), "filesystem")
        };
        telemetry::spans::client(
            name,
            vec![
                KeyValue::new("rpc.system", system),
                KeyValue::new("rpc.method", s3_method),
                KeyValue::new(AWS_S3_BUCKET, self.bucket.clone()),
                KeyValue::new(AWS_S3_KEY, key.to_owned()),
                KeyValue::new(STORAGE_BACKEND, self.backend),
            ],
        )
    }

    /// Ends `span` after a call, failed with `err` if there is one (also logged, under the
    /// caller's span).
    fn finish(span: Option<ClientSpan>, err: Option<&dyn std::fmt::Display>) {
        if let Some(err) = err {
            tracing::warn!(error = %err, "object storage call failed");
        }
        telemetry::spans::end(span, "storage", err);
    }

    fn record_size(span: &mut Option<ClientSpan>, size: usize) {
        if let Some(span) = span {
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            span.set_attribute(KeyValue::new(STORAGE_SIZE_BYTES, size));
        }
    }

    /// Stores `bytes` under `key`, replacing what was there. Atomic: readers see the old object
    /// or the whole new one.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let mut span = self.span("PutObject", "put", key);
        Self::record_size(&mut span, bytes.len());
        let result = self
            .store
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await;
        match result {
            Ok(_) => {
                Self::finish(span, None);
                Ok(())
            }
            Err(err) => {
                Self::finish(span, Some(&err));
                Err(err.into())
            }
        }
    }

    /// The whole object under `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let mut span = self.span("GetObject", "get", key);
        let result = async { self.store.get(&Path::from(key)).await?.bytes().await }.await;
        match result {
            Ok(bytes) => {
                Self::record_size(&mut span, bytes.len());
                Self::finish(span, None);
                Ok(bytes)
            }
            Err(object_store::Error::NotFound { .. }) => {
                Self::finish(span, Some(&"not found"));
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(err) => {
                Self::finish(span, Some(&err));
                Err(err.into())
            }
        }
    }

    /// Removes `key`; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let span = self.span("DeleteObject", "delete", key);
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                Self::finish(span, None);
                Ok(())
            }
            Err(err) => {
                Self::finish(span, Some(&err));
                Err(err.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_filesystem_backend_stores_reads_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStorage::new(&StorageConfig::Filesystem {
            root: dir.path().join("objects"),
        })
        .unwrap();
        storage
            .put("models/a/ring.stl", Bytes::from_static(b"solid x"))
            .await
            .unwrap();
        assert_eq!(
            storage.get("models/a/ring.stl").await.unwrap(),
            Bytes::from_static(b"solid x")
        );
        storage.delete("models/a/ring.stl").await.unwrap();
        assert!(matches!(
            storage.get("models/a/ring.stl").await,
            Err(StorageError::NotFound(_))
        ));
        storage.delete("models/a/ring.stl").await.unwrap();
    }
}
