//! Repository providers: the seam between jobs and the hosts that keep the customer's
//! repositories (README "GitHub access"). A job names a repository with a [`RepoRef`], asks a
//! [`Provider`] for what it needs (an access token and clone URL, metadata, the repository's
//! hooks), and turns a [`ProviderError`] into a [`HandlerError`] with `?`.
//!
//! **Enum dispatch, not a trait object.** There are exactly two implementations (`github`, the
//! GitHub App; `gitlab`, an access token), both known at compile time; their operations are
//! `async fn`s, which a `dyn` trait could only offer through boxed futures. An enum keeps static
//! dispatch, lets each client keep its own inherent methods (each has its own check-config
//! probe: `probe_app`, `probe_user`), and makes a new provider a compile error at every `match`
//! that must learn about it.
//!
//! Secrets: access tokens are [`Secret`]s end to end; no error text, span or `Debug` output
//! carries one, and clone URLs carry no credentials (git gets the token separately).

pub mod github;
pub mod gitlab;
mod http;

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::Secret;
use crate::handlers::HandlerError;

/// Which provider a repository lives on (`lettuce.repositories.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Github,
    Gitlab,
}

impl ProviderKind {
    /// The name the schema, payloads and metric labels use.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Github => "github",
            ProviderKind::Gitlab => "gitlab",
        }
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "github" => Ok(ProviderKind::Github),
            "gitlab" => Ok(ProviderKind::Gitlab),
            other => Err(format!(
                "unknown provider {other:?}; accepted: github, gitlab"
            )),
        }
    }
}

/// Why a repository name is refused, or `None`: `OWNER/NAME` (GitLab `GROUP/…/NAME`), at most
/// 255 bytes, each part 1–100 of `[A-Za-z0-9_.-]` and never `.` or `..` (names become URL paths
/// and paths in the scratch cache). The schema's CHECK on `lettuce.repositories` says the same.
pub fn repo_name_problem(full_name: &str) -> Option<String> {
    let part_ok = |s: &str| {
        (1..=100).contains(&s.len())
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let parts: Vec<&str> = full_name.split('/').collect();
    if full_name.len() > 255
        || parts.len() < 2
        || parts.len() > 21
        || !parts.iter().all(|p| part_ok(p))
    {
        return Some(format!(
            "repository {:?} must be OWNER/NAME (GitLab: GROUP/…/NAME), at most 255 bytes, each part 1–100 of [A-Za-z0-9_.-]",
            full_name.chars().take(120).collect::<String>()
        ));
    }
    None
}

/// One repository as a job names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoRef {
    pub provider: ProviderKind,
    /// `owner/name` on GitHub (`group/sub/project` on GitLab).
    pub path: String,
    /// The GitHub App installation that can see the repository (GitHub only).
    pub installation_id: Option<u64>,
}

impl RepoRef {
    /// A repository on GitHub (or GHES), reached through `installation_id`.
    pub fn github(installation_id: u64, path: impl Into<String>) -> RepoRef {
        RepoRef {
            provider: ProviderKind::Github,
            path: path.into(),
            installation_id: Some(installation_id),
        }
    }

    /// A project on the configured GitLab (`group/…/project`).
    pub fn gitlab(path: impl Into<String>) -> RepoRef {
        RepoRef {
            provider: ProviderKind::Gitlab,
            path: path.into(),
            installation_id: None,
        }
    }
}

/// What git needs to fetch a repository. The URL has no credentials in it.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    pub clone_url: String,
    pub token: Secret<String>,
    pub expires_at: OffsetDateTime,
}

/// Repository metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoMeta {
    pub id: u64,
    /// `owner/name` as the provider spells it now (it may differ after a rename).
    pub full_name: String,
    pub default_branch: String,
    pub private: bool,
    /// Credential-free clone URL.
    pub clone_url: String,
}

/// A repository hook as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub id: u64,
    /// The delivery URL.
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
}

