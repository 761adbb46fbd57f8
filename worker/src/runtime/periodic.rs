//! Periodic work as idempotent activations: a task takes no input, does one round, and reports
//! a status that the driver logs. A failed activation waits for the next tick; it never retries
//! inline. Correctness never depends on which replica runs a task, or on process memory.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{jitter, sleep_or_stop};

/// One kind of periodic work.
pub trait PeriodicTask: Send + 'static {
    /// Stable name for logs.
    fn name(&self) -> &'static str;
    /// Time between activations (the driver adds up to 10 % jitter).
    fn interval(&self) -> Duration;
    /// One round. `Ok(Some(status))` is logged at INFO, `Ok(None)` is a quiet round.
    fn activate(&mut self) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

/// Runs `task` until `stop` fires.
pub async fn drive<T: PeriodicTask>(mut task: T, stop: CancellationToken) {
    loop {
        let every = task.interval();
        let wait = every + every.mul_f64(0.1 * jitter());
        if !sleep_or_stop(wait, &stop).await {
            return;
        }
        match task.activate().await {
            Ok(Some(status)) => tracing::info!(task = task.name(), "{status}"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(task = task.name(), error = %e, "periodic task failed; next tick retries")
            }
        }
    }
}
