//! The job runtime: producers claim, executors run one attempt each, the completer writes
//! outcomes in batches, the lease keeper heartbeats, maintenance tasks rescue and prune.
//!
//! Ownership: producers own claiming; executors own one attempt; the completer is the only
//! writer of outcomes; the lease keeper is the only writer of leases. Shutdown is two-phase:
//! `stop_claiming` ends producers, then after `LETTUCE_SHUTDOWN_GRACE_MS` `cancel_jobs` cuts
//! what is still running and hands it back as `available`.

pub(crate) mod claim_cursor;
pub mod completer;
pub mod executor;
pub mod lease;
pub mod maintenance;
pub mod outcome;
pub mod periodic;
pub mod producer;
pub(crate) mod supervise;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::db::listener::{ListenerStats, Wakers};
use crate::db::workers::WorkerRow;
use crate::db::{self, DbPool};
use crate::handlers::{Registry, Services};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::heartbeat::{self, HeartbeatConfig, HeartbeatHandle};
use outcome::RetryPolicy;

/// Attempts in flight in this process, by job id. The lease keeper reads it; executors add;
/// the completer removes once the outcome is written. Keyed by id with the Fx hash (a multiply
/// per key: ids are ours, not an attacker's, and SipHash was a visible share of the per-job CPU).
pub type Inflight = Arc<std::sync::Mutex<rustc_hash::FxHashMap<i64, Held>>>;

/// One attempt this process holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub attempt: i32,
    /// Cancels the attempt (lease lost or shutdown past grace).
    pub cancel: CancellationToken,
    /// Set by the lease keeper when the database no longer shows this attempt as ours, and by
    /// the control listener when an operator cancelled the job: nothing of it may be written.
    pub lost: Arc<AtomicBool>,
    /// Set (with `lost`) when the attempt was lost to an operator's cancel.
    pub cancelled: Arc<AtomicBool>,
    /// The attempt's span, which the lease heartbeat links to; `None` when not exported.
    pub span: Option<opentelemetry::trace::SpanContext>,
}

/// Counters shared with `/metrics` and tests.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    pub claimed: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub refused_late_writes: AtomicU64,
    pub rescued: AtomicU64,
    pub handed_back: AtomicU64,
    /// Outcomes that could not be written at all (left to lease expiry and rescue).
    pub abandoned_outcomes: AtomicU64,
    /// Running attempts cut short because an operator cancelled their job.
    pub cancelled_running: AtomicU64,
}

/// What the runtime needs besides configuration.
pub struct Deps {
    pub pool: DbPool,
    pub registry: Registry,
    pub health: Arc<Health>,
    pub services: Arc<Services>,
    /// The daily telemetry heartbeat, present only when boot resolved telemetry as effective
    /// (self-hosted with a verified license). `None` (dev mode) sends nothing.
    pub heartbeat: Option<HeartbeatConfig>,
    /// Per-attempt metrics, also read by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The verified license's claims, for the daily license watch; `None` when not self-hosted.
    pub license: Option<crate::license::Claims>,
}

/// State shared by the runtime's tasks.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub pool: DbPool,
    pub registry: Registry,
    pub kinds: Vec<String>,
    pub services: Arc<Services>,
    pub worker: WorkerRow,
    pub inflight: Inflight,
    pub policy: RetryPolicy,
    pub stats: Arc<RuntimeStats>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Parent of every attempt's token; cancelled in shutdown phase two.
    pub cancel_jobs: CancellationToken,
    /// Each claim loop's sign of life, for the watchdog.
    pub ticks: Arc<supervise::Ticks>,
    pub executors: TaskTracker,
    pub completions: mpsc::UnboundedSender<completer::Finished>,
}

impl Shared {
    /// Every statement error of the runtime passes here. A read-only refusal (a standby after
    /// failover) drops the pool's idle connections, so the next ones reach whichever server
    /// `DATABASE_URL` names now, and marks the process not ready until a write succeeds.
    pub fn database_failed(&self, e: &db::DbError) {
        if db::is_read_only(e) {
            if !self.health.is_unready(READ_ONLY_KEY) {
                tracing::error!(error = %e, "the database is read-only (a standby?); dropping connections until a writable server answers");
            }
            self.health
                .set_unready(READ_ONLY_KEY, "database is read-only");
            self.pool.retain(|_, _| false);
        }
    }

    /// A write went through: the server is writable again.
    pub fn database_wrote(&self) {
        if self.health.is_unready(READ_ONLY_KEY) {
            self.health.clear_unready(READ_ONLY_KEY);
            tracing::info!("the database accepts writes again");
        }
    }
}

/// `/readyz`'s key for a read-only server.
const READ_ONLY_KEY: &str = "read_only";

/// A handle to a running runtime's counters.
#[derive(Clone)]
pub struct RuntimeHandle {
    pub worker_id: String,
    pub stats: Arc<RuntimeStats>,
    pub listener: Arc<ListenerStats>,
    /// The telemetry heartbeat's trigger and counters, when it runs in this process.
    pub heartbeat: Option<HeartbeatHandle>,
    /// Every periodic task's last activation.
    pub tasks: periodic::TaskBoard,
}

