//! What maintenance runs over the jobs: rescue of expired leases, pruning of history,
//! cluster-wide turns, and the queue-depth scan `/metrics` reads.

use std::time::Duration;

use crate::db::{DbError, DbPool};

/// One group of [`queue_depth`]: jobs of `queue` in `state`, and for `available` the seconds
/// since the oldest of them became runnable (`now() - min(run_at)`, at least 0).
pub type DepthRow = (String, String, i64, Option<f64>);

/// Jobs in non-final states by queue and state, for `/metrics`, with the oldest available job's
/// age (the latency an SRE pages on) from the same scan. Bounded: the statement may take at
/// most two seconds and returns at most 1000 groups, so a scrape stays cheap.
pub async fn queue_depth(pool: &DbPool) -> Result<Vec<DepthRow>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL statement_timeout = 2000")
        .await?;
    let rows = tx
        .query_typed(
            "SELECT queue, state, count(*),
                    CASE WHEN state = 'available'
                         THEN GREATEST(0, EXTRACT(EPOCH FROM now() - min(run_at)))::float8 END
               FROM lettuce.job_queue
              GROUP BY queue, state
              ORDER BY queue, state
              LIMIT 1000",
            params![])
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// The error a rescued attempt gets: its worker is presumed dead.
macro_rules! presumed_dead {
    ($j:literal) => {
        concat!(
            "CASE WHEN ",
            $j,
            ".lease_expires_at < now() THEN 'lease expired: worker ' ELSE 'heartbeat stopped: worker ' END || coalesce(",
            $j,
            ".locked_by, '(unknown)') || ' presumed dead'"
        )
    };
}

/// A job whose lease expired and was taken back from a presumed-dead worker.
#[derive(Debug, Clone)]
pub struct Rescued {
    pub id: i64,
    pub state: String,
    pub locked_by: Option<String>,
}

/// Rescues up to `limit` running jobs whose lease expired or whose worker's presence row is gone
/// (swept as stale: the worker stopped heartbeating): `retryable` (run now), or `discarded` when
/// no attempt is left, with an error naming the presumed-dead worker. Wakes their queues.
pub async fn rescue_expired(pool: &DbPool, limit: i64) -> Result<Vec<Rescued>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query_typed(
            concat!(
                "WITH expired AS (
                 SELECT id FROM lettuce.job_queue
                  WHERE state = 'running'
                    AND (lease_expires_at < now()
                         OR NOT EXISTS (SELECT 1 FROM lettuce.workers w WHERE w.id = job_queue.locked_by))
                  ORDER BY lease_expires_at
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED
             ), spent AS (
                 DELETE FROM lettuce.job_queue j
                  USING expired
                  WHERE j.id = expired.id AND lettuce.attempts_spent(j.attempt, j.max_attempts)
                 RETURNING j.id, j.kind, j.queue, j.payload, j.priority, 'discarded', j.attempt,
                           j.max_attempts, now(), j.created_at, j.attempted_at, now(), j.locked_by,
                           NULL::timestamptz,
                           lettuce.append_error(j.errors, j.attempt, ",
                presumed_dead!("j"),
                "),
                           j.unique_key, j.traceparent
             ), discarded AS (
                 INSERT INTO lettuce.job_history (",
                job_columns!(),
                ")
                 SELECT * FROM spent
                 RETURNING id, state, locked_by, queue
             ), retried AS (
                 UPDATE lettuce.job_queue j
                    SET state = 'retryable',
                        run_at = now(),
                        lease_expires_at = NULL,
                        errors = lettuce.append_error(j.errors, j.attempt, ",
                presumed_dead!("j"),
                ")
                   FROM expired
                  WHERE j.id = expired.id AND NOT lettuce.attempts_spent(j.attempt, j.max_attempts)
                 RETURNING j.id, j.state, j.locked_by, j.queue
             )
             SELECT id, state, locked_by, NULL FROM discarded
             UNION ALL
             SELECT id, state, locked_by, pg_notify('",
                channel!(),
                "', queue)::text FROM retried"
            ),
            params![limit])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Rescued {
            id: r.get(0),
            state: r.get(1),
            locked_by: r.get(2),
        })
        .collect())
}

/// Takes this interval's turn of a cluster-wide maintenance `task`: true when its last run
/// (by any replica) is at least `every` ago, and records this one.
pub async fn take_turn(
    pool: &DbPool,
    task: &str,
    every: Duration,
    worker_id: &str,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let every_ms = every.as_millis() as f64;
    let row = client
        .query_typed_opt(
            "INSERT INTO lettuce.maintenance_turns AS t (task, last_run_at, taken_by)
             VALUES ($1, now(), $3)
             ON CONFLICT (task) DO UPDATE SET last_run_at = now(), taken_by = excluded.taken_by
              WHERE t.last_run_at <= now() - $2 * interval '1 millisecond'
             RETURNING 1",
            params![task, every_ms, worker_id])
        .await?;
    Ok(row.is_some())
}

/// Deletes up to `limit` finished jobs older than their retention. Returns how many went.
pub async fn prune(
    pool: &DbPool,
    retention: &crate::config::Retention,
    limit: i64,
) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let ms = |d: Duration| d.as_millis() as f64;
    let n = client
        .execute_typed(
            "WITH doomed AS (
                 SELECT id FROM lettuce.job_history
                  WHERE finished_at < now() - CASE state WHEN 'completed' THEN $1::float8 WHEN 'discarded' THEN $2::float8 ELSE $3::float8 END
                                              * interval '1 millisecond'
                  LIMIT $4::int8
                  FOR UPDATE SKIP LOCKED
             )
             DELETE FROM lettuce.job_history j USING doomed WHERE j.id = doomed.id",
            params![ms(retention.completed), ms(retention.discarded), ms(retention.cancelled), limit])
        .await?;
    // The counts of completed jobs kept without a row (retention `completed=0`) are read for
    // 24 hours; two days of them are kept.
    client
        .execute_typed(
            "DELETE FROM lettuce.job_counts WHERE hour < now() - interval '2 days'",
            params![],
        )
        .await?;
    Ok(n)
}
