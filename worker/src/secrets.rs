//! Secret stores (`LETTUCE_SECRET_STORE`, README "Secret stores"): where secret variables come from when the
//! environment leaves them unset.
//!
//! - `env` (the default): the environment and the config file are all there is.
//! - `vault`: KV v2 read of `GET {VAULT_ADDR}/v1/{LETTUCE_VAULT_MOUNT}/data/lettuce/{NAME}`
//!   with `X-Vault-Token`; the value is the field `value` of the secret's data
//!   (`bao kv put secret/lettuce/LETTUCE_LICENSE_KEY value=eyJ…`).
//! - `aws`: Secrets Manager `GetSecretValue` with `SecretId` = the variable's name; the value
//!   is the secret string itself. Credentials, region and endpoint come from the standard
//!   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`
//!   (default `us-east-1`) and `AWS_ENDPOINT_URL` variables.
//!
//! Layering (see [`fill`]): defaults → config file → secret store → environment. Only the
//! variables in [`SECRET_VARIABLES`] are looked up, and only those that neither the file nor the
//! environment set. There is no process-level cache: every [`SecretSource::fetch`] reads the
//! store again, so a rotated value is seen by the next fetch.
//!
//! A secret absent from the store is fine unless something needs it ([`required_because`]);
//! a store that cannot be reached, or refuses the token, is a configuration error naming the
//! variable being fetched (exit 2). Values never reach logs, errors or `Debug` output.

use std::time::Duration;

use aws_sdk_secretsmanager as sm;

use crate::config::{BadVar, Env, RawConfig, SECRET_VARIABLES, Secret, parse_bool};

/// How long one fetch may take before the store counts as unreachable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The field inside a Vault KV v2 secret that holds the variable's value.
pub const VAULT_FIELD: &str = "value";

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{store} unreachable while fetching it: {error}")]
    Unreachable { store: String, error: String },
    #[error("token lacks read on path {path} ({store} answered {status})")]
    Denied {
        store: String,
        path: String,
        status: u16,
    },
    #[error("{store} answered {detail}")]
    Unexpected { store: String, detail: String },
    #[error("secret is present in {store} but has no string field `{VAULT_FIELD}`")]
    NoValueField { store: String },
    #[error("store is not configured: {0}")]
    NotConfigured(String),
}

/// A Vault (or OpenBao) KV v2 mount.
#[derive(Clone)]
pub struct VaultSource {
    addr: String,
    token: Secret<String>,
    mount: String,
    http: reqwest::Client,
}

/// AWS Secrets Manager.
#[derive(Clone)]
pub struct AwsSource {
    client: sm::Client,
    region: String,
    endpoint: Option<String>,
}

/// Where secret variables come from.
#[derive(Clone)]
pub enum SecretSource {
    Env,
    Vault(VaultSource),
    Aws(AwsSource),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SecretSource {
    /// Builds the source `LETTUCE_SECRET_STORE` names, from the layered values (for Vault) and
    /// the environment (for the standard `AWS_*` variables). An unknown store name is left to
    /// the config parser, which reports it; here it reads as `env`.
    pub fn from_raw(raw: &RawConfig, env: &Env) -> Result<SecretSource, SecretError> {
        let kind = raw
            .get("LETTUCE_SECRET_STORE")
            .unwrap_or("env")
            .trim()
            .to_ascii_lowercase();
        match kind.as_str() {
            "vault" => {
                let addr = raw
                    .get("VAULT_ADDR")
                    .map(|a| a.trim().trim_end_matches('/').to_string());
                let token = raw
                    .get("VAULT_TOKEN")
                    .map(|t| Secret::new(t.trim().to_string()));
                let (Some(addr), Some(token)) = (addr, token) else {
                    return Err(SecretError::NotConfigured(
                        "LETTUCE_SECRET_STORE=vault needs VAULT_ADDR and VAULT_TOKEN".into(),
                    ));
                };
                // Redirects are never followed: one would carry `X-Vault-Token` to whatever
                // origin the answer names (https → http included).
                let http = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| SecretError::NotConfigured(format!("HTTP client: {e}")))?;
                Ok(SecretSource::Vault(VaultSource {
                    addr,
                    token,
                    mount: raw
                        .get("LETTUCE_VAULT_MOUNT")
                        .unwrap_or("secret")
                        .trim()
                        .trim_matches('/')
                        .to_string(),
                    http,
                }))
            }
            "aws" => Ok(SecretSource::Aws(AwsSource::from_env(env))),
            _ => Ok(SecretSource::Env),
        }
    }

