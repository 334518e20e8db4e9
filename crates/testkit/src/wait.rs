//! Waiting for something to become true, with a deadline instead of a fixed sleep.

use std::future::Future;
use std::time::Duration;

/// Polls `probe` every 50 ms until it returns `Some`, for at most `timeout`; panics with
/// `what` when time runs out.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
