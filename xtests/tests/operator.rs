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
        let (code, out, err) = run(args, env.clone()).await;
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
        let (code, out, err) = run(args, env.clone()).await;
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
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || async { reqwest::get(&url).await.unwrap().text().await.unwrap() };
    let text = scrape().await;
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
            (sample(&scrape().await, "lettuce_running_cancelled_total") == Some(1.0)).then_some(())
        },
    )
    .await;
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}
