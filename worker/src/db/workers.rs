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

/// `hostname:pid:random`, fresh on each call.
fn fresh_id() -> String {
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let suffix: u32 = rand::random();
    format!("{hostname}:{}:{suffix:08x}", std::process::id())
}

static PROCESS_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static PROCESS_ID_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The id of this process's (first) worker, known before the runtime starts, so the trace
/// exporter's resource can carry it as `service.instance.id`.
pub fn process_worker_id() -> &'static str {
    PROCESS_ID.get_or_init(fresh_id)
}

impl WorkerRow {
    /// A fresh identity for this process: `hostname:pid:random`. The first one is
    /// [`process_worker_id`]; a process running several workers (tests) gets fresh ids after.
    pub fn for_this_process(queues: Vec<String>) -> WorkerRow {
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let pid = std::process::id() as i32;
        let id = if PROCESS_ID_TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
            fresh_id()
        } else {
            process_worker_id().to_string()
        };
        WorkerRow {
            id,
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
        .execute_typed(
            presence_upsert!("$1", "$2", "$3", "$4", "$5"),
            params![w.id, w.hostname, w.pid, w.version, w.queues])
        .await?;
    Ok(())
}

pub async fn deregister(pool: &DbPool, id: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute_typed("DELETE FROM lettuce.workers WHERE id = $1", params![id])
        .await?;
    Ok(())
}

/// Removes rows whose heartbeat is older than `stale_after`. Returns the removed ids.
///
/// Nothing is stale while the server itself has been up for less than `stale_after`: after a
/// database restart every row is old, and the live workers need one heartbeat to say so.
pub async fn sweep_stale(pool: &DbPool, stale_after: Duration) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query_typed(
            "DELETE FROM lettuce.workers
              WHERE heartbeat_at < now() - $1 * interval '1 millisecond'
                AND pg_postmaster_start_time() < now() - $1 * interval '1 millisecond'
             RETURNING id",
            params![(stale_after.as_millis() as f64)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(feature = "testing")]
/// Live rows (what telemetry reports as `workers_active`).
pub async fn count_active(pool: &DbPool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query_typed_one("SELECT count(*) FROM lettuce.workers", params![])
        .await?
        .get(0))
}
