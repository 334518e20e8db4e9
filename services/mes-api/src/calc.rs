//! Price calculations: the durable job queue, the workers, and the wrapper around the calc engine.
//!
//! A job is queued (in the same transaction as `registered → pricing`) when MES accepts a price
//! request. Workers claim due jobs with `FOR UPDATE SKIP LOCKED` and a lease, so several workers
//! and MES replicas share the queue and a job whose worker died is picked up again when its lease
//! runs out. The queue is shared fairly between requesters (a partner, or a customer; see
//! [`Worker::claim`]): a due job waits behind at most one calculation of each other requester
//! with jobs due, however many jobs those requesters queued. Each attempt:
//!
//! 1. reads the model from object storage,
//! 2. runs `mes-calc` with the model on stdin and the trace context in `TRACEPARENT`/`TRACESTATE`
//!    (so the engine's own spans join the order's trace),
//! 3. makes the order `priced` (with the quote) or `rejected` (with the engine's reason).
//!
//! An engine that crashes, hangs past its timeout or cannot get the model is retried with
//! back-off; after the last attempt the order is `failed` with the reason, never left hanging.

use backon::{BackoffBuilder as _, ExponentialBuilder};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use domain::{Material, OrderStatus};
use mes_calc::protocol::{self, Output};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use orderbook::{Change, OrderBook, TransitionFailure};
use platform::db::{Carrier, Corrupt, ReadError, StoredTrace, from_carrier, parse_column};
use platform::storage::{ObjectStorage, StorageError};
use sqlx::{PgConnection, PgPool};
use telemetry::attr::semconv::{PROCESS_COMMAND, PROCESS_EXIT_CODE, PROCESS_PID};
use telemetry::db::Traced;
use telemetry::propagation::{Activity, to_env, with_order};
use telemetry::{attr, spans};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::CalcSettings;

/// Wall time of one price calculation through the calc engine
/// (`hallmark.price_calculation.duration`). Labels: `material`, `outcome` (`priced`,
/// `rejected`, `failed`).
fn price_calculation() -> &'static opentelemetry::metrics::Histogram<f64> {
    static DURATION: std::sync::OnceLock<opentelemetry::metrics::Histogram<f64>> =
        std::sync::OnceLock::new();
    DURATION.get_or_init(|| {
        telemetry::metrics::seconds_histogram(
            "hallmark.price_calculation.duration",
            "Wall time of one price calculation through the calc engine",
        )
    })
}

/// What one run of the engine produced.
#[derive(Debug)]
pub(crate) enum Verdict {
    Priced(domain::pricing::Quote),
    Rejected { code: String, message: String },
}

