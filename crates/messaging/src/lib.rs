//! Hallmark's messaging over RabbitMQ: nothing lost, nothing applied twice.
//!
//! * [`topology`]: the exchanges and quorum queues the services declare at start-up.
//! * [`outbox`]: messages written in the business transaction and published by a relay with
//!   publisher confirms and mandatory routing.
//! * [`consumer`]: deliveries applied through an inbox in one transaction with their effects,
//!   acknowledged after commit, retried with back-off and dead-lettered when hopeless.
//! * [`dead_letters`]: listing and replaying what ended in a dead-letter queue.
//! * [`retention`]: old outbox and inbox rows deleted on a schedule.
//! * [`broker`]: the connection, reopened with back-off after any failure.
//! * [`accounts`], [`sender`], [`permissions`]: each service is its own broker account, every
//!   message names its sender (the AMQP `user-id` RabbitMQ checks), consumers apply a message
//!   only from its owner, and each account may do only what its service needs.
//!
//! The outbox and inbox tables live in the `messaging` schema of each service's own database
//! and are created by [`install_schema`].

pub mod accounts;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod crash;
pub mod dead_letters;
pub mod faults;
pub mod headers;
mod metrics;
pub mod outbox;
pub mod permissions;
pub mod publisher;
pub mod retention;
pub mod sender;
pub mod topology;

pub use accounts::{Accounts, Party};
pub use broker::{Backoff, Broker};
pub use config::BrokerConfig;
pub use consumer::{ConsumerConfig, Handler, HandlerError, Incoming};
pub use outbox::{OutboxRelay, PublishHook, Published, RelayConfig, enqueue};

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or upgrades the `messaging` schema (outbox and inbox), with its own migration history.
pub async fn install_schema(pool: &PgPool) -> Result<(), MigrateError> {
    platform::db::migrate_schema(pool, "messaging", &MIGRATOR).await
}

/// Starts, in `tasks`, the messaging work every service runs beside its consumers: the outbox
/// relay (with the service's `hook`), the outbox backlog gauges and the outbox and inbox
/// clean-up. All stop when `cancel` fires, the relay after the batch in progress.
pub fn spawn_outbox_work<H: PublishHook>(
    tasks: &mut tokio::task::JoinSet<()>,
    pool: &PgPool,
    broker: &Broker,
    hook: H,
    cancel: &tokio_util::sync::CancellationToken,
) {
    let relay = OutboxRelay::new(pool.clone(), broker.clone(), hook, RelayConfig::default());
    tasks.spawn(relay.run(cancel.clone()));
    tasks.spawn(outbox::watch_backlog(pool.clone(), cancel.clone()));
    tasks.spawn(retention::run(
        pool.clone(),
        broker.config().clone(),
        cancel.clone(),
    ));
}
