//! `worker`: parse the command line, hand the process environment to the library, exit with
//! the code it returns. Nothing else lives here.

use std::process::ExitCode;

/// Names the checkout this binary was built from (the test harness looks for it).
static BUILD_SOURCE: &str = concat!("lettuce-build-source:", env!("LETTUCE_BUILD_SOURCE"), ";");

#[tokio::main]
async fn main() -> ExitCode {
    std::hint::black_box(BUILD_SOURCE);
    lettuce_worker::cli::main_with(|_| {}).await
}
