//! Serving an axum router until shutdown, and the shutdown signal itself.

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `cancel` fires, then stops accepting and lets requests in
/// progress finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
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

/// Serves `router` while `tasks` (relays, consumers, workers) run, until `cancel` fires or the
/// server fails; then cancels the tasks too and waits for each to finish its work in progress.
pub async fn serve_with_tasks(
    listener: TcpListener,
    router: Router,
    mut tasks: tokio::task::JoinSet<()>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let served = serve(listener, router, cancel.clone()).await;
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
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
        .route("/metrics", get(telemetry::metrics::metrics_handler))
        .fallback(crate::error::not_found)
        .layer(axum::middleware::from_fn(telemetry::http::trace_requests))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
}
