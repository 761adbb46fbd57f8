//! `worker license keygen|mint|inspect`. (Filled in by the gates issue.)

use std::process::ExitCode;

use super::fail;
use crate::config::Env;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make an Ed25519 keypair (PEM)
    Keygen,
}

pub fn run(_command: Command, _env: &Env) -> ExitCode {
    fail("error: license tooling is not implemented yet", 1)
}
