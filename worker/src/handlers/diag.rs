//! Diagnostic kinds for smoke tests, benchmarks and chaos tests. Registered only with
//! `LETTUCE_DIAG_JOBS=true`.
//!
//! | kind | payload | does |
//! |---|---|---|
//! | `diag.noop` | anything | completes |
//! | `diag.sleep` | `{"ms": N}` | sleeps N ms, then completes |
//! | `diag.fail` | `{"times": N}` | fails attempts 1..=N, then completes |
//! | `diag.panic` | anything | panics |
//! | `diag.record` | anything | inserts `(job_id, attempt, worker_id, at)` into `lettuce.diag_executions` |
//! | `diag.snooze` | `{"ms": N}` | records an execution; snoozes N ms the first time, then completes |
//! | `diag.cancel` | anything | cancels itself |

use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{Handler, HandlerError, JobContext, Registry};

pub fn register(r: &mut Registry) {
    r.register(Noop)
        .register(Sleep)
        .register(Fail)
        .register(Panic)
        .register(Record)
        .register(Snooze)
        .register(Cancel);
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
}

pub struct Fail;
impl Handler for Fail {
    const KIND: &'static str = "diag.fail";
    type Payload = FailPayload;
    async fn run(&self, ctx: JobContext, p: FailPayload) -> Result<(), HandlerError> {
        if ctx.job.attempt <= p.times {
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
