//! Whoever can reach the worker's HTTP port cannot hurt it through it (issue 12, items 5 and
//! 6): label values cannot forge series, slow clients are cut off and capped, scrapes use their
//! own two database connections, a request is answered in bounded time, and `/readyz` says what
//! is wrong in general terms while the details go to the log. Each test drives the real binary
//! against real Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xtests::services::free_port;
use xtests::{TestDb, WorkerProcess, enqueue_sql, eventually, scalar, wait_final};

/// A worker env with its HTTP server on a free loopback port; returns the env and base URL.
fn with_http(db: &TestDb) -> (HashMap<String, String>, String) {
    let mut env = db.env();
    let port = free_port();
    env.insert("LETTUCE_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    (env, format!("http://127.0.0.1:{port}"))
}

/// `(status, body)` of a GET, or `(0, error)`.
async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    match client.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Reproduction of item 5: on dc07b51 a job in this queue added the forged
/// `lettuce_jobs_finished_total{kind="repo.index",outcome="completed"} 999999` line to
/// `/metrics`. The schema refuses the name since item 4, so the test drops that CHECK to store it
/// anyway, as a row written by an older binary or by hand would be.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_queue_name_cannot_add_a_series_to_metrics() {
    let db = TestDb::new().await;
    let (env, base) = with_http(&db);
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE lettuce.job_queue DROP CONSTRAINT job_queue_queue_format")
        .await
        .unwrap();
    let forged = "evil\"} 1\nlettuce_jobs_finished_total{kind=\"repo.index\",outcome=\"completed\"} 999999\n# x{queue=\"";
    client
        .execute(
            "INSERT INTO lettuce.job_queue (kind, queue) VALUES ('diag.noop', $1)",
            &[&forged],
        )
        .await
        .unwrap();
    // A job in a queue the worker serves still runs beside it.
    let id = enqueue_sql(&client, "diag.noop", json!({})).await;
    assert_eq!(
        wait_final(&client, id, Duration::from_secs(30)).await.0,
        "completed"
    );

    let http = reqwest::Client::new();
    let (status, text) = get(&http, &format!("{base}/metrics")).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("lettuce_jobs_finished_total{kind=\"repo.index\"")),
        "a forged series reached /metrics:\n{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("# x")), "{text}");
    // Every line is a comment or one sample of our own families, with well-formed labels.
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        assert!(
            line.starts_with("lettuce_") || line.starts_with("process_"),
            "foreign line {line:?}"
        );
        if let Some((_, labels)) = line.split_once('{') {
            let labels = labels.rsplit_once('}').expect("closed label set").0;
            for pair in labels.split(',') {
                let (_, value) = pair.split_once('=').expect("name=value");
                let value = value.trim_matches('"');
                assert!(
                    value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.:-+".contains(c)),
                    "label value outside the name alphabet in {line:?}"
                );
            }
        }
    }
    // The forged queue is still counted, under its escaped name.
    assert!(
        text.lines().any(|l| l.starts_with(
            "lettuce_queue_depth{queue=\"evil___1_lettuce_jobs_finished_total_kind__repo.index__outcome__completed___999999___x_queue__\",state=\"available\"} 1"
        )),
        "{text}"
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// One client that sends a request head a header at a time, a second apart, never finishing.
async fn trickle(addr: String, closed: Arc<AtomicU64>, started: Instant) -> Option<Duration> {
    let mut s = TcpStream::connect(&addr).await.ok()?;
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .await
        .is_err()
    {
        closed.fetch_add(1, Ordering::SeqCst);
        return Some(started.elapsed());
    }
    let mut buf = [0u8; 1024];
    loop {
        // The server closing the connection shows as EOF, a reset, or a failed write.
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue, // an error response before the close
            Err(_) => {}
        }
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
        if started.elapsed() > Duration::from_secs(40) {
            return None;
        }
    }
    closed.fetch_add(1, Ordering::SeqCst);
    Some(started.elapsed())
}

