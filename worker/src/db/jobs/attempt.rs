//! The hot path of one attempt: claim ([`claim_batch`]), lease heartbeat ([`heartbeat`]) and
//! the batched completion ([`complete_batch`]). Every write on behalf of an attempt is fenced on
//! `(id, attempt, locked_by)` and `state = 'running'` (the `fence!` fragment of `db::jobs`).

use std::time::Duration;

use opentelemetry::trace::SpanContext;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use tracing::Instrument;

use super::{CHANNEL, record_sql};
use crate::db::repositories::RepositoryIndexed;
use crate::db::{DbError, DbPool};
use crate::job::{JobState, Transition};

/// One job claimed for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub payload: Value,
    pub priority: i16,
    /// The attempt this claim started (1 for the first run).
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: OffsetDateTime,
    pub attempted_at: OffsetDateTime,
    pub traceparent: Option<String>,
    /// Set when a field of the row could not be decoded (named in the text): the job is
    /// discarded without running.
    pub undecodable: Option<String>,
    /// The `db.claim_batch` span that claimed the job (for the job span's link); `None` when
    /// spans are not exported.
    pub claim_span: Option<SpanContext>,
    /// The attempt's `job.<kind>` span, set by the executor (for the links of the batched
    /// completion and heartbeat); `None` when spans are not exported.
    pub attempt_span: Option<SpanContext>,
}

/// Where a claim starts in `job_queue_fetch_idx (queue, priority, run_at, id)` order: past the
/// highest key a producer claimed (the claim *cursor*, `runtime/claim_cursor.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimKey {
    pub priority: i16,
    pub run_at: OffsetDateTime,
    pub id: i64,
}

impl ClaimedJob {
    /// The job's place in claim order.
    pub fn key(&self) -> ClaimKey {
        ClaimKey {
            priority: self.priority,
            run_at: self.run_at,
            id: self.id,
        }
    }
}

/// The claim, with an extra condition on the scanned rows (`""`: none).
///
/// `job_queue_fetch_idx` has no predicate on `state` (so this UPDATE changes no indexed column
/// and is a HOT update); running rows are skipped by the filter. The ids go through an array
/// (`= ANY(ARRAY(…))`) so the UPDATE is always a primary-key lookup per id: joined to a CTE
/// instead, the cached generic plan hashes the whole table on every claim (36 ms at 100k
/// queued rows instead of 7 ms; BENCHMARKS.md, "Profile").
macro_rules! claim_sql {
    ($after:literal) => {
        concat!(
            "
UPDATE lettuce.job_queue j
   SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), locked_by = $4,
       lease_expires_at = now() + $5 * interval '1 millisecond'
 WHERE j.id = ANY(ARRAY(
    SELECT id FROM lettuce.job_queue
     WHERE state IN ('available', 'scheduled', 'retryable')
       AND queue = $1 AND run_at <= now() AND kind = ANY($2)",
            $after,
            "
     ORDER BY priority, run_at, id
     LIMIT $3
     FOR UPDATE SKIP LOCKED))
RETURNING j.id, j.kind, j.queue, j.payload, j.priority, j.attempt, j.max_attempts, j.run_at,
          j.attempted_at, j.traceparent"
        )
    };
}

/// The *full* claim: from the start of the queue's part of the index. Under a transaction that
/// holds an xid (or an old snapshot) every row claimed and deleted since it began is still in
/// the index and the heap, and this scan steps over all of them (issue 19).
pub const CLAIM_SQL: &str = claim_sql!("");

/// The *bounded* claim: the row comparison is an index condition of `job_queue_fetch_idx`
/// after `queue = $1`, so the scan is positioned past the cursor `($6, $7, $8)` and never
/// visits the entries this producer already claimed (dead or not). What can land below the
/// cursor is taken by the next full claim (`runtime/claim_cursor.rs`).
pub const CLAIM_AFTER_SQL: &str = claim_sql!(
    "
       AND (priority, run_at, id) > ($6, $7, $8)"
);

