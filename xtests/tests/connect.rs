//! How the worker reaches Postgres (issue 12, items 1, 7 and 8): over a Unix socket whatever
//! `sslmode` says, within its deadline against a server that never answers, at once on errors
//! retrying cannot mend, and never "ready" against a read-only server. Real Postgres, real
//! sockets, the real binary.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::json;
use xtests::services::free_port;
use xtests::{
    TestDb, WorkerProcess, admin_url, connect, enqueue_sql, eventually, run_worker, wait_final,
};

/// The directory of the suite's cluster's Unix socket (`scripts/test` exports it).
fn socket_dir() -> String {
    let dir = std::env::var("XTESTS_SOCKET_DIR").unwrap_or_else(|_| "/var/run/postgresql".into());
    assert!(
        std::path::Path::new(&dir).is_dir(),
        "no Postgres socket directory at {dir}; scripts/test sets XTESTS_SOCKET_DIR"
    );
    dir
}

fn admin_port() -> u16 {
    let cfg = tokio_postgres::Config::from_str(&admin_url()).expect("XTESTS_DATABASE_URL parses");
    cfg.get_ports().first().copied().unwrap_or(5432)
}

fn admin_user() -> String {
    let cfg = tokio_postgres::Config::from_str(&admin_url()).expect("XTESTS_DATABASE_URL parses");
    cfg.get_user().unwrap_or("postgres").to_string()
}

/// `db` over the cluster's Unix socket, with `extra` query parameters.
fn socket_url(db: &str, extra: &str) -> String {
    format!(
        "postgres://{}@/{db}?host={}&port={}{extra}",
        admin_user(),
        socket_dir(),
        admin_port()
    )
}

/// `(status, body)` of a GET; status 0 when nothing answered.
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

/// Runs `worker <args>` in the background thread pool, returning (code, stderr, seconds taken).
async fn run_timed(args: &[&str], env: &HashMap<String, String>) -> (i32, String, f64) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _out, err) = run_worker(&refs, &env);
        (code, err, started.elapsed().as_secs_f64())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_boots_over_a_unix_socket_whatever_sslmode_says() {
    for mode in [
        "",
        "&sslmode=prefer",
        "&sslmode=disable",
        "&sslmode=require",
    ] {
        let db = TestDb::new().await;
        let mut env = db.env();
        env.insert("DATABASE_URL".into(), socket_url(&db.name, mode));
        let mut w = WorkerProcess::start(&["run"], &env);
        w.wait_ready(Duration::from_secs(30)).await;
        let client = db.client().await;
        let id = enqueue_sql(&client, "diag.noop", json!({})).await;
        let (state, ..) = wait_final(&client, id, Duration::from_secs(20)).await;
        assert_eq!(state, "completed", "sslmode {mode:?}");
        w.signal(libc::SIGTERM);
        assert_eq!(
            w.wait_exit(Duration::from_secs(20)).await,
            Some(0),
            "sslmode {mode:?}"
        );

        // A one-shot command over the same socket.
        let (code, out, err) = run_worker(&["jobs", "show", &id.to_string()], &env);
        assert_eq!(code, 0, "jobs show over the socket ({mode:?}): {out}{err}");
        assert!(out.contains("completed"), "{out}");
    }
}

/// A self-signed CA that signed nothing the server presents.
fn stranger_ca() -> tempfile_path::TempPath {
    let path = std::env::temp_dir().join(format!("lettuce-xt-ca-{}.pem", rand::random::<u32>()));
    let key = path.with_extension("key");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=stranger",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&path)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(key);
    tempfile_path::TempPath(path)
}

mod tempfile_path {
    /// A file removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_is_named_and_never_retried() {
    let ca = stranger_ca();
    let db = TestDb::new().await;
    let mut env = db.env();
    let sep = if db.url.contains('?') { '&' } else { '?' };
    env.insert(
        "DATABASE_URL".into(),
        format!(
            "{}{sep}sslmode=verify-full&sslrootcert={}",
            db.url,
            ca.0.display()
        ),
    );
    env.insert("LETTUCE_DB_CONNECT_TIMEOUT_MS".into(), "60000".into());

    // check-config names the cause, not "host, port, user and password".
    let (code, out, err) = run_worker(&["check-config"], &env);
    assert_ne!(code, 0, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.contains("sslrootcert"), "{text}");
    assert!(!text.contains("host, port, user and password"), "{text}");

    // `sslmode=require` with `sslrootcert` verifies the chain too (as libpq): the same stranger
    // CA fails the handshake instead of being skipped (issue 13, item 3).
    let mut require = env.clone();
    require.insert(
        "DATABASE_URL".into(),
        format!(
            "{}{sep}sslmode=require&sslrootcert={}",
            db.url,
            ca.0.display()
        ),
    );
    let (code, err, _) = run_timed(&["jobs", "list"], &require).await;
    assert_eq!(
        code, 5,
        "sslmode=require skipped the sslrootcert check: {err}"
    );
    assert!(err.contains("TLS"), "{err}");

