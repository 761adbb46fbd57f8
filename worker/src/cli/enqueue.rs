//! `worker enqueue KIND …`: enqueue one job through `lettuce.enqueue` and print its id.

use std::process::ExitCode;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{connect_for_command, fail};
use crate::config::Config;
use crate::db::jobs::NewJob;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job kind, e.g. repo.index
    pub kind: String,
    /// JSON payload
    #[arg(long, default_value = "{}")]
    pub payload: String,
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Lower runs first
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i16,
    /// RFC 3339 time to run at (default: now)
    #[arg(long)]
    pub run_at: Option<String>,
    #[arg(long, default_value_t = 5)]
    pub max_attempts: i32,
    /// At most one non-final job per (kind, unique key); a duplicate prints the existing id
    #[arg(long)]
    pub unique_key: Option<String>,
}

pub async fn run(args: Args, config: Config) -> ExitCode {
    let payload: serde_json::Value = match serde_json::from_str(&args.payload) {
        Ok(p) => p,
        Err(e) => return fail(&format!("error: --payload is not valid JSON: {e}"), 2),
    };
    let mut job = NewJob::new(args.kind, payload)
        .queue(args.queue)
        .priority(args.priority)
        .max_attempts(args.max_attempts);
    if let Some(at) = args.run_at {
        match OffsetDateTime::parse(&at, &Rfc3339) {
            Ok(t) => job = job.run_at(t),
            Err(e) => return fail(&format!("error: --run-at `{at}` is not RFC 3339: {e}"), 2),
        }
    }
    if let Some(k) = args.unique_key {
        job = job.unique_key(k);
    }
    // The limits the database also enforces (README "Limits"), named by their flag.
    if let Err(e) = job.check() {
        let flag = match e.field {
            "max_attempts" => "--max-attempts".to_string(),
            "unique_key" => "--unique-key".to_string(),
            "kind" => "KIND".to_string(),
            other => format!("--{other}"),
        };
        return fail(&format!("error: {flag}: {e}"), 2);
    }
    let pool = match connect_for_command(&config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return fail(&format!("DatabaseUnavailable: {e}"), 5),
    };
    match crate::db::jobs::enqueue(&**client, &job).await {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("error: enqueue failed: {e}"), 1),
    }
}
