//! Broker settings shared by every service. All services of one deployment must agree on the
//! topology settings (namespace, retry delays, delivery limit) and on the accounts: they declare
//! the same exchanges and queues, RabbitMQ refuses a redeclaration with different arguments, and
//! a consumer judges who sent a message by the accounts map.

use std::path::PathBuf;

use secrecy::{ExposeSecret as _, SecretString};
use settings::ConfigError;
use std::time::Duration;

use crate::accounts::{self, Accounts, Party};

/// Where the broker is, who this process is on it, and how the topology is shaped.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// AMQP URI with this process's own account, e.g.
    /// `amqps://hallmark-shop:…@broker:5671/%2f`: a secret, it holds the password (`Debug` does
    /// not show it). `amqps://` connects with TLS ([`BrokerConfig::tls`]). A `heartbeat` query
    /// parameter is added (15 s) when absent so a dead connection is noticed within seconds.
    /// Env: `HALLMARK_AMQP_URL` (required unless `HALLMARK_ENV` is `development` or `test`, where
    /// it defaults to the process's development account on this machine's broker, e.g.
    /// `amqp://hallmark-shop:hallmark-shop-local-only@127.0.0.1:5672/%2f`). Its user must be the
    /// process's account in [`BrokerConfig::accounts`]; RabbitMQ's `guest` and the development
    /// passwords are refused outside development.
    pub url: SecretString,
    /// The broker account of each service and of the operator: whose messages a consumer
    /// accepts. Env: `HALLMARK_AMQP_ACCOUNTS` (see [`Accounts`]).
    pub accounts: Accounts,
    /// Certificates for `amqps://`. Env: `HALLMARK_AMQP_CA_FILE`, `HALLMARK_AMQP_CLIENT_CERT`,
    /// `HALLMARK_AMQP_CLIENT_KEY` (see [`TlsFiles`]).
    pub tls: TlsFiles,
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

/// The certificate files of a TLS connection (`amqps://`), all PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate authority that signed the broker's certificate, trusted in addition to
    /// the system's. Env: `HALLMARK_AMQP_CA_FILE` (default: the system's trust store only).
    pub ca_file: Option<PathBuf>,
    /// This process's certificate, for brokers that ask clients for one
    /// (`ssl_options.verify = verify_peer`); with [`TlsFiles::client_key`].
    /// Env: `HALLMARK_AMQP_CLIENT_CERT`.
    pub client_cert: Option<PathBuf>,
    /// The private key of [`TlsFiles::client_cert`] (PKCS#8). Env: `HALLMARK_AMQP_CLIENT_KEY`.
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// From `HALLMARK_AMQP_CA_FILE`, `HALLMARK_AMQP_CLIENT_CERT` and `HALLMARK_AMQP_CLIENT_KEY`;
    /// a certificate without its key (or the reverse) is refused.
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = |variable: &str| settings::optional(variable).map(PathBuf::from);
        let files = Self {
            ca_file: path("HALLMARK_AMQP_CA_FILE"),
            client_cert: path("HALLMARK_AMQP_CLIENT_CERT"),
            client_key: path("HALLMARK_AMQP_CLIENT_KEY"),
        };
        match (&files.client_cert, &files.client_key) {
            (Some(_), None) => Err(ConfigError {
                variable: "HALLMARK_AMQP_CLIENT_KEY".to_owned(),
                message: "must be set with HALLMARK_AMQP_CLIENT_CERT (the certificate's key)"
                    .to_owned(),
            }),
            (None, Some(_)) => Err(ConfigError {
                variable: "HALLMARK_AMQP_CLIENT_CERT".to_owned(),
                message: "must be set with HALLMARK_AMQP_CLIENT_KEY (the key's certificate)"
                    .to_owned(),
            }),
            _ => Ok(files),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from(Party::Operator.development_url()),
            accounts: Accounts::default(),
            tls: TlsFiles::default(),
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
    /// Defaults overridden by the `HALLMARK_AMQP_*` variables documented on each field, for
    /// `party` (whose account the URL must name).
    pub fn from_env(party: Party) -> Result<Self, ConfigError> {
        let mut config = Self::shared_from_env()?;
        config.url = SecretString::from(settings::credential(
            "HALLMARK_AMQP_URL",
            &party.development_url(),
        )?);
        accounts::check(
            party,
            config.url.expose_secret(),
            &config.accounts,
            settings::development(),
        )?;
        config.tls = TlsFiles::from_env()?;
        Ok(config)
    }

    /// The settings every party of a deployment shares (accounts map, namespace, retries, …),
    /// without a connection of its own: the default URL and no TLS files.
    pub fn shared_from_env() -> Result<Self, ConfigError> {
        let mut config = Self::default();
        config.accounts = Accounts::from_env()?;
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

    /// The user this configuration connects as (the AMQP `user-id` of what it publishes);
    /// `None` when the URL does not read.
    pub fn user(&self) -> Option<String> {
        accounts::credentials_of(self.url.expose_secret())
            .ok()
            .map(|(user, _)| user)
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