    // A one-shot command and `run` end at once (exit 5), saying it was not retried.
    for args in [&["jobs", "list"][..], &["run"][..]] {
        let (code, err, took) = run_timed(args, &env).await;
        assert_eq!(code, 5, "{args:?}: {err}");
        assert!(
            err.contains("not retried") && err.contains("TLS"),
            "{args:?}: {err}"
        );
        assert!(
            took < 30.0,
            "{args:?} took {took:.1}s: a permanent error was retried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_connect_errors_end_commands_at_once_with_the_servers_message() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let port = admin_port();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://nosuchrole@127.0.0.1:{port}/{}", db.name),
    );
    // The retry budget is a minute: a retried permanent error would take all of it.
    env.insert("LETTUCE_DB_CONNECT_TIMEOUT_MS".into(), "60000".into());
    for args in [
        &["jobs", "list"][..],
        &["enqueue", "diag.noop"][..],
        &["run"][..],
    ] {
        let (code, err, took) = run_timed(args, &env).await;
        assert_eq!(code, 5, "{args:?}: {err}");
        assert!(
            err.contains("role \"nosuchrole\" does not exist"),
            "{args:?}: {err}"
        );
        assert!(err.contains("not retried"), "{args:?}: {err}");
        assert!(!err.contains("retrying"), "{args:?} retried: {err}");
        assert!(
            took < 30.0,
            "{args:?} took {took:.1}s: a permanent error was retried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_connect_errors_are_retried_and_named_until_the_deadline() {
    // A port nothing listens on: connection refused, which can get better.
    let port = free_port();
    let mut env = TestDb::absent().env();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:{port}/x"),
    );
    env.insert("LETTUCE_DB_CONNECT_TIMEOUT_MS".into(), "1500".into());
    let (code, err, _) = run_timed(&["run"], &env).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("retrying"), "no retry was logged: {err}");
    assert!(
        err.contains("connection refused"),
        "the reason is not named: {err}"
    );
    assert!(err.contains("unreachable after"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_cannot_hold_boot_past_its_deadline() {
    // Accepts TCP connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            sockets.push(s);
        }
    });
    let mut env = TestDb::absent().env();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:{port}/x?sslmode=disable"),
    );
    env.insert("LETTUCE_DB_CONNECT_TIMEOUT_MS".into(), "2000".into());
    for args in [&["run"][..], &["jobs", "list"][..]] {
        let mut w = WorkerProcess::start(args, &env);
        // Before the fix the first attempt never returned: the process hung for good.
        let code = w.wait_exit(Duration::from_secs(40)).await;
        let text = w.output().join("\n");
        assert_eq!(code, Some(5), "{args:?}: {text}");
        assert!(text.contains("no answer in time"), "{args:?}: {text}");
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_turns_readyz_unready_until_a_writable_one_answers() {
    let db = TestDb::new().await;
    let mut env = db.env();
    let http = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{http}"));
    let base = format!("http://127.0.0.1:{http}");
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    wait_readyz(&base, 200, "ready", Duration::from_secs(10)).await;

    // "Failover": every session that starts from now on is read-only, and the worker's
    // sessions are cut, so it reconnects to what is now a read-only server.
    let admin = connect(&admin_url()).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            db.name
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .unwrap();
    let body = wait_readyz(&base, 503, "database is read-only", Duration::from_secs(20)).await;
    assert!(!body.contains("25006"), "details belong in the log: {body}");

    let client = db.client().await;
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    let id = enqueue_sql(&client, "diag.noop", json!({})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let state: String = client
        .query_one("SELECT state FROM lettuce.jobs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        state, "available",
        "nothing can run against a read-only server"
    );

    // The writable server is back. The worker's open sessions are still read-only: only
    // dropping them on the read-only error lets it reach the writable one.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            db.name
        ))
        .await
        .unwrap();
    let (state, ..) = wait_final(&client, id, Duration::from_secs(30)).await;
    assert_eq!(state, "completed");
    wait_readyz(&base, 200, "ready", Duration::from_secs(20)).await;
    assert!(
        w.printed("the database is read-only"),
        "the log says why: {}",
        w.output().join("\n")
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_statement_is_cancelled_by_the_statement_timeout_and_the_worker_goes_on() {
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_DB_STATEMENT_TIMEOUT_MS".into(), "1000".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;

    // Hold a lock every claim waits for.
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE lettuce.job_queue IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "a claim cancelled by statement_timeout",
        || async { w.printed("statement timeout").then_some(()) },
    )
    .await;
    tx.rollback().await.unwrap();

    let client = db.client().await;
    let id = enqueue_sql(&client, "diag.noop", json!({})).await;
    let (state, ..) = wait_final(&client, id, Duration::from_secs(20)).await;
    assert_eq!(state, "completed");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}
