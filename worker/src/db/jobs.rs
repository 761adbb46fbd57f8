//! Every statement that touches the jobs (`lettuce.job_queue`, `lettuce.job_history` and the
//! `lettuce.jobs` view over both), one function each.
//!
//! Writes on behalf of a running attempt (completion, heartbeat) are fenced on
//! `(id, attempt, locked_by)` and `state = 'running'`: a worker whose job was rescued, cancelled
//! or handed to another worker cannot overwrite what happened since.

use std::time::Duration;

use opentelemetry::trace::SpanContext;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use tracing::Instrument;

use super::{DbError, DbPool};
use crate::limits::{self, LimitError};

/// Postgres NOTIFY channel; the payload is the queue name.
pub const CHANNEL: &str = "lettuce_jobs";
/// Postgres NOTIFY channel for control messages to running workers (`cancel:<id>`, sent by the
/// `lettuce.jobs` view trigger when a running job is finished by hand).
pub const CONTROL_CHANNEL: &str = "lettuce_control";

/// A job to enqueue through the Rust API.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    pub queue: String,
    pub priority: i16,
    /// `None` runs as soon as possible.
    pub run_at: Option<OffsetDateTime>,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    /// W3C trace context of the enqueuer, so the job span can be its child.
    pub traceparent: Option<String>,
}

impl NewJob {
    /// A job of `kind` with `payload` and the documented defaults for everything else.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            queue: "default".into(),
            priority: 0,
            run_at: None,
            max_attempts: 5,
            unique_key: None,
            traceparent: None,
        }
    }
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }
    pub fn run_at(mut self, at: OffsetDateTime) -> Self {
        self.run_at = Some(at);
        self
    }
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n;
        self
    }
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    pub fn traceparent(mut self, tp: impl Into<String>) -> Self {
        self.traceparent = Some(tp.into());
        self
    }

    /// The first input limit this job breaks (README "Limits"); the database checks the same.
    pub fn check(&self) -> Result<(), LimitError> {
        limits::check_kind(&self.kind)?;
        limits::check_queue(&self.queue)?;
        limits::check_max_attempts(self.max_attempts)?;
        limits::check_lengths(self.unique_key.as_deref(), self.traceparent.as_deref())?;
        limits::check_payload(&self.payload)
    }
}

/// Enqueues one job inside the caller's transaction (or autocommit client) via
/// `lettuce.enqueue`, returning its id (or the existing id for a duplicate unique key).
///
/// The enqueue is a PRODUCER span (`enqueue <queue>`, a child of the current span); with no
/// `traceparent` set, that span's context is stored, so the job's span becomes its child.
pub async fn enqueue(client: &impl GenericClient, job: &NewJob) -> Result<i64, DbError> {
    job.check()?;
    let span = crate::telemetry::producer_span(Some(&job.queue), 1);
    let traceparent = job
        .traceparent
        .clone()
        .or_else(|| crate::telemetry::traceparent_of(&span));
    let result = enqueue_sql(client, job, &traceparent)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(id) if !span.is_disabled() => {
            span.record("messaging.message.id", id.to_string().as_str());
        }
        Ok(_) => {}
        Err(e) => crate::telemetry::record_error(&span, e),
    }
    result
}

async fn enqueue_sql(
    client: &impl GenericClient,
    job: &NewJob,
    traceparent: &Option<String>,
) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT lettuce.enqueue($1, $2, $3, $4::int, coalesce($5, now()), $6, $7, $8)",
            &[
                &job.kind,
                &job.payload,
                &job.queue,
                &(job.priority as i32),
                &job.run_at,
                &job.max_attempts,
                &job.unique_key,
                traceparent,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Enqueues many jobs in two statements at most, inside the caller's transaction. Returns the
/// ids in input order. Jobs without a unique key go through one multi-row `INSERT … unnest`;
/// jobs with one go through `lettuce.enqueue` so the unique rule is applied row by row.
pub async fn enqueue_many(
    client: &impl GenericClient,
    jobs: &[NewJob],
) -> Result<Vec<i64>, DbError> {
    for job in jobs {
        job.check()?;
    }
    let queue = jobs
        .first()
        .map(|j| j.queue.as_str())
        .filter(|q| jobs.iter().all(|j| j.queue == *q));
    let span = crate::telemetry::producer_span(queue, jobs.len());
    let result = enqueue_many_sql(client, jobs, &span)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(ids) if ids.len() == 1 && !span.is_disabled() => {
            span.record("messaging.message.id", ids[0].to_string().as_str());
        }
        Ok(_) => {}
        Err(e) => crate::telemetry::record_error(&span, e),
    }
    result
}

