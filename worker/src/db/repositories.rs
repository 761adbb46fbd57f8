//! `lettuce.repositories`: the repositories this instance keeps indexed, one row per
//! (provider, host, full name). The license's `repos` cap counts these rows.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

use super::DbError;

use crate::providers::ProviderKind;

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
        .query_typed(
            &format!(
                "SELECT {COLUMNS} FROM lettuce.repositories ORDER BY provider, host, full_name"
            ),
            params![])
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// What `check-config`'s `repositories` check reports: how many repositories are kept, and the
/// first `limit` whose webhook is `manual` or `failed` (provider, host, name, status, error),
/// with how many such there are in all.
pub async fn webhook_problems(
    client: &impl GenericClient,
    limit: i64,
) -> Result<(i64, i64, Vec<(String, String, String, String, Option<String>)>), DbError> {
    let counts = client
        .query_typed_one(
            "SELECT count(*), count(*) FILTER (WHERE webhook_status IN ('manual', 'failed'))
               FROM lettuce.repositories",
            params![])
        .await?;
    let rows = client
        .query_typed(
            "SELECT provider, host, full_name, webhook_status, webhook_error
               FROM lettuce.repositories WHERE webhook_status IN ('manual', 'failed')
              ORDER BY provider, host, full_name LIMIT $1",
            params![limit])
        .await?;
    Ok((
        counts.get(0),
        counts.get(1),
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect(),
    ))
}

