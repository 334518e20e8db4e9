//! TLS for the OTLP/HTTP exporters, from the standard variables of the OpenTelemetry exporter
//! specification (the signal-specific variable, `…_TRACES_…` or `…_METRICS_…`, wins over the
//! general one):
//!
//! | variable | meaning |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE` | PEM file of the CA certificates the collector's certificate is checked against, instead of the built-in roots |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_CERTIFICATE` | PEM file of the client certificate (chain) presented to a collector that asks for one (mTLS) |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_KEY` | PEM file of that certificate's private key |
//!
//! They matter for an `https://` endpoint; without them, https is checked against the
//! built-in roots. A file that cannot be read or holds no certificate (or key) is an error
//! naming its variable when the exporter is built: an exporter never quietly does without
//! the trust or the identity it was given.

use std::path::PathBuf;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::http::ConfigError;
use super::setting;

/// The signal an exporter sends, whose own variables win over the general ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The certificate's, the client certificate's and the client key's variables, each the
    /// signal's own first.
    fn variables(self) -> [[&'static str; 2]; 3] {
        match self {
            Self::Traces => [
                [
                    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ],
                [
                    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                ],
                [
                    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                ],
            ],
            Self::Metrics => [
                [
                    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ],
                [
                    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                ],
                [
                    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                ],
            ],
        }
    }
}

/// A file one of the variables names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    pub variable: &'static str,
    pub path: PathBuf,
}

/// The TLS settings of an exporter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CAs to trust instead of the built-in roots.
    pub certificate: Option<PemFile>,
    /// The client certificate and its key, presented when the collector asks.
    pub client: Option<(PemFile, PemFile)>,
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{variable}={}: cannot read the file: {source}", path.display())]
    Read {
        variable: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{variable}={}: {problem}", path.display())]
    Invalid {
        variable: &'static str,
        path: PathBuf,
        problem: String,
    },
}

impl TlsConfig {
    /// Whether any of the variables is set.
    pub fn is_set(&self) -> bool {
        self.certificate.is_some() || self.client.is_some()
    }

    /// Reads the variables of `signal` through `lookup` (the paths only; the files are read by
    /// [`TlsConfig::load`]).
    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
        signal: Signal,
    ) -> Result<Self, ConfigError> {
        let [certificate, client_certificate, client_key] = signal.variables();
        let file = |names: &[&'static str]| {
            setting(lookup, names).map(|(variable, path)| PemFile {
                variable,
                path: path.into(),
            })
        };
        let certificate = file(&certificate);
        let cert = file(&client_certificate);
        let key = file(&client_key);
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    cert.variable,
                    "is set without its OTEL_EXPORTER_OTLP_…CLIENT_KEY: a client certificate needs its key",
                    &cert.path.to_string_lossy(),
                ));
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    key.variable,
                    "is set without its OTEL_EXPORTER_OTLP_…CLIENT_CERTIFICATE: a key needs its certificate",
                    &key.path.to_string_lossy(),
                ));
            }
        };
        Ok(Self {
            certificate,
            client,
        })
    }

    /// The files' contents, checked: the CA file holds certificates, the client certificate
    /// file certificates and the key file a private key.
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        let roots = match &self.certificate {
            Some(file) => Some(file.certificates()?),
            None => None,
        };
        let identity = match &self.client {
            None => None,
            Some((cert, key)) => {
                let mut pem = cert.certificates()?;
                pem.push(b'\n');
                pem.extend(key.private_key()?);
                Some(pem)
            }
        };
        Ok(LoadedTls { roots, identity })
    }
}

impl PemFile {
    fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|source| TlsError::Read {
            variable: self.variable,
            path: self.path.clone(),
            source,
        })
    }

    fn invalid(&self, problem: String) -> TlsError {
        TlsError::Invalid {
            variable: self.variable,
            path: self.path.clone(),
            problem,
        }
    }

    /// The file's contents, which hold at least one certificate.
    fn certificates(&self) -> Result<Vec<u8>, TlsError> {
        let pem = self.read()?;
        let count = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(format!("not PEM certificates ({e})")))?
            .len();
        if count == 0 {
            return Err(self.invalid("holds no PEM certificate".to_owned()));
        }
        Ok(pem)
    }

    /// The file's contents, which hold a private key.
    fn private_key(&self) -> Result<Vec<u8>, TlsError> {
        let pem = self.read()?;
        match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(_) => Ok(pem),
            Err(e) => Err(self.invalid(format!("holds no usable PEM private key ({e})"))),
        }
    }
}

/// The checked PEM contents, ready for an HTTP client.
pub struct LoadedTls {
    /// The CA certificates to trust instead of the built-in roots.
    pub roots: Option<Vec<u8>>,
    /// The client certificate followed by its key.
    pub identity: Option<Vec<u8>>,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every log line.
        f.debug_struct("LoadedTls")
            .field("roots", &self.roots.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl LoadedTls {
    /// The fast path's client (reqwest 0.12) with these settings.
    pub fn apply(
        &self,
        mut builder: reqwest::blocking::ClientBuilder,
    ) -> reqwest::Result<reqwest::blocking::ClientBuilder> {
        if let Some(roots) = &self.roots {
            builder = builder.tls_built_in_root_certs(false);
            for certificate in reqwest::Certificate::from_pem_bundle(roots)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(reqwest::Identity::from_pem(identity)?);
        }
        Ok(builder)
    }

    /// `opentelemetry-otlp`'s client (reqwest 0.13) with these settings, for exports that time
    /// out after `timeout`.
    pub fn reference_client(
        self,
        timeout: std::time::Duration,
    ) -> reqwest_otlp::Result<reqwest_otlp::blocking::Client> {
        // The blocking client runs a runtime of its own and refuses to be built inside another
        // one, which is where services set up telemetry.
        std::thread::spawn(move || {
            self.apply_to_reference(reqwest_otlp::blocking::Client::builder().timeout(timeout))?
                .build()
        })
        .join()
        .expect("building an HTTP client does not panic")
    }

    /// `opentelemetry-otlp`'s client builder (reqwest 0.13) with these settings.
    pub fn apply_to_reference(
        &self,
        mut builder: reqwest_otlp::blocking::ClientBuilder,
    ) -> reqwest_otlp::Result<reqwest_otlp::blocking::ClientBuilder> {
        if let Some(roots) = &self.roots {
            builder = builder.tls_certs_only(reqwest_otlp::Certificate::from_pem_bundle(roots)?);
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(reqwest_otlp::Identity::from_pem(identity)?);
        }
        Ok(builder)
    }
}