async fn enqueue_many_sql(
    client: &impl GenericClient,
    jobs: &[NewJob],
    span: &tracing::Span,
) -> Result<Vec<i64>, DbError> {
    let mut ids = vec![0i64; jobs.len()];
    // Jobs without their own traceparent carry the producer span's (see `enqueue`).
    let ambient = if jobs.iter().any(|j| j.traceparent.is_none()) {
        crate::telemetry::traceparent_of(span)
    } else {
        None
    };
    let (plain, unique): (Vec<usize>, Vec<usize>) =
        (0..jobs.len()).partition(|&i| jobs[i].unique_key.is_none());
    for (positions, with_unique) in [(plain, false), (unique, true)] {
        if positions.is_empty() {
            continue;
        }
        let pick =
            |f: &dyn Fn(&NewJob) -> _| positions.iter().map(|&i| f(&jobs[i])).collect::<Vec<_>>();
        let kinds: Vec<String> = pick(&|j| j.kind.clone());
        let payloads: Vec<Value> = positions.iter().map(|&i| jobs[i].payload.clone()).collect();
        let queues: Vec<String> = positions.iter().map(|&i| jobs[i].queue.clone()).collect();
        let priorities: Vec<i16> = positions.iter().map(|&i| jobs[i].priority).collect();
        let run_ats: Vec<Option<OffsetDateTime>> =
            positions.iter().map(|&i| jobs[i].run_at).collect();
        let max_attempts: Vec<i32> = positions.iter().map(|&i| jobs[i].max_attempts).collect();
        let unique_keys: Vec<Option<String>> = positions
            .iter()
            .map(|&i| jobs[i].unique_key.clone())
            .collect();
        let traceparents: Vec<Option<String>> = positions
            .iter()
            .map(|&i| jobs[i].traceparent.clone().or_else(|| ambient.clone()))
            .collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &kinds,
            &payloads,
            &queues,
            &priorities,
            &run_ats,
            &max_attempts,
            &unique_keys,
            &traceparents,
        ];
        let rows = if with_unique {
            client
                .query(
                    "SELECT u.ord, lettuce.enqueue(u.kind, u.payload, u.queue, u.priority::int,
                                                   coalesce(u.run_at, now()), u.max_attempts, u.unique_key, u.traceparent)
                       FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::int2[], $5::timestamptz[],
                                   $6::int4[], $7::text[], $8::text[])
                            WITH ORDINALITY AS u(kind, payload, queue, priority, run_at, max_attempts, unique_key, traceparent, ord)
                      ORDER BY u.ord",
                    &params,
                )
                .await?
        } else {
            client
                .query(
                    "INSERT INTO lettuce.job_queue (kind, payload, queue, priority, run_at, max_attempts, traceparent, state)
                     SELECT u.kind, u.payload, u.queue, u.priority, coalesce(u.run_at, now()), u.max_attempts, u.traceparent,
                            CASE WHEN u.run_at > now() THEN 'scheduled' ELSE 'available' END
                       FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::int2[], $5::timestamptz[],
                                   $6::int4[], $7::text[], $8::text[])
                            WITH ORDINALITY AS u(kind, payload, queue, priority, run_at, max_attempts, unique_key, traceparent, ord)
                      ORDER BY u.ord
                     RETURNING id",
                    &params,
                )
                .await?
        };
        if with_unique {
            for row in rows {
                let ord: i64 = row.get(0);
                ids[positions[(ord - 1) as usize]] = row.get(1);
            }
        } else {
            // Identity values are drawn in the order rows are inserted, which is `ord` order.
            let mut inserted: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            inserted.sort_unstable();
            for (slot, id) in positions.iter().zip(inserted) {
                ids[*slot] = id;
            }
        }
    }
    Ok(ids)
}

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

