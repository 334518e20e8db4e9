//! Serving an axum router until shutdown, and the shutdown signal itself.

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::tls::{Listener, ServerTls};

/// Serves `router` on `listener` (a bound [`TcpListener`] for plain text, or a [`Listener`]
/// that may serve TLS) until `cancel` fires, then stops accepting and lets requests in
/// progress finish.
pub async fn serve(
    listener: impl Into<Listener>,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener.into(), router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
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
    use axum::routing::get;
    api.route("/health", get(|| async { "ok" }))
        .route("/metrics", get(crate::http::metrics))
        .fallback(crate::error::not_found)
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .layer(axum::middleware::from_fn(crate::http::trace_requests))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
}
