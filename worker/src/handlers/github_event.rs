//! `github.event`: one webhook delivery, enqueued by the Lettuce API as
//! `{"delivery_id", "event", "payload"}` (the `X-GitHub-Delivery` id, the `X-GitHub-Event` name,
//! the delivery body). A push to a repository's indexed branch, or a pull request opened,
//! synchronized or reopened, leads to one `repo.index` (coalesced per repository and ref: a
//! burst of pushes leaves one waiting index, and a push during a run still gets a run after
//! it). A redelivered `delivery_id` does nothing twice. Everything else is ignored with a debug
//! line; so are repositories this instance does not keep (no `lettuce.repositories` row).

use serde::Deserialize;
use serde_json::Value;

use super::{Handler, HandlerError, JobContext};
use crate::db::deliveries::{Delivery, IndexRequest};
use crate::db::repositories::index_coalesce_key;
use crate::providers::{ProviderKind, repo_name_problem};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPayload {
    pub delivery_id: String,
    pub event: String,
    pub payload: Value,
}

/// What a delivery asks for, read from its body alone. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do, and why (for the debug line).
    Ignore(String),
    /// Index `git_ref` of `repo` if it is the repository's indexed branch.
    Push {
        repo: String,
        installation_id: Option<i64>,
        git_ref: String,
        default_branch: Option<String>,
    },
    /// Index the pull request's head, `refs/pull/<number>/head`.
    PullRequest {
        repo: String,
        installation_id: Option<i64>,
        number: i64,
    },
}

/// Reads what `event` with `body` asks for.
pub fn decide(event: &str, body: &Value) -> Result<Decision, String> {
    let repo = || -> Result<String, String> {
        let name = body["repository"]["full_name"]
            .as_str()
            .ok_or("payload.repository.full_name missing")?;
        if let Some(problem) = repo_name_problem(name) {
            return Err(problem);
        }
        Ok(name.to_string())
    };
    let installation = body["installation"]["id"].as_i64().filter(|n| *n > 0);
    match event {
        "push" => {
            if body["deleted"].as_bool() == Some(true) {
                return Ok(Decision::Ignore("a deleted ref".into()));
            }
            let git_ref = body["ref"].as_str().ok_or("payload.ref missing")?;
            if !git_ref.starts_with("refs/heads/") {
                return Ok(Decision::Ignore(format!(
                    "a push to {git_ref}, not a branch"
                )));
            }
            Ok(Decision::Push {
                repo: repo()?,
                installation_id: installation,
                git_ref: git_ref.to_string(),
                default_branch: body["repository"]["default_branch"]
                    .as_str()
                    .map(str::to_string),
            })
        }
        "pull_request" => {
            let action = body["action"].as_str().unwrap_or_default();
            if !matches!(action, "opened" | "synchronize" | "reopened") {
                return Ok(Decision::Ignore(format!("pull_request {action:?}")));
            }
            let number = body["number"]
                .as_i64()
                .or_else(|| body["pull_request"]["number"].as_i64())
                .filter(|n| *n > 0)
                .ok_or("payload.number missing")?;
            Ok(Decision::PullRequest {
                repo: repo()?,
                installation_id: installation,
                number,
            })
        }
        other => Ok(Decision::Ignore(format!("event {other:?}"))),
    }
}

fn index_request(repo: &str, installation_id: Option<i64>, git_ref: Option<&str>) -> IndexRequest {
    let mut payload = serde_json::json!({"provider": "github", "repo": repo});
    if let Some(n) = installation_id {
        payload["installation_id"] = n.into();
    }
    if let Some(r) = git_ref {
        payload["ref"] = r.into();
    }
    IndexRequest {
        payload,
        coalesce_key: index_coalesce_key("github", repo, git_ref.unwrap_or("")),
    }
}

pub struct GithubEvent;

impl Handler for GithubEvent {
    const KIND: &'static str = "github.event";
    type Payload = EventPayload;