/// `job_queue_fetch_idx` has no predicate on `state` (so this UPDATE changes no indexed column
/// and is a HOT update); running rows are skipped by the filter. The ids go through an array
/// (`= ANY(ARRAY(…))`) so the UPDATE is always a primary-key lookup per id: joined to a CTE
/// instead, the cached generic plan hashes the whole table on every claim (36 ms at 100k
/// queued rows instead of 7 ms; BENCHMARKS.md, "Profile").
const CLAIM_SQL: &str = "
UPDATE lettuce.job_queue j
   SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), locked_by = $4,
       lease_expires_at = now() + $5 * interval '1 millisecond'
 WHERE j.id = ANY(ARRAY(
    SELECT id FROM lettuce.job_queue
     WHERE state IN ('available', 'scheduled', 'retryable')
       AND queue = $1 AND run_at <= now() AND kind = ANY($2)
     ORDER BY priority, run_at, id
     LIMIT $3
     FOR UPDATE SKIP LOCKED))
RETURNING j.id, j.kind, j.queue, j.payload, j.priority, j.attempt, j.max_attempts, j.run_at,
          j.attempted_at, j.traceparent";

/// Claims up to `limit` runnable jobs of `kinds` from `queue` in `priority, run_at, id` order,
/// in one statement. Never more than the caller's free slots.
pub async fn claim_batch(
    pool: &DbPool,
    queue: &str,
    kinds: &[String],
    limit: i64,
    worker_id: &str,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, DbError> {
    let span =
        crate::telemetry::sql_span("db.claim_batch", "UPDATE", "lettuce.job_queue", CLAIM_SQL);
    let mut result = claim_batch_sql(pool, queue, kinds, limit, worker_id, lease)
        .instrument(span.clone())
        .await;
    record_sql(&span, &result, |jobs| jobs.len());
    if let (false, Ok(jobs)) = (span.is_disabled(), &mut result) {
        // The claim links to the producers (the stored traceparents); each job links back.
        let claim = crate::telemetry::span_context(&span);
        for job in jobs.iter_mut() {
            if let Some(producer) = job
                .traceparent
                .as_deref()
                .and_then(crate::telemetry::span_context_from_traceparent)
            {
                crate::telemetry::add_links(&span, [&producer]);
            }
            job.claim_span = claim.clone();
        }
    }
    result
}

/// Records the row count, or the error, on a statement's span.
fn record_sql<T>(span: &tracing::Span, result: &Result<T, DbError>, rows: impl Fn(&T) -> usize) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(v) => {
            span.record("db.rows", rows(v) as u64);
        }
        Err(e) => crate::telemetry::record_error(span, e),
    }
}

