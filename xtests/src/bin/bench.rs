//! The benchmark harness (issue 9): throughput, pickup latency and database cost of the worker,
//! measured side by side with the raw-SQL ceiling and graphile-worker on the same Postgres.
//!
//! Release build only, never a test. The documented entry point is `scripts/bench`, which builds
//! the release `worker` binary and runs `bench all --write BENCHMARKS.md`. Each scenario runs on a
//! database of its own (created, `VACUUM ANALYZE` + `CHECKPOINT`, dropped after). Competing
//! measurements run in alternating turns (A B A B …, the order reversed every other round) and
//! the report quotes medians, and ratios as the median of the per-round ratios: the machine is
//! shared, so only figures taken side by side are compared.
//!
//! ```text
//! bench <scenario>… [--rounds N] [--jobs N] [--steady-secs S] [--steady-rounds N]
//!                  [--idle-secs S] [--concurrency C] [--no-peer] [--pooled] [--write FILE]
//! scenarios: all, enqueue, burndown, pickup, steady, xmin, idle, boot, held, warm
//! ```
//!
//! `--pooled` (issue 17) starts a PgBouncer in `transaction` mode (`xtests::pgbouncer`, pool
//! [`xtests::pgbouncer::POOL_SIZE`]) and adds, in the same alternating turns, burn-down with 2
//! worker processes and idle pickup with `DATABASE_URL` through it (LISTEN over
//! `LETTUCE_LISTEN_DATABASE_URL`, direct), beside the direct figures.
//!
//! `held` and `warm` (issue 19, `bench/held.rs`) are not part of `all`: a held xid and a cold
//! start under 2 processes × 16 slots at 600 jobs/s.

#[path = "bench/held.rs"]
mod held;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lettuce_worker::NewJob;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use xtests::{TestDb, admin_url, connect};

/// Options from the command line.
#[derive(Debug, Clone)]
struct Opts {
    scenarios: Vec<String>,
    rounds: usize,
    jobs: i64,
    steady_secs: u64,
    steady_rounds: usize,
    idle_secs: u64,
    concurrency: usize,
    peer: bool,
    /// Also measure through PgBouncer in transaction mode.
    pooled: bool,
    /// Another worker binary (an earlier build) burned down in the same rounds, 1 and 2
    /// processes, so a change is measured against what it replaced in one sitting.
    against: Option<PathBuf>,
    write: Option<PathBuf>,
    args: String,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut o = Opts {
            scenarios: Vec::new(),
            rounds: 3,
            jobs: 100_000,
            steady_secs: 60,
            steady_rounds: 1,
            idle_secs: 30,
            concurrency: 1000,
            peer: true,
            pooled: false,
            against: None,
            write: None,
            // The command line as shown in BENCHMARKS.md, without where it is written.
            args: shown_args(&raw),
        };
        let mut it = raw.into_iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
            match a.as_str() {
                "--rounds" => o.rounds = value("--rounds")?.parse()?,
                "--jobs" => o.jobs = value("--jobs")?.parse()?,
                "--steady-secs" => o.steady_secs = value("--steady-secs")?.parse()?,
                "--steady-rounds" => o.steady_rounds = value("--steady-rounds")?.parse()?,
                "--idle-secs" => o.idle_secs = value("--idle-secs")?.parse()?,
                "--concurrency" => o.concurrency = value("--concurrency")?.parse()?,
                "--no-peer" => o.peer = false,
                "--pooled" => o.pooled = true,
                "--against" => o.against = Some(PathBuf::from(value("--against")?)),
                "--write" => o.write = Some(PathBuf::from(value("--write")?)),
                s if s.starts_with("--") => bail!("unknown option {s}"),
                s => o.scenarios.push(s.to_string()),
            }
        }
        if o.scenarios.is_empty() || o.scenarios.iter().any(|s| s == "all") {
            o.scenarios = [
                "enqueue", "burndown", "pickup", "steady", "xmin", "idle", "boot",
            ]
            .map(String::from)
            .to_vec();
        }
        Ok(o)
    }
}

fn shown_args(raw: &[String]) -> String {
    let mut out = Vec::new();
    let mut skip = false;
    for a in raw {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--write" {
            skip = true;
            continue;
        }
        out.push(a.as_str());
    }
    out.join(" ")
}

