//! Builds the CRM API from its settings and runs it until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use domain::System;
use messaging::topology::CRM_ORDERS;
use messaging::{Broker, ConsumerConfig};
use orderbook::OrderBook;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::events::Registrar;
use crate::{SERVICE_NAME, orders};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Request bodies here are small JSON documents.
const BODY_LIMIT: usize = 64 * 1024;

/// What request handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub pool: PgPool,
    /// Checks callers' tokens.
    pub gate: Arc<access::Gate>,
    pub orderbook: OrderBook,
}

/// The status listing (`orderbook::statuses`) reads the pool from the state.
impl axum::extract::FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

/// A built CRM API, listening but not yet serving.
pub struct Application {
    listener: platform::tls::Listener,
    port: u16,
    state: AppState,
    broker: Broker,
    cancel: CancellationToken,
}

impl Application {
    /// Connects to the database (waiting for it), migrates and binds the port.
    pub async fn build(settings: Settings, cancel: CancellationToken) -> anyhow::Result<Self> {
        let pool = platform::db::connect(&settings.database, &cancel)
            .await
            .context("cannot connect to the CRM database")?;
        orderbook::install_schema(&pool).await?;
        MIGRATOR.run(&pool).await?;
        let tls = platform::tls::http_api(settings.tls.as_ref())?;
        let (listener, port) =
            platform::server::bind_with(&settings.host, settings.port, tls.as_ref()).await?;
        Ok(Self {
            listener,
            port,
            state: AppState {
                pool,
                gate: Arc::new(access::Gate::new(settings.access)),
                orderbook: OrderBook::new(SERVICE_NAME),
            },
            broker: Broker::service(settings.broker, System::Crm),
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves HTTP, registers orders and relays the outbox until the cancellation token fires;
    /// then finishes the work in progress and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            port,
            state,
            broker,
            cancel,
        } = self;
        let mut tasks = JoinSet::new();
        messaging::spawn_outbox_work(&mut tasks, &state.pool, &broker, (), &cancel);
        let registrar = Arc::new(Registrar {
            orderbook: state.orderbook,
        });
        // One at a time: order.created must be applied before the status changes that follow it.
        let queue = ConsumerConfig {
            queue: CRM_ORDERS,
            concurrency: 1,
        };
        tasks.spawn(messaging::consumer::run(
            state.pool.clone(),
            broker.clone(),
            registrar,
            queue,
            cancel.clone(),
        ));

        let pool = state.pool.clone();
        state.gate.prepare(SERVICE_NAME).await;
        let router = platform::server::with_standard_routes(
            orders::router(&state.gate).merge(orderbook::routes(&state.gate)),
            BODY_LIMIT,
        )
        .with_state(state);
        tracing::info!(port, "crm-api listening");
        let result = platform::server::serve_with_tasks(listener, router, tasks, cancel).await;
        broker.close().await;
        platform::db::close(&pool).await;
        tracing::info!("crm-api stopped");
        result
    }
}