/// How long a failed calculation waits before attempt `attempt + 1`: `first` after the first
/// attempt, doubling after each one after it (no jitter: the workers poll for due jobs anyway),
/// in whole milliseconds (the delay is stored as a PostgreSQL interval, which holds no
/// nanoseconds, and the back-off computes in floating point).
fn retry_delay(first: Duration, attempt: i32) -> Duration {
    let delay = ExponentialBuilder::new()
        .with_min_delay(first)
        .without_max_delay()
        .without_max_times()
        .build()
        .nth(usize::try_from(attempt - 1).unwrap_or(0))
        .unwrap_or(first);
    Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

/// Why a run produced nothing usable; worth another attempt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("cannot start the calc engine {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the calc engine did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the calc engine exited with {status}: {stderr}")]
    Crashed { status: String, stderr: String },
    #[error("the calc engine answered something unreadable: {output}")]
    BadOutput {
        /// The end of what it printed.
        output: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read the model: {0}")]
    Model(#[source] StorageError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The calc engine as a child process.
#[derive(Debug, Clone)]
pub(crate) struct CalcEngine {
    binary: PathBuf,
    timeout: Duration,
}

impl CalcEngine {
    pub fn new(binary: PathBuf, timeout: Duration) -> Self {
        Self { binary, timeout }
    }

    /// Runs the engine on `model` inside a CLIENT span around the process.
    pub async fn run(&self, material: Material, model: Bytes) -> Result<Verdict, RunError> {
        let cx = if telemetry::spans_enabled!() {
            spans::child(
                attr::span_names::CALC_ENGINE_RUN,
                SpanKind::Client,
                vec![
                    KeyValue::new(PROCESS_COMMAND, "mes-calc"),
                    KeyValue::new(attr::ORDER_MATERIAL, material.as_str()),
                ],
                &Context::current(),
            )
        } else {
            None
        };
        let result = spans::under(cx.as_ref(), self.run_process(material, model)).await;
        if let Err(err) = &result {
            let _entered = spans::enter(cx.as_ref());
            if let Some(cx) = &cx {
                spans::fail(cx, run_error_type(err), err.to_string());
            }
            tracing::warn!(error = %err, "calc engine run failed");
        }
        spans::end_in(cx.as_ref());
        result
    }

    async fn run_process(&self, material: Material, model: Bytes) -> Result<Verdict, RunError> {
        let mut child = tokio::process::Command::new(&self.binary)
            .arg("--material")
            .arg(material.as_str())
            .envs(Context::map_current(to_env))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RunError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if let Some(pid) = child.id() {
            spans::record(KeyValue::new(PROCESS_PID, i64::from(pid)));
        }
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feed = async move {
            // A broken pipe means the engine stopped reading; its exit status tells why.
            let _ = stdin.write_all(&model).await;
            drop(stdin);
        };
        let run = async {
            let (_, output) = tokio::join!(feed, child.wait_with_output());
            output
        };
        let output = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| RunError::Timeout(self.timeout))??;
        if let Some(code) = output.status.code() {
            spans::record(KeyValue::new(PROCESS_EXIT_CODE, i64::from(code)));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        match output.status.code() {
            Some(protocol::EXIT_PRICED) | Some(protocol::EXIT_REJECTED) => {
                match serde_json::from_str::<Output>(stdout.trim()) {
                    Ok(Output::Priced { quote, .. }) => Ok(Verdict::Priced(quote)),
                    Ok(Output::Rejected { code, message }) => {
                        Ok(Verdict::Rejected { code, message })
                    }
                    Err(source) => Err(RunError::BadOutput {
                        output: tail(&stdout),
                        source,
                    }),
                }
            }
            _ => Err(RunError::Crashed {
                status: output.status.to_string(),
                stderr: tail(&String::from_utf8_lossy(&output.stderr)),
            }),
        }
    }
}

/// What a customer may read about a failed calculation: the kind of trouble, in words, and
/// nothing of the engine's output, paths or errors.
fn customer_reason(err: &RunError) -> &'static str {
    match err {
        RunError::Timeout(_) => "the calculation did not finish in time",
        RunError::Model(_) => "the model could not be read from storage",
        RunError::Spawn { .. }
        | RunError::Crashed { .. }
        | RunError::BadOutput { .. }
        | RunError::Io(_) => "the calculation engine failed",
    }
}

fn run_error_type(err: &RunError) -> &'static str {
    match err {
        RunError::Spawn { .. } => "spawn_failed",
        RunError::Timeout(_) => "timeout",
        RunError::Crashed { .. } => "crashed",
        RunError::BadOutput { .. } => "bad_output",
        RunError::Model(_) => "model_unavailable",
        RunError::Io(_) => "io",
    }
}

/// The last few hundred characters of a process's output, for an error message.
fn tail(text: &str) -> String {
    let text = text.trim();
    let start = text
        .char_indices()
        .rev()
        .nth(400)
        .map_or(0, |(index, _)| index);
    text[start..].to_owned()
}

/// Queues the price calculation of an order, in the caller's transaction.
pub(crate) async fn enqueue(tx: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO calc_jobs (order_id, state, trace) VALUES ($1, 'pending', $2) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(platform::db::current_trace())
    .execute(&mut *tx)
    .db("INSERT calc_jobs")
    .await?;
    Ok(())
}

/// Drops a calculation that has not started, e.g. because the order was cancelled.
pub(crate) async fn cancel(tx: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calc_jobs SET state = 'cancelled', updated_at = now() \
         WHERE order_id = $1 AND state = 'pending'",
    )
    .bind(order_id)
    .execute(&mut *tx)
    .db("UPDATE calc_jobs")
    .await?;
    Ok(())
}

/// A claimed job.
struct Job {
    order_id: Uuid,
    attempt: i32,
    material: Material,
    model_key: String,
    trace: Carrier,
}

/// A job's row as a worker claims it, with what MES stored of its order.
#[derive(sqlx::FromRow)]
struct JobRow {
    order_id: Uuid,
    attempts: i32,
    trace: StoredTrace,
    material: String,
    model_key: String,
}

impl TryFrom<JobRow> for Job {
    type Error = Corrupt;

    fn try_from(row: JobRow) -> Result<Self, Corrupt> {
        Ok(Self {
            order_id: row.order_id,
            attempt: row.attempts,
            material: parse_column(row.order_id, "material", &row.material)?,
            model_key: row.model_key,
            trace: row.trace.0,
        })
    }
}

/// Claims due jobs and runs them until cancelled.
pub(crate) struct Worker {
    pub pool: PgPool,
    pub storage: ObjectStorage,
    pub orderbook: OrderBook,
    pub engine: CalcEngine,
    pub settings: CalcSettings,
    pub wake: Arc<Notify>,
}

