//! The JSON error body every Hallmark HTTP API answers with.
//!
//! ```json
//! {"error": {"code": "unknown_material", "message": "…", "trace_id": "4bf9…"}}
//! ```
//!
//! `code` is stable and machine-readable; `message` says what to do about it. `trace_id` lets
//! support find the request's trace. A 5xx never carries internal details: those go to the log
//! and the span, and the body says only that something failed on our side.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opentelemetry::Context;
use opentelemetry::trace::{Status, TraceContextExt};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Debug, Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

/// The trace id of the current span, when there is one.
pub fn current_trace_id() -> Option<String> {
    Context::map_current(|cx| {
        let span = cx.span();
        let span_context = span.span_context();
        span_context
            .is_valid()
            .then(|| span_context.trace_id().to_string())
    })
}

/// A JSON error response. For a 5xx, pass a generic message and log the cause yourself.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = Body {
        error: Detail {
            code,
            message,
            trace_id: current_trace_id(),
        },
    };
    (status, Json(body)).into_response()
}

/// The message every 5xx body carries instead of its cause.
pub const INTERNAL_MESSAGE: &str =
    "something went wrong on our side; nothing you sent was lost, please retry later";

/// Marks the current span failed and logs the cause of a 5xx, then answers without details.
pub fn internal_error(err: &dyn std::fmt::Display) -> Response {
    Context::map_current(|cx| cx.span().set_status(Status::error(err.to_string())));
    tracing::error!(error = %err, "request failed");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        INTERNAL_MESSAGE,
    )
}

/// Longest plain-text error (axum's own rejections) turned into the JSON shape; longer text is
/// cut.
const MAX_REJECTION_BYTES: usize = 1024;

/// Middleware: an error answer that is not JSON yet — the framework's own rejections of a bad
/// query string, a wrong method, an oversized or malformed body, which are plain text — is
/// answered in the one JSON error shape, with a code for its status and its text as the message.
/// Answers that are JSON, or of another type on purpose (OTLP's protobuf), pass as they are.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        s if s.is_server_error() => "internal",
        _ => "rejected",
    };
    let message = if status.is_server_error() {
        INTERNAL_MESSAGE.to_owned()
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("rejected")
            .to_lowercase()
    } else {
        text
    };
    let mut answer = error_response(status, code, &message);
    // Keep what the framework said besides the body (`Allow` on a 405, `Retry-After`).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// A refused request (401 or 403), in the one error shape: counted in
/// `hallmark.http.requests.refused` by `code` (a fixed word of the refusing code, never the
/// caller's input) and marked on the request's span ([`telemetry::attributes::ACCESS_REFUSED`]).
/// `challenge` is the `WWW-Authenticate` value that tells a client what to send.
pub fn refused(
    status: StatusCode,
    code: &'static str,
    message: &str,
    challenge: &'static str,
) -> Response {
    Context::map_current(|cx| {
        cx.span().set_attribute(opentelemetry::KeyValue::new(
            telemetry::attributes::ACCESS_REFUSED,
            code,
        ));
    });
    refusals().add(1, &[opentelemetry::KeyValue::new("code", code)]);
    let mut response = error_response(status, code, message);
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static(challenge),
    );
    response
}

fn refusals() -> &'static opentelemetry::metrics::Counter<u64> {
    static REFUSED: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    REFUSED.get_or_init(|| {
        telemetry::metrics::meter()
            .u64_counter("hallmark.http.requests.refused")
            .with_description(
                "Requests refused 401 (no valid credential) or 403 (the credential does not allow it), by code",
            )
            .build()
    })
}

/// The answer for a request that matched no route.
pub async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A 503 for a dependency that is down: the cause goes to the log and span, the body says to retry.
pub fn unavailable(code: &str, cause: &dyn std::fmt::Display) -> Response {
    Context::map_current(|cx| cx.span().set_status(Status::error(cause.to_string())));
    tracing::warn!(code, error = %cause, "dependency unavailable");
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        code,
        "a service we depend on is unavailable; nothing was stored, please retry shortly",
    );
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    response
}

/// The error every Hallmark HTTP handler returns. 4xx variants say what to fix, with a stable
/// code; 5xx variants keep their cause out of the body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: bad JSON, a missing part, a bad header or path.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// Well-formed but unacceptable content (unknown material, not an STL, a reused key).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// Authenticated, but this caller may not do this (a part of a request their role does not
    /// cover; whole routes are refused by the authentication layer itself).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request conflicts with the resource's state (e.g. an illegal status transition).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Over a rate limit: a 429 with `Retry-After` and `headers` (e.g. the IETF draft's
    /// `RateLimit-Policy` and `RateLimit`).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
        headers: Vec<(&'static str, String)>,
    },
    /// The request does not say who it is from, or its credential is not valid for what it
    /// names (a 401 with `WWW-Authenticate: Bearer`).
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// A dependency (database, object storage, broker) is down; the client may retry.
    #[error("{code}")]
    Unavailable {
        code: &'static str,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn order_not_found(order_id: uuid::Uuid) -> Self {
        Self::NotFound {
            code: "order_not_found",
            message: format!("order {order_id} does not exist"),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&err) {
            Self::Unavailable {
                code: "database_unavailable",
                cause: Box::new(err),
            }
        } else {
            Self::Internal(err.into())
        }
    }
}

