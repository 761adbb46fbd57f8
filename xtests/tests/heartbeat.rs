//! The daily telemetry heartbeat (README "Telemetry") against a real HTTP receiver on loopback and real
//! Postgres: once per instance per day across replicas, the exact twelve-field body with values
//! read back from the database, receipts, retries after 500 / hang / refused connection,
//! redirects, the 7-day warning, and dev mode sending nothing.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use lettuce_worker::WorkerHandle;
use lettuce_worker::config::Config;
use lettuce_worker::heartbeat::{HeartbeatConfig, HeartbeatHandle};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Client;
use xtests::{TestDb, eventually};

// ---- the receiver ---------------------------------------------------------------------------

/// How the receiver answers.
#[derive(Clone, Debug)]
enum Mode {
    Ok,
    Fail(u16),
    /// Never answers (the worker's timeout must cut it).
    Hang,
    /// 307 to this location.
    Redirect(String),
}

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Recorded {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

#[derive(Default)]
struct ReceiverState {
    mode: Mutex<Option<Mode>>,
    seen: Mutex<Vec<Recorded>>,
}

/// A tiny HTTP server on 127.0.0.1:0 that records every request.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let state = Arc::new(ReceiverState::default());
        *state.mode.lock().unwrap() = Some(mode);
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            addr,
            state,
            _server: server,
        }
    }
    fn url(&self) -> String {
        format!("http://{}/v1/heartbeat", self.addr)
    }
    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }
    fn seen(&self) -> Vec<Recorded> {
        self.state.seen.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.seen.lock().unwrap().push(Recorded {
        method,
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    });
    // A same-host redirect lands here and is always accepted.
    if uri.path() == "/moved" {
        return StatusCode::OK.into_response();
    }
    let mode = state.mode.lock().unwrap().clone().unwrap();
    match mode {
        Mode::Ok => (StatusCode::ACCEPTED, "thanks").into_response(),
        Mode::Fail(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Mode::Redirect(to) => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
        }
    }
}

// ---- log capture ----------------------------------------------------------------------------

