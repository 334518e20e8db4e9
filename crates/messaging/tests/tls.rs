//! `amqps://` against the development broker's TLS listener (`scripts/broker.sh`,
//! `ensure_broker_tls`), whose certificates are in `HALLMARK_TEST_AMQP_TLS_DIR`: trusting the
//! broker's CA connects, with or without a client certificate; trusting another CA is refused,
//! saying why.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use domain::System;
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use lapin::uri::{AMQPScheme, AMQPUri};
use messaging::config::TlsFiles;
use messaging::publisher::{Outgoing, Publisher};
use messaging::topology::Scope;
use messaging::{Broker, BrokerConfig, Party};
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

const CRM: Party = Party::Service(System::Crm);

/// The directory of the broker's TLS files; fails, saying how to make them, when unset.
fn tls_dir() -> PathBuf {
    let dir = std::env::var("HALLMARK_TEST_AMQP_TLS_DIR").unwrap_or_else(|_| {
        panic!(
            "HALLMARK_TEST_AMQP_TLS_DIR is not set: it names the development broker's TLS files \
             (scripts/test sets it after `ensure_broker_tls` in scripts/broker.sh)"
        )
    });
    PathBuf::from(dir)
}

/// `config` as `party` over TLS to the listener on localhost:5671, with `tls`.
fn over_tls(config: &BrokerConfig, party: Party, tls: TlsFiles) -> BrokerConfig {
    let plain = testkit::broker::as_party(config, party);
    let mut uri: AMQPUri = plain.url.expose_secret().parse().unwrap();
    uri.scheme = AMQPScheme::AMQPS;
    uri.authority.host = "localhost".into();
    uri.authority.port = 5671;
    BrokerConfig {
        url: SecretString::from(uri.to_string()),
        tls,
        ..plain
    }
}

fn trusting(file: &str) -> TlsFiles {
    TlsFiles {
        ca_file: Some(tls_dir().join(file)),
        ..TlsFiles::default()
    }
}

async fn roundtrip(config: &BrokerConfig, admin: &Broker) {
    let broker = Broker::with_scope(config.clone(), "tls-test", Scope::Nothing);
    let publisher = Publisher::open(&broker).await.expect("connected over TLS");
    let id = Uuid::now_v7();
    publisher
        .publish(
            &broker.names().orders_exchange(),
            "order.status_changed.registered",
            Outgoing {
                message_id: id,
                kind: "order.status_changed",
                body: b"{}",
                headers: FieldTable::default(),
                occurred_at: Utc::now(),
            },
        )
        .await
        .unwrap();
    broker.close().await;
    let channel = admin.channel().await.unwrap();
    let queue = admin.names().queue("crm.orders");
    let message = testkit::wait::until("the message", Duration::from_secs(10), || async {
        channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    })
    .await;
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|m| m.to_string()),
        Some(id.to_string())
    );
    assert_eq!(
        properties.user_id().as_ref().map(|u| u.as_str()),
        Some("hallmark-crm")
    );
}

#[tokio::test]
async fn amqps_trusting_the_brokers_ca_connects_with_or_without_a_client_certificate() {
    testkit::broker::require_accounts().await;
    let admin_config = testkit::broker::isolated();
    let _cleanup = testkit::broker::cleanup_on_drop(&admin_config);
    let admin = Broker::new(admin_config.clone(), "tls-test");
    admin.channel().await.unwrap();

    roundtrip(&over_tls(&admin_config, CRM, trusting("ca.pem")), &admin).await;
    let with_certificate = TlsFiles {
        client_cert: Some(tls_dir().join("client.pem")),
        client_key: Some(tls_dir().join("client.key")),
        ..trusting("ca.pem")
    };
    roundtrip(&over_tls(&admin_config, CRM, with_certificate), &admin).await;
}

#[tokio::test]
async fn amqps_trusting_another_ca_is_refused_saying_the_certificate_is_not_trusted() {
    let config = over_tls(&testkit::broker::isolated(), CRM, trusting("other-ca.pem"));
    let broker = Broker::with_scope(config, "tls-test", Scope::Nothing);
    let err = broker
        .channel()
        .await
        .expect_err("a broker whose certificate no trusted CA signed");
    let text = format!("{err}");
    assert!(
        text.contains("certificate") && text.contains("UnknownIssuer"),
        "{text}"
    );

    let missing = over_tls(
        &testkit::broker::isolated(),
        CRM,
        trusting("no-such-ca.pem"),
    );
    let err = Broker::with_scope(missing, "tls-test", Scope::Nothing)
        .channel()
        .await
        .expect_err("a CA file that is not there");
    assert!(
        err.to_string()
            .contains("cannot read HALLMARK_AMQP_CA_FILE"),
        "{err}"
    );
}
