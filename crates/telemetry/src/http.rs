//! HTTP server spans and metrics for axum routers, and context injection for HTTP clients.
//!
//! Add [`trace_requests`] with `Router::layer(axum::middleware::from_fn(trace_requests))` so it
//! runs after routing and sees the matched route. Each request gets a SERVER span named
//! `{method} {route}` with the HTTP semantic-convention attributes, continuing the caller's
//! `traceparent` when it is valid. A request under `/…/orders/{uuid}/…` works for that order:
//! the id goes into baggage, so the request span and everything beneath it carry `order.id`,
//! as an observation of it (`order.activity`) unless the handler's work moves it.
//! The response carries a `traceresponse` header (W3C Trace Context level 2) so a caller or a
//! support engineer can find the trace.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use uuid::Uuid;

use crate::attributes::semconv::{
    HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, URL_PATH, URL_SCHEME,
};
use crate::metrics::metrics;
use crate::propagation::{Activity, extract_http, inject_http, with_order};
use crate::spans;

/// The order a request path is about: the UUID segment following an `orders` segment.
pub fn order_id_from_path(path: &str) -> Option<Uuid> {
    let mut segments = path.split('/');
    while let Some(segment) = segments.next() {
        if segment == "orders" {
            return segments.next().and_then(|s| Uuid::parse_str(s).ok());
        }
    }
    None
}

/// Axum middleware: one SERVER span and one duration measurement per request.
pub async fn trace_requests(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());

    let cx = if crate::spans_enabled!() {
        let path = request.uri().path();
        let mut parent = extract_http(request.headers());
        if let Some(order) = order_id_from_path(path) {
            // A request only observes its order until the handler does something that moves it
            // (a transition marks its own span progress).
            parent = with_order(&parent, order, Activity::Observation);
        }
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.clone(),
        };
        let mut attributes = Vec::with_capacity(4);
        attributes.extend([
            KeyValue::new(HTTP_REQUEST_METHOD, method.clone()),
            KeyValue::new(URL_PATH, path.to_owned()),
            KeyValue::new(URL_SCHEME, "http"),
        ]);
        if let Some(route) = &route {
            attributes.push(KeyValue::new(HTTP_ROUTE, route.clone()));
        }
        spans::child(name, SpanKind::Server, attributes, &parent)
    } else {
        None
    };

    let started = Instant::now();
    let mut response = spans::under(cx.as_ref(), next.run(request)).await;
    let status = response.status();

    if let Some(cx) = &cx {
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            HTTP_RESPONSE_STATUS_CODE,
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            spans::fail(cx, status.as_str(), "");
        }
        let span_context = span.span_context();
        if span_context.is_valid() {
            let value = format!(
                "00-{}-{}-{:02x}",
                span_context.trace_id(),
                span_context.span_id(),
                span_context.trace_flags().to_u8()
            );
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert("traceresponse", value);
            }
        }
        span.end();
    }

    metrics().http_server_duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new(HTTP_REQUEST_METHOD, method),
            KeyValue::new(HTTP_ROUTE, route.unwrap_or_default()),
            KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16())),
        ],
    );
    response
}

/// Headers that carry the current span's context to an outgoing HTTP request.
pub fn outgoing_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    Context::map_current(|cx| inject_http(cx, &mut headers));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_id_is_read_from_the_path_segment_after_orders() {
        let id = Uuid::now_v7();
        assert_eq!(order_id_from_path(&format!("/api/orders/{id}")), Some(id));
        assert_eq!(
            order_id_from_path(&format!("/api/orders/{id}/confirm")),
            Some(id)
        );
        assert_eq!(order_id_from_path("/api/orders"), None);
        assert_eq!(order_id_from_path("/api/orders/stuck"), None);
        assert_eq!(order_id_from_path(&format!("/api/things/{id}")), None);
    }
}
