//! The public enqueue path: [`NewJob`], [`enqueue`] and [`enqueue_many`], inside the caller's
//! transaction. Everything else the crate exports about jobs is read-only or internal.

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use tracing::Instrument;

use crate::db::DbError;
use crate::limits::{self, LimitError};

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
    let span = crate::observability::producer_span(Some(&job.queue), 1);
    let traceparent = job
        .traceparent
        .clone()
        .or_else(|| crate::observability::traceparent_of(&span));
    let result = enqueue_sql(client, job, &traceparent)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(id) if !span.is_disabled() => {
            span.record("messaging.message.id", id.to_string().as_str());
        }
        Ok(_) => {}
        Err(e) => crate::observability::record_error(&span, e),
    }
    result
}

async fn enqueue_sql(
    client: &impl GenericClient,
    job: &NewJob,
    traceparent: &Option<String>,
) -> Result<i64, DbError> {
    let row = client
        .query_typed_one(
            "SELECT lettuce.enqueue($1, $2, $3, $4::int, coalesce($5, now()), $6, $7, $8)",
            params![job.kind, job.payload, job.queue, (job.priority as i32), job.run_at, job.max_attempts, job.unique_key, traceparent])
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
    let span = crate::observability::producer_span(queue, jobs.len());
    let result = enqueue_many_sql(client, jobs, &span)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(ids) if ids.len() == 1 && !span.is_disabled() => {
            span.record("messaging.message.id", ids[0].to_string().as_str());
        }
        Ok(_) => {}
        Err(e) => crate::observability::record_error(&span, e),
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
        crate::observability::traceparent_of(span)
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
        let params: &[_] = params![
            kinds,
            payloads,
            queues,
            priorities,
            run_ats,
            max_attempts,
            unique_keys,
            traceparents
        ];
        let rows = if with_unique {
            client
                .query_typed(
                    "SELECT u.ord, lettuce.enqueue(u.kind, u.payload, u.queue, u.priority::int,
                                                   coalesce(u.run_at, now()), u.max_attempts, u.unique_key, u.traceparent)
                       FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::int2[], $5::timestamptz[],
                                   $6::int4[], $7::text[], $8::text[])
                            WITH ORDINALITY AS u(kind, payload, queue, priority, run_at, max_attempts, unique_key, traceparent, ord)
                      ORDER BY u.ord",
                    params)
                .await?
        } else {
            client
                .query_typed(
                    "INSERT INTO lettuce.job_queue (kind, payload, queue, priority, run_at, max_attempts, traceparent, state)
                     SELECT u.kind, u.payload, u.queue, u.priority, coalesce(u.run_at, now()), u.max_attempts, u.traceparent,
                            CASE WHEN u.run_at > now() THEN 'scheduled' ELSE 'available' END
                       FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::int2[], $5::timestamptz[],
                                   $6::int4[], $7::text[], $8::text[])
                            WITH ORDINALITY AS u(kind, payload, queue, priority, run_at, max_attempts, unique_key, traceparent, ord)
                      ORDER BY u.ord
                     RETURNING id",
                    params)
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
