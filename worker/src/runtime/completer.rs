//! The only writer of outcomes. Collects finished attempts and writes them in batches (one
//! statement over `unnest(…)` per batch, see `db::jobs::complete_batch_with`), then releases the
//! attempts' slots. Writes are fenced; a fenced write is logged as a late completion.
//!
//! Failure model (no outcome can wedge the worker):
//! - connection-class errors are retried with backoff for at most one lease; past that the
//!   batch is abandoned (its leases are no longer extended, its slots freed, rescue re-runs
//!   the jobs) and `/readyz` reports `outcomes` until a write is accepted again;
//! - any other error means the database refused something in the batch: the batch is halved
//!   until the refused outcomes stand alone, each is written as `discarded` with the database's
//!   reason, and abandoned if even that is refused; the rest are written normally;
//! - error texts and delays are made storable before any of this (`Outcome::completion`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::outcome::Outcome;
use super::{Shared, jitter};
use crate::db::jobs::{ArtifactRow, ClaimedJob, Completion};
use crate::db::repositories::RepositoryIndexed;
use crate::db::{self, DbError};
use crate::job::{JobState, Transition};
use crate::metrics::JobSeries;
use crate::observability::condition::Condition;

/// The `/readyz` condition set while outcomes cannot be written.
const UNREADY_KEY: &str = "outcomes";

/// Largest batch written in one statement.
pub(crate) const MAX_BATCH: usize = 1000;

/// The batch size for a worker with `slots` slots in all: a quarter of them (at least 32), so
/// while one batch is written the slots freed by the previous one are already being claimed
/// again: claim and completion overlap instead of taking turns.
pub(crate) fn batch_size(slots: usize) -> usize {
    (slots / 4).clamp(32, MAX_BATCH)
}

/// One attempt's outcome on its way to the database, holding its slot until written.
pub(crate) struct Finished {
    pub job: ClaimedJob,
    pub outcome: Outcome,
    /// Held until the outcome is written; dropping it frees the slot.
    pub slot: OwnedSemaphorePermit,
    /// How long the attempt ran, for the metrics counted once the write is accepted.
    pub ran_for: Duration,
    /// Where those metrics go.
    pub series: Arc<JobSeries>,
}

/// Writes outcomes until `closed` fires (every executor has finished) and the channel is empty.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    closed: CancellationToken,
    max_batch: usize,
) {
    let mut batch: Vec<Finished> = Vec::with_capacity(max_batch);
    let mut state = WriteState::default();
    loop {
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = closed.cancelled(), if !rx.is_closed() => {
                // No new senders will send: take what is queued, then stop.
                rx.close();
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let written = super::supervise::catch_panic(write(&shared, &mut state, &mut batch)).await;
        if let Err(panic) = written {
            // Restarting the completer means carrying on with the next batch; this one's
            // leases are no longer extended and rescue runs the jobs again.
            tracing::error!(panic = %panic, batch = batch.len(), "writing outcomes panicked; leaving this batch to rescue");
            shared.metrics.task_restarted("completer");
            let mut inflight = shared.inflight.lock().expect("inflight lock");
            for f in &batch {
                inflight.remove(&f.job.id);
            }
            drop(inflight);
            batch.clear();
        }
    }
}

/// How the completer stands with the database, across batches.
pub(crate) struct WriteState {
    /// Since when writes have been failing, if they are.
    failing_since: Option<Instant>,
    /// One WARN when writes start failing, not one per retry.
    failing: Condition,
}

impl Default for WriteState {
    fn default() -> Self {
        WriteState {
            failing_since: None,
            failing: Condition::new("writing outcomes"),
        }
    }
}

/// What became of one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Written, with this state.
    Accepted(JobState),
    /// Fenced off: the job was rescued, cancelled or reassigned since the claim.
    Fenced,
    /// Could not be written at all: its lease is left to expire and rescue takes over.
    Abandoned,
}

/// Why a write attempt stopped.
enum WriteError {
    /// The database refused the statement (not a connection problem): isolate.
    Refused(DbError),
    /// Connection-class errors for longer than a lease: give up on this part.
    Unreachable,
}

