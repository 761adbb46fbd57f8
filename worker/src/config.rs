//! Configuration: one struct, built from figment layers (built-in defaults → the TOML file named
//! by `LETTUCE_CONFIG` → the environment), validated eagerly.
//!
//! The environment is an *input* (`Env`, a plain map), never read from global state here, so
//! tests build configurations without touching the process environment. Every bad variable is
//! collected before we give up, so an operator fixes them all in one round (exit 2).
//!
//! Keys in the TOML file are the variable names in lower case (`lettuce_queues = "default=10"`).
//! Secret values are wrapped in [`Secret`], whose `Debug` and `Display` print `[redacted]`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};

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

const DEFAULTS: &[(&str, &str)] = &[
    (
        "DATABASE_URL",
        "postgres:///lettuce?host=/var/run/postgresql",
    ),
    ("LETTUCE_SELF_HOSTED", "false"),
    ("LETTUCE_LICENSE_PUBLIC_KEY", "/var/lib/lettuce/public.pem"),
    (
        "LETTUCE_LICENSE_CACHE_PATH",
        "/var/cache/lettuce/license.json",
    ),
    ("LETTUCE_TELEMETRY_ENABLED", "true"),
    (
        "LETTUCE_TELEMETRY_URL",
        "https://telemetry.uselettuce.dev/v1/heartbeat",
    ),
    ("GITHUB_HOST", "github.com"),
    ("CODEWAZE_S3_REGION", "us-east-1"),
    ("CODEWAZE_DATA_DIR", "/var/lib/lettuce/data"),
    ("LETTUCE_QUEUES", "default=10"),
    ("LETTUCE_POLL_INTERVAL_MS", "1000"),
    ("LETTUCE_DB_CONNECT_TIMEOUT_MS", "60000"),
    ("LETTUCE_DB_POOL_SIZE", "8"),
    ("LETTUCE_DB_STATEMENT_TIMEOUT_MS", "60000"),
    ("LETTUCE_LEASE_MS", "60000"),
    ("LETTUCE_JOB_TIMEOUT_MS", "1800000"),
    ("LETTUCE_SHUTDOWN_GRACE_MS", "25000"),
    ("LETTUCE_RETRY_BASE_MS", "1000"),
    ("LETTUCE_RETRY_MAX_MS", "3600000"),
    (
        "LETTUCE_JOB_RETENTION",
        "completed=24h,discarded=7d,cancelled=7d",
    ),
    ("LETTUCE_REINDEX_INTERVAL", "6h"),
    ("LETTUCE_HTTP_ADDR", "0.0.0.0:9090"),
    ("LETTUCE_DIAG_JOBS", "false"),
    ("LETTUCE_LOG_FORMAT", "human"),
    ("LETTUCE_SECRET_STORE", "env"),
    ("LETTUCE_VAULT_MOUNT", "secret"),
];

/// The layered configuration as strings, before typing: one value per known variable.
/// `Debug` prints `<redacted>` for the values of [`SECRET_VARIABLES`].
#[derive(Clone, Default)]
pub struct RawConfig {
    values: BTreeMap<String, String>,
    /// Variables set by the file or the environment (not by a built-in default).
    explicit: std::collections::BTreeSet<String>,
    config_file: Option<PathBuf>,
}

impl std::fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values: BTreeMap<&str, &str> = self
            .values
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_VARIABLES.contains(&k.as_str());
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("RawConfig")
            .field("values", &values)
            .field("explicit", &self.explicit)
            .field("config_file", &self.config_file)
            .finish()
    }
}