/// The repository recorded as (`provider`, `host`, `full_name`), if any.
pub async fn find(
    client: &impl GenericClient,
    provider: ProviderKind,
    host: &str,
    full_name: &str,
) -> Result<Option<Repository>, DbError> {
    let row = client
        .query_typed_opt(
            &format!(
                "SELECT {COLUMNS} FROM lettuce.repositories
                  WHERE provider = $1 AND host = $2 AND full_name = $3"
            ),
            params![provider.as_str(), host, full_name])
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// How many repositories the instance keeps (what the `repos` cap counts).
pub async fn count(client: &impl GenericClient) -> Result<i64, DbError> {
    Ok(client
        .query_typed_one("SELECT count(*) FROM lettuce.repositories", params![])
        .await?
        .get(0))
}

/// Records a repository (or refreshes its installation); returns its row.
pub async fn upsert(
    client: &impl GenericClient,
    provider: ProviderKind,
    host: &str,
    full_name: &str,
    installation_id: Option<i64>,
) -> Result<Repository, DbError> {
    let row = client
        .query_typed_one(
            &format!(
                "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (provider, host, full_name) DO UPDATE
                    SET installation_id = coalesce(excluded.installation_id, lettuce.repositories.installation_id),
                        updated_at = now()
                 RETURNING {COLUMNS}"
            ),
            params![provider.as_str(), host, full_name, installation_id])
        .await?;
    Ok(from_row(&row))
}

/// Records a repository for `repo.webhook.ensure`: inserts it (or refreshes its installation)
/// and returns its row, whether it is new, and how many repositories the instance keeps then.
/// A new row beyond `cap` is not kept (the caller reports the license limit).
pub async fn upsert_within(
    client: &mut tokio_postgres::Client,
    provider: ProviderKind,
    host: &str,
    full_name: &str,
    installation_id: Option<i64>,
    cap: Option<u64>,
) -> Result<Result<Repository, i64>, DbError> {
    let tx = client.transaction().await?;
    if cap.is_some() {
        // Serialise new rows against the cap across replicas (taken before any write, so two
        // callers queue here instead of deadlocking).
        tx.execute_typed(
            "LOCK TABLE lettuce.repositories IN SHARE ROW EXCLUSIVE MODE",
            params![])
        .await?;
    }
    let existed = find(&tx, provider, host, full_name).await?.is_some();
    let row = upsert(&tx, provider, host, full_name, installation_id).await?;
    if !existed && let Some(cap) = cap {
        let n = count(&tx).await?;
        if n as u64 > cap {
            tx.rollback().await?;
            return Ok(Err(n));
        }
    }
    tx.commit().await?;
    Ok(Ok(row))
}

/// The hook recorded for a repository: `(webhook_id, webhook_secret_sha256)`.
pub async fn webhook_record(
    client: &impl GenericClient,
    id: i64,
) -> Result<(Option<i64>, Option<String>), DbError> {
    let row = client
        .query_typed_one(
            "SELECT webhook_id, webhook_secret_sha256 FROM lettuce.repositories WHERE id = $1",
            params![id])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Marks a repository's webhook `active`, recording the hook and the secret's digest.
pub async fn set_webhook_active(
    client: &impl GenericClient,
    id: i64,
    webhook_id: i64,
    secret_sha256: &str,
) -> Result<(), DbError> {
    client
        .execute_typed(
            "UPDATE lettuce.repositories
                SET webhook_status = 'active', webhook_error = NULL, webhook_id = $2,
                    webhook_secret_sha256 = $3, updated_at = now()
              WHERE id = $1",
            params![id, webhook_id, secret_sha256])
        .await?;
    Ok(())
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
        .execute_typed(
            "UPDATE lettuce.repositories SET webhook_status = $2, webhook_error = $3, updated_at = now()
              WHERE id = $1",
            params![id, status, error])
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
        .query_typed_one(
            "SELECT lettuce.enqueue_coalesced('repo.index', $1, $2)",
            params![coalesce_key, payload])
        .await?
        .get(0))
}

/// The scheduled fallback: enqueues a `repo.index` (default branch) for up to `limit`
/// repositories not indexed within `interval` (never indexed first, then the stalest) and with
/// no default-branch index waiting or running. Returns `(repository id, job id)` of each job
/// enqueued.
pub async fn enqueue_due_reindexes(
    client: &impl GenericClient,
    interval: std::time::Duration,
    limit: i64,
) -> Result<Vec<(i64, i64)>, DbError> {
    let interval_ms = interval.as_millis() as f64;
    let rows = client
        .query_typed(
            "SELECT r.id,
                    lettuce.enqueue_coalesced('repo.index', r.provider || ':' || r.full_name || ':',
                        jsonb_strip_nulls(jsonb_build_object(
                            'provider', r.provider, 'repo', r.full_name,
                            'installation_id', r.installation_id)))
               FROM (SELECT id, provider, full_name, installation_id
                       FROM lettuce.repositories
                      WHERE (last_indexed_at IS NULL
                             OR last_indexed_at <= now() - $1 * interval '1 millisecond')
                        -- Not while one waits or runs (its coalesce slots `<key>#n`).
                        AND NOT EXISTS (
                            SELECT 1 FROM lettuce.job_queue j
                             WHERE j.kind = 'repo.index'
                               AND j.unique_key >= provider || ':' || full_name || ':#'
                               AND j.unique_key < provider || ':' || full_name || ':$')
                        -- Nor when its last index failed within the interval: a repository
                        -- that cannot be indexed is tried once per interval, not every pass.
                        AND NOT EXISTS (
                            SELECT 1 FROM lettuce.job_history h
                             WHERE h.unique_key >= provider || ':' || full_name || ':#'
                               AND h.unique_key < provider || ':' || full_name || ':$'
                               AND h.kind = 'repo.index' AND h.state = 'discarded'
                               AND h.finished_at > now() - $1 * interval '1 millisecond')
                      ORDER BY last_indexed_at NULLS FIRST, id
                      LIMIT $2) r",
            params![interval_ms, limit])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What a completed `repo.index` records on its repository row. Written by the completer in
/// the transaction that completes the job ([`record_index`]), and only when that completion
/// was accepted, so an attempt that does not complete leaves the row as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryIndexed {
    /// The job whose completion carries this write.
    pub job_id: i64,
    /// `lettuce.repositories.id`.
    pub repository_id: i64,
    pub commit: String,
    /// The full ref indexed (`refs/heads/main`).
    pub git_ref: String,
    pub manifest_key: String,
    pub file_count: i64,
    pub symbol_count: i64,
    /// The default branch's short name, when the job indexed the default branch.
    pub default_branch: Option<String>,
}

/// Records the latest index of each repository in `rows` (last commit, ref and time, the
/// manifest key, counts; the default branch when known).
pub async fn record_index(
    client: &impl GenericClient,
    rows: &[&RepositoryIndexed],
) -> Result<(), DbError> {
    for r in rows {
        client
            .execute_typed(
                "UPDATE lettuce.repositories
                    SET last_indexed_commit = $2, last_indexed_ref = $3, last_indexed_at = now(),
                        manifest_key = $4, file_count = $5, symbol_count = $6,
                        default_branch = COALESCE($7, default_branch), updated_at = now()
                  WHERE id = $1",
                params![r.repository_id, r.commit, r.git_ref, r.manifest_key, r.file_count, r.symbol_count, r.default_branch])
            .await?;
    }
    Ok(())
}

/// The latest index of repository `id`: `(last_indexed_commit, manifest_key)`, when both are
/// recorded.
pub async fn last_index(
    client: &impl GenericClient,
    id: i64,
) -> Result<Option<(String, String)>, DbError> {
    let row = client
        .query_typed_opt(
            "SELECT last_indexed_commit, manifest_key FROM lettuce.repositories WHERE id = $1",
            params![id])
        .await?;
    Ok(row.and_then(|r| {
        let commit: Option<String> = r.get(0);
        let key: Option<String> = r.get(1);
        commit.zip(key)
    }))
}