    /// A printable description of the store, never a credential.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env => "the environment".into(),
            SecretSource::Vault(v) => format!("vault at {} (KV v2 mount `{}`)", v.addr, v.mount),
            SecretSource::Aws(a) => match &a.endpoint {
                Some(e) => format!("AWS Secrets Manager ({}, endpoint {e})", a.region),
                None => format!("AWS Secrets Manager ({})", a.region),
            },
        }
    }

    /// Where `name` lives in the store (for messages).
    pub fn location(&self, name: &str) -> String {
        match self {
            SecretSource::Env => format!("environment variable {name}"),
            SecretSource::Vault(v) => format!("{}/data/lettuce/{name}", v.mount),
            SecretSource::Aws(_) => format!("SecretId {name}"),
        }
    }

    /// Reads one secret from the store, every time (no cache). `Ok(None)` when the store has
    /// no such secret; the `env` source never has any.
    pub async fn fetch(&self, name: &str) -> Result<Option<Secret<String>>, SecretError> {
        match self {
            SecretSource::Env => Ok(None),
            SecretSource::Vault(v) => v.fetch(name).await,
            SecretSource::Aws(a) => a.fetch(name).await,
        }
    }
}

impl VaultSource {
    async fn fetch(&self, name: &str) -> Result<Option<Secret<String>>, SecretError> {
        let path = format!("{}/data/lettuce/{name}", self.mount);
        let store = format!("vault at {}", self.addr);
        let response = self
            .http
            .get(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", self.token.expose())
            .send()
            .await
            .map_err(|e| SecretError::Unreachable {
                store: store.clone(),
                error: crate::error_text::full(&e),
            })?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 => return Ok(None),
            401 | 403 => {
                return Err(SecretError::Denied {
                    store,
                    path,
                    status,
                });
            }
            300..=399 => {
                return Err(SecretError::Unexpected {
                    store,
                    detail: format!(
                        "HTTP {status} redirect for {path}, not followed (the token is never sent elsewhere; set VAULT_ADDR to the address that answers)"
                    ),
                });
            }
            _ => {
                return Err(SecretError::Unexpected {
                    store,
                    detail: format!("HTTP {status} for {path}"),
                });
            }
        }
        // The body holds the secret: parse it without ever echoing it.
        let body: serde_json::Value =
            response.json().await.map_err(|_| SecretError::Unexpected {
                store: store.clone(),
                detail: format!("a body that is not KV v2 JSON for {path}"),
            })?;
        match body
            .pointer("/data/data")
            .and_then(|d| d.get(VAULT_FIELD))
            .and_then(|v| v.as_str())
        {
            Some(value) => Ok(Some(Secret::new(value.to_string()))),
            // A deleted (soft-deleted) version reads as data = null: treat as absent.
            None if body.pointer("/data/data").is_some_and(|d| d.is_null()) => Ok(None),
            None => Err(SecretError::NoValueField { store }),
        }
    }
}

impl AwsSource {
    /// A client configured from the standard AWS variables in `env` (not the process
    /// environment, so tests and check-config see exactly what they pass).
    pub fn from_env(env: &Env) -> AwsSource {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let region = get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = get("AWS_ENDPOINT_URL_SECRETS_MANAGER").or_else(|| get("AWS_ENDPOINT_URL"));
        let mut builder = sm::config::Builder::new()
            .behavior_version(sm::config::BehaviorVersion::latest())
            .region(sm::config::Region::new(region.clone()))
            .retry_config(sm::config::retry::RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                sm::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(FETCH_TIMEOUT)
                    .operation_timeout(FETCH_TIMEOUT * 2)
                    .build(),
            );
        if let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            builder = builder.credentials_provider(sm::config::Credentials::new(
                id,
                secret,
                get("AWS_SESSION_TOKEN"),
                None,
                "lettuce-env",
            ));
        }
        if let Some(e) = &endpoint {
            builder = builder.endpoint_url(e);
        }
        AwsSource {
            client: sm::Client::from_conf(builder.build()),
            region,
            endpoint,
        }
    }

    async fn fetch(&self, name: &str) -> Result<Option<Secret<String>>, SecretError> {
        let store = format!("AWS Secrets Manager ({})", self.region);
        match self.client.get_secret_value().secret_id(name).send().await {
            Ok(out) => Ok(out.secret_string().map(|s| Secret::new(s.to_string()))),
            Err(e) => {
                if let Some(service) = e.as_service_error() {
                    if service.is_resource_not_found_exception() {
                        return Ok(None);
                    }
                    let code = service.meta().code().unwrap_or("unknown error").to_string();
                    if code.contains("AccessDenied") || code.contains("UnrecognizedClient") {
                        return Err(SecretError::Denied {
                            store,
                            path: format!("SecretId {name}"),
                            status: 403,
                        });
                    }
                    return Err(SecretError::Unexpected {
                        store,
                        detail: format!("{code} for SecretId {name}"),
                    });
                }
                Err(SecretError::Unreachable {
                    store,
                    error: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                })
            }
        }
    }
}

/// The secret variables a store is asked for: every secret except the store's own credential.
pub fn store_variables() -> impl Iterator<Item = &'static str> {
    SECRET_VARIABLES
        .iter()
        .copied()
        .filter(|name| *name != "VAULT_TOKEN")
}