/// Runs the worker until `shutdown` resolves, then drains. Returns once every attempt was
/// written (or handed back) and the presence row is gone.
pub async fn run(
    config: Arc<Config>,
    deps: Deps,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(RuntimeHandle),
) -> Result<(), db::DbError> {
    let queues: Vec<String> = config.queues.iter().map(|q| q.name.clone()).collect();
    let worker = WorkerRow::for_this_process(queues.clone());
    db::workers::register(&deps.pool, &worker).await?;

    let stop_claiming = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let cancel_jobs = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let inflight: Inflight = Arc::default();
    let stats = Arc::new(RuntimeStats::default());
    let shared = Arc::new(Shared {
        config: config.clone(),
        pool: deps.pool.clone(),
        kinds: deps.registry.kinds(),
        registry: deps.registry,
        services: deps.services,
        worker: worker.clone(),
        inflight: inflight.clone(),
        policy: RetryPolicy {
            base: config.retry_base,
            max: config.retry_max,
        },
        stats: stats.clone(),
        metrics: deps.metrics.clone(),
        health: deps.health.clone(),
        cancel_jobs: cancel_jobs.clone(),
        ticks: Arc::new(supervise::Ticks::new(&queues)),
        executors: TaskTracker::new(),
        completions: tx,
    });

    // Background tasks: listener, lease keeper, maintenance. They outlive the producers so
    // leases stay fresh while in-flight jobs drain.
    let background = TaskTracker::new();
    let wakers: Wakers = Arc::new(
        queues
            .iter()
            .map(|q| (q.clone(), Arc::new(Notify::new())))
            .collect(),
    );
    let listener_stats = Arc::new(ListenerStats::default());
    deps.metrics.set_listener(listener_stats.clone());
    deps.metrics.set_runtime_stats(stats.clone());
    deps.metrics.set_job_pool(deps.pool.clone());
    deps.metrics.set_queues(
        &config
            .queues
            .iter()
            .map(|q| (q.name.clone(), q.concurrency))
            .collect::<Vec<_>>(),
    );
    let (listen_url, listen_var) = config.listen_url();
    let pg_config = db::parse_url(listen_url)?;
    let tls = db::tls_for(listen_url)?;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    if listens(&pg_config, &tls, &deps.pool, listen_var, config.poll_interval).await {
        let (wakers, stats, stop) = (
            wakers.clone(),
            listener_stats.clone(),
            stop_background.clone(),
        );
        background.spawn(supervise::supervise(
            "listener".into(),
            deps.metrics.clone(),
            stop_background.clone(),
            move || {
                db::listener::run(
                    pg_config.clone(),
                    tls.clone(),
                    wakers.clone(),
                    control_tx.clone(),
                    stats.clone(),
                    stop.clone(),
                )
            },
        ));
    }
    background.spawn(control(shared.clone(), control_rx, stop_background.clone()));
    {
        let (shared, stop) = (shared.clone(), stop_background.clone());
        background.spawn(supervise::supervise(
            "lease".into(),
            deps.metrics.clone(),
            stop_background.clone(),
            move || lease::run(shared.clone(), stop.clone()),
        ));
    }
    let tasks = periodic::TaskBoard::default();
    maintenance::spawn_all(
        &background,
        &shared,
        deps.license.clone(),
        &tasks,
        stop_background.clone(),
    );
    background.spawn(supervise::watchdog(
        shared.ticks.clone(),
        deps.health.clone(),
        supervise::stall_limit(config.poll_interval),
        stop_background.clone(),
    ));
    let heartbeat = deps.heartbeat.and_then(|cfg| {
        heartbeat::spawn(
            &background,
            cfg,
            deps.pool.clone(),
            worker.id.clone(),
            &tasks,
            stop_background.clone(),
            deps.metrics.clone(),
        )
        // A heartbeat that cannot start must not stop jobs; the 7-day warning is lost too,
        // so say so loudly.
        .inspect_err(|e| tracing::error!(error = %e, "telemetry heartbeat not started"))
        .ok()
    });
    if let Some(h) = &heartbeat {
        deps.metrics.set_heartbeat(h.clone());
    }
    let completer_closed = CancellationToken::new();
    let slots = config.total_concurrency();
    let completer = tokio::spawn(completer::run(
        shared.clone(),
        rx,
        completer_closed.clone(),
        completer::batch_size(slots),
    ));

    let producers = TaskTracker::new();
    for q in &config.queues {
        let slots = Arc::new(Semaphore::new(q.concurrency));
        let (shared, queue, wake, stop) = (
            shared.clone(),
            q.name.clone(),
            wakers[&q.name].clone(),
            stop_claiming.clone(),
        );
        // The slots outlive a restart: attempts started before it still hold theirs.
        producers.spawn(supervise::supervise(
            format!("producer:{}", q.name),
            deps.metrics.clone(),
            stop_claiming.clone(),
            move || {
                producer::run(
                    shared.clone(),
                    queue.clone(),
                    slots.clone(),
                    wake.clone(),
                    stop.clone(),
                )
            },
        ));
    }
    producers.close();
    deps.health.set_ready();
    tracing::info!(
        version = crate::VERSION,
        worker_id = %worker.id,
        queues = %config.queues.iter().map(|q| format!("{}={}", q.name, q.concurrency)).collect::<Vec<_>>().join(","),
        kinds = %shared.kinds.join(","),
        "worker ready"
    );
    on_start(RuntimeHandle {
        worker_id: worker.id.clone(),
        stats: stats.clone(),
        listener: listener_stats,
        heartbeat,
        tasks,
    });

    shutdown.await;

    // Phase one: stop claiming and let in-flight attempts finish within the grace.
    deps.health.set_draining();
    let in_flight_at_stop = inflight.lock().expect("inflight lock").len();
    tracing::info!(
        in_flight = in_flight_at_stop,
        grace_ms = config.shutdown_grace.as_millis() as u64,
        "draining"
    );
    stop_claiming.cancel();
    producers.wait().await;
    shared.executors.close();
    if tokio::time::timeout(config.shutdown_grace, shared.executors.wait())
        .await
        .is_err()
    {
        // Phase two: cut what is left; executors hand those jobs back.
        let left = inflight.lock().expect("inflight lock").len();
        tracing::warn!(
            handed_back = left,
            "shutdown grace over; handing unfinished jobs back"
        );
        cancel_jobs.cancel();
        shared.executors.wait().await;
    }
    // Every executor is done and has queued its outcome: let the completer drain and stop.
    // Bound the wait in case the database is gone (leases then expire and another worker
    // rescues the jobs).
    completer_closed.cancel();
    drop(shared);
    let drain_limit = Duration::from_secs(10);
    let mut completer = completer;
    if tokio::time::timeout(drain_limit, &mut completer)
        .await
        .is_err()
    {
        tracing::error!(
            "could not write final outcomes within 10s; their leases will expire and another worker will rescue them"
        );
        completer.abort();
    }
    stop_background.cancel();
    background.close();
    background.wait().await;
    if let Err(e) = db::workers::deregister(&deps.pool, &worker.id).await {
        tracing::warn!(error = %e, "could not remove this worker's presence row; it will be swept as stale");
    }
    tracing::info!(
        completed = stats.completed.load(Ordering::Relaxed),
        handed_back = stats.handed_back.load(Ordering::Relaxed),
        "worker stopped"
    );
    Ok(())
}

