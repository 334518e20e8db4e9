//! A server's TLS settings: its certificate chain and private key, and the CA its clients'
//! certificates must be signed by when it asks for them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        let pem = self.read()?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(format!("not PEM certificates ({e})")))?;
        if certificates.is_empty() {
            return Err(self.invalid("holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"));
        }
        Ok(certificates)
    }

    /// The private key in the file (PKCS#8, PKCS#1 or SEC1).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = self.read()?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
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

/// A server's TLS configuration, ready for [`super::Listener::tls`]. Built once at start-up,
/// so a file that cannot be used stops the process with an error naming its setting.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    certificate: PathBuf,
    client_ca: Option<PathBuf>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every log line.
        f.debug_struct("ServerTls")
            .field("certificate", &self.certificate)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
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
        let chain = cert.certificates()?;
        let private_key = key.private_key()?;
        let provider = super::provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default protocol versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in ca.certificates()? {
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
        let config = builder
            .with_single_cert(chain, private_key)
            .map_err(|source| TlsError::KeyMismatch {
                cert: cert.setting,
                key: key.setting,
                source,
            })?;
        Ok(Self {
            config: Arc::new(config),
            certificate: cert.path.clone(),
            client_ca: client_ca.map(|ca| ca.path.clone()),
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The file the certificate chain came from.
    pub fn certificate_path(&self) -> &Path {
        &self.certificate
    }

    /// The configuration offering `protocols` in ALPN (e.g. `h2` for gRPC, which speaks only
    /// HTTP/2; without ALPN, gRPC clients refuse the connection).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Self {
            config: Arc::new(config),
            ..self.clone()
        }
    }

    pub(super) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}
