//! Runs one attempt: the handler inside the attempt's task under `catch_unwind` (so a panic
//! is an outcome, not a crash, and no second task is spawned per job), bounded by its timeout,
//! cut short by cancellation (the handler's future is dropped). Hands the outcome to the
//! completer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::completer::Finished;
use super::outcome::Outcome;
use super::{Held, Shared};
use crate::db::jobs::ClaimedJob;
use crate::handlers::{JobContext, JobInfo};

pub(crate) fn spawn(shared: &Arc<Shared>, mut job: ClaimedJob, permit: OwnedSemaphorePermit) {
    let cancel = shared.cancel_jobs.child_token();
    let lost = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicBool::new(false));
    // One span per attempt; disabled (and free) when no exporter is configured. Made here so
    // the lease heartbeat and the completion can link to it.
    let span = crate::observability::job_span(
        job.id,
        &job.kind,
        &job.queue,
        job.attempt,
        job.traceparent.as_deref(),
        job.claim_span.as_ref(),
    );
    job.attempt_span = crate::observability::span_context(&span);
    shared.inflight.lock().expect("inflight lock").insert(
        job.id,
        Held {
            attempt: job.attempt,
            cancel: cancel.clone(),
            lost: lost.clone(),
            cancelled: cancelled.clone(),
            span: job.attempt_span.clone(),
        },
    );
    let s = shared.clone();
    // The handler takes the payload; nothing after the attempt reads it.
    let payload = std::mem::take(&mut job.payload);
    let pickup = (job.attempted_at - job.run_at).max(time::Duration::ZERO);
    let series = shared.metrics.job_series(&job.kind, &job.queue);
    series.attempt_started(pickup.unsigned_abs());
    shared.executors.spawn(async move {
        let started = Instant::now();
        let outcome = match &job.undecodable {
            // Nothing can run on a row we could not read: discard it, naming the field.
            Some(problem) => {
                let _in_span = span.enter();
                tracing::error!(job.id = job.id, job.kind = %job.kind, problem = %problem, "job row cannot be decoded; discarding it");
                Some(Outcome::Discard { error: problem.clone() })
            }
            None => {
                run_attempt(&s, &job, payload, cancel, &lost)
                    .instrument(span.clone())
                    .await
            }
        };
        let by_operator = cancelled.load(Ordering::Acquire);
        let label = match &outcome {
            Some(o) => o.label(),
            None if by_operator => "cancelled",
            None => "lost",
        };
        let error = match &outcome {
            Some(Outcome::Retry { error } | Outcome::Discard { error }) => Some(error.as_str()),
            _ => None,
        };
        crate::observability::record_outcome(&span, label, error);
        drop(span);
        let ran_for = started.elapsed();
        match outcome {
            Some(outcome) => {
                // The completer outlives every executor (see runtime::run), so this cannot fail
                // except when the runtime is already torn down; then the lease expires and
                // another worker rescues the job.
                // The outcome is counted in the metrics once the completer's write is accepted.
                let _ = s.completions.send(Finished {
                    job,
                    outcome,
                    slot: permit,
                    ran_for,
                    series,
                });
            }
            None => {
                // Nothing to write: the database already says what happened. The slot is
                // freed as `permit` drops here.
                s.inflight.lock().expect("inflight lock").remove(&job.id);
                series.attempt_finished(label, ran_for);
                if by_operator {
                    s.stats.cancelled_running.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        job.id = job.id,
                        job.attempt = job.attempt,
                        "attempt stopped: an operator cancelled the job"
                    );
                } else {
                    tracing::warn!(
                        job.id = job.id,
                        job.attempt = job.attempt,
                        "attempt abandoned: lease lost (rescued or cancelled elsewhere)"
                    );
                }
                drop(permit);
            }
        }
    });
}

/// Runs the handler; `None` when the lease was lost (nothing may be written).
async fn run_attempt(
    shared: &Shared,
    job: &ClaimedJob,
    payload: Value,
    cancel: tokio_util::sync::CancellationToken,
    lost: &AtomicBool,
) -> Option<Outcome> {
    let Some(handler) = shared.registry.get(&job.kind) else {
        // Cannot happen: we only claim registered kinds. Treat as retryable to lose nothing.
        return Some(Outcome::Retry {
            error: format!("no handler for kind {} in this worker", job.kind),
        });
    };
    let timeout = handler.timeout().unwrap_or(shared.config.job_timeout);
    let ctx = JobContext::new(
        JobInfo {
            id: job.id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            worker_id: shared.worker.id.clone(),
        },
        cancel.clone(),
        shared.services.clone(),
    );
    // The handler's own spans (HTTP, S3) nest under the attempt's span (the caller instruments
    // this future). Dropped when the timeout or the cancellation wins: that stops the handler
    // at its next await, as aborting a task would.
    let call = AssertUnwindSafe(handler.call(ctx.clone(), payload)).catch_unwind();
    let outcome = tokio::select! {
        result = call => match result {
            Ok(result) => Outcome::from_result(result, ctx.take_artifacts()).with_indexed(ctx.take_indexed()),
            Err(panic) => Outcome::Retry { error: format!("panic: {}", super::supervise::panic_text(panic)) },
        },
        _ = tokio::time::sleep(timeout) => {
            Outcome::Retry { error: format!("timeout: attempt exceeded {} ms", timeout.as_millis()) }
        }
        _ = cancel.cancelled() => {
            if lost.load(Ordering::Acquire) {
                return None;
            }
            Outcome::HandBack
        }
    };
    if let Outcome::Retry { error } | Outcome::Discard { error } = &outcome {
        tracing::warn!(job.id = job.id, job.kind = %job.kind, job.attempt = job.attempt, error = %error, "attempt failed");
    }
    Some(outcome)
}
