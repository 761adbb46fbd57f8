//! The command line: a closed set of commands, each a thin layer over the library. Only this
//! module and `main.rs` print to stdout.

mod check_config;
mod enqueue;
mod healthcheck;
mod init;
mod jobs;
mod license;
mod repos;
mod schema;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::boot::BootError;
use crate::config::{Config, Env, LogFormat};
use crate::handlers::Registry;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "The background worker of self-hosted Lettuce"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot gates, schema, then work jobs until SIGTERM/SIGINT (the default)
    Run,
    /// Run every boot gate and live probe, start nothing; exit 0 when no check fails
    CheckConfig(check_config::Args),
    /// Enqueue one job and print its id
    Enqueue(enqueue::Args),
    /// Inspect and steer jobs
    Jobs {
        #[command(subcommand)]
        command: jobs::Command,
    },
    /// The repositories this instance keeps indexed: list them, or enqueue an index
    Repos {
        #[command(subcommand)]
        command: repos::Command,
    },
    /// Print or apply the embedded schema statement list
    Schema {
        #[command(subcommand)]
        command: schema::Command,
    },
    /// Vendor and dev tooling for license keys and tokens
    License {
        #[command(subcommand)]
        command: license::Command,
    },
    /// The lettuce-init quick start: verify a license key and write .env, compose file, public key
    Init(init::Args),
    /// Exit 0 when the local worker's /healthz answers 200 (for Docker HEALTHCHECK)
    Healthcheck,
}

/// The whole `worker` command line (`run`, `check-config`, `jobs`, `schema`, `healthcheck`, …)
/// with the embedder's own job kinds: `register` adds them to the registry `worker run` builds
/// (the worker's own kinds stay). An embedder's `main` is one call; see
/// `examples/custom_kind.rs`.
pub async fn main_with(register: impl FnOnce(&mut Registry)) -> ExitCode {
    dispatch_with(Cli::parse(), crate::config::process_env(), register).await
}

/// Runs the parsed command with the given environment and the worker's own job kinds, and
/// returns the exit code.
pub async fn dispatch(cli: Cli, env: Env) -> ExitCode {
    dispatch_with(cli, env, |_| {}).await
}

/// [`dispatch`] with extra job kinds for `run`.
pub async fn dispatch_with(cli: Cli, env: Env, register: impl FnOnce(&mut Registry)) -> ExitCode {
    let command = cli.command.unwrap_or(Command::Run);
    // Commands that need no configuration.
    match command {
        Command::License { command } => return license::run(command, &env),
        Command::Init(args) => return init::run(args, &env),
        Command::Schema {
            command: schema::Command::Print,
        } => {
            print!("{}", crate::db::schema::script());
            return ExitCode::SUCCESS;
        }
        Command::Healthcheck => {
            // Liveness reads only its address: no secret store, no database.
            crate::observability::init_logging(log_format_hint(&env));
            return healthcheck::run(&env).await;
        }
        Command::CheckConfig(args) => {
            // check-config reports a configuration that does not load as a failed check.
            crate::observability::init_logging(log_format_hint(&env));
            return check_config::run_env(args, &env).await;
        }
        _ => {}
    }
    // The secret store (LETTUCE_SECRET_STORE) fills secret variables the environment leaves
    // unset; a store that is down or lacks a required secret is a config error (exit 2).
    // Each command reads only the secrets it uses: the one-shot database commands need
    // DATABASE_URL alone, so a secret store that is down cannot stop them when the environment
    // gives it.
    let secrets: Option<&[&str]> = match command {
        Command::Run => None,
        _ => Some(&["DATABASE_URL"]),
    };
    let config = match Config::load_with_secrets_only(&env, secrets).await {
        Ok(c) => c,
        Err(e) => {
            crate::observability::init_logging(log_format_hint(&env));
            return fail(&BootError::Config(e).to_string(), 2);
        }
    };
    if matches!(command, Command::Run | Command::Enqueue(_)) {
        // `run` and `enqueue` export spans (enqueue its producer span, so the job's trace
        // starts there); the exporter is built here, inside the runtime. The resource's
        // `service.instance.id` is the worker id `run` registers under.
        let telemetry = match crate::observability::otlp::settings_from_env(&env).and_then(|s| {
            crate::observability::init(
                config.log_format,
                s.as_ref(),
                crate::db::workers::process_worker_id(),
            )
        }) {
            Ok(t) => t,
            Err(e) => {
                crate::observability::init_logging(config.log_format);
                return fail(&e.to_string(), 2);
            }
        };
        log_secret_sources(&config);
        let code = match command {
            Command::Enqueue(args) => enqueue::run(args, config).await,
            _ => run(config, register).await,
        };
        // Flush what the batch exporter still holds (the last attempts before SIGTERM, the
        // enqueue's span).
        telemetry.shutdown().await;
        return code;
    }
    crate::observability::init_logging(config.log_format);
    log_secret_sources(&config);
    match command {
        Command::Run | Command::Enqueue(_) => unreachable!("handled above"),
        Command::Jobs { command } => jobs::run(command, config).await,
        Command::Repos { command } => repos::run(command, config).await,
        Command::Schema { command } => schema::run(command, config).await,
        Command::Healthcheck
        | Command::License { .. }
        | Command::Init(_)
        | Command::CheckConfig(_) => {
            unreachable!("handled above")
        }
    }
}

/// Names (never values) of the secret variables the store supplied.
fn log_secret_sources(config: &Config) {
    if !config.secrets_from_store.is_empty() {
        tracing::info!(
            variables = %config.secrets_from_store.join(","),
            "secret variables read from the secret store"
        );
    }
}

/// `LETTUCE_LOG_FORMAT` as far as it can be read when the configuration did not load.
fn log_format_hint(env: &Env) -> LogFormat {
    match env
        .get("LETTUCE_LOG_FORMAT")
        .map(|s| s.to_ascii_lowercase())
    {
        Some(s) if s == "json" => LogFormat::Json,
        _ => LogFormat::Human,
    }
}

/// Prints the error as the last line on stderr and returns its exit code.
pub(crate) fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("{}", crate::redact::userinfo(message));
    ExitCode::from(code)
}

async fn run(config: Config, register: impl FnOnce(&mut Registry)) -> ExitCode {
    let mut registry = crate::handlers::registry_for(&config);
    register(&mut registry);
    match crate::boot::run(config, registry, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker stopped with an error");
            fail(&e.to_string(), e.exit_code())
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that resolves on the first
/// of them. The handlers must exist before the worker says it is ready: a signal that arrives
/// between "worker ready" and the first poll of a lazily-installed handler would otherwise take
/// the default action and kill the process without a drain.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// Connects for a one-shot command and checks that this binary can use the schema there. Runs
/// no DDL: only `worker run` and `worker schema apply` change the schema.
pub(crate) async fn connect_for_command(config: &Config) -> Result<crate::db::DbPool, ExitCode> {
    let pool = crate::boot::connect_existing(config)
        .await
        .map_err(|e| fail(&e.to_string(), e.exit_code()))?;
    crate::db::schema::require_usable(&pool)
        .await
        .map_err(|e| {
            let e = BootError::Schema(e);
            fail(&e.to_string(), e.exit_code())
        })?;
    Ok(pool)
}
