//! `lettuce.repositories`: the repositories this instance keeps indexed, one row per
//! (provider, host, full name). The license's `repos` cap counts these rows.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

use super::DbError;

/// Where a repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Gitlab,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "github" => Ok(Provider::Github),
            "gitlab" => Ok(Provider::Gitlab),
            other => Err(format!(
                "unknown provider {other:?}; accepted: github, gitlab"
            )),
        }
    }
}

/// Why a repository name is refused: the rule the schema's CHECK enforces, said in words (no
/// `.` or `..` part either: names become paths in the scratch cache).
pub fn full_name_problem(full_name: &str) -> Option<String> {
    let segment_ok = |s: &str| {
        (1..=100).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let parts: Vec<&str> = full_name.split('/').collect();
    let dots = |s: &str| s == "." || s == "..";
    if full_name.len() > 255
        || parts.len() < 2
        || parts.len() > 21
        || !parts.iter().all(|p| segment_ok(p) && !dots(p))
    {
        return Some(format!(
            "repository {:?} must be OWNER/NAME (GitLab: GROUP/…/NAME), at most 255 bytes, each part 1–100 of [A-Za-z0-9_.-]",
            full_name.chars().take(120).collect::<String>()
        ));
    }
    None
}

/// One row, as `worker repos list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repository {
    pub id: i64,
    pub provider: String,
    pub host: String,
    pub full_name: String,
    pub installation_id: Option<i64>,
    pub default_branch: Option<String>,
    pub last_indexed_commit: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_indexed_at: Option<OffsetDateTime>,
    pub file_count: Option<i64>,
    pub symbol_count: Option<i64>,
    pub webhook_status: String,
    pub webhook_error: Option<String>,
}

const COLUMNS: &str = "id, provider, host, full_name, installation_id, default_branch,
    last_indexed_commit, last_indexed_at, file_count, symbol_count, webhook_status, webhook_error";

fn from_row(r: &tokio_postgres::Row) -> Repository {
    Repository {
        id: r.get(0),
        provider: r.get(1),
        host: r.get(2),
        full_name: r.get(3),
        installation_id: r.get(4),
        default_branch: r.get(5),
        last_indexed_commit: r.get(6),
        last_indexed_at: r.get(7),
        file_count: r.get(8),
        symbol_count: r.get(9),
        webhook_status: r.get(10),
        webhook_error: r.get(11),
    }
}

/// Every repository, by provider, host and name.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Repository>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM lettuce.repositories ORDER BY provider, host, full_name"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// How many repositories the instance keeps (what the `repos` cap counts).
pub async fn count(client: &impl GenericClient) -> Result<i64, DbError> {
    Ok(client
        .query_one("SELECT count(*) FROM lettuce.repositories", &[])
        .await?
        .get(0))
}

/// Records a repository (or refreshes its installation); returns its row.
pub async fn upsert(
    client: &impl GenericClient,
    provider: Provider,
    host: &str,
    full_name: &str,
    installation_id: Option<i64>,
) -> Result<Repository, DbError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (provider, host, full_name) DO UPDATE
                    SET installation_id = coalesce(excluded.installation_id, lettuce.repositories.installation_id),
                        updated_at = now()
                 RETURNING {COLUMNS}"
            ),
            &[&provider.as_str(), &host, &full_name, &installation_id],
        )
        .await?;
    Ok(from_row(&row))
}

/// The longest `webhook_error` stored (the schema's CHECK).
const MAX_WEBHOOK_ERROR_BYTES: usize = 2048;

/// Sets the webhook status (and its last error, cleared with `None`) of one repository.
/// Returns false when no such repository is recorded.
pub async fn set_webhook_status(
    client: &impl GenericClient,
    id: i64,
    status: &str,
    error: Option<&str>,
) -> Result<bool, DbError> {
    let error = error.map(|e| {
        let mut text = crate::limits::sanitize_error(e);
        let mut cut = text.len().min(MAX_WEBHOOK_ERROR_BYTES);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text
    });
    let n = client
        .execute(
            "UPDATE lettuce.repositories SET webhook_status = $2, webhook_error = $3, updated_at = now()
              WHERE id = $1",
            &[&id, &status, &error],
        )
        .await?;
    Ok(n == 1)
}

/// The coalesce key of a repository's `repo.index` jobs for `git_ref` (`""`: the default
/// branch): at most one waits per repository and ref, whoever enqueues it, and a request while
/// one runs leads to one more run after it (`lettuce.enqueue_coalesced`).
pub fn index_coalesce_key(provider: &str, full_name: &str, git_ref: &str) -> String {
    format!("{provider}:{full_name}:{git_ref}")
}

/// Enqueues a `repo.index` with `payload` under `coalesce_key` (see [`index_coalesce_key`]);
/// returns the waiting job's id, new or existing.
pub async fn enqueue_index(
    client: &impl GenericClient,
    payload: &serde_json::Value,
    coalesce_key: &str,
) -> Result<i64, DbError> {
    Ok(client
        .query_one(
            "SELECT lettuce.enqueue_coalesced('repo.index', $1, $2)",
            &[&coalesce_key, payload],
        )
        .await?
        .get(0))
}

/// The scheduled fallback: enqueues a `repo.index` (default branch) for up to `limit`
/// repositories not indexed within `interval` (never indexed first, then the stalest). A
/// repository whose index already waits keeps that job (coalesced). Returns
/// `(repository id, job id)` of each.
pub async fn enqueue_due_reindexes(
    client: &impl GenericClient,
    interval: std::time::Duration,
    limit: i64,
) -> Result<Vec<(i64, i64)>, DbError> {
    let interval_ms = interval.as_millis() as f64;
    let rows = client
        .query(
            "SELECT r.id,
                    lettuce.enqueue_coalesced('repo.index', r.provider || ':' || r.full_name || ':',
                        jsonb_strip_nulls(jsonb_build_object(
                            'provider', r.provider, 'repo', r.full_name,
                            'installation_id', r.installation_id)))
               FROM (SELECT id, provider, full_name, installation_id
                       FROM lettuce.repositories
                      WHERE last_indexed_at IS NULL
                         OR last_indexed_at <= now() - $1 * interval '1 millisecond'
                      ORDER BY last_indexed_at NULLS FIRST, id
                      LIMIT $2) r",
            &[&interval_ms, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_schema_rule() {
        assert!(full_name_problem("acme/widgets").is_none());
        assert!(full_name_problem("group/sub/project.rs").is_none());
        for bad in [
            "widgets",
            "acme/",
            "/x",
            "a b/c",
            "acme/wid;gets",
            "ac/../me",
            "./x",
        ] {
            assert!(full_name_problem(bad).is_some(), "{bad} accepted");
        }
        assert!(full_name_problem(&format!("a/{}", "x".repeat(101))).is_some());
        assert!(
            full_name_problem(&vec!["x".repeat(100); 3].join("/")).is_some(),
            "over 255 bytes"
        );
    }
}
