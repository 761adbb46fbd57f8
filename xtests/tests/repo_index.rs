//! `repo.index` (issue 16) end to end: real Postgres, the fake GitHub minting installation
//! tokens, and a real git smart-HTTP server (`git http-backend`) that serves a repository only
//! to a live installation token of an installation that can see it. The worker runs in process
//! (or as the binary where its output is scanned); artifacts land in the local store under
//! `CODEWAZE_DATA_DIR/artifacts`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xtests::fake_github::{AppKey, FakeGithub};
use xtests::git_server::{Down, GitServer, WorkRepo};
use xtests::{InProcessWorker, TestDb, eventually, scalar, wait_final};

const APP_ID: u64 = 616161;
const INSTALLATION: u64 = 7;

const LIB_RS: &str = "pub struct Point {
    x: i32,
}

impl Point {
    pub fn new() -> Point {
        Point { x: 0 }
    }
}

pub const LIMIT: u32 = 3;

pub fn area() -> i32 {
    1
}
";

const APP_PY: &str = "MAX_SIZE = 10


class Greeter:
    def hello(self):
        return \"hi\"


def main():
    pass
";

struct Rig {
    _db: TestDb,
    env: HashMap<String, String>,
    fake: FakeGithub,
    git: GitServer,
    client: tokio_postgres::Client,
}

impl Rig {
    async fn new() -> Rig {
        let key = AppKey::generate();
        let fake = FakeGithub::start(APP_ID, &key, false).await;
        fake.add_installation(INSTALLATION, "acme");
        let git = GitServer::start().await;
        git.require_checked("x-access-token", Arc::new(fake.token_checker()));
        let db = TestDb::new().await;
        let mut env = db.env();
        for (k, v) in [
            ("GITHUB_APP_ID", APP_ID.to_string()),
            ("GITHUB_APP_NAME", "lettuce-test".into()),
            ("GITHUB_APP_PRIVATE_KEY", key.base64_pem()),
            ("GITHUB_APP_CLIENT_ID", "Iv1.0123456789abcdef".into()),
            ("GITHUB_APP_CLIENT_SECRET", "ghcs-client-secret".into()),
            ("GITHUB_API_URL", fake.api_url()),
            ("GITHUB_SERVER_URL", git.base()),
            ("LETTUCE_QUEUES", "default=1".into()),
        ] {
            env.insert(k.into(), v);
        }
        let client = db.client().await;
        Rig {
            _db: db,
            env,
            fake,
            git,
            client,
        }
    }

    /// A served repository `acme/<name>` the installation can see, with a Rust and a Python
    /// file and a README; returns it and its first commit.
    fn repo(&self, full_name: &str) -> (WorkRepo, String) {
        self.fake.add_repo(INSTALLATION, full_name, "main");
        let work = self.git.create_repo(full_name);
        work.write("src/lib.rs", LIB_RS);
        work.write("app.py", APP_PY);
        work.write("README.md", "# widgets\n");
        let commit = work.commit("first");
        (work, commit)
    }

    fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.env["CODEWAZE_DATA_DIR"])
    }

    async fn enqueue(&self, full_name: &str) -> i64 {
        self.client
            .query_one(
                "SELECT lettuce.enqueue('repo.index', $1)",
                &[&json!({"provider": "github", "repo": full_name, "installation_id": INSTALLATION})],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn index(&self, full_name: &str) -> (String, i32, Value, i64) {
        let id = self.enqueue(full_name).await;
        let (state, attempt, errors) = wait_final(&self.client, id, Duration::from_secs(60)).await;
        (state, attempt, errors, id)
    }

    /// The artifact keys of job `id`.
    async fn artifact_keys(&self, id: i64) -> Vec<String> {
        self.client
            .query(
                "SELECT key FROM lettuce.job_artifacts WHERE job_id = $1 ORDER BY key",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    fn artifact(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.data_dir().join("artifacts").join(key))
            .unwrap_or_else(|e| panic!("artifact {key}: {e}"))
    }

    fn manifest(&self, id: i64, attempt: i32) -> Value {
        serde_json::from_slice(
            &self.artifact(&format!("jobs/{id}/attempt-{attempt}/manifest.json")),
        )
        .unwrap()
    }

    /// A cancelled attempt of job `id` left no artifact (file or row) and no repository update.
    async fn assert_nothing_written(&self, id: i64) {
        assert!(self.artifact_keys(id).await.is_empty());
        assert!(
            !self
                .data_dir()
                .join("artifacts")
                .join(format!("jobs/{id}"))
                .exists(),
            "no artifact was written"
        );
        let indexed: Option<String> = scalar(
            &self.client,
            "SELECT last_indexed_commit FROM lettuce.repositories WHERE full_name = 'acme/widgets'",
        )
        .await;
        assert_eq!(indexed, None);
    }

    fn lines(&self, key: &str) -> Vec<Value> {
        let mut text = String::new();
        zstd::Decoder::new(&self.artifact(key)[..])
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn symbols_of(symbols: &[Value], path: &str) -> Vec<(String, String, u64, u64, Option<String>)> {
    symbols
        .iter()
        .filter(|s| s["path"] == path)
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                s["line"].as_u64().unwrap(),
                s["column"].as_u64().unwrap(),
                s["enclosing"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn sym(
    name: &str,
    kind: &str,
    line: u64,
    column: u64,
    enclosing: Option<&str>,
) -> (String, String, u64, u64, Option<String>) {
    (
        name.into(),
        kind.into(),
        line,
        column,
        enclosing.map(str::to_string),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn first_index_writes_three_artifacts_and_records_the_repository() {
    let rig = Rig::new().await;
    let (_work, commit) = rig.repo("acme/widgets");
    let worker = InProcessWorker::start(&rig.env).await;
    let (state, attempt, errors, id) = rig.index("acme/widgets").await;
    assert_eq!((state.as_str(), attempt), ("completed", 1), "{errors}");

    let keys = rig.artifact_keys(id).await;
    let prefix = format!("jobs/{id}/attempt-1/");
    assert_eq!(
        keys,
        [
            format!("{prefix}files.jsonl.zst"),
            format!("{prefix}manifest.json"),
            format!("{prefix}symbols.jsonl.zst"),
        ]
    );
    let m = rig.manifest(id, 1);
    assert_eq!(m["repository"], "acme/widgets");
    assert_eq!(m["provider"], "github");
    assert_eq!(m["host"], "github.com");
    assert_eq!(m["commit"], commit.as_str());
    assert_eq!(m["ref"], "refs/heads/main");
    assert_eq!(m["previous_commit"], Value::Null);
    assert_eq!(m["totals"]["files"], 3);
    assert_eq!(m["totals"]["parsed"], 2);
    assert_eq!(m["totals"]["carried"], 0);
    assert_eq!(m["totals"]["symbols"], 8);
    assert_eq!(m["languages"]["rust"]["symbols"], 4, "{m}");
    assert_eq!(m["languages"]["python"]["symbols"], 4, "{m}");
    assert_eq!(m["artifacts"]["files"], format!("{prefix}files.jsonl.zst"));
    assert_eq!(
        m["artifacts"]["symbols"],
        format!("{prefix}symbols.jsonl.zst")
    );
    assert_eq!(m["indexer"]["name"], "lettuce-worker");

    let files = rig.lines(&format!("{prefix}files.jsonl.zst"));
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["README.md", "app.py", "src/lib.rs"]);
    let readme = &files[0];
    assert_eq!(readme["parsed"], false);
    assert_eq!(files[2]["language"], "rust");
    assert_eq!(files[2]["lines"], 15);
    assert_eq!(files[2]["size"], LIB_RS.len());

    let symbols = rig.lines(&format!("{prefix}symbols.jsonl.zst"));
    assert_eq!(
        symbols_of(&symbols, "src/lib.rs"),
        [
            sym("Point", "type", 1, 12, None),
            sym("new", "method", 6, 12, Some("Point")),
            sym("LIMIT", "constant", 11, 11, None),
            sym("area", "function", 13, 8, None),
        ]
    );
    assert_eq!(
        symbols_of(&symbols, "app.py"),
        [
            sym("MAX_SIZE", "constant", 1, 1, None),
            sym("Greeter", "class", 4, 7, None),
            sym("hello", "method", 5, 9, Some("Greeter")),
            sym("main", "function", 9, 5, None),
        ]
    );

    let row = rig
        .client
        .query_one(
            "SELECT last_indexed_commit, last_indexed_ref, last_indexed_at IS NOT NULL, manifest_key,
                    file_count, symbol_count, installation_id, default_branch
               FROM lettuce.repositories WHERE full_name = 'acme/widgets'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some(commit.as_str())
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("refs/heads/main")
    );
    assert!(row.get::<_, bool>(2));
    assert_eq!(
        row.get::<_, Option<String>>(3),
        Some(format!("{prefix}manifest.json"))
    );
    assert_eq!(row.get::<_, Option<i64>>(4), Some(3));
    assert_eq!(row.get::<_, Option<i64>>(5), Some(8));
    assert_eq!(row.get::<_, Option<i64>>(6), Some(INSTALLATION as i64));
    assert_eq!(row.get::<_, Option<String>>(7).as_deref(), Some("main"));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_file_commit_reparses_one_file_and_carries_the_rest() {
    let rig = Rig::new().await;
    let (work, first) = rig.repo("acme/widgets");
    let worker = InProcessWorker::start(&rig.env).await;
    let (state, _, errors, _) = rig.index("acme/widgets").await;
    assert_eq!(state, "completed", "{errors}");

    work.write("app.py", format!("{APP_PY}\n\ndef bye():\n    pass\n"));
    let second = work.commit("add bye");
    let (state, attempt, errors, id) = rig.index("acme/widgets").await;
    assert_eq!(state, "completed", "{errors}");
    let m = rig.manifest(id, attempt);
    assert_eq!(m["commit"], second.as_str());
    assert_eq!(m["previous_commit"], first.as_str(), "{m}");
    assert_eq!(m["totals"]["files"], 3);
    assert_eq!(
        m["totals"]["carried"], 2,
        "every file but the changed one is carried: {m}"
    );
    let prefix = format!("jobs/{id}/attempt-{attempt}/");
    let files = rig.lines(&format!("{prefix}files.jsonl.zst"));
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["README.md", "app.py", "src/lib.rs"]);
    let symbols = rig.lines(&format!("{prefix}symbols.jsonl.zst"));
    let py = symbols_of(&symbols, "app.py");
    assert_eq!(
        py.last().unwrap(),
        &sym("bye", "function", 13, 5, None),
        "{py:?}"
    );
    assert_eq!(py.len(), 5);
    assert_eq!(
        symbols_of(&symbols, "src/lib.rs").len(),
        4,
        "the carried file keeps its symbols"
    );
    let recorded: Option<String> = scalar(
        &rig.client,
        "SELECT last_indexed_commit FROM lettuce.repositories WHERE full_name = 'acme/widgets'",
    )
    .await;
    assert_eq!(recorded.as_deref(), Some(second.as_str()));
    worker.stop().await.unwrap();
}

/// Self-hosted variables for a license allowing `repos` repositories.
fn license_env(repos: u32) -> HashMap<String, String> {
    use lettuce_worker::license::{self, Claims};
    let dir = std::env::temp_dir().join(format!(
        "lettuce-repoindex-lic-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key = license::generate_signing_key();
    std::fs::write(
        dir.join("public.pem"),
        license::public_key_pem(&key.verifying_key()),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        sub: "acme".into(),
        jti: format!("lic-{:08x}", rand::random::<u32>()),
        iat: Some(now - 86_400),
        exp: now + 86_400 * 365,
        nbf: None,
        seats: None,
        repos: Some(repos),
        telemetry_required: true,
    };
    let token = license::sign(&claims, &key);
    let mut env = HashMap::new();
    for (k, v) in [
        ("LETTUCE_SELF_HOSTED", "true".to_string()),
        ("LETTUCE_LICENSE_KEY", token),
        (
            "LETTUCE_LICENSE_PUBLIC_KEY",
            dir.join("public.pem").display().to_string(),
        ),
        (
            "LETTUCE_LICENSE_CACHE_PATH",
            dir.join("license.json").display().to_string(),
        ),
        (
            "LETTUCE_TELEMETRY_URL",
            format!(
                "http://127.0.0.1:{}/v1/heartbeat",
                xtests::services::free_port()
            ),
        ),
    ] {
        env.insert(k.into(), v);
    }
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_repos_cap_fails_permanently_with_license_limit_reached() {
    let mut rig = Rig::new().await;
    rig.env.extend(license_env(1));
    let (_work, _) = rig.repo("acme/widgets");
    let (_other, _) = rig.repo("acme/gadgets");
    let worker = InProcessWorker::start(&rig.env).await;
    // The first repository fits the cap of one.
    let (state, _, errors, _) = rig.index("acme/widgets").await;
    assert_eq!(state, "completed", "{errors}");
    let requests = rig.git.requests();
    // A second one does not: permanent, on the first attempt, before any fetch.
    let (state, attempt, errors, id) = rig.index("acme/gadgets").await;
    assert_eq!((state.as_str(), attempt), ("discarded", 1), "{errors}");
    let text = errors[0]["error"].as_str().unwrap();
    assert!(text.starts_with("License limit reached: "), "{text}");
    assert_eq!(rig.git.requests(), requests, "nothing was fetched");
    assert!(rig.artifact_keys(id).await.is_empty());
    let n: i64 = scalar(&rig.client, "SELECT count(*) FROM lettuce.repositories").await;
    assert_eq!(n, 1);
    let stamped: bool = scalar(
        &rig.client,
        "SELECT license_limit_reached_at IS NOT NULL FROM lettuce.instance",
    )
    .await;
    assert!(stamped);
    // The recorded repository is re-indexed within the cap.
    let (state, _, errors, _) = rig.index("acme/widgets").await;
    assert_eq!(state, "completed", "{errors}");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_server_that_is_down_is_retried_and_indexes_once_back() {
    let rig = Rig::new().await;
    let (_work, commit) = rig.repo("acme/widgets");
    rig.git.set_down(Down::Refuse).await;
    let worker = InProcessWorker::start(&rig.env).await;
    let id = rig.enqueue("acme/widgets").await;
    let errors: Value = eventually(Duration::from_secs(30), "a failed attempt", || async {
        let e: Value = scalar(
            &rig.client,
            &format!("SELECT errors FROM lettuce.jobs WHERE id = {id}"),
        )
        .await;
        (e.as_array().is_some_and(|a| a.len() >= 2)).then_some(e)
    })
    .await;
    let first = errors[0]["error"].as_str().unwrap();
    assert!(
        first.contains("acme/widgets") && first.contains("unreachable"),
        "{first}"
    );
    let state: String = scalar(
        &rig.client,
        &format!("SELECT state FROM lettuce.jobs WHERE id = {id}"),
    )
    .await;
    assert!(
        matches!(state.as_str(), "retryable" | "running" | "available"),
        "{state}"
    );
    rig.git.set_up().await;
    let (state, _, errors) = wait_final(&rig.client, id, Duration::from_secs(60)).await;
    assert_eq!(state, "completed", "{errors}");
    let recorded: Option<String> = scalar(
        &rig.client,
        "SELECT last_indexed_commit FROM lettuce.repositories WHERE full_name = 'acme/widgets'",
    )
    .await;
    assert_eq!(recorded.as_deref(), Some(commit.as_str()));
    worker.stop().await.unwrap();
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live git processes whose working directory is under `root` (the scratch's `git-home`).
fn git_procs_under(root: &Path) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()))
                .flatten()
                .is_some_and(|st| !matches!(st, 'Z' | 'X'))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_never_reaches_argv_logs_or_artifacts() {
    let mut rig = Rig::new().await;
    rig.env
        .insert("RUST_LOG".into(), "info,lettuce_worker=debug".into());
    let (_work, _) = rig.repo("acme/widgets");
    // Slow every git request so the fetch's processes live long enough to be read.
    rig.git.set_delay(Duration::from_millis(400));
    let mut w = xtests::WorkerProcess::start(&["run"], &rig.env);
    w.wait_ready(Duration::from_secs(30)).await;
    let id = rig.enqueue("acme/widgets").await;
    let data = rig.data_dir();
    let mut scanned = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state: String = scalar(
            &rig.client,
            &format!("SELECT state FROM lettuce.jobs WHERE id = {id}"),
        )
        .await;
        if matches!(state.as_str(), "completed" | "discarded" | "cancelled") {
            break;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish");
        let tokens: Vec<String> = rig
            .fake
            .secrets_seen()
            .into_iter()
            .filter(|s| s.starts_with("ghs_"))
            .collect();
        let ours = git_procs_under(&data);
        for pid in all_pids() {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            for t in &tokens {
                assert!(
                    !text.contains(t.as_str()),
                    "pid {pid} argv has the token: {text}"
                );
            }
            if ours.contains(&pid) {
                scanned += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(scanned > 0, "the scan saw the fetch's git processes");
    let (state, _, errors) = wait_final(&rig.client, id, Duration::from_secs(5)).await;
    assert_eq!(state, "completed", "{errors}");
    let tokens: Vec<String> = rig
        .fake
        .secrets_seen()
        .into_iter()
        .filter(|s| s.starts_with("ghs_"))
        .collect();
    assert!(!tokens.is_empty(), "a token was minted");
    let mut bytes = Vec::new();
    for key in rig.artifact_keys(id).await {
        let raw = rig.artifact(&key);
        if key.ends_with(".zst") {
            zstd::Decoder::new(&raw[..])
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
        } else {
            bytes.extend_from_slice(&raw);
        }
    }
    let artifacts = String::from_utf8_lossy(&bytes);
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    let log = w.output().join("\n");
    assert!(log.contains("repository indexed"), "the log was captured");
    for t in &tokens {
        assert!(!artifacts.contains(t.as_str()), "an artifact has the token");
        assert!(!log.contains(t.as_str()), "the log has the token");
        assert!(!errors.to_string().contains(t.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_mid_fetch_frees_the_slot_within_a_second_and_writes_nothing() {
    let rig = Rig::new().await;
    let (_work, _) = rig.repo("acme/widgets");
    let worker = InProcessWorker::start(&rig.env).await;
    rig.git.set_delay(Duration::from_secs(20));
    let id = rig.enqueue("acme/widgets").await;
    let data = rig.data_dir();
    eventually(Duration::from_secs(20), "git to be fetching", || async {
        (rig.git.requests() > 0 && !git_procs_under(&data).is_empty()).then_some(())
    })
    .await;
    let cancelled_at = Instant::now();
    lettuce_worker::db::jobs::cancel(&rig.client, id, "cancelled by the test")
        .await
        .unwrap();
    eventually(Duration::from_secs(2), "git to be killed", || async {
        git_procs_under(&data).is_empty().then_some(())
    })
    .await;
    let killed = cancelled_at.elapsed();
    assert!(
        killed < Duration::from_secs(1),
        "git killed after {killed:?}"
    );
    // The only slot is free again.
    rig.git.set_delay(Duration::ZERO);
    let next = xtests::enqueue_sql(&rig.client, "diag.noop", json!({})).await;
    let (state, _, _) = wait_final(&rig.client, next, Duration::from_secs(2)).await;
    assert_eq!(state, "completed", "the slot is free");
    let state: String = scalar(
        &rig.client,
        &format!("SELECT state FROM lettuce.jobs WHERE id = {id}"),
    )
    .await;
    assert_eq!(state, "cancelled");
    rig.assert_nothing_written(id).await;
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uninstalled_app_an_unseen_repository_and_a_bad_payload_are_permanent() {
    let rig = Rig::new().await;
    let (_work, _) = rig.repo("acme/widgets");
    let worker = InProcessWorker::start(&rig.env).await;
    // A repository the installation cannot see: git refuses the token; one attempt.
    let (state, attempt, errors, _) = rig.index("acme/ghost").await;
    assert_eq!((state.as_str(), attempt), ("discarded", 1), "{errors}");
    let text = errors[0]["error"].as_str().unwrap();
    assert!(text.starts_with("repository acme/ghost: "), "{text}");
    // The App uninstalled: permanent. The worker still holds the installation's cached token
    // (minted above), which git now sees refused; a fresh worker would be told by the token
    // endpoint that the installation is gone.
    rig.fake.remove_installation(INSTALLATION);
    let (state, attempt, errors, _) = rig.index("acme/widgets").await;
    assert_eq!((state.as_str(), attempt), ("discarded", 1), "{errors}");
    let text = errors[0]["error"].as_str().unwrap();
    assert!(
        text.contains(&format!("installation {INSTALLATION} not found"))
            || text.starts_with("repository acme/widgets: the git remote refused the credentials"),
        "{text}"
    );
    // Unknown fields are refused.
    let id: i64 = rig
        .client
        .query_one(
            "SELECT lettuce.enqueue('repo.index', $1)",
            &[&json!({"provider": "github", "repo": "acme/widgets", "installation_id": 7, "branch": "main"})],
        )
        .await
        .unwrap()
        .get(0);
    let (state, _, errors) = wait_final(&rig.client, id, Duration::from_secs(20)).await;
    assert_eq!(state, "discarded");
    assert!(errors.to_string().contains("unknown field"), "{errors}");
    for t in rig.fake.secrets_seen() {
        let all: String = scalar(
            &rig.client,
            "SELECT coalesce(string_agg(errors::text, ' '), '') FROM lettuce.jobs",
        )
        .await;
        assert!(!all.contains(t.as_str()), "an error has a credential");
    }
    worker.stop().await.unwrap();
}

/// Issue 15's end-to-end promise: a burst of 20 pushes (20 `github.event` deliveries) leads to
/// at most two `repo.index` runs, and the last commit is the one indexed.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_pushes_make_at_most_two_index_runs_and_the_last_commit_is_indexed() {
    let mut rig = Rig::new().await;
    rig.env.insert("LETTUCE_QUEUES".into(), "default=4".into());
    let (work, _) = rig.repo("acme/widgets");
    let worker = InProcessWorker::start(&rig.env).await;
    let (state, _, errors, _) = rig.index("acme/widgets").await;
    assert_eq!(state, "completed", "{errors}");
    let before: i64 = scalar(
        &rig.client,
        "SELECT count(*) FROM lettuce.jobs WHERE kind = 'repo.index'",
    )
    .await;

    // Twenty commits pushed one after another, then their twenty deliveries in a burst; a slow
    // git server keeps the first index running while the deliveries are handled.
    let mut last = String::new();
    for n in 0..20 {
        work.write("app.py", format!("{APP_PY}\n\ndef push_{n}():\n    pass\n"));
        last = work.commit(&format!("push {n}"));
    }
    rig.git.set_delay(Duration::from_millis(300));
    let deliveries: Vec<Value> = (0..20)
        .map(|n| {
            json!({
                "delivery_id": format!("push-{n}"),
                "event": "push",
                "payload": {
                    "ref": "refs/heads/main",
                    "after": last,
                    "repository": {"full_name": "acme/widgets", "default_branch": "main"},
                    "installation": {"id": INSTALLATION}
                }
            })
        })
        .collect();
    rig.client
        .execute(
            "SELECT lettuce.enqueue('github.event', d) FROM unnest($1::jsonb[]) AS d",
            &[&deliveries],
        )
        .await
        .unwrap();
    let indexed = eventually(
        Duration::from_secs(90),
        "the last commit indexed",
        || async {
            let waiting: i64 = scalar(
                &rig.client,
                "SELECT count(*) FROM lettuce.jobs WHERE kind IN ('github.event', 'repo.index')
               AND state NOT IN ('completed', 'discarded', 'cancelled')",
            )
            .await;
            let commit: Option<String> = scalar(
            &rig.client,
            "SELECT last_indexed_commit FROM lettuce.repositories WHERE full_name = 'acme/widgets'",
        )
        .await;
            (waiting == 0 && commit.as_deref() == Some(last.as_str())).then_some(commit)
        },
    )
    .await;
    assert_eq!(indexed.as_deref(), Some(last.as_str()));
    let runs: i64 = scalar(
        &rig.client,
        "SELECT count(*) FROM lettuce.jobs WHERE kind = 'repo.index' AND state = 'completed'",
    )
    .await;
    let events: i64 = scalar(
        &rig.client,
        "SELECT count(*) FROM lettuce.jobs WHERE kind = 'github.event' AND state = 'completed'",
    )
    .await;
    assert_eq!(events, 20, "every delivery was handled");
    let after_burst = runs - before;
    assert!(
        (1..=2).contains(&after_burst),
        "20 pushes made {after_burst} index runs"
    );
    worker.stop().await.unwrap();
}

/// A cancel that lands while the files are being parsed stops the parser: the slot is free
/// within a second, and no artifact, artifact row or repository update is written.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_mid_parse_frees_the_slot_within_a_second_and_writes_nothing() {
    let rig = Rig::new().await;
    let (work, _) = rig.repo("acme/widgets");
    // Enough source that parsing takes seconds in a debug build: 800 files of ~25 KB.
    let body: String = (0..400)
        .map(|i| format!("pub fn f{i}(x: u32) -> u32 {{ let y = x + {i}; y * 2 }}\n"))
        .collect();
    for n in 0..800 {
        work.write(&format!("src/m{n}.rs"), format!("// module {n}\n{body}"));
    }
    work.commit("many files");
    let worker = InProcessWorker::start(&rig.env).await;
    let id = rig.enqueue("acme/widgets").await;
    let out = rig
        .data_dir()
        .join("index-work")
        .join(format!("job-{id}-attempt-1"))
        .join("out");
    eventually(
        Duration::from_secs(60),
        "the parse stage to start",
        || async { out.exists().then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state: String = scalar(
        &rig.client,
        &format!("SELECT state FROM lettuce.jobs WHERE id = {id}"),
    )
    .await;
    assert_eq!(
        state, "running",
        "the index finished before the cancel: make the repository bigger"
    );
    let cancelled_at = Instant::now();
    lettuce_worker::db::jobs::cancel(&rig.client, id, "cancelled by the test")
        .await
        .unwrap();
    let next = xtests::enqueue_sql(&rig.client, "diag.noop", json!({})).await;
    let (state, _, _) = wait_final(&rig.client, next, Duration::from_secs(5)).await;
    assert_eq!(state, "completed", "the slot is free");
    let freed = cancelled_at.elapsed();
    assert!(freed < Duration::from_secs(1), "slot free after {freed:?}");

    rig.assert_nothing_written(id).await;
    worker.stop().await.unwrap();
}