/// A hook to create, or what to update an existing one to.
#[derive(Debug, Clone)]
pub struct HookSpec {
    pub url: String,
    pub events: Vec<String>,
    pub secret: Secret<String>,
    pub active: bool,
}

/// Why a provider call failed, in the terms a job decides on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// A primary or secondary rate limit: run again after `until`, no attempt used.
    #[error("{provider} rate limit reached; retry after {until}")]
    RateLimited {
        provider: &'static str,
        until: OffsetDateTime,
    },
    /// 5xx, a timeout or no connection: retry with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// The App installation does not exist (the App was uninstalled, or the id is wrong).
    #[error(
        "GitHub App installation {installation_id} not found: the App was uninstalled from that account, or the installation id is wrong"
    )]
    InstallationMissing { installation_id: u64 },
    /// The repository does not exist or the installation cannot see it.
    #[error(
        "repository {repo} not found: it was deleted or renamed, or the credentials (the GitHub App installation, or GITLAB_TOKEN) cannot see it"
    )]
    RepositoryMissing { repo: String },
    /// A credential retrying cannot fix was refused (401): a freshly signed or issued GitHub
    /// one, or GitLab's configured token. `hint` names the variable to fix.
    #[error("{provider} refused the {credential} (401): {hint}")]
    BadCredentials {
        /// `GitHub`, `GitLab`.
        provider: &'static str,
        /// `fresh App JWT`, `token in GITLAB_TOKEN`, …
        credential: &'static str,
        hint: String,
    },
    /// 403 for want of a permission the App (or token) was not granted.
    #[error(
        "the {} lacks the `{permission}` {}: {message}",
        permission_holder(provider),
        permission_noun(provider)
    )]
    MissingPermission {
        provider: &'static str,
        permission: String,
        message: String,
    },
    /// Any other answer retrying cannot fix (4xx, an unreadable body, bad configuration).
    #[error("{0}")]
    Rejected(String),
}

/// Who holds permissions on `provider`: the GitHub App, GitLab's token.
fn permission_holder(provider: &str) -> String {
    match provider {
        "GitLab" => "GitLab token (GITLAB_TOKEN)".to_string(),
        other => format!("{other} App"),
    }
}

/// What GitLab calls a permission.
fn permission_noun(provider: &str) -> &'static str {
    match provider {
        "GitLab" => "scope",
        _ => "permission",
    }
}

impl ProviderError {
    /// The delay until `until`, at least one second (a reset that already passed still gets a
    /// pause rather than a hot loop).
    pub fn snooze_for(until: OffsetDateTime, now: OffsetDateTime) -> Duration {
        let left = until - now;
        Duration::try_from(left)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    }
}

impl From<ProviderError> for HandlerError {
    fn from(e: ProviderError) -> HandlerError {
        match e {
            ProviderError::RateLimited { until, .. } => {
                HandlerError::Snooze(ProviderError::snooze_for(until, OffsetDateTime::now_utc()))
            }
            ProviderError::Unavailable(_) => HandlerError::Retryable(e.to_string()),
            ProviderError::InstallationMissing { .. }
            | ProviderError::RepositoryMissing { .. }
            | ProviderError::BadCredentials { .. }
            | ProviderError::MissingPermission { .. }
            | ProviderError::Rejected(_) => HandlerError::Permanent(e.to_string()),
        }
    }
}

/// A configured provider. Build once per process and share (it holds the token cache).
// Built once per process and shared behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Provider {
    Github(github::GithubClient),
    Gitlab(gitlab::GitlabClient),
}