/// Reproduction of item 6: on dc07b51, 200 connections trickling headers stayed open for as long
/// as the clients liked (no header-read timeout, no cap). Now at most 64 are served, each must
/// send its head within 5 s, the descriptors the worker holds stay bounded, jobs run
/// throughout, and the port answers again as soon as the slow clients are cut off.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_by_the_header_timeout_and_capped_while_jobs_run() {
    let db = TestDb::new().await;
    let (env, base) = with_http(&db);
    let addr = env["LETTUCE_HTTP_ADDR"].clone();
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    let baseline = open_fds(w.pid());

    let closed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(tokio::spawn(trickle(addr.clone(), closed.clone(), started)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Jobs run while the port is flooded: their connections are not the HTTP server's.
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(enqueue_sql(&client, "diag.noop", json!({})).await);
    }
    let mut peak = 0;
    for id in &ids {
        peak = peak.max(open_fds(w.pid()));
        assert_eq!(
            wait_final(&client, *id, Duration::from_secs(30)).await.0,
            "completed"
        );
    }
    for _ in 0..20 {
        peak = peak.max(open_fds(w.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        peak <= baseline + 64 + 16,
        "the worker held {peak} descriptors under 200 slow clients (baseline {baseline})"
    );

    let mut longest = Duration::ZERO;
    for t in slow {
        let took = t
            .await
            .unwrap()
            .expect("a slow client was still connected after 40 s");
        longest = longest.max(took);
    }
    assert_eq!(closed.load(Ordering::SeqCst), 200);
    // The header timeout is 5 s; a second of trickle granularity and scheduling on top.
    assert!(
        longest < Duration::from_secs(12),
        "slowest cut-off after {longest:?}"
    );

    let http = reqwest::Client::new();
    let (status, body) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = get(&http, &format!("{base}/readyz")).await;
    assert_eq!(status, 200);
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// Item 6: `/readyz` and `/metrics` probe over two connections of their own. 32 clients scraping
/// both as fast as they can never hold more than two backends, and 400 jobs on a 4-connection job
/// pool all complete meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_scrapes_uses_two_probe_connections_and_never_starves_the_jobs() {
    let db = TestDb::new().await;
    let (mut env, base) = with_http(&db);
    env.insert("LETTUCE_DB_POOL_SIZE".into(), "4".into());
    env.insert("LETTUCE_QUEUES".into(), "default=8".into());
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut scrapers = Vec::new();
    for i in 0..32 {
        let (stop, answered) = (stop.clone(), answered.clone());
        let url = format!("{base}/{}", if i % 2 == 0 { "metrics" } else { "readyz" });
        scrapers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                if get(&http, &url).await.0 == 200 {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    client
        .batch_execute(
            "SELECT lettuce.enqueue('diag.noop', '{}'::jsonb) FROM generate_series(1, 400)",
        )
        .await
        .unwrap();
    let mut probes_peak = 0i64;
    let flood_started = Instant::now();
    let deadline = flood_started + Duration::from_secs(60);
    loop {
        let probes: i64 = scalar(
            &client,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'lettuce-worker-probe'",
                db.name
            ),
        )
        .await;
        probes_peak = probes_peak.max(probes);
        let left: i64 = scalar(&client, "SELECT count(*) FROM lettuce.job_queue").await;
        // The flood goes on for at least 3 s whatever the jobs do.
        if left == 0 && flood_started.elapsed() >= Duration::from_secs(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} jobs still queued after 60 s of scrapes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        s.await.unwrap();
    }
    let completed: i64 = scalar(
        &client,
        "SELECT count(*) FROM lettuce.job_history WHERE state = 'completed'",
    )
    .await;
    assert_eq!(completed, 400);
    assert!(
        (1..=2).contains(&probes_peak),
        "probe backends peaked at {probes_peak}"
    );
    assert!(
        answered.load(Ordering::Relaxed) >= 100,
        "only {} scrapes answered",
        answered.load(Ordering::Relaxed)
    );
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// A loopback TCP proxy to the test server that can stop forwarding (a database that stops
/// answering without closing anything).
async fn stalling_proxy(upstream: String, stalled: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            tokio::spawn(pump(dr, uw, stalled.clone()));
            tokio::spawn(pump(ur, dw, stalled.clone()));
        }
    });
    port
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Item 6: a database that stops answering leaves the HTTP port in control. `/readyz` answers
/// 503 within its 2 s probe with a general body (the details are logged), `/metrics` is answered
/// within the 10 s request timeout although its depth query never returns, `/healthz` stays 200,
/// and readiness comes back when the database does.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_stops_answering_gets_a_general_readyz_and_a_bounded_scrape() {
    let db = TestDb::new().await;
    let (mut env, base) = with_http(&db);
    let stalled = Arc::new(AtomicBool::new(false));
    let upstream = {
        let rest = db.url.split_once('@').map(|(_, r)| r).unwrap_or("");
        rest.split('/')
            .next()
            .unwrap_or("127.0.0.1:5432")
            .to_string()
    };
    let port = stalling_proxy(upstream.clone(), stalled.clone()).await;
    env.insert(
        "DATABASE_URL".into(),
        db.url.replacen(&upstream, &format!("127.0.0.1:{port}"), 1),
    );
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Both probes have opened their connections through the proxy.
    assert_eq!(get(&http, &format!("{base}/readyz")).await.0, 200);
    assert_eq!(get(&http, &format!("{base}/metrics")).await.0, 200);

    stalled.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let (status, body) = get(&http, &format!("{base}/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: database unreachable\n")
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let t = Instant::now();
    let (status, body) = get(&http, &format!("{base}/metrics")).await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(14),
        "a scrape took {took:?} with the database stalled"
    );
    assert!(
        status == 503 && body == "request timed out\n",
        "{status} {body}"
    );
    let (status, _) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!(status, 200);
    assert!(
        w.printed("readiness probe: database unreachable"),
        "the probe's details were not logged"
    );

    stalled.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(30),
        "/readyz 200 after the database answers again",
        || {
            let http = http.clone();
            let url = format!("{base}/readyz");
            async move { (get(&http, &url).await.0 == 200).then_some(()) }
        },
    )
    .await;
    w.signal(libc::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(30)).await.is_some());
}
