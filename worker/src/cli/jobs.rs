//! `worker jobs list|show|retry|cancel`.

use std::process::ExitCode;

use super::{connect_for_command, fail};
use crate::config::Config;
use crate::db::jobs::{self, JobRow, ListFilter, SteerError};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Newest jobs first
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// One job as JSON, errors included
    Show { id: i64 },
    /// Make a finished or waiting job available now (one more attempt if all were used)
    Retry { id: i64 },
    /// Cancel a job that has not finished
    Cancel { id: i64 },
}

pub async fn run(command: Command, config: Config) -> ExitCode {
    let pool = match connect_for_command(&config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return fail(&format!("DatabaseUnavailable: {e}"), 5),
    };
    let client = &**client;
    match command {
        Command::List {
            state,
            kind,
            queue,
            limit,
            json,
        } => {
            let filter = ListFilter {
                state,
                kind,
                queue,
                limit,
            };
            match jobs::list(client, &filter).await {
                Ok(rows) if json => {
                    for r in rows {
                        println!("{}", serde_json::to_string(&r).expect("job row serializes"));
                    }
                    ExitCode::SUCCESS
                }
                Ok(rows) => {
                    print_table(&rows);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("error: {e}"), 1),
            }
        }
        Command::Show { id } => match jobs::get(client, id).await {
            Ok(Some(r)) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("job row serializes")
                );
                ExitCode::SUCCESS
            }
            Ok(None) => fail(&format!("error: job {id} not found"), 1),
            Err(e) => fail(&format!("error: {e}"), 1),
        },
        Command::Retry { id } => steer(jobs::retry(client, id).await),
        Command::Cancel { id } => steer(jobs::cancel(client, id, "cancelled by operator").await),
    }
}

fn steer(result: Result<JobRow, SteerError>) -> ExitCode {
    match result {
        Ok(r) => {
            println!("job {} is now {}", r.id, r.state);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("error: {e}"), 1),
    }
}

fn print_table(rows: &[JobRow]) {
    println!(
        "{:>10}  {:<24} {:<12} {:<10} {:>7}  {:<25}  LAST ERROR",
        "ID", "KIND", "QUEUE", "STATE", "ATTEMPT", "RUN AT"
    );
    for r in rows {
        let last_error = r
            .errors
            .as_array()
            .and_then(|a| a.last())
            .and_then(|e| e.get("error"))
            .and_then(|e| e.as_str())
            .unwrap_or("");
        let run_at = r
            .run_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!(
            "{:>10}  {:<24} {:<12} {:<10} {:>3}/{:<3}  {:<25}  {}",
            r.id,
            r.kind,
            r.queue,
            r.state,
            r.attempt,
            r.max_attempts,
            run_at,
            last_error.chars().take(80).collect::<String>()
        );
    }
}