    async fn run(&self, ctx: JobContext, p: EventPayload) -> Result<(), HandlerError> {
        if p.delivery_id.is_empty() || p.delivery_id.len() > 100 {
            return Err(HandlerError::Permanent(
                "delivery_id must be 1 to 100 bytes".into(),
            ));
        }
        if p.event.is_empty() || p.event.len() > 100 {
            return Err(HandlerError::Permanent(
                "event must be 1 to 100 bytes".into(),
            ));
        }
        let decision = decide(&p.event, &p.payload).map_err(HandlerError::Permanent)?;
        let host = ctx.github_host();
        let index = match decision {
            Decision::Ignore(why) => {
                tracing::debug!(delivery = %p.delivery_id, "github.event ignored: {why}");
                None
            }
            Decision::Push {
                repo,
                installation_id,
                git_ref,
                default_branch,
            } => match ctx.repository(ProviderKind::Github, &host, &repo).await? {
                None => {
                    tracing::debug!(delivery = %p.delivery_id, repo = %repo, "github.event ignored: not a repository of this instance");
                    None
                }
                Some(row) => {
                    let branch = row.default_branch.or(default_branch).unwrap_or_default();
                    if git_ref == format!("refs/heads/{branch}") {
                        Some(index_request(
                            &repo,
                            installation_id.or(row.installation_id),
                            None,
                        ))
                    } else {
                        tracing::debug!(delivery = %p.delivery_id, repo = %repo, git_ref = %git_ref, "github.event ignored: not the indexed branch");
                        None
                    }
                }
            },
            Decision::PullRequest {
                repo,
                installation_id,
                number,
            } => match ctx.repository(ProviderKind::Github, &host, &repo).await? {
                None => None,
                Some(row) => Some(index_request(
                    &repo,
                    installation_id.or(row.installation_id),
                    Some(&format!("refs/pull/{number}/head")),
                )),
            },
        };
        match ctx
            .record_delivery(&p.delivery_id, &p.event, index.as_ref())
            .await?
        {
            Delivery::Duplicate => {
                tracing::info!(delivery = %p.delivery_id, "github.event: delivery already handled; nothing done");
            }
            Delivery::Recorded { job: Some(job) } => {
                tracing::info!(delivery = %p.delivery_id, index_job = job, "github.event: repo.index enqueued");
            }
            Delivery::Recorded { job: None } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repo(extra: Value) -> Value {
        let mut body = json!({
            "repository": {"full_name": "acme/widgets", "default_branch": "main"},
            "installation": {"id": 42}
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }

    #[test]
    fn pushes_and_pull_requests_ask_for_an_index_and_the_rest_is_ignored() {
        assert_eq!(
            decide("push", &repo(json!({"ref": "refs/heads/main"}))).unwrap(),
            Decision::Push {
                repo: "acme/widgets".into(),
                installation_id: Some(42),
                git_ref: "refs/heads/main".into(),
                default_branch: Some("main".into()),
            }
        );
        assert!(matches!(
            decide("push", &repo(json!({"ref": "refs/tags/v1"}))).unwrap(),
            Decision::Ignore(_)
        ));
        assert!(matches!(
            decide(
                "push",
                &repo(json!({"ref": "refs/heads/main", "deleted": true}))
            )
            .unwrap(),
            Decision::Ignore(_)
        ));
        for action in ["opened", "synchronize", "reopened"] {
            assert_eq!(
                decide(
                    "pull_request",
                    &repo(json!({"action": action, "number": 7}))
                )
                .unwrap(),
                Decision::PullRequest {
                    repo: "acme/widgets".into(),
                    installation_id: Some(42),
                    number: 7
                }
            );
        }
        assert!(matches!(
            decide(
                "pull_request",
                &repo(json!({"action": "closed", "number": 7}))
            )
            .unwrap(),
            Decision::Ignore(_)
        ));
        assert!(matches!(
            decide("issues", &repo(json!({"action": "opened"}))).unwrap(),
            Decision::Ignore(_)
        ));
        // A body without what the event needs, or with a hostile name, is refused by name.
        assert!(decide("push", &json!({})).unwrap_err().contains("ref"));
        let hostile =
            json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/../../etc"}});
        assert!(decide("push", &hostile).unwrap_err().contains("OWNER/NAME"));
    }

    #[test]
    fn index_requests_key_by_repository_and_ref() {
        let r = index_request("acme/widgets", Some(42), Some("refs/pull/7/head"));
        assert_eq!(r.coalesce_key, "github:acme/widgets:refs/pull/7/head");
        assert_eq!(
            r.payload,
            json!({"provider": "github", "repo": "acme/widgets", "installation_id": 42, "ref": "refs/pull/7/head"})
        );
        assert_eq!(
            index_request("acme/widgets", None, None).coalesce_key,
            "github:acme/widgets:"
        );
    }
}
