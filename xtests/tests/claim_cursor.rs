//! Issue 19, item 1: the claim starts past the producer's cursor, and what lands below it is
//! still claimed; under a held xid the bounded claim does not walk the dead entries.

use std::time::Duration;

use serde_json::json;
use tokio_postgres::types::Type;
use xtests::{InProcessWorker, TestDb, enqueue_sql, eventually, scalar, wait_final};

const LIMIT: Duration = Duration::from_secs(60);

/// A higher-priority job enqueued while a backlog runs (its key is below every producer's
/// cursor) jumps the rest of the backlog: the next full claim (at most a second later, while
/// every claim comes back full) takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_higher_priority_job_enqueued_behind_a_running_backlog_is_claimed_before_the_rest() {
    let db = TestDb::new().await;
    let mut env = db.env();
    // 4 slots × 20 ms: at most 200 jobs/s, so 1,500 jobs are a backlog of several seconds.
    env.insert("LETTUCE_QUEUES".into(), "default=4".into());
    let worker = InProcessWorker::start(&env).await;
    let c = db.client().await;
    c.execute(
        "SELECT count(lettuce.enqueue('diag.sleep', '{\"ms\": 20}')) FROM generate_series(1, 1500)",
        &[],
    )
    .await
    .unwrap();
    // The backlog is running (the cursor is past its first rows).
    eventually(LIMIT, "the backlog to start", || async {
        let done: i64 = scalar(&c, "SELECT count(*) FROM lettuce.job_history").await;
        (done >= 50).then_some(())
    })
    .await;
    let urgent: i64 = c
        .query_one(
            "SELECT lettuce.enqueue('diag.noop', '{}', priority => -1)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (state, _, _) = wait_final(&c, urgent, LIMIT).await;
    assert_eq!(state, "completed");
    // Counted once the whole backlog ran: right after the urgent job, the slots may all still
    // hold jobs claimed before it.
    eventually(LIMIT, "the backlog to finish", || async {
        let left: i64 = scalar(&c, "SELECT count(*) FROM lettuce.job_queue").await;
        (left == 0).then_some(())
    })
    .await;
    let after: i64 = c
        .query_one(
            "SELECT count(*) FROM lettuce.jobs
              WHERE kind = 'diag.sleep'
                AND attempted_at > (SELECT attempted_at FROM lettuce.jobs WHERE id = $1)",
            &[&urgent],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        after > 0,
        "the priority -1 job must run before the rest of the backlog, not after it"
    );
    worker.stop().await.unwrap();
}

/// A job whose `run_at` is older than everything claimed so far (an enqueue transaction whose
/// `now()` is older, a hand fix) sorts below the cursor and is still claimed, by the full claim
/// that follows a short bounded one.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_a_run_at_below_the_cursor_is_still_claimed() {
    let db = TestDb::new().await;
    let worker = InProcessWorker::start(&db.env()).await;
    let c = db.client().await;
    for _ in 0..20 {
        let id = enqueue_sql(&c, "diag.noop", json!({})).await;
        wait_final(&c, id, LIMIT).await;
    }
    let old: i64 = c
        .query_one(
            "SELECT lettuce.enqueue('diag.noop', '{}', run_at => now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (state, attempt, _) = wait_final(&c, old, LIMIT).await;
    assert_eq!((state.as_str(), attempt), ("completed", 1));
    worker.stop().await.unwrap();
}

/// `explain` (an `EXPLAIN (…)` prefix) of one claim of 16 by `sql`, in a transaction started by
/// `begin` and rolled back: the JSON plan.
async fn explain_claim(
    c: &tokio_postgres::Client,
    begin: &str,
    explain: &str,
    sql: &str,
    after: Option<(i16, time::OffsetDateTime, i64)>,
) -> serde_json::Value {
    let kinds = vec!["diag.noop".to_string()];
    let (queue, limit, me, lease) = ("default", 16i64, "explain", 60_000f64);
    let (p, r, i) = after.unwrap_or((0, time::OffsetDateTime::UNIX_EPOCH, 0));
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 8] = [
        (&queue, Type::TEXT),
        (&kinds, Type::TEXT_ARRAY),
        (&limit, Type::INT8),
        (&me, Type::TEXT),
        (&lease, Type::FLOAT8),
        (&p, Type::INT2),
        (&r, Type::TIMESTAMPTZ),
        (&i, Type::INT8),
    ];
    let used = if after.is_some() { 8 } else { 5 };
    c.batch_execute(begin).await.unwrap();
    let rows = c
        .query_typed(&format!("{explain} {sql}"), &params[..used])
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    rows[0].get(0)
}

