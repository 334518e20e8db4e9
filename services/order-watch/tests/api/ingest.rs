use std::io::Write;

use chrono::Utc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use testkit::otlp::build;
use uuid::Uuid;

use crate::helpers::{order_span, spawn_app, transition};

#[tokio::test]
async fn otlp_http_json_is_accepted() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let start = Utc::now().timestamp_nanos_opt().unwrap();
    // The OTLP/JSON encoding: hex ids, camelCase fields, 64-bit integers as strings.
    let body = serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "crm-api"}}]},
            "scopeSpans": [{
                "scope": {"name": "manual"},
                "spans": [{
                    "traceId": "5b8efff798038103d269b633813fc60c",
                    "spanId": "eee19b7ec3c1b174",
                    "name": "order registered",
                    "kind": 1,
                    "startTimeUnixNano": start.to_string(),
                    "endTimeUnixNano": (start + 1_000_000).to_string(),
                    "attributes": [
                        {"key": "order.id", "value": {"stringValue": order.to_string()}},
                        {"key": "order.status.to", "value": {"stringValue": "registered"}},
                        {"key": "hallmark.retry.count", "value": {"intValue": "2"}}
                    ],
                    "status": {}
                }]
            }]
        }]
    });
    let response = app
        .client
        .post(app.otlp("/v1/traces"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let journey = app.journey(order).await;
    assert_eq!(journey["status"], "registered");
    assert_eq!(journey["max_retries"], 2);
    assert_eq!(
        journey["spans"][0]["trace_id"],
        "5b8efff798038103d269b633813fc60c"
    );
}

#[tokio::test]
async fn gzip_compressed_protobuf_is_accepted() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let request = build::request(
        "shop-api",
        vec![transition(order, [3; 16], 1, "created", Utc::now())],
    );
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&request.encode_to_vec()).unwrap();
    let response = app
        .client
        .post(app.otlp("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.journey(order).await["span_count"], 1);
}

#[tokio::test]
async fn otlp_grpc_with_gzip_is_accepted() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let mut client =
        TraceServiceClient::connect(format!("http://127.0.0.1:{}", app.ports.otlp_grpc))
            .await
            .unwrap()
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let request = build::request(
        "mes-api",
        vec![transition(order, [4; 16], 1, "pricing", Utc::now())],
    );
    let response = client.export(request).await.unwrap().into_inner();
    assert!(response.partial_success.is_none());
    assert_eq!(app.journey(order).await["status"], "pricing");
}

/// Field 1 of an export request (its resource spans) sent as a number: not an OTLP message.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAnExport {
    #[prost(uint64, tag = "1")]
    resource_spans: u64,
}

#[tokio::test]
async fn otlp_grpc_that_is_not_an_otlp_message_is_an_invalid_argument() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        app.ports.otlp_grpc
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let status = client
        .unary::<_, ExportTraceServiceResponse, _>(
            tonic::Request::new(NotAnExport { resource_spans: 7 }),
            http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("not an OTLP"),
        "{}",
        status.message()
    );
    // The service still answers a proper request afterwards.
    let mut proper =
        TraceServiceClient::connect(format!("http://127.0.0.1:{}", app.ports.otlp_grpc))
            .await
            .unwrap();
    let order = Uuid::now_v7();
    proper
        .export(build::request(
            "mes-api",
            vec![transition(order, [6; 16], 1, "pricing", Utc::now())],
        ))
        .await
        .unwrap();
    assert_eq!(app.journey(order).await["status"], "pricing");
}

#[tokio::test]
async fn malformed_spans_are_reported_as_a_partial_success() {
    let app = spawn_app().await;
    let order = Uuid::now_v7();
    let mut broken = order_span(order, [5; 16], 2, "bad", Utc::now(), vec![]);
    broken.span_id = vec![0; 8];
    let request = build::request(
        "crm-api",
        vec![
            transition(order, [5; 16], 1, "registered", Utc::now()),
            broken,
        ],
    );
    let response = app.export(&request).await;
    assert_eq!(response.status(), 200);
    let body = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    let partial = body.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("span id"),
        "{}",
        partial.error_message
    );
    assert_eq!(app.journey(order).await["span_count"], 1);
}

#[tokio::test]
async fn malformed_payloads_get_otlp_errors_and_nothing_breaks() {
    let app = spawn_app().await;
    let post = |content_type: &'static str, encoding: Option<&'static str>, body: Vec<u8>| {
        let mut request = app
            .client
            .post(app.otlp("/v1/traces"))
            .header("content-type", content_type)
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        request.send()
    };
    let garbage = post(
        "application/x-protobuf",
        None,
        b"\xff\xff\xff\xff not protobuf".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(garbage.status(), 400);
    let status =
        order_watch::ingest::http::RpcStatus::decode(garbage.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 3);
    assert!(!status.message.is_empty());

    let bad_json = post("application/json", None, b"{\"resourceSpans\": [".to_vec())
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let body: serde_json::Value = bad_json.json().await.unwrap();
    assert_eq!(body["code"], 3);

    let text = post("text/plain", None, b"hello".to_vec()).await.unwrap();
    assert_eq!(text.status(), 415);

    let broken_gzip = post("application/x-protobuf", Some("gzip"), b"not gzip".to_vec())
        .await
        .unwrap();
    assert_eq!(broken_gzip.status(), 400);

    // 64 MiB of zeros compress to ~64 KiB: refused after decompression, not stored in memory.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![0u8; 64 * 1024 * 1024]).unwrap();
    let bomb = post(
        "application/x-protobuf",
        Some("gzip"),
        bomb.finish().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(bomb.status(), 413);

    let oversized = post("application/x-protobuf", None, vec![0u8; 2 * 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);

    // Still healthy and still ingesting.
    let order = Uuid::now_v7();
    let ok = app
        .export(&build::request(
            "shop-api",
            vec![transition(order, [6; 16], 1, "created", Utc::now())],
        ))
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn metrics_and_logs_sent_here_are_accepted() {
    let app = spawn_app().await;
    for path in ["/v1/metrics", "/v1/logs"] {
        let response = app
            .client
            .post(app.otlp(path))
            .header("content-type", "application/x-protobuf")
            .body(Vec::new())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}
