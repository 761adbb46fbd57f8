//! The Lettuce worker: Postgres is the queue.
//!
//! Map (mirrors ARCHITECTURE.md): `config` loads and validates settings; `boot` runs the gates
//! in order; `db` holds every SQL statement; `runtime` claims, runs and completes jobs;
//! `handlers` are the job kinds; `artifacts` is where they write what they produce; `http` and
//! `health` answer probes; `telemetry` sets up logging and OTLP tracing; `metrics` is the
//! Prometheus registry; `limits` holds the input limits; `cli` is the command line.

pub mod artifacts;
pub mod boot;
pub mod cli;
pub mod config;
pub mod db;
pub mod git;
pub mod handlers;
pub mod health;
pub mod http;
pub mod index;
pub mod job;
pub mod limits;
pub mod metrics;
pub mod providers;
pub mod redact;
pub mod runtime;
pub mod secrets;
pub mod telemetry;
pub mod worker;

/// This build's version, as reported in `lettuce.workers` and logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use db::jobs::{NewJob, enqueue, enqueue_many};
pub use worker::{Worker, WorkerHandle, WorkerStatus};