impl RawConfig {
    /// Layers defaults → TOML file (`LETTUCE_CONFIG`) → environment, keeping known variables only.
    pub fn layer(env: &Env) -> Result<RawConfig, ConfigError> {
        let defaults: BTreeMap<String, String> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_lowercase(), (*v).to_string()))
            .collect();
        let mut figment = Figment::from(Serialized::defaults(defaults));
        let mut explicit: std::collections::BTreeSet<String> = env
            .keys()
            .filter(|k| VARIABLES.contains(&k.as_str()))
            .cloned()
            .collect();
        let config_file = env
            .get("LETTUCE_CONFIG")
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from);
        if let Some(path) = &config_file {
            if !path.is_file() {
                return Err(ConfigError {
                    vars: vec![BadVar {
                        name: "LETTUCE_CONFIG".into(),
                        problem: format!("config file {} not found", path.display()),
                    }],
                });
            }
            check_config_file(path).map_err(|problem| ConfigError {
                vars: vec![BadVar {
                    name: "LETTUCE_CONFIG".into(),
                    problem,
                }],
            })?;
            figment = figment.merge(Toml::file_exact(path));
            if let Ok(file) = Figment::from(Toml::file_exact(path)).extract::<Map<String, Value>>()
            {
                explicit.extend(file.keys().map(|k| k.to_uppercase()));
            }
        }
        let env_layer: Dict = env
            .iter()
            .filter(|(k, _)| VARIABLES.contains(&k.as_str()) && k.as_str() != "LETTUCE_CONFIG")
            .map(|(k, v)| (k.to_lowercase(), Value::from(v.clone())))
            .collect();
        figment = figment.merge(Serialized::defaults(env_layer));
        let merged: Map<String, Value> = figment.extract().map_err(|e| ConfigError {
            vars: vec![BadVar {
                name: "LETTUCE_CONFIG".into(),
                // figment errors quote the offending value; a TOML file may hold secrets, so
                // only the kind of error and its location are kept.
                problem: format!("config file does not parse: {}", e.kind),
            }],
        })?;
        let mut values = BTreeMap::new();
        let mut bad = Vec::new();
        for (key, value) in merged {
            let name = key.to_uppercase();
            if !VARIABLES.contains(&name.as_str()) {
                bad.push(BadVar {
                    name: "LETTUCE_CONFIG".into(),
                    problem: format!("unknown key `{key}` in config file"),
                });
                continue;
            }
            let text = match value {
                Value::String(_, s) => s,
                Value::Bool(_, b) => b.to_string(),
                Value::Num(_, n) => match n.to_u128() {
                    Some(u) => u.to_string(),
                    None => n.to_i128().map(|i| i.to_string()).unwrap_or_default(),
                },
                other => {
                    bad.push(BadVar {
                        name,
                        problem: format!(
                            "expected a string or number, found {}",
                            other.to_actual()
                        ),
                    });
                    continue;
                }
            };
            values.insert(name, text);
        }
        if !bad.is_empty() {
            return Err(ConfigError { vars: bad });
        }
        Ok(RawConfig {
            values,
            explicit,
            config_file,
        })
    }

    /// The value of a variable after layering, `None` when unset or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Fills a variable that no layer set (used by secret stores, which come after the file).
    pub fn fill(&mut self, name: &str, value: String) {
        if self.explicit.insert(name.to_string()) {
            self.values.insert(name.to_string(), value);
        }
    }

    /// True when the file or the environment set this variable.
    pub fn is_explicit(&self, name: &str) -> bool {
        self.explicit.contains(name)
    }
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

    /// Types and validates a layered configuration, naming every bad variable.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut p = Parser {
            raw: &raw,
            bad: Vec::new(),
        };
        let self_hosted = p.bool("LETTUCE_SELF_HOSTED");
        let telemetry_switch = p.bool("LETTUCE_TELEMETRY_ENABLED");
        let alias = raw
            .get("LETTUCE_TELEMETRY_DISABLED")
            .map(|_| p.bool("LETTUCE_TELEMETRY_DISABLED"));
        // The deprecated alias only counts when the new variable was not set explicitly.
        let explicit_new = raw.explicit.contains("LETTUCE_TELEMETRY_ENABLED");
        let telemetry_enabled = match alias {
            Some(disabled) if !explicit_new => !disabled,
            _ => telemetry_switch,
        };
        let s3 = raw.get("CODEWAZE_S3_BUCKET").map(|bucket| {
            let endpoint = raw.get("CODEWAZE_S3_ENDPOINT").map(str::to_string);
            let force_path_style = match raw.get("CODEWAZE_S3_FORCE_PATH_STYLE") {
                Some(_) => p.bool("CODEWAZE_S3_FORCE_PATH_STYLE"),
                None => endpoint.is_some(),
            };
            S3Config {
                bucket: bucket.to_string(),
                endpoint,
                region: p.string("CODEWAZE_S3_REGION"),
                access_key_id: raw.get("CODEWAZE_S3_ACCESS_KEY_ID").map(str::to_string),
                secret_access_key: raw
                    .get("CODEWAZE_S3_SECRET_ACCESS_KEY")
                    .map(|s| Secret::new(s.to_string())),
                force_path_style,
            }
        });
        let config = Config {
            database_url: Secret::new(p.string("DATABASE_URL")),
            listen_database_url: p
                .optional("LETTUCE_LISTEN_DATABASE_URL")
                .filter(|u| !u.is_empty())
                .map(Secret::new),
            self_hosted,
            license_key: raw
                .get("LETTUCE_LICENSE_KEY")
                .map(|s| Secret::new(s.trim().to_string())),
            license_public_key: p.string("LETTUCE_LICENSE_PUBLIC_KEY"),
            license_cache_path: PathBuf::from(p.string("LETTUCE_LICENSE_CACHE_PATH")),
            telemetry_enabled,
            telemetry_deprecated_alias_used: alias.is_some(),
            telemetry_url: p.url("LETTUCE_TELEMETRY_URL"),
            github: GithubAppVars {
                app_id: p.optional("GITHUB_APP_ID"),
                app_name: p.optional("GITHUB_APP_NAME"),
                private_key: p.optional("GITHUB_APP_PRIVATE_KEY").map(Secret::new),
                client_id: p.optional("GITHUB_APP_CLIENT_ID"),
                client_secret: p.optional("GITHUB_APP_CLIENT_SECRET").map(Secret::new),
                github_host: p.string("GITHUB_HOST"),
                api_url: p.optional_url("GITHUB_API_URL"),
                server_url: p.optional_url("GITHUB_SERVER_URL"),
                gitlab_host: p.optional("GITLAB_HOST"),
                gitlab_token: p.optional("GITLAB_TOKEN").map(Secret::new),
            },
            webhooks: WebhookVars {
                web_url: p.optional_url("LETTUCE_WEB_URL"),
                secret: p.optional("LETTUCE_WEBHOOK_SECRET").map(Secret::new),
            },
            s3,
            data_dir: PathBuf::from(p.string("CODEWAZE_DATA_DIR")),
            queues: p.queues("LETTUCE_QUEUES"),
            poll_interval: p.millis("LETTUCE_POLL_INTERVAL_MS", 1, HOUR_MS),
            db_connect_timeout: p.millis("LETTUCE_DB_CONNECT_TIMEOUT_MS", 0, HOUR_MS),
            db_pool_size: p.count("LETTUCE_DB_POOL_SIZE"),
            db_statement_timeout: p.millis("LETTUCE_DB_STATEMENT_TIMEOUT_MS", 0, HOUR_MS),
            lease: p.millis("LETTUCE_LEASE_MS", 100, HOUR_MS),
            job_timeout: p.millis("LETTUCE_JOB_TIMEOUT_MS", 1, 7 * DAY_MS),
            shutdown_grace: p.millis("LETTUCE_SHUTDOWN_GRACE_MS", 0, HOUR_MS),
            retry_base: p.millis("LETTUCE_RETRY_BASE_MS", 0, DAY_MS),
            retry_max: p.millis("LETTUCE_RETRY_MAX_MS", 0, 30 * DAY_MS),
            retention: p.retention("LETTUCE_JOB_RETENTION"),
            reindex_interval: p.duration("LETTUCE_REINDEX_INTERVAL", 1_000, 365 * 86_400_000),
            http_addr: p.http_addr("LETTUCE_HTTP_ADDR"),
            diag_jobs: p.bool("LETTUCE_DIAG_JOBS"),
            log_format: p.log_format("LETTUCE_LOG_FORMAT"),
            secret_store: p.secret_store("LETTUCE_SECRET_STORE"),
            vault: VaultConfig {
                addr: p.optional("VAULT_ADDR"),
                token: p.optional("VAULT_TOKEN").map(Secret::new),
                mount: p.string("LETTUCE_VAULT_MOUNT"),
            },
            config_file: raw.config_file.clone(),
            secrets_from_store: Vec::new(),
        };
        if config.retry_max < config.retry_base {
            p.bad.push(BadVar {
                name: "LETTUCE_RETRY_MAX_MS".into(),
                problem: "must be at least LETTUCE_RETRY_BASE_MS".into(),
            });
        }
        if p.bad.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { vars: p.bad })
        }
    }

    /// Total handler slots across this process's queues.
    pub fn total_concurrency(&self) -> usize {
        self.queues.iter().map(|q| q.concurrency).sum()
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// Longest retention a finished state may be given (10 years).
const MAX_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

/// Typed parsing that records a [`BadVar`] instead of failing, so all problems are reported.
struct Parser<'a> {
    raw: &'a RawConfig,
    bad: Vec<BadVar>,
}