impl Provider {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Github(_) => ProviderKind::Github,
            Provider::Gitlab(_) => ProviderKind::Gitlab,
        }
    }

    /// A token git can fetch `repo` with, and its credential-free clone URL.
    pub async fn access(&self, repo: &RepoRef) -> Result<RepoAccess, ProviderError> {
        match self {
            Provider::Github(c) => c.access(repo).await,
            Provider::Gitlab(c) => c.access(repo).await,
        }
    }

    pub async fn repository(&self, repo: &RepoRef) -> Result<RepoMeta, ProviderError> {
        match self {
            Provider::Github(c) => c.repository(repo).await,
            Provider::Gitlab(c) => c.repository(repo).await,
        }
    }

    pub async fn list_hooks(&self, repo: &RepoRef) -> Result<Vec<Hook>, ProviderError> {
        match self {
            Provider::Github(c) => c.list_hooks(repo).await,
            Provider::Gitlab(c) => c.list_hooks(repo).await,
        }
    }

    pub async fn create_hook(
        &self,
        repo: &RepoRef,
        spec: &HookSpec,
    ) -> Result<Hook, ProviderError> {
        match self {
            Provider::Github(c) => c.create_hook(repo, spec).await,
            Provider::Gitlab(c) => c.create_hook(repo, spec).await,
        }
    }

    pub async fn update_hook(
        &self,
        repo: &RepoRef,
        hook_id: u64,
        spec: &HookSpec,
    ) -> Result<Hook, ProviderError> {
        match self {
            Provider::Github(c) => c.update_hook(repo, hook_id, spec).await,
            Provider::Gitlab(c) => c.update_hook(repo, hook_id, spec).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_schema_rule() {
        assert!(repo_name_problem("acme/widgets").is_none());
        assert!(repo_name_problem("group/sub/project.rs").is_none());
        for bad in [
            "widgets",
            "acme/",
            "/x",
            "a b/c",
            "acme/wid;gets",
            "ac/../me",
            "./x",
        ] {
            assert!(repo_name_problem(bad).is_some(), "{bad} accepted");
        }
        assert!(repo_name_problem(&format!("a/{}", "x".repeat(101))).is_some());
        assert!(
            repo_name_problem(&vec!["x".repeat(100); 3].join("/")).is_some(),
            "over 255 bytes"
        );
    }

    #[test]
    fn errors_map_to_what_the_runtime_should_do() {
        let until = OffsetDateTime::now_utc() + time::Duration::seconds(90);
        let HandlerError::Snooze(d) = HandlerError::from(ProviderError::RateLimited {
            provider: "github",
            until,
        }) else {
            panic!("rate limit must snooze")
        };
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        // A reset in the past still pauses a second.
        assert_eq!(
            ProviderError::snooze_for(until - time::Duration::hours(1), OffsetDateTime::now_utc()),
            Duration::from_secs(1)
        );
        assert!(matches!(
            HandlerError::from(ProviderError::Unavailable("503".into())),
            HandlerError::Retryable(_)
        ));
        let HandlerError::Permanent(m) = HandlerError::from(ProviderError::InstallationMissing {
            installation_id: 77,
        }) else {
            panic!()
        };
        assert!(
            m.contains("installation 77") && m.contains("uninstalled"),
            "{m}"
        );
        let HandlerError::Permanent(m) = HandlerError::from(ProviderError::RepositoryMissing {
            repo: "acme/gone".into(),
        }) else {
            panic!()
        };
        assert!(m.contains("acme/gone"), "{m}");
        let HandlerError::Permanent(m) = HandlerError::from(ProviderError::BadCredentials {
            provider: "GitHub",
            credential: "fresh App JWT",
            hint: github::bad_key_hint(42),
        }) else {
            panic!()
        };
        assert!(
            m.contains("GITHUB_APP_PRIVATE_KEY") && m.contains("GITHUB_APP_ID=42"),
            "{m}"
        );
        let HandlerError::Permanent(m) = HandlerError::from(ProviderError::MissingPermission {
            provider: "GitHub",
            permission: "Webhooks: Read & write".into(),
            message: "Resource not accessible by integration".into(),
        }) else {
            panic!()
        };
        assert!(
            m.contains("GitHub App lacks the `Webhooks: Read & write` permission"),
            "{m}"
        );
        let m = ProviderError::MissingPermission {
            provider: "GitLab",
            permission: "api".into(),
            message: "insufficient_scope".into(),
        }
        .to_string();
        assert!(
            m.contains("GitLab token (GITLAB_TOKEN) lacks the `api` scope"),
            "{m}"
        );
    }
}
