//! One AMQP connection per process, reopened on demand, and the back-off every loop uses.

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use secrecy::ExposeSecret as _;
use std::sync::Arc;
use std::time::Duration;

use domain::System;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Channel, Connection, ConnectionProperties};
use platform::server::CLOSE_TIMEOUT;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, TlsFiles};
use crate::topology::{self, Names, Scope};

/// Shared handle to the broker. Components ask it for channels; when the connection has died it
/// connects again, so each component only has to retry its own loop.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: BrokerConfig,
    names: Names,
    scope: Scope,
    /// The account this connects as: the `user-id` of every message it publishes.
    user: Option<String>,
    connection_name: String,
    connection: Mutex<Option<Connection>>,
}

impl Broker {
    /// A connection that declares the whole topology (`Scope::Everything`): for tests and tools
    /// with an administrator's account. `connection_name` shows in the broker's management UI,
    /// e.g. `shop-api`; under a namespace it is followed by the namespace in brackets, so the
    /// connections of one namespace can be told apart (and cut by fault-injection tests).
    pub fn new(config: BrokerConfig, connection_name: impl Into<String>) -> Self {
        Self::with_scope(config, connection_name, Scope::Everything)
    }

    /// `system`'s connection, named after it: it declares the shared exchanges and its own
    /// queues (`Scope::Service`), which is what its account may do.
    pub fn service(config: BrokerConfig, system: System) -> Self {
        Self::with_scope(config, system.service_name(), Scope::Service(system))
    }

    /// The operator's connection: it declares nothing and works on what the services declared.
    pub fn operator(config: BrokerConfig, connection_name: impl Into<String>) -> Self {
        Self::with_scope(config, connection_name, Scope::Nothing)
    }

    pub fn with_scope(
        config: BrokerConfig,
        connection_name: impl Into<String>,
        scope: Scope,
    ) -> Self {
        let names = Names::new(&config.namespace);
        let connection_name = match config.namespace.as_str() {
            "" => connection_name.into(),
            namespace => format!("{} [{namespace}]", connection_name.into()),
        };
        let user = config.user();
        Self {
            inner: Arc::new(Inner {
                config,
                names,
                scope,
                user,
                connection_name,
                connection: Mutex::new(None),
            }),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The account this connects as, which the broker checks as the `user-id` of every message
    /// it publishes.
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// A new channel on the live connection. When there is none it connects and declares its
    /// topology ([`Scope`]) first, so every channel handed out can publish and consume, also after
    /// the broker lost its state.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        let mut guard = self.inner.connection.lock().await;
        if let Some(connection) = guard.as_ref()
            && connection.status().connected()
        {
            match connection.create_channel().await {
                Ok(channel) => return Ok(channel),
                Err(err) => tracing::warn!(error = %err, "amqp channel open failed, reconnecting"),
            }
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(self.inner.connection_name.clone().into());
        let connection = Connection::connect_with_config(
            self.inner.config.url_with_heartbeat().expose_secret(),
            properties,
            tls_config(&self.inner.config.tls)?,
            lapin::runtime::default_runtime()?,
        )
        .await?;
        topology::declare(&connection, &self.inner.config, self.inner.scope).await?;
        tracing::info!(connection = %self.inner.connection_name, user = self.user().unwrap_or_default(), "amqp connected, topology declared");
        let channel = connection.create_channel().await?;
        *guard = Some(connection);
        Ok(channel)
    }

    /// Connects (declaring the topology), retrying with back-off until it works or `cancel`
    /// fires; `false` when cancelled.
    pub async fn connect_with_retry(&self, cancel: &CancellationToken) -> bool {
        let mut backoff = Backoff::default();
        loop {
            match self.channel().await {
                Ok(channel) => {
                    let _ = channel.close(200, "connected".into()).await;
                    return true;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "amqp broker unreachable, retrying");
                    if !backoff.wait(cancel).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Closes the connection (pending publishes are already confirmed or failed by then),
    /// waiting at most [`CLOSE_TIMEOUT`] for the connection and the broker's answer; after that
    /// the connection is dropped as it is, so shutdown never hangs on the broker.
    pub async fn close(&self) {
        let close = async {
            if let Some(connection) = self.inner.connection.lock().await.take() {
                let _ = connection.close(200, "shutting down".into()).await;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::warn!(
                connection = %self.inner.connection_name,
                timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                "amqp connection not closed in time, dropped"
            );
        }
    }
}

/// The certificates of a TLS connection, read afresh at each connection (so renewed files are
/// picked up when the connection is next made). Used only for `amqps://` URIs.
fn tls_config(files: &TlsFiles) -> lapin::Result<OwnedTLSConfig> {
    let read = |variable: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|err| {
            lapin::Error::from(std::io::Error::new(
                err.kind(),
                format!("cannot read {variable} {}: {err}", path.display()),
            ))
        })
    };
    let cert_chain = match &files.ca_file {
        Some(path) => Some(
            String::from_utf8(read("HALLMARK_AMQP_CA_FILE", path)?).map_err(|_| {
                lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("HALLMARK_AMQP_CA_FILE {} is not PEM text", path.display()),
                ))
            })?,
        ),
        None => None,
    };
    let identity = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("HALLMARK_AMQP_CLIENT_CERT", cert)?,
            key: read("HALLMARK_AMQP_CLIENT_KEY", key)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// How reconnecting to the broker and restarting a consumer or relay wait between attempts:
/// from 50 ms doubling up to 5 s, each delay with up to as much again of jitter (so 50–100 ms
/// first, 5–10 s at most), for ever. The one back-off type of the code base is `backon`'s.
pub const RECONNECT: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(Duration::from_secs(5))
    .with_jitter()
    .without_max_times();

/// A back-off in progress: the delays of a policy, started again by [`Backoff::reset`].
#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(RECONNECT)
    }
}

impl Backoff {
    pub fn new(policy: ExponentialBuilder) -> Self {
        Self {
            policy,
            delays: policy.build(),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(Duration::from_secs(10))
    }

    pub fn reset(&mut self) {
        self.delays = self.policy.build();
    }

    /// Sleeps for the next delay; `false` when cancelled first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_back_off_doubles_up_to_its_ceiling_with_jitter_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays
            .iter()
            .zip([50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000])
        {
            let ms = delay.as_millis();
            assert!(ms >= base && ms <= 2 * base, "{ms} ms against {base} ms");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
