//! The daily telemetry heartbeat (README "Telemetry"): once per UTC day per instance, one POST with exactly
//! the twelve documented fields to `LETTUCE_TELEMETRY_URL`.
//!
//! Every replica runs the task; the row for the day in `lettuce.telemetry_heartbeats` decides
//! which one sends (see `db::telemetry::claim_day`), so the guarantee never rests on process
//! memory. The task runs in its own background task with a bounded HTTP timeout: a slow or dead
//! receiver costs one pool connection for a moment and never a job slot. A failed send keeps
//! the day unsent and lets any replica retry after a backoff; the receiver can also drop a
//! duplicate by `day` (a 2xx whose receipt write was lost is sent again).
//!
//! This module never decides *whether* telemetry is on: boot resolves that (gate 4) and hands
//! the runtime a [`HeartbeatConfig`] only when it is effective. No config, no task, no request.


pub mod decision;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::db::{self, DbError, DbPool};
use crate::runtime::jitter;
use crate::runtime::periodic::{PeriodicTask, TaskBoard, Trigger, drive};

#[cfg(any(test, feature = "testing"))]
/// The body's fields, in order. The contract: adding or removing one is a breaking change to
/// what customers were promised, and tests pin this list.
pub const FIELDS: [&str; 12] = [
    "schema",
    "instance_id",
    "day",
    "license_id",
    "customer",
    "version",
    "sent_at",
    "seats_licensed",
    "repos_licensed",
    "workers_active",
    "jobs_completed_24h",
    "jobs_failed_24h",
];

/// The value of the body's `schema` field.
pub const SCHEMA_VERSION: u32 = 1;

/// The exact line logged (once a day per instance) when no receipt arrived for 7 days.
pub const STALE_RECEIPT_MESSAGE: &str = "No telemetry receipt verified in 7 days";

/// How long without a receipt before the warning.
pub const STALE_AFTER: time::Duration = time::Duration::days(7);

/// The time source: the system clock in production, a movable one in tests.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// Everything the heartbeat needs that boot decides: where to send, the license facts the body
/// reports, and timings (tests shorten them).
#[derive(Clone)]
pub struct HeartbeatConfig {
    /// `LETTUCE_TELEMETRY_URL`.
    pub url: String,
    /// The verified license's `jti`.
    pub license_id: String,
    /// The verified license's `sub`.
    pub customer: String,
    /// The license's `seats` cap (null when uncapped).
    pub seats_licensed: Option<u32>,
    /// The license's `repos` cap (null when uncapped).
    pub repos_licensed: Option<u32>,
    /// Reported in the body and in `User-Agent: lettuce-worker/<version>`.
    pub version: String,
    /// Time between activations; also bounds how late after UTC midnight the day's ping goes.
    pub interval: Duration,
    /// The first activation comes after a random delay below this, so replicas started together
    /// do not all hit the database in the same millisecond (the claim is safe regardless).
    pub first_delay_max: Duration,
    /// Backoff after the first failed attempt; doubles per attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Bound on one POST, connect included.
    pub timeout: Duration,
    /// Decides the day, `sent_at`, the receipt time and the 7-day check.
    pub clock: Clock,
}

impl HeartbeatConfig {
    /// Production timings: activation every minute, first one within 2 s of ready (the contract: the
    /// day's first within 10 s), backoff 30 s doubling to 1 h, 5 s per request.
    pub fn new(
        url: impl Into<String>,
        license_id: impl Into<String>,
        customer: impl Into<String>,
        seats_licensed: Option<u32>,
        repos_licensed: Option<u32>,
    ) -> HeartbeatConfig {
        HeartbeatConfig {
            url: url.into(),
            license_id: license_id.into(),
            customer: customer.into(),
            seats_licensed,
            repos_licensed,
            version: crate::VERSION.to_string(),
            interval: Duration::from_secs(60),
            first_delay_max: Duration::from_secs(2),
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            clock: system_clock(),
        }
    }

    /// The backoff before attempt `attempt + 1`, after `attempt` failed (1-based), with up to
    /// 10 % jitter so replicas do not retry in lockstep.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 20) as u32;
        let plain = self
            .retry_base
            .saturating_mul(1 << doublings)
            .min(self.retry_max);
        plain + plain.mul_f64(0.1 * jitter())
    }

    /// How long a claim holds the day: one request plus time to write its outcome.
    fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(10)
    }
}