impl Parser<'_> {
    fn reject(&mut self, name: &str, problem: String) {
        self.bad.push(BadVar {
            name: name.to_string(),
            problem,
        });
    }

    fn quoted(&self, name: &str, value: &str) -> String {
        if SECRET_VARIABLES.contains(&name) {
            "the given value".to_string()
        } else {
            format!("`{value}`")
        }
    }

    fn string(&mut self, name: &str) -> String {
        self.raw.get(name).unwrap_or_default().trim().to_string()
    }

    fn optional(&mut self, name: &str) -> Option<String> {
        self.raw.get(name).map(|v| v.trim().to_string())
    }

    fn bool(&mut self, name: &str) -> bool {
        let value = self.string(name);
        match parse_bool(&value) {
            Some(b) => b,
            None => {
                let shown = self.quoted(name, &value);
                self.reject(
                    name,
                    format!("{shown} is not a boolean; accepted: true/false/1/0/yes/no/on/off"),
                );
                false
            }
        }
    }

    /// Milliseconds between `min` and `max` (an upper bound keeps every later `now() + d`
    /// and timer inside what Postgres and tokio represent).
    fn millis(&mut self, name: &str, min: u64, max: u64) -> Duration {
        let value = self.string(name);
        match value.parse::<u64>() {
            Ok(ms) if (min..=max).contains(&ms) => Duration::from_millis(ms),
            _ => {
                self.reject(
                    name,
                    format!("`{value}` is not a whole number of milliseconds from {min} to {max}"),
                );
                Duration::from_millis(min.max(1))
            }
        }
    }

    /// A duration (`500ms`, `30s`, `15m`, `6h`, `7d`) between `min_ms` and `max_ms`.
    fn duration(&mut self, name: &str, min_ms: u64, max_ms: u64) -> Duration {
        let value = self.string(name);
        match parse_duration(&value) {
            Some(d) if (min_ms..=max_ms).contains(&(d.as_millis() as u64)) => d,
            _ => {
                self.reject(
                    name,
                    format!(
                        "`{value}` is not a duration (e.g. 30m, 6h, 7d) from {min_ms} ms to {} days",
                        max_ms / 86_400_000
                    ),
                );
                Duration::from_millis(min_ms.max(1))
            }
        }
    }

    fn count(&mut self, name: &str) -> usize {
        let value = self.string(name);
        match value.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                self.reject(name, format!("`{value}` is not a whole number ≥ 1"));
                1
            }
        }
    }

    fn optional_url(&mut self, name: &str) -> Option<String> {
        let value = self.optional(name)?;
        if !(value.starts_with("http://") || value.starts_with("https://")) {
            self.reject(name, format!("`{value}` is not an http(s) URL"));
        }
        Some(value.trim_end_matches('/').to_string())
    }

    fn url(&mut self, name: &str) -> String {
        let value = self.string(name);
        if !(value.starts_with("http://") || value.starts_with("https://")) {
            self.reject(name, format!("`{value}` is not an http(s) URL"));
        }
        value
    }

    fn queues(&mut self, name: &str) -> Vec<QueueConfig> {
        let value = self.string(name);
        match parse_queues(&value) {
            Ok(q) => q,
            Err(problem) => {
                self.reject(name, problem);
                Vec::new()
            }
        }
    }

    fn retention(&mut self, name: &str) -> Retention {
        let value = self.string(name);
        match parse_retention(&value) {
            Ok(r) => r,
            Err(problem) => {
                self.reject(name, problem);
                Retention {
                    completed: Duration::from_secs(86_400),
                    discarded: Duration::from_secs(7 * 86_400),
                    cancelled: Duration::from_secs(7 * 86_400),
                }
            }
        }
    }

    fn http_addr(&mut self, name: &str) -> Option<SocketAddr> {
        let value = self.string(name);
        match parse_http_addr(&value) {
            Ok(a) => a,
            Err(problem) => {
                self.reject(name, problem);
                None
            }
        }
    }

    fn log_format(&mut self, name: &str) -> LogFormat {
        let value = self.string(name);
        match value.to_ascii_lowercase().as_str() {
            "human" | "text" | "" => LogFormat::Human,
            "json" => LogFormat::Json,
            _ => {
                self.reject(
                    name,
                    format!("`{value}` is not a log format; accepted: human, json"),
                );
                LogFormat::Human
            }
        }
    }

    fn secret_store(&mut self, name: &str) -> SecretStoreKind {
        let value = self.string(name);
        match value.to_ascii_lowercase().as_str() {
            "env" => SecretStoreKind::Env,
            "vault" => SecretStoreKind::Vault,
            "aws" => SecretStoreKind::Aws,
            _ => {
                self.reject(
                    name,
                    format!("`{value}` is not a secret store; accepted: env, vault, aws"),
                );
                SecretStoreKind::Env
            }
        }
    }
}

