//! Builds order-watch from its settings and runs it until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use platform::tls::Listener;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::Settings;
use crate::desk::floor::FloorFeed;
use crate::detector::Detector;
use crate::incidents::{self, Announcer};
use crate::ingest::{self, Ingest};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
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
    api: Listener,
    otlp_http: Listener,
    otlp_grpc: Listener,
    ports: Ports,
    pool: PgPool,
    records: Records,
    settings: Settings,
    clock: Clock,
    cancel: CancellationToken,
}

impl Application {
    /// Reads the TLS certificates (if any), connects to the database (waiting for it),
    /// migrates and binds the three ports.
    /// A certificate file that cannot be used is an error naming its setting.
    pub async fn build(
        settings: Settings,
        clock: Clock,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        // The API asks for no client certificate; the OTLP receivers do when given a client CA.
        // HTTP/1.1 for the API and OTLP/HTTP, HTTP/2 for gRPC (which needs ALPN to say so).
        let api_tls = platform::tls::http_api(settings.tls.as_ref())?;
        let otlp_tls = match &settings.tls {
            Some(files) => Some(files.load(settings.otlp_client_ca.as_ref())?),
            None => None,
        };
        let records = Records::new(settings.records.clone())?;
        let pool = platform::db::connect(&settings.database, &cancel)
            .await
            .context("cannot connect to the order-watch database")?;
        MIGRATOR.run(&pool).await?;
        let host = &settings.host;
        let (api, api_port) =
            platform::server::bind_with(host, settings.http_port, api_tls.as_ref()).await?;
        let (otlp_http, http_port) = platform::server::bind_with(
            host,
            settings.otlp_http_port,
            otlp_tls
                .as_ref()
                .map(|tls| tls.with_alpn(&[b"http/1.1"]))
                .as_ref(),
        )
        .await?;
        let (otlp_grpc, grpc_port) = platform::server::bind_with(
            host,
            settings.otlp_grpc_port,
            otlp_tls
                .as_ref()
                .map(|tls| tls.with_alpn(&[b"h2"]))
                .as_ref(),
        )
        .await?;
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
            records,
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
            records,
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
        let over_tls = api.is_tls();
        let announcer = Announcer {
            external_url: format!(
                "{}://{}:{}",
                if over_tls { "https" } else { "http" },
                settings.host,
                ports.api
            ),
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
        let records = Arc::new(records);
        if settings.records.urls.contains_key(&domain::System::Shop) {
            tasks.spawn(
                crate::partner_limits::Guard {
                    pool: pool.clone(),
                    records: records.clone(),
                    clock: clock.clone(),
                    config: settings.partner_limits.clone(),
                }
                .run(cancel.clone()),
            );
        }
        // An order is judged only when all three systems answer for it: with one of them
        // unknown, rounds would read and compare nothing.
        let all_systems = domain::System::ALL
            .iter()
            .all(|system| settings.records.urls.contains_key(system));
        if settings.reconcile.enabled && all_systems {
            metrics.set_reconciling(true);
            tasks.spawn(
                Reconciler {
                    pool: pool.clone(),
                    clock: clock.clone(),
                    records: records.clone(),
                    metrics: metrics.clone(),
                    announcer: announcer.clone(),
                    config: settings.reconcile.clone(),
                    replica: uuid::Uuid::now_v7(),
                }
                .run(cancel.clone()),
            );
        } else if settings.reconcile.enabled {
            tracing::warn!(
                "reconciliation is off: it needs the addresses of Shop, CRM and MES (ORDER_WATCH_SHOP_URL, ORDER_WATCH_CRM_URL, ORDER_WATCH_MES_URL)"
            );
        } else {
            tracing::info!("reconciliation is off (ORDER_WATCH_RECONCILE=false)");
        }
        tasks.spawn(
            Detector {
                pool: pool.clone(),
                clock: clock.clone(),
                announcer: announcer.clone(),
                metrics: metrics.clone(),
                records: records.clone(),
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
                .serve_with_incoming_shutdown(otlp_grpc.incoming(), grpc_cancel.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the OTLP/gRPC receiver failed");
            }
        });

        let floor = FloorFeed::new(
            pool.clone(),
            metrics.clone(),
            config.clone(),
            settings.reconcile.clone(),
            clock.clone(),
            cancel.clone(),
        );
        tasks.spawn(floor.clone().run());
        let state = ApiState {
            pool: pool.clone(),
            clock,
            config,
            detector: wake,
            announcer,
            floor,
            trace_store: settings.jaeger_url.clone(),
            records,
            metrics,
            reconcile: settings.reconcile.clone(),
        };
        let authenticator = Arc::new(Authenticator::new(settings.auth.clone(), over_tls));
        let prepared = authenticator.clone();
        tasks.spawn(async move { prepared.prepare().await });
        let router =
            platform::server::with_standard_routes(api::router(authenticator), 1024 * 1024)
                .with_state(state);
        tracing::info!(
            api = ports.api,
            otlp_http = ports.otlp_http,
            otlp_grpc = ports.otlp_grpc,
            tls = over_tls,
            otlp_client_certificates = settings.otlp_client_ca.is_some(),
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
