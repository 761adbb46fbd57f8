//! The one table diagnostic handlers write: `lettuce.diag_executions`.

use super::{DbError, DbPool};
use crate::handlers::JobInfo;

const RECORD_SQL: &str = "WITH ins AS (
                 INSERT INTO lettuce.diag_executions (job_id, attempt, worker_id) VALUES ($1, $2, $3)
             )
             SELECT count(*) + 1 FROM lettuce.diag_executions WHERE job_id = $1";

/// Inserts `(job_id, attempt, worker_id, now())` and returns how many executions the job has now.
/// A `db.record_execution` client span, a child of the job span the handler runs in.
pub async fn record_execution(pool: &DbPool, job: &JobInfo) -> Result<i64, DbError> {
    super::traced(
        crate::observability::sql_span(
            "db.record_execution",
            "INSERT",
            "lettuce.diag_executions",
            RECORD_SQL,
        ),
        |_| 1,
        async {
            let client = pool.get().await?;
            Ok(client
                .query_typed_one(RECORD_SQL, params![job.id, job.attempt, job.worker_id])
                .await?
                .get(0))
        },
    )
    .await
}
