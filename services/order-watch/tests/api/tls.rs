//! order-watch serving TLS: the API to clients that trust its CA, the OTLP receivers to
//! exporters with a client certificate of the configured CA; plain text, other CAs' servers
//! and other CAs' clients refused.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message as _;
use testkit::otlp::build;
use testkit::tls::{Certificates, Pair};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app_with_tls, transition};

/// The whole chain of causes of `err`, to check why a request failed.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(" / {cause:?}"));
        source = cause.source();
    }
    text
}

/// Posts `request` to the OTLP/HTTP receiver with `client`: the status, or why no answer came.
async fn export_with(
    app: &TestApp,
    client: &reqwest::Client,
    request: &ExportTraceServiceRequest,
) -> Result<u16, String> {
    client
        .post(app.otlp("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .map(|response| response.status().as_u16())
        .map_err(|err| causes(&err))
}

/// Exports `request` over OTLP/gRPC, TLS with `config`: the answer, or why none came.
async fn export_grpc(
    app: &TestApp,
    config: Arc<rustls::ClientConfig>,
    request: ExportTraceServiceRequest,
) -> Result<(), String> {
    let port = app.ports.otlp_grpc;
    let connector = tokio_rustls::TlsConnector::from(config);
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("https://127.0.0.1")
        .timeout(Duration::from_secs(10))
        .connect_with_connector(connect)
        .await
        .map_err(|err| causes(&err))?;
    TraceServiceClient::new(channel)
        .export(request)
        .await
        .map(drop)
        .map_err(|status| causes(&status))
}

fn one_transition(order: Uuid, status: &str) -> ExportTraceServiceRequest {
    build::request(
        "crm-api",
        vec![transition(order, [7; 16], 1, status, Utc::now())],
    )
}

/// Whether `failure` says order-watch refused the client's certificate: it sent the TLS alert
/// `alert` (not just any failure, such as a closed port or a timeout).
fn refused_with(failure: &str, alert: &str) -> bool {
    // As rustls' error prints itself, or is printed for debugging.
    failure.contains(&format!("received fatal alert: {alert}"))
        || failure.contains(&format!("AlertReceived({alert})"))
}

/// The alert for a client without a certificate (TLS 1.3's `certificate_required`).
const NO_CERTIFICATE: &str = "CertificateRequired";
/// The alert for a client certificate of a CA order-watch does not trust.
const UNKNOWN_CA: &str = "UnknownCA";

#[tokio::test]
async fn the_api_answers_over_https_to_a_client_that_trusts_its_ca() {
    let certificates = Certificates::generate();
    let app = spawn_app_with_tls(&certificates, false).await;
    assert!(app.api("/").starts_with("https://"));
    let (status, stuck) = app.get("/api/orders/stuck").await;
    assert_eq!(status, 200, "{stuck}");
    assert_eq!(stuck, serde_json::json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_plain_text_client_gets_no_answer_from_a_tls_port() {
    let certificates = Certificates::generate();
    let app = spawn_app_with_tls(&certificates, false).await;
    for port in [app.ports.api, app.ports.otlp_http] {
        let plain = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/health"))
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        assert!(plain.is_err(), "port {port} answered plain text: {plain:?}");
    }
    let mut grpc = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        app.ports.otlp_grpc
    ))
    .unwrap()
    .timeout(Duration::from_secs(15))
    .connect()
    .await
    .map(TraceServiceClient::new);
    let answered = match &mut grpc {
        Ok(client) => client
            .export(one_transition(Uuid::now_v7(), "registered"))
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "the gRPC port took spans in plain text");
    // The port still serves TLS afterwards.
    assert_eq!(app.get("/health").await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_refuses_order_watchs_certificate() {
    let certificates = Certificates::generate();
    let app = spawn_app_with_tls(&certificates, false).await;
    let other = Certificates::client_trusting(&certificates.other.ca);
    let failure = other
        .get(app.api("/health"))
        .send()
        .await
        .map(|r| r.status())
        .expect_err("a client of another CA reached the API");
    let failure = causes(&failure);
    assert!(failure.contains("UnknownIssuer"), "{failure}");
    app.stop().await;
}

#[tokio::test]
async fn otlp_over_http_needs_a_client_certificate_of_the_configured_ca() {
    let certificates = Certificates::generate();
    let app = spawn_app_with_tls(&certificates, true).await;
    let ca = &certificates.trusted.ca;
    let order = Uuid::now_v7();

    let without = Certificates::client_trusting(ca);
    let failure = export_with(&app, &without, &one_transition(order, "registered"))
        .await
        .expect_err("spans taken from a client without a certificate");
    assert!(refused_with(&failure, NO_CERTIFICATE), "{failure}");

    let foreign = Certificates::client_with(ca, &certificates.other.client);
    let failure = export_with(&app, &foreign, &one_transition(order, "registered"))
        .await
        .expect_err("spans taken from a client of another CA");
    assert!(refused_with(&failure, UNKNOWN_CA), "{failure}");

    let (status, _) = app.get(&format!("/api/orders/{order}/journey")).await;
    assert_eq!(status, 404, "nothing was stored");

    let proper = Certificates::client_with(ca, &certificates.trusted.client);
    let status = export_with(&app, &proper, &one_transition(order, "registered")).await;
    assert_eq!(status, Ok(200));
    // The API itself asks for no client certificate.
    assert_eq!(app.journey(order).await["status"], "registered");
    app.stop().await;
}

#[tokio::test]
async fn otlp_over_grpc_needs_a_client_certificate_of_the_configured_ca() {
    let certificates = Certificates::generate();
    let app = spawn_app_with_tls(&certificates, true).await;
    let ca = &certificates.trusted.ca;
    let order = Uuid::now_v7();
    let config = |identity: Option<&Pair>| Certificates::rustls_client(ca, identity, &[b"h2"]);

    let failure = export_grpc(&app, config(None), one_transition(order, "pricing"))
        .await
        .expect_err("spans taken from a client without a certificate");
    assert!(refused_with(&failure, NO_CERTIFICATE), "{failure}");
    let failure = export_grpc(
        &app,
        config(Some(&certificates.other.client)),
        one_transition(order, "pricing"),
    )
    .await
    .expect_err("spans taken from a client of another CA");
    assert!(refused_with(&failure, UNKNOWN_CA), "{failure}");
    let (status, _) = app.get(&format!("/api/orders/{order}/journey")).await;
    assert_eq!(status, 404, "nothing was stored");

    export_grpc(
        &app,
        config(Some(&certificates.trusted.client)),
        one_transition(order, "pricing"),
    )
    .await
    .unwrap();
    assert_eq!(app.journey(order).await["status"], "pricing");
    app.stop().await;
}

/// An exporter that keeps the spans it is given.
#[derive(Debug, Clone, Default)]
struct Collected(Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for Collected {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// Exports one span of `order` with otel-fastpath's exporter configured by `variables` (the
/// standard OTLP ones) to `app`'s OTLP/HTTP receiver; whether the export succeeded.
async fn export_through_the_sdk(
    app: &TestApp,
    order: Uuid,
    variables: Vec<(&'static str, String)>,
) -> Result<(), String> {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SpanExporter as _;
    let mut variables = variables;
    variables.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", app.otlp("/v1/traces")));
    tokio::task::spawn_blocking(move || {
        let lookup = |name: &str| {
            variables
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        };
        let config = otel_fastpath::otlp::http::HttpConfig::from_lookup(lookup)
            .map_err(|e| e.to_string())?;
        let mut exporter =
            otel_fastpath::otlp::http::HttpSpanExporter::new(config).map_err(|e| e.to_string())?;
        // Spans are collected in memory, then exported in one batch by the exporter itself,
        // whose answer is the test's.
        let spans = Collected::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let mut span = provider.tracer("tls-test").start("order registered");
        span.set_attribute(opentelemetry::KeyValue::new("order.id", order.to_string()));
        span.set_attribute(opentelemetry::KeyValue::new(
            "order.status.to",
            "registered",
        ));
        span.end();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("crm-api")
            .build();
        exporter.set_resource(&resource);
        let batch = std::mem::take(&mut *spans.0.lock().unwrap());
        assert_eq!(batch.len(), 1);
        futures::executor::block_on(exporter.export(batch)).map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_exporter_with_the_standard_tls_variables_gets_its_spans_stored() {
    let certificates = Certificates::generate();
    let app = spawn_app_with_tls(&certificates, true).await;
    let path = |p: &std::path::Path| p.display().to_string();
    let trusted = &certificates.trusted;
    let client = vec![
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            path(&trusted.client.cert),
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path(&trusted.client.key)),
    ];

    // Trusting another CA, the exporter refuses order-watch.
    let refused = Uuid::now_v7();
    let mut wrong_ca = client.clone();
    wrong_ca.push((
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        path(&certificates.other.ca),
    ));
    let failure = export_through_the_sdk(&app, refused, wrong_ca)
        .await
        .expect_err("the exporter trusted a server of another CA");
    assert!(failure.contains("UnknownIssuer"), "{failure}");
    // Without a client certificate, order-watch refuses the exporter.
    let failure = export_through_the_sdk(
        &app,
        refused,
        vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&trusted.ca))],
    )
    .await
    .expect_err("order-watch took spans without a client certificate");
    assert!(refused_with(&failure, NO_CERTIFICATE), "{failure}");
    assert_eq!(
        app.get(&format!("/api/orders/{refused}/journey")).await.0,
        404
    );

    // The signal-specific variable wins over the general one.
    let order = Uuid::now_v7();
    let mut variables = client;
    variables.push((
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        path(&certificates.other.ca),
    ));
    variables.push(("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", path(&trusted.ca)));
    export_through_the_sdk(&app, order, variables)
        .await
        .unwrap();
    let journey = app.journey(order).await;
    assert_eq!(journey["status"], "registered");
    assert_eq!(journey["spans"][0]["service"], "crm-api");
    app.stop().await;
}

#[tokio::test]
async fn an_exporter_given_an_unreadable_certificate_file_does_not_start() {
    let certificates = Certificates::generate();
    let not_pem = certificates.write("not-pem.txt", "this is no certificate");
    for (variable, path) in [
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            certificates.dir().join("missing.pem"),
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", not_pem.clone()),
    ] {
        let path = path.display().to_string();
        let config = otel_fastpath::otlp::http::HttpConfig::from_lookup(|name| {
            (name == variable).then(|| path.clone())
        })
        .unwrap();
        let err = otel_fastpath::otlp::http::HttpSpanExporter::new(config)
            .expect_err("an exporter without the trust it was given");
        assert!(err.to_string().starts_with(variable), "{err}");
    }
    let key_alone = not_pem.display().to_string();
    let err = otel_fastpath::otlp::http::HttpConfig::from_lookup(|name| {
        (name == "OTEL_EXPORTER_OTLP_CLIENT_KEY").then(|| key_alone.clone())
    })
    .expect_err("a client key without its certificate");
    assert!(
        err.to_string().starts_with("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        "{err}"
    );
}

#[tokio::test]
async fn a_system_of_record_serving_https_with_a_ca_of_its_own_is_asked_when_that_ca_is_given() {
    use domain::System;
    use order_watch::records::Records;
    use platform::tls::{CertifiedKeyFiles, PemFile};
    let certificates = Certificates::generate();
    let trusted = &certificates.trusted;
    let tls = platform::tls::http_api(Some(&CertifiedKeyFiles {
        cert: PemFile::new("HALLMARK_TLS_CERT", &trusted.server.cert),
        key: PemFile::new("HALLMARK_TLS_KEY", &trusted.server.key),
    }))
    .unwrap()
    .unwrap();
    let mes = crate::helpers::StandInRecords::start_tls(&tls).await;
    let order = Uuid::now_v7();
    mes.hold(System::Mes, order, "pricing", Utc::now());
    let asking = |ca: Option<&std::path::Path>| {
        let mut config = mes.config(Duration::from_secs(5));
        config.ca = ca.map(|ca| PemFile::new("ORDER_WATCH_RECORDS_CA", ca));
        Records::new(config).unwrap()
    };

    let held = asking(Some(&trusted.ca))
        .ask(System::Mes, &[order])
        .await
        .unwrap();
    assert_eq!(held[&order].0.to_string(), "pricing");
    for ca in [None, Some(certificates.other.ca.as_path())] {
        let err = asking(ca)
            .ask(System::Mes, &[order])
            .await
            .expect_err("asked a system whose certificate is not trusted");
        let why = causes(&err);
        assert!(why.contains("UnknownIssuer"), "{ca:?}: {why}");
    }

    let unusable = certificates.write("not-a-ca.pem", "no certificate here");
    let mut config = mes.config(Duration::from_secs(5));
    config.ca = Some(PemFile::new("ORDER_WATCH_RECORDS_CA", &unusable));
    let err = Records::new(config).expect_err("a CA file without a certificate");
    assert!(
        err.to_string().starts_with("ORDER_WATCH_RECORDS_CA: "),
        "{err}"
    );
}
