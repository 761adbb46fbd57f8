//! GitLab (self-managed, or gitlab.com) through an access token: `GITLAB_HOST` and
//! `GITLAB_TOKEN` (README "GitLab access").
//!
//! GitLab has no App and no token exchange: the configured token (a personal, group or project
//! access token with the `api` scope) is sent as it is, in the `PRIVATE-TOKEN` header (marked
//! sensitive), never in a URL. Projects are named by their URL-encoded full path
//! (`group%2Fsub%2Fproject`), which every project endpoint accepts in place of the numeric id,
//! so no call needs a lookup first.
//!
//! Every request: the same connect and total timeouts as GitHub's client, no redirects,
//! `User-Agent: lettuce-worker/<version>`, and an HTTP client span
//! (`observability::http_client_span`) under the caller's span. Clone URLs are built from
//! `GITLAB_HOST`, not taken from GitLab's `http_url_to_repo` (which follows the instance's
//! `external_url`): the token goes only to the host the operator configured.

use std::fmt;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::http::Answer;
use super::{Hook, HookSpec, ProviderError, ProviderKind, RepoAccess, RepoMeta, RepoRef};
use crate::config::{Config, Secret};
use crate::metrics::RateLimitCounter;

/// The label of `lettuce_provider_rate_limited_total` for GitLab.
pub const PROVIDER: &str = "gitlab";
/// The token scope the project and hooks endpoints need.
pub const API_SCOPE: &str = "api";
/// How far in the future [`GitlabClient::access`] says the token expires: GitLab tokens are
/// long-lived and their expiry is not ours to know (a revoked one is a 401 like any other).
pub const TOKEN_HORIZON: time::Duration = time::Duration::days(365);
/// Our event names and GitLab's hook flags, in our order.
pub const EVENT_FLAGS: [(&str, &str); 3] = [
    ("push", "push_events"),
    ("pull_request", "merge_requests_events"),
    ("issues", "issues_events"),
];

/// The REST API base and the web/clone base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `https://<host>/api/v4`.
    pub api: String,
    /// `https://<host>`.
    pub server: String,
}

/// The endpoints for `GITLAB_HOST`: a host name (`gitlab.acme.test`, `gitlab.acme.test:8443`)
/// means HTTPS; a full `http(s)://host[:port]` URL is taken as the server base (loopback tests,
/// or an instance served under a path).
pub fn endpoints(gitlab_host: &str) -> Endpoints {
    let host = gitlab_host.trim().trim_end_matches('/');
    let server = if host.starts_with("https://") || host.starts_with("http://") {
        host.to_string()
    } else {
        format!("https://{host}")
    };
    Endpoints {
        api: format!("{server}/api/v4"),
        server,
    }
}

/// What a [`GitlabClient`] is built from.
#[derive(Clone)]
pub struct GitlabSettings {
    pub endpoints: Endpoints,
    /// `GITLAB_TOKEN`.
    pub token: Secret<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl GitlabSettings {
    /// The settings when both `GITLAB_HOST` and `GITLAB_TOKEN` are set, with production
    /// timeouts (10 s to connect, 30 s per request).
    pub fn from_config(config: &Config) -> Result<GitlabSettings, ProviderError> {
        let vars = &config.github;
        let host = vars
            .gitlab_host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let token = vars
            .gitlab_token
            .as_ref()
            .filter(|t| !t.expose().trim().is_empty());
        match (host, token) {
            (Some(host), Some(token)) => Ok(GitlabSettings {
                endpoints: endpoints(host),
                token: Secret::new(token.expose().trim().to_string()),
                connect_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
            }),
            (None, _) => Err(ProviderError::Rejected(
                "GitLab is not configured: GITLAB_HOST is not set".into(),
            )),
            (Some(_), None) => Err(ProviderError::Rejected(
                "GITLAB_HOST is set but GITLAB_TOKEN is not: GitLab jobs need an access token with the `api` scope".into(),
            )),
        }
    }
}

impl fmt::Debug for GitlabSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitlabSettings")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token)
            .finish()
    }
}

/// What the check-config probe saw (`GET /user`: the token's user, a bot user for group and
/// project tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProbe {
    pub username: String,
    pub name: String,
}

/// One process-wide GitLab client.
pub struct GitlabClient {
    endpoints: Endpoints,
    token: Secret<String>,
    http: reqwest::Client,
    rate_limited: RateLimitCounter,
}

