//! Periodic work as idempotent activations: a task takes no input, does one round, and reports
//! a status that the driver logs. A failed activation waits for the next tick; it never retries
//! inline. Correctness never depends on which replica runs a task, or on process memory.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{jitter, sleep_or_stop};
use crate::metrics::Metrics;

/// One kind of periodic work.
pub trait PeriodicTask: Send + 'static {
    /// Stable name for logs.
    fn name(&self) -> &'static str;
    /// Time between activations (the driver adds up to 10 % jitter).
    fn interval(&self) -> Duration;
    /// One round. `Ok(Some(status))` is logged at INFO, `Ok(None)` is a quiet round.
    fn activate(&mut self) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

/// Runs `task` until `stop` fires. A panicking activation is logged and counted like a failed
/// one (`lettuce_task_restarts_total{task}`); the next tick runs the task again.
pub async fn drive<T: PeriodicTask>(mut task: T, stop: CancellationToken, metrics: Arc<Metrics>) {
    loop {
        let every = task.interval();
        let wait = every + every.mul_f64(0.1 * jitter());
        if !sleep_or_stop(wait, &stop).await {
            return;
        }
        match super::supervise::catch_panic(task.activate()).await {
            Ok(Ok(Some(status))) => tracing::info!(task = task.name(), "{status}"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(task = task.name(), error = %e, "periodic task failed; next tick retries")
            }
            Err(panic) => {
                tracing::error!(task = task.name(), panic = %panic, "periodic task panicked; next tick runs it again");
                metrics.task_restarted(task.name());
            }
        }
    }
}
