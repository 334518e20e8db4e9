//! When the served certificate expires, as `/metrics` shows it: the value the CertificateExpiring
//! alerts watch, following a renewal. A binary of its own, since it installs the process's
//! telemetry.

use std::time::Duration;

use platform::tls::{CertifiedKeyFiles, PemFile};
use testkit::tls::{Certificates, renew};
use tokio_util::sync::CancellationToken;

/// 2100-01-01 and 2101-01-01 in seconds since the Unix epoch: when the trusted and the other
/// CA's server certificates expire (testkit::tls).
const TRUSTED_EXPIRES: f64 = 4_102_444_800.0;
const OTHER_EXPIRES: f64 = 4_133_980_800.0;

/// The value of `hallmark_tls_certificate_expiry_seconds` for `setting` on `/metrics`.
fn expiry(setting: &str) -> Option<f64> {
    let exposition = telemetry::metrics::render_prometheus();
    let label = format!("certificate=\"{setting}\"");
    exposition
        .lines()
        .find(|line| {
            line.starts_with("hallmark_tls_certificate_expiry_seconds{") && line.contains(&label)
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_say_when_the_served_certificate_expires_and_follow_a_renewal() {
    let _telemetry = telemetry::init(telemetry::ServiceInfo {
        name: "tls-expiry-test",
        version: env!("CARGO_PKG_VERSION"),
    })
    .unwrap();
    let certificates = Certificates::generate();
    let cert = certificates.dir().join("served.crt");
    let key = certificates.dir().join("served.key");
    std::fs::copy(&certificates.trusted.server.cert, &cert).unwrap();
    std::fs::copy(&certificates.trusted.server.key, &key).unwrap();
    let tls = CertifiedKeyFiles {
        cert: PemFile::new("TEST_EXPIRY_CERT", &cert),
        key: PemFile::new("TEST_EXPIRY_KEY", &key),
    }
    .load(None)
    .unwrap();
    assert_eq!(expiry("TEST_EXPIRY_CERT"), Some(TRUSTED_EXPIRES));

    let cancel = CancellationToken::new();
    let (listener, port) = platform::server::bind_with("127.0.0.1", 0, Some(&tls))
        .await
        .unwrap();
    let router = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
    tokio::spawn(platform::server::serve(listener, router, cancel.clone()));
    renew(&key, &certificates.other.server.key);
    renew(&cert, &certificates.other.server.cert);
    // The files are looked at when a connection arrives.
    testkit::wait::until(
        "the renewed certificate's expiry",
        Duration::from_secs(10),
        || async {
            let _ = Certificates::client_trusting(&certificates.other.ca)
                .get(format!("https://127.0.0.1:{port}/hello"))
                .send()
                .await;
            (expiry("TEST_EXPIRY_CERT") == Some(OTHER_EXPIRES)).then_some(())
        },
    )
    .await;
    cancel.cancel();
}