async fn claim_batch_sql(
    pool: &DbPool,
    queue: &str,
    kinds: &[String],
    limit: i64,
    worker_id: &str,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, DbError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(CLAIM_SQL).await?;
    let lease_ms = lease.as_millis() as f64;
    let rows = client
        .query(&stmt, &[&queue, &kinds, &limit, &worker_id, &lease_ms])
        .await?;
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
    /// The new state: completed, retryable, discarded, scheduled, cancelled or available.
    pub state: &'static str,
    /// New `run_at` as a delay from the database's `now()`; `None` keeps it.
    pub delay: Option<Duration>,
    /// Appended to `errors` as `{attempt, at, error}` when present.
    pub error: Option<String>,
    /// Give the attempt back (snooze, hand-back on shutdown).
    pub restore_attempt: bool,
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
const FINISH_SQL: &str = "
WITH done AS (
    DELETE FROM lettuce.job_queue j
     USING (SELECT u.*, $6::text AS me, 'running'::text AS running
              FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::bool[])
                   AS u(id, attempt, state, error, restore)
            OFFSET 0) u
     WHERE j.id = ANY($1) AND j.id = u.id AND j.attempt = u.attempt AND j.locked_by = u.me
       AND j.state = u.running
    RETURNING j.*, u.state AS new_state, u.error AS new_error, u.restore
)
INSERT INTO lettuce.job_history
SELECT id, kind, queue, payload, priority, new_state,
       CASE WHEN restore THEN attempt - 1 ELSE attempt END, max_attempts, run_at, created_at,
       attempted_at, now(), locked_by, NULL,
       CASE WHEN new_error IS NULL THEN errors
            ELSE errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', now(), 'error', new_error)) END,
       unique_key, traceparent
  FROM done
RETURNING id";

/// The other outcomes (retry, snooze, hand-back) keep the row in `job_queue`, updated in place.
/// Same fence.
const REQUEUE_SQL: &str = "
UPDATE lettuce.job_queue j
   SET state = u.state,
       attempt = CASE WHEN u.restore THEN j.attempt - 1 ELSE j.attempt END,
       run_at = CASE WHEN u.delay_ms IS NULL THEN j.run_at ELSE now() + u.delay_ms * interval '1 millisecond' END,
       lease_expires_at = NULL,
       errors = CASE WHEN u.error IS NULL THEN j.errors
                     ELSE j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', u.error)) END
  FROM (SELECT u.*, $6::text AS me, 'running'::text AS running
          FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::bool[], $7::float8[])
               AS u(id, attempt, state, error, restore, delay_ms)
        OFFSET 0) u
 WHERE j.id = ANY($1) AND j.id = u.id AND j.attempt = u.attempt AND j.locked_by = u.me
   AND j.state = u.running
RETURNING j.id";

fn is_final(state: &str) -> bool {
    matches!(state, "completed" | "discarded" | "cancelled")
}

/// Writes a batch of outcomes in one statement (plus artifact rows and a wake-up NOTIFY in the
/// same transaction when needed). Returns the ids whose write was accepted; the others were
/// fenced off (rescued, cancelled or reassigned since the claim).
pub async fn complete_batch(
    pool: &DbPool,
    worker_id: &str,
    batch: &[Completion],
    artifacts: &[ArtifactRow],
) -> Result<Vec<i64>, DbError> {
    // The span shows the statement that carries the batch: FINISH_SQL unless nothing finished.
    let shown = if batch.iter().any(|c| is_final(c.state)) {
        FINISH_SQL
    } else {
        REQUEUE_SQL
    };
    let span =
        crate::telemetry::sql_span("db.complete_batch", "UPDATE", "lettuce.job_queue", shown);
    crate::telemetry::add_links(&span, batch.iter().filter_map(|c| c.span.as_ref()));
    let result = complete_batch_sql(pool, worker_id, batch, artifacts)
        .instrument(span.clone())
        .await;
    record_sql(&span, &result, |ids| ids.len());
    result
}

