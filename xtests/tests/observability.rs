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
use lettuce_worker::observability::{SPAN_TARGET, otel_layer};
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
    // Each enqueue is a PRODUCER span under the caller's span; its context is what is stored.
    let producers: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Producer)
        .collect();
    assert_eq!(producers.len(), 2, "{:?}", names(&spans));
    let single = producers
        .iter()
        .find(|p| attr(p, "messaging.message.id") == Some(noop.to_string()))
        .expect("the single enqueue names its message id");
    let many = producers
        .iter()
        .find(|p| attr(p, "messaging.batch.message_count").as_deref() == Some("2"))
        .expect("the batch enqueue counts its messages");
    for p in [single, many] {
        assert_eq!(p.name, "enqueue default");
        assert_eq!(p.parent_span_id, root.span_context.span_id());
        assert_eq!(attr(p, "messaging.system").as_deref(), Some("lettuce"));
        assert_eq!(attr(p, "messaging.operation.type").as_deref(), Some("send"));
        assert_eq!(
            attr(p, "messaging.destination.name").as_deref(),
            Some("default")
        );
    }
    let tp = |s: &SpanData| {
        format!(
            "00-{}-{}-01",
            s.span_context.trace_id(),
            s.span_context.span_id()
        )
    };
    assert_eq!(
        stored,
        vec![Some(tp(single)), Some(tp(many)), Some(tp(many))],
        "every job stores its producer span's context"
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
    assert_eq!(ok.parent_span_id, single.span_context.span_id());
    assert_eq!(attr(ok, "messaging.system").as_deref(), Some("lettuce"));
    assert_eq!(
        attr(ok, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attr(ok, "messaging.destination.name").as_deref(),
        Some("default")
    );
    assert_eq!(attr(ok, "messaging.message.id"), Some(noop.to_string()));
    assert_eq!(attr(ok, "error.type"), None);

    let failed = job("diag.fail");
    assert_eq!(attr(failed, "job.id"), Some(fail.to_string()));
    assert_eq!(attr(failed, "job.outcome").as_deref(), Some("error"));
    let msg = attr(failed, "error.message").expect("error recorded");
    assert!(matches!(&failed.status, Status::Error { description } if description == &msg));
    assert_eq!(failed.parent_span_id, many.span_context.span_id());
    assert_eq!(attr(failed, "error.type").as_deref(), Some("handler_error"));

    let panicked = job("diag.panic");
    assert_eq!(attr(panicked, "job.outcome").as_deref(), Some("error"));
    let msg = attr(panicked, "error.message").expect("panic recorded");
    assert!(msg.starts_with("panic:"), "{msg}");
    assert!(matches!(panicked.status, Status::Error { .. }));
    assert_eq!(attr(panicked, "error.type").as_deref(), Some("panic"));

    // Links: each job span to the claim that claimed it; that claim to the producers; the
    // completion batch to the job spans it wrote.
    let linked = |s: &SpanData, to: &SpanData| {
        s.links
            .iter()
            .any(|l| l.span_context.span_id() == to.span_context.span_id())
    };
    for job in [ok, failed, panicked] {
        let claim = spans
            .iter()
            .find(|c| c.name == "db.claim_batch" && linked(job, c))
            .unwrap_or_else(|| panic!("{} links to no claim span", job.name));
        let producer = if job.name == ok.name { single } else { many };
        assert!(linked(claim, producer), "the claim links to the producer");
        assert!(
            spans
                .iter()
                .any(|c| c.name == "db.complete_batch" && linked(c, job)),
            "a completion batch links to {}",
            job.name
        );
    }

    // SQL child spans: the statement with placeholders, never values.
    for name in ["db.claim_batch", "db.complete_batch"] {
        let s = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span among {:?}", names(&spans)));
        assert_eq!(s.span_kind, SpanKind::Client);
        assert_eq!(attr(s, "db.system.name").as_deref(), Some("postgresql"));
        assert_eq!(attr(s, "db.operation.name").as_deref(), Some("UPDATE"));
        assert_eq!(
            attr(s, "db.collection.name").as_deref(),
            Some("lettuce.job_queue")
        );
        assert!(
            attr(s, "server.address").is_some(),
            "server.address on {name}"
        );
        for old in ["db.system", "db.operation", "db.statement"] {
            assert_eq!(attr(s, old), None, "{old} is gone from {name}");
        }
        let stmt = attr(s, "db.query.text").unwrap();
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
        attr(claim, "db.query.text")
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

/// Every request the receiver decoded, and whether its body came gzip-compressed.
type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// An OTLP/HTTP receiver on loopback that keeps every decoded request (a `Content-Encoding:
/// gzip` body is inflated first; `gzipped` counts those).
async fn otlp_receiver() -> (SocketAddr, Received) {
    let (addr, got, _) = otlp_receiver_counting_gzip().await;
    (addr, got)
}

async fn otlp_receiver_counting_gzip() -> (SocketAddr, Received, Arc<Mutex<usize>>) {
    let got: Received = Arc::default();
    let gzipped: Arc<Mutex<usize>> = Arc::default();
    let sink = got.clone();
    let zipped = gzipped.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let sink = sink.clone();
            let zipped = zipped.clone();
            async move {
                let gzip = headers
                    .get("content-encoding")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
                let body = if gzip {
                    use std::io::Read;
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut out)
                        .expect("valid gzip");
                    *zipped.lock().unwrap() += 1;
                    Bytes::from(out)
                } else {
                    body
                };
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
    (addr, got, gzipped)
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
    assert_eq!(pattr(claim, "db.system.name"), s("postgresql"));
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

/// Every span the requests carry, with the resource attributes of its batch.
fn exported(requests: &[ExportTraceServiceRequest]) -> Vec<(Vec<PKeyValue>, PSpan)> {
    let mut out = Vec::new();
    for req in requests {
        for rs in &req.resource_spans {
            let resource = rs.resource.as_ref().map(|r| r.attributes.clone());
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push((resource.clone().unwrap_or_default(), span.clone()));
                }
            }
        }
    }
    out
}

fn links_to(span: &PSpan, to: &PSpan) -> bool {
    span.links.iter().any(|l| l.span_id == to.span_id)
}

/// The binary (gzip-compressed OTLP/HTTP, JSON logs): the CLI's PRODUCER span parents the job
/// span; the handler's SQL is a child of the job span; the batched statements link to what
/// they serve; the conventions' attributes are there and the noise is not; JSON log lines
/// inside the job span carry its ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_spans_follow_the_conventions_link_batches_and_put_sql_under_the_job() {
    let (addr, received, gzipped) = otlp_receiver_counting_gzip().await;
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://{addr}"),
    );
    env.insert("OTEL_EXPORTER_OTLP_COMPRESSION".into(), "gzip".into());
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into());
    env.insert("LETTUCE_LOG_FORMAT".into(), "json".into());
    // A heartbeat every 300 ms, so one falls inside the sleeper's attempt.
    env.insert("LETTUCE_LEASE_MS".into(), "900".into());
    let mut worker = WorkerProcess::start(&["run"], &env);
    worker.wait_ready(Duration::from_secs(30)).await;

    // The CLI exports its producer span, flushed at exit.
    let cli_env = env.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_worker(&["enqueue", "diag.record", "--queue", "default"], &cli_env)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let record: i64 = out.trim().parse().unwrap();
    let client = db.client().await;
    let fail: i64 = client
        .query_one(
            "SELECT lettuce.enqueue('diag.fail', '{\"times\": 1}', max_attempts => 2)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let sleeper = xtests::enqueue_sql(&client, "diag.sleep", json!({"ms": 1200})).await;
    for id in [record, fail, sleeper] {
        let (state, _, errors) = wait_final(&client, id, Duration::from_secs(20)).await;
        assert_eq!(state, "completed", "job {id}: {errors}");
    }
    let worker_id: String = client
        .query_one(
            "SELECT locked_by FROM lettuce.jobs WHERE id = $1",
            &[&record],
        )
        .await
        .unwrap()
        .get(0);
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait_exit(Duration::from_secs(30)).await, Some(0));

    let requests = received.lock().unwrap().clone();
    assert!(
        *gzipped.lock().unwrap() >= 2,
        "both processes export gzip-compressed"
    );
    let all = exported(&requests);
    let spans: Vec<&PSpan> = all.iter().map(|(_, s)| s).collect();
    let span_names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let find = |pred: &dyn Fn(&PSpan) -> bool, what: &str| -> &PSpan {
        spans
            .iter()
            .copied()
            .find(|s| pred(s))
            .unwrap_or_else(|| panic!("no {what} among {span_names:?}"))
    };

    // Resource: the worker's spans name the worker id.
    let (resource, _) = all
        .iter()
        .find(|(_, s)| s.name == "job.diag.record")
        .expect("the job span");
    assert_eq!(
        find_attr(resource, "service.instance.id"),
        s(&worker_id),
        "service.instance.id is the worker id"
    );
    // No noise on any span.
    for span in &spans {
        for noise in [
            "code.filepath",
            "code.file.path",
            "code.namespace",
            "code.lineno",
            "code.line.number",
            "thread.id",
            "thread.name",
            "busy_ns",
            "idle_ns",
            "target",
        ] {
            assert_eq!(pattr(span, noise), None, "{noise} on {}", span.name);
        }
    }

    // The CLI's producer span parents the job span.
    let producer = find(
        &|s| s.name == "enqueue default" && s.kind == 4,
        "PRODUCER span enqueue default",
    );
    assert_eq!(pattr(producer, "messaging.system"), s("lettuce"));
    assert_eq!(pattr(producer, "messaging.operation.type"), s("send"));
    assert_eq!(pattr(producer, "messaging.destination.name"), s("default"));
    assert_eq!(
        pattr(producer, "messaging.message.id"),
        s(&record.to_string())
    );
    let job = find(&|s| s.name == "job.diag.record", "job.diag.record");
    assert_eq!(job.trace_id, producer.trace_id, "one trace");
    assert_eq!(job.parent_span_id, producer.span_id);
    assert_eq!(pattr(job, "messaging.system"), s("lettuce"));
    assert_eq!(pattr(job, "messaging.operation.type"), s("process"));
    assert_eq!(pattr(job, "messaging.destination.name"), s("default"));
    assert_eq!(pattr(job, "messaging.message.id"), s(&record.to_string()));
    assert_eq!(pattr(job, "error.type"), None);

    // The handler's SQL is a client span under the job span.
    let sql = find(&|s| s.name == "db.record_execution", "db.record_execution");
    assert_eq!(sql.parent_span_id, job.span_id);
    assert_eq!(sql.trace_id, job.trace_id);
    assert_eq!(sql.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(pattr(sql, "db.system.name"), s("postgresql"));
    assert_eq!(pattr(sql, "db.operation.name"), s("INSERT"));
    assert_eq!(
        pattr(sql, "db.collection.name"),
        s("lettuce.diag_executions")
    );
    let text = match pattr(sql, "db.query.text") {
        Some(any_value::Value::StringValue(t)) => t,
        other => panic!("db.query.text: {other:?}"),
    };
    // Placeholders, never the values (the worker id is the third parameter).
    assert!(text.contains("$3") && !text.contains(&worker_id), "{text}");
    assert!(pattr(sql, "server.address").is_some(), "server.address");

    // Links: claim → producer, job → claim, completion → job, heartbeat → sleeper's job.
    let claim = find(
        &|s| s.name == "db.claim_batch" && links_to(job, s),
        "the claim span the job links to",
    );
    assert!(links_to(claim, producer), "the claim links to the producer");
    find(
        &|s| s.name == "db.complete_batch" && links_to(s, job),
        "a completion linked to the job",
    );
    let sleep_job = find(&|s| s.name == "job.diag.sleep", "job.diag.sleep");
    find(
        &|s| s.name == "db.heartbeat" && links_to(s, sleep_job),
        "a heartbeat linked to the sleeper",
    );

    // The failed attempt: error.type, and its JSON log line carries the span's ids.
    let failed = find(
        &|s| {
            s.name == "job.diag.fail"
                && pattr(s, "job.attempt") == Some(any_value::Value::IntValue(1))
        },
        "attempt 1 of diag.fail",
    );
    assert_eq!(pattr(failed, "error.type"), s("handler_error"));
    let lines = worker.output();
    let line: serde_json::Value = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"] == "attempt failed" && v["fields"]["job.id"] == json!(fail)
        })
        .unwrap_or_else(|| panic!("no attempt-failed line in:\n{}", lines.join("\n")));
    assert_eq!(line["trace_id"], json!(hex(&failed.trace_id)), "{line}");
    assert_eq!(line["span_id"], json!(hex(&failed.span_id)), "{line}");
    assert_eq!(line["level"], "WARN", "the usual fields stay: {line}");
    // A line outside any span carries none.
    let ready = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "worker ready")
        .expect("the ready line");
    assert!(ready.get("trace_id").is_none(), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_propagator_or_compression_is_refused_by_name() {
    let db = TestDb::new().await;
    for (var, value) in [
        ("OTEL_PROPAGATORS", "tracecontext,b3"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "brotli"),
    ] {
        let mut env = db.env();
        env.insert(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{}", free_addr()),
        );
        env.insert(var.into(), value.into());
        for args in [&["run"][..], &["enqueue", "diag.noop"][..]] {
            let (code, _, err) = run_worker(args, &env);
            assert_eq!(code, 2, "{var}={value} {args:?}: {err}");
            assert!(
                err.contains(&format!("ConfigError: {var}:")),
                "{var}={value}: {err}"
            );
        }
    }
}

/// Issue 15: every provider request is an HTTP client span under the job span that made it,
/// with the URL but never a credential. `repo.webhook.ensure` through the binary against the
/// fake GitHub, traces exported to the test receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_requests_are_client_spans_under_the_job_span() {
    use xtests::fake_github::{AppKey, FakeGithub};
    const APP_ID: u64 = 616161;
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    fake.add_installation(7, "acme");
    fake.add_repo(7, "acme/app", "main");
    let db = TestDb::new().await;
    let extra = [
        ("GITHUB_SERVER_URL", fake.base.clone()),
        ("LETTUCE_WEB_URL", "https://lettuce.acme.test".into()),
        ("LETTUCE_WEBHOOK_SECRET", "span-test-secret".into()),
    ];
    let (_, requests) = one_github_job(
        &db,
        &key,
        &fake,
        APP_ID,
        &extra,
        "SELECT lettuce.enqueue('repo.webhook.ensure', '{\"provider\": \"github\", \"repo\": \"acme/app\", \"installation_id\": 7, \"account_id\": 99}')",
    )
    .await;
    let all = exported(&requests);
    let spans: Vec<&PSpan> = all.iter().map(|(_, s)| s).collect();
    let job = spans
        .iter()
        .find(|s| s.name == "job.repo.webhook.ensure")
        .unwrap_or_else(|| {
            panic!(
                "no job span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    let http: Vec<&&PSpan> = spans
        .iter()
        .filter(|s| {
            s.trace_id == job.trace_id && find_attr(&s.attributes, "http.request.method").is_some()
        })
        .collect();
    let urls: Vec<String> = http
        .iter()
        .filter_map(|s| match find_attr(&s.attributes, "url.full") {
            Some(any_value::Value::StringValue(u)) => Some(u),
            _ => None,
        })
        .collect();
    for want in [
        "/app/installations/7/access_tokens",
        "/repos/acme/app",
        "/repos/acme/app/hooks",
    ] {
        assert!(
            urls.iter().any(|u| u.ends_with(want)),
            "no request to {want} under the job: {urls:?}"
        );
    }
    for span in &http {
        assert_eq!(
            span.parent_span_id, job.span_id,
            "{} is a child of the job span",
            span.name
        );
        assert_eq!(span.kind, 3, "client kind");
    }
    let text = format!("{requests:?}");
    assert!(
        !text.contains("span-test-secret"),
        "the webhook secret reached a span"
    );
    for s in fake.secrets_seen() {
        for part in s.split('.').filter(|p| p.len() >= 20) {
            assert!(!text.contains(part), "a credential reached a span");
        }
    }
}

/// `job.repo.index` has `repo.fetch`, `repo.parse` and `repo.upload` children carrying what they
/// moved: the commit and the tree's size, the parse counts, the artifacts' bytes.
#[tokio::test(flavor = "multi_thread")]
async fn repo_index_spans_fetch_parse_and_upload_under_the_job_with_sizes_and_counts() {
    use xtests::fake_github::{AppKey, FakeGithub};
    use xtests::git_server::GitServer;
    const APP_ID: u64 = 616161;
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    fake.add_installation(7, "acme");
    fake.add_repo(7, "acme/widgets", "main");
    let git = GitServer::start().await;
    git.require_checked("x-access-token", Arc::new(fake.token_checker()));
    let work = git.create_repo("acme/widgets");
    work.write("src/lib.rs", "pub fn one() {}\npub struct Two;\n");
    work.write("app.py", "def three():\n    pass\n");
    work.write("README.md", "# widgets\n");
    let commit = work.commit("first");

    let db = TestDb::new().await;
    let (id, requests) = one_github_job(
        &db,
        &key,
        &fake,
        APP_ID,
        &[("GITHUB_SERVER_URL", git.base())],
        "SELECT lettuce.enqueue('repo.index', '{\"provider\": \"github\", \"repo\": \"acme/widgets\", \"installation_id\": 7}')",
    )
    .await;
    let all = exported(&requests);
    let spans: Vec<&PSpan> = all.iter().map(|(_, s)| s).collect();
    let names = || spans.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let job = spans
        .iter()
        .find(|s| s.name == "job.repo.index")
        .unwrap_or_else(|| panic!("no job span among {:?}", names()));
    let child = |name: &str| -> &PSpan {
        spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id == job.span_id)
            .unwrap_or_else(|| panic!("no {name} under the job span among {:?}", names()))
    };
    let int = |span: &PSpan, key: &str| match pattr(span, key) {
        Some(any_value::Value::IntValue(n)) => n,
        other => panic!("{}: {key} is {other:?}", span.name),
    };
    let fetch = child("repo.fetch");
    assert_eq!(pattr(fetch, "git.commit"), s(&commit));
    assert_eq!(
        pattr(fetch, "git.fresh_clone"),
        Some(any_value::Value::BoolValue(true))
    );
    assert_eq!(int(fetch, "git.files"), 3);
    assert!(int(fetch, "git.bytes") > 0);

    let parse = child("repo.parse");
    assert_eq!(int(parse, "index.files"), 3);
    assert_eq!(int(parse, "index.parsed"), 2);
    assert_eq!(int(parse, "index.carried"), 0);
    assert_eq!(int(parse, "index.symbols"), 3);
    assert!(int(parse, "index.bytes_parsed") > 0);
    assert!(fetch.end_time_unix_nano <= parse.start_time_unix_nano);

    let upload = child("repo.upload");
    assert_eq!(int(upload, "artifacts.count"), 3);
    let on_disk: u64 = ["files.jsonl.zst", "symbols.jsonl.zst", "manifest.json"]
        .iter()
        .map(|name| {
            let path = std::path::Path::new(&db.env()["CODEWAZE_DATA_DIR"])
                .join("artifacts")
                .join(format!("jobs/{id}/attempt-1/{name}"));
            std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .len()
        })
        .sum();
    assert_eq!(int(upload, "artifacts.bytes") as u64, on_disk);
    assert!(parse.end_time_unix_nano <= upload.start_time_unix_nano);

    let text = format!("{requests:?}");
    for secret in fake.secrets_seen() {
        for part in secret.split('.').filter(|p| p.len() >= 20) {
            assert!(!text.contains(part), "a credential reached a span");
        }
    }
}

/// Runs the worker binary configured for the fake GitHub App (plus `extra`) and exporting spans
/// to a loopback OTLP receiver, enqueues one job with `enqueue_sql`, waits for it to complete,
/// stops the worker (which flushes the spans) and returns the job id and every export request.
async fn one_github_job(
    db: &TestDb,
    key: &xtests::fake_github::AppKey,
    fake: &xtests::fake_github::FakeGithub,
    app_id: u64,
    extra: &[(&str, String)],
    enqueue_sql: &str,
) -> (i64, Vec<ExportTraceServiceRequest>) {
    let (addr, received) = otlp_receiver().await;
    let mut env = db.env();
    for (k, v) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ("GITHUB_APP_ID", app_id.to_string()),
        ("GITHUB_APP_NAME", "lettuce-test".into()),
        ("GITHUB_APP_PRIVATE_KEY", key.base64_pem()),
        ("GITHUB_APP_CLIENT_ID", "Iv1.0123456789abcdef".into()),
        ("GITHUB_APP_CLIENT_SECRET", "ghcs-client-secret".into()),
        ("GITHUB_API_URL", fake.api_url()),
    ] {
        env.insert(k.into(), v);
    }
    for (k, v) in extra {
        env.insert((*k).into(), v.clone());
    }
    let mut worker = WorkerProcess::start(&["run"], &env);
    worker.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    let id: i64 = client.query_one(enqueue_sql, &[]).await.unwrap().get(0);
    let (state, _, errors) = wait_final(&client, id, Duration::from_secs(60)).await;
    assert_eq!(state, "completed", "{errors}");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait_exit(Duration::from_secs(30)).await, Some(0));
    let requests = received.lock().unwrap().clone();
    (id, requests)
}