/// How long boot waits for its own NOTIFY to come back before it concludes that notifications
/// do not arrive (the round trip takes milliseconds on a direct connection).
const NOTIFY_ROUND_TRIP_LIMIT: Duration = Duration::from_millis(1500);

/// Whether this worker keeps a LISTEN connection: only when a NOTIFY sent over the pool comes
/// back over the URL LISTEN uses. When it does not (`DATABASE_URL` through a transaction pooler
/// and no `LETTUCE_LISTEN_DATABASE_URL`), says so once and the producers only poll. A round trip
/// that fails outright (the server is away) is no verdict: the listener's reconnect loop takes it.
async fn listens(
    cfg: &tokio_postgres::Config,
    tls: &db::Tls,
    pool: &DbPool,
    listen_var: &str,
    poll_interval: Duration,
) -> bool {
    match db::listener::notifications_arrive(cfg, tls, pool, NOTIFY_ROUND_TRIP_LIMIT).await {
        Ok(Some(took)) => {
            tracing::debug!(took_ms = took.as_millis() as u64, "notifications arrive");
            true
        }
        Ok(None) => {
            tracing::warn!(
                variable = listen_var,
                poll_interval_ms = poll_interval.as_millis() as u64,
                "notifications do not arrive over {listen_var} (a transaction pooler such as PgBouncer?): no LISTEN, the worker polls every {} ms; set LETTUCE_LISTEN_DATABASE_URL to a direct connection to be woken at once",
                poll_interval.as_millis()
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, variable = listen_var, "could not check that notifications arrive; listening anyway");
            true
        }
    }
}

/// Applies control messages from the listener until `stop`: a cancel stops the attempt this
/// process runs for that job, if any, within the time the notification takes to arrive.
async fn control(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<db::listener::Control>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            m = rx.recv() => m,
        };
        let Some(db::listener::Control::Cancel(id)) = message else {
            return;
        };
        if let Some(held) = shared.inflight.lock().expect("inflight lock").get(&id) {
            held.cancelled.store(true, Ordering::Release);
            held.lost.store(true, Ordering::Release);
            held.cancel.cancel();
        }
    }
}

/// Sleeps `d` unless `stop` fires first; returns false when stopped.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// A random number in `[0, 1)`.
pub(crate) fn jitter() -> f64 {
    rand::random::<f64>()
}
