//! Configuration: one struct, built from figment layers (built-in defaults → the TOML file named
//! by `LETTUCE_CONFIG` → the environment), validated eagerly.
//!
//! The environment is an *input* (`Env`, a plain map), never read from global state here, so
//! tests build configurations without touching the process environment. Every bad variable is
//! collected before we give up, so an operator fixes them all in one round (exit 2).
//!
//! Keys in the TOML file are the variable names in lower case (`lettuce_queues = "default=10"`).
//! Secret values are wrapped in [`Secret`], whose `Debug` and `Display` print `[redacted]`.
//!
//! The layering is in `layer.rs` ([`RawConfig`]); the typing and validation of each variable
//! family in `parse.rs` ([`Config::from_raw`]).

mod layer;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use layer::{MAX_CONFIG_FILE_BYTES, RawConfig};
pub use parse::{parse_bool, parse_duration, parse_http_addr, parse_queues, parse_retention};

/// The process environment as a plain map (name → value).
pub type Env = HashMap<String, String>;

/// Reads the real process environment into an [`Env`]. Only `main` and the CLI call this.
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Every variable the worker reads, in documentation order. `.env.example` must list each one
/// (a test checks it). Variables read by the OpenTelemetry SDK itself (`OTEL_*`) are listed too.
pub const VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "LETTUCE_LISTEN_DATABASE_URL",
    "LETTUCE_CONFIG",
    "LETTUCE_SELF_HOSTED",
    "LETTUCE_LICENSE_KEY",
    "LETTUCE_LICENSE_PUBLIC_KEY",
    "LETTUCE_LICENSE_CACHE_PATH",
    "LETTUCE_TELEMETRY_ENABLED",
    "LETTUCE_TELEMETRY_DISABLED",
    "LETTUCE_TELEMETRY_URL",
    "GITHUB_APP_ID",
    "GITHUB_APP_NAME",
    "GITHUB_APP_PRIVATE_KEY",
    "GITHUB_APP_CLIENT_ID",
    "GITHUB_APP_CLIENT_SECRET",
    "GITHUB_HOST",
    "GITHUB_API_URL",
    "GITHUB_SERVER_URL",
    "GITLAB_HOST",
    "GITLAB_TOKEN",
    "LETTUCE_WEB_URL",
    "LETTUCE_WEBHOOK_SECRET",
    "CODEWAZE_S3_BUCKET",
    "CODEWAZE_S3_ENDPOINT",
    "CODEWAZE_S3_REGION",
    "CODEWAZE_S3_ACCESS_KEY_ID",
    "CODEWAZE_S3_SECRET_ACCESS_KEY",
    "CODEWAZE_S3_FORCE_PATH_STYLE",
    "CODEWAZE_DATA_DIR",
    "LETTUCE_QUEUES",
    "LETTUCE_POLL_INTERVAL_MS",
    "LETTUCE_DB_CONNECT_TIMEOUT_MS",
    "LETTUCE_DB_POOL_SIZE",
    "LETTUCE_DB_STATEMENT_TIMEOUT_MS",
    "LETTUCE_LEASE_MS",
    "LETTUCE_JOB_TIMEOUT_MS",
    "LETTUCE_SHUTDOWN_GRACE_MS",
    "LETTUCE_RETRY_BASE_MS",
    "LETTUCE_RETRY_MAX_MS",
    "LETTUCE_JOB_RETENTION",
    "LETTUCE_REINDEX_INTERVAL",
    "LETTUCE_HTTP_ADDR",
    "LETTUCE_DIAG_JOBS",
    "LETTUCE_LOG_FORMAT",
    "LETTUCE_SECRET_STORE",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "LETTUCE_VAULT_MOUNT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "RUST_LOG",
];

/// Variables whose values are secrets: never logged, never printed.
pub const SECRET_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "LETTUCE_LICENSE_KEY",
    "GITHUB_APP_PRIVATE_KEY",
    "GITHUB_APP_CLIENT_SECRET",
    "CODEWAZE_S3_SECRET_ACCESS_KEY",
    "GITLAB_TOKEN",
    "LETTUCE_WEBHOOK_SECRET",
    "VAULT_TOKEN",
    "LETTUCE_LISTEN_DATABASE_URL",
];

/// A value that must never reach logs, errors or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    /// The secret itself; call only where the value is used, never where it is shown.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One variable that did not parse: its name, what was wrong, and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadVar {
    pub name: String,
    pub problem: String,
}

/// The configuration did not load; lists every bad variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ConfigError: {}", .vars.iter().map(|v| format!("{}: {}", v.name, v.problem)).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    pub vars: Vec<BadVar>,
}

/// How many handlers may run at once in one named queue of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    pub concurrency: usize,
}

/// How long finished jobs are kept before the pruner deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub completed: Duration,
    pub discarded: Duration,
    pub cancelled: Duration,
}

/// Which secret store fills secret variables that the environment leaves unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretStoreKind {
    Env,
    Vault,
    Aws,
}

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The artifact bucket, when one is configured.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret<String>>,
    pub force_path_style: bool,
}

