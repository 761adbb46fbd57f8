//! `repo.webhook.ensure` `{"provider", "repo", "installation_id", "account_id"}`: makes sure the
//! repository has exactly our hook — events push, pull_request, issues; JSON; signed with
//! `LETTUCE_WEBHOOK_SECRET`; delivered to `${LETTUCE_WEB_URL}/v1/<provider>/webhook/<account_id>`
//! — creating it, or updating it when its events, its active flag or the secret changed (the
//! provider never shows a hook's secret, so the repository row keeps a SHA-256 of the one we
//! set). Idempotent: a second run with nothing changed makes no write.
//!
//! Outcomes, in `lettuce.repositories.webhook_status`: `active` when the hook is in place;
//! `manual` (the job completes: retrying cannot grant a permission) when the App lacks
//! `Webhooks: Read & write` or the GitLab token the `api` scope — the install guide's "manual
//! webhook" card, whose "Retry webhook setup" re-enqueues this job; `failed` with the error for
//! the other permanent answers (an uninstalled App, a repository gone). Rate limits snooze the
//! job; 5xx and timeouts retry; the status stays `pending` meanwhile.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{HandlerError, JobContext};
use crate::providers::{HookSpec, ProviderError, ProviderKind, RepoRef, repo_name_problem};

/// The events every hook subscribes to, in the provider's vocabulary for GitHub (GitLab's
/// client maps them to its flags).
pub const EVENTS: [&str; 3] = ["issues", "pull_request", "push"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPayload {
    pub provider: String,
    pub repo: String,
    #[serde(default)]
    pub installation_id: Option<u64>,
    pub account_id: u64,
}

/// The SHA-256 (hex) recorded for a webhook secret: enough to see that it changed, useless to
/// recover it.
pub fn secret_digest(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"lettuce-webhook-secret\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// `${web_url}/v1/<provider>/webhook/<account_id>`.
pub fn hook_url(web_url: &str, provider: ProviderKind, account_id: u64) -> String {
    format!(
        "{}/v1/{}/webhook/{account_id}",
        web_url.trim_end_matches('/'),
        provider.as_str()
    )
}

pub struct RepoWebhookEnsure;

impl super::Handler for RepoWebhookEnsure {
    const KIND: &'static str = "repo.webhook.ensure";
    type Payload = WebhookPayload;

    async fn run(&self, ctx: JobContext, p: WebhookPayload) -> Result<(), HandlerError> {
        let kind: ProviderKind = p.provider.parse().map_err(HandlerError::Permanent)?;
        if let Some(problem) = repo_name_problem(&p.repo) {
            return Err(HandlerError::Permanent(problem));
        }
        if p.account_id == 0 {
            return Err(HandlerError::Permanent(
                "account_id must be positive".into(),
            ));
        }
        let repo = match (kind, p.installation_id) {
            (ProviderKind::Github, Some(n)) if n > 0 => RepoRef::github(n, p.repo.clone()),
            (ProviderKind::Github, _) => {
                return Err(HandlerError::Permanent(
                    "installation_id is required for a GitHub repository".into(),
                ));
            }
            (ProviderKind::Gitlab, None) => RepoRef {
                provider: ProviderKind::Gitlab,
                path: p.repo.clone(),
                installation_id: None,
            },
            (ProviderKind::Gitlab, Some(_)) => {
                return Err(HandlerError::Permanent(
                    "installation_id is a GitHub field; GitLab repositories have none".into(),
                ));
            }
        };
        let settings = ctx.webhook_settings();
        let web_url = settings.web_url.clone().ok_or_else(|| {
            HandlerError::Permanent(
                "LETTUCE_WEB_URL is not set: a webhook needs the instance's public HTTPS URL to point at".into(),
            )
        })?;
        let secret = settings.secret.clone().ok_or_else(|| {
            HandlerError::Permanent(
                "LETTUCE_WEBHOOK_SECRET is not set: webhooks are signed with it".into(),
            )
        })?;
        let provider = ctx.provider(kind)?;
        let host = ctx.provider_host(kind);
        let row = ctx
            .record_repository(kind, &host, &p.repo, p.installation_id.map(|n| n as i64))
            .await?;
        let spec = HookSpec {
            url: hook_url(&web_url, kind, p.account_id),
            events: EVENTS.iter().map(|e| e.to_string()).collect(),
            secret: secret.clone(),
            active: true,
        };
        let digest = secret_digest(secret.expose());

        // Fails as `failed` (permanent), `manual` (a permission), or propagates (retry/snooze).
        let settle = |e: ProviderError| async {
            match e {
                ProviderError::MissingPermission { .. } => {
                    let text = format!(
                        "{e}; add the webhook by hand (README \"Job kinds\") or grant the permission and retry the webhook setup"
                    );
                    tracing::warn!(repo = %p.repo, "{text}");
                    ctx.set_webhook_status(row.id, "manual", Some(&text))
                        .await?;
                    Ok(())
                }
                ProviderError::RateLimited { .. } | ProviderError::Unavailable(_) => {
                    Err(HandlerError::from(e))
                }
                _ => {
                    ctx.set_webhook_status(row.id, "failed", Some(&e.to_string()))
                        .await?;
                    Err(HandlerError::from(e))
                }
            }
        };
        // The repository first: a hooks 404 after it answered means a missing permission.
        if let Err(e) = provider.repository(&repo).await {
            return settle(e).await;
        }
        let hooks = match provider.list_hooks(&repo).await {
            Ok(h) => h,
            Err(ProviderError::RepositoryMissing { .. }) => {
                return settle(missing_hooks_permission(kind)).await;
            }
            Err(e) => return settle(e).await,
        };
        let (recorded_id, recorded_digest) = ctx.webhook_record(row.id).await?;
        let ours = hooks.iter().find(|h| h.url == spec.url);
        let hook = match ours {
            Some(h) => {
                let mut events = h.events.clone();
                events.sort();
                let current = events == spec.events
                    && h.active
                    && recorded_id == Some(h.id as i64)
                    && recorded_digest.as_deref() == Some(digest.as_str());
                if current {
                    tracing::debug!(repo = %p.repo, hook = h.id, "webhook already in place");
                    h.clone()
                } else {
                    match provider.update_hook(&repo, h.id, &spec).await {
                        Ok(h) => h,
                        Err(e) => return settle(e).await,
                    }
                }
            }
            None => match provider.create_hook(&repo, &spec).await {
                Ok(h) => h,
                Err(e) => return settle(e).await,
            },
        };
        ctx.set_webhook_active(row.id, hook.id as i64, &digest)
            .await?;
        tracing::info!(repo = %p.repo, hook = hook.id, "webhook active");
        Ok(())
    }
}

fn missing_hooks_permission(kind: ProviderKind) -> ProviderError {
    let (provider, permission) = match kind {
        ProviderKind::Github => ("GitHub", "Webhooks: Read & write"),
        ProviderKind::Gitlab => ("GitLab", "api"),
    };
    ProviderError::MissingPermission {
        provider,
        permission: permission.into(),
        message: "the hooks endpoint answered 404 for a repository the credentials can read".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_urls_and_secret_digests() {
        assert_eq!(
            hook_url("https://lettuce.acme.test/", ProviderKind::Github, 99),
            "https://lettuce.acme.test/v1/github/webhook/99"
        );
        let d = secret_digest("s3cret");
        assert_eq!(d.len(), 64);
        assert_ne!(d, secret_digest("s3cret2"));
        assert!(!d.contains("s3cret"));
        let mut sorted = EVENTS.to_vec();
        sorted.sort();
        assert_eq!(
            sorted, EVENTS,
            "kept sorted: compared with a provider's sorted list"
        );
    }
}