impl fmt::Debug for HeartbeatConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatConfig")
            .field("url", &self.url)
            .field("license_id", &self.license_id)
            .field("customer", &self.customer)
            .field("seats_licensed", &self.seats_licensed)
            .field("repos_licensed", &self.repos_licensed)
            .field("version", &self.version)
            .field("interval", &self.interval)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The body, field for field. Serialised as a JSON object with exactly [`FIELDS`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    pub schema: u32,
    pub instance_id: Uuid,
    /// The UTC date the ping stands for, `YYYY-MM-DD`.
    pub day: String,
    pub license_id: String,
    pub customer: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub sent_at: String,
    pub seats_licensed: Option<u32>,
    pub repos_licensed: Option<u32>,
    pub workers_active: i64,
    pub jobs_completed_24h: i64,
    pub jobs_failed_24h: i64,
}

impl Payload {
    /// Builds the body from the config, the instance and the live figures.
    pub fn new(
        cfg: &HeartbeatConfig,
        instance_id: Uuid,
        day: Date,
        sent_at: OffsetDateTime,
        figures: db::telemetry::Figures,
    ) -> Payload {
        Payload {
            schema: SCHEMA_VERSION,
            instance_id,
            day: day.to_string(),
            license_id: cfg.license_id.clone(),
            customer: cfg.customer.clone(),
            version: cfg.version.clone(),
            // Whole seconds: the receiver needs no more, and the body stays small and plain.
            sent_at: sent_at
                .to_offset(UtcOffset::UTC)
                .replace_nanosecond(0)
                .unwrap_or(sent_at)
                .format(&Rfc3339)
                // Rfc3339 fails only for years outside 0..=9999.
                .unwrap_or_else(|_| sent_at.unix_timestamp().to_string()),
            seats_licensed: cfg.seats_licensed,
            repos_licensed: cfg.repos_licensed,
            workers_active: figures.workers_active,
            jobs_completed_24h: figures.jobs_completed_24h,
            jobs_failed_24h: figures.jobs_failed_24h,
        }
    }
}

/// Why one send did not produce a receipt.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("{}", db_error_text(.0))]
    Db(#[from] DbError),
    #[error("receiver unreachable or too slow: {0}")]
    Transport(String),
    #[error("receiver answered {0} (a receipt needs 2xx)")]
    Status(u16),
    #[error("receiver redirected (status {0}) to another host; not followed")]
    Redirect(u16),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// A failed attempt, with when the day may be retried (by any replica).
    #[error("attempt {attempt} for {day}: {error}; retry in {retry_in_s} s")]
    Attempt {
        attempt: i32,
        day: Date,
        retry_in_s: u64,
        error: Box<HeartbeatError>,
    },
}

impl HeartbeatError {
    fn status(&self) -> Option<u16> {
        match self {
            HeartbeatError::Status(s) | HeartbeatError::Redirect(s) => Some(*s),
            _ => None,
        }
    }
}

/// Counters a test (or a status page) can read, and the explicit trigger.
#[derive(Clone, Debug)]
pub struct HeartbeatHandle {
    trigger: Trigger,
    stats: Arc<HeartbeatStats>,
}

#[derive(Debug, Default)]
struct HeartbeatStats {
    activations: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
}

impl HeartbeatHandle {
    /// Runs an activation now instead of at the next tick.
    pub fn trigger(&self) {
        self.trigger.fire();
    }
    /// Activations finished so far in this process.
    pub fn activations(&self) -> u64 {
        self.stats.activations.load(Ordering::SeqCst)
    }
    /// POSTs answered 2xx by this process.
    pub fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::SeqCst)
    }
    /// POSTs that failed in this process.
    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::SeqCst)
    }
}

