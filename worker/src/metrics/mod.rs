//! Prometheus metrics, served as OpenMetrics text on `/metrics`.
//!
//! The executor records what it sees per attempt (finished attempts, attempt duration, pickup
//! latency, in-flight) and the completer the final states its writes reached; queue depth is a query run at scrape time (bounded by a statement
//! timeout, only non-final states, so a large history never makes a scrape slow); LISTEN
//! reconnects are read from the listener's own counter at scrape time.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lettuce_job_attempts_total` | counter | `kind`, `queue`, `outcome` (`completed`, `error`, `discarded`, `snoozed`, `cancelled`, `handed_back`, `lost`): attempts, so an `error` is a retry unless the attempts ran out |
//! | `lettuce_jobs_final_total` | counter | `kind`, `queue`, `state` (`completed`, `discarded`, `cancelled`): jobs this process's writes left in a final state |
//! | `lettuce_job_attempt_duration_seconds` | histogram | `kind`, `queue` |
//! | `lettuce_job_pickup_latency_seconds` | histogram | `queue` (from `run_at` to the claim's `attempted_at`) |
//! | `lettuce_jobs_in_flight` | gauge | `queue` |
//! | `lettuce_queue_depth` | gauge | `queue`, `state` (`available`, `scheduled`, `running`, `retryable`) |
//! | `lettuce_listen_reconnects_total` | counter | — |
//! | `lettuce_queue_oldest_available_age_seconds` | gauge | `queue` (whole database, read at scrape; 0 when none waits) |
//! | `lettuce_queue_slots` | gauge | `queue` (this process's `LETTUCE_QUEUES` concurrency) |
//! | `lettuce_db_oldest_transaction_age_seconds` | gauge | — (the oldest transaction another session holds open in this database, read at scrape: while it lasts vacuum cannot clean the queue) |
//! | `lettuce_db_oldest_xmin_age` | gauge | — (the largest `age(backend_xmin)` of those sessions, in transactions) |
//! | `lettuce_build_info` | gauge (1) | `version` |
//! | `lettuce_jobs_rescued_total` | counter | — (jobs this process's rescuer took back from expired leases) |
//! | `lettuce_late_writes_refused_total` | counter | — (outcomes fenced out: the job was rescued, cancelled or reassigned) |
//! | `lettuce_jobs_handed_back_total` | counter | — (running jobs returned unspent at shutdown) |
//! | `lettuce_outcomes_abandoned_total` | counter | — (outcomes not even writable as `discarded`, left to rescue) |
//! | `lettuce_running_cancelled_total` | counter | — (running attempts stopped by an operator cancel) |
//! | `lettuce_telemetry_heartbeats_total` | counter | `result` (`sent`, `failed`): telemetry POSTs of this process |
//! | `lettuce_provider_rate_limited_total` | counter | `provider` (`github`, …): API answers that said "rate limited" (primary or secondary); the job snoozed |
//! | `lettuce_db_pool_connections` | gauge | `pool` (`jobs`, `probe`), `state` (`idle`, `in_use`) |
//! | `lettuce_db_pool_max_connections` | gauge | `pool` |
//! | `lettuce_db_pool_waiting` | gauge | `pool` (callers waiting for a connection) |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` | counter, gauges | — (read from `/proc/self` at scrape) |
//!
//! Configured queues are exported from the start (0 in flight, 0 age), not only once a job ran.
//! The depth and age series are whole-database figures that every replica exports: aggregate
//! them with `max by (queue, …)`, never `sum`.
//!
//! Label values come from job rows (queue and kind names), so they are written only in the
//! name alphabet `[A-Za-z0-9_.:-]`, at most [`MAX_LABEL_LEN`] bytes: any other character becomes
//! `_` (see [`label`]). The schema refuses such queue names already; this holds even for a row
//! that reached the table some other way, so no stored text can add a line to `/metrics`.
//!
//! Here: the families and their registration, and what the executor and completer record;
//! `scrape.rs` refreshes the values read at scrape time and renders; `process.rs` holds the
//! `process_*` series.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::db::DbPool;
use crate::db::listener::ListenerStats;
use crate::heartbeat::HeartbeatHandle;

