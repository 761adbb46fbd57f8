//! The one table diagnostic handlers write: `lettuce.diag_executions`.

use super::{DbError, DbPool};
use crate::handlers::JobInfo;

/// Inserts `(job_id, attempt, worker_id, now())` and returns how many executions the job has now.
pub async fn record_execution(pool: &DbPool, job: &JobInfo) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH ins AS (
                 INSERT INTO lettuce.diag_executions (job_id, attempt, worker_id) VALUES ($1, $2, $3)
             )
             SELECT count(*) + 1 FROM lettuce.diag_executions WHERE job_id = $1",
        )
        .await?;
    Ok(client
        .query_one(&stmt, &[&job.id, &job.attempt, &job.worker_id])
        .await?
        .get(0))
}
