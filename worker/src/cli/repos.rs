//! `worker repos list|index`: the repositories this instance keeps indexed.

use std::process::ExitCode;

use super::{connect_for_command, fail};
use crate::config::Config;
use crate::db::repositories::{self, Repository};
use crate::providers::{ProviderKind, repo_name_problem};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every repository with its webhook status and latest index
    List {
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a `repo.index` of one repository and print the job id
    Index {
        /// OWNER/NAME (GitLab: GROUP/…/NAME)
        repo: String,
        /// The GitHub App installation that can read it (required for GitHub)
        #[arg(long)]
        installation: Option<i64>,
        #[arg(long, default_value = "github")]
        provider: String,
        /// The ref to index (default: the repository's default branch)
        #[arg(long = "ref")]
        git_ref: Option<String>,
    },
}

/// A `repo.index` request for `repo`: its payload and coalesce key, refusing what the handler
/// would refuse.
#[derive(Debug)]
pub struct IndexRequest {
    pub payload: serde_json::Value,
    pub coalesce_key: String,
}

pub fn index_job(
    repo: &str,
    provider: &str,
    installation: Option<i64>,
    git_ref: Option<&str>,
) -> Result<IndexRequest, String> {
    let provider: ProviderKind = provider.parse().map_err(|e| format!("--provider: {e}"))?;
    if let Some(problem) = repo_name_problem(repo) {
        return Err(format!("OWNER/NAME: {problem}"));
    }
    let mut payload = serde_json::json!({ "provider": provider.as_str(), "repo": repo });
    match (provider, installation) {
        (ProviderKind::Github, None) => {
            return Err("--installation: required for a GitHub repository".into());
        }
        (_, Some(n)) if n <= 0 => return Err("--installation: must be positive".into()),
        (ProviderKind::Github, Some(n)) => payload["installation_id"] = n.into(),
        (ProviderKind::Gitlab, Some(_)) => {
            return Err("--installation: GitLab repositories have none".into());
        }
        (ProviderKind::Gitlab, None) => {}
    }
    if let Some(r) = git_ref {
        if r.is_empty() || r.len() > 255 || r.chars().any(|c| c.is_control() || c == ' ') {
            return Err("--ref: 1–255 characters, no spaces or control characters".into());
        }
        payload["ref"] = r.into();
    }
    // One waiting index per repository and ref: a second `repos index` prints it.
    let coalesce_key =
        repositories::index_coalesce_key(provider.as_str(), repo, git_ref.unwrap_or(""));
    Ok(IndexRequest {
        payload,
        coalesce_key,
    })
}

pub async fn run(command: Command, config: Config) -> ExitCode {
    let job = match &command {
        Command::Index {
            repo,
            installation,
            provider,
            git_ref,
        } => match index_job(repo, provider, *installation, git_ref.as_deref()) {
            Ok(job) => Some(job),
            Err(e) => return fail(&format!("error: {e}"), 2),
        },
        Command::List { .. } => None,
    };
    let pool = match connect_for_command(&config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return fail(&format!("DatabaseUnavailable: {e}"), 5),
    };
    let client = &**client;
    match (command, job) {
        (Command::List { json }, _) => match repositories::list(client).await {
            Ok(rows) if json => {
                for r in rows {
                    println!(
                        "{}",
                        serde_json::to_string(&r).expect("repository serializes")
                    );
                }
                ExitCode::SUCCESS
            }
            Ok(rows) => {
                print_table(&rows);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("error: {e}"), 1),
        },
        (Command::Index { .. }, Some(job)) => {
            match repositories::enqueue_index(client, &job.payload, &job.coalesce_key).await {
                Ok(id) => {
                    println!("{id}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("error: enqueue failed: {e}"), 1),
            }
        }
        (Command::Index { .. }, None) => unreachable!("built above"),
    }
}

fn print_table(rows: &[Repository]) {
    println!(
        "{:<8} {:<24} {:<40} {:<8} {:<12} {:>7} {:>8}  LAST INDEXED",
        "PROVIDER", "HOST", "REPOSITORY", "WEBHOOK", "COMMIT", "FILES", "SYMBOLS"
    );
    for r in rows {
        let at = r
            .last_indexed_at
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "never".into());
        let commit: String = r
            .last_indexed_commit
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(12)
            .collect();
        let count = |n: Option<i64>| n.map_or("-".to_string(), |n| n.to_string());
        println!(
            "{:<8} {:<24} {:<40} {:<8} {:<12} {:>7} {:>8}  {}",
            r.provider,
            r.host,
            r.full_name,
            r.webhook_status,
            commit,
            count(r.file_count),
            count(r.symbol_count),
            at
        );
        if let Some(e) = &r.webhook_error {
            println!("         webhook: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_jobs_are_checked_before_anything_connects() {
        let job = index_job("acme/widgets", "github", Some(42), Some("refs/heads/dev")).unwrap();
        assert_eq!(job.coalesce_key, "github:acme/widgets:refs/heads/dev");
        assert_eq!(
            job.payload,
            serde_json::json!({"provider": "github", "repo": "acme/widgets", "installation_id": 42, "ref": "refs/heads/dev"})
        );
        let gl = index_job("grp/sub/proj", "gitlab", None, None).unwrap();
        assert_eq!(
            gl.payload,
            serde_json::json!({"provider": "gitlab", "repo": "grp/sub/proj"})
        );
        for (repo, provider, inst, want) in [
            ("acme/widgets", "github", None, "--installation: required"),
            ("acme/widgets", "gitlab", Some(1), "--installation: GitLab"),
            ("acme/widgets", "bitbucket", Some(1), "--provider"),
            ("widgets", "github", Some(1), "OWNER/NAME"),
            ("acme/../etc", "github", Some(1), "OWNER/NAME"),
            ("acme/widgets", "github", Some(-3), "must be positive"),
        ] {
            let e = index_job(repo, provider, inst, None).unwrap_err();
            assert!(e.contains(want), "{repo} {provider}: {e}");
        }
        assert!(index_job("a/b", "github", Some(1), Some("bad ref")).is_err());
    }
}
