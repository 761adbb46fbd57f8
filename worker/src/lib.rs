//! The Lettuce worker: Postgres is the queue.
//!
//! Map (mirrors ARCHITECTURE.md): `config` loads and validates settings; `boot` runs the gates
//! in order; `db` holds every SQL statement; `runtime` claims, runs and completes jobs;
//! `handlers` are the job kinds; `artifacts` is where they write what they produce; `http` and
//! `health` answer probes; `telemetry` sets up logging and OTLP tracing; `metrics` is the
//! Prometheus registry; `limits` holds the input limits; `cli` is the command line.

// The public API: what an embedder needs to host its own job kinds in this worker (see
// `examples/custom_kind.rs`): start a [`Worker`] or run the whole CLI with
// [`cli::main_with`], register [`Handler`]s in a [`Registry`], enqueue with [`enqueue`].
pub mod boot;
pub mod cli;
pub mod config;
pub mod handlers;
pub mod job;
pub mod license;
pub mod worker;

/// Declares the crate's internal modules: private to the crate, unless the `testing` feature
/// (which only the `xtests` harness turns on) opens them to the integration tests.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "testing")]
            #[doc(hidden)]
            pub mod $name;
            #[cfg(not(feature = "testing"))]
            mod $name;
        )*
    };
}

internal!(
    artifacts,
    db,
    git,
    health,
    heartbeat,
    http,
    index,
    limits,
    metrics,
    observability,
    providers,
    redact,
    runtime,
    secrets,
);
pub(crate) mod error_text;

/// This build's version, as reported in `lettuce.workers` and logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use db::jobs::{NewJob, enqueue, enqueue_many};
pub use handlers::{Handler, HandlerError, JobContext, JobInfo, Registry};
pub use job::JobState;
pub use worker::{Worker, WorkerHandle, WorkerStatus};
