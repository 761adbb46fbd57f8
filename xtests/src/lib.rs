//! Shared harness for the integration tests: a throwaway database per test, worker processes,
//! and deadline-based waiting (never fixed sleeps as assertions).
//!
//! Postgres comes from `XTESTS_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! which `scripts/test` sets after making sure a server answers.

pub mod chaos;
pub mod fake_github;
pub mod fake_gitlab;
pub mod git_server;
pub mod pgbouncer;
pub mod s3;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

pub mod services;

/// The admin URL of the test server.
pub fn admin_url() -> String {
    std::env::var("XTESTS_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Connects with a background driver task.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to test Postgres ({e}); is it running? scripts/test starts it")
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own for one test, dropped (with FORCE) when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn new() -> TestDb {
        let name = format!(
            "lettuce_xt_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = with_dbname(&admin_url(), &name);
        TestDb { name, url }
    }

    /// A URL naming a database that does not exist yet (the worker creates it); dropped too.
    pub fn absent() -> TestDb {
        let name = format!(
            "lettuce_xt_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let url = with_dbname(&admin_url(), &name);
        TestDb { name, url }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The environment a worker needs to use this database, plus fast test timings.
    pub fn env(&self) -> HashMap<String, String> {
        let mut env = HashMap::new();
        env.insert("DATABASE_URL".into(), self.url.clone());
        env.insert("LETTUCE_DIAG_JOBS".into(), "true".into());
        env.insert("LETTUCE_HTTP_ADDR".into(), "off".into());
        env.insert("LETTUCE_DB_CONNECT_TIMEOUT_MS".into(), "10000".into());
        env.insert("LETTUCE_RETRY_BASE_MS".into(), "20".into());
        env.insert("LETTUCE_RETRY_MAX_MS".into(), "200".into());
        env.insert("LETTUCE_POLL_INTERVAL_MS".into(), "200".into());
        env.insert("LETTUCE_SHUTDOWN_GRACE_MS".into(), "2000".into());
        env.insert(
            "CODEWAZE_DATA_DIR".into(),
            std::env::temp_dir()
                .join(format!("{}-data", self.name))
                .display()
                .to_string(),
        );
        env
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A fresh runtime on a plain thread: Drop may run inside a runtime that cannot block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Replaces the database name in a `postgres://` URL.
pub fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let root = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// Polls `check` until it returns `Some` or `limit` passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Path of a `worker` binary built from THIS checkout.
///
/// `WORKER_BIN` wins. Otherwise `<target>/debug/worker` is used when it is newer than every
/// file it is built from (`worker/src`, `worker/build.rs`, `worker/Cargo.toml`, `schema/`):
/// `scripts/test` builds it right before the tests. When it is older (not rebuilt since an
/// edit), the harness builds one into a target directory of this checkout's own. The product
/// carries nothing for this. Two checkouts that share one target directory should set
/// `WORKER_BIN`: the newest build there may be the other checkout's.
pub fn worker_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WORKER_BIN") {
        return PathBuf::from(p);
    }
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(find_or_build_worker).clone()
}

/// The newest modification time of the files under `path` (itself when a file).
fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

fn find_or_build_worker() -> PathBuf {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker");
    let source = source.canonicalize().unwrap_or(source);
    let root = source.parent().expect("workspace root").to_path_buf();
    let inputs = [
        source.join("src"),
        source.join("build.rs"),
        source.join("Cargo.toml"),
        root.join("schema"),
    ];
    let newest_input = inputs.iter().filter_map(|p| newest_mtime(p)).max();
    let fresh = |p: &std::path::Path| {
        let built = std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((built, newest_input), (Some(b), Some(i)) if b >= i)
    };
    let exe = std::env::current_exe().expect("test binary path");
    // <build dir>/<profile>/deps/<test> → <build dir>/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("profile dir")
        .to_path_buf();
    let mut candidates = vec![profile_dir.join("worker")];
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        candidates.insert(
            0,
            PathBuf::from(t)
                .join(profile_dir.file_name().unwrap())
                .join("worker"),
        );
    }
    if let Some(found) = candidates.iter().find(|c| fresh(c)) {
        return found.clone();
    }
    let own_target = std::env::temp_dir().join(format!(
        "lettuce-bin-{:016x}",
        source
            .display()
            .to_string()
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64)
                .wrapping_mul(0x100000001b3))
    ));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "lettuce-worker", "--bin", "worker"])
        .current_dir(&root)
        .env_remove("CARGO_BUILD_BUILD_DIR")
        .env("CARGO_TARGET_DIR", &own_target)
        .status()
        .expect("run cargo build for the worker binary");
    assert!(status.success(), "building the worker binary failed");
    own_target
        .join(profile_dir.file_name().unwrap())
        .join("worker")
}