/// One claim of 16 under `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` in the worker's own claim
/// transaction (sorting off), rolled back: (buffers of its SELECT, the `Index Cond` of its scan
/// of `job_queue_fetch_idx`).
async fn claim_buffers(
    c: &tokio_postgres::Client,
    sql: &str,
    after: Option<(i16, time::OffsetDateTime, i64)>,
) -> (i64, String) {
    let plan = explain_claim(
        c,
        lettuce_worker::db::jobs::attempt::CLAIM_BEGIN,
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)",
        sql,
        after,
    )
    .await;
    // The claim's SELECT is the UPDATE's InitPlan: its buffers are the index and heap pages its
    // scan touched (whichever scan the planner chose), its index scan's condition where the
    // scan starts.
    fn find<'a>(node: &'a serde_json::Value, rel: &str, out: &mut Vec<&'a serde_json::Value>) {
        if node["Parent Relationship"] == rel
            || (rel == "index" && node["Index Name"] == "job_queue_fetch_idx")
        {
            out.push(node);
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            find(child, rel, out);
        }
    }
    let (mut init, mut scans) = (Vec::new(), Vec::new());
    find(&plan[0]["Plan"], "InitPlan", &mut init);
    find(&plan[0]["Plan"], "index", &mut scans);
    assert!(init.len() == 1 && scans.len() == 1, "{plan:#}");
    let n = |k: &str| init[0][k].as_i64().unwrap_or(0);
    (
        n("Shared Hit Blocks") + n("Shared Read Blocks"),
        scans[0]["Index Cond"].as_str().unwrap_or("").to_string(),
    )
}

/// Whether any node of an `EXPLAIN (FORMAT JSON)` plan is a Sort.
fn has_sort(node: &serde_json::Value) -> bool {
    node["Node Type"] == "Sort" || node["Plans"].as_array().into_iter().flatten().any(has_sort)
}

/// The queue table's statistics are from when it was empty (as after a boot on an empty queue,
/// until autovacuum's next ANALYZE, up to a minute away): with them the planner would sort the
/// whole backlog on every claim. In the worker's claim transaction it walks the index in order
/// and stops at the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_on_a_queue_analyzed_empty_is_claimed_from_the_index_in_order_not_sorted() {
    let db = TestDb::new().await;
    let (code, _, err) = xtests::run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "{err}");
    let c = db.client().await;
    c.batch_execute("VACUUM ANALYZE lettuce.job_queue")
        .await
        .unwrap();
    c.batch_execute(
        "SELECT count(*) FROM lettuce.enqueue_many('diag.noop',
             (SELECT array_agg('{}'::jsonb) FROM generate_series(1, 20000)))",
    )
    .await
    .unwrap();
    let sql = lettuce_worker::db::jobs::attempt::CLAIM_SQL;
    // Without the claim's settings: the sort over every match (what the claim did before).
    let plain = explain_claim(&c, "BEGIN", "EXPLAIN (FORMAT JSON)", sql, None).await;
    assert!(
        has_sort(&plain[0]["Plan"]),
        "the statistics alone lead to a sort: {plain:#}"
    );
    // The worker's claim transaction: an index scan in order, a handful of pages.
    let (buffers, cond) = claim_buffers(&c, sql, None).await;
    assert!(cond.contains("queue"), "{cond}");
    assert!(
        buffers < 100,
        "{buffers} buffers for a claim of 16 out of 20,000"
    );
}

/// While another session holds an xid, 6,000 jobs are claimed and completed (deleted from
/// `job_queue`) by the worker: none of their index entries or heap rows can be removed. A full
/// claim then walks all of them; the bounded claim from the last claimed key is positioned past
/// them by its index condition and reads a handful of pages. Counted in buffers, not time.
#[tokio::test(flavor = "multi_thread")]
async fn under_a_held_xid_the_bounded_claim_reads_few_pages_where_the_full_claim_reads_all() {
    let db = TestDb::new().await;
    let worker = InProcessWorker::start(&db.env()).await;
    let c = db.client().await;
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    c.execute(
        "SELECT count(lettuce.enqueue('diag.noop', '{}')) FROM generate_series(1, 6000)",
        &[],
    )
    .await
    .unwrap();
    eventually(LIMIT, "6,000 jobs to complete", || async {
        let left: i64 = scalar(&c, "SELECT count(*) FROM lettuce.job_queue").await;
        (left == 0).then_some(())
    })
    .await;
    worker.stop().await.unwrap();
    // The cursor a producer would hold now: the highest key it claimed.
    let r = c
        .query_one(
            "SELECT priority, run_at, id FROM lettuce.job_history
              ORDER BY priority DESC, run_at DESC, id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let cursor: (i16, time::OffsetDateTime, i64) = (r.get(0), r.get(1), r.get(2));
    c.execute(
        "SELECT count(lettuce.enqueue('diag.noop', '{}')) FROM generate_series(1, 100)",
        &[],
    )
    .await
    .unwrap();
    let (full, full_cond) =
        claim_buffers(&c, lettuce_worker::db::jobs::attempt::CLAIM_SQL, None).await;
    let (bounded, bounded_cond) = claim_buffers(
        &c,
        lettuce_worker::db::jobs::attempt::CLAIM_AFTER_SQL,
        Some(cursor),
    )
    .await;
    println!(
        "buffers of the SELECT of a claim of 16 under a held xid over 6,000 dead rows: full {full}, bounded {bounded}"
    );
    println!("full: Index Cond {full_cond}\nbounded: Index Cond {bounded_cond}");
    // The row comparison positions the scan (an index condition after `queue = $1`).
    assert!(
        bounded_cond.contains("ROW(priority, run_at, id) > ROW("),
        "{bounded_cond}"
    );
    assert!(
        full > 150,
        "the full claim walks the dead rows: {full} buffers"
    );
    assert!(
        bounded * 5 < full && bounded < 100,
        "bounded {bounded} buffers against full {full}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
}