/// Everything the worker logged in this test process (the subscriber is global).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info")
            .with_writer(move || Capture(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // `XTESTS_LOG=1` also shows the worker's logs, for debugging a failing test.
        if std::env::var_os("XTESTS_LOG").is_some() {
            let _ = std::io::stderr().write_all(b);
        }
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines containing every one of `needles`.
fn log_lines(needles: &[&str]) -> usize {
    let buf = logs();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

// ---- workers --------------------------------------------------------------------------------

/// A worker in this process with an explicit heartbeat config (what boot will pass when the
/// license makes telemetry effective), started through the same `lettuce_worker::Worker` as
/// `worker run`, its probes on a port the test bound.
struct Worker {
    worker: WorkerHandle,
}

impl Worker {
    async fn start(env: &HashMap<String, String>, heartbeat: Option<HeartbeatConfig>) -> Worker {
        logs();
        let config = Config::load(env).expect("test config loads");
        let facts = lettuce_worker::boot::gates(&config, OffsetDateTime::now_utc()).expect("gates");
        let registry = lettuce_worker::handlers::registry_for(&config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let worker = lettuce_worker::Worker::new(config, facts, registry)
            .listener(listener)
            .heartbeat(heartbeat);
        let worker = tokio::time::timeout(Duration::from_secs(30), worker.start())
            .await
            .expect("ready within 30s")
            .expect("worker started");
        Worker { worker }
    }

    fn heartbeat(&self) -> &HeartbeatHandle {
        self.worker
            .runtime()
            .heartbeat
            .as_ref()
            .expect("heartbeat runs")
    }

    /// `/metrics` as the HTTP endpoint serves it.
    async fn metrics(&self) -> String {
        let addr = self.worker.http_addr.expect("probes served");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.worker
            .shutdown()
            .await
            .expect("worker stopped cleanly");
    }
}

/// A clock the test can move, in whole seconds from the real one.
fn movable_clock() -> (lettuce_worker::heartbeat::Clock, Arc<AtomicI64>) {
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock = Arc::new(move || {
        OffsetDateTime::now_utc() + time::Duration::seconds(o.load(Ordering::SeqCst))
    });
    (clock, offset)
}

/// Fast timings for tests; license facts of a made-up customer.
fn fast(url: &str) -> HeartbeatConfig {
    let mut c = HeartbeatConfig::new(url, "lic-42", "Acme Corp", Some(25), None);
    c.interval = Duration::from_millis(150);
    c.first_delay_max = Duration::from_millis(100);
    c.retry_base = Duration::from_millis(300);
    c.retry_max = Duration::from_secs(1);
    c.timeout = Duration::from_secs(1);
    c
}

/// Runs one activation on purpose and waits for it to finish.
async fn activate(hb: &HeartbeatHandle) {
    let before = hb.activations();
    hb.trigger();
    eventually(Duration::from_secs(10), "a forced activation", || async {
        (hb.activations() > before).then_some(())
    })
    .await;
}

async fn receipt(c: &Client) -> Option<OffsetDateTime> {
    c.query_one(
        "SELECT telemetry_last_receipt_at FROM lettuce.instance",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn set_receipt(c: &Client, at: OffsetDateTime) {
    c.execute(
        "UPDATE lettuce.instance SET telemetry_last_receipt_at = $1",
        &[&at],
    )
    .await
    .unwrap();
}

/// What the movable clock reads.
fn now(offset: &AtomicI64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::seconds(offset.load(Ordering::SeqCst))
}

fn today() -> String {
    OffsetDateTime::now_utc().date().to_string()
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_started_together_send_exactly_one_post() {
    let db = TestDb::new().await;
    let rx = Receiver::start(Mode::Ok).await;
    let env = db.env();
    // Production first delay (up to 2 s); a short interval so many activations race.
    let cfg = || {
        let mut c = fast(&rx.url());
        c.first_delay_max = HeartbeatConfig::new("", "", "", None, None).first_delay_max;
        c
    };
    let (a, b, c) = tokio::join!(
        Worker::start(&env, Some(cfg())),
        Worker::start(&env, Some(cfg())),
        Worker::start(&env, Some(cfg())),
    );
    let ready = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the day's first heartbeat within 10 s of ready",
        || async { (rx.count() >= 1).then_some(()) },
    )
    .await;
    let first_after = ready.elapsed();
    // Give every replica at least five more activations: none may send again today.
    let marks: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|w| w.heartbeat().activations())
        .collect();
    eventually(
        Duration::from_secs(20),
        "five more activations each",
        || {
            let done = [&a, &b, &c]
                .iter()
                .zip(&marks)
                .all(|(w, m)| w.heartbeat().activations() >= m + 5);
            async move { done.then_some(()) }
        },
    )
    .await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 1, "exactly one POST for three replicas");
    let total_sent: u64 = [&a, &b, &c].iter().map(|w| w.heartbeat().sent()).sum();
    assert_eq!(total_sent, 1);
    let req = &seen[0];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/v1/heartbeat");
    assert_eq!(
        req.headers[header::USER_AGENT],
        format!("lettuce-worker/{}", lettuce_worker::VERSION).as_str()
    );
    assert_eq!(req.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(req.json()["day"], today());

    let client = db.client().await;
    assert!(receipt(&client).await.is_some(), "2xx stored as a receipt");
    let row = client
        .query_one(
            "SELECT count(*), min(attempts), bool_and(sent_at IS NOT NULL) FROM lettuce.telemetry_heartbeats",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(row.get::<_, bool>(2));
    eprintln!("first heartbeat {first_after:?} after the replicas were ready");
    for w in [a, b, c] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_has_exactly_the_twelve_fields_with_values_from_the_database() {
    let db = TestDb::new().await;
    let rx = Receiver::start(Mode::Ok).await;
    let env = db.env();
    // Apply the schema first and seed jobs and another replica's presence row.
    {
        let config = Config::load(&env).unwrap();
        let pool = lettuce_worker::boot::connect(&config).await.unwrap();
        lettuce_worker::boot::schema(&pool).await.unwrap();
    }
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO lettuce.jobs (kind, state, finished_at)
             SELECT 'seed', s, now() - h * interval '1 hour'
               FROM (VALUES ('completed', 1), ('completed', 2), ('completed', 3), ('completed', 23),
                            ('completed', 30),
                            ('discarded', 2), ('discarded', 5), ('discarded', 25),
                            ('cancelled', 1)) AS v(s, h);
             INSERT INTO lettuce.jobs (kind, state, run_at) VALUES ('seed', 'scheduled', now() + interval '1 day');
             INSERT INTO lettuce.workers (id, hostname, pid, version) VALUES ('other-replica', 'h2', 7, '0.0.9');",
        )
        .await
        .unwrap();
    let before = OffsetDateTime::now_utc();
    let w = Worker::start(&env, Some(fast(&rx.url()))).await;
    eventually(Duration::from_secs(10), "one heartbeat", || async {
        (rx.count() >= 1).then_some(())
    })
    .await;
    let body = rx.seen()[0].json();
    let obj = body.as_object().expect("a JSON object");

    // The contract: exactly these twelve names. Adding, renaming or dropping a field fails here.
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = vec![
        "schema",
        "instance_id",
        "day",
        "license_id",
        "customer",
        "version",
        "sent_at",
        "seats_licensed",
        "repos_licensed",
        "workers_active",
        "jobs_completed_24h",
        "jobs_failed_24h",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);

    // Types and values, each checked against its source.
    assert_eq!(body["schema"], serde_json::json!(1));
    assert!(body["schema"].is_u64());
    let instance_id: String = client
        .query_one("SELECT instance_id::text FROM lettuce.instance", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(body["instance_id"], instance_id.as_str());
    assert_eq!(body["day"], today());
    assert_eq!(body["license_id"], "lic-42");
    assert_eq!(body["customer"], "Acme Corp");
    assert_eq!(body["version"], lettuce_worker::VERSION);
    let sent_at =
        OffsetDateTime::parse(body["sent_at"].as_str().expect("sent_at string"), &Rfc3339)
            .expect("sent_at is RFC 3339");
    assert!(
        sent_at >= before.replace_nanosecond(0).unwrap() && sent_at <= OffsetDateTime::now_utc()
    );
    assert_eq!(body["seats_licensed"], serde_json::json!(25));
    assert!(body["repos_licensed"].is_null());
    let (workers, completed, failed): (i64, i64, i64) = {
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM lettuce.workers),
                        count(*) FILTER (WHERE state = 'completed' AND finished_at >= now() - interval '24 hours'),
                        count(*) FILTER (WHERE state = 'discarded' AND finished_at >= now() - interval '24 hours')
                   FROM lettuce.jobs",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((workers, completed, failed), (2, 4, 2), "seeded figures");
    assert_eq!(body["workers_active"], serde_json::json!(workers));
    assert_eq!(body["jobs_completed_24h"], serde_json::json!(completed));
    assert_eq!(body["jobs_failed_24h"], serde_json::json!(failed));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_retry_with_backoff_the_same_day_without_blocking_jobs() {
    let db = TestDb::new().await;
    let rx = Receiver::start(Mode::Fail(500)).await;
    let env = db.env();
    let cfg = fast(&rx.url());
    let retry_base = cfg.retry_base;
    let w = Worker::start(&env, Some(cfg)).await;
    let client = db.client().await;

    // 500: retried, with at least the backoff between attempts, no receipt.
    eventually(
        Duration::from_secs(15),
        "three attempts answered 500",
        || async { (rx.count() >= 3).then_some(()) },
    )
    .await;
    let seen = rx.seen();
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= retry_base.mul_f64(0.9),
            "retry came {gap:?} after the last attempt, before the backoff"
        );
        assert_eq!(
            pair[0].json()["day"],
            pair[1].json()["day"],
            "a retry stands for the same day"
        );
    }
    assert!(receipt(&client).await.is_none());
    let row = client
        .query_one(
            "SELECT attempts, last_status, sent_at IS NULL FROM lettuce.telemetry_heartbeats",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, i32>(0) >= 3);
    assert_eq!(row.get::<_, Option<i32>>(1), Some(500));
    assert!(row.get::<_, bool>(2));

    // A receiver that hangs: the request is cut by the timeout, and jobs keep running meanwhile.
    rx.set(Mode::Hang);
    let hung_from = rx.count();
    let jobs: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(xtests::enqueue_sql(&client, "diag.noop", serde_json::json!({})).await);
        }
        ids
    };
    for id in jobs {
        let (state, _, _) = xtests::wait_final(&client, id, Duration::from_secs(20)).await;
        assert_eq!(state, "completed");
    }
    eventually(
        Duration::from_secs(15),
        "a timed-out attempt recorded",
        || {
            let client = &client;
            let rx = &rx;
            async move {
                let err: Option<String> = client
                    .query_one("SELECT last_error FROM lettuce.telemetry_heartbeats", &[])
                    .await
                    .unwrap()
                    .get(0);
                (rx.count() > hung_from && err.is_some_and(|e| e.contains("timed out")))
                    .then_some(())
            }
        },
    )
    .await;
    assert!(receipt(&client).await.is_none());

    // The receiver recovers: a later retry the same day gets the receipt, then it stops.
    rx.set(Mode::Ok);
    let got = eventually(Duration::from_secs(15), "a receipt after recovery", || {
        let client = &client;
        async move { receipt(client).await }
    })
    .await;
    assert!(got <= OffsetDateTime::now_utc());
    let after = rx.count();
    let mark = w.heartbeat().activations();
    eventually(Duration::from_secs(10), "five more activations", || async {
        (w.heartbeat().activations() >= mark + 5).then_some(())
    })
    .await;
    assert_eq!(rx.count(), after, "nothing sent after today's receipt");
    // `/metrics` counts them.
    let text = w.metrics().await;
    let count = |result: &str| -> u64 {
        let series = format!("lettuce_telemetry_heartbeats_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(count("sent"), 1, "{text}");
    assert_eq!(count("failed"), w.heartbeat().failed());
    assert!(count("failed") >= 3, "{text}");
    assert!(
        rx.seen().iter().all(|r| r.json()["day"] == today()),
        "every attempt stood for today"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_connection_is_retried_later() {
    let db = TestDb::new().await;
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let w = Worker::start(
        &db.env(),
        Some(fast(&format!("http://127.0.0.1:{port}/v1/heartbeat"))),
    )
    .await;
    let client = db.client().await;
    // `attempts` counts claims, so it reaches 2 while the second POST is still in flight;
    // wait for that attempt's failure to be counted too.
    eventually(Duration::from_secs(15), "two refused attempts", || {
        let client = &client;
        let failed = w.heartbeat().failed();
        async move {
            let r = client
                .query_opt(
                    "SELECT attempts, last_error FROM lettuce.telemetry_heartbeats",
                    &[],
                )
                .await
                .unwrap()?;
            let attempts: i32 = r.get(0);
            let err: Option<String> = r.get(1);
            (attempts >= 2 && failed >= 2 && err.is_some()).then_some(err)
        }
    })
    .await;
    assert_eq!(w.heartbeat().sent(), 0);
    assert!(receipt(&client).await.is_none());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_to_another_host_are_not_followed_but_same_host_ones_are() {
    // Another host: `localhost` is not the `127.0.0.1` the URL names.
    let db = TestDb::new().await;
    let other = Receiver::start(Mode::Ok).await;
    let rx = Receiver::start(Mode::Redirect(format!(
        "http://localhost:{}/v1/heartbeat",
        other.addr.port()
    )))
    .await;
    let w = Worker::start(&db.env(), Some(fast(&rx.url()))).await;
    let client = db.client().await;
    eventually(
        Duration::from_secs(15),
        "two redirected attempts",
        || async { (rx.count() >= 2).then_some(()) },
    )
    .await;
    assert_eq!(other.count(), 0, "the other host saw nothing");
    assert!(receipt(&client).await.is_none());
    let status: Option<i32> = client
        .query_one("SELECT last_status FROM lettuce.telemetry_heartbeats", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, Some(307));
    w.stop().await;

    // The same host: followed, with the body kept (307), and the 200 there is the receipt.
    let db = TestDb::new().await;
    let rx = Receiver::start(Mode::Redirect("/moved".to_string())).await;
    let w = Worker::start(&db.env(), Some(fast(&rx.url()))).await;
    let client = db.client().await;
    eventually(Duration::from_secs(15), "a receipt via /moved", || {
        let client = &client;
        async move { receipt(client).await }
    })
    .await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/moved");
    assert_eq!(seen[1].method, Method::POST);
    assert_eq!(seen[0].body, seen[1].body);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seven_days_without_receipt_warns_once_a_day() {
    let db = TestDb::new().await;
    let rx = Receiver::start(Mode::Fail(503)).await;
    let (clock, offset) = movable_clock();
    let mut cfg = fast(&rx.url());
    cfg.clock = clock;
    // Only forced activations from here on.
    cfg.interval = Duration::from_secs(3600);
    let url = rx.url();
    let warned = || log_lines(&["No telemetry receipt verified in 7 days", &url]);

    // Seed an instance created 8 days ago that never got a receipt.
    {
        let config = Config::load(&db.env()).unwrap();
        let pool = lettuce_worker::boot::connect(&config).await.unwrap();
        lettuce_worker::boot::schema(&pool).await.unwrap();
    }
    let client = db.client().await;
    client
        .batch_execute("UPDATE lettuce.instance SET created_at = now() - interval '8 days'")
        .await
        .unwrap();
    let w = Worker::start(&db.env(), Some(cfg)).await;
    let hb = w.heartbeat();
    eventually(Duration::from_secs(10), "the first activation", || async {
        (hb.activations() >= 1).then_some(())
    })
    .await;
    assert_eq!(warned(), 1, "never a receipt in 8 days: warned");
    for _ in 0..3 {
        activate(hb).await;
    }
    assert_eq!(warned(), 1, "once a day, not once an activation");

    // A receipt silences it, even after the day moves on.
    rx.set(Mode::Ok);
    offset.store(86_400, Ordering::SeqCst);
    activate(hb).await;
    assert!(receipt(&client).await.is_some());
    activate(hb).await;
    assert_eq!(warned(), 1);

    // Move the stored receipt back 8 days and go to the next day: warned again, once.
    rx.set(Mode::Fail(500));
    offset.store(2 * 86_400, Ordering::SeqCst);
    set_receipt(&client, now(&offset) - time::Duration::days(8)).await;
    activate(hb).await;
    assert_eq!(warned(), 2);
    activate(hb).await;
    assert_eq!(warned(), 2);

    // A 6-day-old receipt is no reason to warn, on any day.
    offset.store(3 * 86_400, Ordering::SeqCst);
    set_receipt(&client, now(&offset) - time::Duration::days(6)).await;
    activate(hb).await;
    assert_eq!(warned(), 2);

    // check-config's view of the same state.
    let config = Config::load(&db.env()).unwrap();
    let pool = lettuce_worker::boot::connect(&config).await.unwrap();
    let status = lettuce_worker::heartbeat::status(&pool, now(&offset))
        .await
        .unwrap();
    assert_eq!(status.receipt_age.unwrap().whole_days(), 6);
    assert!(!status.receipt_stale);
    assert!(
        status.describe().starts_with("last receipt 6 d ago"),
        "{}",
        status.describe()
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_mode_never_sends() {
    // Dev mode: no license, so boot passes no heartbeat config, even with a receiver URL set.
    let dev_db = TestDb::new().await;
    let dev_rx = Receiver::start(Mode::Ok).await;
    let mut env = dev_db.env();
    env.insert("LETTUCE_TELEMETRY_URL".into(), dev_rx.url());
    // A control replica with telemetry on, started at the same moment: once it has sent, the
    // dev worker has had every chance to.
    let on_db = TestDb::new().await;
    let on_rx = Receiver::start(Mode::Ok).await;
    let on_env = on_db.env();
    let (dev, on) = tokio::join!(
        Worker::start(&env, None),
        Worker::start(&on_env, Some(fast(&on_rx.url()))),
    );
    assert!(
        dev.worker.runtime().heartbeat.is_none(),
        "no heartbeat task to force"
    );
    eventually(
        Duration::from_secs(10),
        "the control's heartbeat",
        || async { (on_rx.count() >= 1).then_some(()) },
    )
    .await;
    let mark = on.heartbeat().activations();
    eventually(
        Duration::from_secs(10),
        "five more control activations",
        || async { (on.heartbeat().activations() >= mark + 5).then_some(()) },
    )
    .await;

    // The binary too: `worker run` without LETTUCE_SELF_HOSTED.
    let mut bin = xtests::WorkerProcess::start(&["run"], &env);
    bin.wait_ready(Duration::from_secs(30)).await;
    let mark = on.heartbeat().activations();
    eventually(
        Duration::from_secs(10),
        "ten more control activations",
        || async { (on.heartbeat().activations() >= mark + 10).then_some(()) },
    )
    .await;

    assert_eq!(dev_rx.count(), 0, "dev mode sent a heartbeat");
    let rows: i64 = dev_db
        .client()
        .await
        .query_one("SELECT count(*) FROM lettuce.telemetry_heartbeats", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "no heartbeat activation ran in dev mode");
    bin.signal(libc::SIGTERM);
    assert_eq!(bin.wait_exit(Duration::from_secs(30)).await, Some(0));
    dev.stop().await;
    on.stop().await;
}

/// Self-hosted variables for a freshly signed license: the public key and cache in a scratch
/// directory, the receiver at `url`.
fn licensed_env(
    db: &TestDb,
    claims: &lettuce_worker::license::Claims,
    url: &str,
) -> HashMap<String, String> {
    use lettuce_worker::license;
    let dir = std::env::temp_dir().join(format!("{}-lic", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let key = license::generate_signing_key();
    std::fs::write(
        dir.join("public.pem"),
        license::public_key_pem(&key.verifying_key()),
    )
    .unwrap();
    let mut env = db.env();
    for (k, v) in [
        ("LETTUCE_SELF_HOSTED", "true".to_string()),
        ("LETTUCE_LICENSE_KEY", license::sign(claims, &key)),
        (
            "LETTUCE_LICENSE_PUBLIC_KEY",
            dir.join("public.pem").display().to_string(),
        ),
        (
            "LETTUCE_LICENSE_CACHE_PATH",
            dir.join("license.json").display().to_string(),
        ),
        ("LETTUCE_TELEMETRY_URL", url.to_string()),
        // The opt-out: honoured only when the license does not require telemetry.
        ("LETTUCE_TELEMETRY_ENABLED", "false".to_string()),
    ] {
        env.insert(k.into(), v);
    }
    env
}

fn license_claims(required: bool) -> lettuce_worker::license::Claims {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    lettuce_worker::license::Claims {
        sub: "Initech".into(),
        jti: format!("lic-{:08x}", rand::random::<u32>()),
        iat: Some(now - 86_400),
        exp: now + 86_400 * 365,
        nbf: None,
        seats: Some(40),
        repos: Some(300),
        telemetry_required: required,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_sends_the_licensed_heartbeat_and_honours_an_allowed_opt_out() {
    // Required by the license: the operator's opt-out is overridden and the ping goes out,
    // carrying the verified claims.
    let required_db = TestDb::new().await;
    let required_rx = Receiver::start(Mode::Ok).await;
    let required = license_claims(true);
    let mut on = xtests::WorkerProcess::start(
        &["run"],
        &licensed_env(&required_db, &required, &required_rx.url()),
    );
    // Not required: the opt-out is honoured. Started together, so once the first has sent,
    // the second has had the same chance.
    let optional_db = TestDb::new().await;
    let optional_rx = Receiver::start(Mode::Ok).await;
    let mut off = xtests::WorkerProcess::start(
        &["run"],
        &licensed_env(&optional_db, &license_claims(false), &optional_rx.url()),
    );
    on.wait_ready(Duration::from_secs(30)).await;
    off.wait_ready(Duration::from_secs(30)).await;
    let ready = Instant::now();
    while required_rx.count() == 0 {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "no heartbeat within 10 s of ready:\n{}",
            on.output().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("binary: first heartbeat {:?} after ready", ready.elapsed());
    let body = required_rx.seen()[0].json();
    assert_eq!(body["license_id"], required.jti.as_str());
    assert_eq!(body["customer"], "Initech");
    assert_eq!(body["seats_licensed"], serde_json::json!(40));
    assert_eq!(body["repos_licensed"], serde_json::json!(300));
    let client = required_db.client().await;
    eventually(Duration::from_secs(10), "the receipt", || {
        let client = &client;
        async move { receipt(client).await }
    })
    .await;

    off.signal(libc::SIGTERM);
    assert_eq!(off.wait_exit(Duration::from_secs(30)).await, Some(0));
    assert_eq!(
        optional_rx.count(),
        0,
        "an allowed opt-out was not honoured"
    );
    let rows: i64 = optional_db
        .client()
        .await
        .query_one("SELECT count(*) FROM lettuce.telemetry_heartbeats", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    on.signal(libc::SIGTERM);
    assert_eq!(on.wait_exit(Duration::from_secs(30)).await, Some(0));
    assert_eq!(required_rx.count(), 1);
}