/// A `worker` child process with its stderr captured line by line.
pub struct WorkerProcess {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl WorkerProcess {
    /// Starts `worker <args>` with exactly `env` (plus PATH and HOME).
    pub fn start(args: &[&str], env: &HashMap<String, String>) -> WorkerProcess {
        WorkerProcess::start_program(&worker_bin(), args, env)
    }

    /// Starts another program built on the worker library (an embedder's binary) the same way.
    pub fn start_program(
        program: &std::path::Path,
        args: &[&str],
        env: &HashMap<String, String>,
    ) -> WorkerProcess {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for keep in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        if !env.contains_key("RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("spawn worker");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        WorkerProcess { child, lines }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn printed(&self, needle: &str) -> bool {
        self.output().iter().any(|l| l.contains(needle))
    }

    /// Waits until the worker logs that it is ready.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.printed("worker ready") {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "worker exited with {status} before ready:\n{}",
                    self.output().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "worker not ready after {limit:?}:\n{}",
                    self.output().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit and returns the exit code (None when killed by a signal).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait worker") {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "worker did not exit within {limit:?}:\n{}",
                    self.output().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `worker <args>` to completion; returns (exit code, stdout, stderr).
pub fn run_worker(args: &[&str], env: &HashMap<String, String>) -> (i32, String, String) {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args).env_clear().envs(env).stdin(Stdio::null());
    for keep in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    let out = cmd.output().expect("run worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Counts jobs by state.
pub async fn states(client: &Client) -> HashMap<String, i64> {
    client
        .query(
            "SELECT state, count(*) FROM lettuce.jobs GROUP BY state",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A worker inside the test process, started through `lettuce_worker::Worker` exactly as
/// `worker run` starts one (minus signals).
pub struct InProcessWorker {
    worker: lettuce_worker::WorkerHandle,
    /// The runtime's counters and the heartbeat's trigger.
    pub handle: lettuce_worker::runtime::RuntimeHandle,
}

impl InProcessWorker {
    /// Boots with the given environment and waits until it is ready.
    pub async fn start(env: &HashMap<String, String>) -> InProcessWorker {
        init_logging();
        let config = lettuce_worker::config::Config::load(env).expect("test config loads");
        let facts = lettuce_worker::boot::gates(&config, time::OffsetDateTime::now_utc())
            .expect("gates pass");
        let registry = lettuce_worker::handlers::registry_for(&config);
        let worker = tokio::time::timeout(
            Duration::from_secs(30),
            lettuce_worker::Worker::new(config, facts, registry).start(),
        )
        .await
        .expect("worker ready within 30s")
        .expect("worker booted");
        InProcessWorker {
            handle: worker.runtime().clone(),
            worker,
        }
    }

    /// The worker's own report (readiness, counters, periodic tasks).
    pub fn status(&self) -> lettuce_worker::WorkerStatus {
        self.worker.status()
    }

    /// Triggers shutdown and waits for the drain to finish.
    pub async fn stop(self) -> Result<(), String> {
        self.worker.shutdown().await.map_err(|e| e.to_string())
    }
}

/// Enqueues one job through the SQL function and returns its id.
pub async fn enqueue_sql(client: &Client, kind: &str, payload: serde_json::Value) -> i64 {
    client
        .query_one("SELECT lettuce.enqueue($1, $2)", &[&kind, &payload])
        .await
        .unwrap()
        .get(0)
}

/// Waits until job `id` reaches a final state and returns (state, attempt, errors).
pub async fn wait_final(
    client: &Client,
    id: i64,
    limit: Duration,
) -> (String, i32, serde_json::Value) {
    eventually(limit, &format!("job {id} to finish"), || async {
        let r = client
            .query_one(
                "SELECT state, attempt, errors FROM lettuce.jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let state: String = r.get(0);
        matches!(state.as_str(), "completed" | "discarded" | "cancelled")
            .then(|| (state, r.get(1), r.get(2)))
    })
    .await
}

/// Sends the library's logs to the test's captured output (RUST_LOG, default info).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// The first column of every row of a query without parameters.
pub async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &Client,
    sql: &str,
) -> Vec<T> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The single value of a one-row, one-column query without parameters (counts, mostly).
pub async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &Client,
    sql: &str,
) -> T {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
