//! Typing: [`Config::from_raw`] turns a [`RawConfig`] into a [`Config`], parsing each variable
//! family (booleans, milliseconds, durations, URLs, queues, retention, the HTTP address) and
//! naming every bad variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    BadVar, Config, ConfigError, GithubAppVars, LogFormat, QueueConfig, RawConfig, Retention,
    S3Config, SECRET_VARIABLES, Secret, SecretStoreKind, VaultConfig, WebhookVars,
};

impl Config {
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

/// `true/false/1/0/yes/no/on/off`, case-insensitive.
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
    if value == "0" {
        return Some(Duration::ZERO);
    }
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