impl fmt::Debug for GitlabClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitlabClient")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// GitLab's `message` (a string, or an object of field errors), or its OAuth-style
/// `error_description` / `error`, or a short note.
fn message(answer: &Answer) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(&answer.body) else {
        return "no message".to_string();
    };
    match (v.get("message"), v.get("error_description"), v.get("error")) {
        (Some(Value::String(m)), _, _) => m.clone(),
        (Some(m), _, _) => m.to_string(),
        (None, Some(Value::String(d)), _) => d.clone(),
        (None, None, Some(Value::String(e))) => e.clone(),
        _ => "no message".to_string(),
    }
}

#[derive(Deserialize)]
struct ProjectBody {
    id: u64,
    path_with_namespace: String,
    /// `null` for a project without commits.
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default)]
    visibility: String,
}

#[derive(Deserialize)]
struct HookBody {
    id: u64,
    #[serde(default)]
    url: String,
    #[serde(default)]
    push_events: bool,
    #[serde(default)]
    merge_requests_events: bool,
    #[serde(default)]
    issues_events: bool,
    /// GitLab 15.7+: `executable`, `temporarily_disabled` or `disabled` (after failures).
    #[serde(default)]
    alert_status: Option<String>,
}

impl From<HookBody> for Hook {
    fn from(h: HookBody) -> Hook {
        let flags = [h.push_events, h.merge_requests_events, h.issues_events];
        Hook {
            id: h.id,
            url: h.url,
            events: EVENT_FLAGS
                .iter()
                .zip(flags)
                .filter(|(_, on)| *on)
                .map(|((ours, _), _)| ours.to_string())
                .collect(),
            active: h.alert_status.as_deref().is_none_or(|s| s == "executable"),
        }
    }
}

#[derive(Deserialize)]
struct UserBody {
    username: String,
    #[serde(default)]
    name: String,
}

