//! One AMQP connection per process, reopened on demand, and the back-off every loop uses.

use secrecy::ExposeSecret as _;
use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use platform::server::CLOSE_TIMEOUT;
use rand::Rng;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::topology::{self, Names};

/// Shared handle to the broker. Components ask it for channels; when the connection has died it
/// connects again, so each component only has to retry its own loop.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: BrokerConfig,
    names: Names,
    connection_name: String,
    connection: Mutex<Option<Connection>>,
}

impl Broker {
    /// `connection_name` shows in the broker's management UI, e.g. `shop-api`; under a
    /// namespace it is followed by the namespace in brackets, so the connections of one
    /// namespace can be told apart (and cut by fault-injection tests).
    pub fn new(config: BrokerConfig, connection_name: impl Into<String>) -> Self {
        let names = Names::new(&config.namespace);
        let connection_name = match config.namespace.as_str() {
            "" => connection_name.into(),
            namespace => format!("{} [{namespace}]", connection_name.into()),
        };
        Self {
            inner: Arc::new(Inner {
                config,
                names,
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

    /// A new channel on the live connection. When there is none it connects and declares the
    /// whole topology first, so every channel handed out can publish and consume, also after the
    /// broker lost its state.
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
        let connection = Connection::connect(
            self.inner.config.url_with_heartbeat().expose_secret(),
            properties,
        )
        .await?;
        let setup = connection.create_channel().await?;
        topology::declare(&setup, &self.inner.config).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        tracing::info!(connection = %self.inner.connection_name, "amqp connected, topology declared");
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

/// Exponential back-off with full jitter, from 100 ms up to 10 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The next delay (random in `[delay/2, delay]`), doubling the delay for the time after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    pub fn reset(&mut self) {
        self.next = self.min;
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
    fn backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, ceiling) in delays.iter().zip([100, 200, 400, 800, 800, 800]) {
            assert!(delay.as_millis() <= ceiling && delay.as_millis() >= ceiling / 2);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
