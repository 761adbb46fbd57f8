//! The lease keeper: one batched heartbeat per worker, every third of `LETTUCE_LEASE_MS` and at
//! least every [`PRESENCE_EVERY`]. It extends the lease of every attempt this process holds and
//! refreshes the presence row. An attempt the database no longer shows as ours (rescued after a
//! stall, cancelled by an operator) is cancelled locally and nothing of it is written.
//!
//! The presence row is what lets a crashed worker's jobs go back to the queue long before their
//! leases run out: a row not refreshed for [`stale_after`] (three heartbeats) is swept, and the
//! sweep rescues the jobs its worker held (`maintenance.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Shared, sleep_or_stop};
use crate::observability::condition::Condition;

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = interval(shared.config.lease);
    let failing = Condition::new("lease heartbeat");
    while sleep_or_stop(every, &stop).await {
        let (held, spans): (Vec<(i64, i32)>, Vec<opentelemetry::trace::SpanContext>) = {
            let inflight = shared.inflight.lock().expect("inflight lock");
            let held = inflight.iter().map(|(id, h)| (*id, h.attempt)).collect();
            // Empty (nothing allocated) when spans are not exported.
            let spans = inflight.values().filter_map(|h| h.span.clone()).collect();
            (held, spans)
        };
        match crate::db::jobs::heartbeat(
            &shared.pool,
            &shared.worker,
            &held,
            &spans,
            shared.config.lease,
        )
        .await
        {
            Ok(kept) => {
                failing.ok();
                let inflight = shared.inflight.lock().expect("inflight lock");
                for (id, attempt) in held.iter().filter(|(id, _)| !kept.contains(id)) {
                    // Still ours locally and not being written: the database took it away.
                    if let Some(h) = inflight.get(id).filter(|h| h.attempt == *attempt) {
                        h.lost.store(true, Ordering::Release);
                        h.cancel.cancel();
                    }
                }
            }
            Err(e) => {
                shared.database_failed(&e);
                failing.failed(&format_args!("{e} ({} attempts held)", held.len()));
            }
        }
    }
}

/// The presence row is refreshed at least this often, whatever the lease.
pub(crate) const PRESENCE_EVERY: Duration = Duration::from_secs(5);

/// How often the keeper beats: a third of the lease, at most [`PRESENCE_EVERY`].
pub(crate) fn interval(lease: Duration) -> Duration {
    (lease / 3).clamp(Duration::from_millis(30), PRESENCE_EVERY)
}

/// A presence row older than this belongs to a dead (or cut-off) worker: three heartbeats
/// missed. 15 s with the default lease.
pub(crate) fn stale_after(lease: Duration) -> Duration {
    interval(lease) * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keeper_beats_every_third_of_the_lease_and_at_least_every_five_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(interval(ms(60_000)), ms(5_000));
        assert_eq!(stale_after(ms(60_000)), ms(15_000));
        assert_eq!(interval(ms(600)), ms(200));
        assert_eq!(stale_after(ms(600)), ms(600));
        assert_eq!(interval(ms(30)), ms(30));
        assert_eq!(interval(ms(3_600_000)), ms(5_000));
    }
}
