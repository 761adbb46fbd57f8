//! The only writer of outcomes. Collects finished attempts and writes them in batches (one
//! statement over `unnest(…)` per batch, see `db::jobs::complete_batch`), retrying transient
//! database errors, then releases the attempts' slots. Writes are fenced; a refused write is
//! logged as a late completion.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::outcome::Outcome;
use super::{Shared, jitter};
use crate::db::jobs::{ArtifactRow, ClaimedJob, Completion};

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
}

/// Writes outcomes until `closed` fires (every executor has finished) and the channel is empty.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    closed: CancellationToken,
    max_batch: usize,
) {
    let mut batch: Vec<Finished> = Vec::with_capacity(max_batch);
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
        write(&shared, &mut batch).await;
    }
}

async fn write(shared: &Shared, batch: &mut Vec<Finished>) {
    let completions: Vec<Completion> = batch
        .iter()
        .map(|f| f.outcome.completion(&f.job, &shared.policy, jitter()))
        .collect();
    let artifacts: Vec<ArtifactRow> = batch
        .iter()
        .flat_map(|f| match &f.outcome {
            Outcome::Completed { artifacts } => artifacts.clone(),
            _ => Vec::new(),
        })
        .collect();
    let mut delay = Duration::from_millis(50);
    let accepted = loop {
        match crate::db::jobs::complete_batch(
            &shared.pool,
            &shared.worker.id,
            &completions,
            &artifacts,
        )
        .await
        {
            // A set: a batch holds up to MAX_BATCH ids and each is looked up once.
            Ok(ids) => break ids.into_iter().collect::<std::collections::HashSet<i64>>(),
            Err(e) => {
                tracing::warn!(error = %e, batch = completions.len(), "writing outcomes failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    };
    let mut inflight = shared.inflight.lock().expect("inflight lock");
    for (f, c) in batch.iter().zip(&completions) {
        inflight.remove(&f.job.id);
        if !accepted.contains(&f.job.id) {
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
        match c.state {
            "completed" => shared.stats.completed.fetch_add(1, Ordering::Relaxed),
            "available" => shared.stats.handed_back.fetch_add(1, Ordering::Relaxed),
            "retryable" | "discarded" => shared.stats.failed.fetch_add(1, Ordering::Relaxed),
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
