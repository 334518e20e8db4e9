//! A real S3 server for tests: [`s3s_fs`] (the [`s3s`] implementation of the S3 protocol, storing
//! objects in a directory) on a free local port. It verifies every request's SigV4 signature
//! against fixed credentials, so a test runs the same client, signing and error handling as
//! production does against AWS or any other S3-compatible server, with nothing to install.
//!
//! ```no_run
//! # async fn example() {
//! let s3 = testkit::s3::S3Server::start().await;
//! let storage = platform::storage::ObjectStorage::new(&s3.config()).unwrap();
//! s3.set_failing(true); // every request now answers 503 Service Unavailable
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use platform::storage::StorageConfig;
use s3s::auth::SimpleAuth;
use s3s::dto::CreateBucketInput;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, HttpError, HttpResponse, S3, S3Error, S3ErrorCode, S3Request};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The only access key the server accepts.
pub const ACCESS_KEY_ID: &str = "hallmark-test";
/// The secret that goes with [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "hallmark-test-secret";
/// The region clients sign for; the server accepts any.
pub const REGION: &str = "us-east-1";

const BUCKET: &str = "hallmark-models";

/// The retry budget of [`S3Server::config`]: short, so that a call to a failing server gives up
/// within about a second instead of the production default's several.
const RETRY_TIMEOUT: Duration = Duration::from_millis(300);

/// What the server does with requests, held in `S3Server::mode`.
const WORKING: u8 = 0;
const FAIL_ALL: u8 = 1;
const FAIL_READS: u8 = 2;

/// How much of a request a failing server reads before answering (see [`answer`]).
const MAX_DISCARDED_BODY: usize = 64 * 1024 * 1024;

/// An S3 server with one empty bucket, listening on `127.0.0.1`. It stops, and its objects are
/// deleted, when this value is dropped (or when the test's runtime ends).
pub struct S3Server {
    endpoint: String,
    /// `WORKING`, `FAIL_ALL` or `FAIL_READS`.
    mode: Arc<AtomicU8>,
    server: JoinHandle<()>,
    _root: tempfile::TempDir,
}

impl S3Server {
    /// Creates the bucket in a fresh temporary directory and starts serving on a free port.
    /// Panics when it cannot, as there is nothing a test could do about it.
    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("cannot create a directory for the S3 server");
        let fs = s3s_fs::FileSystem::new(root.path())
            .unwrap_or_else(|e| panic!("cannot serve {} over S3: {e:?}", root.path().display()));
        create_bucket(&fs, BUCKET).await;

        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
        let s3 = builder.build();

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the S3 server to a local port");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let mode = Arc::new(AtomicU8::new(WORKING));
        let server = tokio::spawn(serve(listener, s3, Arc::clone(&mode)));
        Self {
            endpoint: format!("http://{address}"),
            mode,
            server,
            _root: root,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket that exists from the start.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// Storage configuration for this server's bucket with valid credentials, path-style
    /// requests and a retry budget short enough that a call to a failing server gives up
    /// within about a second.
    pub fn config(&self) -> StorageConfig {
        StorageConfig::S3 {
            bucket: BUCKET.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            region: REGION.to_owned(),
            access_key_id: Some(ACCESS_KEY_ID.to_owned()),
            secret_access_key: Some(SECRET_ACCESS_KEY.into()),
            retry_timeout: RETRY_TIMEOUT,
        }
    }

    /// The same configuration as environment variables, for a service started as a process.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("HALLMARK_S3_BUCKET", BUCKET),
            ("HALLMARK_S3_ENDPOINT", self.endpoint.as_str()),
            ("HALLMARK_S3_REGION", REGION),
            ("HALLMARK_S3_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("HALLMARK_S3_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ("HALLMARK_S3_RETRY_TIMEOUT", "300ms"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into()
    }

    /// While `failing`, every request is answered `503 Service Unavailable` (S3's
    /// `ServiceUnavailable` error) without reaching the store; afterwards the server works as
    /// before, with everything it stored still there.
    pub fn set_failing(&self, failing: bool) {
        self.set_mode(if failing { FAIL_ALL } else { WORKING });
    }

    /// As [`S3Server::set_failing`], but only reads (GET and HEAD) fail: uploads still work.
    pub fn set_failing_reads(&self, failing: bool) {
        self.set_mode(if failing { FAIL_READS } else { WORKING });
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Through the store's own CreateBucket operation, in-process: no request to sign yet.
async fn create_bucket(fs: &s3s_fs::FileSystem, bucket: &str) {
    let input = CreateBucketInput::builder()
        .bucket(bucket.to_owned())
        .build()
        .expect("the bucket is the only required field");
    let request = S3Request {
        input,
        method: Method::PUT,
        uri: format!("/{bucket}")
            .parse()
            .expect("a bucket name is a valid path"),
        headers: Default::default(),
        extensions: Default::default(),
        credentials: None,
        region: None,
        service: None,
        trailing_headers: None,
    };
    if let Err(err) = fs.create_bucket(request).await {
        panic!("cannot create bucket {bucket}: {err}");
    }
}

/// Accepts connections until the task is aborted. Aborting drops `connections`, which ends the
/// open connections too, so nothing of the server outlives it.
async fn serve(listener: TcpListener, s3: S3Service, mode: Arc<AtomicU8>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let s3 = s3.clone();
        let mode = Arc::clone(&mode);
        let service = service_fn(move |request| answer(s3.clone(), Arc::clone(&mode), request));
        connections.spawn(async move {
            // A client that hangs up mid-request is no concern of the server's.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The S3 service's answer, or `ServiceUnavailable` while the server is failing. A failing server
/// still reads the request first, as a real one does, so that the client gets the 503 rather
/// than a connection reset halfway through sending its body.
async fn answer(
    s3: S3Service,
    mode: Arc<AtomicU8>,
    request: Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    let fails = match mode.load(Ordering::SeqCst) {
        FAIL_ALL => true,
        FAIL_READS => matches!(*request.method(), Method::GET | Method::HEAD),
        _ => false,
    };
    if !fails {
        return s3.call(request.map(Body::from)).await;
    }
    let mut body = Body::from(request.into_body());
    let _ = body.store_all_limited(MAX_DISCARDED_BODY).await;
    S3Error::with_message(
        S3ErrorCode::ServiceUnavailable,
        "The test made this server fail.",
    )
    .to_http_response()
    .map_err(|err| HttpError::new(Box::new(err)))
}
