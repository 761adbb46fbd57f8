//! What a careless or hostile client can store, and what a handler can return, never stops a
//! worker or the jobs beside it (issue 12, items 2, 3, 4 and 9). Each test drives the real
//! binary against real Postgres.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use xtests::services::free_port;
use xtests::{TestDb, WorkerProcess, enqueue_sql, eventually, run_worker, scalar, wait_final};

/// A worker env with its HTTP server on a free loopback port; returns the env and base URL.
fn with_http(db: &TestDb, queues: &str) -> (HashMap<String, String>, String) {
    let mut env = db.env();
    let port = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("LETTUCE_QUEUES".into(), queues.into());
    (env, format!("http://127.0.0.1:{port}"))
}

/// `(status, body)` of a GET.
async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn wait_readyz(base: &str, status: u16, needle: &str, limit: Duration) -> String {
    let url = format!("{base}/readyz");
    eventually(
        limit,
        &format!("/readyz {status} containing {needle:?}"),
        || async {
            let (s, body) = get(&url).await;
            (s == status && body.contains(needle)).then_some(body)
        },
    )
    .await
}

/// Reproduction of item 2: a snooze of u64::MAX ms, an error text with NUL and one of 10 MB
/// each wedged the completer on dc07b51 (`interval out of range`, `invalid byte sequence`,
/// retried forever), so the 20 no-ops behind them never ran on a 2-slot worker.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_outcomes_are_stored_bounded_and_the_jobs_behind_them_run() {
    let db = TestDb::new().await;
    let (env, _) = with_http(&db, "default=2");
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;

    let snooze = enqueue_sql(&client, "diag.snooze", json!({ "ms": u64::MAX })).await;
    let nul = enqueue_sql(
        &client,
        "diag.fail",
        json!({ "times": 99, "message": "bad\\0byte" }),
    )
    .await;
    let huge = enqueue_sql(
        &client,
        "diag.fail",
        json!({ "times": 99, "message": "0123456789", "repeat": 1024 * 1024 }),
    )
    .await;
    client
        .execute(
            "UPDATE lettuce.job_queue SET max_attempts = 1 WHERE id IN ($1, $2)",
            &[&nul, &huge],
        )
        .await
        .unwrap();
    let mut noops = Vec::new();
    for _ in 0..20 {
        noops.push(enqueue_sql(&client, "diag.noop", json!({})).await);
    }
    for id in &noops {
        let (state, _, _) = wait_final(&client, *id, Duration::from_secs(30)).await;
        assert_eq!(state, "completed");
    }
    for id in [nul, huge] {
        let (state, _, errors) = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(state, "discarded");
        let text = errors[0]["error"].as_str().unwrap().to_string();
        assert!(!text.contains('\u{0}'), "{text:?}");
        assert!(text.len() <= 4096, "{} bytes stored", text.len());
        if id == nul {
            assert_eq!(text, "bad\\0byte");
        } else {
            assert!(
                text.ends_with("(cut: 10485760 bytes in all)"),
                "{}",
                &text[text.len() - 60..]
            );
        }
    }
    // The snooze is clamped to 30 days: stored as scheduled, no attempt used.
    let row = client
        .query_one(
            "SELECT state, attempt, extract(epoch from run_at - now())::float8 FROM lettuce.jobs WHERE id = $1",
            &[&snooze],
        )
        .await
        .unwrap();
    let (state, attempt, secs): (String, i32, f64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((state.as_str(), attempt), ("scheduled", 0));
    assert!(secs > 29.0 * 86_400.0 && secs <= 30.0 * 86_400.0, "{secs}");
    assert!(
        !w.printed("writing outcomes failed"),
        "{}",
        w.output().join("\n")
    );
}

