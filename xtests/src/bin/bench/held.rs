//! Issue 19, items 1 and 3: what production saw and the old `xmin` scenario did not.
//!
//! - `held`: 2 worker processes × 16 slots (`LETTUCE_QUEUES=default=16`) offered
//!   [`HELD_RATE`] `diag.sleep {"ms": 40}` jobs/s (their capacity is 32 ÷ 40 ms = 800/s, so the
//!   load is ~75 % of it: the queue keeps up, claims are small and frequent), clean and while
//!   another connection holds an xid (`BEGIN; SELECT txid_current();`) for the whole offered
//!   window, alternated in the same sitting.
//! - `warm`: the same two processes started cold into [`WARM_RATE`] of those jobs/s; pickup p50/p99 per 5-s window
//!   of `run_at` after both said "worker ready".

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use lettuce_worker::NewJob;
use tokio_postgres::Client;
use xtests::TestDb;

use super::{
    Bench, OURS_LEFT, Proc, Report, Via, fmt_rate, fresh_db, median, pickup_percentiles, settle,
    wait_empty,
};

/// Offered jobs/s in both scenarios: the external harness's 600/s.
pub const HELD_RATE: u64 = 600;
/// Offered jobs/s of `warm`: half the capacity, so a backlog can only come from the boot (or
/// from claims getting slower), not from the load itself.
const WARM_RATE: u64 = 400;
/// What each job does: sleep this long (`diag.sleep`), so 16 slots finish at most 400 jobs/s.
const SLEEP_MS: u64 = 40;
const PROCS: usize = 2;
const SLOTS: usize = 16;

/// One run of the `held` scenario.
pub struct HeldRun {
    completed: f64,
    /// Completed/s over the last 10 s of the offered window (where a held xid hurts most).
    last10: f64,
    p50: f64,
    p99: f64,
    max: f64,
    dead: i64,
}

/// Enqueues `n` sleep jobs in one statement.
async fn enqueue_sleep(c: &Client, n: i64) -> Result<()> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|_| NewJob::new("diag.sleep", serde_json::json!({ "ms": SLEEP_MS })))
        .collect();
    lettuce_worker::enqueue_many(c, &jobs).await?;
    Ok(())
}

/// Offers `rate` jobs/s for `secs` in ticks of 10 ms (each tick enqueues what is due by the
/// clock, so a slow statement does not lower the rate). Returns the number offered.
async fn offer(c: &Client, rate: u64, secs: u64) -> Result<i64> {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut offered = 0i64;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= Duration::from_secs(secs) {
            return Ok(offered);
        }
        let due = (rate as f64 * elapsed.as_secs_f64()) as i64 - offered;
        if due > 0 {
            enqueue_sleep(c, due).await?;
            offered += due;
        }
    }
}

impl Bench {
    /// Spawns one worker process of these scenarios (16 slots on `default`).
    fn spawn_small(&self, db: &TestDb) -> Result<Proc> {
        let mut cmd = Command::new(&self.worker_bin);
        cmd.arg("run")
            .env_clear()
            .envs(self.worker_env(db, Via::Direct))
            .env("LETTUCE_QUEUES", format!("default={SLOTS}"));
        for keep in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        Proc::spawn(cmd, "worker ready")
    }

    async fn spawn_procs(&self, db: &TestDb) -> Result<(Vec<Proc>, Instant)> {
        let mut procs = Vec::new();
        let mut ready = Instant::now();
        for _ in 0..PROCS {
            procs.push(self.spawn_small(db)?);
        }
        for p in &mut procs {
            ready = p.wait_ready(Duration::from_secs(30)).await?;
        }
        Ok((procs, ready))
    }