/// Writes `part` (one statement, with its artifact rows), retrying connection-class errors with
/// backoff for at most one lease. `/readyz` turns unready once writes have failed for longer
/// than a lease and ready again at the first accepted write.
async fn write_part(
    shared: &Shared,
    state: &mut WriteState,
    part: &[Completion],
    artifacts: &[ArtifactRow],
    indexed: &[RepositoryIndexed],
) -> Result<Vec<i64>, WriteError> {
    let ids: HashSet<i64> = part.iter().map(|c| c.id).collect();
    let arts: Vec<ArtifactRow> = artifacts
        .iter()
        .filter(|a| ids.contains(&a.job_id))
        .cloned()
        .collect();
    let indexed: Vec<RepositoryIndexed> = indexed
        .iter()
        .filter(|r| ids.contains(&r.job_id))
        .cloned()
        .collect();
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let result = crate::db::jobs::complete_batch_with(
            &shared.pool,
            &shared.worker.id,
            !shared.config.retention.completed.is_zero(),
            part,
            &arts,
            &indexed,
        )
        .await;
        match result {
            Ok(accepted) => {
                state.failing.ok();
                if state.failing_since.take().is_some() {
                    shared.health.clear_unready(UNREADY_KEY);
                }
                return Ok(accepted);
            }
            Err(e) if !db::is_connection_error(&e) => return Err(WriteError::Refused(e)),
            Err(e) => {
                shared.database_failed(&e);
                let since = *state.failing_since.get_or_insert(started);
                if since.elapsed() > shared.config.lease {
                    shared.health.set_unready(
                        UNREADY_KEY,
                        "job outcomes cannot be written to the database",
                    );
                }
                if started.elapsed() > shared.config.lease {
                    tracing::error!(error = %e, batch = part.len(), "writing outcomes failed for longer than a lease; giving up on them");
                    return Err(WriteError::Unreachable);
                }
                state
                    .failing
                    .failed(&format_args!("{e} (a batch of {})", part.len()));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The failure model: the whole batch in one statement; when the database refuses it, halves
/// until the refused outcomes stand alone; each of those is written once more as `discarded`
/// with the database's reason, and abandoned (left to rescue) if even that is refused.
async fn write_all(
    shared: &Shared,
    state: &mut WriteState,
    completions: Vec<Completion>,
    artifacts: &[ArtifactRow],
    indexed: &[RepositoryIndexed],
) -> HashMap<i64, Fate> {
    let mut fates = HashMap::with_capacity(completions.len());
    // (part, whether it is already the discarded fallback of a refused outcome)
    let mut pending: Vec<(Vec<Completion>, bool)> = vec![(completions, false)];
    while let Some((part, fallback)) = pending.pop() {
        match write_part(shared, state, &part, artifacts, indexed).await {
            Ok(accepted) => {
                let accepted: HashSet<i64> = accepted.into_iter().collect();
                for c in &part {
                    let fate = if accepted.contains(&c.id) {
                        Fate::Accepted(c.transition.to)
                    } else {
                        Fate::Fenced
                    };
                    fates.insert(c.id, fate);
                }
            }
            Err(WriteError::Unreachable) => {
                fates.extend(part.iter().map(|c| (c.id, Fate::Abandoned)));
            }
            Err(WriteError::Refused(e)) if part.len() > 1 => {
                tracing::warn!(error = %e, batch = part.len(), "the database refused a batch of outcomes; isolating the refused ones");
                let mut left = part;
                let right = left.split_off(left.len() / 2);
                pending.push((right, fallback));
                pending.push((left, fallback));
            }
            Err(WriteError::Refused(e)) if !fallback => {
                let c = &part[0];
                tracing::error!(job.id = c.id, job.attempt = c.attempt, state = %c.transition.to, error = %e, "the database refused this outcome; discarding the job");
                let discard = Completion {
                    transition: Transition::discard(crate::limits::sanitize_error(&format!(
                        "outcome `{}` refused by the database: {e}",
                        c.transition.to
                    ))),
                    ..c.clone()
                };
                pending.push((vec![discard], true));
            }
            Err(WriteError::Refused(e)) => {
                let c = &part[0];
                tracing::error!(job.id = c.id, job.attempt = c.attempt, error = %e, "even discarding was refused; leaving the job to lease expiry and rescue");
                fates.insert(c.id, Fate::Abandoned);
            }
        }
    }
    fates
}

async fn write(shared: &Shared, state: &mut WriteState, batch: &mut Vec<Finished>) {
    let completions: Vec<Completion> = batch
        .iter()
        .map(|f| f.outcome.completion(&f.job, &shared.policy, jitter()))
        .collect();
    let artifacts: Vec<ArtifactRow> = batch
        .iter()
        .flat_map(|f| match &f.outcome {
            Outcome::Completed { artifacts, .. } => artifacts.clone(),
            _ => Vec::new(),
        })
        .collect();
    let indexed: Vec<RepositoryIndexed> = batch
        .iter()
        .flat_map(|f| match &f.outcome {
            Outcome::Completed { indexed, .. } => indexed.clone(),
            _ => Vec::new(),
        })
        .collect();
    let fates = write_all(shared, state, completions, &artifacts, &indexed).await;
    let mut inflight = shared.inflight.lock().expect("inflight lock");
    for f in batch.iter() {
        // Written, fenced or abandoned: this process holds the attempt no longer, so the lease
        // keeper stops extending it.
        inflight.remove(&f.job.id);
        let fate = fates.get(&f.job.id).copied().unwrap_or(Fate::Abandoned);
        let state = match fate {
            Fate::Accepted(state) => state,
            Fate::Fenced => {
                shared
                    .stats
                    .refused_late_writes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    job.id = f.job.id,
                    job.attempt = f.job.attempt,
                    outcome = f.outcome.label(),
                    "late completion refused: the job was rescued, cancelled or reassigned since this attempt began"
                );
                continue;
            }
            Fate::Abandoned => {
                shared
                    .stats
                    .abandoned_outcomes
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        // Counted once the database has the outcome, under what it became.
        let refused_then_discarded = state == JobState::Discarded
            && !matches!(f.outcome, Outcome::Discard { .. } | Outcome::Retry { .. });
        let label = if refused_then_discarded {
            "discarded"
        } else {
            f.outcome.label()
        };
        f.series.attempt_finished(label, f.ran_for);
        if state.is_final() {
            f.series.job_final(state.as_str());
        }
        match state {
            JobState::Completed => shared.stats.completed.fetch_add(1, Ordering::Relaxed),
            JobState::Available => shared.stats.handed_back.fetch_add(1, Ordering::Relaxed),
            JobState::Retryable | JobState::Discarded => {
                shared.stats.failed.fetch_add(1, Ordering::Relaxed)
            }
            _ => 0,
        };
    }
    drop(inflight);
    // Free the batch's slots in one step per queue, so a producer waiting for a slot wakes to
    // find all of them free and claims them in one statement.
    let mut freed: HashMap<String, OwnedSemaphorePermit> = HashMap::new();
    for f in batch.drain(..) {
        match freed.get_mut(&f.job.queue) {
            Some(p) => p.merge(f.slot),
            None => {
                freed.insert(f.job.queue, f.slot);
            }
        }
    }
    drop(freed);
}