/// Why a secret variable must have a value with these settings, or `None` when it may stay
/// unset (its default applies, or the feature that needs it is off).
pub fn required_because(raw: &RawConfig, name: &str) -> Option<&'static str> {
    let set = |k: &str| raw.get(k).is_some();
    match name {
        "LETTUCE_LICENSE_KEY"
            if raw
                .get("LETTUCE_SELF_HOSTED")
                .and_then(parse_bool)
                .unwrap_or(false) =>
        {
            Some("LETTUCE_SELF_HOSTED is true")
        }
        "CODEWAZE_S3_SECRET_ACCESS_KEY" if set("CODEWAZE_S3_ACCESS_KEY_ID") => {
            Some("CODEWAZE_S3_ACCESS_KEY_ID is set")
        }
        "GITHUB_APP_PRIVATE_KEY" | "GITHUB_APP_CLIENT_SECRET"
            if ["GITHUB_APP_ID", "GITHUB_APP_NAME", "GITHUB_APP_CLIENT_ID"]
                .iter()
                .any(|k| set(k)) =>
        {
            Some("other GitHub App variables are set")
        }
        _ => None,
    }
}

/// What [`fill`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filled {
    /// Description of the store (never a credential).
    pub store: String,
    /// Variables whose values came from the store, in lookup order.
    pub from_store: Vec<String>,
    /// Variables the store was asked for but does not hold (and nothing requires).
    pub absent: Vec<String>,
}

/// Fills every secret variable that neither the file nor the environment set from the store
/// `LETTUCE_SECRET_STORE` names. Errors name the variable being fetched.
pub async fn fill(raw: &mut RawConfig, env: &Env) -> Result<Filled, Vec<BadVar>> {
    fill_only(raw, env, None).await
}

/// [`fill`] limited to the secret variables in `only` (all of them with `None`): a command reads
/// from the store only the secrets it uses.
pub async fn fill_only(
    raw: &mut RawConfig,
    env: &Env,
    only: Option<&[&str]>,
) -> Result<Filled, Vec<BadVar>> {
    let source = SecretSource::from_raw(raw, env).map_err(|e| {
        vec![BadVar {
            name: "LETTUCE_SECRET_STORE".into(),
            problem: e.to_string(),
        }]
    })?;
    let mut filled = Filled {
        store: source.describe(),
        ..Filled::default()
    };
    if matches!(source, SecretSource::Env) {
        return Ok(filled);
    }
    let mut bad = Vec::new();
    for name in store_variables() {
        if raw.is_explicit(name) || only.is_some_and(|only| !only.contains(&name)) {
            continue;
        }
        match source.fetch(name).await {
            Ok(Some(value)) => {
                raw.fill(name, value.expose().clone());
                filled.from_store.push(name.to_string());
            }
            Ok(None) => match required_because(raw, name) {
                Some(why) => bad.push(BadVar {
                    name: name.to_string(),
                    problem: format!(
                        "secret {name} missing: not in the environment and not at {} in {} (required because {why})",
                        source.location(name),
                        source.describe()
                    ),
                }),
                None => filled.absent.push(name.to_string()),
            },
            Err(e) => {
                let unreachable = matches!(e, SecretError::Unreachable { .. });
                bad.push(BadVar {
                    name: name.to_string(),
                    problem: format!("cannot read secret {name}: {e}"),
                });
                // One line for a store that is down, not one per variable.
                if unreachable {
                    break;
                }
            }
        }
    }
    if bad.is_empty() {
        tracing::info!(
            store = %filled.store,
            from_store = %filled.from_store.join(","),
            "secret variables read from the store"
        );
        Ok(filled)
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawConfig {
        let env: Env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RawConfig::layer(&env).unwrap()
    }

    #[test]
    fn required_rules_follow_the_features_that_need_the_secret() {
        let r = raw(&[("LETTUCE_SELF_HOSTED", "yes")]);
        assert!(required_because(&r, "LETTUCE_LICENSE_KEY").is_some());
        assert!(required_because(&r, "DATABASE_URL").is_none());
        let r = raw(&[]);
        assert!(required_because(&r, "LETTUCE_LICENSE_KEY").is_none());
        assert!(required_because(&r, "GITHUB_APP_PRIVATE_KEY").is_none());
        let r = raw(&[("GITHUB_APP_ID", "1")]);
        assert!(required_because(&r, "GITHUB_APP_PRIVATE_KEY").is_some());
        assert!(!store_variables().any(|v| v == "VAULT_TOKEN"));
    }

    #[test]
    fn vault_without_address_or_token_is_a_config_error() {
        let r = raw(&[("LETTUCE_SECRET_STORE", "vault")]);
        let err = SecretSource::from_raw(&r, &Env::new()).unwrap_err();
        assert!(err.to_string().contains("VAULT_ADDR and VAULT_TOKEN"));
        let r = raw(&[
            ("LETTUCE_SECRET_STORE", "Vault"),
            ("VAULT_ADDR", "http://127.0.0.1:8200/"),
            ("VAULT_TOKEN", "root-token-value"),
        ]);
        let source = SecretSource::from_raw(&r, &Env::new()).unwrap();
        assert_eq!(source.location("X"), "secret/data/lettuce/X");
        let shown = format!("{source:?} {}", source.describe());
        assert!(!shown.contains("root-token-value"), "{shown}");
    }
}
