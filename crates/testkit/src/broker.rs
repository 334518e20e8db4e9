//! A unique broker namespace per test.

use secrecy::ExposeSecret as _;
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
        url: amqp_url().into(),
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
        (
            "HALLMARK_AMQP_URL".into(),
            config.url.expose_secret().to_owned(),
        ),
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

/// Deletes a namespace's queues and exchanges when dropped. Left to expire, the queues of a
/// whole test run would go at once ten minutes later, and a small broker deleting a hundred
/// quorum queues together stops answering for minutes; deleted by each test as it ends, they
/// go a few at a time. Expiry stays as the fallback for a test that crashed.
pub struct Cleanup {
    config: BrokerConfig,
}

/// A [`Cleanup`] for `config`'s namespace; keep it alive as long as the test uses the broker.
pub fn cleanup_on_drop(config: &BrokerConfig) -> Cleanup {
    Cleanup {
        config: config.clone(),
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Dropping runs outside any async context a test may be tearing down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(delete_namespace(&config));
        })
        .join();
    }
}

async fn delete_namespace(config: &BrokerConfig) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    use messaging::topology::{Names, QUEUES};

    let Ok(connection) = lapin::Connection::connect(
        config.url.expose_secret(),
        lapin::ConnectionProperties::default(),
    )
    .await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let names = Names::new(&config.namespace);
    let retries: Vec<String> = (0..config.retry_delays.len())
        .map(|level| names.retry(level))
        .collect();
    let queues = QUEUES
        .iter()
        .flat_map(|spec| [names.queue(spec.name), names.dead_letter_queue(spec.name)])
        .chain(retries.iter().cloned());
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let exchanges = [
        names.orders_exchange(),
        names.dead_letter_exchange(),
        names.requeue_exchange(),
    ]
    .into_iter()
    .chain(retries);
    for exchange in exchanges {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "test namespace deleted".into()).await;
}
