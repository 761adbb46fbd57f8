//! The maintenance tasks every worker runs: the rescuer (expired leases), the pruner (finished
//! jobs past retention), the scheduled reindex (repositories not indexed for
//! `LETTUCE_REINDEX_INTERVAL`), the stale-worker sweep (which rescues the jobs of the rows it
//! removes) and the transaction watch (a WARN while a long transaction holds back vacuum). Each
//! statement uses `SKIP LOCKED`, is a plain idempotent delete or only reads, so running them on
//! every replica is safe.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::periodic::{PeriodicTask, TaskBoard, Trigger, drive};
use crate::db::{self, DbPool};
use crate::job::JobState;
use crate::observability::condition::{Condition, Report};

/// Rows one activation touches at most.
const BATCH: i64 = 1000;

/// How long a handled webhook delivery id is remembered (`lettuce.github_deliveries`).
const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Starts every maintenance task on `tracker` under the one periodic driver; each task holds
/// only what it uses.
pub(crate) fn spawn_all(
    tracker: &TaskTracker,
    shared: &Shared,
    license: Option<crate::license::Claims>,
    board: &TaskBoard,
    stop: CancellationToken,
) {
    let metrics = shared.metrics.clone();
    let (pool, worker_id, config) = (&shared.pool, &shared.worker.id, &shared.config);
    macro_rules! start {
        ($task:expr) => {
            tracker.spawn(drive(
                $task,
                Trigger::default(),
                board.clone(),
                stop.clone(),
                metrics.clone(),
            ))
        };
    }
    start!(Rescuer {
        pool: pool.clone(),
        worker_id: worker_id.clone(),
        lease: config.lease,
        stats: shared.stats.clone(),
    });
    start!(Pruner {
        pool: pool.clone(),
        retention: config.retention,
    });
    if let Some(claims) = license {
        start!(crate::license::watch::LicenseWatch { claims });
    }
    start!(Reindexer {
        pool: pool.clone(),
        worker_id: worker_id.clone(),
        reindex_interval: config.reindex_interval,
    });
    start!(TransactionWatch {
        pool: pool.clone(),
        held: Condition::new("a long transaction"),
    });
    start!(StaleWorkerSweep {
        pool: pool.clone(),
        lease: config.lease,
        stats: shared.stats.clone(),
    });
}

/// Moves running jobs whose lease expired back to `retryable` (or `discarded`).
pub(crate) struct Rescuer {
    pool: DbPool,
    worker_id: String,
    lease: Duration,
    stats: Arc<super::RuntimeStats>,
}

impl PeriodicTask for Rescuer {
    fn name(&self) -> &'static str {
        "rescuer"
    }
    fn interval(&self) -> Duration {
        (self.lease / 2).clamp(Duration::from_millis(100), Duration::from_secs(15))
    }
    async fn activate(&mut self) -> Result<Option<String>, String> {
        // The scan reads the whole queue table; one replica per interval does it. A little
        // slack so this replica's own next tick is never refused by its previous turn.
        let every = self.interval().mul_f64(0.8);
        if !db::jobs::take_turn(&self.pool, "rescuer", every, &self.worker_id)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(None);
        }
        let mut total = Vec::new();
        loop {
            let rescued = db::jobs::rescue_expired(&self.pool, BATCH)
                .await
                .map_err(|e| e.to_string())?;
            let n = rescued.len();
            total.extend(rescued);
            if (n as i64) < BATCH {
                break;
            }
        }
        if total.is_empty() {
            return Ok(None);
        }
        self.stats
            .rescued
            .fetch_add(total.len() as u64, Ordering::Relaxed);
        let mut workers: Vec<&str> = total
            .iter()
            .filter_map(|r| r.locked_by.as_deref())
            .collect();
        workers.sort_unstable();
        workers.dedup();
        let discarded = total
            .iter()
            .filter(|r| r.state == JobState::Discarded.as_str())
            .count();
        let mut ids: Vec<String> = total.iter().take(10).map(|r| r.id.to_string()).collect();
        if total.len() > ids.len() {
            ids.push("…".into());
        }
        Ok(Some(format!(
            "rescued {} jobs with expired leases ({} discarded, attempts spent) from presumed-dead workers: {} (jobs {})",
            total.len(),
            discarded,
            workers.join(", "),
            ids.join(", ")
        )))
    }
}

/// Deletes finished jobs past their retention, in batches.
pub(crate) struct Pruner {
    pool: DbPool,
    retention: crate::config::Retention,
}