/// Runs FINISH_SQL or REQUEUE_SQL for one part of a batch; returns the accepted ids.
async fn write_outcomes(
    client: &impl GenericClient,
    worker_id: &str,
    part: &[&Completion],
) -> Result<Vec<i64>, DbError> {
    if part.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = part.iter().map(|c| c.id).collect();
    let attempts: Vec<i32> = part.iter().map(|c| c.attempt).collect();
    let states: Vec<&str> = part.iter().map(|c| c.state).collect();
    let errors: Vec<Option<&str>> = part.iter().map(|c| c.error.as_deref()).collect();
    let restores: Vec<bool> = part.iter().map(|c| c.restore_attempt).collect();
    let delays: Vec<Option<f64>> = part
        .iter()
        .map(|c| c.delay.map(|d| d.as_millis() as f64))
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
    let rows = if is_final(part[0].state) {
        client.query_typed(FINISH_SQL, &params[..6]).await?
    } else {
        client.query_typed(REQUEUE_SQL, &params).await?
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn complete_batch_sql(
    pool: &DbPool,
    worker_id: &str,
    batch: &[Completion],
    artifacts: &[ArtifactRow],
) -> Result<Vec<i64>, DbError> {
    let mut client = pool.get().await?;
    let (finished, requeued): (Vec<&Completion>, Vec<&Completion>) =
        batch.iter().partition(|c| is_final(c.state));
    let mut wake: Vec<&str> = batch
        .iter()
        .filter(|c| c.state == "available")
        .map(|c| c.queue.as_str())
        .collect();
    wake.sort_unstable();
    wake.dedup();
    let needs_tx =
        !artifacts.is_empty() || !wake.is_empty() || (!finished.is_empty() && !requeued.is_empty());
    if !needs_tx {
        let part = if finished.is_empty() {
            &requeued
        } else {
            &finished
        };
        return write_outcomes(&**client, worker_id, part).await;
    }
    let tx = client.transaction().await?;
    let mut accepted = write_outcomes(&*tx, worker_id, &finished).await?;
    accepted.extend(write_outcomes(&*tx, worker_id, &requeued).await?);
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
        tx.execute(
            "INSERT INTO lettuce.job_artifacts (job_id, key, size, sha256, etag)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[])
             ON CONFLICT (job_id, key) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, etag = excluded.etag",
            &[&job_ids, &keys, &sizes, &shas, &etags],
        )
        .await?;
    }
    for queue in wake {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &queue])
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
    worker: &super::workers::WorkerRow,
    held: &[(i64, i32)],
    attempt_spans: &[SpanContext],
    lease: Duration,
) -> Result<Vec<i64>, DbError> {
    let span =
        crate::telemetry::sql_span("db.heartbeat", "UPDATE", "lettuce.job_queue", HEARTBEAT_SQL);
    crate::telemetry::add_links(&span, attempt_spans);
    let result = heartbeat_sql(pool, worker, held, lease)
        .instrument(span.clone())
        .await;
    record_sql(&span, &result, |ids| ids.len());
    result
}

const HEARTBEAT_SQL: &str = "WITH w AS (
                 INSERT INTO lettuce.workers (id, hostname, pid, version, queues)
                 VALUES ($4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
             )
             UPDATE lettuce.job_queue j SET lease_expires_at = now() + $3 * interval '1 millisecond'
               FROM (SELECT u.*, $4::text AS me, 'running'::text AS running
                       FROM unnest($1::int8[], $2::int4[]) AS u(id, attempt)
                     OFFSET 0) u
              WHERE j.id = ANY($1) AND j.id = u.id AND j.attempt = u.attempt AND j.locked_by = u.me
                AND j.state = u.running
             RETURNING j.id";

