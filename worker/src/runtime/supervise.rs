//! Supervision: no long-running task of the runtime may end silently. A task that returns
//! before its stop token fired, or panics, is logged, counted in `lettuce_task_restarts_total`
//! and started again after a backoff (100 ms doubling to 30 s, reset once it ran a minute).
//!
//! The watchdog turns `/readyz` unready while a queue's claim loop stopped ticking (a claim
//! statement hanging, a producer crashing in a loop), and ready again once it ticks.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::sleep_or_stop;
use crate::health::Health;
use crate::metrics::Metrics;

/// Runs the task `make` builds until `stop` fires, restarting it whenever it ends before that.
pub(crate) async fn supervise<F, Fut>(
    name: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delay = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let ended = tokio::spawn(make()).await;
        if stop.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => tracing::error!(task = %name, "task ended unexpectedly; restarting it"),
            Err(e) if e.is_panic() => {
                let text = panic_text(e.into_panic());
                tracing::error!(task = %name, panic = %text, "task panicked; restarting it");
            }
            Err(e) => tracing::error!(task = %name, error = %e, "task aborted; restarting it"),
        }
        metrics.task_restarted(&name);
        if started.elapsed() > Duration::from_secs(60) {
            delay = Duration::from_millis(100);
        }
        if !sleep_or_stop(delay, &stop).await {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Runs `fut`, turning a panic into `Err(text)`; for work done inline (one periodic
/// activation, one batch of outcomes) where restarting means "carry on with the next".
pub(crate) async fn catch_panic<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(panic_text)
}

/// The text of a panic payload.
pub(crate) fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A claim loop's sign of life.
#[derive(Debug, Default)]
pub(crate) struct Tick {
    /// Milliseconds since the runtime's start at the last tick.
    at_ms: AtomicU64,
    /// True while the loop waits for a free slot (busy, not stalled).
    waiting_for_slots: AtomicBool,
}

/// Ticks of every queue's claim loop, read by the watchdog.
pub(crate) struct Ticks {
    epoch: Instant,
    by_queue: HashMap<String, Arc<Tick>>,
}

impl Ticks {
    pub(crate) fn new(queues: &[String]) -> Ticks {
        Ticks {
            epoch: Instant::now(),
            by_queue: queues
                .iter()
                .map(|q| (q.clone(), Arc::new(Tick::default())))
                .collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The loop of `queue` is alive (and not waiting for a slot).
    pub(crate) fn tick(&self, queue: &str) {
        if let Some(t) = self.by_queue.get(queue) {
            t.at_ms.store(self.now_ms(), Ordering::Relaxed);
            t.waiting_for_slots.store(false, Ordering::Relaxed);
        }
    }

    /// The loop of `queue` waits for one of its slots to free up.
    pub(crate) fn waiting_for_slots(&self, queue: &str) {
        if let Some(t) = self.by_queue.get(queue) {
            t.waiting_for_slots.store(true, Ordering::Relaxed);
        }
    }

    /// Queues whose loop has not ticked for longer than `limit` while not waiting for slots.
    pub(crate) fn stalled(&self, limit: Duration) -> Vec<String> {
        let now = self.now_ms();
        let mut out: Vec<String> = self
            .by_queue
            .iter()
            .filter(|(_, t)| {
                !t.waiting_for_slots.load(Ordering::Relaxed)
                    && now.saturating_sub(t.at_ms.load(Ordering::Relaxed))
                        > limit.as_millis() as u64
            })
            .map(|(q, _)| q.clone())
            .collect();
        out.sort();
        out
    }
}

/// How long a claim loop may go without ticking before `/readyz` says so: three poll intervals,
/// at least 10 s (a claim is one short statement; the loop ticks at least once per poll).
pub(crate) fn stall_limit(poll_interval: Duration) -> Duration {
    (poll_interval * 3).max(Duration::from_secs(10))
}

/// Checks the ticks every second until `stop`.
pub(crate) async fn watchdog(
    ticks: Arc<Ticks>,
    health: Arc<Health>,
    limit: Duration,
    stop: CancellationToken,
) {
    let mut reported = false;
    while sleep_or_stop(Duration::from_secs(1), &stop).await {
        let stalled = ticks.stalled(limit);
        if stalled.is_empty() {
            if reported {
                health.clear_unready(UNREADY_KEY);
                tracing::info!("every claim loop is ticking again");
                reported = false;
            }
            continue;
        }
        if !reported {
            tracing::error!(queues = %stalled.join(","), limit_ms = limit.as_millis() as u64, "claim loop stalled");
        }
        health.set_unready(
            UNREADY_KEY,
            format!("claim loop stalled for queue {}", stalled.join(", ")),
        );
        reported = true;
    }
}

const UNREADY_KEY: &str = "claim";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_early_is_restarted_and_counted() {
        let runs = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let r = runs.clone();
        let s = stop.clone();
        let sup = tokio::spawn(supervise(
            "t".into(),
            metrics.clone(),
            stop.clone(),
            move || {
                let r = r.clone();
                let s = s.clone();
                async move {
                    match r.fetch_add(1, Ordering::SeqCst) {
                        0 => panic!("first run panics"),
                        1 => {} // second returns early
                        _ => s.cancelled().await,
                    }
                }
            },
        ));
        for _ in 0..100 {
            if runs.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        stop.cancel();
        sup.await.unwrap();
        let text = metrics.render().await;
        assert!(
            text.contains("lettuce_task_restarts_total{task=\"t\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_loop_waiting_for_slots_is_not_stalled_but_a_silent_one_is() {
        let ticks = Ticks::new(&["a".into(), "b".into()]);
        ticks.waiting_for_slots("a");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            ticks.stalled(Duration::from_millis(10)),
            vec!["b".to_string()]
        );
        ticks.tick("b");
        assert!(ticks.stalled(Duration::from_millis(10)).is_empty());
    }
}
