//! Presence rows in `lettuce.workers`: one per live process, refreshed by the lease heartbeat
//! (see `jobs::heartbeat`), removed on clean exit, swept when stale.

use std::time::Duration;

use super::{DbError, DbPool};

/// This process's presence row.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    /// Also the `locked_by` value of every job this process claims.
    pub id: String,
    pub hostname: String,
    pub pid: i32,
    pub version: String,
    pub queues: Vec<String>,
}

impl WorkerRow {
    /// A fresh identity for this process: `hostname:pid:random`.
    pub fn for_this_process(queues: Vec<String>) -> WorkerRow {
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let pid = std::process::id() as i32;
        let suffix: u32 = rand::random();
        WorkerRow {
            id: format!("{hostname}:{pid}:{suffix:08x}"),
            hostname,
            pid,
            version: crate::VERSION.to_string(),
            queues,
        }
    }
}

pub async fn register(pool: &DbPool, w: &WorkerRow) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO lettuce.workers (id, hostname, pid, version, queues) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            &[&w.id, &w.hostname, &w.pid, &w.version, &w.queues],
        )
        .await?;
    Ok(())
}

pub async fn deregister(pool: &DbPool, id: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute("DELETE FROM lettuce.workers WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// Removes rows whose heartbeat is older than `stale_after`. Returns the removed ids.
pub async fn sweep_stale(pool: &DbPool, stale_after: Duration) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "DELETE FROM lettuce.workers WHERE heartbeat_at < now() - $1 * interval '1 millisecond' RETURNING id",
            &[&(stale_after.as_millis() as f64)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Live rows (what telemetry reports as `workers_active`).
pub async fn count_active(pool: &DbPool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query_one("SELECT count(*) FROM lettuce.workers", &[])
        .await?
        .get(0))
}
