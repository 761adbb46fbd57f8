//! GitHub (github.com or GitHub Enterprise Server) through the GitHub App.
//!
//! The App's own credentials (its JWT, the installation-token cache, the check-config
//! probe) are in `app.rs`; the repository calls made with an installation token in
//! `repos.rs`.
//!
//! Every request: connect and total timeouts, no redirects, `User-Agent:
//! lettuce-worker/<version>`, `Accept: application/vnd.github+json`, `X-GitHub-Api-Version`,
//! and an HTTP client span (`observability::http_client_span`) under the caller's span. Tokens
//! travel only in the `Authorization` header, marked sensitive.

mod app;
mod repos;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::RsaKeyPair;
use serde_json::Value;
use time::OffsetDateTime;

use super::http::Answer;
use super::{ProviderError, ProviderKind};
use crate::boot::github as gate;
use crate::config::{Config, Secret};
use crate::metrics::RateLimitCounter;

/// The label of `lettuce_provider_rate_limited_total` for GitHub.
pub const PROVIDER: &str = "github";
/// `Accept` of every request.
pub const ACCEPT: &str = "application/vnd.github+json";
/// `X-GitHub-Api-Version` of every request.
pub const API_VERSION: &str = "2022-11-28";
/// What the hooks endpoints need (the App's "Webhooks" repository permission).
pub const HOOKS_PERMISSION: &str = "Webhooks: Read & write";
/// What repository metadata needs.
pub const METADATA_PERMISSION: &str = "Metadata: Read-only";

/// The REST API base and the web/clone base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `https://api.github.com`, `https://<host>/api/v3`, or `GITHUB_API_URL`.
    pub api: String,
    /// `https://github.com`, `https://<host>`, or `GITHUB_SERVER_URL`.
    pub server: String,
}

/// The endpoints for `GITHUB_HOST`, with `GITHUB_API_URL` / `GITHUB_SERVER_URL` overriding.
/// A server URL alone implies its API (`api.github.com` for github.com, else `/api/v3`).
pub fn endpoints(github_host: &str, api_url: Option<&str>, server_url: Option<&str>) -> Endpoints {
    let host = github_host.trim().trim_end_matches('/');
    let host = if host.is_empty() { "github.com" } else { host };
    let server = server_url
        .map(|s| s.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("https://{host}"));
    let api = match api_url {
        Some(a) => a.trim_end_matches('/').to_string(),
        None if server == "https://github.com" => "https://api.github.com".to_string(),
        None => format!("{server}/api/v3"),
    };
    Endpoints { api, server }
}

/// What a [`GithubClient`] is built from.
#[derive(Clone)]
pub struct GithubSettings {
    pub app_id: u64,
    /// `GITHUB_APP_PRIVATE_KEY` as given (any of gate 3's three forms).
    pub private_key: Secret<String>,
    pub endpoints: Endpoints,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl GithubSettings {
    /// The settings of a configured App (gate 3 passed), with production timeouts (10 s to
    /// connect, 30 s per request).
    pub fn from_config(config: &Config) -> Result<GithubSettings, ProviderError> {
        let status =
            gate::check(&config.github).map_err(|e| ProviderError::Rejected(e.to_string()))?;
        let app = status
            .app()
            .map_err(|m| ProviderError::Rejected(m.to_string()))?;
        let vars = &config.github;
        Ok(GithubSettings {
            app_id: app.app_id,
            private_key: vars.private_key.clone().unwrap_or_default(),
            endpoints: endpoints(
                &vars.github_host,
                vars.api_url.as_deref(),
                vars.server_url.as_deref(),
            ),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        })
    }
}

impl fmt::Debug for GithubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubSettings")
            .field("app_id", &self.app_id)
            .field("private_key", &self.private_key)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// What the check-config probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    pub slug: String,
    pub name: String,
    /// Installations visible to the App (first page of 100).
    pub installations: usize,
}

struct CachedToken {
    token: Secret<String>,
    expires_at: OffsetDateTime,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// One process-wide GitHub App client: build it once and share it (it holds the token cache).
pub struct GithubClient {
    app_id: u64,
    key: RsaKeyPair,
    rng: SystemRandom,
    endpoints: Endpoints,
    http: reqwest::Client,
    tokens: StdMutex<HashMap<u64, Slot>>,
    rate_limited: RateLimitCounter,
}

impl fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubClient")
            .field("app_id", &self.app_id)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// GitHub's `message`, or a short note when the body has none.
fn message(answer: &Answer) -> String {
    serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "no message".to_string())
}