/// How a claim's transaction starts (see `claim_batch_sql`): sorting off, so the claim walks
/// `job_queue_fetch_idx` in order and stops at its limit whatever the table's statistics say.
pub const CLAIM_BEGIN: &str = "BEGIN; SET LOCAL enable_sort = off";

/// Claims up to `limit` runnable jobs of `kinds` from `queue` in `priority, run_at, id` order,
/// in one statement, starting past `after` (from the start when `None`). Never more than the
/// caller's free slots.
pub async fn claim_batch(
    pool: &DbPool,
    queue: &str,
    kinds: &[String],
    limit: i64,
    worker_id: &str,
    lease: Duration,
    after: Option<ClaimKey>,
) -> Result<Vec<ClaimedJob>, DbError> {
    let sql = if after.is_some() {
        CLAIM_AFTER_SQL
    } else {
        CLAIM_SQL
    };
    let span = crate::observability::sql_span("db.claim_batch", "UPDATE", "lettuce.job_queue", sql);
    let mut result = claim_batch_sql(pool, queue, kinds, limit, worker_id, lease, after)
        .instrument(span.clone())
        .await;
    record_sql(&span, &result, |jobs| jobs.len());
    if let (false, Ok(jobs)) = (span.is_disabled(), &mut result) {
        // The claim links to the producers (the stored traceparents); each job links back.
        let claim = crate::observability::span_context(&span);
        for job in jobs.iter_mut() {
            if let Some(producer) = job
                .traceparent
                .as_deref()
                .and_then(crate::observability::span_context_from_traceparent)
            {
                crate::observability::add_links(&span, [&producer]);
            }
            job.claim_span = claim.clone();
        }
    }
    result
}

async fn claim_batch_sql(
    pool: &DbPool,
    queue: &str,
    kinds: &[String],
    limit: i64,
    worker_id: &str,
    lease: Duration,
    after: Option<ClaimKey>,
) -> Result<Vec<ClaimedJob>, DbError> {
    let client = pool.get().await?;
    let lease_ms = lease.as_millis() as f64;
    let claim = async {
        match after {
            None => {
                client
                    .query_typed(CLAIM_SQL, params![queue, kinds, limit, worker_id, lease_ms])
                    .await
            }
            Some(k) => {
                client
                    .query_typed(
                        CLAIM_AFTER_SQL,
                        params![
                            queue, kinds, limit, worker_id, lease_ms, k.priority, k.run_at, k.id
                        ],
                    )
                    .await
            }
        }
    };
    // The claim runs in its own transaction with sorting disabled, the three messages pipelined
    // (sent before any answer is read: one round trip). The queue table's statistics are
    // usually from a moment it was nearly empty (ANALYZE ran when nothing waited); with them
    // the planner expects almost no runnable row and, from a few thousand queued rows on,
    // sorts every match instead of walking `job_queue_fetch_idx` in order and stopping at the
    // limit: a sort over the whole backlog on every claim (BENCHMARKS.md, "Issue 19").
    let (begin, rows, commit) = futures_util::future::join3(
        client.batch_execute(CLAIM_BEGIN),
        claim,
        // After a failed claim the server answers COMMIT with a rollback.
        client.batch_execute("COMMIT"),
    )
    .await;
    begin?;
    let rows = rows?;
    commit?;
    let mut jobs: Vec<ClaimedJob> = rows.iter().map(claimed_job).collect();
    jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// Decodes one claimed row without ever panicking. The id, attempt and counters are integers
/// Postgres always hands over; a field Rust cannot decode (a number beyond a double in the
/// payload, nesting deeper than the JSON decoder allows, a text column in another encoding)
/// yields a job whose `undecodable` names the field, which the runtime discards unrun.
fn claimed_job(r: &tokio_postgres::Row) -> ClaimedJob {
    let mut problem: Option<String> = None;
    let mut field = |name: &str, e: tokio_postgres::Error| {
        let source = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        problem.get_or_insert_with(|| format!("{name} cannot be decoded: {source}"));
    };
    let now = OffsetDateTime::now_utc();
    let kind = r.try_get(1).unwrap_or_else(|e| {
        field("kind", e);
        String::new()
    });
    let queue = r.try_get(2).unwrap_or_else(|e| {
        field("queue", e);
        String::new()
    });
    let payload = r.try_get(3).unwrap_or_else(|e| {
        field("payload", e);
        Value::Null
    });
    let run_at = r.try_get(7).unwrap_or_else(|e| {
        field("run_at", e);
        now
    });
    let attempted_at = r.try_get(8).unwrap_or_else(|e| {
        field("attempted_at", e);
        now
    });
    let traceparent = r.try_get(9).unwrap_or_else(|e| {
        field("traceparent", e);
        None
    });
    ClaimedJob {
        id: r.get(0),
        kind,
        queue,
        payload,
        priority: r.get(4),
        attempt: r.get(5),
        max_attempts: r.get(6),
        run_at,
        attempted_at,
        traceparent,
        undecodable: problem,
        claim_span: None,
        attempt_span: None,
    }
}

/// The row an outcome turns into, written by [`complete_batch`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: i64,
    pub attempt: i32,
    /// What the outcome writes: the new state, delay, error and attempt restore.
    pub transition: Transition,
    /// The queue, for the wake-up NOTIFY when the job becomes available again.
    pub queue: String,
    /// The attempt's span, which the batch's `db.complete_batch` span links to.
    pub span: Option<SpanContext>,
}

