//! Broker settings shared by every service. All services of one deployment must agree on the
//! topology settings (namespace, retry delays, delivery limit): they declare the same queues, and
//! RabbitMQ refuses a redeclaration with different arguments.

use secrecy::{ExposeSecret as _, SecretString};
use settings::ConfigError;
use std::time::Duration;

/// Where the broker is and how the topology is shaped.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// AMQP URI, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`: a secret, it holds the password
    /// (`Debug` does not show it). A `heartbeat` query parameter is added (15 s) when absent so a
    /// dead connection is noticed within seconds. Env: `HALLMARK_AMQP_URL` (required unless
    /// `HALLMARK_ENV` is `development` or `test`, where it defaults to the development broker's
    /// `guest` account on this machine, which RabbitMQ accepts only from loopback).
    pub url: SecretString,
    /// Prefix for every exchange and queue name (`{namespace}.hallmark.orders`). Empty in
    /// production; tests use a unique one each. Env: `HALLMARK_AMQP_NAMESPACE`.
    pub namespace: String,
    /// Back-off before each retry of a message whose processing failed transiently; one retry
    /// queue per entry, so the length is the number of retries. Env: `HALLMARK_RETRY_DELAYS`
    /// (`1s,10s,60s`).
    pub retry_delays: Vec<Duration>,
    /// How many times the broker delivers a message before dead-lettering it on its own: the
    /// backstop for a consumer that crashes on a message before it can decide anything.
    /// Env: `HALLMARK_DELIVERY_LIMIT`.
    pub delivery_limit: u32,
    /// When set, queues expire after this long unused and exchanges auto-delete: for tests, so a
    /// test run leaves nothing behind. Never set in production. Env: `HALLMARK_AMQP_EPHEMERAL`.
    pub ephemeral: Option<Duration>,
    /// Published outbox rows are deleted once this old (they only serve diagnosis by then).
    /// Env: `HALLMARK_OUTBOX_RETENTION` (default `7d`).
    pub outbox_retention: Duration,
    /// Inbox keys are deleted once this old. A key must outlive every redelivery of its message,
    /// so this must be longer than all retry delays together; start-up refuses anything shorter.
    /// Env: `HALLMARK_INBOX_RETENTION` (default `14d`).
    pub inbox_retention: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            namespace: String::new(),
            retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
            delivery_limit: 10,
            ephemeral: None,
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            inbox_retention: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

fn parse_duration(variable: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| ConfigError {
        variable: variable.to_owned(),
        message: format!("`{text}` is not a duration like `500ms` or `10s` ({e})"),
    })
}

impl BrokerConfig {
    /// Defaults overridden by the `HALLMARK_AMQP_*` variables documented on each field.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = Self::default();
        config.url = SecretString::from(settings::credential(
            "HALLMARK_AMQP_URL",
            config.url.expose_secret(),
        )?);
        config.namespace = settings::string("HALLMARK_AMQP_NAMESPACE", &config.namespace);
        if let Some(delays) = settings::optional("HALLMARK_RETRY_DELAYS") {
            config.retry_delays = delays
                .split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| parse_duration("HALLMARK_RETRY_DELAYS", d))
                .collect::<Result<_, _>>()?;
        }
        config.delivery_limit = settings::parse("HALLMARK_DELIVERY_LIMIT", config.delivery_limit)?;
        if let Some(expiry) = settings::optional("HALLMARK_AMQP_EPHEMERAL") {
            config.ephemeral = Some(parse_duration("HALLMARK_AMQP_EPHEMERAL", &expiry)?);
        }
        config.outbox_retention =
            settings::duration("HALLMARK_OUTBOX_RETENTION", config.outbox_retention)?;
        config.inbox_retention =
            settings::duration("HALLMARK_INBOX_RETENTION", config.inbox_retention)?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that would break a guarantee: an inbox that forgets a message's key
    /// before its last retry could apply it twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let longest_retry: Duration = self.retry_delays.iter().sum();
        if self.inbox_retention <= longest_retry {
            return Err(ConfigError {
                variable: "HALLMARK_INBOX_RETENTION".to_owned(),
                message: format!(
                    "{} is not longer than the retries ({}): a redelivered message would be applied again",
                    humantime::format_duration(self.inbox_retention),
                    humantime::format_duration(longest_retry)
                ),
            });
        }
        Ok(())
    }

    /// The URI with a heartbeat, so a dead peer is detected; for connecting only (it exposes
    /// the password).
    pub fn url_with_heartbeat(&self) -> SecretString {
        let url = self.url.expose_secret();
        SecretString::from(if url.contains("heartbeat=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&heartbeat=15")
        } else {
            format!("{url}?heartbeat=15")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_password_never_shows_in_debug_output() {
        let config = BrokerConfig {
            url: SecretString::from("amqp://hallmark:s3cr3t-pw@broker:5672/%2f"),
            ..BrokerConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(
            config
                .url_with_heartbeat()
                .expose_secret()
                .ends_with("?heartbeat=15")
        );
    }

    #[test]
    fn the_defaults_are_valid() {
        BrokerConfig::default().validate().unwrap();
    }

    #[test]
    fn an_inbox_retention_shorter_than_the_retries_is_refused() {
        let config = BrokerConfig {
            retry_delays: vec![Duration::from_secs(60), Duration::from_secs(3600)],
            inbox_retention: Duration::from_secs(3600),
            ..BrokerConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.variable, "HALLMARK_INBOX_RETENTION");
        assert!(err.message.contains("1h 1m"), "{}", err.message);
    }
}
