//! Issue 17: the worker through a real PgBouncer 1.18 in `transaction` mode with a small pool
//! (`xtests::pgbouncer`), the way managed Postgres is often reached. No named prepared
//! statement, no session state outside a transaction, LISTEN over
//! `LETTUCE_LISTEN_DATABASE_URL` (direct) or polling that says so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lettuce_worker::NewJob;
use serde_json::json;
use xtests::pgbouncer::PgBouncer;
use xtests::{TestDb, WorkerProcess, eventually, run_worker, states, wait_final};

const LIMIT: Duration = Duration::from_secs(30);
/// What the worker logs once at boot when notifications do not arrive.
const POLLS: &str = "notifications do not arrive over";

/// A worker environment whose `DATABASE_URL` goes through `bouncer`, with no startup options
/// (PgBouncer refuses `options`) and LISTEN past the pooler when `listen_direct`.
fn pooled_env(db: &TestDb, bouncer: &PgBouncer, listen_direct: bool) -> HashMap<String, String> {
    let mut env = db.env();
    env.insert("DATABASE_URL".into(), bouncer.url_for(&db.url));
    env.insert("LETTUCE_DB_STATEMENT_TIMEOUT_MS".into(), "0".into());
    if listen_direct {
        env.insert("LETTUCE_LISTEN_DATABASE_URL".into(), db.url.clone());
    }
    env
}

/// No statement failed for a reason a pooler causes (a named statement on the wrong server
/// connection, a refused startup option).
fn assert_pooler_clean(w: &WorkerProcess) {
    let out = w.output().join("\n");
    for needle in ["prepared statement", "unsupported startup parameter"] {
        assert!(!out.contains(needle), "worker printed {needle:?}:\n{out}");
    }
}

