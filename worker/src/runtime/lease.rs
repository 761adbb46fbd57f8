//! The lease keeper: one batched heartbeat per worker, every third of `LETTUCE_LEASE_MS`. It
//! extends the lease of every attempt this process holds and refreshes the presence row. An
//! attempt the database no longer shows as ours (rescued after a stall, cancelled by an
//! operator) is cancelled locally and nothing of it is written.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Shared, sleep_or_stop};

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = (shared.config.lease / 3).max(Duration::from_millis(30));
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
                tracing::warn!(error = %e, held = held.len(), "lease heartbeat failed; will retry")
            }
        }
    }
}
