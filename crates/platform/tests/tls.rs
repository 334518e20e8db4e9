//! Serving TLS: handshakes that do not hold each other up, and certificate files that cannot be
//! used refused at start-up with the setting to fix.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use platform::tls::{CertifiedKeyFiles, PemFile, ServerTls, TlsError};
use testkit::tls::{Certificates, renew};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn files(certificates: &Certificates) -> CertifiedKeyFiles {
    CertifiedKeyFiles {
        cert: PemFile::new("TEST_TLS_CERT", &certificates.trusted.server.cert),
        key: PemFile::new("TEST_TLS_KEY", &certificates.trusted.server.key),
    }
}

/// Serves a `/hello` route over TLS on a free port until `cancel` fires; the port.
async fn serve_tls(tls: &ServerTls, cancel: &CancellationToken) -> u16 {
    let (listener, port) = platform::server::bind_with("127.0.0.1", 0, Some(tls))
        .await
        .unwrap();
    let router = Router::new().route("/hello", get(|| async { "hello" }));
    tokio::spawn(platform::server::serve(listener, router, cancel.clone()));
    port
}

#[tokio::test]
async fn clients_that_never_finish_their_handshake_hold_up_no_one_else() {
    let certificates = Certificates::generate();
    let tls = files(&certificates).load(None).unwrap();
    let cancel = CancellationToken::new();
    let port = serve_tls(&tls, &cancel).await;

    // Ten clients connect and say nothing; one more sends half a ClientHello and stops.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let mut halfway = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    halfway
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();

    let client = Certificates::client_trusting(&certificates.trusted.ca);
    let started = Instant::now();
    let answer = client
        .get(format!("https://127.0.0.1:{port}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "hello");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the answer took {:?}, behind the silent clients",
        started.elapsed()
    );
    assert!(platform::tls::HANDSHAKE_TIMEOUT > Duration::from_secs(2));
    drop(silent);
    cancel.cancel();
}

#[tokio::test]
async fn a_client_certificate_is_asked_for_only_with_a_client_ca() {
    let certificates = Certificates::generate();
    let cancel = CancellationToken::new();
    let ca = &certificates.trusted.ca;
    let open = serve_tls(&files(&certificates).load(None).unwrap(), &cancel).await;
    let mutual = serve_tls(
        &files(&certificates)
            .load(Some(&PemFile::new("TEST_TLS_CLIENT_CA", ca)))
            .unwrap(),
        &cancel,
    )
    .await;
    let anonymous = Certificates::client_trusting(ca);
    let identified = Certificates::client_with(ca, &certificates.trusted.client);
    let stranger = Certificates::client_with(ca, &certificates.other.client);
    let hello = |client: &reqwest::Client, port: u16| {
        let request = client.get(format!("https://127.0.0.1:{port}/hello")).send();
        async move { request.await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(hello(&anonymous, open).await.unwrap(), 200);
    assert_eq!(hello(&anonymous, mutual).await.ok(), None);
    assert_eq!(hello(&stranger, mutual).await.ok(), None);
    assert_eq!(hello(&identified, mutual).await.unwrap(), 200);
    cancel.cancel();
}

#[tokio::test]
async fn a_dropped_tls_listener_frees_its_port() {
    let certificates = Certificates::generate();
    let tls = files(&certificates).load(None).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = tcp.local_addr().unwrap();
    let listener = platform::tls::Listener::tls(tcp, &tls).unwrap();
    drop(listener);
    testkit::wait::until("the port to be free", Duration::from_secs(5), || async {
        TcpListener::bind(address).await.ok().map(drop)
    })
    .await;
}

#[test]
fn unusable_certificate_files_are_errors_that_name_their_setting() {
    let certificates = Certificates::generate();
    let good = files(&certificates);
    let garbage = certificates.write("garbage.pem", "not a certificate\n");
    let missing = certificates.dir().join("missing.pem");
    let setting = |err: TlsError| err.to_string();

    let err = setting(
        CertifiedKeyFiles {
            cert: PemFile::new("TEST_TLS_CERT", &missing),
            ..good.clone()
        }
        .load(None)
        .unwrap_err(),
    );
    assert!(err.starts_with("TEST_TLS_CERT: cannot read"), "{err}");

    let err = setting(
        CertifiedKeyFiles {
            cert: PemFile::new("TEST_TLS_CERT", &garbage),
            ..good.clone()
        }
        .load(None)
        .unwrap_err(),
    );
    assert!(
        err.starts_with("TEST_TLS_CERT: ") && err.contains("no PEM certificate"),
        "{err}"
    );

    let err = setting(
        CertifiedKeyFiles {
            key: PemFile::new("TEST_TLS_KEY", &garbage),
            ..good.clone()
        }
        .load(None)
        .unwrap_err(),
    );
    assert!(
        err.starts_with("TEST_TLS_KEY: ") && err.contains("private key"),
        "{err}"
    );

    // The other CA's server key does not belong to this server's certificate.
    let err = setting(
        CertifiedKeyFiles {
            key: PemFile::new("TEST_TLS_KEY", &certificates.other.server.key),
            ..good.clone()
        }
        .load(None)
        .unwrap_err(),
    );
    assert!(err.starts_with("TEST_TLS_CERT and TEST_TLS_KEY"), "{err}");

    let err = setting(
        good.load(Some(&PemFile::new("TEST_TLS_CLIENT_CA", &garbage)))
            .unwrap_err(),
    );
    assert!(err.starts_with("TEST_TLS_CLIENT_CA: "), "{err}");
}

/// Whether a new connection of a client trusting only `ca` (presenting `identity`) gets an
/// answer from `port`.
async fn answered(ca: &std::path::Path, identity: Option<&testkit::tls::Pair>, port: u16) -> bool {
    // A new client each time: a pooled connection would keep the certificate it began with.
    let client = match identity {
        Some(pair) => Certificates::client_with(ca, pair),
        None => Certificates::client_trusting(ca),
    };
    client
        .get(format!("https://127.0.0.1:{port}/hello"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_from_the_next_connection_and_unusable_files_change_nothing()
 {
    let certificates = Certificates::generate();
    let (trusted, other) = (&certificates.trusted, &certificates.other);
    let cert = certificates.dir().join("served.crt");
    let key = certificates.dir().join("served.key");
    std::fs::copy(&trusted.server.cert, &cert).unwrap();
    std::fs::copy(&trusted.server.key, &key).unwrap();
    let served = CertifiedKeyFiles {
        cert: PemFile::new("TEST_TLS_CERT", &cert),
        key: PemFile::new("TEST_TLS_KEY", &key),
    };
    // As the services serve their APIs: with ALPN, a copy that follows the files on its own.
    let tls = platform::tls::http_api(Some(&served)).unwrap().unwrap();
    let cancel = CancellationToken::new();
    let port = serve_tls(&tls, &cancel).await;
    assert!(answered(&trusted.ca, None, port).await);
    assert!(!answered(&other.ca, None, port).await);

    // Half a renewal (the other CA's certificate, the old key), then a key that is not PEM:
    // the server goes on with what it has, at each look at the files.
    renew(&cert, &other.server.cert);
    let truncated = certificates.write("truncated.key", "-----BEGIN PRIVATE KEY-----\ntruncated");
    for broken in [None, Some(&truncated)] {
        if let Some(file) = broken {
            renew(&key, file);
        }
        tokio::time::sleep(platform::tls::RELOAD_CHECK * 2).await;
        assert!(
            answered(&trusted.ca, None, port).await,
            "the old certificate is still served"
        );
        assert!(answered(&trusted.ca, None, port).await);
    }

    // The renewal completed: served from a next connection on, without a restart.
    renew(&key, &other.server.key);
    testkit::wait::until(
        "the renewed certificate to be served",
        Duration::from_secs(10),
        || async { answered(&other.ca, None, port).await.then_some(()) },
    )
    .await;
    assert!(!answered(&trusted.ca, None, port).await);
    cancel.cancel();
}

#[tokio::test]
async fn a_replaced_client_ca_is_asked_for_from_the_next_connection() {
    let certificates = Certificates::generate();
    let (trusted, other) = (&certificates.trusted, &certificates.other);
    let client_ca = certificates.dir().join("clients.crt");
    std::fs::copy(&trusted.ca, &client_ca).unwrap();
    let tls = files(&certificates)
        .load(Some(&PemFile::new("TEST_TLS_CLIENT_CA", &client_ca)))
        .unwrap();
    let cancel = CancellationToken::new();
    let port = serve_tls(&tls, &cancel).await;
    assert!(answered(&trusted.ca, Some(&trusted.client), port).await);
    assert!(!answered(&trusted.ca, Some(&other.client), port).await);

    renew(&client_ca, &other.ca);
    testkit::wait::until(
        "the new client CA to be asked for",
        Duration::from_secs(10),
        || async {
            answered(&trusted.ca, Some(&other.client), port)
                .await
                .then_some(())
        },
    )
    .await;
    assert!(!answered(&trusted.ca, Some(&trusted.client), port).await);
    cancel.cancel();
}
