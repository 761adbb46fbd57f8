//! The SIGKILL chaos drill shared by `resilience.rs` (direct) and `pgbouncer.rs` (through the
//! pooler): jobs queued, worker processes killed at random and replaced, then every job must
//! complete and every `diag.record` job must have run at least once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lettuce_worker::NewJob;
use serde_json::json;
use tokio_postgres::Client;

use crate::{WorkerProcess, eventually, states};

/// The drill's size.
pub struct Drill {
    /// `diag.record` jobs (each proves it ran by a row).
    pub record: usize,
    /// `diag.sleep` jobs of 5–44 ms (attempts in flight when a kill lands).
    pub sleep: usize,
    /// Worker processes alive at any time.
    pub workers: usize,
    /// How long kills go on, one every 1–2 s.
    pub kill_for: Duration,
}

/// What a drill saw.
pub struct Outcome {
    pub kills: usize,
    pub elapsed: Duration,
    /// Jobs whose errors say a lease expired (rescued after a kill).
    pub rescued: i64,
    /// `diag.record` jobs that ran more than once (at-least-once).
    pub twice: i64,
    /// The workers alive at the end.
    pub workers: Vec<WorkerProcess>,
}

/// Runs `drill` with workers started from `env` (plus a 1 s lease, 16 slots, warnings only) on
/// the database `client` reaches, after `worker schema apply`; panics unless every job
/// completed and every `diag.record` job ran.
pub async fn sigkill_while_jobs_run(
    mut env: HashMap<String, String>,
    client: &Client,
    drill: Drill,
) -> Outcome {
    let limit = Duration::from_secs(30);
    env.insert("LETTUCE_LEASE_MS".into(), "1000".into());
    env.insert("LETTUCE_QUEUES".into(), "default=16".into());
    env.insert("RUST_LOG".into(), "warn".into());
    let (code, _, err) = crate::run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{err}");
    let env = &env;
    let mut jobs: Vec<NewJob> = (0..drill.record)
        .map(|_| NewJob::new("diag.record", json!({})).max_attempts(25))
        .collect();
    jobs.extend(
        (0..drill.sleep)
            .map(|i| NewJob::new("diag.sleep", json!({"ms": 5 + i % 40})).max_attempts(25)),
    );
    lettuce_worker::enqueue_many(client, &jobs).await.unwrap();
    let total = jobs.len() as i64;
    let mut workers: Vec<WorkerProcess> = (0..drill.workers)
        .map(|_| WorkerProcess::start(&["run"], env))
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < drill.kill_for {
        tokio::time::sleep(Duration::from_millis(1000 + rand::random::<u64>() % 1000)).await;
        let victim = rand::random::<u32>() as usize % workers.len();
        workers[victim].signal(libc::SIGKILL);
        workers[victim].wait_exit(limit).await;
        workers[victim] = WorkerProcess::start(&["run"], env);
        kills += 1;
    }
    let done = eventually(Duration::from_secs(45), "every job completed", || async {
        let s = states(client).await;
        (s.get("completed").copied().unwrap_or(0) == total).then_some(s)
    })
    .await;
    assert_eq!(done.len(), 1, "only completed jobs remain: {done:?}");
    let never: i64 = crate::scalar(
        client,
        "SELECT count(*) FROM lettuce.jobs j WHERE kind = 'diag.record'
               AND NOT EXISTS (SELECT 1 FROM lettuce.diag_executions d WHERE d.job_id = j.id)",
    )
    .await;
    assert_eq!(never, 0, "every diag.record job ran at least once");
    let twice = crate::scalar(client, "SELECT count(*) FROM (SELECT job_id FROM lettuce.diag_executions GROUP BY job_id HAVING count(*) > 1) d").await;
    let rescued = crate::scalar(
        client,
        "SELECT count(*) FROM lettuce.jobs WHERE errors::text LIKE '%presumed dead%'",
    )
    .await;
    Outcome {
        kills,
        elapsed: started.elapsed(),
        rescued,
        twice,
        workers,
    }
}
