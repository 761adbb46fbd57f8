//! `worker`: parse the command line, hand the process environment to the library, exit with
//! the code it returns. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use lettuce_worker::cli::{Cli, dispatch};
use lettuce_worker::config::process_env;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch(cli, process_env()).await
}