    async fn held_once(&self, hold: bool) -> Result<HeldRun> {
        let secs = self.opts.steady_secs;
        let (db, c) = fresh_db(true).await?;
        settle(&c).await?;
        let (procs, _) = self.spawn_procs(&db).await?;
        let holder = if hold {
            let h = db.client().await;
            h.batch_execute("BEGIN; SELECT txid_current();").await?;
            Some(h)
        } else {
            None
        };
        let producer = db.client().await;
        let t0: String = c.query_one("SELECT now()::text", &[]).await?.get(0);
        let offered = offer(&producer, HELD_RATE, secs).await?;
        let t1: String = c.query_one("SELECT now()::text", &[]).await?.get(0);
        drop(holder);
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE finished_at <= $2::text::timestamptz),
                        count(*) FILTER (WHERE finished_at > $2::text::timestamptz - interval '10 s'
                                           AND finished_at <= $2::text::timestamptz)
                   FROM lettuce.job_history WHERE finished_at >= $1::text::timestamptz",
                &[&t0, &t1],
            )
            .await?;
        let (done, last10): (i64, i64) = (r.get(0), r.get(1));
        let dead: i64 = c
            .query_one(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'lettuce.job_queue'::regclass",
                &[],
            )
            .await?
            .get(0);
        wait_empty(&c, OURS_LEFT, Duration::from_secs(300)).await?;
        for p in procs {
            p.stop().await;
        }
        let (p50, p99, max) =
            pickup_percentiles(&c, "attempted_at - run_at", "lettuce.jobs").await?;
        eprintln!(
            "bench: held={hold}: offered {offered}, completed {done} in window ({:.0}/s), last 10 s {:.0}/s, p50 {p50:.1} p99 {p99:.1} max {max:.1} ms",
            done as f64 / secs as f64,
            last10 as f64 / 10.0
        );
        Ok(HeldRun {
            completed: done as f64 / secs as f64,
            last10: last10 as f64 / 10.0,
            p50,
            p99,
            max,
            dead,
        })
    }

    pub(super) async fn held(&self, report: &mut Report) -> Result<()> {
        let (clean, held) = self
            .clean_and_held("held xid", async |h| self.held_once(h).await)
            .await?;
        let ratio = |f: fn(&HeldRun) -> f64| {
            median(
                &clean
                    .iter()
                    .zip(&held)
                    .map(|(c, h)| f(h) / f(c))
                    .collect::<Vec<_>>(),
            )
        };
        let mut body = format!(
            "{PROCS} worker processes × {SLOTS} slots, {HELD_RATE} `diag.sleep {{\"ms\": {SLEEP_MS}}}` jobs/s \
             offered for {} s (capacity {} jobs/s), clean and while another connection holds an xid \
             (`BEGIN; SELECT txid_current();`) for the whole offered window, alternated; {} round(s). \
             Pickup = `attempted_at - run_at` of every job offered (drained after the window).\n\n\
             | run | completed/s | last 10 s completed/s | pickup p50 ms | p99 ms | max ms | dead tuples in job_queue at the window's end |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
            self.opts.steady_secs,
            PROCS * SLOTS * 1000 / SLEEP_MS as usize,
            self.opts.steady_rounds.max(1),
        );
        for (name, v) in [("clean", &clean), ("held xid", &held)] {
            let m = |f: fn(&HeldRun) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
            body.push_str(&format!(
                "| {name} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} |\n",
                fmt_rate(m(|r| r.completed)),
                fmt_rate(m(|r| r.last10)),
                m(|r| r.p50),
                m(|r| r.p99),
                m(|r| r.max),
                m(|r| r.dead as f64),
            ));
        }
        body.push_str(&format!(
            "\nheld ÷ clean completed/s: **{:.2}** (target ≥ 0.80); pickup p99 held ÷ clean: {:.1}\n",
            ratio(|r| r.completed),
            ratio(|r| r.p99),
        ));
        report.add("Held xid (issue 19)", body);
        Ok(())
    }

    /// Item 3: both processes spawned cold; the load starts when both are ready (`at ready`)
    /// or 3 s before they are spawned (`running`).
    async fn warm_once(&self, load_first: bool) -> Result<Vec<(String, f64, f64, i64)>> {
        let secs = self.opts.steady_secs.max(30);
        let (db, c) = fresh_db(true).await?;
        settle(&c).await?;
        let producer = db.client().await;
        let offering = async {
            if load_first {
                offer(&producer, WARM_RATE, secs + 3).await
            } else {
                Ok(0)
            }
        };
        let start = async {
            if load_first {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let r = self.spawn_procs(&db).await;
            let at: Option<String> = c
                .query_one("SELECT now()::text", &[])
                .await
                .ok()
                .map(|r| r.get(0));
            (r, at)
        };
        // Every 5 s: dead tuples in job_queue and whether autovacuum has visited it yet.
        let watch = db.client().await;
        let sampling = async {
            let mut out = Vec::new();
            for _ in 0..(secs + 8) / 5 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Ok(r) = watch
                    .query_one(
                        "SELECT n_dead_tup, autovacuum_count FROM pg_stat_user_tables
                          WHERE relid = 'lettuce.job_queue'::regclass",
                        &[],
                    )
                    .await
                {
                    out.push(format!("{}/{}", r.get::<_, i64>(0), r.get::<_, i64>(1)));
                }
            }
            out
        };
        let run = async {
            let (offered, (procs, ready_at)) = tokio::join!(offering, start);
            offered?;
            let (procs, _) = procs?;
            let ready_at = ready_at.unwrap_or_default();
            if !load_first {
                offer(&producer, WARM_RATE, secs).await?;
            }
            Ok::<_, anyhow::Error>((procs, ready_at))
        };
        let (run, samples) = tokio::join!(run, sampling);
        let (procs, ready_at) = run?;
        eprintln!(
            "bench:   job_queue dead tuples / autovacuums every 5 s from the start: {}",
            samples.join(" ")
        );
        wait_empty(&c, OURS_LEFT, Duration::from_secs(120)).await?;
        for p in procs {
            p.stop().await;
        }
        let rows = c
            .query(
                "SELECT CASE WHEN run_at < $1::text::timestamptz THEN -1
                             ELSE floor(extract(epoch FROM run_at - $1::text::timestamptz) / 5)::int END AS w,
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), count(*)
                   FROM (SELECT run_at, (extract(epoch FROM attempted_at - run_at) * 1000)::float8 AS ms
                           FROM lettuce.jobs) s
                  GROUP BY 1 ORDER BY 1",
                &[&ready_at],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let w: i32 = r.get(0);
                let name = if w < 0 {
                    "before ready".to_string()
                } else {
                    format!("{}–{} s", w * 5, w * 5 + 5)
                };
                (name, r.get(1), r.get(2), r.get(3))
            })
            .collect())
    }

    pub(super) async fn warm(&self, report: &mut Report) -> Result<()> {
        let mut body = format!(
            "{PROCS} worker processes × {SLOTS} slots spawned cold (schema applied, fresh database) \
             into {WARM_RATE} `diag.sleep {{\"ms\": {SLEEP_MS}}}` jobs/s for {} s; pickup \
             (`attempted_at - run_at`) per 5-s window of `run_at` after both printed \"worker ready\". \
             `at ready`: the load starts when both are ready; `running`: it started 3 s before the \
             spawn (the jobs of those seconds are the `before ready` row); {} round(s), one line each.\n\n\
             | load | round | window | jobs | pickup p50 ms | p99 ms |\n|---|---:|---|---:|---:|---:|\n",
            self.opts.steady_secs.max(30),
            self.opts.steady_rounds.max(1),
        );
        for round in 0..self.opts.steady_rounds.max(1) {
            for load_first in [false, true] {
                eprintln!("bench: warm load_first={load_first}");
                let rows = self.warm_once(load_first).await?;
                let load = if load_first { "running" } else { "at ready" };
                for (w, p50, p99, n) in rows {
                    eprintln!("bench:   {load} {w}: {n} jobs, p50 {p50:.1} p99 {p99:.1} ms");
                    body.push_str(&format!(
                        "| {load} | {} | {w} | {n} | {p50:.1} | {p99:.1} |\n",
                        round + 1
                    ));
                }
            }
        }
        report.add("Pickup after boot (issue 19)", body);
        Ok(())
    }
}
