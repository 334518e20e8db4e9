//! A unique broker namespace per test.

use std::time::Duration;

use messaging::BrokerConfig;
use uuid::Uuid;

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("HALLMARK_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Broker settings with a namespace of their own: every exchange and queue of the test is
/// prefixed with it, so tests run in parallel on one broker. Retries are quick (100 ms, 200 ms)
/// and everything expires ten minutes after the test stops using it.
pub fn isolated() -> BrokerConfig {
    BrokerConfig {
        url: amqp_url(),
        namespace: format!("t{}", &Uuid::new_v4().simple().to_string()[..12]),
        retry_delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
        delivery_limit: 5,
        ephemeral: Some(Duration::from_secs(600)),
        ..BrokerConfig::default()
    }
}

/// The same settings as environment variables, for a service started as a process.
pub fn env(config: &BrokerConfig) -> Vec<(String, String)> {
    vec![
        ("HALLMARK_AMQP_URL".into(), config.url.clone()),
        ("HALLMARK_AMQP_NAMESPACE".into(), config.namespace.clone()),
        (
            "HALLMARK_RETRY_DELAYS".into(),
            config
                .retry_delays
                .iter()
                .map(|d| format!("{}ms", d.as_millis()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "HALLMARK_DELIVERY_LIMIT".into(),
            config.delivery_limit.to_string(),
        ),
        (
            "HALLMARK_AMQP_EPHEMERAL".into(),
            config
                .ephemeral
                .map(|d| format!("{}s", d.as_secs()))
                .unwrap_or_default(),
        ),
    ]
}
