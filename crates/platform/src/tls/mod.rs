//! TLS for the servers of a Hallmark process: a certificate and key from PEM files, optionally
//! a CA whose certificates clients must present ([`config`]), and a listener that accepts TCP
//! connections and completes their handshakes concurrently ([`listener`]), which
//! [`crate::server::serve`] and tonic's `serve_with_incoming_shutdown` both take.
//!
//! # One crypto provider
//!
//! rustls is built with two cryptography providers in this workspace: aws-lc-rs (rustls' own
//! default, which lapin's and object_store's TLS use) and ring (reqwest 0.12's). With both, a
//! `ServerConfig::builder()` or `ClientConfig::builder()` that does not name its provider
//! panics, unless the process has a default. So every config made here names
//! [`provider`], and [`install_default_provider`] makes the same one the process default at
//! start-up ([`crate::service::run`]) for the other rustls users (amqps, the database's TLS).
//!
//! The provider is aws-lc-rs: rustls' default when only one is built, the one that offers the
//! hybrid post-quantum key exchange (X25519MLKEM768) rustls prefers, and the one with a FIPS
//! build; ring is in the build only because reqwest 0.12 names it for its own clients.

pub mod config;
pub mod listener;

use std::sync::Arc;

pub use config::{CertifiedKeyFiles, PemFile, RELOAD_CHECK, ServerTls, TlsError, http_api};
pub use listener::{Connection, HANDSHAKE_TIMEOUT, Listener};
use rustls::crypto::CryptoProvider;

/// The cryptography every TLS configuration of Hallmark's uses (see the module docs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes [`provider`] the process default for rustls, so that a library that builds its
/// configuration with rustls' defaults does not panic over the choice between two providers.
/// Harmless when a default is installed already (by an earlier call, or by the program).
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        // Another thread may have installed one in between: either way there is a default.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}
