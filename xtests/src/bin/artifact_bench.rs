//! Artifact benchmark (release build only; not run by tests).
//!
//! One `worker` process writes one `diag.artifact` of N bytes (default 1 GiB) to a loopback
//! moto server; we report the worker's peak RSS (`VmHWM` from `/proc/<pid>/status`) and the
//! upload throughput, then upload the very same bytes raw with `aws s3 cp` (8 MiB parts, 10 in
//! flight: the CLI's defaults) to the same server for comparison.
//!
//!     cargo build --release -p lettuce-worker -p xtests --bin artifact_bench
//!     /var/tmp/lettuce-target/release/artifact_bench [BYTES]

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use xtests::s3::{ACCESS_KEY_ID, MotoServer, SECRET_ACCESS_KEY};
use xtests::{TestDb, WorkerProcess, wait_final};

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

#[tokio::main]
async fn main() {
    let bytes: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("BYTES must be a number"))
        .unwrap_or(1 << 30);
    let moto = MotoServer::start("bench").await;
    let db = TestDb::new().await;
    let mut env = db.env();
    env.extend(moto.env());
    let mut worker = WorkerProcess::start(&["run"], &env);
    worker.wait_ready(Duration::from_secs(60)).await;
    let idle_kib = vm_hwm_kib(worker.pid());

    let client = db.client().await;
    let id = xtests::enqueue_sql(
        &client,
        "diag.artifact",
        serde_json::json!({ "bytes": bytes }),
    )
    .await;
    let (state, _, errs) = wait_final(&client, id, Duration::from_secs(1800)).await;
    assert_eq!(state, "completed", "{errs}");
    let peak_kib = vm_hwm_kib(worker.pid());
    let secs: f64 = client
        .query_one(
            "SELECT extract(epoch FROM finished_at - attempted_at)::float8 FROM lettuce.jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    drop(worker);

    // The same bytes, on disk, for the raw upload.
    let path = std::env::temp_dir().join(format!("artifact-bench-{id}.bin"));
    {
        let mut src = lettuce_worker::handlers::diag::DiagBytes::new(id as u64, bytes);
        let mut file = tokio::fs::File::create(&path).await.unwrap();
        tokio::io::copy(&mut src, &mut file).await.unwrap();
        file.flush().await.unwrap();
    }
    let started = Instant::now();
    let out = Command::new("aws")
        .args([
            "--endpoint-url",
            &moto.endpoint(),
            "--region",
            "us-east-1",
            "s3",
            "cp",
            "--only-show-errors",
        ])
        .arg(&path)
        .arg(format!("s3://{}/raw/{id}.bin", moto.bucket))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .output()
        .expect("run aws s3 cp");
    let raw_secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "aws s3 cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&path);

    println!("artifact bytes:          {bytes}");
    println!(
        "worker VmHWM idle:       {:.1} MiB",
        idle_kib as f64 / 1024.0
    );
    println!(
        "worker VmHWM after job:  {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!(
        "worker upload:           {secs:.2} s  ({:.1} MiB/s, attempted_at → finished_at)",
        mib_per_s(bytes, secs)
    );
    println!(
        "aws s3 cp (same bytes):  {raw_secs:.2} s  ({:.1} MiB/s, process wall time)",
        mib_per_s(bytes, raw_secs)
    );
    println!("ratio worker/raw:        {:.2}", raw_secs / secs);
}
