//! Observability, against the real thing: spans through the real layer into an in-memory
//! exporter (names, attributes, parents), the `worker` binary exporting OTLP/HTTP protobuf to a
//! receiver on loopback (decoded, parented to the enqueued `traceparent`, flushed at SIGTERM),
//! and the HTTP endpoints: `/metrics`, `/healthz` with `worker healthcheck`, `/readyz` reasons.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use lettuce_worker::NewJob;
use lettuce_worker::telemetry::{SPAN_TARGET, otel_layer};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue as PKeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span as PSpan;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use prost::Message;
use serde_json::json;
use tracing_subscriber::prelude::*;
use xtests::s3::MotoServer;
use xtests::{TestDb, WorkerProcess, eventually, run_worker, wait_final};

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// A free loopback port: bind port 0, note the port, release it.
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn random_traceparent() -> (String, String, String) {
    let trace: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let span: String = (0..8)
        .map(|_| format!("{:02x}", rand::random::<u8>() | 1))
        .collect();
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// The real exporter layer over an in-memory exporter, installed for this thread only.
fn in_memory_tracing() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(otel_layer(&provider)),
    );
    (exporter, provider, guard)
}

// A current-thread runtime keeps every task of the in-process worker on this thread, so the
// thread-local subscriber below sees all of them.
#[tokio::test(flavor = "current_thread")]
async fn in_memory_spans_for_completed_failed_and_panicked_attempts() {
    let (exporter, provider, _sub) = in_memory_tracing();

    let db = TestDb::new().await;
    let worker = xtests::InProcessWorker::start(&db.env()).await;
    let client = db.client().await;

    // The Rust API stores the caller's context when the job has no traceparent of its own.
    let root = tracing::info_span!(target: SPAN_TARGET, "test.enqueue");
    let noop = {
        let _g = root.enter();
        lettuce_worker::enqueue(&client, &NewJob::new("diag.noop", json!({})))
            .await
            .unwrap()
    };
    let batch = {
        let _g = root.enter();
        lettuce_worker::enqueue_many(
            &client,
            &[
                NewJob::new("diag.fail", json!({"times": 5})).max_attempts(1),
                NewJob::new("diag.panic", json!({})).max_attempts(1),
            ],
        )
        .await
        .unwrap()
    };
    drop(root);
    let (fail, panic) = (batch[0], batch[1]);
    assert_eq!(
        wait_final(&client, noop, Duration::from_secs(20)).await.0,
        "completed"
    );
    assert_eq!(
        wait_final(&client, fail, Duration::from_secs(20)).await.0,
        "discarded"
    );
    assert_eq!(
        wait_final(&client, panic, Duration::from_secs(20)).await.0,
        "discarded"
    );
    let stored: Vec<Option<String>> = client
        .query("SELECT traceparent FROM lettuce.jobs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    worker.stop().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let root = spans
        .iter()
        .find(|s| s.name == "test.enqueue")
        .expect("root span");
    let root_tp = format!(
        "00-{}-{}-01",
        root.span_context.trace_id(),
        root.span_context.span_id()
    );
    assert_eq!(
        stored,
        vec![Some(root_tp.clone()); 3],
        "every job stores the caller's context"
    );

    let job = |kind: &str| -> &SpanData {
        spans
            .iter()
            .find(|s| s.name == format!("job.{kind}"))
            .unwrap_or_else(|| panic!("no job.{kind} span among {:?}", names(&spans)))
    };
    let ok = job("diag.noop");
    assert_eq!(ok.span_kind, SpanKind::Consumer);
    assert_eq!(attr(ok, "job.id"), Some(noop.to_string()));
    assert_eq!(attr(ok, "job.kind").as_deref(), Some("diag.noop"));
    assert_eq!(attr(ok, "job.queue").as_deref(), Some("default"));
    assert_eq!(attr(ok, "job.attempt").as_deref(), Some("1"));
    assert_eq!(attr(ok, "job.outcome").as_deref(), Some("completed"));
    assert_eq!(attr(ok, "error.message"), None);
    assert_eq!(ok.status, Status::Unset);
    assert_eq!(ok.span_context.trace_id(), root.span_context.trace_id());
    assert_eq!(ok.parent_span_id, root.span_context.span_id());

    let failed = job("diag.fail");
    assert_eq!(attr(failed, "job.id"), Some(fail.to_string()));
    assert_eq!(attr(failed, "job.outcome").as_deref(), Some("error"));
    let msg = attr(failed, "error.message").expect("error recorded");
    assert!(matches!(&failed.status, Status::Error { description } if description == &msg));
    assert_eq!(failed.parent_span_id, root.span_context.span_id());

    let panicked = job("diag.panic");
    assert_eq!(attr(panicked, "job.outcome").as_deref(), Some("error"));
    let msg = attr(panicked, "error.message").expect("panic recorded");
    assert!(msg.starts_with("panic:"), "{msg}");
    assert!(matches!(panicked.status, Status::Error { .. }));

    // SQL child spans: the statement with placeholders, never values.
    for name in ["db.claim_batch", "db.complete_batch"] {
        let s = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span among {:?}", names(&spans)));
        assert_eq!(s.span_kind, SpanKind::Client);
        assert_eq!(attr(s, "db.system").as_deref(), Some("postgresql"));
        assert_eq!(attr(s, "db.operation").as_deref(), Some("UPDATE"));
        let stmt = attr(s, "db.statement").unwrap();
        assert!(
            stmt.contains("lettuce.job_queue") && stmt.contains("$1"),
            "{stmt}"
        );
        // The kinds are parameters: interpolated values would show up as `diag.`.
        assert!(!stmt.contains("diag."), "no values in {stmt}");
    }
    let claim = spans
        .iter()
        .find(|s| s.name == "db.claim_batch" && attr(s, "db.rows").is_some_and(|n| n != "0"))
        .expect("a claim that returned rows");
    assert!(
        attr(claim, "db.statement")
            .unwrap()
            .contains("FOR UPDATE SKIP LOCKED")
    );
}

// Same single-thread set-up as above, so the part uploads on their own tasks are seen too.
#[tokio::test(flavor = "current_thread")]
async fn s3_requests_are_client_spans_under_the_job_span() {
    let (exporter, provider, _sub) = in_memory_tracing();
    let moto = MotoServer::start("lettuce").await;
    let db = TestDb::new().await;
    let mut env = db.env();
    env.extend(moto.env());
    let worker = xtests::InProcessWorker::start(&env).await;
    let client = db.client().await;
    // One small object (PutObject) and one of two parts (multipart).
    let small = xtests::enqueue_sql(&client, "diag.artifact", json!({"bytes": 1000})).await;
    let big = xtests::enqueue_sql(
        &client,
        "diag.artifact",
        json!({"bytes": 8 * 1024 * 1024 + 1}),
    )
    .await;
    for id in [small, big] {
        let (state, _, errors) = wait_final(&client, id, Duration::from_secs(60)).await;
        assert_eq!(state, "completed", "job {id}: {errors}");
    }
    worker.stop().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let job_span = |id: i64| -> &SpanData {
        spans
            .iter()
            .find(|s| s.name == "job.diag.artifact" && attr(s, "job.id") == Some(id.to_string()))
            .unwrap_or_else(|| panic!("no job span for {id} among {:?}", names(&spans)))
    };
    let children = |parent: &SpanData, name: &str| -> Vec<&SpanData> {
        spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == parent.span_context.span_id())
            .collect()
    };
    let endpoint = moto.endpoint();
    let host = endpoint.trim_start_matches("http://");
    let small_job = job_span(small);
    let put = children(small_job, "S3.PutObject");
    assert_eq!(
        put.len(),
        1,
        "one PutObject under job {small}: {:?}",
        names(&spans)
    );
    let put = put[0];
    assert_eq!(put.span_kind, SpanKind::Client);
    assert_eq!(
        put.span_context.trace_id(),
        small_job.span_context.trace_id()
    );
    assert_eq!(attr(put, "http.request.method").as_deref(), Some("PUT"));
    assert_eq!(
        attr(put, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(put, "server.address").as_deref(), Some(host));
    assert_eq!(attr(put, "rpc.system").as_deref(), Some("aws-api"));
    assert_eq!(attr(put, "rpc.method").as_deref(), Some("PutObject"));
    assert_eq!(attr(put, "aws.s3.bucket").as_deref(), Some("lettuce"));
    let key = attr(put, "aws.s3.key").unwrap();
    assert!(key.starts_with(&format!("jobs/{small}/")), "{key}");
    assert_eq!(
        attr(put, "url.full"),
        Some(format!("{endpoint}/lettuce/{key}"))
    );
    assert_eq!(put.status, Status::Unset);

    let big_job = job_span(big);
    assert_eq!(children(big_job, "S3.CreateMultipartUpload").len(), 1);
    let parts = children(big_job, "S3.UploadPart");
    assert_eq!(parts.len(), 2, "two parts: {:?}", names(&spans));
    for part in parts {
        assert_eq!(
            attr(part, "http.response.status_code").as_deref(),
            Some("200")
        );
    }
    assert_eq!(children(big_job, "S3.CompleteMultipartUpload").len(), 1);
    // No credential anywhere in what was exported.
    let dump = format!("{spans:?}");
    for (k, v) in moto.env() {
        if k.contains("SECRET") {
            assert!(!dump.contains(&v), "{k} leaked into a span");
        }
    }
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

/// An OTLP/HTTP receiver on loopback that keeps every decoded request.
async fn otlp_receiver() -> (SocketAddr, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    let got: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("valid protobuf");
                sink.lock().unwrap().push(req);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

fn pattr(span: &PSpan, key: &str) -> Option<any_value::Value> {
    find_attr(&span.attributes, key)
}

fn find_attr(attrs: &[PKeyValue], key: &str) -> Option<any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn s(v: &str) -> Option<any_value::Value> {
    Some(any_value::Value::StringValue(v.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exports_job_span_over_otlp_http_and_flushes_at_sigterm() {
    let (addr, received) = otlp_receiver().await;
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://{addr}"),
    );
    env.insert("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into());
    env.insert("OTEL_SERVICE_NAME".into(), "lettuce-xt".into());
    // Nothing leaves on the timer during the test: whatever arrives was flushed at exit.
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into());
    let mut worker = WorkerProcess::start(&["run"], &env);
    worker.wait_ready(Duration::from_secs(30)).await;

    let client = db.client().await;
    let (tp, trace_hex, parent_hex) = random_traceparent();
    let id: i64 = client
        .query_one(
            "SELECT lettuce.enqueue('diag.noop', '{}', 'default', 0, now(), 5, NULL, $1)",
            &[&tp],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        wait_final(&client, id, Duration::from_secs(20)).await.0,
        "completed"
    );
    assert!(
        received.lock().unwrap().is_empty(),
        "spans left before exit; the flush at SIGTERM would go untested"
    );
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait_exit(Duration::from_secs(30)).await, Some(0));

    let requests = received.lock().unwrap().clone();
    assert!(
        !requests.is_empty(),
        "nothing exported:\n{}",
        worker.output().join("\n")
    );
    let mut spans = Vec::new();
    for req in &requests {
        for rs in &req.resource_spans {
            let resource = rs.resource.as_ref().expect("resource");
            assert_eq!(
                find_attr(&resource.attributes, "service.name"),
                s("lettuce-xt")
            );
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let job = spans
        .iter()
        .find(|s| s.name == "job.diag.noop")
        .unwrap_or_else(|| {
            panic!(
                "no job span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&job.trace_id), trace_hex);
    assert_eq!(hex(&job.parent_span_id), parent_hex);
    assert_eq!(job.kind, 5, "SPAN_KIND_CONSUMER");
    assert_eq!(pattr(job, "job.id"), Some(any_value::Value::IntValue(id)));
    assert_eq!(pattr(job, "job.kind"), s("diag.noop"));
    assert_eq!(pattr(job, "job.queue"), s("default"));
    assert_eq!(
        pattr(job, "job.attempt"),
        Some(any_value::Value::IntValue(1))
    );
    assert_eq!(pattr(job, "job.outcome"), s("completed"));
    let claim = spans
        .iter()
        .find(|s| s.name == "db.claim_batch")
        .expect("a SQL span");
    assert_eq!(pattr(claim, "db.system"), s("postgresql"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The value of the sample line that starts with `series` (name plus labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_healthcheck_and_readiness_while_draining() {
    let db = TestDb::new().await;
    let http = free_addr();
    let mut env = db.env();
    env.insert("LETTUCE_HTTP_ADDR".into(), http.to_string());
    env.insert("LETTUCE_SHUTDOWN_GRACE_MS".into(), "60000".into());
    let mut worker = WorkerProcess::start(&["run"], &env);
    worker.wait_ready(Duration::from_secs(30)).await;
    let base = format!("http://{http}");

    let (code, _, err) = run_worker(&["healthcheck"], &env);
    assert_eq!(code, 0, "healthcheck against a live worker: {err}");
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        Some((200, "ready\n".into()))
    );

    let client = db.client().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(xtests::enqueue_sql(&client, "diag.noop", json!({})).await);
    }
    let fail: i64 = client
        .query_one(
            "SELECT lettuce.enqueue('diag.fail', '{\"times\": 9}', max_attempts => 1)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for _ in 0..3 {
        client
            .execute(
                "SELECT lettuce.enqueue('diag.noop', run_at => now() + interval '1 hour')",
                &[],
            )
            .await
            .unwrap();
    }
    for id in &ids {
        wait_final(&client, *id, Duration::from_secs(20)).await;
    }
    wait_final(&client, fail, Duration::from_secs(20)).await;

    let text = eventually(
        Duration::from_secs(10),
        "metrics after the jobs",
        || async {
            let (status, text) = get(&format!("{base}/metrics")).await?;
            assert_eq!(status, 200);
            // The completer may still be releasing the last slot.
            (sample(&text, "lettuce_jobs_in_flight{queue=\"default\"}") == Some(0.0))
                .then_some(text)
        },
    )
    .await;
    let want = [
        (
            "lettuce_job_attempts_total{kind=\"diag.noop\",queue=\"default\",outcome=\"completed\"}",
            5.0,
        ),
        (
            "lettuce_job_attempts_total{kind=\"diag.fail\",queue=\"default\",outcome=\"error\"}",
            1.0,
        ),
        (
            "lettuce_job_attempt_duration_seconds_count{kind=\"diag.noop\",queue=\"default\"}",
            5.0,
        ),
        (
            "lettuce_job_pickup_latency_seconds_count{queue=\"default\"}",
            6.0,
        ),
        (
            "lettuce_queue_depth{queue=\"default\",state=\"scheduled\"}",
            3.0,
        ),
        ("lettuce_listen_reconnects_total", 0.0),
    ];
    for (series, value) in want {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    for family in [
        "lettuce_job_attempts",
        "lettuce_jobs_final",
        "lettuce_job_attempt_duration_seconds",
        "lettuce_job_pickup_latency_seconds",
        "lettuce_jobs_in_flight",
        "lettuce_queue_depth",
        "lettuce_listen_reconnects",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }

    // Draining: SIGTERM with a long job in flight keeps the process alive, not ready.
    let sleeper = xtests::enqueue_sql(&client, "diag.sleep", json!({"ms": 60000})).await;
    eventually(Duration::from_secs(10), "the sleeper to run", || async {
        let r = client
            .query_one("SELECT state FROM lettuce.jobs WHERE id = $1", &[&sleeper])
            .await
            .unwrap();
        (r.get::<_, String>(0) == "running").then_some(())
    })
    .await;
    worker.signal(libc::SIGTERM);
    let (status, body) = eventually(Duration::from_secs(10), "readyz to turn 503", || async {
        get(&format!("{base}/readyz"))
            .await
            .filter(|(s, _)| *s == 503)
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(
        get(&format!("{base}/healthz")).await.map(|r| r.0),
        Some(200)
    );
    assert!(worker.child.try_wait().unwrap().is_none(), "still draining");
    let text = get(&format!("{base}/metrics")).await.unwrap().1;
    assert_eq!(
        sample(&text, "lettuce_jobs_in_flight{queue=\"default\"}"),
        Some(1.0)
    );
    drop(worker);

    // Nothing listens: unhealthy.
    let mut dead = env.clone();
    dead.insert("LETTUCE_HTTP_ADDR".into(), free_addr().to_string());
    let (code, _, err) = run_worker(&["healthcheck"], &dead);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unhealthy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_booting_while_the_database_is_unreachable() {
    let http = free_addr();
    let nothing = free_addr();
    let mut env: HashMap<String, String> = TestDb::absent().env();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@{nothing}/lettuce"),
    );
    env.insert("LETTUCE_DB_CONNECT_TIMEOUT_MS".into(), "60000".into());
    env.insert("LETTUCE_HTTP_ADDR".into(), http.to_string());
    let _worker = WorkerProcess::start(&["run"], &env);
    let (status, body) = eventually(Duration::from_secs(10), "readyz to answer", || async {
        get(&format!("http://{http}/readyz")).await
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready: booting"), "{body}");
    assert_eq!(
        get(&format!("http://{http}/healthz")).await,
        Some((200, "ok\n".into()))
    );
}
