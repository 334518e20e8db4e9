//! A server's TLS settings: its certificate chain and private key, and the CA its clients'
//! certificates must be signed by when it asks for them.
//!
//! # Renewal without a restart
//!
//! The files are read at start, where anything unusable stops the process, and again whenever
//! they change: a new connection looks at them at most once every [`RELOAD_CHECK`], and when
//! their contents differ from those in use it builds the configuration afresh, so renewed
//! certificates (certbot, cert-manager's secret volumes, which swap a symlink) are served from
//! the next connection on. Connections already open keep theirs. New files that cannot be used
//! (half written, a key of another certificate) change nothing: the server goes on with what it
//! has, says why once (`warn`), counts it in `hallmark.operations.failed{operation="tls_reload"}`,
//! and tries again at the next check. When the certificate served expires is a metric
//! (`hallmark.tls.certificate.expiry`), which the CertificateExpiring alerts watch.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Gauge;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file and the setting that named it, so that an error about the file names the
/// setting an operator has to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    /// The environment variable (or other setting) the path came from.
    pub setting: &'static str,
    pub path: PathBuf,
}

impl PemFile {
    pub fn new(setting: &'static str, path: impl Into<PathBuf>) -> Self {
        Self {
            setting,
            path: path.into(),
        }
    }

    /// The file `variable` names, if it is set and not blank.
    pub fn from_env(variable: &'static str) -> Option<Self> {
        settings::optional(variable).map(|path| Self::new(variable, path.trim()))
    }

    fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|source| TlsError::Read {
            setting: self.setting,
            path: self.path.clone(),
            source,
        })
    }

    fn invalid(&self, problem: impl Into<String>) -> TlsError {
        TlsError::Invalid {
            setting: self.setting,
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    /// Every certificate in the file; at least one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        self.certificates_in(&self.read()?)
    }

    /// The private key in the file (PKCS#8, PKCS#1 or SEC1).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        self.private_key_in(&self.read()?)
    }

    /// Every certificate in `pem`, this file's contents; at least one.
    fn certificates_in(&self, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(format!("not PEM certificates ({e})")))?;
        if certificates.is_empty() {
            return Err(self.invalid("holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"));
        }
        Ok(certificates)
    }

    /// The private key in `pem`, this file's contents.
    fn private_key_in(&self, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                self.invalid("holds no PEM private key (`-----BEGIN PRIVATE KEY-----`)")
            }
            e => self.invalid(format!("not a PEM private key ({e})")),
        })
    }
}

/// Why TLS settings cannot be used: each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read `{}`", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{setting}: `{}` {problem}", path.display())]
    Invalid {
        setting: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{given} is set but {missing} is not: TLS needs both the certificate and its key")]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error(
        "{setting}: client certificates need TLS, which is off: give the server's certificate and key too"
    )]
    NeedsTls { setting: &'static str },
    #[error("{cert} and {key}: the key does not belong to the certificate, or is unusable")]
    KeyMismatch {
        cert: &'static str,
        key: &'static str,
        #[source]
        source: rustls::Error,
    },
}

/// A server's certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKeyFiles {
    pub cert: PemFile,
    pub key: PemFile,
}

impl CertifiedKeyFiles {
    /// The files `cert_variable` and `key_variable` name, or `None` when neither is set (the
    /// server speaks plain text). One without the other is an error: a server never falls
    /// back to plain text over a missing line.
    pub fn from_env(
        cert_variable: &'static str,
        key_variable: &'static str,
    ) -> Result<Option<Self>, TlsError> {
        match (
            PemFile::from_env(cert_variable),
            PemFile::from_env(key_variable),
        ) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (Some(_), None) => Err(TlsError::Incomplete {
                given: cert_variable,
                missing: key_variable,
            }),
            (None, Some(_)) => Err(TlsError::Incomplete {
                given: key_variable,
                missing: cert_variable,
            }),
            (None, None) => Ok(None),
        }
    }

    /// The certificate and key with which an order service (Shop, CRM, MES) serves its API.
    /// Env: `HALLMARK_TLS_CERT` and `HALLMARK_TLS_KEY` (PEM files, both or neither; plain HTTP
    /// when neither is set).
    pub fn service_from_env() -> Result<Option<Self>, TlsError> {
        Self::from_env("HALLMARK_TLS_CERT", "HALLMARK_TLS_KEY")
    }

    /// The server configuration; see [`ServerTls::load`].
    pub fn load(&self, client_ca: Option<&PemFile>) -> Result<ServerTls, TlsError> {
        ServerTls::load(&self.cert, &self.key, client_ca)
    }
}

