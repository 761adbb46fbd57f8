//! What an operator reads and steers (`worker jobs …`): whole rows through the `lettuce.jobs`
//! view, retry and cancel.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

use super::CHANNEL;
use crate::db::DbError;

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

const JOB_COLUMNS: &str = job_columns!();

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
        .query_typed_opt(
            &format!("SELECT {JOB_COLUMNS} FROM lettuce.jobs WHERE id = $1"),
            params![id])
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
        .query_typed(
            &format!(
                "SELECT {JOB_COLUMNS} FROM lettuce.jobs
                  WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR kind = $2)
                    AND ($3::text IS NULL OR queue = $3)
                  ORDER BY id DESC LIMIT $4"
            ),
            params![f.state, f.kind, f.queue, f.limit])
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
        .query_typed_opt(
            &format!(
                "WITH r AS (
                     UPDATE lettuce.jobs SET state = 'available', run_at = now(), finished_at = NULL,
                            max_attempts = greatest(max_attempts, attempt + 1)
                      WHERE id = $1 AND state IN ('scheduled', 'retryable', 'completed', 'discarded', 'cancelled')
                     RETURNING {JOB_COLUMNS}
                 )
                 SELECT {JOB_COLUMNS}, pg_notify('{CHANNEL}', queue) FROM r"
            ),
            params![id])
        .await
        .map_err(DbError::from)?;
    match row {
        Some(r) => Ok(job_row(&r)),
        None => Err(refusal(client, id, "retry", "scheduled, retryable, completed, discarded and cancelled jobs").await),
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
        .query_typed_opt(
            &format!(
                "UPDATE lettuce.jobs SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
                        errors = lettuce.append_error(errors, attempt, $2::text)
                  WHERE id = $1 AND state IN ('available', 'scheduled', 'retryable', 'running')
                 RETURNING {JOB_COLUMNS}"
            ),
            params![id, reason])
        .await
        .map_err(DbError::from)?;
    match row {
        Some(r) => Ok(job_row(&r)),
        None => Err(refusal(client, id, "cancel", "available, scheduled, retryable and running jobs").await),
    }
}

/// Why `action` did not apply to job `id`: it does not exist, or its state is not `allowed`.
async fn refusal(
    client: &impl GenericClient,
    id: i64,
    action: &'static str,
    allowed: &'static str,
) -> SteerError {
    match get(client, id).await {
        Err(e) => SteerError::Db(e),
        Ok(None) => SteerError::NotFound(id),
        Ok(Some(j)) => SteerError::WrongState {
            id,
            state: j.state,
            action,
            allowed,
        },
    }
}
