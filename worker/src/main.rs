//! `worker`: parse the command line, hand the process environment to the library, exit with
//! the code it returns. Nothing else lives here.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: every job allocates a task, a cancellation token and its
/// row's strings, and glibc's arenas (aligned allocations for tokio's task cells above all) were
/// a sixth of the worker's CPU per job (BENCHMARKS.md, "Issue 18").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    lettuce_worker::cli::main_with(|_| {}).await
}
