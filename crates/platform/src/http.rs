//! Telemetry at the HTTP edge: server spans and metrics for axum routers, trace context in and
//! out of HTTP headers, and `/metrics`.
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
use axum::response::{IntoResponse as _, Response};
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use uuid::Uuid;

use opentelemetry::metrics::Histogram;
use opentelemetry::propagation::{Extractor, Injector};
use otel_fastpath::propagation::{extract, inject};
use telemetry::attr::semconv::{
    HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, URL_PATH, URL_SCHEME,
};
use telemetry::propagation::{Activity, with_order, without_order};
use telemetry::spans;

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

    let cx = if telemetry::spans_enabled!() {
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

    server_duration().record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new(HTTP_REQUEST_METHOD, method),
            KeyValue::new(HTTP_ROUTE, route.unwrap_or_default()),
            KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16())),
        ],
    );
    response
}

/// HTTP server request duration (OpenTelemetry HTTP semantic conventions). Labels:
/// `http.request.method`, `http.route`, `http.response.status_code`.
fn server_duration() -> &'static Histogram<f64> {
    static DURATION: std::sync::OnceLock<Histogram<f64>> = std::sync::OnceLock::new();
    DURATION.get_or_init(|| {
        telemetry::metrics::seconds_histogram(
            "http.server.request.duration",
            "Duration of HTTP server requests",
        )
    })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The caller's context from request headers, with any caller-supplied `order.id` dropped.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    without_order(extract(&HeaderExtractor(headers)))
}

/// Writes `cx` into outgoing request headers.
pub fn inject_http(cx: &Context, headers: &mut http::HeaderMap) {
    inject(cx, &mut HeaderInjector(headers));
}

/// Headers that carry the current span's context to an outgoing HTTP request.
pub fn outgoing_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    Context::map_current(|cx| inject_http(cx, &mut headers));
    headers
}

/// `GET /metrics`: everything this process records, in Prometheus text format.
pub async fn metrics() -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::metrics::render_prometheus(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use opentelemetry::baggage::BaggageExt as _;
    use telemetry::propagation::order_id;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let cx = extract_http(&headers(&[("traceparent", PARENT)]));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(cx.span().span_context().is_remote());
    }

    #[test]
    fn a_malformed_traceparent_starts_a_fresh_trace() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "",
        ] {
            let cx = extract_http(&headers(&[("traceparent", bad)]));
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
    }

    #[test]
    fn the_http_edge_does_not_trust_a_callers_order_id() {
        let cx = extract_http(&headers(&[(
            "baggage",
            "order.id=0192f5d4-7a3e-7c1b-9d2e-5f6a7b8c9d0e,tenant=acme;source=partner",
        )]));
        assert_eq!(order_id(&cx), None);
        assert_eq!(cx.baggage().len(), 1, "other entries are kept");
    }

    #[test]
    fn hostile_baggage_is_bounded() {
        let many: Vec<String> = (0..500).map(|i| format!("k{i}=v{i}")).collect();
        let cx = extract_http(&headers(&[("baggage", &many.join(","))]));
        assert!(cx.baggage().len() <= 64);
        let huge = format!("k={}", "x".repeat(20_000));
        let cx = extract_http(&headers(&[("baggage", &huge)]));
        assert_eq!(cx.baggage().len(), 0);
    }

    #[test]
    fn a_context_written_into_request_headers_is_read_back() {
        let cx = extract_http(&headers(&[("traceparent", PARENT)]));
        let mut out = http::HeaderMap::new();
        inject_http(&cx, &mut out);
        assert_eq!(out.get("traceparent").unwrap(), PARENT);
    }

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