/// The GitHub App variables as given (each `None` when unset, empty or whitespace-only).
/// The boot gate decides what a partial set means.
#[derive(Debug, Clone, Default)]
pub struct GithubAppVars {
    pub app_id: Option<String>,
    pub app_name: Option<String>,
    pub private_key: Option<Secret<String>>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
    pub github_host: String,
    /// `GITHUB_API_URL`: the REST API base, overriding what `GITHUB_HOST` implies.
    pub api_url: Option<String>,
    /// `GITHUB_SERVER_URL`: the web and clone base, overriding what `GITHUB_HOST` implies.
    pub server_url: Option<String>,
    pub gitlab_host: Option<String>,
    /// `GITLAB_TOKEN`: a group or project access token (`read_repository`, `api`).
    pub gitlab_token: Option<Secret<String>>,
}

/// Where per-repository webhooks point, and what they are signed with.
#[derive(Debug, Clone, Default)]
pub struct WebhookVars {
    /// `LETTUCE_WEB_URL`: the instance's public HTTPS URL, without a trailing `/`.
    pub web_url: Option<String>,
    /// `LETTUCE_WEBHOOK_SECRET`: what GitHub/GitLab sign deliveries with.
    pub secret: Option<Secret<String>>,
}

/// Vault connection for `LETTUCE_SECRET_STORE=vault`.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub addr: Option<String>,
    pub token: Option<Secret<String>>,
    pub mount: String,
}

/// The whole worker configuration. Built only through [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres connection string (a secret: it may carry a password).
    pub database_url: Secret<String>,
    /// The connection LISTEN uses (`LETTUCE_LISTEN_DATABASE_URL`, a secret like
    /// `DATABASE_URL`); `None`: `DATABASE_URL`. Points past a transaction pooler at the server.
    pub listen_database_url: Option<Secret<String>>,
    /// Turns on license gating, entitlements and telemetry.
    pub self_hosted: bool,
    pub license_key: Option<Secret<String>>,
    /// Path to, or inline text of, the Ed25519 public key.
    pub license_public_key: String,
    pub license_cache_path: PathBuf,
    /// The operator's telemetry switch after the deprecated alias was folded in.
    pub telemetry_enabled: bool,
    /// True when `LETTUCE_TELEMETRY_DISABLED` was set (boot warns once, naming the new variable).
    pub telemetry_deprecated_alias_used: bool,
    pub telemetry_url: String,
    pub github: GithubAppVars,
    pub webhooks: WebhookVars,
    pub s3: Option<S3Config>,
    pub data_dir: PathBuf,
    pub queues: Vec<QueueConfig>,
    pub poll_interval: Duration,
    pub db_connect_timeout: Duration,
    /// Connections in the shared pool (the LISTEN connection is extra).
    pub db_pool_size: usize,
    /// `statement_timeout` for the worker's own connections; zero sends none (PgBouncer in
    /// transaction mode refuses startup options).
    pub db_statement_timeout: Duration,
    pub lease: Duration,
    /// Default limit on one attempt; a handler may ask for another.
    pub job_timeout: Duration,
    pub shutdown_grace: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub retention: Retention,
    /// A repository not indexed for this long gets a scheduled `repo.index`.
    pub reindex_interval: Duration,
    /// `None` when `LETTUCE_HTTP_ADDR=off`.
    pub http_addr: Option<SocketAddr>,
    pub diag_jobs: bool,
    pub log_format: LogFormat,
    pub secret_store: SecretStoreKind,
    pub vault: VaultConfig,
    /// The config file that was named by `LETTUCE_CONFIG`, if any.
    pub config_file: Option<PathBuf>,
    /// Secret variables whose values came from the secret store (names only), filled by
    /// [`Config::load_with_secrets`].
    pub secrets_from_store: Vec<String>,
}

impl Config {
    /// The URL LISTEN uses and the variable it came from: `LETTUCE_LISTEN_DATABASE_URL` when
    /// set, else `DATABASE_URL`.
    pub fn listen_url(&self) -> (&str, &'static str) {
        match &self.listen_database_url {
            Some(url) => (url.expose(), "LETTUCE_LISTEN_DATABASE_URL"),
            None => (self.database_url.expose(), "DATABASE_URL"),
        }
    }

    /// Loads and validates the configuration from the given environment.
    pub fn load(env: &Env) -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::layer(env)?)
    }

    /// Loads like [`Config::load`], with the secret store `LETTUCE_SECRET_STORE` names layered
    /// between the config file and the environment: secret variables that neither set are
    /// fetched from it before typing. This is what `worker run` and the other commands use;
    /// `Config::load` stays the pure, offline path.
    pub async fn load_with_secrets(env: &Env) -> Result<Config, ConfigError> {
        Config::load_with_secrets_only(env, None).await
    }

    /// [`Config::load_with_secrets`] reading from the secret store only the secret variables in
    /// `only` (every one with `None`); the others keep what the environment and file say.
    pub async fn load_with_secrets_only(
        env: &Env,
        only: Option<&[&str]>,
    ) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::layer(env)?;
        let filled = crate::secrets::fill_only(&mut raw, env, only).await;
        let typed = Config::from_raw(raw);
        match (filled, typed) {
            (Ok(filled), Ok(mut config)) => {
                config.secrets_from_store = filled.from_store;
                Ok(config)
            }
            (Ok(_), Err(e)) => Err(e),
            (Err(mut vars), Err(e)) => {
                vars.extend(e.vars);
                Err(ConfigError { vars })
            }
            (Err(vars), Ok(_)) => Err(ConfigError { vars }),
        }
    }

    /// Total handler slots across this process's queues.
    pub fn total_concurrency(&self) -> usize {
        self.queues.iter().map(|q| q.concurrency).sum()
    }
}

#[cfg(test)]
mod tests;