async fn heartbeat_sql(
    pool: &DbPool,
    worker: &super::workers::WorkerRow,
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
        .query(
            "SELECT queue, state, count(*),
                    CASE WHEN state = 'available'
                         THEN GREATEST(0, EXTRACT(EPOCH FROM now() - min(run_at)))::float8 END
               FROM lettuce.job_queue
              GROUP BY queue, state
              ORDER BY queue, state
              LIMIT 1000",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// A job whose lease expired and was taken back from a presumed-dead worker.
#[derive(Debug, Clone)]
pub struct Rescued {
    pub id: i64,
    pub state: String,
    pub locked_by: Option<String>,
}

/// Rescues up to `limit` running jobs whose lease expired: `retryable` (run now), or `discarded`
/// when no attempt is left, with an error naming the presumed-dead worker. Wakes their queues.
pub async fn rescue_expired(pool: &DbPool, limit: i64) -> Result<Vec<Rescued>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "WITH expired AS (
                 SELECT id FROM lettuce.job_queue
                  WHERE state = 'running' AND lease_expires_at < now()
                  ORDER BY lease_expires_at
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED
             ), spent AS (
                 DELETE FROM lettuce.job_queue j
                  USING expired
                  WHERE j.id = expired.id AND j.attempt >= j.max_attempts
                 RETURNING j.*
             ), discarded AS (
                 INSERT INTO lettuce.job_history
                 SELECT id, kind, queue, payload, priority, 'discarded', attempt, max_attempts, now(),
                        created_at, attempted_at, now(), locked_by, NULL,
                        errors || jsonb_build_array(jsonb_build_object(
                            'attempt', attempt, 'at', now(),
                            'error', 'lease expired: worker ' || coalesce(locked_by, '(unknown)') || ' presumed dead')),
                        unique_key, traceparent
                   FROM spent
                 RETURNING id, state, locked_by, queue
             ), retried AS (
                 UPDATE lettuce.job_queue j
                    SET state = 'retryable',
                        run_at = now(),
                        lease_expires_at = NULL,
                        errors = j.errors || jsonb_build_array(jsonb_build_object(
                            'attempt', j.attempt, 'at', now(),
                            'error', 'lease expired: worker ' || coalesce(j.locked_by, '(unknown)') || ' presumed dead'))
                   FROM expired
                  WHERE j.id = expired.id AND j.attempt < j.max_attempts
                 RETURNING j.id, j.state, j.locked_by, j.queue
             )
             SELECT id, state, locked_by, NULL FROM discarded
             UNION ALL
             SELECT id, state, locked_by, pg_notify('lettuce_jobs', queue)::text FROM retried",
            &[&limit],
        )
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
        .query_opt(
            "INSERT INTO lettuce.maintenance_turns AS t (task, last_run_at, taken_by)
             VALUES ($1, now(), $3)
             ON CONFLICT (task) DO UPDATE SET last_run_at = now(), taken_by = excluded.taken_by
              WHERE t.last_run_at <= now() - $2 * interval '1 millisecond'
             RETURNING 1",
            &[&task, &every_ms, &worker_id],
        )
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
        .execute(
            "WITH doomed AS (
                 SELECT id FROM lettuce.job_history
                  WHERE finished_at < now() - CASE state WHEN 'completed' THEN $1::float8 WHEN 'discarded' THEN $2::float8 ELSE $3::float8 END
                                              * interval '1 millisecond'
                  LIMIT $4::int8
                  FOR UPDATE SKIP LOCKED
             )
             DELETE FROM lettuce.job_history j USING doomed WHERE j.id = doomed.id",
            &[&ms(retention.completed), &ms(retention.discarded), &ms(retention.cancelled), &limit],
        )
        .await?;
    Ok(n)
}

/// A whole job row, for the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub payload: Value,
    pub priority: i16,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub run_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub attempted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub locked_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_expires_at: Option<OffsetDateTime>,
    pub errors: Value,
    pub unique_key: Option<String>,
    pub traceparent: Option<String>,
    /// Fields of the stored row that could not be decoded (shown with a placeholder).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

const JOB_COLUMNS: &str =
    "id, kind, queue, payload, priority, state, attempt, max_attempts, run_at, created_at,
    attempted_at, finished_at, locked_by, lease_expires_at, errors, unique_key, traceparent";