impl PeriodicTask for Pruner {
    fn name(&self) -> &'static str {
        "pruner"
    }
    fn interval(&self) -> Duration {
        // Often enough that a short retention is honoured, never more than once a second.
        let r = &self.retention;
        (r.completed.min(r.discarded).min(r.cancelled) / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
    async fn activate(&mut self) -> Result<Option<String>, String> {
        let mut total = 0u64;
        loop {
            let n = db::jobs::prune(&self.pool, &self.retention, BATCH)
                .await
                .map_err(|e| e.to_string())?;
            total += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        // Webhook deliveries are remembered a week: longer than GitHub offers to redeliver.
        let deliveries = db::deliveries::prune(&self.pool, DELIVERY_RETENTION, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        Ok((total + deliveries > 0).then(|| {
            format!("pruned {total} finished jobs past retention and {deliveries} webhook deliveries older than 7 days")
        }))
    }
}

/// Removes `lettuce.workers` rows whose heartbeat stopped (crashed processes) and, when it
/// removed any, rescues the jobs they held at once instead of leaving them to lease expiry: a
/// SIGKILLed worker's jobs run again about [`super::lease::stale_after`] (15 s) after its last
/// heartbeat, not a lease (60 s) plus a rescue interval later. The table is one row per
/// process, so the sweep runs every second.
pub(crate) struct StaleWorkerSweep {
    pool: DbPool,
    lease: Duration,
    stats: Arc<super::RuntimeStats>,
}

impl StaleWorkerSweep {
    fn stale_after(&self) -> Duration {
        super::lease::stale_after(self.lease)
    }
}

impl PeriodicTask for StaleWorkerSweep {
    fn name(&self) -> &'static str {
        "stale-worker-sweep"
    }
    fn interval(&self) -> Duration {
        (self.stale_after() / 3).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
    async fn activate(&mut self) -> Result<Option<String>, String> {
        let gone = db::workers::sweep_stale(&self.pool, self.stale_after())
            .await
            .map_err(|e| e.to_string())?;
        if gone.is_empty() {
            return Ok(None);
        }
        // Every running job whose worker row is gone is an orphan: rescue them now.
        let mut rescued = 0usize;
        loop {
            let batch = db::jobs::rescue_expired(&self.pool, BATCH)
                .await
                .map_err(|e| e.to_string())?;
            rescued += batch.len();
            if (batch.len() as i64) < BATCH {
                break;
            }
        }
        self.stats
            .rescued
            .fetch_add(rescued as u64, Ordering::Relaxed);
        Ok(Some(format!(
            "removed stale worker rows: {}; rescued {rescued} jobs they held",
            gone.join(", ")
        )))
    }
}

/// Repositories not indexed within `LETTUCE_REINDEX_INTERVAL` (whose webhook is `manual`, or
/// whose deliveries were missed) get a default-branch `repo.index`: once per cluster per pass
/// (a maintenance turn), never one per replica, and never a second waiting one per repository
/// (coalesced).
pub(crate) struct Reindexer {
    pool: DbPool,
    worker_id: String,
    reindex_interval: Duration,
}

/// Repositories one pass enqueues at most; the rest wait for the next pass.
const REINDEX_BATCH: i64 = 100;

impl PeriodicTask for Reindexer {
    fn name(&self) -> &'static str {
        "reindexer"
    }
    fn interval(&self) -> Duration {
        (self.reindex_interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
    async fn activate(&mut self) -> Result<Option<String>, String> {
        let every = self.interval().mul_f64(0.8);
        if !db::jobs::take_turn(&self.pool, "reindexer", every, &self.worker_id)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(None);
        }
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let due = db::repositories::enqueue_due_reindexes(
            &**client,
            self.reindex_interval,
            REINDEX_BATCH,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok((!due.is_empty()).then(|| {
            format!(
                "scheduled reindex: {} repositories not indexed within {:?} have a repo.index waiting",
                due.len(),
                self.reindex_interval
            )
        }))
    }
}

/// A transaction open longer than this in the queue's database is worth a WARN: vacuum cannot
/// remove the dead rows it can still see, so every claim steps over more of them.
pub(crate) const LONG_TRANSACTION: Duration = Duration::from_secs(60);

/// WARNs (once, then every 30 s with the count) while another session holds a transaction open
/// for longer than [`LONG_TRANSACTION`], naming it; one INFO when it ends. The age is also
/// exported as `lettuce_db_oldest_transaction_age_seconds`.
pub(crate) struct TransactionWatch {
    pool: DbPool,
    held: Condition,
}

impl PeriodicTask for TransactionWatch {
    fn name(&self) -> &'static str {
        "transaction-watch"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(10)
    }
    async fn activate(&mut self) -> Result<Option<String>, String> {
        let t = db::probe::oldest_transaction(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        let now = std::time::Instant::now();
        if t.age_seconds < LONG_TRANSACTION.as_secs_f64() {
            if let Report::Cleared { lasted, .. } = self.held.ok_at(now) {
                tracing::info!(
                    watched_for_s = lasted.as_secs(),
                    "the long transaction holding back vacuum of the queue has ended"
                );
            }
            return Ok(None);
        }
        if matches!(self.held.failed_at(now), Report::Started | Report::Lasting { .. }) {
            tracing::warn!(
                pid = t.pid,
                application_name = t.application_name.as_deref().unwrap_or(""),
                open_for_s = t.age_seconds as u64,
                xmin_age = t.xmin_age,
                "a transaction has been open for over {} s: vacuum cannot remove lettuce.job_queue's dead rows while it lasts, so claims slow down; end it (pg_terminate_backend) if it is stuck",
                LONG_TRANSACTION.as_secs()
            );
        }
        Ok(None)
    }
}
