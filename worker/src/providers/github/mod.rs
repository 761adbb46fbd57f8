//! GitHub (github.com or GitHub Enterprise Server) through the GitHub App.
//!
//! The App authenticates with a JWT it signs itself (RS256 over `GITHUB_APP_PRIVATE_KEY`, by
//! `ring`, already in the tree through rustls' stack): `iss` = `GITHUB_APP_ID`, `iat` 60 s in
//! the past for clock skew, `exp` 10 minutes after `iat`. The JWT buys installation tokens
//! (`POST /app/installations/{id}/access_tokens`), which every repository call uses. Tokens are
//! cached per installation until [`REFRESH_BEFORE`] their `expires_at`; each installation's
//! cache slot is an async mutex held across the refresh, so however many jobs ask at once only
//! one request is in flight and the others take its result. A 401 on a cached token drops that
//! token (only if it is still the cached one) and retries once with a new one; a 401 on a fresh
//! credential is [`ProviderError::BadCredentials`].
//!
//! Every request: connect and total timeouts, no redirects, `User-Agent:
//! lettuce-worker/<version>`, `Accept: application/vnd.github+json`, `X-GitHub-Api-Version`,
//! and an HTTP client span (`observability::http_client_span`) under the caller's span. Tokens
//! travel only in the `Authorization` header, marked sensitive.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::http::Answer;
use super::{Hook, HookSpec, ProviderError, ProviderKind, RepoAccess, RepoMeta, RepoRef};
use crate::boot::github as gate;
use crate::config::{Config, Secret};
use crate::metrics::RateLimitCounter;

/// The label of `lettuce_provider_rate_limited_total` for GitHub.
pub const PROVIDER: &str = "github";
/// `Accept` of every request.
pub const ACCEPT: &str = "application/vnd.github+json";
/// `X-GitHub-Api-Version` of every request.
pub const API_VERSION: &str = "2022-11-28";
/// A cached installation token is replaced this long before its `expires_at`.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// How far `iat` is back-dated (GitHub's advice for clock drift).
pub const JWT_BACKDATE_SECS: i64 = 60;
/// `exp - iat`; GitHub refuses more than 10 minutes.
pub const JWT_LIFETIME_SECS: i64 = 600;
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

#[derive(Deserialize)]
struct TokenBody {
    token: String,
    expires_at: String,
}

#[derive(Deserialize)]
struct RepoBody {
    id: u64,
    full_name: String,
    default_branch: String,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize)]
struct HookBody {
    id: u64,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    active: bool,
    #[serde(default)]
    config: HookConfig,
}

#[derive(Deserialize, Default)]
struct HookConfig {
    #[serde(default)]
    url: String,
}

impl From<HookBody> for Hook {
    fn from(h: HookBody) -> Hook {
        Hook {
            id: h.id,
            url: h.config.url,
            events: h.events,
            active: h.active,
        }
    }
}

#[derive(Deserialize)]
struct AppBody {
    slug: String,
    #[serde(default)]
    name: String,
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

/// `owner/name` with both parts in GitHub's alphabet, so a path can never leave `/repos/`.
fn repo_path(repo: &RepoRef) -> Result<&str, ProviderError> {
    // GitHub names have exactly two parts; the shared rule covers the characters.
    if repo.path.split('/').count() != 2 || super::repo_name_problem(&repo.path).is_some() {
        return Err(ProviderError::Rejected(format!(
            "`{}` is not a GitHub repository name (owner/name)",
            repo.path
        )));
    }
    Ok(&repo.path)
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

    /// A fresh App JWT.
    fn app_jwt(&self) -> Result<Secret<String>, ProviderError> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let iat = OffsetDateTime::now_utc().unix_timestamp() - JWT_BACKDATE_SECS;
        let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({
            "iat": iat,
            "exp": iat + JWT_LIFETIME_SECS,
            "iss": self.app_id.to_string(),
        });
        let signing_input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| ProviderError::Rejected("signing the App JWT failed".into()))?;
        Ok(Secret::new(format!("{signing_input}.{}", b64(&signature))))
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

