//! Repository calls with an installation token: access for a clone, metadata, and the hooks
//! API.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{GithubClient, HOOKS_PERMISSION, METADATA_PERMISSION};
use crate::providers::http::Answer;
use crate::providers::{Hook, HookSpec, ProviderError, RepoAccess, RepoMeta, RepoRef};

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

/// `owner/name` with both parts in GitHub's alphabet, so a path can never leave `/repos/`.
pub(super) fn repo_path(repo: &RepoRef) -> Result<&str, ProviderError> {
    // GitHub names have exactly two parts; the shared rule covers the characters.
    if repo.path.split('/').count() != 2 || crate::providers::repo_name_problem(&repo.path).is_some() {
        return Err(ProviderError::Rejected(format!(
            "`{}` is not a GitHub repository name (owner/name)",
            repo.path
        )));
    }
    Ok(&repo.path)
}

impl GithubClient {
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
}