/// Decodes a row for the CLI without ever panicking: a field that cannot be decoded (a payload
/// number beyond a double, nesting deeper than the decoder allows, an infinite time) is shown
/// as a placeholder and named in `problems`.
fn job_row(r: &tokio_postgres::Row) -> JobRow {
    let mut problems = Vec::new();
    macro_rules! field {
        ($i:expr, $name:expr, $fallback:expr) => {
            r.try_get($i).unwrap_or_else(|e: tokio_postgres::Error| {
                let why =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                problems.push(format!("{} cannot be decoded: {why}", $name));
                $fallback
            })
        };
    }
    JobRow {
        id: r.get(0),
        kind: field!(1, "kind", String::new()),
        queue: field!(2, "queue", String::new()),
        payload: field!(3, "payload", Value::Null),
        priority: r.get(4),
        state: field!(5, "state", String::new()),
        attempt: r.get(6),
        max_attempts: r.get(7),
        run_at: field!(8, "run_at", OffsetDateTime::UNIX_EPOCH),
        created_at: field!(9, "created_at", OffsetDateTime::UNIX_EPOCH),
        attempted_at: field!(10, "attempted_at", None),
        finished_at: field!(11, "finished_at", None),
        locked_by: field!(12, "locked_by", None),
        lease_expires_at: field!(13, "lease_expires_at", None),
        errors: field!(14, "errors", Value::Null),
        unique_key: field!(15, "unique_key", None),
        traceparent: field!(16, "traceparent", None),
        problems,
    }
}

/// One job by id.
pub async fn get(client: &impl GenericClient, id: i64) -> Result<Option<JobRow>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM lettuce.jobs WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(job_row))
}

/// Filters for [`list`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub limit: i64,
}

/// Newest jobs first, filtered.
pub async fn list(client: &impl GenericClient, f: &ListFilter) -> Result<Vec<JobRow>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM lettuce.jobs
                  WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR kind = $2)
                    AND ($3::text IS NULL OR queue = $3)
                  ORDER BY id DESC LIMIT $4"
            ),
            &[&f.state, &f.kind, &f.queue, &f.limit],
        )
        .await?;
    Ok(rows.iter().map(job_row).collect())
}

/// Why a retry or cancel did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("job {0} not found")]
    NotFound(i64),
    #[error("job {id} is {state}; {action} applies to {allowed}")]
    WrongState {
        id: i64,
        state: String,
        action: &'static str,
        allowed: &'static str,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Makes a finished or waiting job available now, granting one more attempt when all were used.
pub async fn retry(client: &impl GenericClient, id: i64) -> Result<JobRow, SteerError> {
    let row = client
        .query_opt(
            &format!(
                "WITH r AS (
                     UPDATE lettuce.jobs SET state = 'available', run_at = now(), finished_at = NULL,
                            max_attempts = greatest(max_attempts, attempt + 1)
                      WHERE id = $1 AND state IN ('scheduled', 'retryable', 'completed', 'discarded', 'cancelled')
                     RETURNING *
                 )
                 SELECT {JOB_COLUMNS}, pg_notify('lettuce_jobs', queue) FROM r"
            ),
            &[&id],
        )
        .await
        .map_err(DbError::from)?;
    match row {
        Some(r) => Ok(job_row(&r)),
        None => Err(match get(client, id).await? {
            None => SteerError::NotFound(id),
            Some(j) => SteerError::WrongState {
                id,
                state: j.state,
                action: "retry",
                allowed: "scheduled, retryable, completed, discarded and cancelled jobs",
            },
        }),
    }
}

/// Cancels a job that has not finished. A running attempt is told on commit (the view trigger's
/// `lettuce_control` NOTIFY) and stopped by its worker; should the notification be lost, the
/// worker's next lease heartbeat finds the job gone, and a late completion is fenced off.
pub async fn cancel(
    client: &impl GenericClient,
    id: i64,
    reason: &str,
) -> Result<JobRow, SteerError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE lettuce.jobs SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
                        errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', now(), 'error', $2::text))
                  WHERE id = $1 AND state IN ('available', 'scheduled', 'retryable', 'running')
                 RETURNING {JOB_COLUMNS}"
            ),
            &[&id, &reason],
        )
        .await
        .map_err(DbError::from)?;
    match row {
        Some(r) => Ok(job_row(&r)),
        None => Err(match get(client, id).await? {
            None => SteerError::NotFound(id),
            Some(j) => SteerError::WrongState {
                id,
                state: j.state,
                action: "cancel",
                allowed: "available, scheduled, retryable and running jobs",
            },
        }),
    }
}