/// `true/false/1/0/yes/no/on/off`, case-insensitive.
/// `LETTUCE_HTTP_ADDR`: an address, or `None` for `off` (also `none`, `disabled`).
pub fn parse_http_addr(value: &str) -> Result<Option<SocketAddr>, String> {
    if matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "off" | "none" | "disabled"
    ) {
        return Ok(None);
    }
    value
        .trim()
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| format!("`{value}` is not an address like 0.0.0.0:9090 (or `off`)"))
}

/// The largest `LETTUCE_CONFIG` file read.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// Reads and parses the `LETTUCE_CONFIG` file before figment sees it, so that a syntax error is
/// reported by line number and kind only: the TOML parser's own message quotes the offending
/// line, and that line may hold a password.
fn check_config_file(path: &std::path::Path) -> Result<(), String> {
    let len = std::fs::metadata(path)
        .map_err(|e| {
            format!(
                "config file {} cannot be read: {}",
                path.display(),
                e.kind()
            )
        })?
        .len();
    if len > MAX_CONFIG_FILE_BYTES {
        return Err(format!(
            "config file {} is larger than {MAX_CONFIG_FILE_BYTES} bytes",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "config file {} cannot be read: {}",
            path.display(),
            e.kind()
        )
    })?;
    match text.parse::<toml::Table>() {
        Ok(_) => Ok(()),
        Err(e) => {
            let at = e
                .span()
                .map(|span| {
                    let start = span.start.min(text.len());
                    let line = text.as_bytes()[..start]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1;
                    format!(" at line {line}")
                })
                .unwrap_or_default();
            Err(format!(
                "config file {} is not valid TOML{at}: {}",
                path.display(),
                toml_error_kind(e.message())
            ))
        }
    }
}