/// An artifact row written in the same transaction as its job's completion.
#[derive(Debug, Clone)]
pub struct ArtifactRow {
    pub job_id: i64,
    pub key: String,
    pub size: i64,
    pub sha256: String,
    pub etag: Option<String>,
}

/// The CTE both finishing statements start with: the batch's fenced rows deleted from
/// `job_queue`, returned as history rows (`job_columns!` order) named `done`.
macro_rules! finished_rows {
    () => {
        concat!(
            "
WITH done AS (
    DELETE FROM lettuce.job_queue j
     USING (SELECT u.*, $6::text AS me, 'running'::text AS running
              FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::bool[])
                   AS u(id, attempt, state, error, restore)
            OFFSET 0) u
     WHERE ",
            fence!(),
            "
    RETURNING j.id, j.kind, j.queue, j.payload, j.priority, u.state,
              CASE WHEN u.restore THEN j.attempt - 1 ELSE j.attempt END, j.max_attempts, j.run_at,
              j.created_at, j.attempted_at, now(), j.locked_by, NULL::timestamptz,
              lettuce.append_error(j.errors, j.attempt, u.error), j.unique_key, j.traceparent
)"
        )
    };
}

/// Sent as an unnamed statement (`query_typed`: one round trip, planned with the batch's actual
/// arrays), never as a cached prepared statement. A cached statement switches to a generic plan
/// after five runs, and a generic plan built on a queue table's statistics (always stale: "about
/// one running row") can drive the join from the wrong side and rescan the unnest for each row,
/// O(running × batch) — 1.25 s instead of 31 ms for a batch of 1,000 (see BENCHMARKS.md,
/// "Profile"). The custom plan hashes one side instead.
///
/// Final outcomes (completed, discarded, cancelled) move the row from `job_queue` to
/// `job_history`: a DELETE and an INSERT, no index entry written in the hot table. Fenced on
/// `(id, attempt, locked_by)` and `state = 'running'`.
///
/// The shape of the three statements joining a batch to `job_queue` (this one, REQUEUE_SQL,
/// HEARTBEAT_SQL) is deliberate: the queue table's statistics always say "nothing running"
/// (ANALYZE ran when nothing was), so a fence written as restrictions on `j` (`j.state =
/// 'running' AND j.locked_by = $me`) makes the planner expect one row and pick a nested loop
/// that rescans the batch for every row: 240 ms for 1,000 ids instead of 8. Instead, `j` is
/// reached only through `j.id = ANY($1)` (estimated at the batch size) and the fence values
/// come from the batch side (`OFFSET 0` keeps them from being folded back into restrictions),
/// so the join is hashed.
/// (`scripts/claim-complete-explain` EXPLAINs a hand-written copy of this text and of CLAIM_SQL:
/// change it with them.)
const FINISH_SQL: &str = concat!(
    finished_rows!(),
    "
INSERT INTO lettuce.job_history (",
    job_columns!(),
    ")
SELECT * FROM done
RETURNING id"
);

/// FINISH_SQL when completed jobs are not kept (retention `completed=0`): a completed row is
/// deleted from `job_queue` and only counted (`lettuce.job_counts`, per hour and worker, for the
/// heartbeat's figures); discarded and cancelled rows still move to the history. Two row writes
/// per successful job (the claim's HOT update, the delete) instead of three.
const FINISH_DROPPING_COMPLETED_SQL: &str = concat!(
    finished_rows!(),
    ", kept AS (
    INSERT INTO lettuce.job_history (",
    job_columns!(),
    ")
    SELECT * FROM done WHERE state <> 'completed'
), counted AS (
    INSERT INTO lettuce.job_counts (hour, worker_id, state, n)
    SELECT date_trunc('hour', now()), $6::text, 'completed', count(*)
      FROM done WHERE state = 'completed' HAVING count(*) > 0
    ON CONFLICT (hour, worker_id, state) DO UPDATE SET n = lettuce.job_counts.n + EXCLUDED.n
)
SELECT id FROM done"
);

/// The other outcomes (retry, snooze, hand-back) keep the row in `job_queue`, updated in place.
/// Same fence.
const REQUEUE_SQL: &str = concat!(
    "
UPDATE lettuce.job_queue j
   SET state = u.state,
       attempt = CASE WHEN u.restore THEN j.attempt - 1 ELSE j.attempt END,
       run_at = CASE WHEN u.delay_ms IS NULL THEN j.run_at ELSE now() + u.delay_ms * interval '1 millisecond' END,
       lease_expires_at = NULL,
       errors = lettuce.append_error(j.errors, j.attempt, u.error)
  FROM (SELECT u.*, $6::text AS me, 'running'::text AS running
          FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::bool[], $7::float8[])
               AS u(id, attempt, state, error, restore, delay_ms)
        OFFSET 0) u
 WHERE ",
    fence!(),
    "
RETURNING j.id"
);

