//! Certificates for tests of TLS: a CA, a server certificate for `127.0.0.1` and `localhost`,
//! a client certificate signed by the CA, and the same from another, unrelated CA (what a
//! client or server that must be refused presents). Everything is generated afresh (ECDSA
//! P-256) and written as PEM files to a temporary directory that lives as long as the
//! [`Certificates`]. The server and client certificates of the trusted CA expire at the start
//! of 2100, the other CA's a year later, so a test can tell which one a server reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// The certificate followed by the key, as reqwest's [`reqwest::Identity::from_pem`] takes
    /// them.
    pub fn identity_pem(&self) -> Vec<u8> {
        let mut pem = std::fs::read(&self.cert).unwrap();
        pem.extend(std::fs::read(&self.key).unwrap());
        pem
    }
}

/// One CA and what it signed.
#[derive(Debug, Clone)]
pub struct Authority {
    /// The CA's certificate: what a peer trusts.
    pub ca: PathBuf,
    /// For `127.0.0.1`, `::1` and `localhost`.
    pub server: Pair,
    /// A client certificate (for `hallmark-test-client`).
    pub client: Pair,
}

/// A CA with its server and client certificates, and another CA with its own.
pub struct Certificates {
    /// What servers present and clients are expected to trust.
    pub trusted: Authority,
    /// An unrelated CA: its certificates must be refused where `trusted`'s are asked for.
    pub other: Authority,
    dir: tempfile::TempDir,
}

impl Certificates {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let trusted = authority(dir.path(), "trusted", 2100);
        let other = authority(dir.path(), "other", 2101);
        Self {
            trusted,
            other,
            dir,
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the directory with `contents`, for a test of a file that is not what it
    /// should be.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// An HTTP client that trusts only `ca` (not the system's roots), without a client
    /// certificate.
    pub fn client_trusting(ca: &Path) -> reqwest::Client {
        Self::builder_trusting(ca).build().unwrap()
    }

    /// As [`Certificates::client_trusting`], presenting `identity`.
    pub fn client_with(ca: &Path, identity: &Pair) -> reqwest::Client {
        Self::builder_trusting(ca)
            .identity(reqwest::Identity::from_pem(&identity.identity_pem()).unwrap())
            .build()
            .unwrap()
    }

    fn builder_trusting(ca: &Path) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(std::time::Duration::from_secs(10))
    }

    /// A rustls client configuration that trusts only `ca` and presents `identity` if given,
    /// offering `alpn` (for a gRPC client: `h2`).
    pub fn rustls_client(
        ca: &Path,
        identity: Option<&Pair>,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(platform::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(pair) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&pair.cert)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Replaces the file at `path` with the contents of `source` as a certificate renewal does:
/// whole, by a rename, so a server never reads it half written.
pub fn renew(path: &Path, source: &Path) {
    let partial = path.with_extension("partial");
    std::fs::copy(source, &partial).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// A CA named `name` whose server and client certificates expire on 1 January of `expiry_year`.
fn authority(dir: &Path, name: &str, expiry_year: i32) -> Authority {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("Hallmark test CA ({name})"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |file: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_after = rcgen::date_time_ymd(expiry_year, 1, 1);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("hallmark-test-{file}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{name}-{file}.pem")),
            key: dir.join(format!("{name}-{file}-key.pem")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    };
    let server = leaf(
        "server",
        vec!["127.0.0.1".into(), "::1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = leaf(
        "client",
        vec!["hallmark-test-client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Authority { ca, server, client }
}
