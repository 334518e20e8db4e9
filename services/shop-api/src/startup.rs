//! Builds the Shop API from its settings and runs it until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use domain::System;
use messaging::topology::SHOP_STATUS;
use messaging::{Broker, ConsumerConfig};
use orderbook::OrderBook;
use platform::storage::ObjectStorage;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::events::{StatusFollower, SubmitOnPublish};
use crate::{SERVICE_NAME, orders};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What request handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub pool: PgPool,
    /// Checks callers' tokens.
    pub gate: Arc<access::Gate>,
    pub storage: ObjectStorage,
    pub orderbook: OrderBook,
    pub max_model_bytes: usize,
    pub tokens: crate::orders::OrderTokens,
    pub partner_limits: Arc<crate::orders::PartnerLimits>,
}

/// The status listing (`orderbook::statuses`) reads the pool from the state.
impl axum::extract::FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

/// A built Shop API, listening but not yet serving.
pub struct Application {
    listener: platform::tls::Listener,
    port: u16,
    state: AppState,
    broker: Broker,
    cancel: CancellationToken,
}

impl Application {
    /// Connects to the database (waiting for it), migrates, prepares storage and binds the port.
    /// The broker may still be down: the outbox keeps orders until it is back.
    pub async fn build(settings: Settings, cancel: CancellationToken) -> anyhow::Result<Self> {
        let pool = platform::db::connect(&settings.database, &cancel)
            .await
            .context("cannot connect to the shop database")?;
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
                gate: Arc::new(access::Gate::new(settings.access)),
                storage,
                orderbook: OrderBook::new(SERVICE_NAME),
                max_model_bytes: settings.max_model_bytes,
                tokens: crate::orders::OrderTokens::new(settings.order_token_key),
                partner_limits: Arc::new(settings.partner_limits),
            },
            broker: Broker::service(settings.broker, System::Shop),
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves HTTP, relays the outbox and follows status events until the cancellation token
    /// fires; then stops taking work, finishes what is in progress and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            port,
            state,
            broker,
            cancel,
        } = self;
        let mut tasks = JoinSet::new();
        let hook = SubmitOnPublish {
            orderbook: state.orderbook,
        };
        messaging::spawn_outbox_work(&mut tasks, &state.pool, &broker, hook, &cancel);
        let follower = Arc::new(StatusFollower {
            orderbook: state.orderbook,
        });
        let queue = ConsumerConfig {
            queue: SHOP_STATUS,
            concurrency: 4,
        };
        tasks.spawn(messaging::consumer::run(
            state.pool.clone(),
            broker.clone(),
            follower,
            queue,
            cancel.clone(),
        ));

        let pool = state.pool.clone();
        tasks.spawn(crate::limits::watch(
            pool.clone(),
            state.partner_limits.clone(),
            std::time::Duration::from_secs(10),
            cancel.clone(),
        ));
        state.gate.prepare(SERVICE_NAME).await;
        // Multipart bodies carry the model; allow it plus room for the order JSON and framing.
        let body_limit = state.max_model_bytes + 1024 * 1024;
        let router = platform::server::with_standard_routes(
            orders::router()
                .merge(crate::limits::router(&state.gate))
                .merge(orderbook::routes(&state.gate)),
            body_limit,
        )
        .with_state(state);
        tracing::info!(port, "shop-api listening");
        let result = platform::server::serve_with_tasks(listener, router, tasks, cancel).await;
        broker.close().await;
        platform::db::close(&pool).await;
        tracing::info!("shop-api stopped");
        result
    }
}