/// [`complete_batch_with`] without repository rows (the benchmarks call it directly).
#[cfg(feature = "testing")]
pub async fn complete_batch(
    pool: &DbPool,
    worker_id: &str,
    keep_completed: bool,
    batch: &[Completion],
    artifacts: &[ArtifactRow],
) -> Result<Vec<i64>, DbError> {
    complete_batch_with(pool, worker_id, keep_completed, batch, artifacts, &[]).await
}

/// Writes a batch of outcomes in one statement (plus artifact rows, the repository rows that
/// completed `repo.index` jobs update ([`crate::db::repositories::record_index`]) and a wake-up
/// NOTIFY in the same transaction when needed). Returns the ids whose write was accepted; the
/// others were fenced off (rescued, cancelled or reassigned since the claim). Artifact and
/// repository rows are written for accepted completions only. `keep_completed` false (retention
/// `completed=0`): completed jobs leave no history row, only a count.
pub async fn complete_batch_with(
    pool: &DbPool,
    worker_id: &str,
    keep_completed: bool,
    batch: &[Completion],
    artifacts: &[ArtifactRow],
    indexed: &[RepositoryIndexed],
) -> Result<Vec<i64>, DbError> {
    // The span shows the statement that carries the batch: FINISH_SQL unless nothing finished.
    let shown = if batch.iter().any(|c| c.transition.to.is_final()) {
        finish_sql(keep_completed)
    } else {
        REQUEUE_SQL
    };
    let span =
        crate::observability::sql_span("db.complete_batch", "UPDATE", "lettuce.job_queue", shown);
    crate::observability::add_links(&span, batch.iter().filter_map(|c| c.span.as_ref()));
    let result = complete_batch_sql(pool, worker_id, keep_completed, batch, artifacts, indexed)
        .instrument(span.clone())
        .await;
    record_sql(&span, &result, |ids| ids.len());
    result
}

