//! One log line per condition, not one per retry.
//!
//! A database restart makes every retry loop fail at once, several times a second: logging each
//! failure buried the one line an operator needs under hundreds. A [`Condition`] logs the first
//! failure as a WARN, then stays quiet while the condition lasts — apart from one reminder every
//! [`REMIND_EVERY`] with the count so far — and logs one INFO line with the total when it clears.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a condition that lasts is reported again, with its count.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);

/// What one call to [`Condition::failed`] or [`Condition::ok`] should log, decided apart from
/// the logging so the rule can be tested without a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Nothing: a repeat of a condition already reported (or a success while healthy).
    Quiet,
    /// The first failure of a new condition.
    Started,
    /// The condition lasts: `failures` since it started.
    Lasting { failures: u64, since: Duration },
    /// It cleared after `failures` failures over `lasted`.
    Cleared { failures: u64, lasted: Duration },
}

#[derive(Debug, Default)]
struct State {
    since: Option<Instant>,
    failures: u64,
    reported_at: Option<Instant>,
}

/// A named failure condition (e.g. "LISTEN connection", "claim"), shared by its retry loop.
#[derive(Debug)]
pub struct Condition {
    what: String,
    state: Mutex<State>,
}

impl Condition {
    pub fn new(what: impl Into<String>) -> Condition {
        Condition {
            what: what.into(),
            state: Mutex::new(State::default()),
        }
    }

    /// Records a failure and logs it when it starts or reminds (WARN), else nothing.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        match self.failed_at(Instant::now()) {
            Report::Started => {
                tracing::warn!(condition = %self.what, error = %error, "{} failing; retrying", self.what)
            }
            Report::Lasting { failures, since } => tracing::warn!(
                condition = %self.what,
                failures,
                for_ms = since.as_millis() as u64,
                error = %error,
                "{} still failing; retrying",
                self.what
            ),
            Report::Quiet | Report::Cleared { .. } => {}
        }
    }

    /// Records a success and logs the recovery (INFO) when a condition was open.
    pub fn ok(&self) {
        if let Report::Cleared { failures, lasted } = self.ok_at(Instant::now()) {
            tracing::info!(
                condition = %self.what,
                failures,
                lasted_ms = lasted.as_millis() as u64,
                "{} recovered",
                self.what
            );
        }
    }

    pub fn failed_at(&self, now: Instant) -> Report {
        let mut s = self.lock();
        s.failures += 1;
        match (s.since, s.reported_at) {
            (None, _) | (_, None) => {
                s.since = Some(now);
                s.reported_at = Some(now);
                s.failures = 1;
                Report::Started
            }
            (Some(since), Some(at)) if now.duration_since(at) >= REMIND_EVERY => {
                s.reported_at = Some(now);
                Report::Lasting {
                    failures: s.failures,
                    since: now.duration_since(since),
                }
            }
            _ => Report::Quiet,
        }
    }

    pub fn ok_at(&self, now: Instant) -> Report {
        let mut s = self.lock();
        let report = match s.since {
            Some(since) => Report::Cleared {
                failures: s.failures,
                lasted: now.duration_since(since),
            },
            None => Report::Quiet,
        };
        *s = State::default();
        report
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is three plain fields: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_reported_once_reminded_with_its_count_and_cleared_once() {
        let c = Condition::new("LISTEN connection");
        let t0 = Instant::now();
        assert_eq!(c.ok_at(t0), Report::Quiet, "healthy stays quiet");
        assert_eq!(c.failed_at(t0), Report::Started);
        for i in 1..90 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(c.failed_at(at), Report::Quiet, "retry {i} is not logged");
        }
        let later = t0 + REMIND_EVERY + Duration::from_secs(1);
        assert_eq!(
            c.failed_at(later),
            Report::Lasting {
                failures: 91,
                since: REMIND_EVERY + Duration::from_secs(1)
            }
        );
        assert_eq!(
            c.failed_at(later + Duration::from_secs(1)),
            Report::Quiet,
            "the next reminder waits another interval"
        );
        let end = later + Duration::from_secs(2);
        assert_eq!(
            c.ok_at(end),
            Report::Cleared {
                failures: 92,
                lasted: end - t0
            }
        );
        assert_eq!(c.ok_at(end), Report::Quiet, "cleared once");
        assert_eq!(c.failed_at(end), Report::Started, "a new condition starts over");
    }
}