/// Installs a trigger that makes the database refuse outcomes of jobs whose unique key is
/// `refuse-update` (requeues refused: the discarded fallback then works) or `refuse-all`
/// (deletes refused too: nothing about the job can be written).
async fn install_refusing_trigger(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE FUNCTION lettuce.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF OLD.state = 'running' AND OLD.unique_key LIKE 'refuse-%'
                    AND (TG_OP = 'DELETE' AND OLD.unique_key = 'refuse-all'
                         OR TG_OP = 'UPDATE' AND NEW.state <> 'running') THEN
                     RAISE EXCEPTION 'test refuses the outcome of job %', OLD.id;
                 END IF;
                 IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER test_refuse BEFORE UPDATE OR DELETE ON lettuce.job_queue
                 FOR EACH ROW EXECUTE FUNCTION lettuce.test_refuse();",
        )
        .await
        .unwrap();
}

/// A `diag.fail` job (fails once) under the trigger's unique key `key`.
async fn enqueue_refused(client: &tokio_postgres::Client, key: &str) -> i64 {
    client
        .query_one(
            "SELECT lettuce.enqueue('diag.fail', '{\"times\": 1}', unique_key => $1)",
            &[&key],
        )
        .await
        .unwrap()
        .get(0)
}

/// A batch holding an outcome the database refuses: the refused outcome is isolated and
/// written as `discarded` with the database's reason; the others in the same batch are written
/// as they are. One that cannot even be discarded is left to lease expiry, and its slot freed.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_outcome_is_isolated_discarded_or_abandoned_and_frees_its_slot() {
    let db = TestDb::new().await;
    let (mut env, base) = with_http(&db, "default=4");
    env.insert("LETTUCE_LEASE_MS".into(), "1500".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    install_refusing_trigger(&client).await;

    // Retries (requeue updates) of a refused job and of ordinary ones, in the same batches.
    let refused = enqueue_refused(&client, "refuse-update").await;
    let ordinary: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(enqueue_sql(&client, "diag.fail", json!({ "times": 1 })).await);
        }
        v
    };
    let (state, _, errors) = wait_final(&client, refused, Duration::from_secs(30)).await;
    assert_eq!(state, "discarded");
    let text = errors.as_array().unwrap().last().unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains("outcome `retryable` refused by the database")
            && text.contains("test refuses"),
        "{text}"
    );
    for id in ordinary {
        let (state, attempt, _) = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!((state.as_str(), attempt), ("completed", 2));
    }

    // Nothing about this one can be written: the worker lets go of it and carries on.
    let stuck = enqueue_refused(&client, "refuse-all").await;
    eventually(
        Duration::from_secs(20),
        "the unwritable outcome to be abandoned",
        || async { w.printed("even discarding was refused").then_some(()) },
    )
    .await;
    let mut later = Vec::new();
    for _ in 0..8 {
        later.push(enqueue_sql(&client, "diag.noop", json!({})).await);
    }
    for id in later {
        let (state, _, _) = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(state, "completed");
    }
    // Its lease is no longer extended: it expires (rescue itself is refused by the trigger).
    eventually(
        Duration::from_secs(20),
        "the abandoned lease to expire",
        || async {
            let expired: bool = scalar(
                &client,
                &format!(
                    "SELECT lease_expires_at < now() FROM lettuce.job_queue WHERE id = {stuck}"
                ),
            )
            .await;
            expired.then_some(())
        },
    )
    .await;
    let (status, _) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200);
}

