//! Scrape time: the values read when `/metrics` is asked (queue depth and age, pool statistics,
//! the listener's, heartbeat's and runtime's counters, the process figures), then the
//! OpenMetrics text.

use super::{Metrics, PoolLabel, PoolState, QueueLabel, QueueState, ResultLabel, label};

impl Metrics {
    fn runtime_values(stats: &crate::runtime::RuntimeStats) -> [u64; 5] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            stats.rescued.load(Relaxed),
            stats.refused_late_writes.load(Relaxed),
            stats.handed_back.load(Relaxed),
            stats.abandoned_outcomes.load(Relaxed),
            stats.cancelled_running.load(Relaxed),
        ]
    }

    /// Refreshes the scrape-time values and renders every metric as OpenMetrics text.
    pub async fn render(&self) -> String {
        self.refresh_depth().await;
        self.refresh_oldest_transaction().await;
        let listener = self.listener.lock().expect("metrics lock").clone();
        if let Some(stats) = listener {
            // The first connect is not a reconnect.
            let total = stats
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(1);
            let seen = self.listen_reconnects.get();
            if total > seen {
                self.listen_reconnects.inc_by(total - seen);
            }
        }
        let heartbeat = self.heartbeat.lock().expect("metrics lock").clone();
        if let Some(h) = heartbeat {
            for (result, total) in [("sent", h.sent()), ("failed", h.failed())] {
                let counter = self.heartbeats.get_or_create(&ResultLabel {
                    result: result.into(),
                });
                let seen = counter.get();
                if total > seen {
                    counter.inc_by(total - seen);
                }
            }
        }
        self.refresh_pools();
        self.process.refresh();
        let runtime = self.runtime.lock().expect("metrics lock").clone();
        if let Some(stats) = runtime {
            for (counter, total) in self
                .runtime_counters
                .iter()
                .zip(Self::runtime_values(&stats))
            {
                let seen = counter.get();
                if total > seen {
                    counter.inc_by(total - seen);
                }
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode metrics");
        out
    }

    fn refresh_pools(&self) {
        let pools = [
            ("jobs", self.job_pool.lock().expect("metrics lock").clone()),
            ("probe", self.pool.lock().expect("metrics lock").clone()),
        ];
        let int = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        for (name, pool) in pools {
            let Some(pool) = pool else { continue };
            let status = pool.status();
            let state = |state: &str| PoolState {
                pool: name.into(),
                state: state.into(),
            };
            self.pool_connections
                .get_or_create(&state("idle"))
                .set(int(status.available));
            self.pool_connections
                .get_or_create(&state("in_use"))
                .set(int(status.size.saturating_sub(status.available)));
            let p = PoolLabel { pool: name.into() };
            self.pool_max.get_or_create(&p).set(int(status.max_size));
            self.pool_waiting.get_or_create(&p).set(int(status.waiting));
        }
    }

    async fn refresh_oldest_transaction(&self) {
        let pool = self.pool.lock().expect("metrics lock").clone();
        let Some(pool) = pool else { return };
        match crate::db::probe::oldest_transaction(&pool).await {
            Ok(t) => {
                self.oldest_transaction.set(t.age_seconds);
                self.oldest_xmin.set(t.xmin_age);
            }
            Err(e) => tracing::warn!(error = %e, "oldest transaction query failed during a scrape"),
        }
    }

    async fn refresh_depth(&self) {
        let pool = self.pool.lock().expect("metrics lock").clone();
        let Some(pool) = pool else { return };
        let rows = crate::db::jobs::queue_depth(&pool).await;
        // Drop series for queue/state pairs that emptied since the last scrape.
        self.queue_depth.clear();
        self.oldest_available.clear();
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // Stale numbers would mislead: report none until the query works again.
                tracing::warn!(error = %e, "queue depth query failed during a scrape");
                return;
            }
        };
        let configured = self.configured.lock().expect("metrics lock").clone();
        for queue in configured {
            let _ = self.oldest_available.get_or_create(&QueueLabel { queue });
        }
        for (queue, state, n, age) in rows {
            let queue = label(&queue);
            // Two forged names that map to the same label add up, never overwrite.
            self.queue_depth
                .get_or_create(&QueueState {
                    queue: queue.clone(),
                    state: label(&state),
                })
                .inc_by(n);
            if let Some(age) = age {
                // …and for the age the older wins.
                let g = self.oldest_available.get_or_create(&QueueLabel { queue });
                if age > g.get() {
                    g.set(age);
                }
            }
        }
    }
}