fn finish_sql(keep_completed: bool) -> &'static str {
    if keep_completed {
        FINISH_SQL
    } else {
        FINISH_DROPPING_COMPLETED_SQL
    }
}

/// Runs FINISH_SQL (or its dropping variant) or REQUEUE_SQL for one part of a batch; returns the
/// accepted ids.
async fn write_outcomes(
    client: &impl GenericClient,
    worker_id: &str,
    keep_completed: bool,
    part: &[&Completion],
) -> Result<Vec<i64>, DbError> {
    if part.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = part.iter().map(|c| c.id).collect();
    let attempts: Vec<i32> = part.iter().map(|c| c.attempt).collect();
    let states: Vec<&str> = part.iter().map(|c| c.transition.to.as_str()).collect();
    let errors: Vec<Option<&str>> = part.iter().map(|c| c.transition.error.as_deref()).collect();
    let restores: Vec<bool> = part.iter().map(|c| c.transition.restore_attempt).collect();
    let delays: Vec<Option<f64>> = part
        .iter()
        .map(|c| c.transition.delay.map(|d| d.as_millis() as f64))
        .collect();
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 7] = [
        (&ids, Type::INT8_ARRAY),
        (&attempts, Type::INT4_ARRAY),
        (&states, Type::TEXT_ARRAY),
        (&errors, Type::TEXT_ARRAY),
        (&restores, Type::BOOL_ARRAY),
        (&worker_id, Type::TEXT),
        (&delays, Type::FLOAT8_ARRAY),
    ];
    let rows = if part[0].transition.to.is_final() {
        client
            .query_typed(finish_sql(keep_completed), &params[..6])
            .await?
    } else {
        client.query_typed(REQUEUE_SQL, &params).await?
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn complete_batch_sql(
    pool: &DbPool,
    worker_id: &str,
    keep_completed: bool,
    batch: &[Completion],
    artifacts: &[ArtifactRow],
    indexed: &[RepositoryIndexed],
) -> Result<Vec<i64>, DbError> {
    let mut client = pool.get().await?;
    let (finished, requeued): (Vec<&Completion>, Vec<&Completion>) =
        batch.iter().partition(|c| c.transition.to.is_final());
    let mut wake: Vec<&str> = batch
        .iter()
        .filter(|c| c.transition.to == JobState::Available)
        .map(|c| c.queue.as_str())
        .collect();
    wake.sort_unstable();
    wake.dedup();
    let needs_tx = !artifacts.is_empty()
        || !indexed.is_empty()
        || !wake.is_empty()
        || (!finished.is_empty() && !requeued.is_empty());
    if !needs_tx {
        let part = if finished.is_empty() {
            &requeued
        } else {
            &finished
        };
        return write_outcomes(&**client, worker_id, keep_completed, part).await;
    }
    let tx = client.transaction().await?;
    let mut accepted = write_outcomes(&*tx, worker_id, keep_completed, &finished).await?;
    accepted.extend(write_outcomes(&*tx, worker_id, keep_completed, &requeued).await?);
    let accepted_set: std::collections::HashSet<i64> = accepted.iter().copied().collect();
    let kept: Vec<&ArtifactRow> = artifacts
        .iter()
        .filter(|a| accepted_set.contains(&a.job_id))
        .collect();
    if !kept.is_empty() {
        let job_ids: Vec<i64> = kept.iter().map(|a| a.job_id).collect();
        let keys: Vec<&str> = kept.iter().map(|a| a.key.as_str()).collect();
        let sizes: Vec<i64> = kept.iter().map(|a| a.size).collect();
        let shas: Vec<&str> = kept.iter().map(|a| a.sha256.as_str()).collect();
        let etags: Vec<Option<&str>> = kept.iter().map(|a| a.etag.as_deref()).collect();
        tx.execute_typed(
            "INSERT INTO lettuce.job_artifacts (job_id, key, size, sha256, etag)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[])
             ON CONFLICT (job_id, key) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, etag = excluded.etag",
            params![job_ids, keys, sizes, shas, etags])
        .await?;
    }
    // Repository rows only for jobs whose write as `completed` was accepted (not for the
    // discarded fallback of a refused outcome).
    let completed: std::collections::HashSet<i64> = finished
        .iter()
        .filter(|c| c.transition.to == JobState::Completed && accepted_set.contains(&c.id))
        .map(|c| c.id)
        .collect();
    let indexed: Vec<&RepositoryIndexed> = indexed
        .iter()
        .filter(|r| completed.contains(&r.job_id))
        .collect();
    if !indexed.is_empty() {
        crate::db::repositories::record_index(&*tx, &indexed).await?;
    }
    for queue in wake {
        tx.execute_typed("SELECT pg_notify($1, $2)", params![CHANNEL, queue])
            .await?;
    }
    tx.commit().await?;
    Ok(accepted)
}

/// Extends the leases of this worker's running attempts and refreshes its presence row, in one
/// statement. Returns the ids still held; any other id was lost (rescued or cancelled).
/// `attempt_spans` are the held attempts' spans, which the `db.heartbeat` span links to.
pub async fn heartbeat(
    pool: &DbPool,
    worker: &crate::db::workers::WorkerRow,
    held: &[(i64, i32)],
    attempt_spans: &[SpanContext],
    lease: Duration,
) -> Result<Vec<i64>, DbError> {
    let span =
        crate::observability::sql_span("db.heartbeat", "UPDATE", "lettuce.job_queue", HEARTBEAT_SQL);
    crate::observability::add_links(&span, attempt_spans);
    let result = heartbeat_sql(pool, worker, held, lease)
        .instrument(span.clone())
        .await;
    record_sql(&span, &result, |ids| ids.len());
    result
}

const HEARTBEAT_SQL: &str = concat!(
    "WITH w AS (",
    presence_upsert!("$4", "$5", "$6", "$7", "$8"),
    ")
UPDATE lettuce.job_queue j SET lease_expires_at = now() + $3 * interval '1 millisecond'
  FROM (SELECT u.*, $4::text AS me, 'running'::text AS running
          FROM unnest($1::int8[], $2::int4[]) AS u(id, attempt)
        OFFSET 0) u
 WHERE ",
    fence!(),
    "
RETURNING j.id"
);

async fn heartbeat_sql(
    pool: &DbPool,
    worker: &crate::db::workers::WorkerRow,
    held: &[(i64, i32)],
    lease: Duration,
) -> Result<Vec<i64>, DbError> {
    let client = pool.get().await?;
    let ids: Vec<i64> = held.iter().map(|h| h.0).collect();
    let attempts: Vec<i32> = held.iter().map(|h| h.1).collect();
    let lease_ms = lease.as_millis() as f64;
    // Unnamed statement for the same reason as FINISH_SQL: the join over the running set must
    // be planned with the actual array, not a generic plan built on stale statistics.
    let rows = client
        .query_typed(
            HEARTBEAT_SQL,
            &[
                (&ids, Type::INT8_ARRAY),
                (&attempts, Type::INT4_ARRAY),
                (&lease_ms, Type::FLOAT8),
                (&worker.id, Type::TEXT),
                (&worker.hostname, Type::TEXT),
                (&worker.pid, Type::INT4),
                (&worker.version, Type::TEXT),
                (&worker.queues, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