/// Outcomes that cannot be written for longer than a lease (the database stops accepting
/// connections): `/readyz` says so, the attempts' slots are freed, and once the database is back
/// the jobs are rescued and run again; `/readyz` is ready again.
#[tokio::test(flavor = "multi_thread")]
async fn outcomes_unwritable_for_a_lease_turn_readyz_unready_until_writes_resume() {
    let db = TestDb::new().await;
    let (mut env, base) = with_http(&db, "default=2");
    env.insert("LETTUCE_LEASE_MS".into(), "1000".into());
    env.insert("LETTUCE_DB_POOL_SIZE".into(), "4".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = xtests::connect(&xtests::admin_url()).await;
    let jobs = db.client().await;
    let id = enqueue_sql(&jobs, "diag.sleep", json!({ "ms": 1500 })).await;
    eventually(Duration::from_secs(10), "the job to run", || async {
        let s: String = scalar(
            &jobs,
            &format!("SELECT state FROM lettuce.jobs WHERE id = {id}"),
        )
        .await;
        (s == "running").then_some(())
    })
    .await;
    drop(jobs);
    client
        .batch_execute(&format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
            db.name
        ))
        .await
        .unwrap();
    let body = wait_readyz(
        &base,
        503,
        "job outcomes cannot be written",
        Duration::from_secs(20),
    )
    .await;
    assert!(!body.contains(&db.name), "{body}");
    eventually(
        Duration::from_secs(20),
        "the batch to be given up",
        || async {
            w.printed("writing outcomes failed for longer than a lease")
                .then_some(())
        },
    )
    .await;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .await
        .unwrap();
    let jobs = db.client().await;
    let (state, attempt, _) = wait_final(&jobs, id, Duration::from_secs(30)).await;
    assert_eq!(state, "completed");
    assert!(attempt >= 2, "rescued and run again, attempt {attempt}");
    wait_readyz(&base, 200, "ready", Duration::from_secs(20)).await;
}

/// Reproduction of item 3: rows Rust cannot decode (a number beyond a double, arrays nested
/// 200 deep; the depth CHECK dropped as on an old database) panicked the claim on dc07b51, and
/// that queue's producer died. Now they are discarded naming the field, later jobs run, nothing
/// restarts, and `worker jobs list` / `show` print them.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_rows_are_discarded_naming_the_field_and_the_queue_goes_on() {
    let db = TestDb::new().await;
    let (env, base) = with_http(&db, "default=2");
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE lettuce.job_queue DROP CONSTRAINT job_queue_payload_depth")
        .await
        .unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let ids: Vec<i64> = {
        let mut v = Vec::new();
        for payload in [r#"{"x": 1e400}"#.to_string(), deep] {
            let id: i64 = client
                .query_one(
                    "INSERT INTO lettuce.job_queue (kind, payload) VALUES ('diag.noop', $1::text::jsonb) RETURNING id",
                    &[&payload],
                )
                .await
                .unwrap()
                .get(0);
            v.push(id);
        }
        v
    };
    for id in &ids {
        let (state, _, errors) = wait_final(&client, *id, Duration::from_secs(20)).await;
        assert_eq!(state, "discarded");
        let text = errors[0]["error"].as_str().unwrap();
        assert!(text.starts_with("payload cannot be decoded"), "{text}");
    }
    let after = enqueue_sql(&client, "diag.noop", json!({})).await;
    assert_eq!(
        wait_final(&client, after, Duration::from_secs(20)).await.0,
        "completed"
    );
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert!(
        !metrics.contains("lettuce_task_restarts_total{"),
        "{metrics}"
    );
    assert!(!w.printed("panicked"));

    let (code, out, err) = run_worker(&["jobs", "list", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("payload cannot be decoded"), "{out}");
    let (code, out, err) = run_worker(&["jobs", "show", &ids[1].to_string()], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"problems\""), "{out}");
}

/// The CHECK constraints of `schema/0013_limits.sql`.
const LIMIT_CONSTRAINTS: [&str; 8] = [
    "job_queue_kind_format",
    "job_queue_queue_format",
    "job_queue_payload_size",
    "job_queue_payload_depth",
    "job_queue_run_at_finite",
    "job_queue_max_attempts_range",
    "job_queue_unique_key_length",
    "job_queue_traceparent_length",
];

