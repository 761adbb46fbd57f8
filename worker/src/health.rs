//! Liveness and readiness as shared state: written by boot and the runtime, read by `/healthz`
//! and `/readyz`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::DbPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Booting,
    Ready,
    Draining,
}

/// Process readiness.
#[derive(Debug)]
pub struct Health {
    phase: Mutex<Phase>,
    pool: Mutex<Option<DbPool>>,
    /// Conditions a running part of the process reports as "not ready", by a stable key (for
    /// example `outcomes` when the completer cannot write): the general reason `/readyz` shows.
    unready: Mutex<BTreeMap<&'static str, String>>,
    /// When a failed probe was last logged.
    probe_logged: Mutex<Option<Instant>>,
}

/// A failing readiness probe is logged at most this often.
const PROBE_LOG_EVERY: Duration = Duration::from_secs(10);

impl Default for Health {
    fn default() -> Self {
        Health {
            phase: Mutex::new(Phase::Booting),
            pool: Mutex::new(None),
            unready: Mutex::new(BTreeMap::new()),
            probe_logged: Mutex::new(None),
        }
    }
}

impl Health {
    /// The pool `/readyz` probes.
    pub fn set_pool(&self, pool: DbPool) {
        *self.pool.lock().expect("health lock") = Some(pool);
    }
    /// Gates passed, schema applied, claiming has begun.
    pub fn set_ready(&self) {
        *self.phase.lock().expect("health lock") = Phase::Ready;
    }
    /// SIGTERM received: not ready any more.
    pub fn set_draining(&self) {
        *self.phase.lock().expect("health lock") = Phase::Draining;
    }

    /// Marks the process not ready for `key` with a general `reason` (no secrets, no details:
    /// those go to the log). Replaces an earlier reason under the same key.
    pub fn set_unready(&self, key: &'static str, reason: impl Into<String>) {
        self.unready
            .lock()
            .expect("health lock")
            .insert(key, reason.into());
    }
    /// True while `key` marks the process not ready.
    pub fn is_unready(&self, key: &'static str) -> bool {
        self.unready.lock().expect("health lock").contains_key(key)
    }
    /// The condition under `key` is over.
    pub fn clear_unready(&self, key: &'static str) {
        self.unready.lock().expect("health lock").remove(key);
    }

    /// Ready as far as this process knows (no database probe), and the general reasons when
    /// not: booting, draining, or each condition set with [`Health::set_unready`].
    pub fn snapshot(&self) -> (bool, Vec<String>) {
        let mut reasons = match *self.phase.lock().expect("health lock") {
            Phase::Booting => vec!["booting".to_string()],
            Phase::Draining => vec!["draining".to_string()],
            Phase::Ready => Vec::new(),
        };
        reasons.extend(self.unready.lock().expect("health lock").values().cloned());
        (reasons.is_empty(), reasons)
    }

    /// `Ok(())` when ready, else the reason.
    pub async fn readiness(&self) -> Result<(), String> {
        let phase = *self.phase.lock().expect("health lock");
        match phase {
            Phase::Booting => return Err("booting: gates, database or schema not done yet".into()),
            Phase::Draining => return Err("draining: shutting down".into()),
            Phase::Ready => {}
        }
        let reasons: Vec<String> = self
            .unready
            .lock()
            .expect("health lock")
            .values()
            .cloned()
            .collect();
        if !reasons.is_empty() {
            return Err(reasons.join("; "));
        }
        let pool = self.pool.lock().expect("health lock").clone();
        let Some(pool) = pool else {
            return Err("no database pool".into());
        };
        let probe = async { crate::db::probe::ping(&pool).await.map_err(|e| e.to_string()) };
        // The body says what is wrong in general terms; the details go to the log (at most
        // once per [`PROBE_LOG_EVERY`], however many probes arrive).
        let detail = match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "no answer within 2s".to_string(),
        };
        let mut last = self.probe_logged.lock().expect("health lock");
        if last.is_none_or(|at| at.elapsed() >= PROBE_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(error = %detail, "readiness probe: database unreachable");
        }
        Err("database unreachable".into())
    }
}