/// Starts the heartbeat on `tracker`, under the periodic driver, until `stop` fires. Call only
/// when telemetry is effective.
pub fn spawn(
    tracker: &TaskTracker,
    cfg: HeartbeatConfig,
    pool: DbPool,
    worker_id: String,
    board: &TaskBoard,
    stop: CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<HeartbeatHandle, HeartbeatError> {
    let client = http_client(&cfg)?;
    let handle = HeartbeatHandle {
        trigger: Trigger::default(),
        stats: Arc::default(),
    };
    tracing::info!(url = %cfg.url, license_id = %cfg.license_id, "telemetry heartbeat on");
    let task = Heartbeat {
        cfg,
        pool,
        worker_id,
        client,
        stats: handle.stats.clone(),
    };
    tracker.spawn(drive(
        task,
        handle.trigger.clone(),
        board.clone(),
        stop,
        metrics,
    ));
    Ok(handle)
}

/// A client that never follows a redirect to another host, and bounds each request.
fn http_client(cfg: &HeartbeatConfig) -> Result<reqwest::Client, HeartbeatError> {
    let same_host = reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first();
        let next = attempt.url();
        let same = first.is_some_and(|f| {
            f.scheme() == next.scheme()
                && f.host_str() == next.host_str()
                && f.port_or_known_default() == next.port_or_known_default()
        });
        if same && attempt.previous().len() < 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .user_agent(format!("lettuce-worker/{}", cfg.version))
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .redirect(same_host)
        .build()
        .map_err(|e| HeartbeatError::Client(error_chain(&e)))
}

/// The heartbeat as a periodic task.
struct Heartbeat {
    cfg: HeartbeatConfig,
    pool: DbPool,
    /// Recorded as the claimant of a day.
    worker_id: String,
    client: reqwest::Client,
    stats: Arc<HeartbeatStats>,
}

impl Heartbeat {
    /// One POST. `Ok` only for a 2xx.
    async fn send(&self, body: &Payload) -> Result<u16, HeartbeatError> {
        let span = crate::observability::http_client_span("POST", &self.cfg.url);
        let response = self
            .client
            .post(&self.cfg.url)
            .json(body)
            .send()
            .instrument(span.clone())
            .await
            .map_err(|e| HeartbeatError::Transport(error_chain(&e)))?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_success() {
            Ok(status.as_u16())
        } else if status.is_redirection() {
            Err(HeartbeatError::Redirect(status.as_u16()))
        } else {
            Err(HeartbeatError::Status(status.as_u16()))
        }
    }

    /// Claims, builds and sends the day's ping. `Ok(None)`: nothing to do for now.
    async fn send_if_due(
        &self,
        day: Date,
        now: OffsetDateTime,
    ) -> Result<Option<String>, HeartbeatError> {
        let Some(attempt) =
            db::telemetry::claim_day(&self.pool, day, &self.worker_id, self.cfg.lease()).await?
        else {
            return Ok(None);
        };
        let outcome = async {
            let instance_id = db::telemetry::instance_id(&self.pool).await?;
            let figures = db::telemetry::figures(&self.pool).await?;
            let body = Payload::new(&self.cfg, instance_id, day, now, figures);
            tracing::debug!(body = %serde_json::to_string(&body).unwrap_or_default(), "sending telemetry heartbeat");
            self.send(&body).await
        }
        .await;
        match outcome {
            Ok(status) => {
                self.stats.sent.fetch_add(1, Ordering::SeqCst);
                db::telemetry::mark_sent(&self.pool, day, status, (self.cfg.clock)()).await?;
                Ok(Some(format!(
                    "telemetry heartbeat for {day} accepted ({status}) on attempt {attempt}"
                )))
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::SeqCst);
                let retry_in = self.cfg.backoff(attempt);
                db::telemetry::mark_failed(
                    &self.pool,
                    day,
                    &self.worker_id,
                    e.status(),
                    &e.to_string(),
                    retry_in,
                )
                .await?;
                Err(HeartbeatError::Attempt {
                    attempt,
                    day,
                    retry_in_s: retry_in.as_secs(),
                    error: Box::new(e),
                })
            }
        }
    }

    /// Logs the 7-day warning when due; at most once per day per instance.
    async fn warn_if_stale(&self, day: Date, now: OffsetDateTime) -> Result<(), DbError> {
        if let Some(last) =
            db::telemetry::take_stale_warning(&self.pool, day, now - STALE_AFTER).await?
        {
            let last = last
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_else(|| "never".to_string());
            tracing::warn!(last_receipt = %last, url = %self.cfg.url, "{STALE_RECEIPT_MESSAGE}");
        }
        Ok(())
    }
}

