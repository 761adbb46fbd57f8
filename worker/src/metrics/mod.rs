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

use std::sync::{Arc, Mutex};
use std::time::Duration;

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

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

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

/// The `process_*` series.
#[derive(Default)]
struct ProcessMetrics {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: FloatGauge,
}

impl ProcessMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of this process, in seconds",
            self.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process, in bytes",
            self.resident_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory of this process, in bytes",
            self.virtual_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of this process",
            self.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The open file descriptor limit of this process",
            self.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of this process, in seconds since the Unix epoch",
            self.start_time_seconds.clone(),
        );
    }

    fn refresh(&self) {
        let s = process::sample();
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(cpu) = s.cpu_seconds {
            let seen = self.cpu_seconds.get();
            if cpu > seen {
                self.cpu_seconds.inc_by(cpu - seen);
            }
        }
        if let Some(v) = s.resident_bytes {
            self.resident_bytes.set(int(v));
        }
        if let Some(v) = s.virtual_bytes {
            self.virtual_bytes.set(int(v));
        }
        if let Some(v) = s.open_fds {
            self.open_fds.set(int(v));
        }
        if let Some(v) = s.max_fds {
            self.max_fds.set(int(v));
        }
        if let Some(v) = s.start_time_seconds {
            self.start_time_seconds.set(v);
        }
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
    queue_depth: Family<QueueState, Gauge>,
    listen_reconnects: Counter,
    task_restarts: Family<TaskLabel, Counter>,
    oldest_available: Family<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    queue_slots: Family<QueueLabel, Gauge>,
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
            queue_depth,
            listen_reconnects,
            task_restarts,
            oldest_available,
            queue_slots,
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

    fn runtime_values(stats: &crate::runtime::RuntimeStats) -> [u64; 5] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            stats.rescued.load(Relaxed),
            stats.refused_late_writes.load(Relaxed),
            stats.handed_back.load(Relaxed),
            stats.abandoned_outcomes.load(Relaxed),
            stats.cancelled_running.load(Relaxed),
        ]
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

    /// An attempt started: `pickup` is the time from `run_at` to the claim.
    pub fn attempt_started(&self, queue: &str, pickup: Duration) {
        let q = QueueLabel {
            queue: label(queue),
        };
        self.pickup_latency
            .get_or_create(&q)
            .observe(pickup.as_secs_f64());
        self.in_flight.get_or_create(&q).inc();
    }

    /// An attempt ended with `outcome` after `took`.
    pub fn attempt_finished(&self, kind: &str, queue: &str, outcome: &str, took: Duration) {
        let (kind, queue) = (label(kind), label(queue));
        self.in_flight
            .get_or_create(&QueueLabel {
                queue: queue.clone(),
            })
            .dec();
        self.attempts
            .get_or_create(&KindQueueOutcome {
                kind: kind.clone(),
                queue: queue.clone(),
                outcome: label(outcome),
            })
            .inc();
        self.attempt_duration
            .get_or_create(&KindQueue { kind, queue })
            .observe(took.as_secs_f64());
    }

    /// This process's write left a job of `kind` in final `state`.
    pub fn job_final(&self, kind: &str, queue: &str, state: &str) {
        self.final_states
            .get_or_create(&KindQueueState {
                kind: label(kind),
                queue: label(queue),
                state: label(state),
            })
            .inc();
    }

    /// A supervised task (`producer:<queue>`, `lease`, `listener`, `completer`, a maintenance
    /// task's name) ended unexpectedly and is being restarted.
    pub fn task_restarted(&self, task: &str) {
        self.task_restarts
            .get_or_create(&TaskLabel { task: label(task) })
            .inc();
    }

    /// Refreshes the scrape-time values and renders every metric as OpenMetrics text.
    pub async fn render(&self) -> String {
        self.refresh_depth().await;
        let listener = self.listener.lock().expect("metrics lock").clone();
        if let Some(stats) = listener {
            // The first connect is not a reconnect.
            let total = stats
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(1);
            let seen = self.listen_reconnects.get();
            if total > seen {
                self.listen_reconnects.inc_by(total - seen);
            }
        }
        let heartbeat = self.heartbeat.lock().expect("metrics lock").clone();
        if let Some(h) = heartbeat {
            for (result, total) in [("sent", h.sent()), ("failed", h.failed())] {
                let counter = self.heartbeats.get_or_create(&ResultLabel {
                    result: result.into(),
                });
                let seen = counter.get();
                if total > seen {
                    counter.inc_by(total - seen);
                }
            }
        }
        self.refresh_pools();
        self.process.refresh();
        let runtime = self.runtime.lock().expect("metrics lock").clone();
        if let Some(stats) = runtime {
            for (counter, total) in self
                .runtime_counters
                .iter()
                .zip(Self::runtime_values(&stats))
            {
                let seen = counter.get();
                if total > seen {
                    counter.inc_by(total - seen);
                }
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode metrics");
        out
    }

    fn refresh_pools(&self) {
        let pools = [
            ("jobs", self.job_pool.lock().expect("metrics lock").clone()),
            ("probe", self.pool.lock().expect("metrics lock").clone()),
        ];
        let int = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        for (name, pool) in pools {
            let Some(pool) = pool else { continue };
            let status = pool.status();
            let state = |state: &str| PoolState {
                pool: name.into(),
                state: state.into(),
            };
            self.pool_connections
                .get_or_create(&state("idle"))
                .set(int(status.available));
            self.pool_connections
                .get_or_create(&state("in_use"))
                .set(int(status.size.saturating_sub(status.available)));
            let p = PoolLabel { pool: name.into() };
            self.pool_max.get_or_create(&p).set(int(status.max_size));
            self.pool_waiting.get_or_create(&p).set(int(status.waiting));
        }
    }

    async fn refresh_depth(&self) {
        let pool = self.pool.lock().expect("metrics lock").clone();
        let Some(pool) = pool else { return };
        let rows = crate::db::jobs::queue_depth(&pool).await;
        // Drop series for queue/state pairs that emptied since the last scrape.
        self.queue_depth.clear();
        self.oldest_available.clear();
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // Stale numbers would mislead: report none until the query works again.
                tracing::warn!(error = %e, "queue depth query failed during a scrape");
                return;
            }
        };
        let configured = self.configured.lock().expect("metrics lock").clone();
        for queue in configured {
            let _ = self.oldest_available.get_or_create(&QueueLabel { queue });
        }
        for (queue, state, n, age) in rows {
            let queue = label(&queue);
            // Two forged names that map to the same label add up, never overwrite.
            self.queue_depth
                .get_or_create(&QueueState {
                    queue: queue.clone(),
                    state: label(&state),
                })
                .inc_by(n);
            if let Some(age) = age {
                // …and for the age the older wins.
                let g = self.oldest_available.get_or_create(&QueueLabel { queue });
                if age > g.get() {
                    g.set(age);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_every_family_with_labels() {
        let m = Metrics::default();
        m.attempt_started("default", Duration::from_millis(30));
        m.attempt_finished(
            "diag.noop",
            "default",
            "completed",
            Duration::from_millis(2),
        );
        m.attempt_started("default", Duration::from_millis(10));
        m.job_final("diag.noop", "default", "completed");
        let text = m.render().await;
        assert!(text.contains(
            "lettuce_job_attempts_total{kind=\"diag.noop\",queue=\"default\",outcome=\"completed\"} 1"
        ));
        assert!(text.contains(
            "lettuce_jobs_final_total{kind=\"diag.noop\",queue=\"default\",state=\"completed\"} 1"
        ));
        assert!(text.contains("lettuce_telemetry_heartbeats_total{result=\"sent\"} 0"));
        assert!(text.contains("# TYPE process_cpu_seconds counter"));
        assert!(text.contains("process_open_fds "));
        assert!(text.contains("lettuce_jobs_in_flight{queue=\"default\"} 1"));
        assert!(text.contains("lettuce_job_pickup_latency_seconds_count{queue=\"default\"} 2"));
        assert!(text.contains(
            "lettuce_job_attempt_duration_seconds_count{kind=\"diag.noop\",queue=\"default\"} 1"
        ));
        assert!(text.contains("# TYPE lettuce_listen_reconnects counter"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn label_values_keep_the_name_alphabet_only() {
        assert_eq!(label("repo.index"), "repo.index");
        assert_eq!(label("tenant-a:high_1"), "tenant-a:high_1");
        assert_eq!(label("evil\"} 1\n# x{q=\""), "evil___1___x_q__");
        assert_eq!(label("é"), "_");
        assert_eq!(label(&"a".repeat(500)).len(), MAX_LABEL_LEN);
    }
}