mod process;
mod scrape;
mod series;

use process::ProcessMetrics;
pub use series::JobSeries;

/// The longest label value written; longer ones are cut.
pub const MAX_LABEL_LEN: usize = 128;

/// `value` as a label value: characters outside `[A-Za-z0-9_.:-]` become `_`, cut to
/// [`MAX_LABEL_LEN`]. Names that follow the schema's rules pass unchanged.
pub fn label(value: &str) -> String {
    value
        .chars()
        .take(MAX_LABEL_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Names (without `_total`) and help of the counters mirrored from `RuntimeStats`, in the
/// order of [`Metrics::runtime_values`].
const RUNTIME_COUNTERS: [(&str, &str); 5] = [
    (
        "lettuce_jobs_rescued",
        "Jobs this process's rescuer took back from expired leases",
    ),
    (
        "lettuce_late_writes_refused",
        "Outcomes refused by the fence: the job was rescued, cancelled or reassigned since the attempt began",
    ),
    (
        "lettuce_jobs_handed_back",
        "Running jobs handed back unspent at shutdown",
    ),
    (
        "lettuce_outcomes_abandoned",
        "Outcomes the database refused even as discarded, left to lease expiry and rescue",
    ),
    (
        "lettuce_running_cancelled",
        "Running attempts stopped because an operator cancelled their job",
    ),
];

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindQueueOutcome {
    kind: String,
    queue: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindQueueState {
    kind: String,
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindQueue {
    kind: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

/// A handle on `lettuce_provider_rate_limited_total`, for the provider clients: clone it
/// freely. A default handle counts into a family no registry serves (tests, one-off tools).
#[derive(Clone, Debug, Default)]
pub struct RateLimitCounter(Family<ProviderLabel, Counter>);

impl RateLimitCounter {
    /// Counts one rate-limited answer from `provider`.
    pub fn inc(&self, provider: &str) {
        self.0
            .get_or_create(&ProviderLabel {
                provider: label(provider),
            })
            .inc();
    }

    /// The count so far for `provider`.
    pub fn get(&self, provider: &str) -> u64 {
        self.0
            .get_or_create(&ProviderLabel {
                provider: label(provider),
            })
            .get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: String,
}

/// Histogram buckets from `start` seconds, doubling `n` times.
#[derive(Clone, Debug)]
struct Buckets {
    start: f64,
    n: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, 2.0, self.n))
    }
}

/// Every metric of this process. One per process, shared by the runtime and the HTTP server.
pub struct Metrics {
    registry: Registry,
    attempts: Family<KindQueueOutcome, Counter>,
    final_states: Family<KindQueueState, Counter>,
    attempt_duration: Family<KindQueue, Histogram, Buckets>,
    pickup_latency: Family<QueueLabel, Histogram, Buckets>,
    in_flight: Family<QueueLabel, Gauge>,
    /// The attempt series per (kind, queue), see `series.rs`.
    series: series::SeriesCache,
    queue_depth: Family<QueueState, Gauge>,
    listen_reconnects: Counter,
    task_restarts: Family<TaskLabel, Counter>,
    oldest_available: Family<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    queue_slots: Family<QueueLabel, Gauge>,
    oldest_transaction: Gauge<f64, std::sync::atomic::AtomicU64>,
    oldest_xmin: Gauge,
    /// The queues this process serves: their age series stay (at 0) when nothing waits.
    configured: Mutex<Vec<String>>,
    /// The pool the depth query uses; set once the schema is applied.
    pool: Mutex<Option<DbPool>>,
    /// The runtime's counters, mirrored into `runtime_counters` at scrape.
    runtime: Mutex<Option<Arc<crate::runtime::RuntimeStats>>>,
    runtime_counters: [Counter; 5],
    /// The listener's counters; set when the runtime starts it.
    listener: Mutex<Option<Arc<ListenerStats>>>,
    /// The telemetry heartbeat's counters, mirrored into `heartbeats` at scrape.
    heartbeat: Mutex<Option<HeartbeatHandle>>,
    heartbeats: Family<ResultLabel, Counter>,
    provider_rate_limited: RateLimitCounter,
    /// The job pool (the probe pool is `pool`); their statistics are read at scrape.
    job_pool: Mutex<Option<DbPool>>,
    pool_connections: Family<PoolState, Gauge>,
    pool_max: Family<PoolLabel, Gauge>,
    pool_waiting: Family<PoolLabel, Gauge>,
    process: ProcessMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let attempts = Family::<KindQueueOutcome, Counter>::default();
        let final_states = Family::<KindQueueState, Counter>::default();
        let heartbeats = Family::<ResultLabel, Counter>::default();
        for result in ["sent", "failed"] {
            let _ = heartbeats.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        let pool_connections = Family::<PoolState, Gauge>::default();
        let pool_max = Family::<PoolLabel, Gauge>::default();
        let pool_waiting = Family::<PoolLabel, Gauge>::default();
        let process = ProcessMetrics::default();
        process.register(&mut registry);
        // 1 ms .. ~9 h: covers no-op jobs and long indexing runs alike.
        let attempt_duration = Family::new_with_constructor(Buckets {
            start: 0.001,
            n: 25,
        });
        // 1 ms .. ~2.3 h.
        let pickup_latency = Family::new_with_constructor(Buckets {
            start: 0.001,
            n: 24,
        });
        let in_flight = Family::<QueueLabel, Gauge>::default();
        let queue_depth = Family::<QueueState, Gauge>::default();
        let listen_reconnects = Counter::default();
        let task_restarts = Family::<TaskLabel, Counter>::default();
        let oldest_available =
            Family::<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let queue_slots = Family::<QueueLabel, Gauge>::default();
        let oldest_transaction = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let oldest_xmin = Gauge::default();
        registry.register(
            "lettuce_db_oldest_transaction_age_seconds",
            "Seconds the oldest transaction of another session in this database has been open (read at scrape; vacuum cannot clean the queue while it lasts)",
            oldest_transaction.clone(),
        );
        registry.register(
            "lettuce_db_oldest_xmin_age",
            "Transactions behind the oldest snapshot another session in this database holds (read at scrape)",
            oldest_xmin.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: label(crate::VERSION),
            })
            .set(1);
        registry.register(
            "lettuce_build_info",
            "The worker's version (always 1)",
            build_info,
        );
        registry.register(
            "lettuce_queue_oldest_available_age_seconds",
            "Seconds since the oldest available job of each queue became runnable (whole database, read at scrape; aggregate with max)",
            oldest_available.clone(),
        );
        registry.register(
            "lettuce_queue_slots",
            "Concurrent attempts this process runs per queue (LETTUCE_QUEUES)",
            queue_slots.clone(),
        );
        registry.register(
            "lettuce_task_restarts",
            "Long-running tasks of this process (producers, lease keeper, listener, completer, maintenance) that ended unexpectedly or panicked and were restarted",
            task_restarts.clone(),
        );
        registry.register(
            "lettuce_job_attempts",
            "Attempts finished, by job kind, queue and outcome (an error is a retry unless the attempts ran out)",
            attempts.clone(),
        );
        registry.register(
            "lettuce_jobs_final",
            "Jobs this process's writes left in a final state, by kind, queue and state",
            final_states.clone(),
        );
        registry.register(
            "lettuce_telemetry_heartbeats",
            "Telemetry heartbeat POSTs of this process, by result",
            heartbeats.clone(),
        );
        let provider_rate_limited = RateLimitCounter::default();
        registry.register(
            "lettuce_provider_rate_limited",
            "Rate-limited answers from a repository provider's API (the job snoozed), by provider",
            provider_rate_limited.0.clone(),
        );
        registry.register(
            "lettuce_db_pool_connections",
            "Open database connections of this process, by pool and state",
            pool_connections.clone(),
        );
        registry.register(
            "lettuce_db_pool_max_connections",
            "The size limit of each database pool",
            pool_max.clone(),
        );
        registry.register(
            "lettuce_db_pool_waiting",
            "Callers waiting for a connection, by pool",
            pool_waiting.clone(),
        );
        registry.register(
            "lettuce_job_attempt_duration_seconds",
            "Wall-clock time of one attempt, from start to outcome",
            attempt_duration.clone(),
        );
        registry.register(
            "lettuce_job_pickup_latency_seconds",
            "Time from a job's run_at to the start of its attempt",
            pickup_latency.clone(),
        );
        registry.register(
            "lettuce_jobs_in_flight",
            "Attempts running in this process",
            in_flight.clone(),
        );
        registry.register(
            "lettuce_queue_depth",
            "Jobs in non-final states, by queue and state (whole database, read at scrape)",
            queue_depth.clone(),
        );
        registry.register(
            "lettuce_listen_reconnects",
            "Times the LISTEN connection was re-established after a drop",
            listen_reconnects.clone(),
        );
        let runtime_counters: [Counter; 5] = Default::default();
        for (counter, (name, help)) in runtime_counters.iter().zip(RUNTIME_COUNTERS) {
            registry.register(name, help, counter.clone());
        }
        Metrics {
            runtime: Mutex::new(None),
            runtime_counters,
            registry,
            attempts,
            final_states,
            attempt_duration,
            pickup_latency,
            in_flight,
            series: Default::default(),
            queue_depth,
            listen_reconnects,
            task_restarts,
            oldest_available,
            queue_slots,
            oldest_transaction,
            oldest_xmin,
            configured: Mutex::new(Vec::new()),
            pool: Mutex::new(None),
            listener: Mutex::new(None),
            heartbeat: Mutex::new(None),
            heartbeats,
            provider_rate_limited,
            job_pool: Mutex::new(None),
            pool_connections,
            pool_max,
            pool_waiting,
            process,
        }
    }
}

impl Metrics {
    /// The handle provider clients count rate-limited answers with.
    pub fn rate_limit_counter(&self) -> RateLimitCounter {
        self.provider_rate_limited.clone()
    }

    /// The pool the scrape-time depth query uses.
    pub fn set_pool(&self, pool: DbPool) {
        *self.pool.lock().expect("metrics lock") = Some(pool);
    }

    /// The pool jobs run on: its statistics are exported as `pool="jobs"`.
    pub fn set_job_pool(&self, pool: DbPool) {
        *self.job_pool.lock().expect("metrics lock") = Some(pool);
    }

    /// The telemetry heartbeat whose sent/failed counts are exported.
    pub fn set_heartbeat(&self, handle: HeartbeatHandle) {
        *self.heartbeat.lock().expect("metrics lock") = Some(handle);
    }

    /// The runtime whose counters are exported.
    pub fn set_runtime_stats(&self, stats: Arc<crate::runtime::RuntimeStats>) {
        *self.runtime.lock().expect("metrics lock") = Some(stats);
    }

    /// The listener whose reconnects are reported.
    pub fn set_listener(&self, stats: Arc<ListenerStats>) {
        *self.listener.lock().expect("metrics lock") = Some(stats);
    }

    /// The queues this process serves and their slots: their series start at 0.
    pub fn set_queues(&self, queues: &[(String, usize)]) {
        let mut configured = self.configured.lock().expect("metrics lock");
        for (name, slots) in queues {
            let q = QueueLabel { queue: label(name) };
            self.queue_slots
                .get_or_create(&q)
                .set(i64::try_from(*slots).unwrap_or(i64::MAX));
            let _ = self.in_flight.get_or_create(&q);
            let _ = self.oldest_available.get_or_create(&q);
            configured.push(label(name));
        }
    }

    /// A supervised task (`producer:<queue>`, `lease`, `listener`, `completer`, a maintenance
    /// task's name) ended unexpectedly and is being restarted.
    pub fn task_restarted(&self, task: &str) {
        self.task_restarts
            .get_or_create(&TaskLabel { task: label(task) })
            .inc();
    }
}

#[cfg(test)]
mod tests;