/// Rows stored before the limits existed (constraints absent, as on an older database) are
/// discarded at upgrade naming the limit, so no claim ever trips on them.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_discards_stored_rows_that_break_a_limit() {
    let db = TestDb::new().await;
    let env = db.env();
    let (code, _, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{err}");
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "DO $$ DECLARE c text; BEGIN
                   FOR c IN SELECT unnest(ARRAY['{}']) LOOP
                     EXECUTE format('ALTER TABLE lettuce.job_queue DROP CONSTRAINT %I', c);
                   END LOOP; END $$;
                 UPDATE lettuce.schema_state SET digest = 'from an older release';",
            LIMIT_CONSTRAINTS.join("','")
        ))
        .await
        .unwrap();
    let bad = [
        (
            "run_at",
            "INSERT INTO lettuce.job_queue (kind, run_at) VALUES ('diag.noop', '-infinity') RETURNING id",
        ),
        (
            "queue",
            "INSERT INTO lettuce.job_queue (kind, queue) VALUES ('diag.noop', E'evil\"} 1\\n') RETURNING id",
        ),
        (
            "payload",
            "INSERT INTO lettuce.job_queue (kind, payload) VALUES ('diag.noop', jsonb_build_object('x', repeat('a', 2000000))) RETURNING id",
        ),
        (
            "max_attempts",
            "INSERT INTO lettuce.job_queue (kind, max_attempts) VALUES ('diag.noop', 100000) RETURNING id",
        ),
    ];
    let mut ids = Vec::new();
    for (field, sql) in bad {
        let id: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        ids.push((field, id));
    }
    let good = enqueue_sql(&client, "diag.noop", json!({})).await;
    let (code, _, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{err}");
    for (field, id) in ids {
        let row = client
            .query_one(
                "SELECT state, errors FROM lettuce.jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let (state, errors): (String, serde_json::Value) = (row.get(0), row.get(1));
        assert_eq!(state, "discarded", "{field}");
        let text = errors[0]["error"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("discarded at upgrade: {field} must")),
            "{text}"
        );
    }
    let n: i64 = scalar(
        &client,
        &format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'lettuce.job_queue'::regclass
              AND conname IN ('{}') AND convalidated",
            LIMIT_CONSTRAINTS.join("','")
        ),
    )
    .await;
    assert_eq!(n, 8, "every limit constraint is back and validated");
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        wait_final(&client, good, Duration::from_secs(20)).await.0,
        "completed"
    );
    // `jobs list` prints the infinite run_at row without panicking.
    let (code, _, err) = run_worker(&["jobs", "list"], &env);
    assert_eq!(code, 0, "{err}");
}

