//! Serving an axum router until shutdown, and the shutdown signal itself.

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::tls::{Listener, ServerTls};

/// How long a client may take to send a request's headers, from the connection's first byte
/// or the end of its previous request; after that the connection is closed. Without it a
/// client that sends half a request line holds a connection (and its task) for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` (a bound [`TcpListener`] for plain text, or a [`Listener`]
/// that may serve TLS) until `cancel` fires, then stops accepting and lets requests in
/// progress finish (idle keep-alive connections are closed at once).
pub async fn serve(
    listener: impl Into<Listener>,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_reading_headers_within(listener, router, cancel, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with a header read timeout of `header_timeout`.
pub async fn serve_reading_headers_within(
    listener: impl Into<Listener>,
    router: Router,
    cancel: CancellationToken,
    header_timeout: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let mut listener = listener.into();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let connection = tokio::select! {
            connection = listener.accept() => connection,
            () = cancel.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone().map_request(
            |request: axum::http::Request<hyper::body::Incoming>| {
                request.map(axum::body::Body::new)
            },
        ));
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(connection), service)
            .into_owned();
        let served = connections.watch(served);
        tokio::spawn(async move {
            if let Err(err) = served.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler cannot fail on unix");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    cancel
}

/// Binds `host:port` (port 0 picks a free one) with an error that names the address.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, u16)> {
    use anyhow::Context as _;
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// [`bind`], serving TLS with `tls` when given: the listener and the port.
pub async fn bind_with(
    host: &str,
    port: u16,
    tls: Option<&ServerTls>,
) -> anyhow::Result<(Listener, u16)> {
    use anyhow::Context as _;
    let (listener, port) = bind(host, port).await?;
    let listener = Listener::new(listener, tls)
        .with_context(|| format!("cannot serve TLS on {host}:{port}"))?;
    Ok((listener, port))
}

/// How long a service waits, once shutdown was asked for, for requests and tasks in progress
/// to finish; whatever is still running then is dropped. Well inside the 30 s an orchestrator
/// usually gives between SIGTERM and SIGKILL, so the service still closes its broker
/// connection and its pool, and flushes its telemetry, itself.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long closing the broker connection or the database pool may take at shutdown, each;
/// after that it is dropped as it is, so shutdown never hangs on either.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `router` while `tasks` (relays, consumers, workers) run, until `cancel` fires or the
/// server fails; then cancels the tasks too and waits for each to finish its work in progress,
/// for at most [`SHUTDOWN_GRACE`].
pub async fn serve_with_tasks(
    listener: impl Into<Listener>,
    router: Router,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_tasks_within(listener, router, tasks, cancel, SHUTDOWN_GRACE).await
}

/// [`serve_with_tasks`] with a grace period of `grace`, counted from the moment `cancel` fires.
/// A request or task that does not finish in time is dropped with a warning that says which,
/// so one stuck request or connection cannot keep the process from exiting.
pub async fn serve_with_tasks_within(
    listener: impl Into<Listener>,
    router: Router,
    mut tasks: JoinSet<()>,
    cancel: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let server = serve(listener, router, cancel.clone());
    tokio::pin!(server);
    // The server ends by itself only when it fails; otherwise the grace period starts now.
    let failed = tokio::select! {
        served = &mut server => Some(served),
        () = cancel.cancelled() => None,
    };
    let deadline = tokio::time::Instant::now() + grace;
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let served = match failed {
        Some(served) => served,
        None => tokio::time::timeout_at(deadline, &mut server)
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    grace_ms,
                    "requests still in progress at the end of the shutdown grace period, dropped"
                );
                Ok(())
            }),
    };
    cancel.cancel();
    let joined = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        tracing::warn!(
            grace_ms,
            tasks = tasks.len(),
            "tasks still running at the end of the shutdown grace period, aborted"
        );
        tasks.shutdown().await;
    }
    served.map_err(|err| anyhow::anyhow!("the HTTP server failed: {err}"))
}

/// The routes every service has besides its API: `/health` and `/metrics`, the JSON 404 for
/// anything else, request tracing, and a body limit.
pub fn with_standard_routes<S: Clone + Send + Sync + 'static>(
    api: Router<S>,
    body_limit: usize,
) -> Router<S> {
    with_standard_routes_and_limits(api, body_limit, TimeLimits::default())
}

/// How long a request may take, besides [`HEADER_READ_TIMEOUT`].
#[derive(Debug, Clone, Copy)]
pub struct TimeLimits {
    /// The longest pause between two pieces of a request's body; a client that stops sending
    /// gets a 4xx once its handler reads on (default 30 s).
    pub body_idle: Duration,
    /// From the request's headers to the answer's: a request still running then is answered
    /// 408 and dropped (default 10 min, time for a 50 MB upload at 1 Mbit/s).
    pub request: Duration,
}

impl Default for TimeLimits {
    fn default() -> Self {
        Self {
            body_idle: Duration::from_secs(30),
            request: Duration::from_secs(600),
        }
    }
}

/// [`with_standard_routes`] with time limits of its own.
pub fn with_standard_routes_and_limits<S: Clone + Send + Sync + 'static>(
    api: Router<S>,
    body_limit: usize,
    limits: TimeLimits,
) -> Router<S> {
    use axum::routing::get;
    let body_idle = limits.body_idle;
    api.route("/health", get(|| async { "ok" }))
        .route("/metrics", get(crate::http::metrics))
        .fallback(crate::error::not_found)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.request,
        ))
        .layer(axum::middleware::map_request(
            move |request: axum::extract::Request| async move {
                request.map(|body| {
                    axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_idle, body))
                })
            },
        ))
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .layer(axum::middleware::from_fn(crate::http::trace_requests))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
}
