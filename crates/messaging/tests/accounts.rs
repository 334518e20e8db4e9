//! What the broker itself refuses each account, with the permissions `scripts/broker.sh` gives
//! the development accounts (`messaging::permissions`). Topic permissions name exchanges
//! exactly, so the tests of routing and binding keys use the exchanges of the namespace
//! `acl-test`, which carry them like the un-namespaced ones; nothing consumes there.

use chrono::Utc;
use domain::System;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use messaging::publisher::{Outgoing, PublishError, Publisher};
use messaging::topology::{Names, reply_code};
use messaging::{Broker, BrokerConfig, Party};
use uuid::Uuid;

const SHOP: Party = Party::Service(System::Shop);
const CRM: Party = Party::Service(System::Crm);
const MES: Party = Party::Service(System::Mes);

/// The `acl-test` namespace, its exchanges declared as the services declare them.
async fn acl_namespace() -> BrokerConfig {
    testkit::broker::require_accounts().await;
    let config = BrokerConfig {
        namespace: testkit::broker::ACL_NAMESPACE.to_owned(),
        ephemeral: None,
        ..testkit::broker::isolated()
    };
    let admin = Broker::operator(config.clone(), "acl-test");
    let channel = admin.channel().await.unwrap();
    let names = admin.names();
    for exchange in [
        names.orders_exchange(),
        names.dead_letter_exchange(),
        names.requeue_exchange(),
        names.retry_exchange(),
    ] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    admin.close().await;
    config
}

/// Publishes as `party` to `exchange` (a concrete name) with `routing_key`: `Ok` when the
/// broker took it (routed or not), else the reply code it closed the channel with.
async fn publish(
    config: &BrokerConfig,
    party: Party,
    exchange: &str,
    routing_key: &str,
) -> Result<(), u16> {
    let broker = testkit::broker::connect_as(config, party);
    let publisher = Publisher::open(&broker).await.unwrap();
    let result = publisher
        .publish(
            exchange,
            routing_key,
            Outgoing {
                message_id: Uuid::now_v7(),
                kind: "order.status_changed",
                body: b"{}",
                headers: FieldTable::default(),
                occurred_at: Utc::now(),
            },
        )
        .await;
    broker.close().await;
    match result {
        Ok(()) | Err(PublishError::Unroutable { .. }) => Ok(()),
        Err(PublishError::Broker(err)) => Err(reply_code(&err).unwrap_or_else(|| panic!("{err}"))),
        Err(err) => panic!("{err}"),
    }
}

/// Binds `queue` to `exchange` with `key` on a fresh channel of `broker`: `Ok`, or the reply
/// code the broker refused it with.
async fn bind(broker: &Broker, queue: &str, exchange: &str, key: &str) -> Result<(), u16> {
    let channel = broker.channel().await.unwrap();
    let result = channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, "bound".into()).await;
    result.map_err(|err| reply_code(&err).unwrap_or_else(|| panic!("{err}")))
}

async fn get(broker: &Broker, queue: &str) -> Result<(), u16> {
    let channel: Channel = broker.channel().await.unwrap();
    let result = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await;
    let _ = channel.close(200, "read".into()).await;
    result
        .map(|_| ())
        .map_err(|err| reply_code(&err).unwrap_or_else(|| panic!("{err}")))
}

const REFUSED: Result<(), u16> = Err(403);

#[tokio::test]
async fn a_service_account_can_publish_only_the_routing_keys_it_owns() {
    let config = acl_namespace().await;
    let orders = Names::new(&config.namespace).orders_exchange();
    let cases = [
        (SHOP, "order.created", true),
        (SHOP, "order.status_changed.confirmed", true),
        (SHOP, "order.status_changed.priced", false),
        (CRM, "order.pricing_requested", true),
        (CRM, "order.status_changed.priced", false),
        (CRM, "order.created", false),
        (MES, "order.status_changed.priced", true),
        (MES, "order.created", false),
        (MES, "order.status_changed.shipped", false),
        (Party::Operator, "order.status_changed.priced", false),
    ];
    for (party, key, allowed) in cases {
        let result = publish(&config, party, &orders, key).await;
        let expected = if allowed { Ok(()) } else { REFUSED };
        assert_eq!(result, expected, "{party} publishing {key}");
    }
}