/// Results, printed as they come and rendered as Markdown at the end.
#[derive(Default)]
struct Report {
    sections: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, title: &str, body: String) {
        println!("\n## {title}\n\n{body}");
        self.sections.push((title.to_string(), body));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let mut bench = Bench::new(opts.clone())?;
    if opts.pooled {
        bench.bouncer = Some(xtests::pgbouncer::PgBouncer::start().await);
    }
    let mut report = Report::default();
    for s in &opts.scenarios {
        eprintln!("bench: scenario {s}");
        match s.as_str() {
            "enqueue" => bench.enqueue(&mut report).await?,
            "burndown" => bench.burndown(&mut report).await?,
            "pickup" => bench.pickup(&mut report).await?,
            "steady" => bench.steady(&mut report).await?,
            "xmin" => bench.xmin(&mut report).await?,
            "idle" => bench.idle(&mut report).await?,
            "boot" => bench.boot(&mut report).await?,
            "held" => bench.held(&mut report).await?,
            "warm" => bench.warm(&mut report).await?,
            other => bail!("unknown scenario {other}"),
        }
    }
    if let Some(path) = &opts.write {
        let table = bench.render(&report).await?;
        write_between_markers(path, &table)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// The generated part of BENCHMARKS.md sits between these markers; the rest is hand-written.
const BEGIN: &str = "<!-- bench:begin (generated by scripts/bench; edits here are overwritten) -->";
const END: &str = "<!-- bench:end -->";

fn write_between_markers(path: &Path, table: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{BEGIN}\n{table}\n{END}{}",
            &old[..b],
            &old[e + END.len()..]
        ),
        _ => format!("{old}\n{BEGIN}\n{table}\n{END}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

struct Bench {
    opts: Opts,
    worker_bin: PathBuf,
    /// Node 22 and the peer script, when `scripts/bench-setup` installed them.
    peer: Option<(PathBuf, PathBuf)>,
    /// The PgBouncer of `--pooled`.
    bouncer: Option<xtests::pgbouncer::PgBouncer>,
}

/// How a benchmark worker reaches Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    /// `DATABASE_URL` through PgBouncer (transaction mode), LISTEN direct.
    Pooled,
}

/// A fresh database with the worker's schema applied, vacuumed and checkpointed.
async fn fresh_db(with_schema: bool) -> Result<(TestDb, Client)> {
    let db = TestDb::new().await;
    if with_schema {
        let pool = lettuce_worker::db::pool_for_url(&plain(&db.url), 1)?;
        lettuce_worker::db::schema::apply(&pool, &lettuce_worker::db::schema::EMBEDDED, false)
            .await?;
    }
    let client = db.client().await;
    Ok((db, client))
}

/// `VACUUM ANALYZE` and `CHECKPOINT`, so every turn starts from the same state.
async fn settle(c: &Client) -> Result<()> {
    c.batch_execute("VACUUM ANALYZE").await?;
    c.batch_execute("CHECKPOINT").await?;
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn fmt_rate(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 100.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

fn spread(v: &[f64]) -> String {
    v.iter()
        .map(|x| fmt_rate(*x))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A child process with its output read line by line; `ready` fires when a line contains the
/// needle.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    ready: mpsc::UnboundedReceiver<Instant>,
}

impl Proc {
    fn spawn(mut cmd: Command, needle: &'static str) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, ready) = mpsc::unbounded_channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = lines.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains(needle) {
                        let _ = tx.send(Instant::now());
                    }
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Ok(Proc {
            child,
            lines,
            ready,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<Instant> {
        match tokio::time::timeout(limit, self.ready.recv()).await {
            Ok(Some(at)) => Ok(at),
            _ => bail!(
                "process not ready within {limit:?}:\n{}",
                self.lines.lock().unwrap().join("\n")
            ),
        }
    }

    /// SIGTERM, then waits (SIGKILL after 20 s).
    async fn stop(mut self) {
        // SAFETY: kill(2) on a child we spawned; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU ticks (user + system) of a process, from /proc/<pid>/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    get(11) + get(12)
}

/// A `Vm*` line of /proc/<pid>/status, in KiB.
fn vm_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Polls `sql` (a boolean "work left?") every 5 ms until it is false; returns when it was seen.
async fn wait_empty(c: &Client, sql: &str, limit: Duration) -> Result<Instant> {
    let stmt = c.prepare(sql).await?;
    let deadline = Instant::now() + limit;
    loop {
        let left: bool = c.query_one(&stmt, &[]).await?.get(0);
        if !left {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("work not done within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `url` with `sslmode=disable`: the benchmarks compare plain loopback connections.
fn plain(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

/// Work left for our worker: any row in the queue table (finished ones are in the history).
const OURS_LEFT: &str = "SELECT EXISTS (SELECT 1 FROM lettuce.job_queue)";
const GRAPHILE_LEFT: &str = "SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)";

/// Enqueues `n` no-op jobs through the Rust batch API in chunks of `chunk`.
async fn enqueue_rust(c: &Client, n: i64, chunk: i64) -> Result<()> {
    let mut done = 0;
    while done < n {
        let k = chunk.min(n - done);
        let jobs: Vec<NewJob> = (0..k)
            .map(|_| NewJob::new("diag.noop", serde_json::json!({})))
            .collect();
        lettuce_worker::enqueue_many(c, &jobs).await?;
        done += k;
    }
    Ok(())
}

/// The slowest pickup of a round and how long its job's enqueue statement took.
struct Slowest {
    pickup_ms: f64,
    enqueue_ms: f64,
}

/// Latency percentiles in ms: (p50, p99, max).
async fn pickup_percentiles(c: &Client, sql_interval: &str, from: &str) -> Result<(f64, f64, f64)> {
    let r = c
        .query_one(
            &format!(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
                   FROM (SELECT (extract(epoch FROM {sql_interval}) * 1000)::float8 AS ms FROM {from}) s"
            ),
            &[],
        )
        .await?;
    let f = |i: usize| r.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
    Ok((f(0), f(1), f(2)))
}

impl Bench {
    fn new(opts: Opts) -> Result<Bench> {
        let exe = std::env::current_exe()?;
        let worker_bin = std::env::var("WORKER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| exe.parent().unwrap().join("worker"));
        if !worker_bin.is_file() {
            bail!(
                "no worker binary at {}: run `cargo build --release -p lettuce-worker` first (scripts/bench does)",
                worker_bin.display()
            );
        }
        let peer_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/graphile");
        let node = peer_dir.join("node_modules/.bin/node");
        let peer = if opts.peer && node.is_file() {
            Some((node, peer_dir.join("peer.mjs")))
        } else {
            if opts.peer {
                eprintln!(
                    "bench: graphile-worker not installed (run scripts/bench-setup); peer figures are skipped"
                );
            }
            None
        };
        Ok(Bench {
            opts,
            worker_bin,
            peer,
            bouncer: None,
        })
    }

    /// The environment of a benchmark worker: diag jobs, no HTTP, warnings only (plus the
    /// runtime's "worker ready" line), production timings otherwise.
    fn worker_env(&self, db: &TestDb, via: Via) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = db.env().into_iter().collect();
        // Plain TCP on loopback, like the peer (node-postgres does not use TLS by default).
        env.insert("DATABASE_URL".into(), plain(&db.url));
        if via == Via::Pooled {
            let bouncer = self.bouncer.as_ref().expect("--pooled starts PgBouncer");
            env.insert("DATABASE_URL".into(), bouncer.url_for(&db.url));
            env.insert("LETTUCE_LISTEN_DATABASE_URL".into(), plain(&db.url));
            env.insert("LETTUCE_DB_STATEMENT_TIMEOUT_MS".into(), "0".into());
        }
        for k in [
            "LETTUCE_RETRY_BASE_MS",
            "LETTUCE_RETRY_MAX_MS",
            "LETTUCE_POLL_INTERVAL_MS",
            "LETTUCE_SHUTDOWN_GRACE_MS",
        ] {
            env.remove(k);
        }
        env.insert(
            "LETTUCE_QUEUES".into(),
            format!("default={}", self.opts.concurrency),
        );
        env.insert("LETTUCE_TELEMETRY_ENABLED".into(), "false".into());
        env.insert(
            "RUST_LOG".into(),
            "warn,lettuce_worker::runtime=info".into(),
        );
        env.into_iter().collect()
    }

    fn spawn_worker(&self, db: &TestDb, via: Via) -> Result<Proc> {
        self.spawn_worker_with(db, via, &[])
    }

    /// [`Bench::spawn_worker`] with `extra` variables on top of [`Bench::worker_env`].
    fn spawn_worker_with(&self, db: &TestDb, via: Via, extra: &[(&str, &str)]) -> Result<Proc> {
        self.spawn_bin(&self.worker_bin, db, via, extra)
    }

    /// [`Bench::spawn_worker_with`] running `bin` instead of this build's worker.
    fn spawn_bin(&self, bin: &Path, db: &TestDb, via: Via, extra: &[(&str, &str)]) -> Result<Proc> {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .env_clear()
            .envs(self.worker_env(db, via))
            .envs(extra.iter().copied());
        for keep in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        Proc::spawn(cmd, "worker ready")
    }

    fn node(&self, args: &[&str]) -> Option<Command> {
        let (node, script) = self.peer.as_ref()?;
        let mut cmd = Command::new(node);
        cmd.arg(script).args(args);
        Some(cmd)
    }

    async fn graphile_prepare(&self, db: &TestDb) -> Result<()> {
        let out = self
            .node(&["migrate", &db.url])
            .unwrap()
            .output()
            .context("node migrate")?;
        if !out.status.success() {
            bail!(
                "graphile-worker migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Enqueues through graphile-worker's addJobs; returns the jobs/s its script measured.
    async fn graphile_enqueue(&self, db: &TestDb, n: i64) -> Result<f64> {
        let out = self
            .node(&["enqueue", &db.url, &n.to_string()])
            .unwrap()
            .output()
            .context("node enqueue")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ms: f64 = text
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .with_context(|| {
                format!(
                    "graphile enqueue printed {text:?} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        Ok(n as f64 / (ms / 1000.0))
    }

    // ----- enqueue -------------------------------------------------------------------------

    async fn enqueue(&self, report: &mut Report) -> Result<()> {
        let n = self.opts.jobs;
        let mut sql = Vec::new();
        let mut sql_many = Vec::new();
        let mut insert = Vec::new();
        let mut rust = Vec::new();
        let mut peer = Vec::new();
        // One statement each, timed on a fresh database: per-row lettuce.enqueue, the set-based
        // lettuce.enqueue_many and, as their limit, a plain INSERT ... SELECT of the same rows.
        async fn one_statement(sql: &str, n: i64) -> Result<f64> {
            let (_db, c) = fresh_db(true).await?;
            settle(&c).await?;
            let start = Instant::now();
            c.execute(sql, &[&n]).await?;
            Ok(n as f64 / start.elapsed().as_secs_f64())
        }
        for round in 0..self.opts.rounds {
            let mut turns = vec!["sql", "sql_many", "insert", "rust", "graphile"];
            if round % 2 == 1 {
                turns.reverse();
            }
            for t in turns {
                match t {
                    "sql" => sql.push(
                        one_statement(
                            "SELECT count(lettuce.enqueue('diag.noop')) FROM generate_series(1, $1::int8)",
                            n,
                        )
                        .await?,
                    ),
                    "sql_many" => sql_many.push(
                        one_statement(
                            "SELECT count(*) FROM lettuce.enqueue_many('diag.noop',
                                 (SELECT array_agg('{}'::jsonb) FROM generate_series(1, $1::int8)))",
                            n,
                        )
                        .await?,
                    ),
                    "insert" => insert.push(
                        one_statement(
                            "INSERT INTO lettuce.job_queue (kind) SELECT 'diag.noop' FROM generate_series(1, $1::int8)",
                            n,
                        )
                        .await?,
                    ),
                    "rust" => {
                        let (_db, c) = fresh_db(true).await?;
                        settle(&c).await?;
                        let start = Instant::now();
                        enqueue_rust(&c, n, 5000).await?;
                        rust.push(n as f64 / start.elapsed().as_secs_f64());
                    }
                    _ if self.peer.is_some() => {
                        let (db, c) = fresh_db(false).await?;
                        self.graphile_prepare(&db).await?;
                        settle(&c).await?;
                        peer.push(self.graphile_enqueue(&db, n).await?);
                    }
                    _ => {}
                }
            }
        }
        let mut body = format!(
            "{n} jobs, {} rounds, jobs/s (median; per round)\n\n| how | jobs/s | rounds |\n|---|---:|---|\n",
            self.opts.rounds
        );
        writeln!(
            body,
            "| `SELECT lettuce.enqueue('diag.noop') FROM generate_series(1, {n})` (one statement) | {} | {} |",
            fmt_rate(median(&sql)),
            spread(&sql)
        )?;
        writeln!(
            body,
            "| `SELECT lettuce.enqueue_many('diag.noop', <array of {n} payloads>)` | {} | {} |",
            fmt_rate(median(&sql_many)),
            spread(&sql_many)
        )?;
        writeln!(
            body,
            "| plain `INSERT INTO lettuce.job_queue (kind) SELECT … FROM generate_series(1, {n})`, the limit | {} | {} |",
            fmt_rate(median(&insert)),
            spread(&insert)
        )?;
        writeln!(
            body,
            "| `lettuce_worker::enqueue_many` (INSERT … unnest), chunks of 5,000 | {} | {} |",
            fmt_rate(median(&rust)),
            spread(&rust)
        )?;
        if !peer.is_empty() {
            writeln!(
                body,
                "| graphile-worker `addJobs`, batches of 1,000 | {} | {} |",
                fmt_rate(median(&peer)),
                spread(&peer)
            )?;
        }
        writeln!(
            body,
            "\n÷ plain INSERT … SELECT: per-row `lettuce.enqueue` **{:.2}**, `lettuce.enqueue_many` **{:.2}** (target ≥ 0.50)",
            median(&sql) / median(&insert),
            median(&sql_many) / median(&insert)
        )?;
        report.add("Enqueue", body);
        Ok(())
    }

    // ----- burn-down -----------------------------------------------------------------------

    /// Our worker: n jobs queued, then `procs` worker processes. Returns (jobs/s timed from the
    /// first "ready" to empty, jobs/s from the database's own timestamps, peak RSS KiB of the
    /// first worker).
    /// `keep_completed` false: the workers run with `LETTUCE_JOB_RETENTION=completed=0` (delete
    /// on success; the database-timed figure is then the wall one).
    async fn burn_ours(
        &self,
        procs: usize,
        via: Via,
        keep_completed: bool,
    ) -> Result<(f64, f64, u64)> {
        self.burn_bin(&self.worker_bin, procs, via, keep_completed)
            .await
    }

    /// [`Bench::burn_ours`] with the worker binary `bin`.
    async fn burn_bin(
        &self,
        bin: &Path,
        procs: usize,
        via: Via,
        keep_completed: bool,
    ) -> Result<(f64, f64, u64)> {
        let n = self.opts.jobs;
        let (db, c) = fresh_db(true).await?;
        enqueue_rust(&c, n, 5000).await?;
        settle(&c).await?;
        let mut workers = Vec::new();
        let extra: &[(&str, &str)] = if keep_completed {
            &[]
        } else {
            &[("LETTUCE_JOB_RETENTION", "completed=0")]
        };
        for _ in 0..procs {
            workers.push(self.spawn_bin(bin, &db, via, extra)?);
        }
        let mut first_ready: Option<Instant> = None;
        for w in &mut workers {
            let at = w.wait_ready(Duration::from_secs(30)).await?;
            first_ready = Some(first_ready.map_or(at, |f: Instant| f.min(at)));
        }
        let done = wait_empty(&c, OURS_LEFT, Duration::from_secs(600)).await?;
        let wall = done.duration_since(first_ready.unwrap()).as_secs_f64();
        let hwm = vm_kib(workers[0].pid(), "VmHWM:");
        for w in workers {
            w.stop().await;
        }
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'completed')
                          + (SELECT coalesce(sum(n), 0)::int8 FROM lettuce.job_counts),
                        extract(epoch FROM max(finished_at) - min(attempted_at))::float8
                   FROM lettuce.jobs",
                &[],
            )
            .await?;
        let completed: i64 = r.get(0);
        if completed != n {
            bail!("burn-down finished with {completed} of {n} completed");
        }
        let db_secs: f64 = r.get::<_, Option<f64>>(1).unwrap_or(wall);
        Ok((n as f64 / wall, n as f64 / db_secs, hwm))
    }

    /// graphile-worker in its batched mode: n jobs queued, then one runner.
    async fn burn_graphile(&self) -> Result<f64> {
        let n = self.opts.jobs;
        let (db, c) = fresh_db(false).await?;
        self.graphile_prepare(&db).await?;
        self.graphile_enqueue(&db, n).await?;
        settle(&c).await?;
        let mut p = Proc::spawn(self.node(&["run", &db.url]).unwrap(), "ready")?;
        let ready = p.wait_ready(Duration::from_secs(30)).await?;
        let done = wait_empty(&c, GRAPHILE_LEFT, Duration::from_secs(600)).await?;
        p.stop().await;
        Ok(n as f64 / done.duration_since(ready).as_secs_f64())
    }

    /// The raw-SQL ceiling: 2 connections loop a batched claim-and-delete of 1,000 rows on a
    /// table shaped like ours with a partial index on runnable rows. No worker.
    async fn burn_raw_delete(&self) -> Result<f64> {
        let n = self.opts.jobs;
        let (db, c) = fresh_db(false).await?;
        c.batch_execute(
            "CREATE TABLE q (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 kind text NOT NULL, queue text NOT NULL DEFAULT 'default', payload jsonb NOT NULL DEFAULT '{}',
                 priority smallint NOT NULL DEFAULT 0, state text NOT NULL DEFAULT 'available',
                 run_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX q_fetch ON q (queue, priority, run_at, id) WHERE state = 'available';",
        )
        .await?;
        c.execute(
            "INSERT INTO q (kind) SELECT 'noop' FROM generate_series(1, $1::int8)",
            &[&n],
        )
        .await?;
        settle(&c).await?;
        let sql = "WITH c AS (SELECT id FROM q WHERE state = 'available' AND queue = 'default' AND run_at <= now()
                               ORDER BY priority, run_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED)
                   DELETE FROM q USING c WHERE q.id = c.id";
        let clients = [db.client().await, db.client().await];
        let start = Instant::now();
        let loops = clients.iter().map(|cl| async move {
            let stmt = cl.prepare(sql).await?;
            loop {
                if cl.execute(&stmt, &[]).await? == 0 {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        });
        for r in futures_join(loops).await {
            r?;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    /// Our own statements without the runtime: 2 connections loop our claim (1,000 rows) and
    /// our fenced completion on `lettuce.jobs`, which keeps finished rows.
    async fn burn_raw_ours(&self, keep_completed: bool) -> Result<f64> {
        let n = self.opts.jobs;
        let (db, c) = fresh_db(true).await?;
        enqueue_rust(&c, n, 5000).await?;
        settle(&c).await?;
        let pool = lettuce_worker::db::pool_for_url(&plain(&db.url), 2)?;
        let kinds = vec!["diag.noop".to_string()];
        let start = Instant::now();
        let loops = (0..2).map(|i| {
            let pool = pool.clone();
            let kinds = kinds.clone();
            async move {
                let me = format!("raw-{i}");
                loop {
                    let jobs = lettuce_worker::db::jobs::claim_batch(
                        &pool,
                        "default",
                        &kinds,
                        1000,
                        &me,
                        Duration::from_secs(60),
                        None,
                    )
                    .await?;
                    if jobs.is_empty() {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let batch: Vec<lettuce_worker::db::jobs::Completion> = jobs
                        .iter()
                        .map(|j| lettuce_worker::db::jobs::Completion {
                            id: j.id,
                            attempt: j.attempt,
                            transition: lettuce_worker::job::Transition::complete(),
                            queue: j.queue.clone(),
                            span: None,
                        })
                        .collect();
                    lettuce_worker::db::jobs::attempt::complete_batch(
                        &pool,
                        &me,
                        keep_completed,
                        &batch,
                        &[],
                    )
                    .await?;
                }
            }
        });
        for r in futures_join(loops).await {
            r?;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    async fn burndown(&self, report: &mut Report) -> Result<()> {
        let mut figures: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut db_timed: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut hwm = Vec::new();
        for round in 0..self.opts.rounds {
            let mut turns = vec![
                "raw-delete",
                "ours-1",
                "graphile",
                "raw-ours",
                "ours-2",
                "ours-4",
                "drop-2",
                "raw-drop",
            ];
            if self.bouncer.is_some() {
                turns.push("pooled-2");
            }
            if self.opts.against.is_some() {
                turns.extend(["against-1", "against-2"]);
            }
            if round % 2 == 1 {
                turns.reverse();
            }
            for t in turns {
                eprintln!("bench: burn-down round {} {t}", round + 1);
                let v = match t {
                    "raw-delete" => self.burn_raw_delete().await?,
                    "raw-ours" => self.burn_raw_ours(true).await?,
                    "raw-drop" => self.burn_raw_ours(false).await?,
                    "drop-2" => self.burn_ours(2, Via::Direct, false).await?.0,
                    "graphile" if self.peer.is_some() => self.burn_graphile().await?,
                    "graphile" => continue,
                    "pooled-2" => self.burn_ours(2, Via::Pooled, true).await?.0,
                    "against-1" | "against-2" => {
                        let bin = self.opts.against.as_deref().expect("--against");
                        let procs = if t == "against-1" { 1 } else { 2 };
                        self.burn_bin(bin, procs, Via::Direct, true).await?.0
                    }
                    _ => {
                        let procs: usize = t[5..].parse()?;
                        let (wall, dbt, h) = self.burn_ours(procs, Via::Direct, true).await?;
                        db_timed.entry(t).or_default().push(dbt);
                        if procs == 1 {
                            hwm.push(h as f64);
                        }
                        wall
                    }
                };
                eprintln!("bench:   {} jobs/s", fmt_rate(v));
                figures.entry(t).or_default().push(v);
            }
        }
        let mut best_ours = Vec::new();
        for i in 0..self.opts.rounds {
            best_ours.push(
                ["ours-1", "ours-2", "ours-4"]
                    .iter()
                    .filter_map(|k| figures.get(k).and_then(|v| v.get(i)))
                    .cloned()
                    .fold(f64::NAN, f64::max),
            );
        }
        figures.insert("ours-best", best_ours);
        let ratio = |a: &str, b: &str| -> f64 {
            let (Some(x), Some(y)) = (figures.get(a), figures.get(b)) else {
                return f64::NAN;
            };
            median(&x.iter().zip(y).map(|(x, y)| x / y).collect::<Vec<_>>())
        };
        let mut body = format!(
            "{} `diag.noop` jobs queued first, then worked off; {} rounds in alternating order. Ours: \
             `LETTUCE_QUEUES=default={}`, timed from the first \"worker ready\" to an empty queue \
             (polled every 5 ms; graphile-worker the same way from its \"ready\").\n\n\
             | who | jobs/s (median) | rounds | ours ÷ this (median of per-round ratios) |\n|---|---:|---|---:|\n",
            self.opts.jobs, self.opts.rounds, self.opts.concurrency
        );
        let label = |t: &str| {
            match t {
            "ours-1" => "lettuce, 1 worker process".to_string(),
            "ours-2" => "lettuce, 2 worker processes".to_string(),
            "ours-4" => "lettuce, 4 worker processes".to_string(),
            "ours-best" => "lettuce, best of 1/2/4 per round".to_string(),
            "pooled-2" => format!(
                "lettuce, 2 worker processes through PgBouncer 1.18 (transaction mode, pool {})",
                xtests::pgbouncer::POOL_SIZE
            ),
            "raw-delete" => {
                "raw SQL ceiling: 2 connections × `DELETE … LIMIT 1000 SKIP LOCKED`".to_string()
            }
            "raw-ours" => {
                "our claim + complete SQL, 1,000 per batch, 2 connections, no runtime".to_string()
            }
            "drop-2" => {
                "lettuce, 2 worker processes, `LETTUCE_JOB_RETENTION=completed=0` (delete on success)"
                    .to_string()
            }
            "raw-drop" => {
                "our claim + complete SQL with completed=0, 1,000 per batch, 2 connections, no runtime"
                    .to_string()
            }
            "graphile" => {
                "graphile-worker 0.18 batched (concurrency 50, local queue 500)".to_string()
            }
            "against-1" | "against-2" => format!(
                "`--against` worker ({}), {} process(es)",
                self.opts.against.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                &t[8..]
            ),
            _ => t.to_string(),
        }
        };
        for t in [
            "ours-1",
            "ours-2",
            "ours-4",
            "ours-best",
            "pooled-2",
            "drop-2",
            "raw-delete",
            "raw-ours",
            "raw-drop",
            "graphile",
            "against-1",
            "against-2",
        ] {
            let Some(v) = figures.get(t) else { continue };
            let r = if t.starts_with("ours") || t.starts_with("pooled") || t == "drop-2" {
                String::new()
            } else {
                format!("{:.2}", ratio("ours-best", t))
            };
            writeln!(
                body,
                "| {} | {} | {} | {} |",
                label(t),
                fmt_rate(median(v)),
                spread(v),
                r
            )?;
        }
        writeln!(
            body,
            "\nOurs timed by the database (`max(finished_at) - min(attempted_at)`): {}",
            ["ours-1", "ours-2", "ours-4"]
                .iter()
                .filter_map(|k| db_timed
                    .get(k)
                    .map(|v| format!("{k} {}", fmt_rate(median(v)))))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            body,
            "\nRSS under load (VmHWM of the 1-process worker after the burn-down): {} MiB",
            mib(median(&hwm) as u64)
        )?;
        let targets = format!(
            "\nTargets: ours ÷ graphile-worker ≥ 1.5 → **{:.2}**; ours ÷ raw-SQL ceiling ≥ 0.60 → **{:.2}**",
            ratio("ours-best", "graphile"),
            ratio("ours-best", "raw-delete")
        );
        body.push_str(&targets);
        body.push('\n');
        if figures.contains_key("against-1") {
            writeln!(
                body,
                "\nThis build ÷ the `--against` build, same rounds: 1 process **{:.2}**, 2 processes **{:.2}**",
                ratio("ours-1", "against-1"),
                ratio("ours-2", "against-2")
            )?;
        }
        if figures.contains_key("drop-2") {
            writeln!(
                body,
                "\nDelete on success (`completed=0`), 2 processes: ÷ raw-SQL ceiling **{:.2}** (default retention, 2 processes: {:.2}); its SQL alone ÷ ceiling {:.2} (default retention's SQL alone: {:.2})",
                ratio("drop-2", "raw-delete"),
                ratio("ours-2", "raw-delete"),
                ratio("raw-drop", "raw-delete"),
                ratio("raw-ours", "raw-delete")
            )?;
        }
        if figures.contains_key("pooled-2") {
            writeln!(
                body,
                "\nThrough PgBouncer (2 processes): ÷ raw-SQL ceiling **{:.2}** (direct 2 processes {:.2}); ÷ direct 2 processes {:.2}",
                ratio("pooled-2", "raw-delete"),
                ratio("ours-2", "raw-delete"),
                ratio("pooled-2", "ours-2")
            )?;
        }
        report.add("Burn-down", body);
        Ok(())
    }

    // ----- idle pickup latency -------------------------------------------------------------

    /// One job at a time into an idle worker, 200 times, 15–35 ms apart; (p50, p99, max) of
    /// run_at → claim, and the slowest pickup with how long its own enqueue statement took.
    async fn pickup_ours(&self, via: Via) -> Result<((f64, f64, f64), Slowest)> {
        let (db, c) = fresh_db(true).await?;
        settle(&c).await?;
        let mut w = self.spawn_worker(&db, via)?;
        w.wait_ready(Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stmt = c.prepare("SELECT lettuce.enqueue('diag.noop')").await?;
        // How long each enqueue statement took (its commit included), by job id: `run_at` is
        // the enqueuing transaction's start, so a slow commit (a WAL flush stuck behind a
        // checkpoint, say) counts as pickup latency although no worker could see the job yet.
        let mut enqueue_ms: HashMap<i64, f64> = HashMap::new();
        for _ in 0..200 {
            let sent = Instant::now();
            let id: i64 = c.query_one(&stmt, &[]).await?.get(0);
            enqueue_ms.insert(id, sent.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(15 + rand::random::<u64>() % 20)).await;
        }
        wait_empty(&c, OURS_LEFT, Duration::from_secs(30)).await?;
        w.stop().await;
        let worst = c
            .query_one(
                "SELECT id, (extract(epoch FROM attempted_at - run_at) * 1000)::float8
                   FROM lettuce.jobs ORDER BY attempted_at - run_at DESC LIMIT 1",
                &[],
            )
            .await?;
        let slowest = Slowest {
            pickup_ms: worst.get(1),
            enqueue_ms: enqueue_ms
                .get(&worst.get::<_, i64>(0))
                .copied()
                .unwrap_or(f64::NAN),
        };
        Ok((
            pickup_percentiles(&c, "attempted_at - run_at", "lettuce.jobs").await?,
            slowest,
        ))
    }

    async fn pickup_graphile(&self) -> Result<(f64, f64, f64)> {
        let (db, c) = fresh_db(false).await?;
        self.graphile_prepare(&db).await?;
        // graphile-worker deletes finished jobs, so record each claim (locked_at is set by its
        // claim statement, like our attempted_at) in a side table.
        c.batch_execute(
            "CREATE TABLE bench_pickup (run_at timestamptz, locked_at timestamptz);
             CREATE FUNCTION bench_pickup() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.locked_at IS NOT NULL AND OLD.locked_at IS NULL THEN
                     INSERT INTO bench_pickup VALUES (NEW.run_at, NEW.locked_at);
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER bench_pickup AFTER UPDATE ON graphile_worker._private_jobs
                 FOR EACH ROW EXECUTE FUNCTION bench_pickup();",
        )
        .await?;
        settle(&c).await?;
        let mut p = Proc::spawn(self.node(&["run", &db.url]).unwrap(), "ready")?;
        p.wait_ready(Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stmt = c
            .prepare("SELECT graphile_worker.add_job('noop', '{}'::json)")
            .await?;
        for _ in 0..200 {
            c.query_one(&stmt, &[]).await?;
            tokio::time::sleep(Duration::from_millis(15 + rand::random::<u64>() % 20)).await;
        }
        wait_empty(&c, GRAPHILE_LEFT, Duration::from_secs(30)).await?;
        p.stop().await;
        let got: i64 = c
            .query_one("SELECT count(*) FROM bench_pickup", &[])
            .await?
            .get(0);
        if got != 200 {
            bail!("graphile pickup recorded {got} of 200 claims");
        }
        pickup_percentiles(&c, "locked_at - run_at", "bench_pickup").await
    }

    async fn pickup(&self, report: &mut Report) -> Result<()> {
        let mut ours: Vec<(f64, f64, f64)> = Vec::new();
        let mut peer: Vec<(f64, f64, f64)> = Vec::new();
        let mut pooled: Vec<(f64, f64, f64)> = Vec::new();
        let mut slowest: Vec<Slowest> = Vec::new();
        for round in 0..self.opts.rounds {
            let mut turns = vec!["ours", "graphile"];
            if self.bouncer.is_some() {
                turns.push("pooled");
            }
            if round % 2 == 1 {
                turns.reverse();
            }
            for t in turns {
                match t {
                    "ours" => {
                        let (p, s) = self.pickup_ours(Via::Direct).await?;
                        ours.push(p);
                        slowest.push(s);
                    }
                    "pooled" => pooled.push(self.pickup_ours(Via::Pooled).await?.0),
                    _ if self.peer.is_some() => peer.push(self.pickup_graphile().await?),
                    _ => {}
                }
            }
        }
        let col = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            median(&v.iter().map(f).collect::<Vec<_>>())
        };
        let mut body = format!(
            "One job every 15–35 ms into an idle worker, 200 per round, {} rounds; ms from `run_at` \
             to the claim (ours `attempted_at`, graphile-worker `locked_at`, recorded by a trigger). \
             Medians of the per-round percentiles.\n\n| who | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|\n",
            self.opts.rounds
        );
        for (name, v) in [
            ("lettuce", &ours),
            (
                "lettuce through PgBouncer (transaction mode; LISTEN direct)",
                &pooled,
            ),
            ("graphile-worker batched", &peer),
        ] {
            if v.is_empty() {
                continue;
            }
            writeln!(
                body,
                "| {name} | {:.2} | {:.2} | {:.2} |",
                col(&v[..], |x| x.0),
                col(&v[..], |x| x.1),
                col(&v[..], |x| x.2)
            )?;
        }
        writeln!(
            body,
            "\nSlowest lettuce pickup per round, with how long its own `lettuce.enqueue` statement \
             took (commit included; `run_at` is that transaction's start, so this much of the pickup \
             passed before any worker could see the job): {}",
            slowest
                .iter()
                .map(|s| format!("{:.2} ms (enqueue {:.2} ms)", s.pickup_ms, s.enqueue_ms))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            body,
            "\nPer round (p50/p99): lettuce {}; through PgBouncer {}; graphile-worker {}",
            ours.iter()
                .map(|x| format!("{:.2}/{:.2}", x.0, x.1))
                .collect::<Vec<_>>()
                .join(", "),
            pooled
                .iter()
                .map(|x| format!("{:.2}/{:.2}", x.0, x.1))
                .collect::<Vec<_>>()
                .join(", "),
            peer.iter()
                .map(|x| format!("{:.2}/{:.2}", x.0, x.1))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        report.add("Idle pickup latency", body);
        Ok(())
    }

    // ----- steady state ---------------------------------------------------------------------

    /// Offers `rate` jobs/s for `secs` to one worker (optionally while another connection holds
    /// a snapshot open), then lets it drain.
    async fn steady_once(&self, rate: u64, hold_xmin: bool) -> Result<Steady> {
        let secs = self.opts.steady_secs;
        let (db, c) = fresh_db(true).await?;
        settle(&c).await?;
        let holder = if hold_xmin {
            let h = db.client().await;
            h.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;")
                .await?;
            Some(h)
        } else {
            None
        };
        let mut w = self.spawn_worker(&db, Via::Direct)?;
        w.wait_ready(Duration::from_secs(30)).await?;
        let lsn0: String = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let producer = db.client().await;
        // Every 10 ms, one statement with whatever is due by the clock: when a statement is slow
        // (a loaded machine) the next one carries more, so the offered rate holds.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = Instant::now();
        let mut offered = 0i64;
        loop {
            tick.tick().await;
            let elapsed = start.elapsed();
            if elapsed >= Duration::from_secs(secs) {
                break;
            }
            let due = (rate as f64 * elapsed.as_secs_f64()) as i64 - offered;
            if due > 0 {
                enqueue_rust(&producer, due, due).await?;
                offered += due;
            }
        }
        let window = start.elapsed().as_secs_f64();
        let completed_in_window: i64 = c
            .query_one(
                "SELECT count(*) FROM lettuce.job_history WHERE state = 'completed'",
                &[],
            )
            .await?
            .get(0);
        wait_empty(&c, OURS_LEFT, Duration::from_secs(120)).await?;
        let lsn1: String = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let rss = vm_kib(w.pid(), "VmRSS:");
        w.stop().await;
        drop(holder);
        let (p50, p99, max) =
            pickup_percentiles(&c, "attempted_at - run_at", "lettuce.jobs").await?;
        // Let the backends flush their table statistics.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = c
            .query_one(
                "SELECT (SELECT sum(n_dead_tup)::int8 FROM pg_stat_user_tables
                          WHERE relid IN ('lettuce.job_queue'::regclass, 'lettuce.job_history'::regclass)),
                        pg_total_relation_size('lettuce.job_queue') + pg_total_relation_size('lettuce.job_history'),
                        pg_indexes_size('lettuce.job_queue') + pg_indexes_size('lettuce.job_history'),
                        pg_wal_lsn_diff($2::text::pg_lsn, $1::text::pg_lsn)::float8",
                &[&lsn0, &lsn1],
            )
            .await?;
        Ok(Steady {
            offered: offered as f64 / window,
            completed: completed_in_window as f64 / window,
            p50,
            p99,
            max,
            dead: r.get(0),
            total_mib: r.get::<_, i64>(1) as f64 / 1048576.0,
            index_mib: r.get::<_, i64>(2) as f64 / 1048576.0,
            wal_per_job: r.get::<_, f64>(3) / offered as f64,
            rss_kib: rss,
        })
    }

    fn steady_table(rows: &[(String, Vec<Steady>)]) -> Result<String> {
        let mut body = String::from(
            "| run | offered/s | completed/s | pickup p50 ms | p99 ms | max ms | dead tuples at end | table+indexes MiB (indexes) | WAL bytes/job | worker RSS MiB |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for (name, v) in rows {
            let m = |f: fn(&Steady) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
            writeln!(
                body,
                "| {name} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.1} ({:.1}) | {:.0} | {} |",
                fmt_rate(m(|s| s.offered)),
                fmt_rate(m(|s| s.completed)),
                m(|s| s.p50),
                m(|s| s.p99),
                m(|s| s.max),
                m(|s| s.dead as f64),
                m(|s| s.total_mib),
                m(|s| s.index_mib),
                m(|s| s.wal_per_job),
                mib(m(|s| s.rss_kib as f64) as u64),
            )?;
        }
        Ok(body)
    }

    async fn steady(&self, report: &mut Report) -> Result<()> {
        let mut rows = Vec::new();
        for rate in [1000u64, 5000, 10000] {
            let mut v = Vec::new();
            for _ in 0..self.opts.steady_rounds {
                eprintln!("bench: steady {rate}/s");
                v.push(self.steady_once(rate, false).await?);
            }
            rows.push((format!("{rate}/s"), v));
        }
        let body = format!(
            "One worker process (`default={}`), a producer offering a fixed rate for {} s in ticks of \
             10 ms through `enqueue_many`, then drained; {} round(s). Pickup = `attempted_at - run_at`. \
             WAL is the whole cluster's `pg_current_wal_lsn()` difference (the server is shared, so an \
             upper bound).\n\n{}",
            self.opts.concurrency,
            self.opts.steady_secs,
            self.opts.steady_rounds,
            Self::steady_table(&rows)?
        );
        report.add("Steady state", body);
        Ok(())
    }

    /// Runs `run(false)` (clean) and `run(true)` (with a held transaction) in alternating order,
    /// `--steady-rounds` times; returns (clean runs, held runs).
    async fn clean_and_held<T>(
        &self,
        name: &str,
        mut run: impl AsyncFnMut(bool) -> Result<T>,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let (mut clean, mut held) = (Vec::new(), Vec::new());
        for round in 0..self.opts.steady_rounds.max(1) {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for h in order {
                eprintln!("bench: {name} held={h}");
                let r = run(h).await?;
                if h { held.push(r) } else { clean.push(r) }
            }
        }
        Ok((clean, held))
    }

    async fn xmin(&self, report: &mut Report) -> Result<()> {
        let (clean, held) = self
            .clean_and_held("xmin", async |h| self.steady_once(1000, h).await)
            .await?;
        let ratio = median(
            &clean
                .iter()
                .zip(&held)
                .map(|(c, h)| h.completed / c.completed)
                .collect::<Vec<_>>(),
        );
        let body = format!(
            "1,000 jobs/s for {} s, clean and while another connection to the same database holds \
             `BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;` open for the whole run (alternating).\n\n{}\n\
             held ÷ clean completed/s: **{:.2}** (target ≥ 0.80)\n",
            self.opts.steady_secs,
            Self::steady_table(&[("clean".into(), clean), ("held xmin".into(), held)])?,
            ratio
        );
        report.add("Held xmin", body);
        Ok(())
    }

    // ----- idle cost and boot ---------------------------------------------------------------

    async fn idle(&self, report: &mut Report) -> Result<()> {
        let (db, c) = fresh_db(true).await?;
        settle(&c).await?;
        let mut w = self.spawn_worker(&db, Via::Direct)?;
        w.wait_ready(Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pss = c
            .query_one(
                "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'pg_stat_statements'",
                &[],
            )
            .await?
            .get::<_, bool>(0);
        let x0 = xacts(&c, &db.name).await?;
        let t0 = cpu_ticks(w.pid());
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(self.opts.idle_secs)).await;
        // Our own statistics flush only after a second; wait, then read.
        let t1 = cpu_ticks(w.pid());
        let secs = start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let x1 = xacts(&c, &db.name).await?;
        let rss = vm_kib(w.pid(), "VmRSS:");
        w.stop().await;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // Subtract this harness's own reading transaction.
        let per_s = (x1 - x0 - 1).max(0) as f64 / secs;
        let cpu = (t1 - t0) as f64 / hz / secs * 100.0;
        let body = format!(
            "One worker with production timings (poll 1 s, lease 60 s), no jobs, {:.0} s.\n\n\
             | measure | value | target |\n|---|---:|---|\n\
             | transactions/s sent (`pg_stat_database` xact delta) | {:.2} | ≤ 2 |\n\
             | CPU % (utime+stime from /proc) | {:.2} | ≈ 0 |\n\
             | RSS idle MiB (VmRSS) | {} | ≤ 40 |\n\n\
             pg_stat_statements installed: {}\n",
            secs,
            per_s,
            cpu,
            mib(rss),
            if pss { "yes" } else { "no (xact deltas used)" }
        );
        report.add("Idle cost", body);
        Ok(())
    }

    async fn boot(&self, report: &mut Report) -> Result<()> {
        let (db, c) = fresh_db(true).await?;
        settle(&c).await?;
        let mut ms = Vec::new();
        for _ in 0..self.opts.rounds.max(5) {
            let spawned = Instant::now();
            let mut w = self.spawn_worker(&db, Via::Direct)?;
            let ready = w.wait_ready(Duration::from_secs(30)).await?;
            ms.push(ready.duration_since(spawned).as_secs_f64() * 1000.0);
            w.stop().await;
        }
        let body = format!(
            "Spawn of the release binary to its \"worker ready\" line, schema already applied, {} runs.\n\n\
             | median ms | max ms | runs | target |\n|---:|---:|---|---|\n| {:.0} | {:.0} | {} | ≤ 300 |\n",
            ms.len(),
            median(&ms),
            ms.iter().cloned().fold(0.0, f64::max),
            spread(&ms)
        );
        report.add("Boot to ready", body);
        Ok(())
    }

    async fn render(&self, report: &Report) -> Result<String> {
        let c = connect(&admin_url()).await;
        let version: String = c.query_one("SHOW server_version", &[]).await?.get(0);
        let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")?
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?;
        let provenance = format!(
            "_Measured by `scripts/bench {}` on {date}: {} cores ({cpu}), {:.1} GiB memory, \
             PostgreSQL {version} (default settings, shared with other work), release build._\n",
            self.opts.args,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            mem_kib as f64 / 1048576.0,
        );
        // Keep the sections of earlier runs that this run did not measure, in their order, so a
        // partial run updates only its own sections (each says how and when it was measured).
        let old = self
            .opts
            .write
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| {
                let b = s.find(BEGIN)? + BEGIN.len();
                let e = s.find(END)?;
                (e > b).then(|| s[b..e].to_string())
            })
            .unwrap_or_default();
        let mut sections: Vec<(String, String)> = old
            .split("\n### ")
            .skip(1)
            .filter_map(|chunk| {
                let (title, body) = chunk.split_once('\n')?;
                Some((title.trim().to_string(), body.trim().to_string()))
            })
            .collect();
        for (title, body) in &report.sections {
            let fresh = format!("{}\n\n{provenance}", body.trim());
            match sections.iter_mut().find(|(t, _)| t == title) {
                Some(slot) => slot.1 = fresh,
                None => sections.push((title.clone(), fresh)),
            }
        }
        let mut out = String::new();
        for (title, body) in &sections {
            write!(out, "\n### {title}\n\n{body}\n")?;
        }
        Ok(out)
    }
}

/// Committed plus rolled-back transactions of one database so far.
async fn xacts(c: &Client, name: &str) -> Result<i64> {
    Ok(c.query_one(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
        &[&name],
    )
    .await?
    .get(0))
}

/// Per-run figures of one steady-state run.
struct Steady {
    offered: f64,
    completed: f64,
    p50: f64,
    p99: f64,
    max: f64,
    dead: i64,
    total_mib: f64,
    index_mib: f64,
    wal_per_job: f64,
    rss_kib: u64,
}

/// Runs futures concurrently on this task and returns their results in order.
async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<_>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}