/// The time a 429 says to wait until: `Retry-After` (seconds), else `RateLimit-Reset` (a Unix
/// time), else a minute.
fn rate_limit_until(answer: &Answer, now: OffsetDateTime) -> Option<OffsetDateTime> {
    if answer.status != StatusCode::TOO_MANY_REQUESTS {
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
    if let Some(reset) = header("ratelimit-reset")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
    {
        return Some(reset);
    }
    Some(now + time::Duration::seconds(60))
}

/// The project path, checked by the shared name rule (so it cannot leave `/projects/`), and
/// its URL-encoded form.
fn project_path(repo: &RepoRef) -> Result<(&str, String), ProviderError> {
    if super::repo_name_problem(&repo.path).is_some() {
        return Err(ProviderError::Rejected(format!(
            "`{}` is not a GitLab project path (group/…/project)",
            repo.path
        )));
    }
    // The rule's alphabet is [A-Za-z0-9_.-] plus `/`: only the slashes need encoding.
    Ok((&repo.path, repo.path.replace('/', "%2F")))
}

/// GitLab's hook flags for our event names; an event GitLab has no flag for is refused.
fn hook_body(spec: &HookSpec) -> Result<Value, ProviderError> {
    if let Some(unknown) = spec
        .events
        .iter()
        .find(|e| !EVENT_FLAGS.iter().any(|(ours, _)| ours == e))
    {
        return Err(ProviderError::Rejected(format!(
            "GitLab hooks have no flag for the event `{unknown}` (known: push, pull_request, issues)"
        )));
    }
    let mut body = json!({
        "url": spec.url,
        "token": spec.secret.expose(),
        "enable_ssl_verification": true,
    });
    for (ours, flag) in EVENT_FLAGS {
        // GitLab cannot pause a hook through the API: an inactive one subscribes to nothing.
        body[flag] = Value::Bool(spec.active && spec.events.iter().any(|e| e == ours));
    }
    Ok(body)
}

impl GitlabClient {
    /// A client for `settings`; counts rate-limited answers into `rate_limited`.
    pub fn new(
        settings: &GitlabSettings,
        rate_limited: RateLimitCounter,
    ) -> Result<GitlabClient, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .user_agent(format!("lettuce-worker/{}", crate::VERSION))
            .default_headers(headers)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Rejected(format!("HTTP client: {e}")))?;
        Ok(GitlabClient {
            endpoints: settings.endpoints.clone(),
            token: settings.token.clone(),
            http,
            rate_limited,
        })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// One request with the span and the `PRIVATE-TOKEN` header; transport failures become
    /// [`ProviderError::Unavailable`]. Any status is returned.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}{path}", self.endpoints.api);
        let span = crate::observability::http_client_span(method.as_str(), &url);
        let mut token = HeaderValue::from_str(self.token.expose()).map_err(|_| {
            ProviderError::Rejected("GITLAB_TOKEN is not a valid header value".into())
        })?;
        token.set_sensitive(true);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("private-token", token);
        if let Some(body) = body {
            request = request.json(body);
        }
        super::http::send("GitLab", request, &span, &method, &url).await
    }

    /// The verdicts on a non-2xx answer: 401 (the token), 429, 5xx, 404 (`missing`), 403 (the
    /// `api` scope, unless GitLab names the scope it wanted), anything else.
    fn verdict(
        &self,
        answer: Answer,
        what: &str,
        missing: impl FnOnce() -> ProviderError,
    ) -> Result<Answer, ProviderError> {
        let status = answer.status;
        if status.is_success() {
            return Ok(answer);
        }
        if let Some(until) = rate_limit_until(&answer, OffsetDateTime::now_utc()) {
            self.rate_limited.inc(ProviderKind::Gitlab.as_str());
            tracing::warn!(%until, "GitLab rate limit on {what}");
            return Err(ProviderError::RateLimited {
                provider: PROVIDER,
                until,
            });
        }
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "GitLab answered {status} to {what}: {}",
                message(&answer)
            )));
        }
        match status {
            StatusCode::UNAUTHORIZED => Err(ProviderError::BadCredentials {
                provider: "GitLab",
                credential: "token in GITLAB_TOKEN",
                hint: "it is wrong, expired or revoked; create an access token with the `api` scope on the GitLab host and set GITLAB_TOKEN to it".into(),
            }),
            StatusCode::NOT_FOUND => Err(missing()),
            StatusCode::FORBIDDEN => {
                let scope = serde_json::from_slice::<Value>(&answer.body)
                    .ok()
                    .and_then(|v| v.get("scope").and_then(Value::as_str).map(str::to_string))
                    .filter(|s| !s.trim().is_empty());
                Err(ProviderError::MissingPermission {
                    provider: "GitLab",
                    permission: scope.unwrap_or_else(|| API_SCOPE.to_string()),
                    message: message(&answer),
                })
            }
            _ => Err(ProviderError::Rejected(format!(
                "GitLab answered {status} to {what}: {}",
                message(&answer)
            ))),
        }
    }

    /// A call under `/projects/<encoded path>`; a 404 names the project.
    async fn project_call(
        &self,
        repo: &RepoRef,
        method: Method,
        suffix: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let (path, encoded) = project_path(repo)?;
        let what = format!("{method} /projects/{encoded}{suffix}");
        let answer = self
            .send(method, &format!("/projects/{encoded}{suffix}"), body)
            .await?;
        self.verdict(answer, &what, || ProviderError::RepositoryMissing {
            repo: path.to_string(),
        })
    }

    fn clone_url(&self, path: &str) -> String {
        format!("{}/{path}.git", self.endpoints.server)
    }

    /// The configured token (no request: GitLab has no token exchange) and the project's
    /// credential-free clone URL; git authenticates as `oauth2` with the token.
    pub async fn access(&self, repo: &RepoRef) -> Result<RepoAccess, ProviderError> {
        let (path, _) = project_path(repo)?;
        Ok(RepoAccess {
            clone_url: self.clone_url(path),
            token: self.token.clone(),
            expires_at: OffsetDateTime::now_utc() + TOKEN_HORIZON,
        })
    }

    /// `GET /projects/:path`. `default_branch` is empty for a project without commits.
    pub async fn repository(&self, repo: &RepoRef) -> Result<RepoMeta, ProviderError> {
        let answer = self.project_call(repo, Method::GET, "", None).await?;
        let body: ProjectBody = answer.json(&format!("GET /projects/{}", repo.path))?;
        Ok(RepoMeta {
            id: body.id,
            clone_url: self.clone_url(&body.path_with_namespace),
            full_name: body.path_with_namespace,
            default_branch: body.default_branch.unwrap_or_default(),
            private: body.visibility != "public",
        })
    }

    /// `GET /projects/:path/hooks` (first 100).
    pub async fn list_hooks(&self, repo: &RepoRef) -> Result<Vec<Hook>, ProviderError> {
        let answer = self
            .project_call(repo, Method::GET, "/hooks?per_page=100", None)
            .await?;
        let hooks: Vec<HookBody> = answer.json(&format!("GET /projects/{}/hooks", repo.path))?;
        Ok(hooks.into_iter().map(Hook::from).collect())
    }

    /// `POST /projects/:path/hooks`.
    pub async fn create_hook(
        &self,
        repo: &RepoRef,
        spec: &HookSpec,
    ) -> Result<Hook, ProviderError> {
        let body = hook_body(spec)?;
        let answer = self
            .project_call(repo, Method::POST, "/hooks", Some(&body))
            .await?;
        let hook: HookBody = answer.json(&format!("POST /projects/{}/hooks", repo.path))?;
        Ok(hook.into())
    }

    /// `PUT /projects/:path/hooks/:hook_id`.
    pub async fn update_hook(
        &self,
        repo: &RepoRef,
        hook_id: u64,
        spec: &HookSpec,
    ) -> Result<Hook, ProviderError> {
        let body = hook_body(spec)?;
        let suffix = format!("/hooks/{hook_id}");
        let answer = self
            .project_call(repo, Method::PUT, &suffix, Some(&body))
            .await?;
        let hook: HookBody = answer.json(&format!("PUT /projects/{}{suffix}", repo.path))?;
        Ok(hook.into())
    }

    /// check-config's probe: `GET /user` with the token.
    pub async fn probe_user(&self) -> Result<UserProbe, ProviderError> {
        let answer = self.send(Method::GET, "/user", None).await?;
        let user: UserBody = self
            .verdict(answer, "GET /user", || {
                ProviderError::Rejected(
                    "GitLab answered 404 to GET /api/v4/user: is GITLAB_HOST a GitLab?".into(),
                )
            })?
            .json("GET /user")?;
        Ok(UserProbe {
            username: user.username,
            name: user.name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_means_https_and_a_url_is_taken_as_given() {
        assert_eq!(
            endpoints("gitlab.acme.test"),
            Endpoints {
                api: "https://gitlab.acme.test/api/v4".into(),
                server: "https://gitlab.acme.test".into()
            }
        );
        assert_eq!(
            endpoints(" http://127.0.0.1:8080/ ").api,
            "http://127.0.0.1:8080/api/v4"
        );
        assert_eq!(
            endpoints("https://git.acme.test/gitlab").server,
            "https://git.acme.test/gitlab"
        );
    }

    fn answer(status: u16, headers: &[(&'static str, &str)]) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Answer {
            provider: "GitLab",
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Vec::new(),
        }
    }

    #[test]
    fn rate_limits_come_from_429s_only() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(
            rate_limit_until(&answer(429, &[("ratelimit-reset", "1800000300")]), now),
            Some(now + time::Duration::seconds(300))
        );
        assert_eq!(
            rate_limit_until(&answer(429, &[("retry-after", "42")]), now),
            Some(now + time::Duration::seconds(42))
        );
        assert_eq!(
            rate_limit_until(&answer(429, &[]), now),
            Some(now + time::Duration::seconds(60))
        );
        assert_eq!(
            rate_limit_until(&answer(403, &[("retry-after", "5")]), now),
            None
        );
    }

    #[test]
    fn project_paths_are_encoded_and_checked() {
        let r = |p: &str| RepoRef {
            provider: ProviderKind::Gitlab,
            path: p.into(),
            installation_id: None,
        };
        assert_eq!(
            project_path(&r("grp/sub/proj.rs")).unwrap().1,
            "grp%2Fsub%2Fproj.rs"
        );
        for bad in ["proj", "grp/../x", "grp/p?x=1", "grp/p#f", "grp/p%2F"] {
            assert!(project_path(&r(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_names_map_to_flags_and_back() {
        let spec = HookSpec {
            url: "https://l.test/h".into(),
            events: vec!["push".into(), "issues".into()],
            secret: Secret::new("s".into()),
            active: true,
        };
        let body = hook_body(&spec).unwrap();
        assert_eq!(
            (
                &body["push_events"],
                &body["merge_requests_events"],
                &body["issues_events"],
                &body["enable_ssl_verification"]
            ),
            (&json!(true), &json!(false), &json!(true), &json!(true))
        );
        let hook: Hook = serde_json::from_value::<HookBody>(json!({
            "id": 3, "url": "u", "push_events": false, "merge_requests_events": true,
            "issues_events": true, "alert_status": "disabled"
        }))
        .unwrap()
        .into();
        assert_eq!(hook.events, ["pull_request", "issues"]);
        assert!(!hook.active);
        let mut odd = spec.clone();
        odd.events.push("release".into());
        assert!(hook_body(&odd).is_err());
    }
}