#[tokio::test]
async fn mes_cannot_bind_a_queue_to_the_new_orders_that_carry_personal_data() {
    let config = acl_namespace().await;
    let names = Names::new(&config.namespace);
    let mes = testkit::broker::connect_as(&config, MES);
    // A queue MES may declare (one of its own names, in a namespace of its own).
    let queue = format!(
        "t{}.mes.pricing",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let channel = mes.channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("MES declares a queue of its own");
    let orders = names.orders_exchange();
    for key in ["order.created", "#", "order.#", "order.*", "*.created"] {
        assert_eq!(bind(&mes, &queue, &orders, key).await, REFUSED, "{key}");
    }
    assert_eq!(
        bind(&mes, &queue, &orders, "order.pricing_requested").await,
        Ok(()),
        "what MES needs"
    );
    // Nor another service's dead letters or retries.
    let crm = names.queue("crm.orders");
    let dlx = names.dead_letter_exchange();
    assert_eq!(bind(&mes, &queue, &dlx, &crm).await, REFUSED);
    assert_eq!(bind(&mes, &queue, &dlx, "#").await, REFUSED);
    let retry = names.retry_exchange();
    assert_eq!(
        bind(&mes, &queue, &retry, &names.retry_key(0, &crm)).await,
        REFUSED
    );
    let requeue = names.requeue_exchange();
    assert_eq!(
        bind(&mes, &queue, &requeue, &names.requeue_key("*", &crm)).await,
        REFUSED
    );
    let own = names.queue("mes.pricing");
    assert_eq!(bind(&mes, &queue, &dlx, &own).await, Ok(()));
    let _ = channel.close(200, "done".into()).await;
    mes.close().await;
}

#[tokio::test]
async fn a_service_cannot_put_messages_into_another_services_dead_letters_retries_or_queue() {
    let config = acl_namespace().await;
    let names = Names::new(&config.namespace);
    let crm = names.queue("crm.orders");
    let into = [
        (names.dead_letter_exchange(), crm.clone()),
        (names.retry_exchange(), names.retry_key(0, &crm)),
        (names.requeue_exchange(), names.requeue_key("replay", &crm)),
    ];
    for (exchange, key) in &into {
        assert_eq!(
            publish(&config, SHOP, exchange, key).await,
            REFUSED,
            "{exchange} {key}"
        );
    }
    let shop = names.queue("shop.status");
    assert_eq!(
        publish(&config, SHOP, &names.dead_letter_exchange(), &shop).await,
        Ok(()),
        "its own dead letters"
    );
    assert_eq!(
        publish(
            &config,
            Party::Operator,
            &names.requeue_exchange(),
            &names.requeue_key("replay", &crm)
        )
        .await,
        Ok(()),
        "the operator replays"
    );
}

#[tokio::test]
async fn a_service_reads_only_its_own_queues_and_only_the_operator_reads_dead_letters() {
    testkit::broker::require_accounts().await;
    let config = testkit::broker::isolated();
    let _cleanup = testkit::broker::cleanup_on_drop(&config);
    let admin = Broker::new(config.clone(), "acl-test");
    admin.channel().await.unwrap();
    let names = admin.names();
    let as_party = |party| testkit::broker::connect_as(&config, party);
    let cases = [
        (MES, names.queue("crm.orders"), false),
        (SHOP, names.queue("mes.pricing"), false),
        (MES, names.retry_queue(System::Crm, 0), false),
        (CRM, names.dead_letter_queue("crm.orders"), false),
        (Party::Operator, names.queue("crm.orders"), false),
        (CRM, names.queue("crm.orders"), true),
        (MES, names.retry_queue(System::Mes, 0), true),
        (Party::Operator, names.dead_letter_queue("crm.orders"), true),
    ];
    for (party, queue, allowed) in cases {
        let expected = if allowed { Ok(()) } else { REFUSED };
        assert_eq!(
            get(&as_party(party), &queue).await,
            expected,
            "{party} reading {queue}"
        );
    }
}

#[tokio::test]
async fn the_broker_refuses_a_message_whose_user_id_is_not_the_account_that_sends_it() {
    testkit::broker::require_accounts().await;
    let config = testkit::broker::isolated();
    let _cleanup = testkit::broker::cleanup_on_drop(&config);
    Broker::new(config.clone(), "acl-test")
        .channel()
        .await
        .unwrap();
    let shop = testkit::broker::connect_as(&config, SHOP);
    let channel = shop.channel().await.unwrap();
    let sent = channel
        .basic_publish(
            shop.names().orders_exchange().as_str().into(),
            "order.status_changed.priced".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_user_id(ShortString::from("hallmark-mes")),
        )
        .await;
    // The broker answers by closing the channel; the next call on it tells.
    let next = match sent {
        Err(err) => Err(err),
        Ok(_) => channel
            .queue_declare(
                shop.names().queue("shop.status").as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|_| ()),
    };
    let err = next.expect_err("the channel is closed");
    assert_eq!(reply_code(&err), Some(406), "{err}");
    assert!(err.to_string().contains("user_id"), "{err}");
}
