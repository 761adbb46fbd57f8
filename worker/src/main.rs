//! `worker`: parse the command line, hand the process environment to the library, exit with
//! the code it returns. Nothing else lives here.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    lettuce_worker::cli::main_with(|_| {}).await
}
