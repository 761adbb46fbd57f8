//! An embedder's worker binary: the whole `worker` command line (`run`, `check-config`, `jobs`,
//! `schema`, `healthcheck`, …) plus a job kind of its own, `example.greet`.
//!
//! ```sh
//! cargo run --example custom_kind -- run        # claims example.greet beside the built-in kinds
//! cargo run --example custom_kind -- enqueue example.greet --payload '{"name":"Ada"}'
//! ```

use std::process::ExitCode;

use lettuce_worker::{Handler, HandlerError, JobContext};
use serde::Deserialize;

/// `example.greet {"name": "…"}`: logs a greeting; an empty name is a permanent error (retrying
/// cannot fix the payload).
struct Greet;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GreetPayload {
    name: String,
}

impl Handler for Greet {
    const KIND: &'static str = "example.greet";
    type Payload = GreetPayload;

    async fn run(&self, ctx: JobContext, payload: GreetPayload) -> Result<(), HandlerError> {
        if payload.name.trim().is_empty() {
            return Err(HandlerError::Permanent("name must not be empty".into()));
        }
        tracing::info!(job.id = ctx.job.id, "hello, {}", payload.name);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    lettuce_worker::cli::main_with(|registry| {
        registry.register(Greet);
    })
    .await
}