impl PeriodicTask for Heartbeat {
    fn name(&self) -> &'static str {
        "telemetry-heartbeat"
    }
    fn interval(&self) -> Duration {
        self.cfg.interval
    }
    /// The day's first ping goes within seconds of ready, not one interval later.
    fn first_delay(&self) -> Duration {
        self.cfg.first_delay_max.mul_f64(jitter())
    }
    async fn activate(&mut self) -> Result<Option<String>, String> {
        let result = self.activate_once().await;
        self.stats.activations.fetch_add(1, Ordering::SeqCst);
        result
    }
}

impl Heartbeat {
    async fn activate_once(&mut self) -> Result<Option<String>, String> {
        let now = (self.cfg.clock)();
        let day = now.to_offset(UtcOffset::UTC).date();
        let sent = self.send_if_due(day, now).await;
        // The warning is checked after the send, so a ping that just succeeded silences it.
        // The claim above created the day's row the warning is recorded on.
        let warned = self.warn_if_stale(day, now).await;
        let status = sent.map_err(|e| e.to_string())?;
        warned.map_err(|e| db_error_text(&e))?;
        Ok(status)
    }
}

/// What `check-config` shows about the heartbeat besides the gate's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatStatus {
    pub instance_id: Uuid,
    pub last_receipt_at: Option<OffsetDateTime>,
    /// `now - last_receipt_at`; `None` when no receipt was ever stored.
    pub receipt_age: Option<time::Duration>,
    /// True when the 7-day warning condition holds right now.
    pub receipt_stale: bool,
    /// Today's row (UTC), if any activation touched it.
    pub today: Option<db::telemetry::DayRow>,
}

impl HeartbeatStatus {
    /// One human line, e.g. `last receipt 3 h ago (2026-11-29T02:00:00Z); today sent`.
    pub fn describe(&self) -> String {
        let receipt = match (self.last_receipt_at, self.receipt_age) {
            (Some(at), Some(age)) => format!(
                "last receipt {} ago ({})",
                describe_age(age),
                at.format(&Rfc3339).unwrap_or_default()
            ),
            _ => "no receipt yet".to_string(),
        };
        let today = match &self.today {
            None => "today not attempted yet".to_string(),
            Some(r) if r.sent_at.is_some() => "today sent".to_string(),
            Some(r) => format!(
                "today unsent after {} attempt(s){}",
                r.attempts,
                r.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            ),
        };
        let stale = if self.receipt_stale {
            format!("; {STALE_RECEIPT_MESSAGE}")
        } else {
            String::new()
        };
        format!("{receipt}; {today}{stale}")
    }
}

/// Reads the receipt and today's row (for `check-config`; sends nothing).
pub async fn status(pool: &DbPool, now: OffsetDateTime) -> Result<HeartbeatStatus, DbError> {
    let (instance_id, last_receipt_at) = db::telemetry::receipt(pool).await?;
    let today = db::telemetry::day_row(pool, now.to_offset(UtcOffset::UTC).date()).await?;
    let receipt_age = last_receipt_at.map(|at| now - at);
    Ok(HeartbeatStatus {
        instance_id,
        last_receipt_at,
        receipt_age,
        receipt_stale: receipt_age.is_some_and(|a| a > STALE_AFTER),
        today,
    })
}

/// `3 d`, `5 h`, `12 min`, `40 s`: the largest whole unit.
pub fn describe_age(age: time::Duration) -> String {
    let s = age.whole_seconds().max(0);
    match s {
        s if s >= 86_400 => format!("{} d", s / 86_400),
        s if s >= 3_600 => format!("{} h", s / 3_600),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A database error with the server's message (`DbError`'s own text stops at "db error").
fn db_error_text(e: &DbError) -> String {
    match e {
        DbError::Postgres(pg) => format!("database error: {}", db::error_text(pg)),
        other => other.to_string(),
    }
}

/// An error with its sources, since reqwest's top line alone ("error sending request") hides
/// the cause. The URL is left out: it could carry credentials.
fn error_chain(e: &reqwest::Error) -> String {
    let text = if e.is_timeout() {
        format!("timed out{}", crate::error_text::causes(e))
    } else {
        crate::error_text::causes(e)
            .trim_start_matches(": ")
            .to_string()
    };
    if text.is_empty() { e.to_string() } else { text }
}

#[cfg(test)]
mod tests;
