//! The database connection speaks TLS as its URL asks (libpq's `sslmode` and `sslrootcert`), and
//! a connection told to verify the server refuses one whose certificate its CA did not sign.
//!
//! The server is the suite's PostgreSQL, which scripts/deps.sh configures with a certificate of
//! the machine's local CA (`$HALLMARK_TLS_DIR/ca.pem`).

use std::path::PathBuf;
use std::time::Duration;

use platform::db::DatabaseConfig;
use tokio_util::sync::CancellationToken;

fn local_ca() -> PathBuf {
    let dir = std::env::var("HALLMARK_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".local/state/hallmark/tls")
        });
    let ca = dir.join("ca.pem");
    assert!(
        ca.exists(),
        "{} is missing: scripts/test (scripts/deps.sh, ensure_dependencies) creates it and gives PostgreSQL a certificate it signed",
        ca.display()
    );
    ca
}

/// The suite's server URL with `query` appended.
fn server_url_with(query: &str) -> String {
    let url = testkit::database::server_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

async fn connect(url: String) -> Result<sqlx::PgPool, sqlx::Error> {
    // A refused certificate is an error at once, not something `connect` waits out.
    tokio::time::timeout(
        Duration::from_secs(20),
        platform::db::connect(&DatabaseConfig::new(url), &CancellationToken::new()),
    )
    .await
    .expect("connect retried a refused certificate instead of failing")
}

#[tokio::test]
async fn a_url_asking_to_verify_the_server_against_the_local_ca_connects_over_tls() {
    let url = server_url_with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        local_ca().display()
    ));
    let pool = connect(url).await.expect("verify-full with the local CA");
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl, "the connection is not encrypted");
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "{version:?}"
    );
}

#[tokio::test]
async fn a_server_whose_certificate_the_given_ca_did_not_sign_is_refused() {
    // Public certificate authorities: none of them signed the local CA's server certificate.
    let others = "/etc/ssl/certs/ca-certificates.crt";
    assert!(
        std::path::Path::new(others).exists(),
        "{others} (Debian's ca-certificates) is missing"
    );
    let url = server_url_with(&format!("sslmode=verify-full&sslrootcert={others}"));
    let err = connect(url)
        .await
        .expect_err("a server certificate of an unknown issuer was accepted");
    let shown = otel_fastpath::logging::error_chain(&err);
    assert!(
        shown.contains("invalid peer certificate") && shown.contains("UnknownIssuer"),
        "{shown}"
    );
    assert!(!platform::db::is_unavailable(&err), "{shown}");
}

#[tokio::test]
async fn a_url_that_requires_tls_gets_an_encrypted_connection() {
    let pool = connect(server_url_with("sslmode=require"))
        .await
        .expect("sslmode=require");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl);
}