    /// Asks GitHub for a new installation token.
    async fn issue_token(&self, installation_id: u64) -> Result<CachedToken, ProviderError> {
        let jwt = self.app_jwt()?;
        let what = format!("an access token for installation {installation_id}");
        let answer = self
            .send(
                Method::POST,
                &format!("/app/installations/{installation_id}/access_tokens"),
                &jwt,
                None,
            )
            .await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(self.bad_credentials("fresh App JWT"));
        }
        let answer = self.verdict(
            answer,
            &what,
            || ProviderError::InstallationMissing { installation_id },
            "installation access",
        )?;
        let body: TokenBody = answer.json(&what)?;
        let expires_at = OffsetDateTime::parse(&body.expires_at, &Rfc3339).map_err(|e| {
            ProviderError::Rejected(format!(
                "GitHub's expires_at for {what} does not parse: {e}"
            ))
        })?;
        tracing::debug!(installation_id, %expires_at, "GitHub installation token issued");
        Ok(CachedToken {
            token: Secret::new(body.token),
            expires_at,
        })
    }

    fn slot(&self, installation_id: u64) -> Slot {
        self.tokens
            .lock()
            .expect("token cache lock")
            .entry(installation_id)
            .or_default()
            .clone()
    }

    /// The installation's token, from the cache or freshly issued (`true`). Concurrent callers
    /// for one installation queue on its slot, so one refresh serves them all.
    async fn token(
        &self,
        installation_id: u64,
    ) -> Result<(Secret<String>, OffsetDateTime, bool), ProviderError> {
        let slot = self.slot(installation_id);
        let mut cached = slot.lock().await;
        let refresh_at = OffsetDateTime::now_utc() + REFRESH_BEFORE;
        if let Some(c) = cached.as_ref().filter(|c| c.expires_at > refresh_at) {
            return Ok((c.token.clone(), c.expires_at, false));
        }
        *cached = None;
        let fresh = self.issue_token(installation_id).await?;
        let out = (fresh.token.clone(), fresh.expires_at, true);
        *cached = Some(fresh);
        Ok(out)
    }

    /// Drops `token` from the cache if it is still the cached one (a concurrent caller may
    /// already have replaced it).
    async fn drop_token(&self, installation_id: u64, token: &Secret<String>) {
        let slot = self.slot(installation_id);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == *token) {
            *cached = None;
        }
    }

    /// A repository call with the installation token: a 401 on a cached token refreshes once.
    async fn repo_call(
        &self,
        repo: &RepoRef,
        method: Method,
        suffix: &str,
        body: Option<&Value>,
        permission: &str,
    ) -> Result<Answer, ProviderError> {
        let path = repo_path(repo)?;
        let installation_id = repo.installation_id.ok_or_else(|| {
            ProviderError::Rejected(format!(
                "repository {path} names no GitHub App installation"
            ))
        })?;
        let url_path = format!("/repos/{path}{suffix}");
        let what = format!("{method} /repos/{path}{suffix}");
        let mut retried = false;
        loop {
            let (token, _, fresh) = self.token(installation_id).await?;
            let answer = self.send(method.clone(), &url_path, &token, body).await?;
            if answer.status == StatusCode::UNAUTHORIZED {
                if fresh || retried {
                    return Err(self.bad_credentials("fresh installation token"));
                }
                tracing::info!(
                    installation_id,
                    "GitHub refused a cached installation token; refreshing once"
                );
                self.drop_token(installation_id, &token).await;
                retried = true;
                continue;
            }
            return self.verdict(
                answer,
                &what,
                || ProviderError::RepositoryMissing {
                    repo: path.to_string(),
                },
                permission,
            );
        }
    }

    fn clone_url(&self, full_name: &str) -> String {
        format!("{}/{full_name}.git", self.endpoints.server)
    }

    /// An installation token for `repo` and its credential-free clone URL.
    pub async fn access(&self, repo: &RepoRef) -> Result<RepoAccess, ProviderError> {
        let path = repo_path(repo)?;
        let installation_id = repo.installation_id.ok_or_else(|| {
            ProviderError::Rejected(format!(
                "repository {path} names no GitHub App installation"
            ))
        })?;
        let (token, expires_at, _) = self.token(installation_id).await?;
        Ok(RepoAccess {
            clone_url: self.clone_url(path),
            token,
            expires_at,
        })
    }

    /// `GET /repos/{owner}/{repo}`.
    pub async fn repository(&self, repo: &RepoRef) -> Result<RepoMeta, ProviderError> {
        let answer = self
            .repo_call(repo, Method::GET, "", None, METADATA_PERMISSION)
            .await?;
        let body: RepoBody = answer.json(&format!("GET /repos/{}", repo.path))?;
        Ok(RepoMeta {
            id: body.id,
            clone_url: self.clone_url(&body.full_name),
            full_name: body.full_name,
            default_branch: body.default_branch,
            private: body.private,
        })
    }

    /// `GET /repos/{owner}/{repo}/hooks` (first 100; a repository has at most 20 hooks).
    pub async fn list_hooks(&self, repo: &RepoRef) -> Result<Vec<Hook>, ProviderError> {
        let answer = self
            .repo_call(
                repo,
                Method::GET,
                "/hooks?per_page=100",
                None,
                HOOKS_PERMISSION,
            )
            .await?;
        let hooks: Vec<HookBody> = answer.json(&format!("GET /repos/{}/hooks", repo.path))?;
        Ok(hooks.into_iter().map(Hook::from).collect())
    }

    fn hook_body(spec: &HookSpec) -> Value {
        json!({
            "name": "web",
            "active": spec.active,
            "events": spec.events,
            "config": {
                "url": spec.url,
                "content_type": "json",
                "insecure_ssl": "0",
                "secret": spec.secret.expose(),
            },
        })
    }

    /// `POST /repos/{owner}/{repo}/hooks`.
    pub async fn create_hook(
        &self,
        repo: &RepoRef,
        spec: &HookSpec,
    ) -> Result<Hook, ProviderError> {
        let body = Self::hook_body(spec);
        let answer = self
            .repo_call(repo, Method::POST, "/hooks", Some(&body), HOOKS_PERMISSION)
            .await?;
        let hook: HookBody = answer.json(&format!("POST /repos/{}/hooks", repo.path))?;
        Ok(hook.into())
    }

    /// `PATCH /repos/{owner}/{repo}/hooks/{id}`.
    pub async fn update_hook(
        &self,
        repo: &RepoRef,
        hook_id: u64,
        spec: &HookSpec,
    ) -> Result<Hook, ProviderError> {
        let body = Self::hook_body(spec);
        let suffix = format!("/hooks/{hook_id}");
        let answer = self
            .repo_call(repo, Method::PATCH, &suffix, Some(&body), HOOKS_PERMISSION)
            .await?;
        let hook: HookBody = answer.json(&format!("PATCH /repos/{}{suffix}", repo.path))?;
        Ok(hook.into())
    }

    /// check-config's probe: `GET /app` with a fresh JWT (the App's slug), then the
    /// installations it can see.
    pub async fn probe_app(&self) -> Result<AppProbe, ProviderError> {
        let jwt = self.app_jwt()?;
        let not_found = || ProviderError::Rejected("GitHub answered 404 to GET /app".into());
        let answer = self.send(Method::GET, "/app", &jwt, None).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(self.bad_credentials("fresh App JWT"));
        }
        let app: AppBody = self
            .verdict(answer, "GET /app", not_found, "none")?
            .json("GET /app")?;
        // Every page of installations (100 a page), up to a bound so a probe stays quick.
        const PER_PAGE: usize = 100;
        const MAX_PAGES: usize = 50;
        let mut installations = 0;
        for page in 1..=MAX_PAGES {
            let answer = self
                .send(
                    Method::GET,
                    &format!("/app/installations?per_page={PER_PAGE}&page={page}"),
                    &jwt,
                    None,
                )
                .await?;
            let listed: Vec<Value> = self
                .verdict(
                    answer,
                    "GET /app/installations",
                    || ProviderError::Rejected("GitHub answered 404 to GET /app/installations".into()),
                    "none",
                )?
                .json("GET /app/installations")?;
            installations += listed.len();
            if listed.len() < PER_PAGE {
                break;
            }
        }
        Ok(AppProbe {
            slug: app.slug,
            name: app.name,
            installations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_default_to_github_com_and_ghes_gets_api_v3() {
        assert_eq!(
            endpoints("github.com", None, None),
            Endpoints {
                api: "https://api.github.com".into(),
                server: "https://github.com".into()
            }
        );
        assert_eq!(
            endpoints("ghes.example.com", None, None),
            Endpoints {
                api: "https://ghes.example.com/api/v3".into(),
                server: "https://ghes.example.com".into()
            }
        );
        assert_eq!(
            endpoints(
                "github.com",
                Some("http://127.0.0.1:9/"),
                Some("http://127.0.0.1:8")
            ),
            Endpoints {
                api: "http://127.0.0.1:9".into(),
                server: "http://127.0.0.1:8".into()
            }
        );
        assert_eq!(
            endpoints("ghes.local", None, Some("http://127.0.0.1:8")).api,
            "http://127.0.0.1:8/api/v3"
        );
    }

    fn answer(status: u16, headers: &[(&'static str, &str)]) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Answer {
            provider: "GitHub",
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Vec::new(),
        }
    }

    #[test]
    fn rate_limits_are_read_from_either_kind_of_header() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let primary = answer(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1800000300"),
            ],
        );
        assert_eq!(
            rate_limit_until(&primary, now),
            Some(now + time::Duration::seconds(300))
        );
        let secondary = answer(403, &[("retry-after", "42")]);
        assert_eq!(
            rate_limit_until(&secondary, now),
            Some(now + time::Duration::seconds(42))
        );
        assert_eq!(
            rate_limit_until(&answer(429, &[]), now),
            Some(now + time::Duration::seconds(60))
        );
        // A 403 without those headers is a permission problem, not a rate limit.
        assert_eq!(
            rate_limit_until(&answer(403, &[("x-ratelimit-remaining", "17")]), now),
            None
        );
        assert_eq!(
            rate_limit_until(&answer(500, &[("retry-after", "1")]), now),
            None
        );
    }

    #[test]
    fn repository_names_cannot_leave_the_repos_path() {
        for bad in [
            "acme",
            "acme/x/y",
            "../x",
            "acme/..",
            "a b/c",
            "acme/r?x=1",
            "/r",
        ] {
            assert!(repo_path(&RepoRef::github(1, bad)).is_err(), "{bad}");
        }
        assert!(repo_path(&RepoRef::github(1, "acme-inc/my_repo.js")).is_ok());
    }
}
