//! `lettuce.github_deliveries`: webhook deliveries `github.event` has handled, so a
//! redelivered one does nothing twice.

use std::time::Duration;

use super::{DbError, DbPool};

/// What [`record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// This delivery id was handled before: nothing was done.
    Duplicate,
    /// Recorded now; `job` is the `repo.index` it enqueued (or found waiting), if it asked.
    Recorded { job: Option<i64> },
}

/// A `repo.index` to enqueue with a delivery: its payload and coalesce key.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRequest {
    pub payload: serde_json::Value,
    pub coalesce_key: String,
}

/// Records `delivery_id` and, in the same transaction, enqueues `index` (coalesced), so a
/// delivery is either handled once with its index enqueued or not at all.
pub async fn record(
    pool: &DbPool,
    delivery_id: &str,
    event: &str,
    index: Option<&IndexRequest>,
) -> Result<Delivery, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let fresh = tx
        .query_typed_opt(
            "INSERT INTO lettuce.github_deliveries (delivery_id, event) VALUES ($1, $2)
             ON CONFLICT (delivery_id) DO NOTHING RETURNING 1",
            params![delivery_id, event])
        .await?
        .is_some();
    if !fresh {
        tx.rollback().await?;
        return Ok(Delivery::Duplicate);
    }
    let mut job = None;
    if let Some(index) = index {
        let id =
            super::repositories::enqueue_index(&*tx, &index.payload, &index.coalesce_key).await?;
        tx.execute_typed(
            "UPDATE lettuce.github_deliveries SET job_id = $2 WHERE delivery_id = $1",
            params![delivery_id, id])
        .await?;
        job = Some(id);
    }
    tx.commit().await?;
    Ok(Delivery::Recorded { job })
}

/// Deletes up to `limit` deliveries older than `older_than`; returns how many went.
pub async fn prune(pool: &DbPool, older_than: Duration, limit: i64) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let ms = older_than.as_millis() as f64;
    Ok(client
        .execute_typed(
            "DELETE FROM lettuce.github_deliveries WHERE delivery_id IN (
                 SELECT delivery_id FROM lettuce.github_deliveries
                  WHERE received_at < now() - $1 * interval '1 millisecond'
                  ORDER BY received_at LIMIT $2)",
            params![ms, limit])
        .await?)
}
