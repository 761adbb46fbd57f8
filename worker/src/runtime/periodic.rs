//! Periodic work as idempotent activations: a task takes no input, does one round, and reports
//! a status that the driver logs and keeps on the [`TaskBoard`] (`WorkerHandle::status()`). A
//! failed activation waits for the next tick; it never retries inline. Correctness never
//! depends on which replica runs a task, or on process memory.
//!
//! One driver ([`drive`]) runs every periodic task of the worker: the rescuer, the pruner, the
//! scheduled reindex, the stale-worker sweep, the license watch and the telemetry heartbeat.
//! Each says when its first activation comes ([`PeriodicTask::first_delay`]) and may be woken
//! early through a [`Trigger`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::jitter;
use crate::metrics::Metrics;
use crate::observability::condition::Condition;

/// One kind of periodic work.
pub trait PeriodicTask: Send + 'static {
    /// Stable name for logs and the status board.
    fn name(&self) -> &'static str;
    /// Time between activations (the driver adds up to 10 % jitter).
    fn interval(&self) -> Duration;
    /// Time before the first activation; one interval (with jitter) unless the task says
    /// otherwise (the heartbeat's first ping goes within seconds of ready).
    fn first_delay(&self) -> Duration {
        let every = self.interval();
        every + every.mul_f64(0.1 * jitter())
    }
    /// One round. `Ok(Some(status))` is logged at INFO, `Ok(None)` is a quiet round.
    fn activate(&mut self) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

/// Wakes a task's next activation now instead of at its next tick.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    /// Runs an activation as soon as the current one (if any) is over.
    pub fn fire(&self) {
        self.0.notify_one();
    }
}

/// What one task's activations came to so far in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub name: &'static str,
    /// Activations finished (panicked ones included).
    pub activations: u64,
    /// Activations that failed or panicked.
    pub failures: u64,
    /// The last activation's status, error or panic text; `None` after a quiet round.
    pub last: Option<String>,
    pub last_at: Option<SystemTime>,
}

/// Every periodic task's [`TaskStatus`], shared by the driver and `WorkerHandle::status()`.
#[derive(Debug, Default, Clone)]
pub struct TaskBoard(Arc<Mutex<BTreeMap<&'static str, TaskStatus>>>);

impl TaskBoard {
    /// The tasks by name.
    pub fn snapshot(&self) -> Vec<TaskStatus> {
        self.0
            .lock()
            .expect("task board lock")
            .values()
            .cloned()
            .collect()
    }

    fn register(&self, name: &'static str) {
        self.0
            .lock()
            .expect("task board lock")
            .entry(name)
            .or_insert(TaskStatus {
                name,
                activations: 0,
                failures: 0,
                last: None,
                last_at: None,
            });
    }

    fn record(&self, name: &'static str, failed: bool, last: Option<String>) {
        let mut board = self.0.lock().expect("task board lock");
        if let Some(s) = board.get_mut(name) {
            s.activations += 1;
            s.failures += u64::from(failed);
            s.last = last;
            s.last_at = Some(SystemTime::now());
        }
    }
}

/// How one activation ended, as the driver logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Activation {
    Quiet,
    Reported(String),
    Failed(String),
    Panicked(String),
}

/// Runs `task` until `stop` fires: the first activation after [`PeriodicTask::first_delay`],
/// then one per interval (with jitter), or at once when `trigger` fires. A panicking
/// activation is logged and counted like a failed one (`lettuce_task_restarts_total{task}`);
/// the next tick runs the task again.
pub async fn drive<T: PeriodicTask>(
    mut task: T,
    trigger: Trigger,
    board: TaskBoard,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let name = task.name();
    board.register(name);
    // A task failing every tick while the database is away is one WARN, not one per tick.
    let failing = Condition::new(name);
    let mut wait = task.first_delay();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.0.notified() => {}
        }
        let activation = match super::supervise::catch_panic(task.activate()).await {
            Ok(Ok(None)) => Activation::Quiet,
            Ok(Ok(Some(status))) => Activation::Reported(status),
            Ok(Err(e)) => Activation::Failed(e),
            Err(panic) => Activation::Panicked(panic.to_string()),
        };
        match &activation {
            Activation::Quiet => {
                failing.ok();
                board.record(name, false, None)
            }
            Activation::Reported(status) => {
                failing.ok();
                tracing::info!(task = name, "{status}");
                board.record(name, false, Some(status.clone()));
            }
            Activation::Failed(e) => {
                failing.failed(e);
                board.record(name, true, Some(e.clone()));
            }
            Activation::Panicked(panic) => {
                tracing::error!(task = name, panic = %panic, "periodic task panicked; next tick runs it again");
                metrics.task_restarted(name);
                board.record(name, true, Some(format!("panicked: {panic}")));
            }
        }
        let every = task.interval();
        wait = every + every.mul_f64(0.1 * jitter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts activations; fails every third, panics on the fifth.
    struct Counting {
        runs: Arc<AtomicU32>,
        first: Duration,
    }

    impl PeriodicTask for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn first_delay(&self) -> Duration {
            self.first
        }
        async fn activate(&mut self) -> Result<Option<String>, String> {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            match n {
                5 => panic!("fifth"),
                n if n % 3 == 0 => Err(format!("run {n} failed")),
                n => Ok(Some(format!("run {n}"))),
            }
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_delay_then_each_interval_and_a_trigger_runs_at_once() {
        let runs = Arc::new(AtomicU32::new(0));
        let (trigger, board, stop) = (
            Trigger::default(),
            TaskBoard::default(),
            CancellationToken::new(),
        );
        let task = Counting {
            runs: runs.clone(),
            first: Duration::from_secs(2),
        };
        let driver = tokio::spawn(drive(
            task,
            trigger.clone(),
            board.clone(),
            stop.clone(),
            Arc::default(),
        ));
        settle().await;
        assert_eq!(board.snapshot()[0].activations, 0, "registered, not run");
        tokio::time::advance(Duration::from_millis(1999)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "not before the first delay");
        tokio::time::advance(Duration::from_millis(2)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The next tick is one interval (plus at most 10 % jitter) later.
        tokio::time::advance(Duration::from_secs(59)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(7)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // A trigger runs the third at once: it fails, and the board says so.
        trigger.fire();
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let status = &board.snapshot()[0];
        assert_eq!(
            (status.activations, status.failures, status.last.as_deref()),
            (3, 1, Some("run 3 failed"))
        );
        stop.cancel();
        driver.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_activation_is_counted_and_the_next_tick_runs_again() {
        let runs = Arc::new(AtomicU32::new(4));
        let board = TaskBoard::default();
        let stop = CancellationToken::new();
        let trigger = Trigger::default();
        let task = Counting {
            runs: runs.clone(),
            first: Duration::ZERO,
        };
        let driver = tokio::spawn(drive(
            task,
            trigger.clone(),
            board.clone(),
            stop.clone(),
            Arc::default(),
        ));
        settle().await;
        let status = &board.snapshot()[0];
        assert_eq!((status.activations, status.failures), (1, 1));
        assert!(status.last.as_deref().unwrap().contains("fifth"));
        trigger.fire();
        settle().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            6,
            "the driver survived the panic"
        );
        stop.cancel();
        driver.await.unwrap();
    }
}
