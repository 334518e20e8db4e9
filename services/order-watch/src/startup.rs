//! Builds order-watch from its settings and runs it until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::Settings;
use crate::detector::Detector;
use crate::incidents::{self, Announcer};
use crate::ingest::{self, Ingest};
use crate::metrics::Metrics;
use crate::records::Records;
use crate::retention;
use crate::runtime_config::{self, Defaults, LiveConfig};
use crate::store::{Writer, WriterContext};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The ports order-watch listens on (useful when the settings asked for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub api: u16,
    pub otlp_http: u16,
    pub otlp_grpc: u16,
}

/// A built order-watch, listening but not yet serving.
pub struct Application {
    api: TcpListener,
    otlp_http: TcpListener,
    otlp_grpc: TcpListener,
    ports: Ports,
    pool: PgPool,
    settings: Settings,
    clock: Clock,
    cancel: CancellationToken,
}

impl Application {
    /// Connects to the database (waiting for it), migrates and binds the three ports.
    pub async fn build(
        settings: Settings,
        clock: Clock,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let pool = platform::db::connect(&settings.database, &cancel)
            .await
            .context("cannot connect to the order-watch database")?;
        MIGRATOR.run(&pool).await?;
        let (api, api_port) = platform::server::bind(&settings.host, settings.http_port).await?;
        let (otlp_http, http_port) =
            platform::server::bind(&settings.host, settings.otlp_http_port).await?;
        let (otlp_grpc, grpc_port) =
            platform::server::bind(&settings.host, settings.otlp_grpc_port).await?;
        Ok(Self {
            api,
            otlp_http,
            otlp_grpc,
            ports: Ports {
                api: api_port,
                otlp_http: http_port,
                otlp_grpc: grpc_port,
            },
            pool,
            settings,
            clock,
            cancel,
        })
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Receives spans, detects stuck orders and serves the API until the cancellation token
    /// fires; then stops taking spans, stores those already received and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            api,
            otlp_http,
            otlp_grpc,
            ports,
            pool,
            settings,
            clock,
            cancel,
        } = self;
        // A change made at run time outlives restarts: each part changed wins over the
        // environment and the file.
        let config = LiveConfig::new(
            Defaults {
                thresholds: settings.thresholds.clone(),
                webhook: settings.webhook.clone(),
                retention_days: settings.retention_days,
            },
            runtime_config::load(&pool)
                .await
                .context("cannot start with the stored configuration")?,
        )
        .context("cannot start with the stored configuration")?;
        let metrics = Arc::new(Metrics::new(&opentelemetry::global::meter("order-watch")));
        let announcer = Announcer {
            external_url: format!("http://{}:{}", settings.host, ports.api),
            config: config.clone(),
        };
        let wake = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();

        // The writer outlives the receivers: it drains what they accepted before stopping.
        let writer_cancel = CancellationToken::new();
        let (writer, writer_task) = Writer::start(
            WriterContext {
                pool: pool.clone(),
                config: config.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                announcer: announcer.clone(),
                detector: wake.clone(),
            },
            writer_cancel.clone(),
        );
        let ingest = Ingest {
            writer,
            metrics: metrics.clone(),
            max_request_bytes: settings.max_request_bytes,
            clock: clock.clone(),
            config: config.clone(),
        };
        for system in domain::System::ALL {
            if !settings.records.urls.contains_key(&system) {
                tracing::warn!(
                    system = %system,
                    variable = crate::records::RecordsConfig::variable(system),
                    "no address for this system of record: orders waiting on it will be flagged stuck unconfirmed"
                );
            }
        }
        tasks.spawn(
            Detector {
                pool: pool.clone(),
                clock: clock.clone(),
                announcer: announcer.clone(),
                metrics: metrics.clone(),
                records: Arc::new(Records::new(settings.records.clone())),
                config: config.clone(),
                interval: settings.detect_interval,
                reconfirm_interval: settings.reconfirm_interval,
                wake: wake.clone(),
            }
            .run(cancel.clone()),
        );
        tasks.spawn(incidents::send_notifications(
            pool.clone(),
            config.clone(),
            clock.clone(),
            cancel.clone(),
        ));
        tasks.spawn(runtime_config::follow(
            pool.clone(),
            config.clone(),
            settings.config_reload_interval,
            wake.clone(),
            cancel.clone(),
        ));
        tasks.spawn(metrics.clone().refresh_every(
            pool.clone(),
            clock.clone(),
            settings.gauge_interval,
            cancel.clone(),
        ));
        tasks.spawn(retention::run(
            pool.clone(),
            clock.clone(),
            config.clone(),
            cancel.clone(),
        ));

        let otlp_router = ingest::http::router(ingest.clone());
        let http_cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(err) = platform::server::serve(otlp_http, otlp_router, http_cancel).await {
                tracing::error!(error = %err, "the OTLP/HTTP receiver failed");
            }
        });
        let grpc_cancel = cancel.clone();
        tasks.spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_routes(ingest::grpc::routes(ingest))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(otlp_grpc),
                    grpc_cancel.cancelled_owned(),
                )
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the OTLP/gRPC receiver failed");
            }
        });

        let state = ApiState {
            pool: pool.clone(),
            clock,
            config,
            detector: wake,
            announcer,
        };
        let authenticator = Arc::new(Authenticator::new(settings.auth.clone()));
        let prepared = authenticator.clone();
        tasks.spawn(async move { prepared.prepare().await });
        let router =
            platform::server::with_standard_routes(api::router(authenticator), 1024 * 1024)
                .with_state(state);
        tracing::info!(
            api = ports.api,
            otlp_http = ports.otlp_http,
            otlp_grpc = ports.otlp_grpc,
            "order-watch listening"
        );
        let result = platform::server::serve_with_tasks(api, router, tasks, cancel).await;
        writer_cancel.cancel();
        let _ = writer_task.await;
        platform::db::close(&pool).await;
        tracing::info!("order-watch stopped");
        result
    }
}