/// The time a rate-limited answer says to wait until, if it is one: `retry-after` (secondary
/// limits) wins, then `x-ratelimit-remaining: 0` with `x-ratelimit-reset`; a bare 429 waits a
/// minute, as GitHub's documentation advises.
fn rate_limit_until(answer: &Answer, now: OffsetDateTime) -> Option<OffsetDateTime> {
    if !matches!(
        answer.status,
        StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    ) {
        return None;
    }
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<i64>().ok()) {
        return Some(now + time::Duration::seconds(secs.max(0)));
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset")
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or(now + time::Duration::seconds(60));
        return Some(reset);
    }
    if answer.status == StatusCode::TOO_MANY_REQUESTS {
        return Some(now + time::Duration::seconds(60));
    }
    None
}

/// What a 401 on a fresh GitHub credential means.
pub fn bad_key_hint(app_id: u64) -> String {
    format!(
        "GITHUB_APP_PRIVATE_KEY does not belong to the App GITHUB_APP_ID={app_id}, or the key was revoked"
    )
}

impl GithubClient {
    fn bad_credentials(&self, credential: &'static str) -> ProviderError {
        ProviderError::BadCredentials {
            provider: "GitHub",
            credential,
            hint: bad_key_hint(self.app_id),
        }
    }

    /// A client for `settings`; counts rate-limited answers into `rate_limited`.
    pub fn new(
        settings: &GithubSettings,
        rate_limited: RateLimitCounter,
    ) -> Result<GithubClient, ProviderError> {
        let decoded = gate::decode_private_key(settings.private_key.expose())
            .map_err(|e| ProviderError::Rejected(e.to_string()))?;
        let key = RsaKeyPair::from_der(decoded.pkcs1_der.expose()).map_err(|e| {
            ProviderError::Rejected(format!(
                "GITHUB_APP_PRIVATE_KEY ({} {}) cannot sign: {e}",
                decoded.form.describe(),
                decoded.encoding
            ))
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT));
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static(API_VERSION),
        );
        let http = reqwest::Client::builder()
            .user_agent(format!("lettuce-worker/{}", crate::VERSION))
            .default_headers(headers)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Rejected(format!("HTTP client: {e}")))?;
        Ok(GithubClient {
            app_id: settings.app_id,
            key,
            rng: SystemRandom::new(),
            endpoints: settings.endpoints.clone(),
            http,
            tokens: StdMutex::new(HashMap::new()),
            rate_limited,
        })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// One request: the span, the bearer credential, the body; transport failures become
    /// [`ProviderError::Unavailable`]. Any status is returned.
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: &Secret<String>,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}{path}", self.endpoints.api);
        let span = crate::observability::http_client_span(method.as_str(), &url);
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", bearer.expose()))
            .map_err(|_| ProviderError::Rejected("credential is not a header value".into()))?;
        auth.set_sensitive(true);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header(header::AUTHORIZATION, auth);
        if let Some(body) = body {
            request = request.json(body);
        }
        super::http::send("GitHub", request, &span, &method, &url).await
    }

    /// The common verdicts on a non-2xx answer: rate limit, 5xx, 404 (`missing`), 403 (the
    /// `permission` the call needs, unless GitHub names the one it wanted), anything else.
    fn verdict(
        &self,
        answer: Answer,
        what: &str,
        missing: impl FnOnce() -> ProviderError,
        permission: &str,
    ) -> Result<Answer, ProviderError> {
        if answer.status.is_success() {
            return Ok(answer);
        }
        let now = OffsetDateTime::now_utc();
        if let Some(until) = rate_limit_until(&answer, now) {
            self.rate_limited.inc(ProviderKind::Github.as_str());
            tracing::warn!(%until, status = answer.status.as_u16(), "GitHub rate limit on {what}");
            return Err(ProviderError::RateLimited {
                provider: PROVIDER,
                until,
            });
        }
        let status = answer.status;
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "GitHub answered {status} to {what}: {}",
                message(&answer)
            )));
        }
        match status {
            StatusCode::NOT_FOUND => Err(missing()),
            StatusCode::FORBIDDEN => {
                let named = answer
                    .headers
                    .get("x-accepted-github-permissions")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.trim().is_empty());
                Err(ProviderError::MissingPermission {
                    provider: "GitHub",
                    permission: named.map_or_else(|| permission.to_string(), str::to_string),
                    message: message(&answer),
                })
            }
            _ => Err(ProviderError::Rejected(format!(
                "GitHub answered {status} to {what}: {}",
                message(&answer)
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
