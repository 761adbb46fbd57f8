//! The public API: an embedder's binary (`worker/examples/custom_kind.rs`) keeps the whole
//! command line and runs its own job kind beside the worker's.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use xtests::{TestDb, WorkerProcess, enqueue_sql, wait_final};

const LIMIT: Duration = Duration::from_secs(30);

/// Builds the example (a no-op when `cargo build --all-targets` already did) and returns it.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| profile_dir.parent().unwrap().to_path_buf());
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "-q",
            "-p",
            "lettuce-worker",
            "--example",
            "custom_kind",
        ])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo build --example custom_kind");
    assert!(status.success(), "building the example failed");
    target
        .join(profile_dir.file_name().unwrap())
        .join("examples")
        .join("custom_kind")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedders_binary_runs_its_own_kind_beside_the_built_in_ones() {
    let bin = example_bin();
    let db = TestDb::new().await;
    let env = db.env();
    let mut w = WorkerProcess::start_program(&bin, &["run"], &env);
    w.wait_ready(LIMIT).await;
    assert!(
        w.output().iter().any(|l| l.contains("worker ready")
            && l.contains("example.greet")
            && l.contains("github.event")),
        "the ready line lists the embedder's kind and the worker's own:\n{}",
        w.output().join("\n")
    );
    let client = db.client().await;
    let ok = enqueue_sql(&client, "example.greet", json!({"name": "Ada"})).await;
    let bad = enqueue_sql(&client, "example.greet", json!({"name": " "})).await;
    assert_eq!(wait_final(&client, ok, LIMIT).await.0, "completed");
    let (state, _, errors) = wait_final(&client, bad, LIMIT).await;
    assert_eq!(state, "discarded");
    assert!(
        errors.to_string().contains("name must not be empty"),
        "{errors}"
    );
    assert!(w.printed("hello, Ada"), "{}", w.output().join("\n"));
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(LIMIT).await, Some(0));

    // The rest of the command line is there too.
    let out = Command::new(&bin)
        .args(["jobs", "list", "--json"])
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("example.greet"));
}
