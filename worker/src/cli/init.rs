//! `worker init`: the lettuce-init quick start. (Filled in by the install-path issue.)

use std::process::ExitCode;

use super::fail;
use crate::config::Env;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _env: &Env) -> ExitCode {
    fail("error: init is not implemented yet", 1)
}