/// A client of the test database through the pooler: only unnamed statements (the worker's own
/// `enqueue_many`) may go over it.
async fn pooled_client(db: &TestDb, bouncer: &PgBouncer) -> tokio_postgres::Client {
    xtests::connect(&bouncer.url_for(&db.url)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_outcome_through_pgbouncer_in_transaction_mode() {
    let bouncer = PgBouncer::start().await;
    let db = TestDb::new().await;
    let mut env = pooled_env(&db, &bouncer, true);
    env.insert("LETTUCE_QUEUES".into(), "default=8".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(LIMIT).await;
    let direct = db.client().await;
    let pooled = pooled_client(&db, &bouncer).await;
    let job = |kind: &str, payload: serde_json::Value, max: i32| {
        NewJob::new(kind, payload).max_attempts(max)
    };
    // Enqueued through the pooler with the Rust API (its statements are unnamed too).
    let ids = lettuce_worker::enqueue_many(
        &pooled,
        &[
            job("diag.noop", json!({}), 5),
            job("diag.fail", json!({"times": 2}), 5),
            job("diag.fail", json!({"times": 9}), 2),
            job("diag.snooze", json!({"ms": 50}), 5),
            job("diag.cancel", json!({}), 5),
            job("diag.record", json!({}), 5),
        ],
    )
    .await
    .unwrap();
    let [noop, flaky, doomed, snooze, cancel, record] = ids[..] else {
        panic!("{ids:?}")
    };
    let (s, a, _) = wait_final(&direct, noop, LIMIT).await;
    assert_eq!((s.as_str(), a), ("completed", 1));
    let (s, a, e) = wait_final(&direct, flaky, LIMIT).await;
    assert_eq!(
        (s.as_str(), a),
        ("completed", 3),
        "retried twice, then completed"
    );
    assert_eq!(e.as_array().unwrap().len(), 2);
    let (s, a, _) = wait_final(&direct, doomed, LIMIT).await;
    assert_eq!((s.as_str(), a), ("discarded", 2));
    let (s, a, e) = wait_final(&direct, snooze, LIMIT).await;
    assert_eq!(
        (s.as_str(), a, e),
        ("completed", 1, json!([])),
        "snoozed once, no attempt used"
    );
    assert_eq!(wait_final(&direct, cancel, LIMIT).await.0, "cancelled");
    assert_eq!(wait_final(&direct, record, LIMIT).await.0, "completed");

    // The operator's commands through the pooler: show, retry.
    let (code, out, err) = run_worker(&["jobs", "show", &doomed.to_string()], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("discarded"), "{out}");
    let (code, _, err) = run_worker(&["jobs", "retry", &doomed.to_string()], &env);
    assert_eq!(code, 0, "{err}");
    let (s, a, _) = wait_final(&direct, doomed, LIMIT).await;
    assert_eq!(
        (s.as_str(), a),
        ("discarded", 3),
        "one more attempt, failed again"
    );

    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(LIMIT).await, Some(0));
    assert!(!w.printed(POLLS), "LISTEN goes past the pooler");
    assert_pooler_clean(&w);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooler_that_refuses_statement_timeout_is_named_at_boot_and_by_check_config() {
    let bouncer = PgBouncer::start().await;
    let db = TestDb::new().await;
    let mut env = pooled_env(&db, &bouncer, true);
    env.remove("LETTUCE_DB_STATEMENT_TIMEOUT_MS");
    let started = Instant::now();
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 5, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "not retried until the connect timeout"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("refused a startup parameter")
            && last.contains("LETTUCE_DB_STATEMENT_TIMEOUT_MS=0"),
        "{err}"
    );
    let (code, out, _) = run_worker(&["check-config", "--format", "json"], &env);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let connect = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "db.connect")
        .unwrap();
    assert_eq!(connect["level"], "fail", "{connect}");
    assert!(
        connect["hint"]
            .as_str()
            .unwrap()
            .contains("LETTUCE_DB_STATEMENT_TIMEOUT_MS=0"),
        "{connect}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn burn_down_with_two_workers_through_pgbouncer() {
    const JOBS: usize = 3000;
    let bouncer = PgBouncer::start().await;
    let db = TestDb::new().await;
    let mut env = pooled_env(&db, &bouncer, true);
    env.insert("LETTUCE_QUEUES".into(), "default=100".into());
    env.insert("RUST_LOG".into(), "warn".into());
    let (code, _, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{err}");
    let direct = db.client().await;
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|_| NewJob::new("diag.record", json!({})))
        .collect();
    lettuce_worker::enqueue_many(&pooled_client(&db, &bouncer).await, &jobs)
        .await
        .unwrap();
    let started = Instant::now();
    let mut workers: Vec<WorkerProcess> = (0..2)
        .map(|_| WorkerProcess::start(&["run"], &env))
        .collect();
    eventually(Duration::from_secs(60), "every job completed", || async {
        let s = states(&direct).await;
        (s.get("completed").copied().unwrap_or(0) == JOBS as i64).then_some(())
    })
    .await;
    let took = started.elapsed();
    let by_worker: Vec<i64> = xtests::column(
        &direct,
        "SELECT count(DISTINCT job_id) FROM lettuce.diag_executions GROUP BY worker_id",
    )
    .await;
    let ran: i64 = xtests::scalar(
        &direct,
        "SELECT count(DISTINCT job_id) FROM lettuce.diag_executions",
    )
    .await;
    assert_eq!(ran, JOBS as i64, "every job ran");
    assert_eq!(by_worker.len(), 2, "both workers worked: {by_worker:?}");
    println!(
        "pgbouncer burn-down: {JOBS} jobs by 2 workers in {:.2} s ({:.0} jobs/s, boot included); per worker {by_worker:?}",
        took.as_secs_f64(),
        JOBS as f64 / took.as_secs_f64()
    );
    for w in &mut workers {
        w.signal(libc::SIGTERM);
        assert_eq!(w.wait_exit(LIMIT).await, Some(0));
        assert_pooler_clean(w);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_sigkill_workers_through_pgbouncer() {
    let bouncer = PgBouncer::start().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let drill = xtests::chaos::Drill {
        record: 1500,
        sleep: 300,
        workers: 3,
        kill_for: Duration::from_secs(7),
    };
    let env = pooled_env(&db, &bouncer, true);
    let seen = xtests::chaos::sigkill_while_jobs_run(env, &client, drill).await;
    println!(
        "pgbouncer chaos: {} SIGKILLs; 1800 jobs completed; {} rescued; {} ran twice",
        seen.kills, seen.rescued, seen.twice
    );
    assert!(seen.kills >= 3, "{} kills", seen.kills);
    for w in &seen.workers {
        assert_pooler_clean(w);
    }
}

/// Seconds from a job's enqueue to its claim (`attempted_at - created_at`).
async fn pickup(client: &tokio_postgres::Client, id: i64) -> f64 {
    client
        .query_one(
            "SELECT EXTRACT(EPOCH FROM attempted_at - created_at)::float8 FROM lettuce.jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_pickup_listens_past_the_pooler_and_polls_when_it_cannot() {
    let bouncer = PgBouncer::start().await;
    let listening_db = TestDb::new().await;
    let polling_db = TestDb::new().await;
    // LISTEN over the direct URL: woken at once although the poll is ten minutes.
    let mut listening_env = pooled_env(&listening_db, &bouncer, true);
    listening_env.insert("LETTUCE_POLL_INTERVAL_MS".into(), "600000".into());
    // No LETTUCE_LISTEN_DATABASE_URL: notifications cannot arrive through the pooler.
    let mut polling_env = pooled_env(&polling_db, &bouncer, false);
    polling_env.insert("LETTUCE_POLL_INTERVAL_MS".into(), "300".into());
    let mut listening = WorkerProcess::start(&["run"], &listening_env);
    let mut polling = WorkerProcess::start(&["run"], &polling_env);
    listening.wait_ready(LIMIT).await;
    polling.wait_ready(LIMIT).await;

    let said: Vec<String> = polling
        .output()
        .into_iter()
        .filter(|l| l.contains(POLLS))
        .collect();
    assert_eq!(said.len(), 1, "said once at boot: {said:?}");
    assert!(
        said[0].contains("polls every 300 ms") && said[0].contains("LETTUCE_LISTEN_DATABASE_URL"),
        "{}",
        said[0]
    );
    assert!(!listening.printed(POLLS));

    // Idle pickup: enqueued through the pooler (the NOTIFY leaves on commit over a pooled
    // server connection and reaches the direct LISTEN).
    let mut latencies = Vec::new();
    let pooled = pooled_client(&listening_db, &bouncer).await;
    let direct = listening_db.client().await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = lettuce_worker::enqueue_many(&pooled, &[NewJob::new("diag.noop", json!({}))])
            .await
            .unwrap()[0];
        assert_eq!(wait_final(&direct, id, LIMIT).await.0, "completed");
        latencies.push(pickup(&direct, id).await);
    }
    latencies.sort_by(f64::total_cmp);
    assert!(
        latencies[latencies.len() - 1] < 1.0,
        "woken by NOTIFY, not the 10-minute poll: {latencies:?}"
    );

    let pooled = pooled_client(&polling_db, &bouncer).await;
    let direct = polling_db.client().await;
    let id = lettuce_worker::enqueue_many(&pooled, &[NewJob::new("diag.noop", json!({}))])
        .await
        .unwrap()[0];
    assert_eq!(wait_final(&direct, id, LIMIT).await.0, "completed");
    assert!(pickup(&direct, id).await < 2.0, "picked up by the poll");
    println!("pgbouncer idle pickup with LISTEN past the pooler: {latencies:?} s");
    for w in [&mut listening, &mut polling] {
        w.signal(libc::SIGTERM);
        assert_eq!(w.wait_exit(LIMIT).await, Some(0));
        assert_pooler_clean(w);
    }
    assert_eq!(
        polling
            .output()
            .iter()
            .filter(|l| l.contains(POLLS))
            .count(),
        1,
        "never said again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_tells_whether_notifications_arrive() {
    let bouncer = PgBouncer::start().await;
    let db = TestDb::new().await;
    let notifications = |env: &HashMap<String, String>| {
        let (_, out, err) = run_worker(&["check-config", "--format", "json"], env);
        let report: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        assert!(
            !out.contains("Sekr1t") && !err.contains("Sekr1t"),
            "{out}{err}"
        );
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "db.notifications")
            .unwrap_or_else(|| panic!("no db.notifications in {report:#}"))
            .clone()
    };
    let polling = notifications(&pooled_env(&db, &bouncer, false));
    assert_eq!(polling["level"], "warn", "{polling}");
    let message = polling["message"].as_str().unwrap();
    assert!(
        message.contains("did not arrive over DATABASE_URL") && message.contains("poll every"),
        "{polling}"
    );
    assert!(
        polling["hint"]
            .as_str()
            .unwrap()
            .contains("LETTUCE_LISTEN_DATABASE_URL"),
        "{polling}"
    );

    // A password in the listen URL (trust auth ignores it) is never shown.
    let mut env = pooled_env(&db, &bouncer, true);
    let with_password = db
        .url
        .replacen("postgres://postgres@", "postgres://postgres:Sekr1t@", 1);
    assert_ne!(with_password, db.url, "the test URL has the expected shape");
    env.insert("LETTUCE_LISTEN_DATABASE_URL".into(), with_password);
    let listening = notifications(&env);
    assert_eq!(listening["level"], "ok", "{listening}");
    assert!(
        listening["message"]
            .as_str()
            .unwrap()
            .contains("arrived over LETTUCE_LISTEN_DATABASE_URL"),
        "{listening}"
    );
}
