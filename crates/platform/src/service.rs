//! The life of a service process: telemetry up, run until a shutdown signal, telemetry flushed.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// Runs a service's `main`: sets up telemetry for `service`, hands `body` a token that SIGINT or
/// SIGTERM cancels, logs a failure in the common log format and flushes telemetry before
/// returning, also when `body` failed.
pub async fn run<F, Fut>(service: telemetry::ServiceInfo, body: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // First: telemetry's exporter and the broker and database clients may speak TLS.
    crate::tls::install_default_provider();
    let telemetry = telemetry::init(service.clone())?;
    let cancel = crate::server::shutdown_on_signal();
    let result = body(cancel).await;
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "service stopped with an error");
    }
    telemetry.shutdown();
    result
}