/// A stored value that does not read is our fault, not the client's: a 500 whose body shows none
/// of it, while the log and the span get the order, the column and the value.
impl From<crate::db::Corrupt> for ApiError {
    fn from(err: crate::db::Corrupt) -> Self {
        Self::Internal(err.into())
    }
}

impl From<crate::db::ReadError> for ApiError {
    fn from(err: crate::db::ReadError) -> Self {
        match err {
            crate::db::ReadError::Database(err) => err.into(),
            crate::db::ReadError::Corrupt(err) => err.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            Self::BadRequest { code, .. } => {
                error_response(StatusCode::BAD_REQUEST, code, &message)
            }
            Self::Unprocessable { code, .. } => {
                error_response(StatusCode::UNPROCESSABLE_ENTITY, code, &message)
            }
            Self::Forbidden { code, .. } => refused(
                StatusCode::FORBIDDEN,
                code,
                &message,
                "Bearer error=\"insufficient_scope\"",
            ),
            Self::NotFound { code, .. } => error_response(StatusCode::NOT_FOUND, code, &message),
            Self::Conflict { code, .. } => error_response(StatusCode::CONFLICT, code, &message),
            Self::TooLarge { .. } => {
                error_response(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &message)
            }
            Self::RateLimited {
                retry_after_secs,
                headers,
                ..
            } => {
                let mut response =
                    error_response(StatusCode::TOO_MANY_REQUESTS, "rate_limited", &message);
                let answer = response.headers_mut();
                answer.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(retry_after_secs),
                );
                for (name, value) in headers {
                    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                        answer.insert(name, value);
                    }
                }
                response
            }
            Self::Unauthorized { code, .. } => refused(
                StatusCode::UNAUTHORIZED,
                code,
                &message,
                "Bearer error=\"invalid_token\"",
            ),
            Self::Unavailable { code, cause } => {
                unavailable(code, &otel_fastpath::logging::error_chain(&*cause))
            }
            Self::Internal(err) => internal_error(&format!("{err:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Corrupt;

    #[tokio::test]
    async fn a_corrupt_row_is_a_500_whose_body_shows_neither_the_order_nor_the_value() {
        let order = uuid::Uuid::now_v7();
        let err = ApiError::from(Corrupt::new(
            order,
            "status",
            "teleported",
            "unknown status",
        ));
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains(INTERNAL_MESSAGE), "{body}");
        assert!(
            !body.contains("teleported") && !body.contains(&order.to_string()),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_forbidden_part_of_a_request_is_a_403_that_says_what_the_role_does_not_cover() {
        let response =
            ApiError::forbidden("forbidden", "changing the retention needs the admin role")
                .into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "forbidden");
        assert_eq!(
            json["error"]["message"],
            "changing the retention needs the admin role"
        );
    }

    #[tokio::test]
    async fn the_frameworks_own_rejections_are_answered_in_the_json_error_shape() {
        use axum::body::Body;
        use axum::extract::Query;
        use axum::http::Request;
        use tower::ServiceExt as _;

        #[derive(serde::Deserialize)]
        struct Limit {
            #[allow(dead_code)]
            limit: u32,
        }
        let app = crate::server::with_standard_routes(
            axum::Router::new().route(
                "/things",
                axum::routing::post(|_: Query<Limit>, _: axum::body::Bytes| async { "ok" }),
            ),
            16,
        );
        let answer = |request: Request<Body>| {
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let allow = response.headers().get("allow").cloned();
                let body = axum::body::to_bytes(response.into_body(), 4096)
                    .await
                    .unwrap();
                let json: serde_json::Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
                (status, json, allow)
            }
        };
        let post =
            |uri: &str, body: &'static str| Request::post(uri).body(Body::from(body)).unwrap();

        let (status, json, _) = answer(post("/things?limit=lots", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], "bad_request");
        assert!(
            json["error"]["message"].as_str().unwrap().contains("limit"),
            "{json}"
        );

        let (status, json, _) =
            answer(post("/things?limit=1", "far more than sixteen bytes")).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json["error"]["code"], "payload_too_large");

        let (status, json, allow) =
            answer(Request::get("/things").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(json["error"]["code"], "method_not_allowed");
        assert!(allow.is_some(), "the Allow header is kept");

        let (status, json, _) = answer(Request::get("/nowhere").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json["error"]["code"], "not_found");
    }
}
