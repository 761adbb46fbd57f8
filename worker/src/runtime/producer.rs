//! One producer per queue. It only decides *when* and *how many* to claim: never more than the
//! queue's free slots, right away while the last claim came back full, otherwise on a NOTIFY
//! wake-up or the fallback poll — whichever comes first. *Where* a claim starts in claim order
//! is the claim cursor's decision (`claim_cursor.rs`): past the highest key this producer
//! claimed, with a full claim from the start often enough that nothing below it waits long.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::claim_cursor::ClaimCursor;
use super::{Shared, executor, sleep_or_stop};
use crate::db;
use crate::observability::condition::Condition;

pub(crate) async fn run(
    shared: Arc<Shared>,
    queue: String,
    slots: Arc<Semaphore>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    if shared.kinds.is_empty() {
        tracing::warn!(queue = %queue, "no job kinds registered; this worker claims nothing");
        shared.ticks.waiting_for_slots(&queue);
        stop.cancelled().await;
        return;
    }
    let mut error_delay = Duration::from_millis(100);
    // One WARN when claims start failing, a reminder while they do, one INFO when they work again.
    let failing = Condition::new(format!("claims of queue {queue}"));
    let mut cursor = ClaimCursor::default();
    loop {
        // Wait for one free slot, then take every other free slot too. Waiting for a slot is
        // being busy, not being stalled (the watchdog's distinction).
        shared.ticks.tick(&queue);
        let first = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.ticks.waiting_for_slots(&queue);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
                }
            }
        };
        shared.ticks.tick(&queue);
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let wanted = permits.len();
        let from = cursor.next(tokio::time::Instant::now());
        let claimed = db::jobs::claim_batch(
            &shared.pool,
            &queue,
            &shared.kinds,
            wanted as i64,
            &shared.worker.id,
            shared.config.lease,
            from,
        )
        .await;
        match claimed {
            Ok(jobs) => {
                error_delay = Duration::from_millis(100);
                failing.ok();
                shared.database_wrote();
                let got = jobs.len();
                cursor.claimed(
                    from,
                    wanted,
                    jobs.iter().map(|j| j.key()),
                    tokio::time::Instant::now(),
                );
                shared
                    .stats
                    .claimed
                    .fetch_add(got as u64, Ordering::Relaxed);
                for (job, permit) in jobs.into_iter().zip(permits.drain(..)) {
                    executor::spawn(&shared, job, permit);
                }
                drop(permits);
                shared.ticks.tick(&queue);
                if got == wanted {
                    // A full batch: more are likely waiting. Claim again as slots free up.
                    continue;
                }
                // After a short bounded claim, wake up by the time a full claim is due, so a job
                // below the cursor is not left until the poll.
                let wait = cursor
                    .wait_limit(tokio::time::Instant::now())
                    .map_or(shared.config.poll_interval, |d| {
                        d.min(shared.config.poll_interval)
                    });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => {
                drop(permits);
                shared.database_failed(&e);
                shared.ticks.tick(&queue);
                failing.failed(&e);
                if !sleep_or_stop(error_delay, &stop).await {
                    return;
                }
                error_delay = (error_delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