/// The parser's description of a TOML error when it quotes nothing of the file, else a generic
/// one.
fn toml_error_kind(message: &str) -> &str {
    let first = message.lines().next().unwrap_or("");
    if first.is_empty() || first.len() > 80 || first.contains(['"', '\'', '`']) {
        "syntax error"
    } else {
        first
    }
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `queue=concurrency` pairs, comma separated: `default=10,reports=2`.
pub fn parse_queues(value: &str) -> Result<Vec<QueueConfig>, String> {
    let mut queues: Vec<QueueConfig> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, n) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not a queue=concurrency pair"))?;
        let name = name.trim();
        if crate::limits::check_queue(name).is_err() {
            return Err(format!(
                "`{name}` is not a queue name ([A-Za-z0-9_.:-], 1 to 64 characters)"
            ));
        }
        let concurrency = n
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|c| (1..=10_000).contains(c))
            .ok_or_else(|| format!("`{}` is not a concurrency between 1 and 10000", n.trim()))?;
        if queues.iter().any(|q| q.name == name) {
            return Err(format!("queue `{name}` is listed twice"));
        }
        queues.push(QueueConfig {
            name: name.to_string(),
            concurrency,
        });
    }
    if queues.is_empty() {
        return Err("at least one queue=concurrency pair is required, e.g. default=10".into());
    }
    Ok(queues)
}

