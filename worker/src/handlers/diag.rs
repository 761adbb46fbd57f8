//! Diagnostic kinds for smoke tests, benchmarks and chaos tests. Registered only with
//! `LETTUCE_DIAG_JOBS=true`.
//!
//! | kind | payload | does |
//! |---|---|---|
//! | `diag.noop` | anything | completes |
//! | `diag.sleep` | `{"ms": N}` | sleeps N ms, then completes |
//! | `diag.fail` | `{"times": N}` (+ optional `"message"`, `"repeat"`) | fails attempts 1..=N (with `message` repeated `repeat` times as the error, when given), then completes |
//! | `diag.panic` | anything | panics |
//! | `diag.record` | anything | inserts `(job_id, attempt, worker_id, at)` into `lettuce.diag_executions` |
//! | `diag.snooze` | `{"ms": N}` | records an execution; snoozes N ms the first time, then completes |
//! | `diag.cancel` | anything | cancels itself |
//! | `diag.artifact` | `{"bytes": N}` (+ optional `"name"`, `"fail_after"`, `"stall_after"`) | streams N pseudo-random bytes seeded from the job id to artifact `name` (default `diag.bin`); `fail_after: K` makes the source fail after K bytes, `stall_after: K` makes it stop producing (never finishing) after K bytes — both for fault tests |

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::io::{AsyncRead, ReadBuf};

use super::{Handler, HandlerError, JobContext, Registry};

pub fn register(r: &mut Registry) {
    r.register(Noop)
        .register(Sleep)
        .register(Fail)
        .register(Panic)
        .register(Record)
        .register(Snooze)
        .register(Cancel)
        .register(Artifact);
}

