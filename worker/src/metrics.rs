//! Prometheus metrics, served as OpenMetrics text on `/metrics`.
//!
//! The executor records what it sees per attempt (finished jobs, attempt duration, pickup
//! latency, in-flight); queue depth is a query run at scrape time (bounded by a statement
//! timeout, only non-final states, so a large history never makes a scrape slow); LISTEN
//! reconnects are read from the listener's own counter at scrape time.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lettuce_jobs_finished_total` | counter | `kind`, `outcome` (`completed`, `error`, `discarded`, `snoozed`, `cancelled`, `handed_back`, `lost`) |
//! | `lettuce_job_attempt_duration_seconds` | histogram | `kind` |
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
struct KindOutcome {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
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
    finished: Family<KindOutcome, Counter>,
    attempt_duration: Family<KindLabel, Histogram, Buckets>,
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
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let finished = Family::<KindOutcome, Counter>::default();
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
            "lettuce_jobs_finished",
            "Attempts finished, by job kind and outcome",
            finished.clone(),
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
            finished,
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
        }
    }
}

impl Metrics {
    /// The pool the scrape-time depth query uses.
    pub fn set_pool(&self, pool: DbPool) {
        *self.pool.lock().expect("metrics lock") = Some(pool);
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
        self.in_flight
            .get_or_create(&QueueLabel {
                queue: label(queue),
            })
            .dec();
        self.finished
            .get_or_create(&KindOutcome {
                kind: label(kind),
                outcome: label(outcome),
            })
            .inc();
        self.attempt_duration
            .get_or_create(&KindLabel { kind: label(kind) })
            .observe(took.as_secs_f64());
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
        let text = m.render().await;
        assert!(
            text.contains(
                "lettuce_jobs_finished_total{kind=\"diag.noop\",outcome=\"completed\"} 1"
            )
        );
        assert!(text.contains("lettuce_jobs_in_flight{queue=\"default\"} 1"));
        assert!(text.contains("lettuce_job_pickup_latency_seconds_count{queue=\"default\"} 2"));
        assert!(text.contains("lettuce_job_attempt_duration_seconds_count{kind=\"diag.noop\"} 1"));
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
