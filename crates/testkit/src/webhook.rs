//! A webhook receiver that keeps the JSON it is sent: where a test points order-watch's incident
//! notifications or Alertmanager's on-call receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use serde_json::Value;

#[derive(Clone, Default)]
pub struct Webhook {
    /// Where to send: `http://127.0.0.1:<port>/hook`.
    pub url: String,
    pub received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    /// Listens on a free loopback port until the test's runtime ends.
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |Json(body): Json<Value>| {
                let store = store.clone();
                async move {
                    store.lock().expect("not poisoned").push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let url = format!("http://{}/hook", listener.local_addr().expect("bound"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, received }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Value> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// Waits (up to `patience`) until `count` messages arrived and returns them all.
    pub async fn expect_within(&self, count: usize, patience: Duration) -> Vec<Value> {
        crate::wait::until(&format!("{count} webhook messages"), patience, || async {
            let received = self.messages();
            (received.len() >= count).then_some(received)
        })
        .await
    }

    /// [`Webhook::expect_within`] 10 seconds.
    pub async fn expect(&self, count: usize) -> Vec<Value> {
        self.expect_within(count, Duration::from_secs(10)).await
    }
}
