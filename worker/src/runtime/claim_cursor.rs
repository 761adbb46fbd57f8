//! Where a producer's next claim starts (issue 19, item 1).
//!
//! Completion deletes rows from `job_queue`. While another session holds an xid (or an old
//! snapshot) no vacuum can remove those rows and no scan may mark their index entries dead, so
//! a claim that walks `job_queue_fetch_idx` from the start steps over every row claimed since
//! that transaction began: a claim's cost grows with the transaction's age and the queue
//! collapses (BENCHMARKS.md, "Issue 19").
//!
//! So each producer remembers the highest `(priority, run_at, id)` key it claimed and its
//! next claim starts past it (a *bounded* claim, `db::jobs::CLAIM_AFTER_SQL`): it visits only
//! the rows enqueued past the cursor and the ones other workers claimed since. A job can land
//! below the cursor — a higher priority enqueued later, an enqueue whose transaction's `now()`
//! is older than rows already claimed, a job handed back at shutdown, a row another claimer
//! had locked and then released — so a *full* claim from the start still runs:
//!
//! - at the first claim, and while the cursor is unset (nothing claimed yet);
//! - when a bounded claim came back with fewer jobs than asked (the queue is not backlogged
//!   past the cursor) and the last full claim is [`SHORT_FULL_EVERY`] old: the producer also
//!   wakes up by then, so a job below the cursor waits at most that long while slots are free;
//! - at least every [`FULL_EVERY`] even while every claim comes back full (a backlog), so a
//!   higher-priority job enqueued behind a running backlog waits at most that long.
//!
//! Each full claim costs what every claim cost before (a walk over the dead entries of a held
//! transaction); these intervals bound how many there are: at most 5 a second per producer
//! when the queue keeps up, 1 a second under a backlog.

use std::time::Duration;

use tokio::time::Instant;

use crate::db::jobs::ClaimKey;

/// After a short bounded claim, a full claim once the last one is this old. 200 ms: the delay a
/// job below the cursor can see while the worker has free slots, and at most five full scans a
/// second per producer (each costs about a millisecond per 10k dead entries under a held xid).
pub const SHORT_FULL_EVERY: Duration = Duration::from_millis(200);
/// A full claim at least this often, whatever the claims return: the longest a higher-priority
/// job waits behind a backlog for a free slot's claim to see it.
pub const FULL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct ClaimCursor {
    /// The highest key claimed (the bounded claim starts past it); `None`: claim from the start.
    after: Option<ClaimKey>,
    last_full: Option<Instant>,
    /// The last claim was bounded and came back with fewer jobs than asked.
    short: bool,
}

impl ClaimCursor {
    /// Where the next claim starts: `None` for a full claim, else past this key.
    pub fn next(&self, now: Instant) -> Option<ClaimKey> {
        let after = self.after?;
        let since = now.saturating_duration_since(self.last_full?);
        if since >= FULL_EVERY || (self.short && since >= SHORT_FULL_EVERY) {
            return None;
        }
        Some(after)
    }

    /// Records a claim that started at `from` (what [`next`](Self::next) said), asked for
    /// `wanted` jobs and claimed the ones whose keys are `got` (in claim order or not).
    pub fn claimed(
        &mut self,
        from: Option<ClaimKey>,
        wanted: usize,
        got: impl IntoIterator<Item = ClaimKey>,
        now: Instant,
    ) {
        let mut n = 0;
        let mut highest: Option<ClaimKey> = None;
        for k in got {
            n += 1;
            highest = highest.max(Some(k));
        }
        match from {
            None => {
                self.last_full = Some(now);
                self.short = false;
                self.after = if n >= wanted {
                    // More may wait between this claim's last job and the old cursor (a burst
                    // of higher-priority jobs): continue from here.
                    highest.or(self.after)
                } else {
                    // Everything claimable from the start was taken (or is locked by another
                    // claimer, whose own cursor covers it).
                    highest.max(self.after)
                };
            }
            Some(_) => {
                self.short = n < wanted;
                self.after = highest.max(self.after);
            }
        }
    }

