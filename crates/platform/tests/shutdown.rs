//! Shutdown of a service: requests and tasks in progress get a grace period, and nothing that is
//! stuck can keep the process from ending.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use platform::server::serve_with_tasks_within;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Sets its flag when dropped: tells that an aborted task's future was dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Well within the test's own limit, and far longer than a shutdown with nothing stuck takes.
const TEST_LIMIT: Duration = Duration::from_secs(10);

/// Serves `router` on a free port with `tasks` and a grace period of `grace`, in the background.
async fn spawn_service(
    router: Router,
    tasks: JoinSet<()>,
    cancel: &CancellationToken,
    grace: Duration,
) -> (JoinHandle<anyhow::Result<()>>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = tokio::spawn(serve_with_tasks_within(
        listener,
        router,
        tasks,
        cancel.clone(),
        grace,
    ));
    (service, address)
}

/// Whether the service stopped, with success, within [`TEST_LIMIT`].
async fn stops(service: JoinHandle<anyhow::Result<()>>) -> bool {
    matches!(
        tokio::time::timeout(TEST_LIMIT, service).await,
        Ok(Ok(Ok(())))
    )
}

#[tokio::test]
async fn a_request_and_a_task_that_never_finish_are_dropped_at_the_end_of_the_grace_period() {
    let entered = Arc::new(Notify::new());
    let router = Router::new().route(
        "/stuck",
        get({
            let entered = entered.clone();
            move || async move {
                entered.notify_one();
                std::future::pending::<&'static str>().await
            }
        }),
    );
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let stuck_dropped = Arc::new(AtomicBool::new(false));
    let guard = SetOnDrop(stuck_dropped.clone());
    tasks.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    });
    let finished = Arc::new(AtomicBool::new(false));
    tasks.spawn({
        let (cancel, finished) = (cancel.clone(), finished.clone());
        async move {
            cancel.cancelled().await;
            finished.store(true, Ordering::SeqCst);
        }
    });
    let (service, address) =
        spawn_service(router, tasks, &cancel, Duration::from_millis(300)).await;

    let mut client = TcpStream::connect(address).await.unwrap();
    client
        .write_all(b"GET /stuck HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    cancel.cancel();

    assert!(
        stops(service).await,
        "the service stops once the grace period is over"
    );
    assert!(
        finished.load(Ordering::SeqCst),
        "a task that heeds the cancellation finishes"
    );
    assert!(
        stuck_dropped.load(Ordering::SeqCst),
        "a stuck task is aborted"
    );
}

#[tokio::test]
async fn a_service_with_nothing_in_progress_stops_without_waiting_out_the_grace_period() {
    let router = Router::new().route("/health", get(|| async { "ok" }));
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn({
        let cancel = cancel.clone();
        async move { cancel.cancelled().await }
    });
    let (service, _) = spawn_service(router, tasks, &cancel, Duration::from_secs(3600)).await;
    cancel.cancel();
    assert!(stops(service).await);
}
