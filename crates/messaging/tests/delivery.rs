//! The delivery guarantees of the messaging layer, against the real broker and database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use domain::events::{Envelope, Event, StatusChanged};
use domain::{OrderStatus, System};
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use messaging::consumer::{self, ConsumerConfig};
use messaging::dead_letters::{self, Selection};
use messaging::publisher::{Outgoing, PublishError, Publisher, header_i64, header_str};
use messaging::topology::{CRM_ORDERS, SHOP_STATUS};
use messaging::{Broker, Handler, HandlerError, Incoming, OutboxRelay, Party, RelayConfig};
use sqlx::{PgConnection, PgPool};
use testkit::database::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Setup {
    pool: PgPool,
    /// The test's administrator: declares the whole topology, reads any queue.
    broker: Broker,
    /// CRM's connection: consumes `crm.orders` and sends CRM's messages.
    crm: Broker,
    /// The operator's: lists and replays dead letters.
    operator: Broker,
    cancel: CancellationToken,
    _db: TestDatabase,
    _broker_cleanup: testkit::broker::Cleanup,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn setup() -> Setup {
    let db = TestDatabase::create("messaging").await;
    let pool = db.connect().await;
    messaging::install_schema(&pool).await.unwrap();
    sqlx::query("CREATE TABLE applied (message_id UUID NOT NULL, retry_count INT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let config = testkit::broker::isolated();
    let broker_cleanup = testkit::broker::cleanup_on_drop(&config);
    let broker = Broker::new(config.clone(), "messaging-test");
    // Declares the topology.
    broker.channel().await.unwrap();
    let crm = Broker::service(
        testkit::broker::as_party(&config, Party::Service(System::Crm)),
        System::Crm,
    );
    let operator = testkit::broker::connect_as(&config, Party::Operator);
    Setup {
        pool,
        broker,
        crm,
        operator,
        cancel: CancellationToken::new(),
        _db: db,
        _broker_cleanup: broker_cleanup,
    }
}

fn status_event(order_id: Uuid) -> Envelope {
    Envelope::new(
        order_id,
        StatusChanged::idempotency_key(order_id, OrderStatus::Registered),
        "test",
        Utc::now(),
        Event::StatusChanged(StatusChanged {
            from: OrderStatus::Submitted,
            to: OrderStatus::Registered,
            reason: None,
            price: None,
        }),
    )
}

/// Publishes a fresh status event to the test's exchange, as CRM announces it (and receives it
/// back on `crm.orders`).
async fn publish_status_event(setup: &Setup) -> Envelope {
    let envelope = status_event(Uuid::now_v7());
    publish_raw(
        &setup.crm,
        envelope.message_id,
        "order.status_changed.registered",
        &envelope.to_vec(),
    )
    .await;
    envelope
}

async fn publish_raw(broker: &Broker, message_id: Uuid, routing_key: &str, body: &[u8]) {
    let publisher = Publisher::open(broker).await.unwrap();
    publisher
        .publish(
            &broker.names().orders_exchange(),
            routing_key,
            Outgoing {
                message_id,
                kind: "order.status_changed",
                body,
                headers: FieldTable::default(),
                occurred_at: Utc::now(),
            },
        )
        .await
        .unwrap();
}

/// Waits up to `patience` for a message on a (namespaced) queue and takes it off.
async fn take_within(
    broker: &Broker,
    queue: &str,
    patience: Duration,
) -> Option<lapin::message::BasicGetMessage> {
    let channel = broker.channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return Some(message);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn take(broker: &Broker, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    take_within(broker, queue, Duration::from_secs(10)).await
}

async fn applied(pool: &PgPool) -> Vec<(Uuid, i32)> {
    sqlx::query_as("SELECT message_id, retry_count FROM applied ORDER BY retry_count")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Records each message; fails the first `failures` times, transiently or (when `database_down`)
/// as if its database were unavailable.
struct Recorder {
    failures: u32,
    database_down: bool,
    calls: AtomicU32,
    dead_letters: AtomicU32,
}

impl Recorder {
    fn failing(failures: u32) -> Arc<Self> {
        Arc::new(Self {
            failures,
            database_down: false,
            calls: AtomicU32::new(0),
            dead_letters: AtomicU32::new(0),
        })
    }
}

impl Handler for Recorder {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(if self.database_down {
                HandlerError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                )))
            } else {
                HandlerError::transient("flaky", "the test says no")
            });
        }
        sqlx::query("INSERT INTO applied (message_id, retry_count) VALUES ($1, $2)")
            .bind(message.envelope.message_id)
            .bind(message.retry_count as i32)
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

impl Recorder {
    fn database_down(failures: u32) -> Arc<Self> {
        Arc::new(Self {
            failures,
            database_down: true,
            calls: AtomicU32::new(0),
            dead_letters: AtomicU32::new(0),
        })
    }
}

fn consume(setup: &Setup, handler: Arc<Recorder>) {
    tokio::spawn(consumer::run(
        setup.pool.clone(),
        setup.crm.clone(),
        handler,
        ConsumerConfig {
            queue: CRM_ORDERS,
            concurrency: 2,
        },
        setup.cancel.clone(),
    ));
}

#[tokio::test]
async fn a_committed_outbox_row_is_published_with_its_identity_its_sender_and_trace_headers() {
    let setup = setup().await;
    let envelope = status_event(Uuid::now_v7());
    let mut tx = setup.pool.begin().await.unwrap();
    messaging::enqueue(&mut tx, &envelope).await.unwrap();
    tx.commit().await.unwrap();
    tokio::spawn(
        OutboxRelay::new(
            setup.pool.clone(),
            setup.crm.clone(),
            (),
            RelayConfig::default(),
        )
        .run(setup.cancel.clone()),
    );

    let message = take(&setup.broker, &setup.broker.names().queue("crm.orders"))
        .await
        .expect("the row is published");
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().unwrap().as_str(),
        envelope.message_id.to_string()
    );
    assert_eq!(
        properties.kind().as_ref().unwrap().as_str(),
        "order.status_changed"
    );
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(
        properties.user_id().as_ref().map(|u| u.as_str()),
        Some("hallmark-crm"),
        "the sender's account, which the broker checked"
    );
    let headers = properties.headers().clone().unwrap();
    assert!(header_i64(&headers, "x-published-at-us").is_some());
    assert!(header_str(&headers, "traceparent").is_none_or(|t| t.starts_with("00-")));
    assert_eq!(
        Envelope::from_slice(&message.delivery.data).unwrap(),
        envelope
    );

    testkit::wait::until(
        "the row to be marked published",
        Duration::from_secs(5),
        || async {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM messaging.outbox WHERE published_at IS NULL",
            )
            .fetch_one(&setup.pool)
            .await
            .unwrap();
            (pending == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() {
    let setup = setup().await;
    let mut tx = setup.pool.begin().await.unwrap();
    messaging::enqueue(&mut tx, &status_event(Uuid::now_v7()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    tokio::spawn(
        OutboxRelay::new(
            setup.pool.clone(),
            setup.broker.clone(),
            (),
            RelayConfig::default(),
        )
        .run(setup.cancel.clone()),
    );
    let queue = setup.broker.names().queue("crm.orders");
    let message = take_within(&setup.broker, &queue, Duration::from_millis(800)).await;
    assert!(message.is_none());
}

#[tokio::test]
async fn a_message_delivered_twice_is_applied_once() {
    let setup = setup().await;
    let envelope = status_event(Uuid::now_v7());
    let body = envelope.to_vec();
    publish_raw(
        &setup.crm,
        envelope.message_id,
        "order.status_changed.registered",
        &body,
    )
    .await;
    publish_raw(
        &setup.crm,
        envelope.message_id,
        "order.status_changed.registered",
        &body,
    )
    .await;
    let recorder = Recorder::failing(0);
    consume(&setup, recorder.clone());

    testkit::wait::until(
        "both deliveries to be handled",
        Duration::from_secs(10),
        || async {
            let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM messaging.inbox")
                .fetch_one(&setup.pool)
                .await
                .unwrap();
            (inbox == 1 && recorder.calls.load(Ordering::SeqCst) >= 1).then_some(())
        },
    )
    .await;
    let duplicates = testkit::wait::until(
        "the copy to be counted",
        Duration::from_secs(10),
        || async {
            let duplicates: i32 = sqlx::query_scalar("SELECT duplicates FROM messaging.inbox")
                .fetch_one(&setup.pool)
                .await
                .unwrap();
            (duplicates > 0).then_some(duplicates)
        },
    )
    .await;
    assert_eq!(duplicates, 1, "the second copy is counted on the inbox row");
    assert_eq!(applied(&setup.pool).await.len(), 1);
    assert!(
        take_within(
            &setup.broker,
            &setup.broker.names().queue("crm.orders"),
            Duration::from_millis(500)
        )
        .await
        .is_none(),
        "both copies were acknowledged"
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_back_off_and_then_applied_once() {
    let setup = setup().await;
    let envelope = publish_status_event(&setup).await;
    let recorder = Recorder::failing(2);
    consume(&setup, recorder.clone());

    let rows = testkit::wait::until(
        "the message to be applied",
        Duration::from_secs(10),
        || async {
            let rows = applied(&setup.pool).await;
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await;
    assert_eq!(
        rows,
        vec![(envelope.message_id, 2)],
        "applied on the second retry"
    );
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_message_that_keeps_failing_ends_in_the_dead_letter_queue_with_its_reason() {
    let setup = setup().await;
    let envelope = publish_status_event(&setup).await;
    let recorder = Recorder::failing(u32::MAX);
    consume(&setup, recorder.clone());

    let dead = take(
        &setup.broker,
        &setup.broker.names().dead_letter_queue("crm.orders"),
    )
    .await
    .expect("the message is dead-lettered");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(header_str(&headers, "x-error-code"), Some("flaky"));
    assert_eq!(header_i64(&headers, "x-retry-count"), Some(2));
    assert_eq!(
        header_str(&headers, "x-original-routing-key"),
        Some("order.status_changed.registered")
    );
    assert_eq!(Envelope::from_slice(&dead.delivery.data).unwrap(), envelope);
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        3,
        "first attempt and two retries"
    );
    testkit::wait::until(
        "the handler to hear of it",
        Duration::from_secs(5),
        || async { (recorder.dead_letters.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    assert!(applied(&setup.pool).await.is_empty());
}

#[tokio::test]
async fn a_body_that_is_not_an_envelope_is_dead_lettered_at_once() {
    let setup = setup().await;
    let id = Uuid::now_v7();
    publish_raw(
        &setup.crm,
        id,
        "order.status_changed.registered",
        b"{\"this\": \"is not an envelope\"",
    )
    .await;
    let recorder = Recorder::failing(0);
    consume(&setup, recorder.clone());

    let dead = take(
        &setup.broker,
        &setup.broker.names().dead_letter_queue("crm.orders"),
    )
    .await
    .expect("the poison message is dead-lettered");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        header_str(&headers, "x-error-code"),
        Some("message_malformed")
    );
    assert!(
        header_str(&headers, "x-error-message")
            .unwrap()
            .contains("not a valid envelope")
    );
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        0,
        "never handed to the handler"
    );
}

#[tokio::test]
async fn an_unroutable_message_is_an_error_not_silence() {
    let setup = setup().await;
    let publisher = Publisher::open(&setup.broker).await.unwrap();
    let result = publisher
        .publish(
            &setup.broker.names().orders_exchange(),
            "nobody.listens.here",
            Outgoing {
                message_id: Uuid::now_v7(),
                kind: "order.nothing",
                body: b"{}",
                headers: FieldTable::default(),
                occurred_at: Utc::now(),
            },
        )
        .await;
    assert!(
        matches!(result, Err(PublishError::Unroutable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_operator_sees_a_dead_letter_with_its_reason_and_replays_it_to_be_applied_once() {
    let setup = setup().await;
    let envelope = publish_status_event(&setup).await;
    // Fails the first attempt and both retries, then works: the fix an operator waits for.
    let recorder = Recorder::failing(3);
    consume(&setup, recorder.clone());

    let letters = testkit::wait::until("the dead letter", Duration::from_secs(10), || async {
        let letters = dead_letters::list(&setup.operator, CRM_ORDERS, 10)
            .await
            .unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let [letter] = letters.as_slice() else {
        panic!("one dead letter, got {letters:?}");
    };
    assert_eq!(letter.message_id, Some(envelope.message_id.to_string()));
    assert_eq!(letter.order_id, Some(envelope.order_id));
    assert_eq!(letter.error_code.as_deref(), Some("flaky"));
    assert_eq!(letter.error_message.as_deref(), Some("the test says no"));
    assert_eq!(
        letter.routing_key.as_deref(),
        Some("order.status_changed.registered")
    );
    assert_eq!((letter.retries, letter.replays), (2, 0));
    assert_eq!(
        dead_letters::list(&setup.operator, CRM_ORDERS, 10)
            .await
            .unwrap()
            .len(),
        1,
        "listing leaves the dead letter where it is"
    );

    let other = Selection::MessageId(Uuid::now_v7().to_string());
    let replayed = dead_letters::replay(&setup.operator, CRM_ORDERS, &other)
        .await
        .unwrap();
    assert!(replayed.is_empty(), "only the selected message is replayed");

    // The broker puts back what the previous call left alone a moment after it closed.
    let mine = Selection::MessageId(envelope.message_id.to_string());
    let replayed = testkit::wait::until("the replay", Duration::from_secs(10), || async {
        let replayed = dead_letters::replay(&setup.operator, CRM_ORDERS, &mine)
            .await
            .unwrap();
        (!replayed.is_empty()).then_some(replayed)
    })
    .await;
    assert_eq!(replayed.len(), 1);
    testkit::wait::until("the replay to apply", Duration::from_secs(10), || async {
        (!applied(&setup.pool).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        applied(&setup.pool).await,
        vec![(envelope.message_id, 0)],
        "applied once, with a fresh retry budget"
    );
    let counts = dead_letters::counts(&setup.operator).await.unwrap();
    assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
}

#[tokio::test]
async fn a_database_outage_is_waited_out_without_spending_the_messages_retries() {
    let setup = setup().await;
    let envelope = publish_status_event(&setup).await;
    // More failures than the two retries allow: a transient error would dead-letter it.
    let recorder = Recorder::database_down(5);
    consume(&setup, recorder.clone());

    testkit::wait::until("the message to apply", Duration::from_secs(20), || async {
        (!applied(&setup.pool).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        applied(&setup.pool).await,
        vec![(envelope.message_id, 0)],
        "applied on its first delivery, no retry spent"
    );
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 6);
    assert_eq!(recorder.dead_letters.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn old_outbox_and_inbox_rows_are_cleaned_up_but_unpublished_ones_never() {
    let setup = setup().await;
    let insert_outbox = |published: Option<&'static str>| {
        let pool = setup.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO messaging.outbox (message_id, routing_key, kind, order_id, body, created_at, published_at) \
                 VALUES ($1, 'order.created', 'order.created', $2, '\\x00', now() - interval '30 days', \
                         now() - $3::interval)",
            )
            .bind(Uuid::now_v7())
            .bind(Uuid::now_v7())
            .bind(published)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    insert_outbox(Some("8 days")).await;
    insert_outbox(Some("1 hour")).await;
    insert_outbox(None).await;
    for age in ["15 days", "1 day"] {
        sqlx::query(
            "INSERT INTO messaging.inbox (consumer, message_id, received_at) \
             VALUES ('crm.orders', $1, now() - $2::interval)",
        )
        .bind(Uuid::now_v7())
        .bind(age)
        .execute(&setup.pool)
        .await
        .unwrap();
    }

    let day = Duration::from_secs(24 * 3600);
    let cleaned = messaging::retention::clean(&setup.pool, 7 * day, 14 * day)
        .await
        .unwrap();
    assert_eq!(
        cleaned,
        messaging::retention::Cleaned {
            outbox: 1,
            inbox: 1
        }
    );
    let left: Vec<(bool,)> =
        sqlx::query_as("SELECT published_at IS NULL FROM messaging.outbox ORDER BY id")
            .fetch_all(&setup.pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        [(false,), (true,)],
        "the recent and the unpublished row stay"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM messaging.inbox")
        .fetch_one(&setup.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 1);
}

#[tokio::test]
async fn the_backlog_counts_the_rows_not_published_yet_and_the_age_of_the_oldest() {
    let setup = setup().await;
    assert_eq!(
        messaging::outbox::backlog(&setup.pool).await.unwrap(),
        (0, None)
    );
    for (age, published) in [
        ("90 seconds", false),
        ("10 seconds", false),
        ("1 hour", true),
    ] {
        sqlx::query(
            "INSERT INTO messaging.outbox (message_id, routing_key, kind, order_id, body, created_at, published_at) \
             VALUES ($1, 'order.created', 'order.created', $2, '\\x00', now() - $3::interval, \
                     CASE WHEN $4 THEN now() END)",
        )
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .bind(age)
        .bind(published)
        .execute(&setup.pool)
        .await
        .unwrap();
    }

    let (pending, oldest) = messaging::outbox::backlog(&setup.pool).await.unwrap();
    assert_eq!(pending, 2, "the published row does not count");
    let oldest = oldest.expect("an oldest row");
    assert!(
        (Duration::from_secs(90)..Duration::from_secs(120)).contains(&oldest),
        "{oldest:?}"
    );
}

#[tokio::test]
async fn shop_no_longer_receives_its_own_submission_once_a_restart_retires_the_old_binding() {
    let config = testkit::broker::isolated();
    let _cleanup = testkit::broker::cleanup_on_drop(&config);
    let earlier = Broker::new(config.clone(), "messaging-test");
    let channel = earlier.channel().await.unwrap();
    let names = earlier.names();
    let queue = names.queue(SHOP_STATUS.name);
    // What the version before declared for Shop's queue.
    channel
        .queue_bind(
            queue.as_str().into(),
            names.orders_exchange().as_str().into(),
            "order.status_changed.#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // A restart of the current version declares the topology again.
    let current = Broker::new(config, "messaging-test");
    current.channel().await.unwrap();
    let submitted = Uuid::now_v7();
    publish_raw(&current, submitted, "order.status_changed.submitted", b"{}").await;
    let registered = Uuid::now_v7();
    publish_raw(
        &current,
        registered,
        "order.status_changed.registered",
        b"{}",
    )
    .await;

    let first = take(&current, &queue)
        .await
        .expect("registered reaches Shop");
    assert_eq!(
        first
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(registered.to_string().as_str())
    );
    assert!(
        take_within(&current, &queue, Duration::from_millis(500))
            .await
            .is_none(),
        "Shop's own submission was routed to it"
    );
}

#[tokio::test]
async fn a_service_replaces_an_earlier_versions_exchanges_and_what_its_retry_queues_hold_still_comes_back()
 {
    use lapin::ExchangeKind;
    use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};

    let config = testkit::broker::isolated();
    let _cleanup = testkit::broker::cleanup_on_drop(&config);
    let names = messaging::topology::Names::new(&config.namespace);
    // What the version before declared: direct dead-letter and requeue exchanges, and a shared
    // retry queue behind a fanout exchange of its name, holding a retry for crm.orders.
    let admin = Broker::operator(config.clone(), "messaging-test");
    let channel = admin.channel().await.unwrap();
    let options = ExchangeDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    for (exchange, kind) in [
        (names.dead_letter_exchange(), ExchangeKind::Direct),
        (names.requeue_exchange(), ExchangeKind::Direct),
    ] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                kind,
                options,
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let old_retry = format!("{}.hallmark.retry.1", config.namespace);
    let mut args = FieldTable::default();
    let text = |t: &str| lapin::types::AMQPValue::LongString(t.into());
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongLongInt(600_000),
    );
    args.insert(
        "x-message-ttl".into(),
        lapin::types::AMQPValue::LongLongInt(300),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        text(&names.requeue_exchange()),
    );
    channel
        .queue_declare(
            old_retry.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .exchange_declare(
            old_retry.as_str().into(),
            ExchangeKind::Fanout,
            options,
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            old_retry.as_str().into(),
            old_retry.as_str().into(),
            "".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The current CRM connects: its exchanges are topic exchanges now, its queues bound again.
    let crm = Broker::service(
        testkit::broker::as_party(&config, Party::Service(System::Crm)),
        System::Crm,
    );
    crm.channel().await.expect("CRM replaces the old exchanges");
    let check = admin.channel().await.unwrap();
    for exchange in [names.dead_letter_exchange(), names.requeue_exchange()] {
        check
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|err| panic!("{exchange} is not a topic exchange: {err}"));
    }

    // A retry the old version scheduled comes back to crm.orders by the queue's name.
    let envelope = status_event(Uuid::now_v7());
    let publisher = Publisher::open(&admin).await.unwrap();
    publisher
        .publish(
            &old_retry,
            &names.queue("crm.orders"),
            Outgoing {
                message_id: envelope.message_id,
                kind: &envelope.kind,
                body: &envelope.to_vec(),
                headers: FieldTable::default(),
                occurred_at: Utc::now(),
            },
        )
        .await
        .unwrap();
    let back = take(&admin, &names.queue("crm.orders"))
        .await
        .expect("the old retry comes back");
    assert_eq!(Envelope::from_slice(&back.delivery.data).unwrap(), envelope);
    // The namespace's clean-up knows only the current names.
    channel
        .queue_delete(old_retry.as_str().into(), Default::default())
        .await
        .unwrap();
    let _ = channel.close(200, "done".into()).await;
}