/// How often an idle worker looks for due jobs (retries become due without a wake-up).
const POLL: Duration = Duration::from_secs(1);

/// Recording a calculation's outcome while the database is unavailable: 100 ms, doubling, at
/// most 5 s apart, for as long as the calculation timeout (the lease) allows.
const SETTLE_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_secs(5))
    .with_factor(2.0)
    .without_max_times();

impl Worker {
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            match self.claim().await {
                Ok(Some(job)) => self.process(job).await,
                Ok(None) => {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim a calc job, retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        }
    }

    /// Takes the next due job. Not traced: it is the worker polling (once a second when idle),
    /// under no order until it returns one, and would be a root trace of its own each time;
    /// the job's work is traced from its `price model` span on, in the order's trace.
    ///
    /// Fair between requesters: the next job is one of the requester with the fewest
    /// calculations running, among those the one whose last calculation started longest ago
    /// (never served first), and among its jobs the one due first. Two workers claiming at the
    /// same instant may both pick the same requester once; the next claims even it out.
    ///
    /// A job whose order's material does not read is claimed all the same: the error names the
    /// order, and the job is tried again when its lease ends, until the row is repaired.
    async fn claim(&self) -> Result<Option<Job>, ReadError> {
        let lease = self.settings.timeout + Duration::from_secs(30);
        let row: Option<JobRow> = sqlx::query_as(
            "WITH next AS ( \
                 SELECT c.order_id, o.requester FROM calc_jobs c \
                 JOIN orders o ON o.id = c.order_id \
                 LEFT JOIN calc_requesters q ON q.requester = o.requester \
                 WHERE (c.state = 'pending' AND c.not_before <= now()) \
                    OR (c.state = 'running' AND c.lease_until < now()) \
                 ORDER BY ( \
                     SELECT count(*) FROM calc_jobs r JOIN orders ro ON ro.id = r.order_id \
                     WHERE r.state = 'running' AND r.lease_until >= now() \
                       AND ro.requester = o.requester \
                 ), q.last_started NULLS FIRST, c.not_before \
                 LIMIT 1 FOR UPDATE OF c SKIP LOCKED \
             ), served AS ( \
                 INSERT INTO calc_requesters (requester, last_started) \
                 SELECT requester, clock_timestamp() FROM next \
                 ON CONFLICT (requester) DO UPDATE SET last_started = excluded.last_started \
             ) \
             UPDATE calc_jobs j SET state = 'running', attempts = attempts + 1, \
                 lease_until = now() + $1, updated_at = now() \
             FROM next, orders o \
             WHERE j.order_id = next.order_id AND o.id = j.order_id \
             RETURNING j.order_id, j.attempts, j.trace, o.material, o.model_key",
        )
        .bind(lease)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Job::try_from).transpose()?)
    }

    async fn process(&self, job: Job) {
        let parent = with_order(&from_carrier(&job.trace), job.order_id, Activity::Progress);
        let cx = if telemetry::spans_enabled!() {
            spans::child(
                attr::span_names::PRICE_MODEL,
                SpanKind::Internal,
                vec![
                    KeyValue::new(attr::ORDER_MATERIAL, job.material.as_str()),
                    KeyValue::new(attr::RETRY_COUNT, i64::from(job.attempt - 1)),
                ],
                &parent,
            )
        } else {
            None
        };
        // Without a span of its own, the work still runs for its order (log lines name it).
        let current = cx.clone().unwrap_or(parent);
        spans::under(Some(&current), self.price(job)).await;
        spans::end_in(cx.as_ref());
    }

    /// Prices `job`'s model and records the outcome, under the job's span.
    async fn price(&self, job: Job) {
        let started = Instant::now();
        let outcome = async {
            let model = self
                .storage
                .get(&job.model_key)
                .await
                .map_err(RunError::Model)?;
            self.engine.run(job.material, model).await
        }
        .await;
        let label = match &outcome {
            Ok(Verdict::Priced(_)) => "priced",
            Ok(Verdict::Rejected { .. }) => "rejected",
            Err(_) => "failed",
        };
        price_calculation().record(
            started.elapsed().as_secs_f64(),
            &[
                KeyValue::new("material", job.material.as_str()),
                KeyValue::new("outcome", label),
            ],
        );
        // A database restarting is waited out (up to the lease) rather than the calculation
        // being thrown away and run again once the lease ends.
        let mut backoff = SETTLE_RETRY.build();
        let mut result = self.settle(&job, &outcome).await;
        let give_up = Instant::now() + self.settings.timeout;
        while let Err(err) = &result
            && platform::db::is_unavailable(err)
            && let Some(delay) = backoff.next()
            && Instant::now() + delay < give_up
        {
            tracing::warn!(error = %err, "database unavailable, retrying to record the calc result");
            tokio::time::sleep(delay).await;
            result = self.settle(&job, &outcome).await;
        }
        if let Err(err) = result {
            Context::map_current(|cx| spans::fail(cx, "database", err.to_string()));
            tracing::warn!(error = %err, "cannot record a calc result; the job will run again when its lease ends");
        }
    }

    /// Records the attempt's outcome: a status change, a retry, or the final failure.
    async fn settle(
        &self,
        job: &Job,
        outcome: &Result<Verdict, RunError>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (change, job_state) = match outcome {
            Ok(Verdict::Priced(quote)) => (
                Some(Change::to(OrderStatus::Priced).with_price(quote.clone())),
                "done",
            ),
            Ok(Verdict::Rejected { code, message }) => {
                spans::record(KeyValue::new(attr::ERROR_CODE, code.clone()));
                (
                    Some(
                        Change::to(OrderStatus::Rejected)
                            .with_reason(code.clone(), message.clone()),
                    ),
                    "done",
                )
            }
            Err(err) if job.attempt < self.settings.max_attempts => {
                let delay = retry_delay(self.settings.retry_delay, job.attempt);
                spans::record(KeyValue::new(attr::ERROR_CODE, run_error_type(err)));
                telemetry::metrics::record_failure("price", "pricing", run_error_type(err));
                sqlx::query(
                    "UPDATE calc_jobs SET state = 'pending', not_before = now() + $2, \
                         last_error = $3, lease_until = NULL, updated_at = now() \
                     WHERE order_id = $1",
                )
                .bind(job.order_id)
                .bind(delay)
                .bind(err.to_string())
                .execute(&mut *tx)
                .db("UPDATE calc_jobs")
                .await?;
                tx.commit().await?;
                tracing::warn!(error = %err, attempt = job.attempt, delay_ms = delay.as_millis() as u64, "price calculation failed, retrying later");
                return Ok(());
            }
            Err(err) => {
                spans::record(KeyValue::new(attr::ERROR_CODE, "calc_engine_failed"));
                telemetry::metrics::record_failure("price", "pricing", run_error_type(err));
                // The customer reads this: what happened and what follows, never the engine's
                // output (paths, panics); the cause goes to the log and the calc job's row.
                tracing::error!(
                    error = err as &dyn std::error::Error,
                    attempts = job.attempt,
                    "price calculation failed for good"
                );
                let message = format!(
                    "the price could not be calculated after {} attempts ({}); the workshop has been notified",
                    job.attempt,
                    customer_reason(err)
                );
                (
                    Some(
                        Change::to(OrderStatus::Failed).with_reason("calc_engine_failed", message),
                    ),
                    "failed",
                )
            }
        };
        let mut final_state = job_state;
        if let Some(change) = change {
            match self
                .orderbook
                .transition(&mut tx, job.order_id, change)
                .await
            {
                Ok(_) => {}
                // The order moved on without us (e.g. it was cancelled while being priced).
                Err(TransitionFailure::Illegal(err)) => {
                    tracing::info!(error = %err, "price result discarded");
                    final_state = "cancelled";
                }
                Err(TransitionFailure::NotFound(_)) => final_state = "cancelled",
                Err(TransitionFailure::Database(err)) => return Err(err),
                Err(TransitionFailure::Corrupt(err)) => return Err(err.into()),
            }
        }
        sqlx::query(
            "UPDATE calc_jobs SET state = $2, lease_until = NULL, updated_at = now() \
             WHERE order_id = $1",
        )
        .bind(job.order_id)
        .bind(final_state)
        .execute(&mut *tx)
        .db("UPDATE calc_jobs")
        .await?;
        tx.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_calculation_waits_the_first_delay_then_double_each_time() {
        let first = Duration::from_millis(200);
        let delays: Vec<Duration> = (1..=4).map(|a| retry_delay(first, a)).collect();
        assert_eq!(delays, [200, 400, 800, 1600].map(Duration::from_millis));
    }

    #[test]
    fn a_claimed_job_whose_material_does_not_read_is_an_error_naming_the_order() {
        let order_id = Uuid::now_v7();
        let row = |material: &str| JobRow {
            order_id,
            attempts: 1,
            trace: StoredTrace::default(),
            material: material.into(),
            model_key: format!("models/{order_id}/ring.stl"),
        };
        assert_eq!(
            Job::try_from(row("gold_750")).unwrap().material,
            Material::Gold750
        );
        let Err(err) = Job::try_from(row("unobtainium")) else {
            panic!("an unknown material read");
        };
        assert_eq!((err.order_id, err.column), (order_id, "material"));
        assert!(err.to_string().contains("\"unobtainium\""), "{err}");
    }
}
