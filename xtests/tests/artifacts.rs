//! Artifacts against a real S3 server (moto over loopback HTTP, path style) and the local
//! directory store: what lands is exactly what the job recorded, faults are retryable and lose
//! nothing, and a cut upload leaves nothing visible and no open multipart upload.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_postgres::Client;
use xtests::s3::MotoServer;
use xtests::{InProcessWorker, TestDb, eventually, wait_final};

use lettuce_worker::artifacts::ArtifactStore;
use lettuce_worker::handlers::diag::DiagBytes;

const MIB: u64 = 1024 * 1024;

/// One recorded `lettuce.job_artifacts` row.
#[derive(Debug)]
struct Row {
    key: String,
    size: i64,
    sha256: String,
    etag: Option<String>,
}

async fn enqueue(client: &Client, payload: serde_json::Value, max_attempts: i32) -> i64 {
    client
        .query_one(
            "SELECT lettuce.enqueue('diag.artifact', $1, max_attempts => $2)",
            &[&payload, &max_attempts],
        )
        .await
        .unwrap()
        .get(0)
}

async fn rows(client: &Client, job_id: i64) -> Vec<Row> {
    client
        .query(
            "SELECT key, size, sha256, etag FROM lettuce.job_artifacts WHERE job_id = $1 ORDER BY key",
            &[&job_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Row {
            key: r.get(0),
            size: r.get(1),
            sha256: r.get(2),
            etag: r.get(3),
        })
        .collect()
}

/// The sha256 of the bytes `diag.artifact` writes for `job_id`, computed independently.
async fn expected_sha(job_id: i64, len: u64) -> String {
    let mut src = DiagBytes::new(job_id as u64, len);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    hex::encode(sha.finalize())
}

/// Reads an object back (streamed) and returns (size, sha256, etag).
async fn read_back(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> (i64, String, String) {
    let mut out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    let etag = out
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let mut sha = Sha256::new();
    let mut size = 0i64;
    while let Some(chunk) = out.body.try_next().await.unwrap() {
        size += chunk.len() as i64;
        sha.update(&chunk);
    }
    (size, hex::encode(sha.finalize()), etag)
}

/// Keys present under `prefix`, and multipart uploads still open under it.
async fn bucket_state(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> (Vec<String>, Vec<String>) {
    let objects = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    let uploads = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_string))
        .collect();
    (objects, uploads)
}

fn merged(a: HashMap<String, String>, b: HashMap<String, String>) -> HashMap<String, String> {
    a.into_iter().chain(b).collect()
}

/// Errors recorded on a job so far, as one string.
async fn errors(client: &Client, id: i64) -> String {
    let v: serde_json::Value = client
        .query_one("SELECT errors FROM lettuce.jobs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_multipart_artifacts_read_back_equal_to_their_rows() {
    let moto = MotoServer::start("lettuce").await;
    let db = TestDb::new().await;
    let worker = InProcessWorker::start(&merged(db.env(), moto.env())).await;
    let client = db.client().await;
    let s3 = moto.client();

    // Empty, small, exactly one part, and three parts with a short last one.
    let sizes = [0, 1000, 8 * MIB, 2 * 8 * MIB + 12345];
    let mut jobs = Vec::new();
    for bytes in sizes {
        jobs.push((
            enqueue(&client, serde_json::json!({ "bytes": bytes }), 1).await,
            bytes,
        ));
    }
    for (id, bytes) in jobs {
        let (state, attempt, errs) = wait_final(&client, id, Duration::from_secs(120)).await;
        assert_eq!(state, "completed", "job {id} ({bytes} bytes): {errs}");
        let rows = rows(&client, id).await;
        assert_eq!(rows.len(), 1, "one row for job {id}: {rows:?}");
        let row = &rows[0];
        assert_eq!(row.key, format!("jobs/{id}/attempt-{attempt}/diag.bin"));
        let (size, sha, etag) = read_back(&s3, &moto.bucket, &row.key).await;
        assert_eq!(size, row.size, "size of {}", row.key);
        assert_eq!(size as u64, bytes);
        assert_eq!(sha, row.sha256, "sha256 of {}", row.key);
        assert_eq!(
            sha,
            expected_sha(id, bytes).await,
            "the bytes are diag's for job {id}"
        );
        assert_eq!(Some(etag.clone()), row.etag, "etag of {}", row.key);
        if bytes >= 8 * MIB {
            // A multipart ETag is "<md5 of part md5s>-<parts>".
            let parts = bytes.div_ceil(8 * MIB);
            assert!(
                etag.ends_with(&format!("-{parts}")),
                "multipart etag {etag}"
            );
        }
    }
    let (_, open) = bucket_state(&s3, &moto.bucket, "jobs/").await;
    assert!(open.is_empty(), "no multipart upload left open: {open:?}");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_makes_the_job_retryable_and_it_completes_once_s3_returns() {
    let mut moto = MotoServer::start("lettuce").await;
    let db = TestDb::new().await;
    let worker = InProcessWorker::start(&merged(db.env(), moto.env())).await;
    let client = db.client().await;
    moto.stop();

    let id = enqueue(&client, serde_json::json!({ "bytes": 10 * MIB }), 1000).await;
    // At least one attempt fails on the unreachable store and the job waits to retry.
    eventually(
        Duration::from_secs(60),
        "an attempt to fail with the store unreachable",
        || async {
            let r = client
                .query_one(
                    "SELECT state, errors::text FROM lettuce.jobs WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            let (state, errs): (String, String) = (r.get(0), r.get(1));
            assert_ne!(state, "discarded", "nothing may be discarded: {errs}");
            (errs.contains("artifact store unreachable at") && state != "completed").then_some(())
        },
    )
    .await;
    assert!(
        rows(&client, id).await.is_empty(),
        "a failed attempt records no artifact"
    );

    moto.restart().await;
    let (state, attempt, errs) = wait_final(&client, id, Duration::from_secs(120)).await;
    assert_eq!(state, "completed", "{errs}");
    assert!(attempt >= 2, "completed on a retry, attempt {attempt}");
    let rows = rows(&client, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].key, format!("jobs/{id}/attempt-{attempt}/diag.bin"));
    let (size, sha, _) = read_back(&moto.client(), &moto.bucket, &rows[0].key).await;
    assert_eq!((size, sha), (rows[0].size, rows[0].sha256.clone()));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_missing_bucket_are_named_in_the_job_and_the_probe() {
    // Wrong credentials: moto with authentication on refuses our access key.
    let strict = MotoServer::start_with_auth("lettuce").await;
    let db = TestDb::new().await;
    let env = merged(db.env(), strict.env());
    let config = lettuce_worker::config::Config::load(&env).unwrap();
    let probe = ArtifactStore::from_config(&config).unwrap().probe().await;
    let text = probe
        .expect_err("probe must fail with refused credentials")
        .to_string();
    assert!(
        text.contains("refused access") && text.contains("InvalidAccessKeyId"),
        "{text}"
    );
    assert!(
        !text.contains(xtests::s3::SECRET_ACCESS_KEY),
        "no secret in errors: {text}"
    );

    let worker = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let id = enqueue(&client, serde_json::json!({ "bytes": 100 }), 1).await;
    let (state, _, errs) = wait_final(&client, id, Duration::from_secs(60)).await;
    assert_eq!(state, "discarded", "max_attempts 1: {errs}");
    let errs = errs.to_string();
    assert!(
        errs.contains("artifact store refused access") && errs.contains("InvalidAccessKeyId"),
        "{errs}"
    );
    assert!(!errs.contains(xtests::s3::SECRET_ACCESS_KEY));
    worker.stop().await.unwrap();

    // Missing bucket: a normal server, a bucket name nobody created.
    let moto = MotoServer::start("lettuce").await;
    let db = TestDb::new().await;
    let mut s3_env = moto.env();
    s3_env.insert("CODEWAZE_S3_BUCKET".into(), "no-such-bucket".into());
    let env = merged(db.env(), s3_env);
    let config = lettuce_worker::config::Config::load(&env).unwrap();
    let text = ArtifactStore::from_config(&config)
        .unwrap()
        .probe()
        .await
        .expect_err("probe must fail on a missing bucket")
        .to_string();
    assert!(text.contains("\"no-such-bucket\" does not exist"), "{text}");

    let worker = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let small = enqueue(&client, serde_json::json!({ "bytes": 100 }), 1).await;
    let large = enqueue(&client, serde_json::json!({ "bytes": 9 * MIB }), 1).await;
    for id in [small, large] {
        let (state, _, _) = wait_final(&client, id, Duration::from_secs(60)).await;
        assert_eq!(state, "discarded");
        let errs = errors(&client, id).await;
        assert!(
            errs.contains("artifact bucket \\\"no-such-bucket\\\" does not exist"),
            "{errs}"
        );
    }
    worker.stop().await.unwrap();

    // The probe passes against a good configuration.
    let env = merged(db.env(), moto.env());
    let config = lettuce_worker::config::Config::load(&env).unwrap();
    ArtifactStore::from_config(&config)
        .unwrap()
        .probe()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_leaves_no_object_and_no_open_multipart_upload() {
    let moto = MotoServer::start("lettuce").await;
    let db = TestDb::new().await;
    let mut env = merged(db.env(), moto.env());
    // Short enough to cut the stalled upload below, long enough for the others.
    env.insert("LETTUCE_JOB_TIMEOUT_MS".into(), "8000".into());
    let worker = InProcessWorker::start(&env).await;
    let client = db.client().await;
    let s3 = moto.client();

    // Stalls after two full parts went up: the attempt's timeout drops the write mid-upload.
    let stalled = enqueue(
        &client,
        serde_json::json!({ "bytes": 40 * MIB, "stall_after": 20 * MIB }),
        1,
    )
    .await;
    let prefix = format!("jobs/{stalled}/");
    eventually(
        Duration::from_secs(30),
        "the stalled job's multipart upload to be open",
        || async {
            let (_, open) = bucket_state(&s3, &moto.bucket, &prefix).await;
            (!open.is_empty()).then_some(())
        },
    )
    .await;
    let (state, _, errs) = wait_final(&client, stalled, Duration::from_secs(60)).await;
    assert_eq!(state, "discarded");
    assert!(errs.to_string().contains("timeout"), "{errs}");
    eventually(
        Duration::from_secs(20),
        "the dropped upload to be aborted",
        || async {
            let (objects, open) = bucket_state(&s3, &moto.bucket, &prefix).await;
            assert!(
                objects.is_empty(),
                "nothing visible under the key: {objects:?}"
            );
            open.is_empty().then_some(())
        },
    )
    .await;

    // The source breaks after two parts: the write aborts its own upload and fails.
    let broken = enqueue(
        &client,
        serde_json::json!({ "bytes": 40 * MIB, "fail_after": 20 * MIB }),
        1,
    )
    .await;
    let (state, _, errs) = wait_final(&client, broken, Duration::from_secs(60)).await;
    assert_eq!(state, "discarded");
    assert!(errs.to_string().contains("source failed after"), "{errs}");
    let (objects, open) = bucket_state(&s3, &moto.bucket, &format!("jobs/{broken}/")).await;
    assert!(
        objects.is_empty() && open.is_empty(),
        "{objects:?} {open:?}"
    );

    for id in [stalled, broken] {
        assert!(rows(&client, id).await.is_empty(), "no row for job {id}");
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_store_round_trip_and_no_partial_file() {
    let db = TestDb::new().await;
    let env = db.env();
    let data_dir = std::path::PathBuf::from(&env["CODEWAZE_DATA_DIR"]);
    let worker = InProcessWorker::start(&env).await;
    let client = db.client().await;

    let good = enqueue(
        &client,
        serde_json::json!({ "bytes": 3 * MIB + 7, "name": "out/report.bin" }),
        1,
    )
    .await;
    let broken = enqueue(
        &client,
        serde_json::json!({ "bytes": 3 * MIB, "fail_after": MIB }),
        1,
    )
    .await;

    let (state, attempt, errs) = wait_final(&client, good, Duration::from_secs(60)).await;
    assert_eq!(state, "completed", "{errs}");
    let rows_good = rows(&client, good).await;
    assert_eq!(rows_good.len(), 1);
    assert_eq!(
        rows_good[0].key,
        format!("jobs/{good}/attempt-{attempt}/out/report.bin")
    );
    let bytes = std::fs::read(data_dir.join("artifacts").join(&rows_good[0].key)).unwrap();
    assert_eq!(bytes.len() as i64, rows_good[0].size);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), rows_good[0].sha256);
    assert_eq!(rows_good[0].sha256, expected_sha(good, 3 * MIB + 7).await);

    let (state, _, errs) = wait_final(&client, broken, Duration::from_secs(60)).await;
    assert_eq!(state, "discarded");
    assert!(errs.to_string().contains("source failed after"), "{errs}");
    assert!(rows(&client, broken).await.is_empty());
    let dir = data_dir.join(format!("artifacts/jobs/{broken}/attempt-1"));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no partial or temp file: {left:?}");

    worker.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}
