//! A unique broker namespace per test, and the accounts the services use on it.

use secrecy::{ExposeSecret as _, SecretString};
use std::time::Duration;

use lapin::uri::AMQPUri;
use messaging::topology::Scope;
use messaging::{Broker, BrokerConfig, Party};
use uuid::Uuid;

/// The broker tests use, with an administrator's account (RabbitMQ's `guest` on a development
/// broker): tests declare and delete their namespaces with it. The services and the operator
/// connect with their own accounts ([`as_party`]).
pub fn amqp_url() -> String {
    std::env::var("HALLMARK_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The namespace whose exchanges carry the development accounts' topic permissions
/// (`scripts/broker.sh` gives them, as for the un-namespaced exchanges): tests of what the
/// broker refuses use it. Nothing consumes there, so nothing a test publishes is delivered to
/// a service.
pub const ACL_NAMESPACE: &str = "acl-test";

/// The same settings as `party`, with its development account (`scripts/broker.sh` creates
/// them) on the same broker as `config`.
pub fn as_party(config: &BrokerConfig, party: Party) -> BrokerConfig {
    let (user, password) = party.development_account();
    with_credentials(config, user, password)
}

/// The same settings with another user and password, e.g. RabbitMQ's `guest` or a stranger.
pub fn with_credentials(config: &BrokerConfig, user: &str, password: &str) -> BrokerConfig {
    let mut uri: AMQPUri = config
        .url
        .expose_secret()
        .parse()
        .expect("the test broker's URL is an AMQP URI");
    uri.authority.userinfo.username = user.to_owned();
    uri.authority.userinfo.password = password.to_owned();
    BrokerConfig {
        url: SecretString::from(uri.to_string()),
        ..config.clone()
    }
}

/// Declares the whole topology of `config`'s namespace with `config`'s (an administrator's)
/// account. A service declares only its own queues, so a test that runs fewer than all of them
/// declares the rest first, or what its service publishes has nowhere to go.
pub async fn declare_everything(config: &BrokerConfig) {
    let broker = Broker::new(config.clone(), "test-topology");
    broker
        .channel()
        .await
        .expect("the test's administrator declares the topology");
    broker.close().await;
}

/// A connection as `party` (its development account) that declares nothing: for a test that
/// publishes or reads as a service or the operator on a topology already declared.
pub fn connect_as(config: &BrokerConfig, party: Party) -> Broker {
    Broker::with_scope(
        as_party(config, party),
        format!("test as {party}"),
        Scope::Nothing,
    )
}

/// Publishes `envelope` on the orders exchange through `broker`, whose account the broker puts
/// in the user-id, with extra `headers`; returns once the broker confirmed it.
pub async fn send(
    broker: &Broker,
    envelope: &domain::events::Envelope,
    headers: lapin::types::FieldTable,
) -> Result<(), messaging::publisher::PublishError> {
    use messaging::publisher::{Outgoing, Publisher};
    let publisher = Publisher::open(broker).await?;
    publisher
        .publish(
            &broker.names().orders_exchange(),
            &envelope.routing_key(),
            Outgoing {
                message_id: envelope.message_id,
                kind: &envelope.kind,
                body: &envelope.to_vec(),
                headers,
                occurred_at: envelope.occurred_at,
            },
        )
        .await
}

/// [`send`] as `party`, closing the connection afterwards.
pub async fn send_as(
    config: &BrokerConfig,
    party: Party,
    envelope: &domain::events::Envelope,
    headers: lapin::types::FieldTable,
) -> Result<(), messaging::publisher::PublishError> {
    let broker = connect_as(config, party);
    let sent = send(&broker, envelope, headers).await;
    broker.close().await;
    sent
}

/// Publishes `envelope` with `config`'s account and no user-id at all, as a client of its own
/// would: the mandatory publish must be routed and confirmed.
pub async fn send_without_user_id(config: &BrokerConfig, envelope: &domain::events::Envelope) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::ShortString;
    let connection = lapin::Connection::connect(config.url.expose_secret(), Default::default())
        .await
        .expect("the broker accepts the connection");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("publisher confirms");
    let exchange = messaging::topology::Names::new(&config.namespace).orders_exchange();
    let confirmation = channel
        .basic_publish(
            exchange.as_str().into(),
            envelope.routing_key().as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &envelope.to_vec(),
            lapin::BasicProperties::default()
                .with_message_id(ShortString::from(envelope.message_id.to_string()))
                .with_type(ShortString::from(envelope.kind.as_str())),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    assert_eq!(
        confirmation,
        lapin::Confirmation::Ack(None),
        "the message was routed"
    );
    let _ = connection.close(200, "sent".into()).await;
}

/// Panics, saying how to make them, unless every development account can log in.
pub async fn require_accounts() {
    let admin = isolated();
    for party in Party::ALL {
        let config = as_party(&admin, party);
        let connected =
            lapin::Connection::connect(config.url.expose_secret(), Default::default()).await;
        match connected {
            Ok(connection) => {
                let _ = connection.close(200, "account checked".into()).await;
            }
            Err(err) => panic!(
                "the development broker account `{}` cannot log in ({err}): create the accounts \
                 with `source scripts/deps.sh && ensure_broker_accounts target/debug/hallmark` \
                 after building (scripts/test does)",
                party.development_account().0
            ),
        }
    }
}

/// Broker settings with a namespace of their own: every exchange and queue of the test is
/// prefixed with it, so tests run in parallel on one broker. Retries are quick (100 ms, 200 ms)
/// and everything expires ten minutes after the test stops using it. The account is the
/// administrator's ([`amqp_url`]).
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
    let names = &names;
    let retries: Vec<String> = domain::System::ALL
        .into_iter()
        .flat_map(|system| {
            (0..config.retry_delays.len()).map(move |level| names.retry_queue(system, level))
        })
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
    for exchange in [
        names.orders_exchange(),
        names.dead_letter_exchange(),
        names.requeue_exchange(),
        names.retry_exchange(),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "test namespace deleted".into()).await;
}
