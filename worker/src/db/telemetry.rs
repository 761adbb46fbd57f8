//! Statements of the daily telemetry heartbeat: the per-day claim in
//! `lettuce.telemetry_heartbeats` that makes the ping once per instance (not per replica), the
//! receipt in `lettuce.instance`, and the figures the body reports.
//!
//! Leases and backoff use the database clock (`now()`), shared by every replica; the day and the
//! receipt use the caller's clock, which tests inject.

use std::time::Duration;

use time::{Date, OffsetDateTime};
use uuid::Uuid;

use super::{DbError, DbPool};

/// The live figures a heartbeat reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Rows in `lettuce.workers` (stale ones are swept by every worker).
    pub workers_active: i64,
    /// Jobs that reached `completed` in the last 24 hours.
    pub jobs_completed_24h: i64,
    /// Jobs that reached `discarded` in the last 24 hours: attempts spent or a permanent error.
    pub jobs_failed_24h: i64,
}

/// One day's row, as `check-config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRow {
    pub day: Date,
    pub claimed_by: String,
    pub attempts: i32,
    pub sent_at: Option<OffsetDateTime>,
    pub not_before: OffsetDateTime,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

/// The singleton instance's identity (created by the schema, shared by every replica).
pub async fn instance_id(pool: &DbPool) -> Result<Uuid, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query_typed_one("SELECT instance_id FROM lettuce.instance", params![])
        .await?
        .get(0))
}

/// Claims the send for `day`, or returns `None` when another attempt holds it, it was sent, or
/// its retry is not due. The first claim inserts the row; later claims (retries) succeed only
/// once `not_before` has passed and nothing was sent. Each claim holds the day for `lease`, so
/// a replica that dies mid-send delays the day's ping by at most that long. Returns the attempt
/// number (1 for the first).
pub async fn claim_day(
    pool: &DbPool,
    day: Date,
    worker_id: &str,
    lease: Duration,
) -> Result<Option<i32>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_opt(
            "INSERT INTO lettuce.telemetry_heartbeats AS h (day, claimed_by, not_before)
             VALUES ($1, $2, now() + $3 * interval '1 millisecond')
             ON CONFLICT (day) DO UPDATE
                SET claimed_by = excluded.claimed_by, claimed_at = now(),
                    not_before = excluded.not_before, attempts = h.attempts + 1
              WHERE h.sent_at IS NULL AND h.not_before <= now()
             RETURNING h.attempts",
            params![day, worker_id, (lease.as_millis() as f64)])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Records a 2xx: the day is done and `receipt_at` becomes the instance's last receipt (never
/// moving it backwards). Both writes share one transaction.
pub async fn mark_sent(
    pool: &DbPool,
    day: Date,
    status: u16,
    receipt_at: OffsetDateTime,
) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute_typed(
        "UPDATE lettuce.telemetry_heartbeats
            SET sent_at = coalesce(sent_at, $2), last_status = $3, last_error = NULL
          WHERE day = $1",
        params![day, receipt_at, (status as i32)])
    .await?;
    tx.execute_typed(
        "UPDATE lettuce.instance
            SET telemetry_last_receipt_at = greatest(telemetry_last_receipt_at, $1)",
        params![receipt_at])
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records a failed attempt and when the day may be claimed again. Fenced on the claimant, so
/// a late writer whose lease passed to another replica changes nothing.
pub async fn mark_failed(
    pool: &DbPool,
    day: Date,
    worker_id: &str,
    status: Option<u16>,
    error: &str,
    retry_in: Duration,
) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute_typed(
            "UPDATE lettuce.telemetry_heartbeats
                SET not_before = now() + $3 * interval '1 millisecond', last_status = $4, last_error = $5
              WHERE day = $1 AND claimed_by = $2 AND sent_at IS NULL",
            params![day, worker_id, (retry_in.as_millis() as f64), status.map(i32::from), error])
        .await?;
    Ok(())
}

/// The figures for the body, in one statement.
pub async fn figures(pool: &DbPool) -> Result<Figures, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_one(
            "SELECT (SELECT count(*) FROM lettuce.workers),
                    count(*) FILTER (WHERE state = 'completed')
                      + (SELECT coalesce(sum(n), 0)::int8 FROM lettuce.job_counts
                          WHERE state = 'completed' AND hour > now() - interval '24 hours'),
                    count(*) FILTER (WHERE state = 'discarded')
               FROM lettuce.job_history
              WHERE state IN ('completed', 'discarded') AND finished_at >= now() - interval '24 hours'",
            params![])
        .await?;
    Ok(Figures {
        workers_active: row.get(0),
        jobs_completed_24h: row.get(1),
        jobs_failed_24h: row.get(2),
    })
}

/// Takes the "no receipt in 7 days" warning for `day` when the last receipt (or, with none
/// ever, the instance's creation) is older than `stale_before`. Returns `Some(last receipt)`
/// to exactly one caller per day and instance; the day's row must exist (the claim creates it).
pub async fn take_stale_warning(
    pool: &DbPool,
    day: Date,
    stale_before: OffsetDateTime,
) -> Result<Option<Option<OffsetDateTime>>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_opt(
            "UPDATE lettuce.telemetry_heartbeats h SET stale_warned_at = now()
               FROM lettuce.instance i
              WHERE h.day = $1 AND h.stale_warned_at IS NULL
                AND coalesce(i.telemetry_last_receipt_at, i.created_at) < $2
             RETURNING i.telemetry_last_receipt_at",
            params![day, stale_before])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The last receipt and the instance id (for `check-config`).
pub async fn receipt(pool: &DbPool) -> Result<(Uuid, Option<OffsetDateTime>), DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_one(
            "SELECT instance_id, telemetry_last_receipt_at FROM lettuce.instance",
            params![])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The row for `day`, if any activation touched it.
pub async fn day_row(pool: &DbPool, day: Date) -> Result<Option<DayRow>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_opt(
            "SELECT day, claimed_by, attempts, sent_at, not_before, last_status, last_error
               FROM lettuce.telemetry_heartbeats WHERE day = $1",
            params![day])
        .await?;
    Ok(row.map(|r| DayRow {
        day: r.get(0),
        claimed_by: r.get(1),
        attempts: r.get(2),
        sent_at: r.get(3),
        not_before: r.get(4),
        last_status: r.get(5),
        last_error: r.get(6),
    }))
}
