//! What one attempt came to, and the row it turns into. Pure: no I/O here.

use std::time::Duration;

use crate::db::jobs::{ArtifactRow, ClaimedJob, Completion};
use crate::db::repositories::RepositoryIndexed;
use crate::handlers::HandlerError;
use crate::job::Transition;
use crate::limits;

/// The result of one attempt, as the executor saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned `Ok`. `indexed`: repository rows to update with the completion.
    Completed {
        artifacts: Vec<ArtifactRow>,
        indexed: Vec<RepositoryIndexed>,
    },
    /// A retryable error, a panic or a timeout.
    Retry { error: String },
    /// A permanent error: discard now.
    Discard { error: String },
    /// Run again after `delay` without using an attempt.
    Snooze { delay: Duration },
    /// The handler cancelled the job.
    Cancel { reason: String },
    /// Shutdown cut the attempt short: back to `available`, attempt restored.
    HandBack,
}

impl PartialEq for ArtifactRow {
    fn eq(&self, o: &Self) -> bool {
        self.job_id == o.job_id && self.key == o.key && self.sha256 == o.sha256
    }
}

impl Outcome {
    /// Maps a handler's result.
    pub fn from_result(result: Result<(), HandlerError>, artifacts: Vec<ArtifactRow>) -> Outcome {
        match result {
            Ok(()) => Outcome::Completed {
                artifacts,
                indexed: Vec::new(),
            },
            Err(HandlerError::Retryable(error)) => Outcome::Retry { error },
            Err(HandlerError::Permanent(error)) => Outcome::Discard { error },
            Err(HandlerError::Snooze(delay)) => Outcome::Snooze { delay },
            Err(HandlerError::Cancel(reason)) => Outcome::Cancel { reason },
        }
    }

    /// A completion that also updates these repository rows (no-op for other outcomes).
    pub fn with_indexed(mut self, rows: Vec<RepositoryIndexed>) -> Outcome {
        if let Outcome::Completed { indexed, .. } = &mut self {
            *indexed = rows;
        }
        self
    }

    /// The label used in logs, spans and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::Retry { .. } => "error",
            Outcome::Discard { .. } => "discarded",
            Outcome::Snooze { .. } => "snoozed",
            Outcome::Cancel { .. } => "cancelled",
            Outcome::HandBack => "handed_back",
        }
    }

    /// The row this outcome writes for `job`. `jitter` is a number in `[0, 1)`. Error texts are
    /// sanitized and capped, delays clamped (`crate::limits`), so whatever a handler returned
    /// the database accepts the row.
    pub fn completion(&self, job: &ClaimedJob, policy: &RetryPolicy, jitter: f64) -> Completion {
        let mut transition = self.transition(job, policy, jitter);
        transition.error = transition.error.map(|e| limits::sanitize_error(&e));
        transition.delay = transition.delay.map(limits::clamp_delay);
        Completion {
            id: job.id,
            attempt: job.attempt,
            transition,
            queue: job.queue.clone(),
            span: job.attempt_span.clone(),
        }
    }

    /// The state-machine step this outcome takes (`crate::job`).
    pub fn transition(&self, job: &ClaimedJob, policy: &RetryPolicy, jitter: f64) -> Transition {
        match self {
            Outcome::Completed { .. } => Transition::complete(),
            Outcome::Retry { error } => Transition::fail(
                job.attempt,
                job.max_attempts,
                error.clone(),
                policy.backoff(job.attempt, jitter),
            ),
            Outcome::Discard { error } => Transition::discard(error.clone()),
            Outcome::Snooze { delay } => Transition::snooze(*delay),
            Outcome::Cancel { reason } => Transition::cancel(reason.clone()),
            Outcome::HandBack => Transition::hand_back(),
        }
    }
}

/// Exponential backoff with jitter: `min(max, base · 2^(attempt-1))`, then a random point in
/// its upper half, so replicas that failed together do not retry together.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn backoff(&self, attempt: i32, jitter: f64) -> Duration {
        let exp = (attempt.max(1) - 1).min(40) as u32;
        let full = self
            .base
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn job(attempt: i32, max: i32) -> ClaimedJob {
        ClaimedJob {
            id: 7,
            kind: "k".into(),
            queue: "q".into(),
            payload: serde_json::json!({}),
            priority: 0,
            attempt,
            max_attempts: max,
            run_at: OffsetDateTime::now_utc(),
            attempted_at: OffsetDateTime::now_utc(),
            traceparent: None,
            undecodable: None,
            claim_span: None,
            attempt_span: None,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(3600),
    };

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_the_upper_half() {
        assert_eq!(POLICY.backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(POLICY.backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(POLICY.backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(POLICY.backoff(30, 1.0), Duration::from_secs(3600));
        assert_eq!(POLICY.backoff(i32::MAX, 0.0), Duration::from_secs(1800));
        for a in 1..20 {
            let d = POLICY.backoff(a, 0.37);
            assert!(d <= POLICY.max);
        }
    }

    #[test]
    fn outcomes_map_to_states() {
        let c =
            |o: Outcome, attempt, max| o.completion(&job(attempt, max), &POLICY, 0.5).transition;
        assert_eq!(
            c(
                Outcome::Completed {
                    artifacts: vec![],
                    indexed: vec![]
                },
                1,
                5
            )
            .to
            .as_str(),
            "completed"
        );
        let r = c(
            Outcome::Retry {
                error: "boom".into(),
            },
            1,
            5,
        );
        assert_eq!(
            (r.to.as_str(), r.error.as_deref()),
            ("retryable", Some("boom"))
        );
        assert_eq!(r.delay, Some(Duration::from_millis(750)));
        assert_eq!(
            c(
                Outcome::Retry {
                    error: "boom".into()
                },
                5,
                5
            )
            .to
            .as_str(),
            "discarded"
        );
        assert_eq!(
            c(
                Outcome::Discard {
                    error: "bad".into()
                },
                1,
                5
            )
            .to
            .as_str(),
            "discarded"
        );
        let s = c(
            Outcome::Snooze {
                delay: Duration::from_secs(3),
            },
            2,
            5,
        );
        assert_eq!(
            (s.to.as_str(), s.restore_attempt, s.error),
            ("scheduled", true, None)
        );
        assert_eq!(
            c(Outcome::Cancel { reason: "x".into() }, 1, 5).to.as_str(),
            "cancelled"
        );
        let h = c(Outcome::HandBack, 1, 5);
        assert_eq!((h.to.as_str(), h.restore_attempt), ("available", true));
    }

    #[test]
    fn completions_carry_storable_errors_and_bounded_delays() {
        let s = Outcome::Snooze {
            delay: Duration::from_millis(u64::MAX),
        }
        .completion(&job(1, 5), &POLICY, 0.5)
        .transition;
        assert_eq!(s.delay, Some(limits::MAX_DELAY));
        let e = Outcome::Discard {
            error: format!("nul\0{}", "x".repeat(10 << 20)),
        }
        .completion(&job(1, 5), &POLICY, 0.5)
        .transition;
        let text = e.error.unwrap();
        assert!(text.len() <= limits::MAX_ERROR_BYTES && !text.contains('\0'));
    }

    #[test]
    fn handler_errors_map_to_outcomes() {
        assert_eq!(
            Outcome::from_result(Err(HandlerError::Permanent("p".into())), vec![]).label(),
            "discarded"
        );
        assert_eq!(
            Outcome::from_result(Err(HandlerError::Snooze(Duration::ZERO)), vec![]).label(),
            "snoozed"
        );
        assert_eq!(Outcome::from_result(Ok(()), vec![]).label(), "completed");
    }
}