/// Item 4: every writer meets the limits, with an error naming the limit: the SQL function,
/// a plain INSERT (CHECK constraints), the Rust API and the CLI. Configuration durations are
/// bounded too.
#[tokio::test(flavor = "multi_thread")]
async fn every_writer_meets_the_input_limits() {
    let db = TestDb::new().await;
    let env = db.env();
    let (code, _, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{err}");
    let client = db.client().await;
    let deep = format!("{}1{}", "[".repeat(66), "]".repeat(66));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "queue",
            "SELECT lettuce.enqueue('diag.noop', queue => 'evil\"} 1')".into(),
            "queue must match",
        ),
        (
            "queue",
            format!(
                "SELECT lettuce.enqueue('diag.noop', queue => '{}')",
                "q".repeat(65)
            ),
            "queue must match",
        ),
        (
            "kind",
            "SELECT lettuce.enqueue('Diag.Noop')".into(),
            "kind must match",
        ),
        (
            "payload",
            "SELECT lettuce.enqueue('diag.noop', jsonb_build_object('x', repeat('a', 1048576)))"
                .into(),
            "payload must be at most 1048576 bytes",
        ),
        (
            "depth",
            format!("SELECT lettuce.enqueue('diag.noop', '{deep}')"),
            "payload must nest at most 64 levels",
        ),
        (
            "number",
            "SELECT lettuce.enqueue('diag.noop', '{\"x\": 1e400}')".into(),
            "payload numbers must fit a 64-bit float",
        ),
        (
            "run_at",
            "SELECT lettuce.enqueue('diag.noop', run_at => '-infinity')".into(),
            "run_at must be a finite time",
        ),
        (
            "run_at",
            "SELECT lettuce.enqueue('diag.noop', run_at => 'infinity')".into(),
            "run_at must be a finite time",
        ),
        (
            "max_attempts",
            "SELECT lettuce.enqueue('diag.noop', max_attempts => 0)".into(),
            "max_attempts must be between 1 and 1000",
        ),
        (
            "max_attempts",
            "SELECT lettuce.enqueue('diag.noop', max_attempts => 1001)".into(),
            "max_attempts must be between 1 and 1000",
        ),
        (
            "unique_key",
            format!(
                "SELECT lettuce.enqueue('diag.noop', unique_key => '{}')",
                "k".repeat(513)
            ),
            "unique_key must be at most 512 bytes",
        ),
        (
            "traceparent",
            format!(
                "SELECT lettuce.enqueue('diag.noop', traceparent => '{}')",
                "t".repeat(129)
            ),
            "traceparent must be at most 128 bytes",
        ),
    ];
    for (what, sql, needle) in &cases {
        let err = client.query_one(sql.as_str(), &[]).await.unwrap_err();
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{what}: {err}"));
        assert!(
            db_err.message().contains(needle),
            "{what}: {}",
            db_err.message()
        );
    }
    // At the edges, accepted.
    let edge = format!("{}1{}", "[".repeat(64), "]".repeat(64));
    client
        .query_one(
            &format!(
                "SELECT lettuce.enqueue('{}', '{edge}', '{}', max_attempts => 1000)",
                "k".repeat(128),
                "Q:.-_9".repeat(10)
            ),
            &[],
        )
        .await
        .unwrap();

    // A plain INSERT meets the CHECK constraints.
    for (constraint, sql) in [
        (
            "job_queue_queue_format",
            "INSERT INTO lettuce.job_queue (kind, queue) VALUES ('diag.noop', 'a b')",
        ),
        (
            "job_queue_kind_format",
            "INSERT INTO lettuce.job_queue (kind) VALUES ('A')",
        ),
        (
            "job_queue_run_at_finite",
            "INSERT INTO lettuce.job_queue (kind, run_at) VALUES ('diag.noop', '-infinity')",
        ),
        (
            "job_queue_payload_depth",
            &format!(
                "INSERT INTO lettuce.job_queue (kind, payload) VALUES ('diag.noop', '{deep}')"
            ),
        ),
        (
            "job_queue_max_attempts_range",
            "INSERT INTO lettuce.job_queue (kind, max_attempts) VALUES ('diag.noop', 5000)",
        ),
    ] {
        let err = client.execute(sql, &[]).await.unwrap_err();
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.constraint(), Some(constraint), "{sql}");
    }

    // The Rust API refuses before any statement.
    let nested: serde_json::Value = serde_json::from_str(&deep).unwrap();
    for (job, field) in [
        (
            lettuce_worker::NewJob::new("diag.noop", json!({})).queue("a\nb"),
            "queue",
        ),
        (lettuce_worker::NewJob::new("diag.noop", nested), "payload"),
        (
            lettuce_worker::NewJob::new("diag.noop", json!({})).max_attempts(0),
            "max_attempts",
        ),
        (
            lettuce_worker::NewJob::new("diag.noop", json!({})).unique_key("k".repeat(600)),
            "unique_key",
        ),
    ] {
        let err = lettuce_worker::enqueue(&client, &job).await.unwrap_err();
        assert!(err.to_string().starts_with(field), "{err}");
        let err = lettuce_worker::enqueue_many(&client, &[job])
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with(field), "{err}");
    }

    // The CLI names the flag, exit 2.
    let long = "q".repeat(65);
    for (args, needle) in [
        (
            vec!["enqueue", "diag.noop", "--queue", long.as_str()],
            "--queue: queue must match",
        ),
        (
            vec!["enqueue", "diag.noop", "--max-attempts", "1001"],
            "--max-attempts: max_attempts must be between 1 and 1000",
        ),
        (vec!["enqueue", "Bad Kind"], "KIND: kind must match"),
    ] {
        let (code, _, err) = run_worker(&args, &env);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // Durations have upper bounds: this lease passed check-config and broke every claim.
    let mut bad = env.clone();
    bad.insert("LETTUCE_LEASE_MS".into(), u64::MAX.to_string());
    bad.insert("LETTUCE_JOB_RETENTION".into(), "999999d".into());
    let (code, out, err) = run_worker(&["check-config"], &bad);
    assert_ne!(code, 0, "{out}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("LETTUCE_LEASE_MS") && text.contains("from 100 to 3600000"),
        "{text}"
    );
    assert!(
        text.contains("LETTUCE_JOB_RETENTION") && text.contains("3650d"),
        "{text}"
    );
    let (code, _, err) = run_worker(&["run"], &bad);
    assert_eq!(code, 2, "{err}");
    // A queue name outside the alphabet is refused in LETTUCE_QUEUES too.
    let mut bad = env.clone();
    bad.insert("LETTUCE_QUEUES".into(), "a\"b=1".into());
    let (code, _, err) = run_worker(&["run"], &bad);
    assert_eq!(code, 2, "{err}");
}

