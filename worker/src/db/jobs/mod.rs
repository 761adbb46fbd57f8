//! Every statement that touches the jobs (`lettuce.job_queue`, `lettuce.job_history` and the
//! `lettuce.jobs` view over both), one function each.
//!
//! Writes on behalf of a running attempt (completion, heartbeat) are fenced on
//! `(id, attempt, locked_by)` and `state = 'running'`: a worker whose job was rescued, cancelled
//! or handed to another worker cannot overwrite what happened since.
//!
//! Split by audience: [`enqueue`] (the public API), [`attempt`] (the hot path: claim, heartbeat,
//! complete), [`upkeep`] (rescue, prune, turns, depth) and [`steer`] (the operator's rows, retry,
//! cancel). The SQL fragments more than one statement needs are the macros below, so each exists
//! once: the column list of a job row, and the fence of a write on behalf of an attempt.

use crate::db::DbError;

/// The seventeen columns of a job row, in table order (`lettuce.job_queue`, `lettuce.job_history`
/// and the `lettuce.jobs` view have the same list). Every statement that copies or reads a whole
/// row names them through this macro, never `*`.
macro_rules! job_columns {
    () => {
        "id, kind, queue, payload, priority, state, attempt, max_attempts, run_at, created_at, \
         attempted_at, finished_at, locked_by, lease_expires_at, errors, unique_key, traceparent"
    };
}

/// The join of a batch (`unnest(…) AS u(id, attempt, …)`, alias `u`, with `me` and `running`
/// taken from the batch side) to `lettuce.job_queue j` that fences a write on behalf of an
/// attempt: the row is still this attempt's, held by this worker, still running. Why it is
/// written this way (reached through `j.id = ANY($1)`, fence values from the batch side behind
/// `OFFSET 0`) is in `attempt::FINISH_SQL`'s comment.
macro_rules! fence {
    () => {
        "j.id = ANY($1) AND j.id = u.id AND j.attempt = u.attempt AND j.locked_by = u.me \
         AND j.state = u.running"
    };
}

/// The NOTIFY channel whose payload is a queue name (`CHANNEL`), for statements that notify.
macro_rules! channel {
    () => {
        "lettuce_jobs"
    };
}

pub mod attempt;
pub mod enqueue;
pub mod steer;
pub mod upkeep;

pub use attempt::{
    ArtifactRow, ClaimKey, ClaimedJob, Completion, claim_batch,
    complete_batch_with, heartbeat,
};
pub use enqueue::{NewJob, enqueue, enqueue_many};
pub use steer::{JobRow, ListFilter, SteerError, cancel, get, list, retry};
pub use upkeep::{prune, queue_depth, rescue_expired, take_turn};

/// Postgres NOTIFY channel; the payload is the queue name.
pub const CHANNEL: &str = channel!();
/// Postgres NOTIFY channel for control messages to running workers (`cancel:<id>`, sent by the
/// `lettuce.jobs` view trigger when a running job is finished by hand).
pub const CONTROL_CHANNEL: &str = "lettuce_control";

/// Records the row count, or the error, on a statement's span.
pub(crate) fn record_sql<T>(
    span: &tracing::Span,
    result: &Result<T, DbError>,
    rows: impl Fn(&T) -> usize,
) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(v) => {
            span.record("db.rows", rows(v) as i64);
        }
        Err(e) => crate::observability::record_error(span, e),
    }
}