/// The TLS of an HTTP API (HTTP/1.1, no client certificates) served with `files`, or `None`
/// (plain HTTP) without them.
pub fn http_api(files: Option<&CertifiedKeyFiles>) -> Result<Option<ServerTls>, TlsError> {
    files
        .map(|files| Ok(files.load(None)?.with_alpn(&[b"http/1.1"])))
        .transpose()
}

/// How often, at most, a new connection has the certificate files looked at for a renewal.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A server's TLS configuration, ready for [`super::Listener::tls`]. Built at start-up, so a
/// file that cannot be used stops the process with an error naming its setting; afterwards it
/// follows its files (see the module docs).
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<Files>,
    alpn: Vec<Vec<u8>>,
    current: Arc<Mutex<Current>>,
}

/// Where a [`ServerTls`] reads its certificate, key and client CA.
struct Files {
    cert: PemFile,
    key: PemFile,
    client_ca: Option<PemFile>,
}

/// The files' contents, to see whether they changed.
#[derive(Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The configuration in use, what it was built from, and the last look at the files.
struct Current {
    config: Arc<rustls::ServerConfig>,
    built_from: Contents,
    checked: Instant,
    /// Why the files as they are now cannot be used, once said; `None` while they can.
    refused: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every log line.
        f.debug_struct("ServerTls")
            .field("certificate", &self.files.cert.path)
            .field(
                "client_ca",
                &self.files.client_ca.as_ref().map(|ca| &ca.path),
            )
            .finish_non_exhaustive()
    }
}

impl Files {
    fn read(&self) -> Result<Contents, TlsError> {
        Ok(Contents {
            cert: self.cert.read()?,
            key: self.key.read()?,
            client_ca: self.client_ca.as_ref().map(PemFile::read).transpose()?,
        })
    }

