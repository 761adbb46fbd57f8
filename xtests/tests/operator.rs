//! Operator trust (issue 13): a liveness probe that depends on nothing but the process, and a
//! configuration file whose syntax errors never print what the file holds. Each test runs the
//! real binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use xtests::services::free_port;
use xtests::{TestDb, WorkerProcess, run_worker};

/// A loopback listener standing in for a secret store: counts the connections it gets and
/// answers none of them.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, seen)
}

async fn run(args: &'static [&'static str], env: HashMap<String, String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || run_worker(args, &env))
        .await
        .unwrap()
}

/// Issue 13, item 2: on dc07b51 `worker healthcheck` loaded the whole configuration, secrets
/// included, so a secret store that does not answer made every healthy container unhealthy (exit
/// 2). Now it reads only `LETTUCE_HTTP_ADDR`: exit 0 while the worker runs, with not one
/// connection to the store and no `DATABASE_URL` at all; exit 1 once the worker is gone.
#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_reads_only_its_address_never_the_secret_store() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let port = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;

    let (store, seen) = counting_listener().await;
    let probe_env: HashMap<String, String> = [
        ("LETTUCE_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("LETTUCE_SECRET_STORE", "vault".to_string()),
        ("VAULT_ADDR", store),
        ("VAULT_TOKEN", "probe-token".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (code, out, err) = run(&["healthcheck"], probe_env.clone()).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "healthcheck contacted the secret store"
    );

    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    let (code, _, err) = run(&["healthcheck"], probe_env).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unhealthy"), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

/// Issue 13, item 3: on dc07b51 an unterminated string in the `LETTUCE_CONFIG` file made
/// `check-config` (human and JSON) and `worker run` print the offending line, password included.
/// Now they name the file, the line and the kind of error only.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_syntax_error_names_the_line_never_the_secret() {
    let dir = std::env::temp_dir().join(format!("lettuce-toml-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        "lettuce_queues = \"default=2\"\ndatabase_url = \"postgres://lettuce:PASSWORD@db/lettuce\n",
    )
    .unwrap();
    let env: HashMap<String, String> = [
        ("LETTUCE_CONFIG", path.display().to_string()),
        ("LETTUCE_HTTP_ADDR", "off".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for args in [
        &["check-config"][..],
        &["check-config", "--format", "json"][..],
        &["run"][..],
    ] {
        let args: &'static [&'static str] = Box::leak(args.to_vec().into_boxed_slice());
        let mut env = env.clone();
        if args[0] == "jobs" {
            // `jobs` reads only DATABASE_URL from the store: make it ask (and fail).
            env.remove("DATABASE_URL");
        }
        let (code, out, err) = run(args, env).await;
        let all = format!("{out}{err}");
        assert_ne!(code, 0, "{args:?}: {all}");
        assert!(
            !all.contains("PASSWORD"),
            "{args:?} printed the secret:\n{all}"
        );
        assert!(!all.contains("postgres://lettuce"), "{args:?}:\n{all}");
        assert!(
            all.contains("line 2"),
            "{args:?} does not name the line:\n{all}"
        );
    }
    assert_eq!(run(&["run"], env).await.0, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn rand_suffix() -> String {
    format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Issue 13, item 3: on dc07b51 the Vault client followed a 307 to another origin and sent
/// `X-Vault-Token` there. Now a redirect is an error naming it, and the other origin sees nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_vault_redirect_is_refused_and_the_token_goes_nowhere_else() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (elsewhere, seen) = counting_listener().await;
    let vault = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vault_addr = format!("http://{}", vault.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = vault.accept().await {
            let elsewhere = elsewhere.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}/v1/secret/data/lettuce/DATABASE_URL\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    let env: HashMap<String, String> = [
        ("LETTUCE_SECRET_STORE", "vault".to_string()),
        ("VAULT_ADDR", vault_addr),
        ("VAULT_TOKEN", "hvs.redirect-probe-token".to_string()),
        ("LETTUCE_HTTP_ADDR", "off".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (code, out, err) = run(&["jobs", "list"], env).await;
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    assert!(all.contains("HTTP 307 redirect"), "{all}");
    assert!(all.contains("not followed"), "{all}");
    assert!(!all.contains("redirect-probe-token"), "{all}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the redirect was followed to another origin"
    );
}

/// Issue 13, item 4: on dc07b51 human logs carried ANSI colour codes into a pipe, and with
/// `LETTUCE_LOG_FORMAT=json` a handler's panic wrote plain multi-line text into the JSON stream.
/// Now a pipe gets plain text, and every JSON line parses, the panic included (as an event with
/// its message and location).
#[tokio::test(flavor = "multi_thread")]
async fn logs_stay_json_through_a_panic_and_no_colour_reaches_a_pipe() {
    let db = TestDb::new().await;
    let client = db.client().await;

    let mut env = db.env();
    env.insert("LETTUCE_LOG_FORMAT".into(), "json".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let id: i64 = client
        .query_one(
            "SELECT lettuce.enqueue('diag.panic', max_attempts => 1)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (state, _, _) = xtests::wait_final(&client, id, Duration::from_secs(30)).await;
    assert_eq!(state, "discarded");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    let lines = w.output();
    let mut panic_seen = false;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{}", lines.join("\n")));
        if v.pointer("/fields/panic")
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains("deliberate panic"))
        {
            assert!(
                v.pointer("/fields/location")
                    .and_then(|l| l.as_str())
                    .is_some_and(|l| l.contains("diag.rs")),
                "{line}"
            );
            panic_seen = true;
        }
    }
    assert!(panic_seen, "no JSON panic event:\n{}", lines.join("\n"));
    // The ready line says which build and which worker this is.
    let ready: serde_json::Value = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.pointer("/fields/message").and_then(|m| m.as_str()) == Some("worker ready"))
        .expect("a worker ready line");
    assert_eq!(
        ready.pointer("/fields/version").and_then(|v| v.as_str()),
        Some(lettuce_worker::VERSION),
        "{ready}"
    );
    assert!(
        ready
            .pointer("/fields/worker_id")
            .and_then(|v| v.as_str())
            .is_some_and(|id| !id.is_empty()),
        "{ready}"
    );

    // Human format into a pipe (the test's), colour codes nowhere.
    let env = db.env();
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    let text = w.output().join("\n");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in piped logs:\n{text}"
    );
    assert!(text.contains("worker ready"), "{text}");
}

/// Issue 13, item 3: on dc07b51 URLs carrying `user:password@` were printed verbatim by
/// check-config (human and JSON), by the logs and in library errors. Now the userinfo of every
/// URL is `***` wherever it is printed.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_urls_are_never_printed() {
    let db = TestDb::new().await;
    let dead = free_port();
    let mut env = db.env();
    for (k, v) in [
        ("LETTUCE_SECRET_STORE", "vault".to_string()),
        (
            "VAULT_ADDR",
            format!("http://vaultuser:VAULTPASS@127.0.0.1:{dead}"),
        ),
        ("VAULT_TOKEN", "hvs.x".to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://oteluser:OTELPASS@127.0.0.1:{dead}"),
        ),
        (
            "CODEWAZE_S3_ENDPOINT",
            format!("http://s3user:S3PASS@127.0.0.1:{dead}"),
        ),
        ("CODEWAZE_S3_BUCKET", "b".to_string()),
    ] {
        env.insert(k.into(), v);
    }
    for args in [
        &["check-config"][..],
        &["check-config", "--format", "json"][..],
        &["jobs", "list"][..],
        &["run"][..],
    ] {
        let args: &'static [&'static str] = Box::leak(args.to_vec().into_boxed_slice());
        let mut env = env.clone();
        if args[0] == "jobs" {
            // `jobs` reads only DATABASE_URL from the store: make it ask (and fail).
            env.remove("DATABASE_URL");
        }
        let (code, out, err) = run(args, env).await;
        let all = format!("{out}{err}");
        assert_ne!(code, 0, "{args:?}: {all}");
        for secret in ["VAULTPASS", "OTELPASS", "S3PASS", "vaultuser"] {
            assert!(!all.contains(secret), "{args:?} printed {secret}:\n{all}");
        }
        assert!(
            all.contains("***@127.0.0.1"),
            "{args:?}: nothing redacted?\n{all}"
        );
    }
}

/// The worker's `/metrics` text on `port`.
async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Issue 13, item 5 (part): on dc07b51 a queue that had not run a job yet exported nothing,
/// and nothing said how long the oldest job had waited or what version runs. Now configured
/// queues start at 0, slots are exported, and the oldest available job's age is read at scrape.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_start_at_zero_and_show_the_oldest_waiting_job() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let port = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("LETTUCE_QUEUES".into(), "default=3,reports=2".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    // A job in a queue nobody serves, runnable for 90 s already.
    client
        .execute(
            "SELECT lettuce.enqueue('diag.noop', queue => 'backlog', run_at => now() - interval '90 seconds')",
            &[],
        )
        .await
        .unwrap();
    let text = scrape(port).await;
    assert_eq!(
        sample(&text, "lettuce_queue_slots{queue=\"default\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lettuce_queue_slots{queue=\"reports\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lettuce_jobs_in_flight{queue=\"reports\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "lettuce_queue_oldest_available_age_seconds{queue=\"reports\"}"
        ),
        Some(0.0),
        "{text}"
    );
    let age = sample(
        &text,
        "lettuce_queue_oldest_available_age_seconds{queue=\"backlog\"}",
    )
    .unwrap_or_else(|| panic!("no age for backlog:\n{text}"));
    assert!((90.0..200.0).contains(&age), "age {age}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("lettuce_build_info{version=\"") && l.ends_with(" 1")),
        "{text}"
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// Issue 13, item 5 (part): on dc07b51 the runtime counted rescues, fenced late writes,
/// hand-backs, abandoned outcomes and operator cancels but exported none of them. Now each is a
/// counter from the start (0) and moves with what happens: here an operator cancel.
#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_counters_are_exported_and_count_a_cancel() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let port = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let text = scrape(port).await;
    for name in [
        "lettuce_jobs_rescued_total",
        "lettuce_late_writes_refused_total",
        "lettuce_jobs_handed_back_total",
        "lettuce_outcomes_abandoned_total",
        "lettuce_running_cancelled_total",
    ] {
        assert_eq!(sample(&text, name), Some(0.0), "{name}:\n{text}");
    }
    let client = db.client().await;
    let id = xtests::enqueue_sql(&client, "diag.sleep", serde_json::json!({ "ms": 20000 })).await;
    xtests::eventually(Duration::from_secs(20), "the sleep to run", || async {
        let state: String = client
            .query_one("SELECT state FROM lettuce.jobs WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        (state == "running").then_some(())
    })
    .await;
    let id_text: &'static str = Box::leak(id.to_string().into_boxed_str());
    let args: &'static [&'static str] =
        Box::leak(vec!["jobs", "cancel", id_text].into_boxed_slice());
    let (code, out, err) = run(args, db.env()).await;
    assert_eq!(code, 0, "{out}{err}");
    xtests::eventually(
        Duration::from_secs(20),
        "the cancel to be counted",
        || async {
            (sample(&scrape(port).await, "lettuce_running_cancelled_total") == Some(1.0))
                .then_some(())
        },
    )
    .await;
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// The embedded statement list one revision ahead, as a later release would ship it:
/// `lettuce.enqueue`'s body gains a marker line.
fn next_revision() -> Vec<(String, String)> {
    let list = lettuce_worker::db::schema::EMBEDDED;
    let mut changed = 0;
    let next = list
        .statements
        .iter()
        .map(|(name, sql)| {
            if !name.starts_with("0004") {
                return (name.to_string(), sql.to_string());
            }
            let marked = sql.replacen(
                "#variable_conflict use_column",
                "#variable_conflict use_column\n-- next revision marker",
                1,
            );
            changed += usize::from(marked != *sql);
            (name.to_string(), marked)
        })
        .collect();
    assert_eq!(changed, 1, "the marker lands in lettuce.enqueue only");
    next
}

/// DDL commands the `count_ddl` event trigger saw since the last call.
async fn ddl(client: &tokio_postgres::Client) -> i64 {
    let n: i64 = xtests::scalar(client, "SELECT count(*) FROM public.ddl_seen").await;
    client
        .batch_execute("DELETE FROM public.ddl_seen")
        .await
        .unwrap();
    n
}

/// `name:xmin` of every function in schema `lettuce`: a `CREATE OR REPLACE` rewrites the row.
async fn function_rows(client: &tokio_postgres::Client) -> String {
    xtests::scalar(
        client,
        "SELECT string_agg(p.oid::regprocedure::text || ':' || p.xmin::text, ',' ORDER BY p.oid)
           FROM pg_proc p WHERE p.pronamespace = 'lettuce'::regnamespace",
    )
    .await
}

async fn marked(client: &tokio_postgres::Client) -> bool {
    xtests::scalar::<i64>(
        client,
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'lettuce'::regnamespace
            AND proname = 'enqueue' AND prosrc LIKE '%next revision marker%'",
    )
    .await
        == 1
}

/// Issue 13, item 1: on dc07b51 any binary applied its own list whenever the stored digest
/// differed, so an older binary (a rollback, a mixed fleet, an old CLI) re-created
/// `lettuce.enqueue` with its older body. Now a newer list applied through the library upgrades
/// an older schema; the older binary leaves the newer schema alone (`schema apply`, `run`, and
/// the one-shot commands rewrite no function) and works against it while it declares itself
/// compatible; once the newer schema's minimum compatible revision passes the binary's, every
/// command exits 6 naming both revisions.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_binary_never_downgrades_a_newer_schema_and_refuses_an_incompatible_one() {
    use lettuce_worker::db::schema::{Applied, EMBEDDED, StatementList, apply};
    let db = TestDb::new().await;
    let env = db.env();
    let (code, out, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let client = db.client().await;
    assert!(!marked(&client).await);

    // Newer over older: the next revision, compatible with this binary, upgrades.
    let owned = next_revision();
    let statements: Vec<(&str, &str)> = owned
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let rev = EMBEDDED.revision;
    let newer = StatementList {
        revision: rev + 1,
        min_compatible: rev,
        statements: &statements,
    };
    let pool = lettuce_worker::db::pool_for_url(&db.url, 2).unwrap();
    assert_eq!(
        apply(&pool, &newer, false).await.unwrap(),
        Applied::Applied { from: Some(rev) }
    );
    assert!(marked(&client).await, "the newer body is in place");
    let recorded: String = xtests::scalar(
        &client,
        "SELECT revision || '/' || min_compatible_revision FROM lettuce.schema_state",
    )
    .await;
    assert_eq!(recorded, format!("{}/{rev}", rev + 1));

    // Older over newer: nothing is rewritten, and the older binary works against it.
    let functions = function_rows(&client).await;
    let (code, out, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("left as it is"), "{out}");
    let (code, out, err) = run_worker(&["enqueue", "diag.noop"], &env);
    assert_eq!(code, 0, "{err}");
    let id: i64 = out.trim().parse().unwrap();
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        xtests::wait_final(&client, id, Duration::from_secs(20))
            .await
            .0,
        "completed"
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert!(
        w.printed("newer revision that declares this binary compatible"),
        "{:?}",
        w.output()
    );
    assert_eq!(
        function_rows(&client).await,
        functions,
        "no function rewritten"
    );
    assert!(marked(&client).await);

    // The newer schema stops declaring this binary compatible: every command refuses, exit 6.
    let incompatible = StatementList {
        min_compatible: rev + 1,
        ..newer
    };
    apply(&pool, &incompatible, true).await.unwrap();
    let functions = function_rows(&client).await;
    for args in [
        &["run"][..],
        &["schema", "apply"],
        &["jobs", "list"],
        &["enqueue", "diag.noop"],
    ] {
        let (code, out, err) = run_worker(args, &env);
        assert_eq!(code, 6, "{args:?}: {out}{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("SchemaError: ")
                && last.contains(&format!("revision {}", rev + 1))
                && last.contains(&format!(
                    "this binary ({}) is revision {rev}",
                    lettuce_worker::VERSION
                )),
            "{args:?}: {last}"
        );
    }
    assert_eq!(
        function_rows(&client).await,
        functions,
        "no function rewritten"
    );
    let (code, out, _) = run_worker(&["check-config", "--format", "json"], &env);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let schema = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "schema")
        .unwrap();
    assert_eq!(schema["level"], "fail", "{schema}");
}

/// Issue 13, item 1: on dc07b51 one `worker jobs list` ran the whole statement list (18 DDL
/// commands) and logged 14 `NOTICE … already exists` lines at INFO. An event trigger in the test
/// database counts every DDL command: the one-shot commands and a `worker run` over an applied
/// schema run none; a forced `schema apply` (which the trigger does count) logs no NOTICE; a
/// command over an older schema, or a missing database, changes nothing and says what to run.
#[tokio::test(flavor = "multi_thread")]
async fn read_only_commands_run_no_ddl_and_applying_logs_no_notices() {
    let db = TestDb::new().await;
    let env = db.env();
    let (code, out, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE public.ddl_seen (tag text NOT NULL);
             CREATE FUNCTION public.count_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.ddl_seen VALUES (tg_tag); END $$;
             CREATE EVENT TRIGGER count_ddl ON ddl_command_start EXECUTE FUNCTION public.count_ddl();",
        )
        .await
        .unwrap();

    let mut quiet = env.clone();
    quiet.insert("RUST_LOG".into(), "info".into());
    let (code, out, err) = run_worker(&["schema", "apply"], &quiet);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        ddl(&client).await >= 10,
        "the trigger counts the forced apply"
    );
    assert!(
        !err.contains("already exists") && !err.contains("NOTICE"),
        "{err}"
    );

    let (code, out, err) = run_worker(&["enqueue", "diag.noop"], &quiet);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let later = run_worker(
        &["enqueue", "diag.noop", "--run-at", "2999-01-01T00:00:00Z"],
        &quiet,
    )
    .1
    .trim()
    .to_string();
    for args in [
        vec!["jobs", "list"],
        vec!["jobs", "list", "--json"],
        vec!["jobs", "show", &id],
        vec!["jobs", "cancel", &later],
        vec!["jobs", "retry", &later],
    ] {
        let (code, out, err) = run_worker(&args, &quiet);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    run_worker(&["check-config"], &quiet);
    assert_eq!(ddl(&client).await, 0, "one-shot commands run no DDL");

    let mut w = WorkerProcess::start(&["run"], &quiet);
    w.wait_ready(Duration::from_secs(30)).await;
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert_eq!(
        ddl(&client).await,
        0,
        "a boot over the current schema runs no DDL"
    );

    // A schema recorded before revisions existed reads as revision 0: older than the binary.
    client
        .batch_execute("UPDATE lettuce.schema_state SET revision = 0")
        .await
        .unwrap();
    let (code, _, err) = run_worker(&["jobs", "list"], &quiet);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("revision 0, older than this binary's revision")
            && err.contains("worker schema apply"),
        "{err}"
    );
    assert_eq!(ddl(&client).await, 0);

    // A missing database is not created by a command that changes nothing.
    let absent = TestDb::absent();
    let mut env = absent.env();
    env.insert("LETTUCE_DB_CONNECT_TIMEOUT_MS".into(), "2000".into());
    let (code, _, err) = run_worker(&["jobs", "list"], &env);
    assert_eq!(code, 5, "{err}");
    let exists: i64 = xtests::scalar(
        &client,
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}'",
            absent.name
        ),
    )
    .await;
    assert_eq!(exists, 0, "jobs list created no database");
}

/// Issue 13, item 2 ("each command loads only what it uses"): on dc07b51 `enqueue`, `jobs …`
/// and `schema apply` read every secret variable from the store, so a store that is down stopped
/// them (exit 2) even with `DATABASE_URL` in the environment. Now they read only
/// `DATABASE_URL`, and with it given the store gets not one connection.
#[tokio::test(flavor = "multi_thread")]
async fn one_shot_commands_read_only_the_database_secret() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let (code, out, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (store, seen) = counting_listener().await;
    env.insert("LETTUCE_SECRET_STORE".into(), "vault".into());
    env.insert("VAULT_ADDR".into(), store);
    env.insert("VAULT_TOKEN".into(), "cli-token".into());
    env.insert("LETTUCE_SELF_HOSTED".into(), "1".into());
    let (code, out, err) = run(&["enqueue", "diag.noop"], env.clone()).await;
    assert_eq!(code, 0, "{out}{err}");
    for args in [&["jobs", "list"][..], &["schema", "apply"]] {
        let (code, out, err) = run_worker(args, &env);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a one-shot command read the store"
    );
}

/// Issue 13, item 5: on dc07b51 `lettuce_jobs_finished_total` counted attempts under a name
/// that says jobs (a retried `error` looked like a finished job), had no `queue`, and nothing
/// exported final states, the process's CPU, memory and descriptors, or the pools. Now attempts
/// and final states are two families with `queue`, beside `process_*`, pool statistics and the
/// telemetry heartbeat's counters (0 from the start).
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_attempts_and_final_states_apart_with_process_and_pool_figures() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let port = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("LETTUCE_DB_POOL_SIZE".into(), "7".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    let ok = xtests::enqueue_sql(&client, "diag.noop", serde_json::json!({})).await;
    // Fails every attempt; two attempts: one retry, then discarded.
    let failing: i64 = xtests::scalar(
        &client,
        "SELECT lettuce.enqueue('diag.fail', '{\"times\": 9}', max_attempts => 2)",
    )
    .await;
    for (id, want) in [(ok, "completed"), (failing, "discarded")] {
        let (state, ..) = xtests::wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(state, want);
    }
    let text = xtests::eventually(Duration::from_secs(10), "the counts", || async {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (sample(
            &text,
            "lettuce_jobs_final_total{kind=\"diag.fail\",queue=\"default\",state=\"discarded\"}",
        ) == Some(1.0))
        .then_some(text)
    })
    .await;
    for (series, want) in [
        (
            "lettuce_job_attempts_total{kind=\"diag.fail\",queue=\"default\",outcome=\"error\"}",
            2.0,
        ),
        (
            "lettuce_job_attempts_total{kind=\"diag.noop\",queue=\"default\",outcome=\"completed\"}",
            1.0,
        ),
        (
            "lettuce_jobs_final_total{kind=\"diag.noop\",queue=\"default\",state=\"completed\"}",
            1.0,
        ),
        (
            "lettuce_job_attempt_duration_seconds_count{kind=\"diag.fail\",queue=\"default\"}",
            2.0,
        ),
        ("lettuce_db_pool_max_connections{pool=\"jobs\"}", 7.0),
        ("lettuce_db_pool_max_connections{pool=\"probe\"}", 2.0),
        ("lettuce_db_pool_waiting{pool=\"jobs\"}", 0.0),
        ("lettuce_telemetry_heartbeats_total{result=\"sent\"}", 0.0),
        ("lettuce_telemetry_heartbeats_total{result=\"failed\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    assert!(
        !text.contains("lettuce_jobs_finished_total"),
        "the old name is gone"
    );
    let idle = sample(
        &text,
        "lettuce_db_pool_connections{pool=\"jobs\",state=\"idle\"}",
    )
    .unwrap();
    let busy = sample(
        &text,
        "lettuce_db_pool_connections{pool=\"jobs\",state=\"in_use\"}",
    )
    .unwrap();
    assert!((1.0..=7.0).contains(&(idle + busy)), "{idle} + {busy}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&text, "process_start_time_seconds").unwrap();
    assert!(
        (now - 120.0..=now + 1.0).contains(&started),
        "{started} vs {now}"
    );
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&text, "process_open_fds").unwrap() >= 5.0);
    assert!(
        sample(&text, "process_max_fds").unwrap() >= sample(&text, "process_open_fds").unwrap()
    );
    assert!(sample(&text, "process_cpu_seconds_total").unwrap() > 0.0);
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// Issue 19, item 1 (the signal, not yet the cure): a transaction another session holds open in
/// the queue's database shows in `/metrics` as its age, and goes back to 0 when it ends.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_the_oldest_transaction_another_session_holds_open() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let port = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let text = scrape(port).await;
    let age = sample(&text, "lettuce_db_oldest_transaction_age_seconds").expect("the gauge");
    assert!(
        (1.9..60.0).contains(&age),
        "held for 2 s, gauge says {age}:\n{text}"
    );
    assert!(
        sample(&text, "lettuce_db_oldest_xmin_age").is_some(),
        "{text}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let text = scrape(port).await;
    let age = sample(&text, "lettuce_db_oldest_transaction_age_seconds").expect("the gauge");
    assert!(age < 1.0, "after COMMIT the gauge says {age}");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}
