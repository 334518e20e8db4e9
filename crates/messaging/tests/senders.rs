//! Who may send what: a consumer applies a message only when the broker says it comes from the
//! message's owner, against the real broker and database. Here CRM consumes `crm.orders` and
//! MES's `priced` is the message others try to forge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use domain::events::{Envelope, Event, StatusChanged};
use domain::{OrderStatus, System};
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use messaging::consumer::{self, ConsumerConfig};
use messaging::dead_letters::{self, Selection};
use messaging::publisher::{header_i64, header_str};
use messaging::topology::CRM_ORDERS;
use messaging::{Broker, BrokerConfig, Handler, HandlerError, Incoming, Party};
use sqlx::{PgConnection, PgPool};
use testkit::database::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SHOP: Party = Party::Service(System::Shop);
const CRM: Party = Party::Service(System::Crm);
const MES: Party = Party::Service(System::Mes);

struct Setup {
    config: BrokerConfig,
    pool: PgPool,
    /// The administrator: reads any queue.
    admin: Broker,
    recorder: Arc<Recorder>,
    cancel: CancellationToken,
    _db: TestDatabase,
    _cleanup: testkit::broker::Cleanup,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// CRM consuming `crm.orders` with a handler that records what it applies and fails the first
/// `failures` attempts.
async fn setup(failures: u32) -> Setup {
    testkit::broker::require_accounts().await;
    let db = TestDatabase::create("senders").await;
    let pool = db.connect().await;
    messaging::install_schema(&pool).await.unwrap();
    sqlx::query("CREATE TABLE applied (message_id UUID NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let config = testkit::broker::isolated();
    let cleanup = testkit::broker::cleanup_on_drop(&config);
    let admin = Broker::new(config.clone(), "senders-test");
    admin.channel().await.unwrap();
    let recorder = Arc::new(Recorder {
        failures,
        calls: AtomicU32::new(0),
        dead_letters: AtomicU32::new(0),
    });
    let cancel = CancellationToken::new();
    let crm = Broker::service(testkit::broker::as_party(&config, CRM), System::Crm);
    tokio::spawn(consumer::run(
        pool.clone(),
        crm,
        recorder.clone(),
        ConsumerConfig {
            queue: CRM_ORDERS,
            concurrency: 1,
        },
        cancel.clone(),
    ));
    Setup {
        config,
        pool,
        admin,
        recorder,
        cancel,
        _db: db,
        _cleanup: cleanup,
    }
}

struct Recorder {
    failures: u32,
    calls: AtomicU32,
    dead_letters: AtomicU32,
}

impl Handler for Recorder {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(HandlerError::transient("flaky", "the test says no"));
        }
        sqlx::query("INSERT INTO applied (message_id) VALUES ($1)")
            .bind(message.envelope.message_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn on_dead_letter(
        &self,
        _: &mut PgConnection,
        _: &Incoming,
        _: &str,
        _: &str,
    ) -> Result<(), sqlx::Error> {
        self.dead_letters.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// MES's announcement that an order is priced.
fn priced() -> Envelope {
    let order_id = Uuid::now_v7();
    Envelope::new(
        order_id,
        StatusChanged::idempotency_key(order_id, OrderStatus::Priced),
        "mes-api",
        Utc::now(),
        Event::StatusChanged(StatusChanged {
            from: OrderStatus::Pricing,
            to: OrderStatus::Priced,
            reason: None,
            price: None,
        }),
    )
}

/// Publishes `envelope` as `party` (its account, which the broker puts in the user-id), with
/// extra `headers`.
async fn send_as(setup: &Setup, party: Party, envelope: &Envelope, headers: FieldTable) {
    testkit::broker::send_as(&setup.config, party, envelope, headers)
        .await
        .unwrap();
}

async fn send(broker: &Broker, envelope: &Envelope, headers: FieldTable) {
    testkit::broker::send(broker, envelope, headers)
        .await
        .unwrap();
}

fn claims_to_be_mes() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-original-user-id".into(),
        AMQPValue::LongString(LongString::from("hallmark-mes")),
    );
    headers
}

/// The dead letters of `crm.orders` as they arrive, taken off the queue, until `count`.
async fn dead_letters(setup: &Setup, count: usize) -> Vec<lapin::message::BasicGetMessage> {
    let channel = setup.admin.channel().await.unwrap();
    let queue = setup.admin.names().dead_letter_queue("crm.orders");
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while letters.len() < count {
        match channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => letters.push(message),
            None if tokio::time::Instant::now() > deadline => {
                panic!("{} of {count} dead letters", letters.len())
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    letters
}

async fn applied(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT message_id FROM applied")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn inbox(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messaging.inbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn header(letter: &lapin::message::BasicGetMessage, key: &str) -> Option<String> {
    let headers = letter
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    header_str(&headers, key).map(str::to_owned)
}

#[tokio::test]
async fn a_message_sent_by_anyone_but_its_owner_is_dead_lettered_as_forged_and_never_applied() {
    let setup = setup(0).await;
    // Shop's and CRM's accounts, RabbitMQ's guest, and no user-id at all, each claiming
    // MES's word; one of them claims it in the header a republisher would write.
    let forged: Vec<(Envelope, &str)> = (0..5)
        .map(|_| priced())
        .zip([
            "hallmark-shop",
            "hallmark-crm",
            "guest",
            "",
            "hallmark-shop",
        ])
        .collect();
    send_as(&setup, SHOP, &forged[0].0, FieldTable::default()).await;
    send_as(&setup, CRM, &forged[1].0, FieldTable::default()).await;
    send(&setup.admin, &forged[2].0, FieldTable::default()).await;
    testkit::broker::send_without_user_id(&setup.config, &forged[3].0).await;
    send_as(&setup, SHOP, &forged[4].0, claims_to_be_mes()).await;

    let letters = dead_letters(&setup, forged.len()).await;
    for (envelope, sender) in &forged {
        let id = envelope.message_id.to_string();
        let letter = letters
            .iter()
            .find(|l| {
                l.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str())
                    == Some(id.as_str())
            })
            .unwrap_or_else(|| panic!("the message from {sender:?} is dead-lettered"));
        assert_eq!(
            header(letter, "x-error-code").as_deref(),
            Some("forged_sender")
        );
        let reason = header(letter, "x-error-message").unwrap();
        assert!(
            reason.starts_with(
                "order.status_changed.priced is mes-api's to send (as `hallmark-mes`)"
            ),
            "{reason}"
        );
        assert_eq!(
            header(letter, "x-original-user-id").as_deref(),
            Some(*sender),
            "the dead letter names who really sent it"
        );
        let headers = letter
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert_eq!(header_i64(&headers, "x-retry-count"), None, "never retried");
    }
    assert!(applied(&setup.pool).await.is_empty());
    assert_eq!(
        setup.recorder.calls.load(Ordering::SeqCst),
        0,
        "never handled"
    );
    assert_eq!(
        setup.recorder.dead_letters.load(Ordering::SeqCst),
        0,
        "the handler is not told of a forged message: it has no order to fail"
    );
    assert_eq!(inbox(&setup.pool).await, 0, "no inbox key taken");

    // MES's own is applied.
    let real = priced();
    send_as(&setup, MES, &real, FieldTable::default()).await;
    testkit::wait::until(
        "MES's message to apply",
        Duration::from_secs(10),
        || async { (applied(&setup.pool).await == [real.message_id]).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_forged_copy_sent_first_does_not_take_the_inbox_key_of_the_real_message() {
    let setup = setup(0).await;
    let real = priced();
    send_as(&setup, SHOP, &real, FieldTable::default()).await;
    dead_letters(&setup, 1).await;
    send_as(&setup, MES, &real, FieldTable::default()).await;
    testkit::wait::until(
        "the real message to apply",
        Duration::from_secs(10),
        || async { (applied(&setup.pool).await == [real.message_id]).then_some(()) },
    )
    .await;
    let duplicates: i32 = sqlx::query_scalar("SELECT duplicates FROM messaging.inbox")
        .fetch_one(&setup.pool)
        .await
        .unwrap();
    assert_eq!(
        duplicates, 0,
        "applied as the first of its id, not skipped as a copy"
    );
}

#[tokio::test]
async fn a_message_the_consumer_retries_is_still_its_owners_when_it_comes_back() {
    // Two failures: the copy CRM republished comes back twice before it applies.
    let setup = setup(2).await;
    let real = priced();
    send_as(&setup, MES, &real, FieldTable::default()).await;
    testkit::wait::until(
        "the retried message to apply",
        Duration::from_secs(10),
        || async { (applied(&setup.pool).await == [real.message_id]).then_some(()) },
    )
    .await;
    assert_eq!(setup.recorder.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_replay_vouches_for_no_more_than_the_dead_letter_so_a_forged_message_stays_forged() {
    let setup = setup(0).await;
    let operator = testkit::broker::connect_as(&setup.config, Party::Operator);
    let forged = priced();
    send_as(&setup, SHOP, &forged, FieldTable::default()).await;

    let letters = testkit::wait::until("the dead letter", Duration::from_secs(10), || async {
        let letters = dead_letters::list(&operator, CRM_ORDERS, 10).await.unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters[0].sender.as_deref(), Some("hallmark-shop"));
    assert_eq!(letters[0].error_code.as_deref(), Some("forged_sender"));

    let all = Selection::All;
    let replayed = testkit::wait::until("the replay", Duration::from_secs(10), || async {
        let replayed = dead_letters::replay(&operator, CRM_ORDERS, &all)
            .await
            .unwrap();
        (!replayed.is_empty()).then_some(replayed)
    })
    .await;
    assert_eq!(replayed.len(), 1);
    let again = testkit::wait::until(
        "the replay to fail again",
        Duration::from_secs(10),
        || async {
            let letters = dead_letters::list(&operator, CRM_ORDERS, 10).await.unwrap();
            letters.into_iter().find(|letter| letter.replays == 1)
        },
    )
    .await;
    assert_eq!(again.error_code.as_deref(), Some("forged_sender"));
    assert_eq!(again.sender.as_deref(), Some("hallmark-shop"));
    assert!(applied(&setup.pool).await.is_empty());
    assert_eq!(inbox(&setup.pool).await, 0);
}
