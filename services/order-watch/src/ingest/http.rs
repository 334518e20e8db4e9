//! OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON, optionally gzip), answering as the
//! OTLP specification asks: the response in the request's encoding, `partial_success` for
//! rejected spans, 400 with a `google.rpc.Status` for a payload that cannot be decoded, 413 for
//! one over the size limit, 415 for an unknown content type, and 429/503 with `Retry-After` when
//! the exporter should try again. Metrics and logs sent here are accepted and dropped, so a
//! service pointed at order-watch for everything does not log export errors.

use std::io::Read;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::{Ingest, IngestError};

/// `google.rpc.Status`, the error body of OTLP/HTTP (without `details`).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC code INVALID_ARGUMENT, used in the status body of a 400.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn encoding(headers: &HeaderMap) -> Option<Encoding> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = content_type.split(';').next()?.trim();
    match media {
        "application/x-protobuf" => Some(Encoding::Protobuf),
        "application/json" => Some(Encoding::Json),
        _ => None,
    }
}

fn respond<M: Message + serde::Serialize>(
    status: StatusCode,
    encoding: Encoding,
    body: &M,
) -> Response {
    let (content_type, bytes) = match encoding {
        Encoding::Protobuf => ("application/x-protobuf", body.encode_to_vec()),
        Encoding::Json => (
            "application/json",
            serde_json::to_vec(body).unwrap_or_default(),
        ),
    };
    (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

fn error(status: StatusCode, encoding: Encoding, code: i32, message: String) -> Response {
    let mut response = respond(status, encoding, &RpcStatus { code, message });
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    response
}

/// The body, decompressed, at most `limit` bytes.
fn decompress(
    headers: &HeaderMap,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, (StatusCode, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "gzip" => {
            let mut out = Vec::new();
            // Read one byte past the limit to tell "exactly at the limit" from "over it".
            flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("the gzip body is corrupt: {e}"),
                    )
                })?;
            if out.len() > limit {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the decompressed request is larger than {limit} bytes"),
                ));
            }
            Ok(out.into())
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content encoding `{other}` is not supported; use gzip or none"),
        )),
    }
}

async fn traces(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(encoding) = encoding(&headers) else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Encoding::Json,
            INVALID_ARGUMENT,
            "send application/x-protobuf or application/json".into(),
        );
    };
    let body = match decompress(&headers, body, ingest.max_request_bytes) {
        Ok(body) => body,
        Err((status, message)) => return error(status, encoding, INVALID_ARGUMENT, message),
    };
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)
            .map_err(|e| format!("the body is not an OTLP ExportTraceServiceRequest: {e}")),
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|e| format!("the body is not OTLP/JSON: {e}")),
    };
    let request = match request {
        Ok(request) => request,
        Err(message) => {
            ingest.metrics.record_ingest(0, 0, 1);
            return error(StatusCode::BAD_REQUEST, encoding, INVALID_ARGUMENT, message);
        }
    };
    match ingest.export(request).await {
        Ok(response) => respond(StatusCode::OK, encoding, &response),
        Err(IngestError::Busy) => error(
            StatusCode::TOO_MANY_REQUESTS,
            encoding,
            RESOURCE_EXHAUSTED,
            "order-watch is at capacity; retry".into(),
        ),
        Err(IngestError::Unavailable(err)) => {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "spans not stored; the exporter will retry"
            );
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                encoding,
                UNAVAILABLE,
                super::UNAVAILABLE_MESSAGE.into(),
            )
        }
    }
}

/// Metrics and logs are not order-watch's business; take them without complaint.
async fn discard(headers: HeaderMap) -> Response {
    match encoding(&headers) {
        Some(Encoding::Json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        _ => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::new(),
        )
            .into_response(),
    }
}

/// The OTLP/HTTP routes.
pub fn router(ingest: Ingest) -> Router {
    let limit = ingest.max_request_bytes;
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(discard))
        .route("/v1/logs", post(discard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingest)
}
