//! A client that sends its request slowly, or never finishes it, is cut off: it cannot hold a
//! connection, or a request, for ever.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use platform::server::{TimeLimits, serve_reading_headers_within, with_standard_routes_and_limits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Fails the test rather than hang when the server never closes: not a timing assertion, the
/// limits under test are a fraction of it.
const GIVE_UP: Duration = Duration::from_secs(20);

async fn serve(limits: TimeLimits, header_timeout: Duration) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let api = Router::new()
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
    let router = with_standard_routes_and_limits(api, 1024 * 1024, limits);
    let cancel = CancellationToken::new();
    tokio::spawn(serve_reading_headers_within(
        listener,
        router,
        cancel.clone(),
        header_timeout,
    ));
    (address, cancel)
}

/// Everything the server sends until it closes the connection.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(GIVE_UP, stream.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected_and_others_are_served() {
    let (address, _cancel) = serve(TimeLimits::default(), Duration::from_millis(300)).await;
    let mut silent = TcpStream::connect(&address).await.unwrap();
    silent
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut silent).await;
    assert!(!answer.contains("200 OK"), "{answer}");

    let health = reqwest::get(format!("http://{address}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_client_error_not_a_held_request() {
    let limits = TimeLimits {
        body_idle: Duration::from_millis(300),
        ..TimeLimits::default()
    };
    let (address, _cancel) = serve(limits, Duration::from_secs(30)).await;
    let mut stalling = TcpStream::connect(&address).await.unwrap();
    stalling
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly part",
        )
        .await
        .unwrap();
    let answer = until_closed(&mut stalling).await;
    let status_line = answer.lines().next().unwrap_or_default().to_owned();
    assert!(
        status_line.starts_with("HTTP/1.1 4"),
        "{status_line}: {answer}"
    );
    assert!(
        answer.contains("\"error\""),
        "the JSON error shape: {answer}"
    );
}

#[tokio::test]
async fn a_request_past_its_time_limit_is_answered_408_in_the_json_error_shape() {
    let limits = TimeLimits {
        request: Duration::from_millis(300),
        ..TimeLimits::default()
    };
    let (address, _cancel) = serve(limits, Duration::from_secs(30)).await;
    let answer = tokio::time::timeout(GIVE_UP, reqwest::get(format!("http://{address}/slow")))
        .await
        .expect("an answer before the handler's minute")
        .unwrap();
    assert_eq!(answer.status(), 408);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
}