/// Item 9: `worker jobs cancel` on a running job stops its attempt within about a second (the
/// `lettuce_control` NOTIFY), frees its slot, and logs no refused completion. On dc07b51 the
/// 20 s sleep ran to its end and then logged `late completion refused`.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_stops_its_attempt_at_once() {
    let db = TestDb::new().await;
    let (env, _) = with_http(&db, "default=1");
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    let id = enqueue_sql(&client, "diag.sleep", json!({ "ms": 20000 })).await;
    eventually(Duration::from_secs(10), "the job to run", || async {
        let s: String = scalar(
            &client,
            &format!("SELECT state FROM lettuce.jobs WHERE id = {id}"),
        )
        .await;
        (s == "running").then_some(())
    })
    .await;
    let (code, out, err) = run_worker(&["jobs", "cancel", &id.to_string()], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    // Well inside the 20 s sleep and the 20 s heartbeat (a third of the default 60 s lease).
    eventually(Duration::from_secs(3), "the attempt to stop", || async {
        w.printed("an operator cancelled the job").then_some(())
    })
    .await;
    // The only slot is free again.
    let next = enqueue_sql(&client, "diag.noop", json!({})).await;
    let (state, _, _) = wait_final(&client, next, Duration::from_secs(5)).await;
    assert_eq!(state, "completed");
    assert_eq!(
        scalar::<String>(
            &client,
            &format!("SELECT state FROM lettuce.jobs WHERE id = {id}")
        )
        .await,
        "cancelled"
    );
    assert!(
        !w.printed("late completion refused"),
        "{}",
        w.output().join("\n")
    );
}

/// Item 3's readiness: a claim loop that stops ticking (here its claim statement blocks behind
/// an exclusive lock) turns `/readyz` unready, and ready again once it ticks.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_claim_loop_turns_readyz_unready() {
    let db = TestDb::new().await;
    let (mut env, base) = with_http(&db, "default=2");
    env.insert("LETTUCE_POLL_INTERVAL_MS".into(), "100".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    wait_readyz(&base, 200, "ready", Duration::from_secs(10)).await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE lettuce.job_queue IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let body = wait_readyz(
        &base,
        503,
        "claim loop stalled for queue default",
        Duration::from_secs(30),
    )
    .await;
    assert!(body.starts_with("not ready"), "{body}");
    tx.rollback().await.unwrap();
    wait_readyz(&base, 200, "ready", Duration::from_secs(15)).await;
    let client = db.client().await;
    let id = enqueue_sql(&client, "diag.noop", json!({})).await;
    assert_eq!(
        wait_final(&client, id, Duration::from_secs(10)).await.0,
        "completed"
    );
}