    /// How long the producer may wait for a wake-up before claiming again: until a full claim
    /// is due when the last bounded claim came back short, `None` (just the poll) otherwise.
    pub fn wait_limit(&self, now: Instant) -> Option<Duration> {
        if !self.short || self.after.is_none() {
            return None;
        }
        let due = self.last_full? + SHORT_FULL_EVERY;
        Some(due.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn key(priority: i16, secs: i64, id: i64) -> ClaimKey {
        ClaimKey {
            priority,
            run_at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap(),
            id,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_claim_is_full_and_later_ones_start_past_the_highest_key() {
        let mut c = ClaimCursor::default();
        assert_eq!(c.next(Instant::now()), None);
        c.claimed(None, 2, [key(0, 2, 7), key(0, 1, 9)], Instant::now());
        assert_eq!(c.next(Instant::now()), Some(key(0, 2, 7)));
        c.claimed(Some(key(0, 2, 7)), 2, [key(0, 3, 11), key(0, 3, 12)], Instant::now());
        assert_eq!(c.next(Instant::now()), Some(key(0, 3, 12)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_queue_claims_from_the_start_until_something_is_claimed() {
        let mut c = ClaimCursor::default();
        c.claimed(None, 4, [], Instant::now());
        assert_eq!(c.next(Instant::now()), None);
        assert_eq!(c.wait_limit(Instant::now()), None, "only the poll");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_bounded_claim_makes_a_full_one_due_after_the_short_interval() {
        let mut c = ClaimCursor::default();
        c.claimed(None, 2, [key(0, 1, 1), key(0, 1, 2)], Instant::now());
        let from = c.next(Instant::now());
        assert!(from.is_some());
        tokio::time::advance(Duration::from_millis(50)).await;
        c.claimed(from, 2, [key(0, 1, 3)], Instant::now());
        // Short, but the last full claim is only 50 ms old: still bounded, and the producer
        // wakes up when the full claim is due.
        assert_eq!(c.next(Instant::now()), Some(key(0, 1, 3)));
        assert_eq!(
            c.wait_limit(Instant::now()),
            Some(SHORT_FULL_EVERY - Duration::from_millis(50))
        );
        tokio::time::advance(SHORT_FULL_EVERY).await;
        assert_eq!(c.next(Instant::now()), None);
        // The full claim finds nothing new: the cursor stays, the next claim is bounded again.
        c.claimed(None, 2, [], Instant::now());
        assert_eq!(c.next(Instant::now()), Some(key(0, 1, 3)));
        assert_eq!(c.wait_limit(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_backlog_a_full_claim_still_runs_every_second() {
        let mut c = ClaimCursor::default();
        c.claimed(None, 1, [key(0, 0, 1)], Instant::now());
        let mut full = 0;
        for i in 2..=100 {
            tokio::time::advance(Duration::from_millis(25)).await;
            let from = c.next(Instant::now());
            if from.is_none() {
                full += 1;
            }
            // Every claim comes back full.
            c.claimed(from, 1, [key(0, i, i)], Instant::now());
        }
        // 99 claims over 2.475 s: full ones at 1 s and 2 s.
        assert_eq!(full, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_claim_that_comes_back_full_moves_the_cursor_back_to_its_last_job() {
        let mut c = ClaimCursor::default();
        c.claimed(None, 2, [key(0, 5, 50), key(0, 5, 51)], Instant::now());
        tokio::time::advance(FULL_EVERY).await;
        assert_eq!(c.next(Instant::now()), None);
        // A burst of higher-priority jobs (-1) enqueued behind: the full claim takes two of
        // them, and the next bounded claims continue through the rest of the burst.
        c.claimed(None, 2, [key(-1, 6, 60), key(-1, 6, 61)], Instant::now());
        assert_eq!(c.next(Instant::now()), Some(key(-1, 6, 61)));
        // A short full claim never moves the cursor back.
        tokio::time::advance(FULL_EVERY).await;
        c.claimed(None, 5, [key(-2, 7, 70)], Instant::now());
        assert_eq!(c.next(Instant::now()), Some(key(-1, 6, 61)));
    }
}
