//! Builds the MES API from its settings and runs it until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use domain::System;
use messaging::topology::{MES_PRICING, MES_PRODUCTION};
use messaging::{Broker, ConsumerConfig};
use orderbook::OrderBook;
use platform::storage::ObjectStorage;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::calc::{CalcEngine, Worker};
use crate::config::Settings;
use crate::events::{PricingIntake, ProductionIntake};
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

/// A built MES API, listening but not yet serving.
pub struct Application {
    listener: platform::tls::Listener,
    port: u16,
    state: AppState,
    storage: ObjectStorage,
    broker: Broker,
    settings: Settings,
    cancel: CancellationToken,
}

impl Application {
    /// Connects to the database (waiting for it), migrates, checks the calc engine is there and
    /// binds the port.
    pub async fn build(settings: Settings, cancel: CancellationToken) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.calc.binary.is_file(),
            "the calc engine {} does not exist; build it (cargo build -p mes-calc) or set MES_CALC_BIN",
            settings.calc.binary.display()
        );
        let pool = platform::db::connect(&settings.database, &cancel)
            .await
            .context("cannot connect to the MES database")?;
        orderbook::install_schema(&pool).await?;
        MIGRATOR.run(&pool).await?;
        let storage = ObjectStorage::new(&settings.storage)?;
        let tls = platform::tls::http_api(settings.tls.as_ref())?;
        let (listener, port) =
            platform::server::bind_with(&settings.host, settings.port, tls.as_ref()).await?;
        Ok(Self {
            listener,
            port,
            state: AppState {
                pool,
                gate: Arc::new(access::Gate::new(settings.access.clone())),
                orderbook: OrderBook::new(SERVICE_NAME),
            },
            storage,
            broker: Broker::service(settings.broker.clone(), System::Mes),
            settings,
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves HTTP, takes price requests, runs calculations and relays the outbox until the
    /// cancellation token fires; then finishes the work in progress and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            port,
            state,
            storage,
            broker,
            settings,
            cancel,
        } = self;
        let wake = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        messaging::spawn_outbox_work(&mut tasks, &state.pool, &broker, (), &cancel);
        let pricing = Arc::new(PricingIntake {
            orderbook: state.orderbook,
            wake: wake.clone(),
        });
        tasks.spawn(messaging::consumer::run(
            state.pool.clone(),
            broker.clone(),
            pricing,
            ConsumerConfig {
                queue: MES_PRICING,
                concurrency: 4,
            },
            cancel.clone(),
        ));
        let production = Arc::new(ProductionIntake {
            orderbook: state.orderbook,
        });
        tasks.spawn(messaging::consumer::run(
            state.pool.clone(),
            broker.clone(),
            production,
            ConsumerConfig {
                queue: MES_PRODUCTION,
                concurrency: 1,
            },
            cancel.clone(),
        ));
        let engine = CalcEngine::new(settings.calc.binary.clone(), settings.calc.timeout);
        for _ in 0..settings.calc.workers.max(1) {
            let worker = Worker {
                pool: state.pool.clone(),
                storage: storage.clone(),
                orderbook: state.orderbook,
                engine: engine.clone(),
                settings: settings.calc.clone(),
                wake: wake.clone(),
            };
            tasks.spawn(worker.run(cancel.clone()));
        }

        let pool = state.pool.clone();
        state.gate.prepare(SERVICE_NAME).await;
        let router = platform::server::with_standard_routes(
            orders::router(&state.gate).merge(orderbook::routes(&state.gate)),
            BODY_LIMIT,
        )
        .with_state(state);
        tracing::info!(port, "mes-api listening");
        let result = platform::server::serve_with_tasks(listener, router, tasks, cancel).await;
        broker.close().await;
        platform::db::close(&pool).await;
        tracing::info!("mes-api stopped");
        result
    }
}