pub struct Noop;
impl Handler for Noop {
    const KIND: &'static str = "diag.noop";
    type Payload = IgnoredAny;
    async fn run(&self, _ctx: JobContext, _p: IgnoredAny) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepPayload {
    pub ms: u64,
}

pub struct Sleep;
impl Handler for Sleep {
    const KIND: &'static str = "diag.sleep";
    type Payload = SleepPayload;
    async fn run(&self, _ctx: JobContext, p: SleepPayload) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailPayload {
    pub times: i32,
    /// The error text instead of the default one, repeated `repeat` times (at most 64 MiB in
    /// all), `\0` standing for a NUL: for tests of what the runtime does with hostile error
    /// texts.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub repeat: Option<usize>,
}

pub struct Fail;
impl Handler for Fail {
    const KIND: &'static str = "diag.fail";
    type Payload = FailPayload;
    async fn run(&self, ctx: JobContext, p: FailPayload) -> Result<(), HandlerError> {
        if ctx.job.attempt <= p.times {
            if let Some(m) = p.message {
                // JSON in Postgres cannot hold NUL, so `\0` in the message stands for one.
                let m = m.replace("\\0", "\0");
                let n = p.repeat.unwrap_or(1).min((64 << 20) / m.len().max(1));
                return Err(HandlerError::Retryable(m.repeat(n)));
            }
            return Err(HandlerError::Retryable(format!(
                "diag.fail: attempt {} of {} planned failures",
                ctx.job.attempt, p.times
            )));
        }
        Ok(())
    }
}

pub struct Panic;
impl Handler for Panic {
    const KIND: &'static str = "diag.panic";
    type Payload = IgnoredAny;
    async fn run(&self, _ctx: JobContext, _p: IgnoredAny) -> Result<(), HandlerError> {
        panic!("diag.panic: deliberate panic")
    }
}

pub struct Record;
impl Handler for Record {
    const KIND: &'static str = "diag.record";
    type Payload = IgnoredAny;
    async fn run(&self, ctx: JobContext, _p: IgnoredAny) -> Result<(), HandlerError> {
        ctx.record_diag_execution().await?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnoozePayload {
    pub ms: u64,
}

pub struct Snooze;
impl Handler for Snooze {
    const KIND: &'static str = "diag.snooze";
    type Payload = SnoozePayload;
    async fn run(&self, ctx: JobContext, p: SnoozePayload) -> Result<(), HandlerError> {
        let executions = ctx.record_diag_execution().await?;
        if executions == 1 {
            return Err(HandlerError::Snooze(Duration::from_millis(p.ms)));
        }
        Ok(())
    }
}

pub struct Cancel;
impl Handler for Cancel {
    const KIND: &'static str = "diag.cancel";
    type Payload = IgnoredAny;
    async fn run(&self, _ctx: JobContext, _p: IgnoredAny) -> Result<(), HandlerError> {
        Err(HandlerError::Cancel(
            "diag.cancel: cancelled by its handler".into(),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactPayload {
    pub bytes: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub fail_after: Option<u64>,
    #[serde(default)]
    pub stall_after: Option<u64>,
}

pub struct Artifact;
impl Handler for Artifact {
    const KIND: &'static str = "diag.artifact";
    type Payload = ArtifactPayload;
    async fn run(&self, ctx: JobContext, p: ArtifactPayload) -> Result<(), HandlerError> {
        let mut source = DiagBytes::new(ctx.job.id as u64, p.bytes);
        source.fail_after = p.fail_after;
        source.stall_after = p.stall_after;
        let name = p.name.as_deref().unwrap_or("diag.bin");
        ctx.write_artifact(name, source).await?;
        Ok(())
    }
}

/// A reader of `len` pseudo-random bytes from a seed, produced as they are read (never held
/// whole in memory). The same seed always gives the same bytes, so benchmarks can upload the
/// very bytes a `diag.artifact` job writes.
pub struct DiagBytes {
    rng: rand::rngs::StdRng,
    remaining: u64,
    produced: u64,
    /// Fail the read once this many bytes were produced.
    pub fail_after: Option<u64>,
    /// Stop producing (stay pending forever) once this many bytes were produced.
    pub stall_after: Option<u64>,
}

impl DiagBytes {
    pub fn new(seed: u64, len: u64) -> DiagBytes {
        DiagBytes {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            remaining: len,
            produced: 0,
            fail_after: None,
            stall_after: None,
        }
    }
}

impl AsyncRead for DiagBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let mut limit = this.remaining;
        if let Some(k) = this.fail_after {
            if this.produced >= k {
                return Poll::Ready(Err(std::io::Error::other(format!(
                    "diag.artifact: source failed after {k} bytes as asked"
                ))));
            }
            limit = limit.min(k - this.produced);
        }
        if let Some(k) = this.stall_after {
            if this.produced >= k {
                // Deliberately never ready: the attempt must be cut by its timeout or a
                // cancellation, which is what the fault tests exercise.
                return Poll::Pending;
            }
            limit = limit.min(k - this.produced);
        }
        let n = (buf.remaining() as u64).min(limit) as usize;
        if n > 0 {
            let dst = buf.initialize_unfilled_to(n);
            this.rng.fill_bytes(&mut dst[..n]);
            buf.advance(n);
            this.remaining -= n as u64;
            this.produced += n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn diag_bytes_are_deterministic_and_exact_in_length() {
        let mut a = Vec::new();
        DiagBytes::new(7, 100_000)
            .read_to_end(&mut a)
            .await
            .unwrap();
        let mut b = Vec::new();
        DiagBytes::new(7, 100_000)
            .read_to_end(&mut b)
            .await
            .unwrap();
        let mut c = Vec::new();
        DiagBytes::new(8, 100_000)
            .read_to_end(&mut c)
            .await
            .unwrap();
        assert_eq!(a.len(), 100_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn fail_after_fails_at_the_given_byte() {
        let mut src = DiagBytes::new(1, 1000);
        src.fail_after = Some(300);
        let mut out = Vec::new();
        assert!(src.read_to_end(&mut out).await.is_err());
        assert_eq!(out.len(), 300);
    }
}