    /// The configuration `contents` (these files' as read) make, offering `alpn`.
    fn build(
        &self,
        contents: &Contents,
        alpn: &[Vec<u8>],
    ) -> Result<rustls::ServerConfig, TlsError> {
        let chain = self.cert.certificates_in(&contents.cert)?;
        let expires = chain.first().and_then(expiry);
        let private_key = self.key.private_key_in(&contents.key)?;
        let provider = super::provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default protocol versions");
        let builder = match self.client_ca.as_ref().zip(contents.client_ca.as_deref()) {
            None => builder.with_no_client_auth(),
            Some((ca, pem)) => {
                let mut roots = RootCertStore::empty();
                for certificate in ca.certificates_in(pem)? {
                    roots.add(certificate).map_err(|e| {
                        ca.invalid(format!("holds a certificate that is not a CA's ({e})"))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| ca.invalid(format!("cannot verify clients with it ({e})")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, private_key)
            .map_err(|source| TlsError::KeyMismatch {
                cert: self.cert.setting,
                key: self.key.setting,
                source,
            })?;
        config.alpn_protocols = alpn.to_vec();
        if let Some(expires) = expires {
            record_expiry(self.cert.setting, expires);
        }
        Ok(config)
    }
}

/// When `certificate` expires, in seconds since the Unix epoch; `None` if it cannot be read as
/// X.509 (rustls, which took it, is the judge of whether it can be served).
fn expiry(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Records in `hallmark.tls.certificate.expiry` when the certificate `setting` names, the one
/// being served, expires: what the CertificateExpiring alerts watch, so a renewal that never
/// came, or came unusable, is noticed weeks before clients refuse the server.
fn record_expiry(setting: &'static str, expires: i64) {
    static EXPIRY: OnceLock<Gauge<f64>> = OnceLock::new();
    EXPIRY
        .get_or_init(|| {
            telemetry::metrics::meter()
                .f64_gauge("hallmark.tls.certificate.expiry")
                .with_unit("s")
                .with_description(
                    "When the certificate served expires, in seconds since the Unix epoch, by the setting naming it",
                )
                .build()
        })
        .record(expires as f64, &[KeyValue::new("certificate", setting)]);
}

impl ServerTls {
    /// The certificate chain in `cert` (the server's own first, then intermediates) with the
    /// private key in `key`; with `client_ca`, a client must present a certificate signed by
    /// one of the CAs in that file or its handshake fails.
    pub fn load(
        cert: &PemFile,
        key: &PemFile,
        client_ca: Option<&PemFile>,
    ) -> Result<Self, TlsError> {
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.cloned(),
        };
        Self::built(Arc::new(files), Vec::new())
    }

    fn built(files: Arc<Files>, alpn: Vec<Vec<u8>>) -> Result<Self, TlsError> {
        let contents = files.read()?;
        let config = files.build(&contents, &alpn)?;
        Ok(Self {
            files,
            alpn,
            current: Arc::new(Mutex::new(Current {
                config: Arc::new(config),
                built_from: contents,
                checked: Instant::now(),
                refused: None,
            })),
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The file the certificate chain came from.
    pub fn certificate_path(&self) -> &Path {
        &self.files.cert.path
    }

    /// The configuration offering `protocols` in ALPN (e.g. `h2` for gRPC, which speaks only
    /// HTTP/2; without ALPN, gRPC clients refuse the connection). It follows the same files,
    /// on its own.
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let alpn: Vec<Vec<u8>> = protocols.iter().map(|p| p.to_vec()).collect();
        let current = self.current.lock().expect("not poisoned");
        let mut config = (*current.config).clone();
        config.alpn_protocols = alpn.clone();
        Self {
            files: self.files.clone(),
            alpn,
            current: Arc::new(Mutex::new(Current {
                config: Arc::new(config),
                built_from: current.built_from.clone(),
                checked: current.checked,
                refused: None,
            })),
        }
    }

    /// The configuration for a new connection: the one in use, or one built afresh when the
    /// files changed since it was built and can be used (looked at once per [`RELOAD_CHECK`]).
    pub(super) fn config(&self) -> Arc<rustls::ServerConfig> {
        let mut current = self.current.lock().expect("not poisoned");
        if current.checked.elapsed() >= RELOAD_CHECK {
            current.checked = Instant::now();
            self.follow_files(&mut current);
        }
        current.config.clone()
    }

    fn follow_files(&self, current: &mut Current) {
        let built = self.files.read().and_then(|contents| {
            if contents == current.built_from {
                return Ok(None);
            }
            let config = self.files.build(&contents, &self.alpn)?;
            Ok(Some((config, contents)))
        });
        match built {
            Ok(None) => current.refused = None,
            Ok(Some((config, contents))) => {
                current.config = Arc::new(config);
                current.built_from = contents;
                current.refused = None;
                tracing::info!(
                    certificate = %self.files.cert.path.display(),
                    "TLS certificate files changed; new connections use them"
                );
            }
            Err(err) => {
                let reason = err.to_string();
                if current.refused.as_ref() != Some(&reason) {
                    tracing::warn!(
                        error = %reason,
                        "TLS certificate files changed but cannot be used; \
                         serving with the ones read before"
                    );
                    telemetry::metrics::record_failure("tls_reload", "none", "invalid");
                    current.refused = Some(reason);
                }
            }
        }
    }
}
