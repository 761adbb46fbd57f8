//! Issue 2: the core — boot, schema, enqueue, claim, run, outcomes, CLI, housekeeping —
//! against the real Postgres on this machine.

use std::time::Duration;

use lettuce_worker::NewJob;
use serde_json::json;
use tokio_postgres::AsyncMessage;
use xtests::{
    InProcessWorker, TestDb, WorkerProcess, enqueue_sql, eventually, run_worker, wait_final,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Everything in schema `lettuce` that a re-apply could change, as comparable text.
async fn catalog(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for q in [
        "SELECT table_name || '.' || column_name || ':' || data_type || ':' || coalesce(column_default, '')
           FROM information_schema.columns WHERE table_schema = 'lettuce' ORDER BY 1",
        "SELECT indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = 'lettuce' ORDER BY 1",
        "SELECT p.oid::regprocedure::text || ':' || p.xmin::text FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'lettuce' ORDER BY 1",
        "SELECT tgname || ':' || t.xmin::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'lettuce' AND NOT tgisinternal ORDER BY 1",
        "SELECT instance_id::text FROM lettuce.instance",
    ] {
        for r in client.query(q, &[]).await.unwrap() {
            out.push(r.get::<_, String>(0));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_boot_of_eight_processes_on_an_empty_database() {
    let db = TestDb::new().await;
    let env = db.env();
    let mut workers: Vec<WorkerProcess> = (0..8)
        .map(|_| WorkerProcess::start(&["run"], &env))
        .collect();
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(60)).await;
    }
    let client = db.client().await;
    let live: i64 = xtests::scalar(&client, "SELECT count(*) FROM lettuce.workers").await;
    assert_eq!(live, 8);
    let before = catalog(&client).await;
    assert!(
        before.iter().any(|l| l.starts_with("lettuce.enqueue(")),
        "{before:?}"
    );

    // Booting again and applying again (forced, every statement) change nothing.
    let (code, out, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let mut again = WorkerProcess::start(&["run"], &env);
    again.wait_ready(LIMIT).await;
    let after = catalog(&client).await;
    // Function and trigger rows carry xmin: a CREATE OR REPLACE rewrites them. Only the forced
    // apply may have; a normal boot must skip the list entirely (digest match).
    let strip = |v: &Vec<String>| {
        v.iter()
            .map(|l| l.rsplit_once(':').map_or(l.clone(), |(a, _)| a.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&before), strip(&after));
    let before_boot = catalog(&client).await;
    let mut third = WorkerProcess::start(&["run"], &env);
    third.wait_ready(LIMIT).await;
    assert_eq!(
        before_boot,
        catalog(&client).await,
        "a boot with the schema applied must not touch it"
    );
    for w in workers.iter().chain([&again, &third]) {
        w.signal(libc::SIGTERM);
    }
    for w in workers.iter_mut().chain([&mut again, &mut third]) {
        assert_eq!(
            w.wait_exit(LIMIT).await,
            Some(0),
            "{}",
            w.output().join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_is_created_when_missing() {
    let db = TestDb::absent();
    let mut w = WorkerProcess::start(&["run"], &db.env());
    w.wait_ready(LIMIT).await;
    assert!(w.printed("created missing database"));
    let client = db.client().await;
    let n: i64 = xtests::scalar(&client, "SELECT count(*) FROM lettuce.workers").await;
    assert_eq!(n, 1);
}

/// A connection listening on `lettuce_jobs`, driven by hand so notifications are seen: each
/// arrives as (channel, payload). Keep the client alive while listening.
async fn listen_jobs(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let (listener, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN lettuce_jobs").await.unwrap();
    (listener, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_function_dedupes_unique_keys_and_notifies_on_commit() {
    let db = TestDb::new().await;
    let (code, _, err) = run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "{err}");

    let (_listener, mut rx) = listen_jobs(&db.url).await;

    let mut client = db.client().await;
    let t = client.transaction().await.unwrap();
    let a: i64 = t
        .query_one(
            "SELECT lettuce.enqueue('k.one', '{\"x\":1}', 'q1', 0, now(), 5, 'key-1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let b: i64 = t
        .query_one(
            "SELECT lettuce.enqueue('k.one', '{\"x\":2}', 'q1', 0, now(), 5, 'key-1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(a, b, "a duplicate unique key returns the existing id");
    let other: i64 = t
        .query_one(
            "SELECT lettuce.enqueue('k.two', '{}', 'q1', 0, now(), 5, 'key-1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(a, other, "uniqueness is per (kind, unique_key)");
    // Nothing is delivered before commit.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    t.commit().await.unwrap();
    let (channel, payload) = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((channel.as_str(), payload.as_str()), ("lettuce_jobs", "q1"));

    // A rolled-back enqueue leaves nothing.
    let t = client.transaction().await.unwrap();
    t.query_one("SELECT lettuce.enqueue('k.rolled')", &[])
        .await
        .unwrap();
    t.rollback().await.unwrap();
    let n: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.jobs WHERE kind = 'k.rolled'",
    )
    .await;
    assert_eq!(n, 0);

    // Defaults, and a future run_at is `scheduled`.
    let id: i64 = xtests::scalar(&client, "SELECT lettuce.enqueue('k.def')").await;
    let r = client
        .query_one(
            "SELECT queue, priority, max_attempts, state, payload FROM lettuce.jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "default");
    assert_eq!(r.get::<_, i16>(1), 0);
    assert_eq!(r.get::<_, i32>(2), 5);
    assert_eq!(r.get::<_, String>(3), "available");
    assert_eq!(r.get::<_, serde_json::Value>(4), json!({}));
    let id: i64 = xtests::scalar(
        &client,
        "SELECT lettuce.enqueue('k.later', run_at => now() + interval '1 hour')",
    )
    .await;
    let state: String = client
        .query_one("SELECT state FROM lettuce.jobs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "scheduled");

    // Once the unique job is final, the key is free again.
    client
        .execute(
            "UPDATE lettuce.jobs SET state = 'completed', finished_at = now() WHERE id = $1",
            &[&a],
        )
        .await
        .unwrap();
    let c: i64 = xtests::scalar(
        &client,
        "SELECT lettuce.enqueue('k.one', unique_key => 'key-1')",
    )
    .await;
    assert_ne!(a, c);

    // Bad input is a clear error.
    let err = client
        .query_one("SELECT lettuce.enqueue('')", &[])
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("kind must match [a-z0-9_.:-]{1,128}"),
        "{err:?}"
    );
}

/// `lettuce.enqueue_many`: one statement, ids in the payloads' order, one NOTIFY on commit, and a
/// job beyond a limit refuses the whole call naming its position (nothing inserted).
#[tokio::test(flavor = "multi_thread")]
async fn enqueue_many_function_inserts_in_order_with_one_notify_and_refuses_a_bad_job_whole() {
    let db = TestDb::new().await;
    let (code, _, err) = run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "{err}");
    let (_listener, mut rx) = listen_jobs(&db.url).await;

    let mut client = db.client().await;
    let t = client.transaction().await.unwrap();
    let ids: Vec<i64> = t
        .query(
            "SELECT * FROM lettuce.enqueue_many('k.many',
                 (SELECT array_agg(jsonb_build_object('i', i) ORDER BY i) FROM generate_series(1, 500) i),
                 queue => 'q2', priority => 3)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 500);
    t.commit().await.unwrap();
    let rows = client
        .query(
            "SELECT id, (payload->>'i')::int, queue, priority, state, max_attempts
               FROM lettuce.jobs WHERE kind = 'k.many' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 500);
    for (n, r) in rows.iter().enumerate() {
        assert_eq!(
            r.get::<_, i64>(0),
            ids[n],
            "ids come back in the payloads' order"
        );
        assert_eq!(r.get::<_, i32>(1), n as i32 + 1);
        assert_eq!(r.get::<_, String>(2), "q2");
        assert_eq!(r.get::<_, i16>(3), 3);
        assert_eq!(r.get::<_, String>(4), "available");
        assert_eq!(r.get::<_, i32>(5), 5);
    }
    let first = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ("lettuce_jobs".to_string(), "q2".to_string()));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "one NOTIFY for the statement"
    );

    // A future run_at makes them scheduled.
    let later: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.enqueue_many('k.later', ARRAY['{}', '{}']::jsonb[],
                                                   run_at => now() + interval '1 hour')",
    )
    .await;
    assert_eq!(later, 2);
    let scheduled: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.jobs WHERE kind = 'k.later' AND state = 'scheduled'",
    )
    .await;
    assert_eq!(scheduled, 2);

    // Bad input: the first offending job's position and the limit; nothing of the call stays.
    for (sql, expected) in [
        (
            "SELECT * FROM lettuce.enqueue_many('k.bad', ARRAY['{}', '{\"n\": 1e400}']::jsonb[])",
            "job 2: payload numbers must fit a 64-bit float",
        ),
        (
            "SELECT * FROM lettuce.enqueue_many('k.bad', ARRAY['{}', '{}']::jsonb[], max_attempts => 0)",
            "job 1: max_attempts must be between 1 and 1000",
        ),
        (
            "SELECT * FROM lettuce.enqueue_many('k.bad', ARRAY['{}']::jsonb[], queue => 'no spaces')",
            "job 1: queue must match",
        ),
        (
            "SELECT * FROM lettuce.enqueue_many('k.bad', ARRAY['{}']::jsonb[], priority => 40000)",
            "priority must be between -32768 and 32767",
        ),
    ] {
        let err = client.query(sql, &[]).await.unwrap_err();
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(db_err.code().code(), "22023", "{sql}");
        assert!(
            db_err.message().contains(expected),
            "{sql}: {}",
            db_err.message()
        );
    }
    let bad: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.jobs WHERE kind = 'k.bad'",
    )
    .await;
    assert_eq!(bad, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_batch_api_enqueues_inside_the_callers_transaction() {
    let db = TestDb::new().await;
    let (code, _, err) = run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "{err}");
    let mut client = db.client().await;
    let jobs: Vec<NewJob> = (0..50)
        .map(|i| NewJob::new(format!("k.{}", i % 3), json!({ "i": i })).priority((i % 4) as i16))
        .chain([
            NewJob::new("k.u", json!({})).unique_key("u1"),
            NewJob::new("k.u", json!({})).unique_key("u1"),
        ])
        .collect();

    let t = client.transaction().await.unwrap();
    lettuce_worker::enqueue_many(&t, &jobs).await.unwrap();
    t.rollback().await.unwrap();
    let n: i64 = xtests::scalar(&client, "SELECT count(*) FROM lettuce.jobs").await;
    assert_eq!(n, 0, "a rolled-back batch leaves nothing");

    let t = client.transaction().await.unwrap();
    let ids = lettuce_worker::enqueue_many(&t, &jobs).await.unwrap();
    let single = lettuce_worker::enqueue(&t, &NewJob::new("k.single", json!([1])))
        .await
        .unwrap();
    t.commit().await.unwrap();
    assert_eq!(ids.len(), 52);
    assert_eq!(
        ids[50], ids[51],
        "duplicate unique keys in one batch share an id"
    );
    for (i, id) in ids.iter().enumerate().take(50) {
        let r = client
            .query_one(
                "SELECT kind, payload FROM lettuce.jobs WHERE id = $1",
                &[id],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), format!("k.{}", i % 3));
        assert_eq!(
            r.get::<_, serde_json::Value>(1),
            json!({ "i": i }),
            "ids come back in input order"
        );
    }
    assert!(single > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_in_priority_order_within_free_slots_and_only_known_kinds() {
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_QUEUES".into(), "default=1".into());
    let (code, _, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{err}");
    let client = db.client().await;
    // (priority, seconds ago) → expected order: priority first, then run_at, then id.
    let plan = [(2, 10), (0, 1), (1, 50), (0, 5), (0, 5), (-1, 0)];
    let mut ids = Vec::new();
    for (prio, ago) in plan {
        let id: i64 = client
            .query_one(
                "SELECT lettuce.enqueue('diag.record', '{}', 'default', $1, now() - make_interval(secs => $2))",
                &[&prio, &(ago as f64)],
            )
            .await
            .unwrap()
            .get(0);
        ids.push((prio, -ago, id));
    }
    let unknown = enqueue_sql(&client, "nobody.handles.this", json!({})).await;
    ids.sort();
    let expected: Vec<i64> = ids.iter().map(|x| x.2).collect();

    let w = InProcessWorker::start(&env).await;
    let order: Vec<i64> = eventually(LIMIT, "all diag.record jobs to run", || async {
        let rows = client
            .query(
                "SELECT job_id FROM lettuce.diag_executions ORDER BY at, job_id",
                &[],
            )
            .await
            .unwrap();
        (rows.len() == expected.len()).then(|| rows.iter().map(|r| r.get(0)).collect())
    })
    .await;
    assert_eq!(order, expected);

    // Slots: concurrency 3, never more than 3 running for this worker.
    w.stop().await.unwrap();
    env.insert("LETTUCE_QUEUES".into(), "default=3".into());
    let w = InProcessWorker::start(&env).await;
    let sleeps: Vec<NewJob> = (0..12)
        .map(|_| NewJob::new("diag.sleep", json!({"ms": 150})))
        .collect();
    lettuce_worker::enqueue_many(&client, &sleeps)
        .await
        .unwrap();
    let max_running = std::sync::atomic::AtomicI64::new(0);
    eventually(LIMIT, "sleep jobs to finish", || async {
        let running: i64 = xtests::scalar(
            &client,
            "SELECT count(*) FROM lettuce.jobs WHERE state = 'running'",
        )
        .await;
        max_running.fetch_max(running, std::sync::atomic::Ordering::Relaxed);
        let done: i64 = xtests::scalar(
            &client,
            "SELECT count(*) FROM lettuce.jobs WHERE kind = 'diag.sleep' AND state = 'completed'",
        )
        .await;
        (done == 12).then_some(())
    })
    .await;
    let max_running = max_running.into_inner();
    assert!(max_running <= 3, "running {max_running} > 3 slots");
    assert!(
        max_running >= 2,
        "slots were not used in parallel ({max_running})"
    );

    // The unknown kind waits untouched for a worker that handles it.
    let r = client
        .query_one(
            "SELECT state, attempt FROM lettuce.jobs WHERE id = $1",
            &[&unknown],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, i32>(1)),
        ("available".to_string(), 0)
    );
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_connection_comes_back_after_it_is_killed() {
    let db = TestDb::new().await;
    let mut env = db.env();
    // A poll this slow cannot explain a quick pickup: only NOTIFY can.
    env.insert("LETTUCE_POLL_INTERVAL_MS".into(), "600000".into());
    let w = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let listener_pid = || async {
        client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'lettuce-listener' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    };
    let first = eventually(LIMIT, "listener connection", || async {
        listener_pid().await
    })
    .await;
    let id = enqueue_sql(&client, "diag.noop", json!({})).await;
    assert_eq!(wait_final(&client, id, LIMIT).await.0, "completed");

    client
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    let second = eventually(LIMIT, "listener to reconnect", || async {
        listener_pid().await.filter(|p| *p != first)
    })
    .await;
    assert_ne!(first, second);
    let id = enqueue_sql(&client, "diag.noop", json!({})).await;
    assert_eq!(wait_final(&client, id, LIMIT).await.0, "completed");
    assert!(
        w.handle
            .listener
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fallback_poll_works_without_notify() {
    let db = TestDb::new().await;
    let env = db.env();
    let w = InProcessWorker::start(&env).await;
    let client = db.client().await;
    // Inserted directly into the table: no trigger NOTIFY for a scheduled row; becomes due by time.
    let id: i64 = xtests::scalar(&client, "INSERT INTO lettuce.jobs (kind, state, run_at) VALUES ('diag.noop', 'scheduled', now() + interval '300 milliseconds') RETURNING id").await;
    assert_eq!(wait_final(&client, id, LIMIT).await.0, "completed");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_outcome_is_recorded() {
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_JOB_TIMEOUT_MS".into(), "2000".into());
    let w = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let enqueue = |kind: &'static str, payload: serde_json::Value, max: i32| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT lettuce.enqueue($1, $2, max_attempts => $3)",
                    &[&kind, &payload, &max],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let noop = enqueue("diag.noop", json!({}), 5).await;
    let flaky = enqueue("diag.fail", json!({"times": 2}), 5).await;
    let doomed = enqueue("diag.fail", json!({"times": 9}), 3).await;
    let bad_payload = enqueue("diag.sleep", json!({"ms": "soon"}), 5).await;
    let snooze = enqueue("diag.snooze", json!({"ms": 50}), 5).await;
    let cancel = enqueue("diag.cancel", json!({}), 5).await;
    let panic = enqueue("diag.panic", json!({}), 2).await;
    let hang = enqueue("diag.sleep", json!({"ms": 60000}), 1).await;

    let errors_of = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["error"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, a, e) = wait_final(&client, noop, LIMIT).await;
    assert_eq!((s.as_str(), a, e), ("completed", 1, json!([])));

    let (s, a, e) = wait_final(&client, flaky, LIMIT).await;
    assert_eq!((s.as_str(), a), ("completed", 3));
    let attempts: Vec<i64> = e
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2], "one error entry per failed attempt");
    assert!(e[0]["at"].as_str().is_some());

    let (s, a, e) = wait_final(&client, doomed, LIMIT).await;
    assert_eq!((s.as_str(), a, errors_of(&e).len()), ("discarded", 3, 3));

    let (s, a, e) = wait_final(&client, bad_payload, LIMIT).await;
    assert_eq!(
        (s.as_str(), a),
        ("discarded", 1),
        "a payload of the wrong shape is discarded at once"
    );
    assert!(
        errors_of(&e)[0].contains("payload does not match kind diag.sleep"),
        "{e}"
    );

    let (s, a, e) = wait_final(&client, snooze, LIMIT).await;
    assert_eq!(
        (s.as_str(), a, e),
        ("completed", 1, json!([])),
        "a snooze uses no attempt"
    );
    let runs: i64 = client
        .query_one(
            "SELECT count(*) FROM lettuce.diag_executions WHERE job_id = $1",
            &[&snooze],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 2);

    let (s, _, _) = wait_final(&client, cancel, LIMIT).await;
    assert_eq!(s, "cancelled");

    let (s, a, e) = wait_final(&client, panic, LIMIT).await;
    assert_eq!((s.as_str(), a), ("discarded", 2));
    assert!(
        errors_of(&e)
            .iter()
            .all(|x| x.starts_with("panic: diag.panic")),
        "{e}"
    );

    let (s, a, e) = wait_final(&client, hang, LIMIT).await;
    assert_eq!((s.as_str(), a), ("discarded", 1));
    assert!(errors_of(&e)[0].starts_with("timeout:"), "{e}");

    // The worker is still working after all that.
    let after = enqueue("diag.noop", json!({}), 5).await;
    assert_eq!(wait_final(&client, after, LIMIT).await.0, "completed");
    w.stop().await.unwrap();
}

/// `LETTUCE_JOB_RETENTION=completed=0`: a success deletes the job (no history row, a count per
/// hour and worker instead), a failure still lands in the history, and the heartbeat's figures
/// count both as with the default retention.
#[tokio::test(flavor = "multi_thread")]
async fn completed_retention_zero_deletes_successes_keeps_failures_and_the_heartbeat_counts_both() {
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert(
        "LETTUCE_JOB_RETENTION".into(),
        "completed=0,discarded=7d".into(),
    );
    let w = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let noops: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.enqueue_many('diag.noop',
             (SELECT array_agg('{}'::jsonb) FROM generate_series(1, 40)))",
    )
    .await;
    assert_eq!(noops, 40);
    let flaky: i64 = xtests::scalar(
        &client,
        "SELECT lettuce.enqueue('diag.fail', '{\"times\": 1}', max_attempts => 3)",
    )
    .await;
    let doomed: i64 = xtests::scalar(
        &client,
        "SELECT lettuce.enqueue('diag.fail', '{\"times\": 9}', max_attempts => 1)",
    )
    .await;
    let (state, attempts, _) = wait_final(&client, doomed, LIMIT).await;
    assert_eq!(
        (state.as_str(), attempts),
        ("discarded", 1),
        "a failure is kept"
    );
    eventually(LIMIT, "the queue to empty", || async {
        let left: i64 = xtests::scalar(&client, "SELECT count(*) FROM lettuce.job_queue").await;
        (left == 0).then_some(())
    })
    .await;
    let kept: i64 = xtests::scalar(
        &client,
        &format!("SELECT count(*) FROM lettuce.jobs WHERE id = {flaky} OR kind = 'diag.noop'"),
    )
    .await;
    assert_eq!(kept, 0, "no row is kept for a completed job");
    let counted: i64 = xtests::scalar(
        &client,
        "SELECT coalesce(sum(n), 0)::int8 FROM lettuce.job_counts WHERE state = 'completed'",
    )
    .await;
    assert_eq!(counted, 41);
    let pool = lettuce_worker::db::pool_for_url(&db.url, 1).unwrap();
    let figures = lettuce_worker::db::telemetry::figures(&pool).await.unwrap();
    assert_eq!(
        (figures.jobs_completed_24h, figures.jobs_failed_24h),
        (41, 1)
    );
    w.stop().await.unwrap();

    // The default retention on the same database: rows again, and the figures add up.
    let w = InProcessWorker::start(&db.env()).await;
    let id: i64 = xtests::scalar(&client, "SELECT lettuce.enqueue('diag.noop')").await;
    assert_eq!(wait_final(&client, id, LIMIT).await.0, "completed");
    let figures = lettuce_worker::db::telemetry::figures(&pool).await.unwrap();
    assert_eq!(
        (figures.jobs_completed_24h, figures.jobs_failed_24h),
        (42, 1)
    );
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_back_off_exponentially() {
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_RETRY_BASE_MS".into(), "60000".into());
    env.insert("LETTUCE_RETRY_MAX_MS".into(), "3600000".into());
    let w = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let id = enqueue_sql(&client, "diag.fail", json!({"times": 1})).await;
    let secs: f64 = eventually(LIMIT, "first failure", || async {
        let r = client
            .query_one(
                "SELECT state, extract(epoch FROM run_at - now())::float8 FROM lettuce.jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (r.get::<_, String>(0) == "retryable").then(|| r.get(1))
    })
    .await;
    // Attempt 1 with base 60 s: jittered within the upper half, [30 s, 60 s].
    assert!((25.0..=60.5).contains(&secs), "backoff {secs}s");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_enqueue_jobs_and_schema_commands() {
    let db = TestDb::new().await;
    let env = db.env();
    // Only `run` and `schema apply` create the schema; the other commands say so.
    let (code, _, err) = run_worker(&["enqueue", "diag.noop"], &env);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("no lettuce schema yet"), "{err}");
    let (code, out, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schema applied (revision "), "{out}");
    let (code, out, err) = run_worker(
        &[
            "enqueue",
            "diag.noop",
            "--payload",
            "{\"a\":1}",
            "--priority",
            "-2",
            "--unique-key",
            "u",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let id: i64 = out.trim().parse().unwrap();
    let (_, again, _) = run_worker(&["enqueue", "diag.noop", "--unique-key", "u"], &env);
    assert_eq!(again.trim(), id.to_string());
    let (code, _, err) = run_worker(&["enqueue", "diag.noop", "--payload", "{not json"], &env);
    assert_eq!(code, 2);
    assert!(err.contains("--payload is not valid JSON"), "{err}");
    let (code, _, err) = run_worker(&["enqueue", "diag.noop", "--run-at", "tomorrow"], &env);
    assert_eq!(code, 2);
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, out, _) = run_worker(
        &[
            "enqueue",
            "diag.noop",
            "--run-at",
            "2999-01-01T00:00:00Z",
            "--queue",
            "later",
        ],
        &env,
    );
    assert_eq!(code, 0);
    let later: i64 = out.trim().parse().unwrap();

    let (code, out, _) = run_worker(&["jobs", "list"], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("diag.noop") && out.contains("scheduled"),
        "{out}"
    );
    let (_, out, _) = run_worker(&["jobs", "list", "--state", "scheduled", "--json"], &env);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], later);
    let (code, out, _) = run_worker(&["jobs", "show", &id.to_string()], &env);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["payload"]["a"].as_i64(), shown["priority"].as_i64()),
        (Some(1), Some(-2))
    );

    let (code, out, _) = run_worker(&["jobs", "cancel", &later.to_string()], &env);
    assert_eq!(
        (code, out.trim()),
        (0, format!("job {later} is now cancelled").as_str())
    );
    let (code, _, err) = run_worker(&["jobs", "cancel", &later.to_string()], &env);
    assert_eq!(code, 1);
    assert!(err.contains("is cancelled"), "{err}");
    let (code, out, _) = run_worker(&["jobs", "retry", &later.to_string()], &env);
    assert_eq!(
        (code, out.trim()),
        (0, format!("job {later} is now available").as_str())
    );
    let (code, _, err) = run_worker(&["jobs", "show", "999999"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("not found"));

    let (code, out, _) = run_worker(&["schema", "print"], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("CREATE SCHEMA IF NOT EXISTS lettuce")
            && out.contains("FUNCTION lettuce.enqueue")
    );
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["enqueue", "--help"],
        vec!["jobs", "--help"],
        vec!["jobs", "list", "--help"],
        vec!["jobs", "show", "--help"],
        vec!["jobs", "retry", "--help"],
        vec!["jobs", "cancel", "--help"],
        vec!["schema", "--help"],
        vec!["schema", "print", "--help"],
        vec!["schema", "apply", "--help"],
        vec!["check-config", "--help"],
        vec!["healthcheck", "--help"],
        vec!["license", "--help"],
        vec!["init", "--help"],
    ] {
        let (code, out, err) = run_worker(&args, &env);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_names_every_variable_and_exits_2() {
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_QUEUES".into(), "default=lots".into());
    env.insert("LETTUCE_SELF_HOSTED".into(), "perhaps".into());
    env.insert("LETTUCE_POLL_INTERVAL_MS".into(), "-5".into());
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 2, "{err}");
    let last = err.lines().last().unwrap();
    for name in [
        "LETTUCE_QUEUES",
        "LETTUCE_SELF_HOSTED",
        "LETTUCE_POLL_INTERVAL_MS",
    ] {
        assert!(last.contains(name), "{last}");
    }
    assert!(last.starts_with("ConfigError:"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_rows_are_kept_and_stale_ones_swept_and_old_jobs_pruned() {
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_LEASE_MS".into(), "600".into());
    env.insert(
        "LETTUCE_JOB_RETENTION".into(),
        "completed=2s,discarded=1h,cancelled=1h".into(),
    );
    let w = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let me = w.handle.worker_id.clone();
    let row = client
        .query_one(
            "SELECT hostname, pid, version, queues FROM lettuce.workers WHERE id = $1",
            &[&me],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1), std::process::id() as i32);
    assert_eq!(row.get::<_, Vec<String>>(3), vec!["default".to_string()]);

    client
        .execute(
            "INSERT INTO lettuce.workers (id, hostname, pid, version, heartbeat_at) VALUES ('ghost', 'h', 1, 'v', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
    // 2500 old finished rows: more than one prune batch. Plus a discarded one kept by its retention.
    client
        .execute(
            "INSERT INTO lettuce.jobs (kind, state, finished_at) SELECT 'old', 'completed', now() - interval '1 day' FROM generate_series(1, 2500)",
            &[],
        )
        .await
        .unwrap();
    client
        .execute("INSERT INTO lettuce.jobs (kind, state, finished_at) VALUES ('old', 'discarded', now() - interval '1 minute')", &[])
        .await
        .unwrap();
    eventually(LIMIT, "stale worker row swept", || async {
        let n: i64 = xtests::scalar(
            &client,
            "SELECT count(*) FROM lettuce.workers WHERE id = 'ghost'",
        )
        .await;
        (n == 0).then_some(())
    })
    .await;
    eventually(LIMIT, "old completed jobs pruned", || async {
        let n: i64 = xtests::scalar(
            &client,
            "SELECT count(*) FROM lettuce.jobs WHERE state = 'completed'",
        )
        .await;
        (n == 0).then_some(())
    })
    .await;
    let kept: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.jobs WHERE state = 'discarded'",
    )
    .await;
    assert_eq!(kept, 1, "discarded rows keep their own retention");
    // Our own row survives many sweeps because the lease heartbeat refreshes it.
    let alive: i64 = client
        .query_one("SELECT count(*) FROM lettuce.workers WHERE id = $1", &[&me])
        .await
        .unwrap()
        .get(0);
    assert_eq!(alive, 1);
    w.stop().await.unwrap();
    let gone: i64 = client
        .query_one("SELECT count(*) FROM lettuce.workers WHERE id = $1", &[&me])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0, "a clean exit removes the presence row");
}

/// A database from before the queue/history split (`lettuce.jobs` one table with partial
/// indexes) is converted in place by the next schema apply: unfinished rows stay in
/// `job_queue`, finished ones move to `job_history`, ids continue, and the worker runs what
/// was waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_before_the_history_split_is_converted_in_place() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE SCHEMA lettuce;
             CREATE TABLE lettuce.jobs (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 kind text NOT NULL CHECK (kind <> ''), queue text NOT NULL DEFAULT 'default',
                 payload jsonb NOT NULL DEFAULT '{}', priority smallint NOT NULL DEFAULT 0,
                 state text NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'scheduled',
                     'running', 'retryable', 'completed', 'discarded', 'cancelled')),
                 attempt int NOT NULL DEFAULT 0, max_attempts int NOT NULL DEFAULT 5,
                 run_at timestamptz NOT NULL DEFAULT now(), created_at timestamptz NOT NULL DEFAULT now(),
                 attempted_at timestamptz, finished_at timestamptz, locked_by text,
                 lease_expires_at timestamptz, errors jsonb NOT NULL DEFAULT '[]', unique_key text,
                 traceparent text);
             CREATE INDEX jobs_fetch_idx ON lettuce.jobs (queue, priority, run_at, id)
                 WHERE state IN ('available', 'scheduled', 'retryable');
             CREATE INDEX jobs_lease_idx ON lettuce.jobs (lease_expires_at) WHERE state = 'running';
             CREATE INDEX jobs_finished_idx ON lettuce.jobs (finished_at)
                 WHERE state IN ('completed', 'discarded', 'cancelled');
             CREATE UNIQUE INDEX jobs_unique_idx ON lettuce.jobs (kind, unique_key)
                 WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable');
             INSERT INTO lettuce.jobs (kind, state, finished_at, attempt) VALUES
                 ('diag.noop', 'completed', now() - interval '1 hour', 1),
                 ('diag.noop', 'discarded', now() - interval '2 hours', 5);
             INSERT INTO lettuce.jobs (kind, unique_key) VALUES ('diag.noop', 'k');
             INSERT INTO lettuce.jobs (kind, state, finished_at, unique_key) VALUES
                 ('diag.noop', 'cancelled', now(), 'k');",
        )
        .await
        .unwrap();
    let (code, out, err) = run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "{out}{err}");

    let split: Vec<(String, i64, String)> = client
        .query(
            "SELECT 'queue', id, state FROM lettuce.job_queue
             UNION ALL SELECT 'history', id, state FROM lettuce.job_history ORDER BY 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expect = |t: &str, id: i64, s: &str| (t.to_string(), id, s.to_string());
    assert_eq!(
        split,
        vec![
            expect("history", 1, "completed"),
            expect("history", 2, "discarded"),
            expect("queue", 3, "available"),
            expect("history", 4, "cancelled"),
        ]
    );
    let kind: String = xtests::scalar(
        &client,
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = 'lettuce.jobs'::regclass",
    )
    .await;
    assert_eq!(kind, "v", "lettuce.jobs is now the view");
    let old_indexes: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'lettuce' AND indexname LIKE 'jobs\\_%\\_idx'",
    )
    .await;
    assert_eq!(old_indexes, 0, "the old partial indexes are gone");

    // The unique rule still sees the waiting row; ids continue after the old ones.
    assert_eq!(
        enqueue_sql_unique(&client, "k").await,
        3,
        "a duplicate returns the waiting job"
    );
    let next = enqueue_sql(&client, "diag.noop", json!({})).await;
    assert!(next > 4, "ids continue: {next}");

    // Applying again changes nothing, and a worker runs the waiting jobs.
    let (code, out, err) = run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "{out}{err}");
    let worker = InProcessWorker::start(&db.env()).await;
    for id in [3, next] {
        assert_eq!(wait_final(&client, id, LIMIT).await.0, "completed");
    }
    worker.stop().await.unwrap();
    let total: i64 = xtests::scalar(&client, "SELECT count(*) FROM lettuce.jobs").await;
    assert_eq!(total, 5);
}

async fn enqueue_sql_unique(client: &tokio_postgres::Client, key: &str) -> i64 {
    client
        .query_one(
            "SELECT lettuce.enqueue('diag.noop', unique_key => $1)",
            &[&key],
        )
        .await
        .unwrap()
        .get(0)
}

/// The rescuer's scan is taken in turns: within one interval only the first replica to ask
/// gets the turn, and the next interval is open to anyone.
#[tokio::test(flavor = "multi_thread")]
async fn the_rescue_scan_is_taken_once_per_interval_across_replicas() {
    let db = TestDb::new().await;
    let (code, out, err) = run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "{out}{err}");
    let pool = lettuce_worker::db::pool_for_url(&db.url, 2).unwrap();
    let every = Duration::from_millis(1500);
    let turn = |who: &'static str| {
        let pool = pool.clone();
        async move {
            lettuce_worker::db::jobs::take_turn(&pool, "rescuer", every, who)
                .await
                .unwrap()
        }
    };
    assert!(turn("a").await, "the first ask gets the turn");
    assert!(
        !turn("b").await,
        "another replica within the interval does not"
    );
    assert!(!turn("a").await, "nor does the same one");
    tokio::time::sleep(every + Duration::from_millis(200)).await;
    assert!(turn("b").await, "the next interval is open again");
    let client = db.client().await;
    let by: String = xtests::scalar(
        &client,
        "SELECT taken_by FROM lettuce.maintenance_turns WHERE task = 'rescuer'",
    )
    .await;
    assert_eq!(by, "b");
}

/// `DATABASE_URL`'s `sslmode` as libpq means it: `disable` plain, `prefer` (the default) and
/// `require` encrypted without checking the certificate, `verify-ca` the chain against
/// `sslrootcert`, `verify-full` the chain and the host name. Needs a server with `ssl = on`
/// (Debian's default; `scripts/test` starts its throwaway cluster with a certificate too).
#[tokio::test(flavor = "multi_thread")]
async fn database_tls_follows_sslmode() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let ssl: String = xtests::scalar(&client, "SHOW ssl").await;
    assert_eq!(ssl, "on", "this test needs a server with ssl = on");
    let cert: String = xtests::scalar(&client, "SHOW ssl_cert_file").await;
    let data_dir: String = xtests::scalar(&client, "SHOW data_directory").await;
    let cert = std::path::Path::new(&data_dir).join(cert);
    let root = cert.display().to_string().replace('/', "%2F");
    let (base, _) = db.url.split_once('?').unwrap_or((&db.url, ""));
    let localhost = base.replace("127.0.0.1", "localhost");

    async fn encrypted(url: &str) -> Result<bool, String> {
        let pool = lettuce_worker::db::pool_for_url(url, 1).map_err(|e| e.to_string())?;
        let c = pool
            .get()
            .await
            .map_err(|e| lettuce_worker::db::DbError::from(e).to_string())?;
        let row = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }
    assert_eq!(
        encrypted(&format!("{base}?sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(
        encrypted(base).await,
        Ok(true),
        "prefer: encrypted when offered"
    );
    assert_eq!(
        encrypted(&format!("{base}?sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(&format!("{base}?sslmode=verify-ca&sslrootcert={root}")).await,
        Ok(true),
        "verify-ca: the chain is checked, the name (127.0.0.1) is not"
    );
    assert_eq!(
        encrypted(&format!(
            "{localhost}?sslmode=verify-full&sslrootcert={root}"
        ))
        .await,
        Ok(true),
        "verify-full against the name in the certificate"
    );
    let wrong_name = encrypted(&format!("{base}?sslmode=verify-full&sslrootcert={root}"))
        .await
        .expect_err("127.0.0.1 is not the certificate's name");
    assert!(wrong_name.contains("certificate"), "{wrong_name}");
    // Another self-signed certificate as the only root: the server's chain does not lead to it.
    let other = std::env::temp_dir().join(format!("{}-other-ca", db.name));
    std::fs::create_dir_all(&other).unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=someone-else")
        .arg("-keyout")
        .arg(other.join("key.pem"))
        .arg("-out")
        .arg(other.join("ca.pem"))
        .output()
        .expect("openssl (scripts/test needs it too)");
    assert!(made.status.success(), "{made:?}");
    let other_root = other
        .join("ca.pem")
        .display()
        .to_string()
        .replace('/', "%2F");
    let untrusted = encrypted(&format!(
        "{base}?sslmode=verify-ca&sslrootcert={other_root}"
    ))
    .await
    .expect_err("a chain to another root is refused");
    assert!(untrusted.contains("certificate"), "{untrusted}");
    let _ = std::fs::remove_dir_all(&other);

    // The binary: boots and works over verify-full; with an unusable root file it stops at
    // the database gate (exit 5) naming the file.
    let mut env = db.env();
    env.insert(
        "DATABASE_URL".into(),
        format!("{localhost}?sslmode=verify-full&sslrootcert={root}"),
    );
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(LIMIT).await;
    let id = enqueue_sql(&client, "diag.noop", json!({})).await;
    assert_eq!(wait_final(&client, id, LIMIT).await.0, "completed");
    let plain: i64 = xtests::scalar(
        &client,
        &format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = '{}' AND a.application_name LIKE 'lettuce-%' AND NOT s.ssl",
            db.name
        ),
    )
    .await;
    assert_eq!(plain, 0, "every worker connection is encrypted");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(LIMIT).await, Some(0));

    env.insert(
        "DATABASE_URL".into(),
        format!("{localhost}?sslmode=verify-full&sslrootcert=%2Fnonexistent%2Fca.pem"),
    );
    let (code, out, err) = run_worker(&["run"], &env);
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

/// "Attempts spent → discarded" is one rule: the completer decides it in Rust
/// (`job::attempts_spent`), the rescuer in SQL (`lettuce.attempts_spent`). They must agree.
#[tokio::test(flavor = "multi_thread")]
async fn the_attempts_spent_rule_is_the_same_in_rust_and_sql() {
    let db = TestDb::new().await;
    let pool = lettuce_worker::db::connect_with_retry(&db.url, 2, LIMIT, None, false)
        .await
        .unwrap();
    lettuce_worker::db::schema::apply(&pool, &lettuce_worker::db::schema::EMBEDDED, false)
        .await
        .unwrap();
    let client = db.client().await;
    for max in 1..=6 {
        for attempt in 0..=8 {
            let sql: bool = client
                .query_one("SELECT lettuce.attempts_spent($1, $2)", &[&attempt, &max])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                sql,
                lettuce_worker::job::attempts_spent(attempt, max),
                "attempt {attempt} of {max}"
            );
        }
    }
    let appended: serde_json::Value = client
        .query_one(
            "SELECT lettuce.append_error(lettuce.append_error('[]', 1, NULL), 2, 'boom')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(appended.as_array().unwrap().len(), 1, "{appended}");
    assert_eq!(appended[0]["attempt"], 2);
    assert_eq!(appended[0]["error"], "boom");
}
