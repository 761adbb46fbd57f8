//! The series one (kind, queue) pair's attempts write, looked up once per pair and reused for
//! every job of it: recording an attempt builds no label strings and hashes no label set (those
//! were a tenth of the worker's CPU per job in a burn-down, BENCHMARKS.md "Issue 18").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{KindQueue, KindQueueOutcome, KindQueueState, Metrics, QueueLabel, label};

/// Outcome labels the executor and completer record (`Outcome::label`, plus `lost`); a counter
/// for each is made on first use, so a series appears once it happened, as before.
const OUTCOMES: [&str; 7] = [
    "completed",
    "error",
    "discarded",
    "snoozed",
    "cancelled",
    "handed_back",
    "lost",
];

/// Final states a write can leave a job in.
const FINAL_STATES: [&str; 3] = ["completed", "discarded", "cancelled"];

/// The attempt series of one (kind, queue) pair. Clones of the family members: they count in
/// the registered families.
pub struct JobSeries {
    kind: String,
    queue: String,
    in_flight: Gauge,
    pickup: Histogram,
    duration: Histogram,
    attempts_family: Family<KindQueueOutcome, Counter>,
    finals_family: Family<KindQueueState, Counter>,
    attempts: [OnceLock<Counter>; OUTCOMES.len()],
    finals: [OnceLock<Counter>; FINAL_STATES.len()],
}

/// Series per kind, then queue: both maps are looked up by `&str`. Bounded by the registered
/// kinds times the configured queues (claims take nothing else).
pub(super) type SeriesCache = Mutex<HashMap<String, HashMap<String, Arc<JobSeries>>>>;

impl Metrics {
    /// The series of jobs of `kind` in `queue`, made on first use.
    pub fn job_series(&self, kind: &str, queue: &str) -> Arc<JobSeries> {
        let mut cache = self.series.lock().expect("metrics lock");
        if let Some(s) = cache.get(kind).and_then(|q| q.get(queue)) {
            return s.clone();
        }
        let (kind_label, queue_label) = (label(kind), label(queue));
        let q = QueueLabel {
            queue: queue_label.clone(),
        };
        let kq = KindQueue {
            kind: kind_label.clone(),
            queue: queue_label.clone(),
        };
        let series = Arc::new(JobSeries {
            in_flight: self.in_flight.get_or_create(&q).clone(),
            pickup: self.pickup_latency.get_or_create(&q).clone(),
            duration: self.attempt_duration.get_or_create(&kq).clone(),
            attempts_family: self.attempts.clone(),
            finals_family: self.final_states.clone(),
            attempts: Default::default(),
            finals: Default::default(),
            kind: kind_label,
            queue: queue_label,
        });
        cache
            .entry(kind.to_string())
            .or_default()
            .insert(queue.to_string(), series.clone());
        series
    }
}

impl JobSeries {
    /// An attempt started: `pickup` is the time from `run_at` to the claim.
    pub fn attempt_started(&self, pickup: Duration) {
        self.pickup.observe(pickup.as_secs_f64());
        self.in_flight.inc();
    }

    /// An attempt ended with `outcome` after `took`.
    pub fn attempt_finished(&self, outcome: &str, took: Duration) {
        self.in_flight.dec();
        count(&OUTCOMES, &self.attempts, outcome, |o| {
            self.attempts_family
                .get_or_create(&KindQueueOutcome {
                    kind: self.kind.clone(),
                    queue: self.queue.clone(),
                    outcome: label(o),
                })
                .clone()
        });
        self.duration.observe(took.as_secs_f64());
    }

    /// This process's write left a job of this pair in final `state`.
    pub fn job_final(&self, state: &str) {
        count(&FINAL_STATES, &self.finals, state, |s| {
            self.finals_family
                .get_or_create(&KindQueueState {
                    kind: self.kind.clone(),
                    queue: self.queue.clone(),
                    state: label(s),
                })
                .clone()
        });
    }
}

/// Counts one `value`: on the cached counter for a known value, else on the family's own.
fn count(known: &[&str], cached: &[OnceLock<Counter>], value: &str, make: impl Fn(&str) -> Counter) {
    match known.iter().position(|k| *k == value) {
        Some(i) => cached[i].get_or_init(|| make(value)).inc(),
        None => make(value).inc(),
    };
}