/// A duration like `500ms`, `30s`, `15m`, `24h` or `7d`.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = value.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Either one duration for every finished state, or `completed=24h,discarded=7d,cancelled=7d`
/// (states left out keep their defaults).
pub fn parse_retention(value: &str) -> Result<Retention, String> {
    let mut r = Retention {
        completed: Duration::from_secs(86_400),
        discarded: Duration::from_secs(7 * 86_400),
        cancelled: Duration::from_secs(7 * 86_400),
    };
    let too_long = |d: Duration| {
        (d > MAX_RETENTION)
            .then(|| format!("a retention of `{}` is longer than 3650d", value.trim()))
    };
    if let Some(d) = parse_duration(value) {
        if let Some(e) = too_long(d) {
            return Err(e);
        }
        return Ok(Retention {
            completed: d,
            discarded: d,
            cancelled: d,
        });
    }
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (state, d) = part.split_once('=').ok_or_else(|| {
            format!("`{part}` is not a duration (e.g. 24h) or state=duration pair")
        })?;
        let d = parse_duration(d)
            .ok_or_else(|| format!("`{}` is not a duration like 30s, 15m, 24h, 7d", d.trim()))?;
        if let Some(e) = too_long(d) {
            return Err(e);
        }
        match state.trim() {
            "completed" => r.completed = d,
            "discarded" => r.discarded = d,
            "cancelled" => r.cancelled = d,
            other => {
                return Err(format!(
                    "`{other}` is not a finished state; accepted: completed, discarded, cancelled"
                ));
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_from_an_empty_environment() {
        let c = Config::load(&Env::new()).unwrap();
        assert_eq!(
            c.database_url.expose(),
            "postgres:///lettuce?host=/var/run/postgresql"
        );
        assert!(!c.self_hosted);
        assert_eq!(
            c.queues,
            vec![QueueConfig {
                name: "default".into(),
                concurrency: 10
            }]
        );
        assert_eq!(c.lease, Duration::from_secs(60));
        assert_eq!(c.retention.completed, Duration::from_secs(86_400));
        assert_eq!(c.retention.discarded, Duration::from_secs(7 * 86_400));
        assert_eq!(c.http_addr, Some("0.0.0.0:9090".parse().unwrap()));
        assert!(c.s3.is_none());
    }

    #[test]
    fn every_bad_variable_is_named_in_one_error() {
        let err = Config::load(&env(&[
            ("LETTUCE_SELF_HOSTED", "maybe"),
            ("LETTUCE_QUEUES", "default=zero"),
            ("LETTUCE_LEASE_MS", "soon"),
            ("LETTUCE_HTTP_ADDR", "nowhere"),
        ]))
        .unwrap_err();
        let mut names: Vec<_> = err.vars.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "LETTUCE_HTTP_ADDR",
                "LETTUCE_LEASE_MS",
                "LETTUCE_QUEUES",
                "LETTUCE_SELF_HOSTED"
            ]
        );
        assert_eq!(names.len(), 4, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("accepted: true/false/1/0/yes/no/on/off"),
            "{text}"
        );
    }

    #[test]
    fn booleans_accept_every_documented_spelling() {
        for (s, b) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("On", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("OFF", false),
            ("False", false),
        ] {
            assert_eq!(parse_bool(s), Some(b), "{s}");
        }
        assert_eq!(parse_bool("y"), None);
        assert_eq!(parse_bool(""), None);
    }

    #[test]
    fn secret_values_never_appear_in_errors_or_debug() {
        let err = Config::load(&env(&[
            ("LETTUCE_SELF_HOSTED", "hunter2-not-a-bool"),
            ("DATABASE_URL", "postgres://u:supersecret@db/x"),
            ("LETTUCE_LICENSE_KEY", "eyJsecret.token.value"),
        ]))
        .unwrap_err();
        assert!(!err.to_string().contains("supersecret"));
        let ok = Config::load(&env(&[
            ("DATABASE_URL", "postgres://u:supersecret@db/x"),
            ("LETTUCE_LICENSE_KEY", "eyJsecret.token.value"),
            ("GITHUB_APP_CLIENT_SECRET", "ghsecret"),
        ]))
        .unwrap();
        let debug = format!("{ok:?}");
        assert!(!debug.contains("supersecret"));
        assert!(!debug.contains("eyJsecret"));
        assert!(!debug.contains("ghsecret"));
    }

    /// A config file of its own for one test.
    fn toml(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("lettuce-cfg-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn toml_file_is_layered_under_the_environment() {
        let path = toml(
            "layered",
            "lettuce_queues = \"a=1,b=2\"\nlettuce_lease_ms = 5000\nlettuce_diag_jobs = true\n",
        );
        let c = Config::load(&env(&[
            ("LETTUCE_CONFIG", path.to_str().unwrap()),
            ("LETTUCE_LEASE_MS", "7000"),
        ]))
        .unwrap();
        assert_eq!(c.queues.len(), 2);
        assert_eq!(c.lease, Duration::from_millis(7000));
        assert!(c.diag_jobs);
    }

    #[test]
    fn a_missing_config_file_or_unknown_key_is_an_error() {
        let err =
            Config::load(&env(&[("LETTUCE_CONFIG", "/nonexistent/worker.toml")])).unwrap_err();
        assert!(err.to_string().contains("not found"));
        let path = toml("unknown", "lettuce_queuez = \"a=1\"\n");
        let err = Config::load(&env(&[("LETTUCE_CONFIG", path.to_str().unwrap())])).unwrap_err();
        assert!(
            err.to_string().contains("unknown key `lettuce_queuez`"),
            "{err}"
        );
    }

    #[test]
    fn raw_config_debug_never_shows_a_secret_value() {
        let raw = RawConfig::layer(&env(&[
            ("DATABASE_URL", "postgres://u:DBSECRET@h/d"),
            ("LETTUCE_LICENSE_KEY", "LICENSESECRET"),
            ("LETTUCE_QUEUES", "default=3"),
        ]))
        .unwrap();
        let shown = format!("{raw:?}");
        assert!(!shown.contains("DBSECRET"), "{shown}");
        assert!(!shown.contains("LICENSESECRET"), "{shown}");
        assert!(
            shown.contains("\"DATABASE_URL\": \"<redacted>\""),
            "{shown}"
        );
        assert!(shown.contains("default=3"), "{shown}");
    }

    #[test]
    fn a_toml_syntax_error_names_the_line_and_kind_never_the_text() {
        let path = toml(
            "unterminated",
            "lettuce_queues = \"default=2\"\ndatabase_url = \"postgres://lettuce:PASSWORD@db/lettuce\n",
        );
        let err = Config::load(&env(&[("LETTUCE_CONFIG", path.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not valid TOML at line 2"), "{err}");
        assert!(!err.contains("PASSWORD"), "{err}");
        assert!(!err.contains("postgres://"), "{err}");
        let path = toml("bare", "database_url = postgres://u:SECRET@h/d\n");
        let err = Config::load(&env(&[("LETTUCE_CONFIG", path.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at line 1"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn deprecated_telemetry_alias_is_folded_in() {
        let c = Config::load(&env(&[("LETTUCE_TELEMETRY_DISABLED", "1")])).unwrap();
        assert!(!c.telemetry_enabled);
        assert!(c.telemetry_deprecated_alias_used);
        let c = Config::load(&env(&[("LETTUCE_TELEMETRY_ENABLED", "off")])).unwrap();
        assert!(!c.telemetry_enabled);
        assert!(!c.telemetry_deprecated_alias_used);
    }

    #[test]
    fn queues_and_retention_parse() {
        assert_eq!(parse_queues("default=10, reports=2").unwrap().len(), 2);
        assert!(parse_queues("default").is_err());
        assert!(parse_queues("a=1,a=2").is_err());
        assert!(parse_queues("").is_err());
        let r = parse_retention("12h").unwrap();
        assert_eq!(r.cancelled, Duration::from_secs(12 * 3600));
        let r = parse_retention("completed=1h").unwrap();
        assert_eq!(r.completed, Duration::from_secs(3600));
        assert_eq!(r.discarded, Duration::from_secs(7 * 86_400));
        assert!(parse_retention("completed=soon").is_err());
        assert!(parse_retention("99999d").unwrap_err().contains("3650d"));
        assert!(parse_retention("completed=3650d").is_ok());
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    }

    #[test]
    fn s3_path_style_defaults_on_with_an_endpoint() {
        let c = Config::load(&env(&[
            ("CODEWAZE_S3_BUCKET", "b"),
            ("CODEWAZE_S3_ENDPOINT", "http://127.0.0.1:9000"),
        ]))
        .unwrap();
        assert!(c.s3.unwrap().force_path_style);
        let c = Config::load(&env(&[("CODEWAZE_S3_BUCKET", "b")])).unwrap();
        assert!(!c.s3.unwrap().force_path_style);
    }
}
