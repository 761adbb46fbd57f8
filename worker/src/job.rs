//! The job state machine: the seven states a job row can be in ([`JobState`]) and what one
//! attempt's outcome writes to its row ([`Transition`]). ARCHITECTURE.md "Job states" has the
//! table of every transition and who makes it.
//!
//! The runtime decides a transition here, in Rust, and `db::jobs::attempt` writes it; the one
//! rule SQL applies by itself (the rescuer, set-based, over expired leases) is the same
//! "attempts spent" rule, which the schema defines once as `lettuce.attempts_spent` and a test
//! keeps equal to [`attempts_spent`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A job row's `state` column (the CHECK in `schema/0002_jobs.sql` allows exactly these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Runnable now.
    Available,
    /// Runnable once `run_at` has passed (enqueued for later, or snoozed).
    Scheduled,
    /// Claimed: an attempt holds a lease.
    Running,
    /// An attempt failed and attempts are left: runnable again at `run_at` (after backoff).
    Retryable,
    /// Finished: the handler succeeded.
    Completed,
    /// Finished: a permanent error, or the last attempt failed.
    Discarded,
    /// Finished: cancelled by an operator or by the handler.
    Cancelled,
}

impl JobState {
    /// Every state, in the order the docs list them.
    pub const ALL: [JobState; 7] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Discarded,
        JobState::Cancelled,
    ];

    /// The column value.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Discarded => "discarded",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Finished states live in `lettuce.job_history`; the others in `lettuce.job_queue`.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Discarded | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `state` value that is none of the seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job state {0:?}; expected one of available, scheduled, running, retryable, completed, discarded, cancelled"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// True when a failed attempt `attempt` (1-based) was the job's last: it is discarded, not
/// retried. The rescuer's SQL applies the same rule through `lettuce.attempts_spent`.
pub const fn attempts_spent(attempt: i32, max_attempts: i32) -> bool {
    attempt >= max_attempts
}

/// What an attempt's outcome writes to its row: the new state, when it may run again, the
/// error appended to `errors`, and whether the attempt is given back.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub to: JobState,
    /// New `run_at` as a delay from the database's `now()`; `None` keeps it.
    pub delay: Option<Duration>,
    /// Appended to `errors` as `{attempt, at, error}` (`lettuce.append_error`) when present.
    pub error: Option<String>,
    /// The attempt did not count (snooze, hand-back on shutdown): `attempt` goes back by one.
    pub restore_attempt: bool,
}

impl Transition {
    fn to(to: JobState) -> Transition {
        Transition {
            to,
            delay: None,
            error: None,
            restore_attempt: false,
        }
    }

    /// The handler succeeded.
    pub fn complete() -> Transition {
        Transition::to(JobState::Completed)
    }

    /// Attempt `attempt` of `max_attempts` failed with a retryable error: run again after
    /// `backoff`, or discard when it was the last attempt.
    pub fn fail(attempt: i32, max_attempts: i32, error: String, backoff: Duration) -> Transition {
        if attempts_spent(attempt, max_attempts) {
            Transition::discard(error)
        } else {
            Transition {
                delay: Some(backoff),
                error: Some(error),
                ..Transition::to(JobState::Retryable)
            }
        }
    }

    /// A permanent error: finished as `discarded` now.
    pub fn discard(error: String) -> Transition {
        Transition {
            error: Some(error),
            ..Transition::to(JobState::Discarded)
        }
    }

    /// Not now: runnable again after `delay`, the attempt given back.
    pub fn snooze(delay: Duration) -> Transition {
        Transition {
            delay: Some(delay),
            restore_attempt: true,
            ..Transition::to(JobState::Scheduled)
        }
    }

    /// The handler cancelled its job.
    pub fn cancel(reason: String) -> Transition {
        Transition {
            error: Some(reason),
            ..Transition::to(JobState::Cancelled)
        }
    }

    /// Shutdown cut the attempt short: runnable now, the attempt given back.
    pub fn hand_back() -> Transition {
        Transition {
            delay: Some(Duration::ZERO),
            restore_attempt: true,
            ..Transition::to(JobState::Available)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_only_three_are_final() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        let finals: Vec<_> = JobState::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                JobState::Completed,
                JobState::Discarded,
                JobState::Cancelled
            ]
        );
        assert!("done".parse::<JobState>().is_err());
    }

    #[test]
    fn a_failure_retries_until_the_last_attempt_then_discards() {
        let backoff = Duration::from_secs(3);
        let t = Transition::fail(1, 3, "boom".into(), backoff);
        assert_eq!(
            (t.to, t.delay, t.error.as_deref()),
            (JobState::Retryable, Some(backoff), Some("boom"))
        );
        let t = Transition::fail(3, 3, "boom".into(), backoff);
        assert_eq!((t.to, t.delay), (JobState::Discarded, None));
        assert!(Transition::snooze(backoff).restore_attempt);
        assert!(Transition::hand_back().restore_attempt);
    }
}
