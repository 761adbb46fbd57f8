//! `worker check-config`: every gate and live probe in report mode. (Filled in by the gates issue.)

use std::process::ExitCode;

use super::fail;
use crate::config::{Config, Env};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    pub format: String,
    /// No network at all: no database, S3, secret store, receiver or OTLP probe
    #[arg(long)]
    pub offline: bool,
}

pub async fn run(_args: Args, _config: Config, _env: &Env) -> ExitCode {
    fail("error: check-config is not implemented yet", 1)
}
