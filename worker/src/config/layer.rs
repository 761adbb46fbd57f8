//! The layering: built-in defaults → the TOML file named by `LETTUCE_CONFIG` → the environment,
//! into a [`RawConfig`] of strings, one per known variable; the file is checked before figment
//! reads it so that an error never quotes its text.

use std::collections::BTreeMap;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};

use super::{BadVar, ConfigError, Env, SECRET_VARIABLES, VARIABLES};

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
    pub(super) explicit: std::collections::BTreeSet<String>,
    pub(super) config_file: Option<PathBuf>,
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
