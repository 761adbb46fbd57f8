//! `repo.index` `{"provider": "github"|"gitlab", "repo": "owner/name", "installation_id": N
//! (GitHub), "ref": "refs/heads/main" (optional: the default branch)}` (README "Job kinds"): fetches the
//! repository into the scratch cache under `CODEWAZE_DATA_DIR` ([`crate::git::Scratch`]),
//! indexes the commit ([`crate::index::index`], incrementally against the repository's previous
//! index when one is recorded), writes the three artifacts `files.jsonl.zst`,
//! `symbols.jsonl.zst` and `manifest.json`, and notes the repository's new index on the job's
//! context so the completer records it on `lettuce.repositories` in the transaction that
//! completes the job.
//!
//! Outcomes: a repository not yet recorded beyond the license's `repos` cap is permanent
//! (`License limit reached: …`); a provider rate limit snoozes; an uninstalled App, a missing
//! repository or ref, refused credentials are permanent; an unreachable git server, a full
//! scratch disk (naming the directory), a store that cannot take the upload are retryable. A
//! cancelled attempt (lease lost, job cancelled, shutdown) kills git and stops parsing, and
//! writes nothing. Errors name the repository, never the token.
//!
//! Spans under `job.repo.index`: `repo.fetch` (commit, ref, whether it was a fresh clone),
//! `repo.parse` (files, parsed, carried, symbols, bytes parsed), `repo.upload` (artifact bytes).
//! Counts are recorded as `i64`: tracing-opentelemetry exports a `u64` field as a string.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{HandlerError, JobContext};
use crate::db::repositories::RepositoryIndexed;
use crate::git::{BlobReader, GitAuth, GitError, RepoKey, Scratch};
use crate::index::{self, IndexError, Previous};
use crate::providers::{ProviderKind, RepoRef, repo_name_problem};

/// The artifact names of one index.
pub const MANIFEST_NAME: &str = "manifest.json";

/// The limit on one attempt, unless `LETTUCE_JOB_TIMEOUT_MS` allows more: a large repository's
/// first fetch and full parse are long.
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// The limit on the fetch alone.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPayload {
    pub provider: String,
    pub repo: String,
    #[serde(default)]
    pub installation_id: Option<u64>,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
}

/// The handler: the scratch cache and where an attempt's index is written before upload.
pub struct RepoIndex {
    scratch: Scratch,
    work_root: PathBuf,
    timeout: Duration,
}

impl RepoIndex {
    /// Scratch at `CODEWAZE_DATA_DIR` (the directory `check-config`'s `scratch` check probes).
    pub fn new(config: &crate::config::Config) -> RepoIndex {
        RepoIndex {
            scratch: Scratch::new(&config.data_dir),
            work_root: config.data_dir.join("index-work"),
            timeout: config.job_timeout.max(MIN_ATTEMPT_TIMEOUT),
        }
    }
}

/// Removes an attempt's work directory however the attempt ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The git blob reader as the indexer's blob source.
struct GitBlobs(BlobReader);

impl index::Blobs for GitBlobs {
    fn read(&mut self, blob: &str, size_hint: u64) -> std::io::Result<Vec<u8>> {
        self.0.read(blob, size_hint)
    }
}

fn git_error(repo: &str, e: GitError) -> HandlerError {
    let text = format!("repository {repo}: {e}");
    if e.is_retryable() {
        HandlerError::Retryable(text)
    } else {
        HandlerError::Permanent(text)
    }
}

fn index_error(repo: &str, e: IndexError) -> HandlerError {
    HandlerError::Retryable(format!("repository {repo}: {e}"))
}

fn cancelled(repo: &str) -> HandlerError {
    HandlerError::Retryable(format!(
        "repository {repo}: the attempt was cancelled; nothing was written"
    ))
}

/// The repository reference the provider is asked about.
fn repo_ref(p: &IndexPayload, kind: ProviderKind) -> Result<RepoRef, HandlerError> {
    match (kind, p.installation_id) {
        (ProviderKind::Github, Some(n)) if n > 0 => Ok(RepoRef::github(n, p.repo.clone())),
        (ProviderKind::Github, _) => Err(HandlerError::Permanent(
            "installation_id is required for a GitHub repository".into(),
        )),
        (ProviderKind::Gitlab, None) => Ok(RepoRef::gitlab(p.repo.clone())),
        (ProviderKind::Gitlab, Some(_)) => Err(HandlerError::Permanent(
            "installation_id is a GitHub field; GitLab repositories have none".into(),
        )),
    }
}

/// The scratch key: a GitLab subgroup path's namespace is encoded into one part.
fn repo_key(kind: ProviderKind, host: &str, full_name: &str) -> Result<RepoKey, GitError> {
    let (owner, name) = full_name.rsplit_once('/').unwrap_or(("", full_name));
    RepoKey::new(kind.as_str(), host, &owner.replace('/', "%2F"), name)
}

/// Reads the previous index named by `manifest_key` into memory (and a spill file in `work`).
/// `None` (a full index) when anything about it is unusable; the index is then rebuilt.
async fn read_previous(
    ctx: &JobContext,
    repo: &str,
    manifest_key: &str,
    work: &Path,
) -> Option<(Previous, String)> {
    let attempt = async {
        let bytes = ctx
            .artifacts()
            .get_small(manifest_key)
            .await
            .map_err(|e| e.to_string())?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("manifest: {e}"))?;
        let key = |name: &str| {
            manifest["artifacts"][name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("manifest names no {name} artifact"))
        };
        // Records are carried verbatim: only from an index this indexer version wrote.
        let version = manifest["indexer"]["version"].as_str().unwrap_or_default();
        if version != env!("CARGO_PKG_VERSION") {
            return Err(format!(
                "it was written by indexer version {version:?}, not {}",
                env!("CARGO_PKG_VERSION")
            ));
        }
        let (files_key, symbols_key) = (key("files")?, key("symbols")?);
        let commit = manifest["commit"]
            .as_str()
            .ok_or("manifest names no commit")?
            .to_string();
        let files = work.join("previous-files.jsonl.zst");
        let symbols = work.join("previous-symbols.jsonl.zst");
        let store = ctx.artifacts();
        store
            .get_to_file(&files_key, &files, &ctx.cancel)
            .await
            .map_err(|e| e.to_string())?;
        store
            .get_to_file(&symbols_key, &symbols, &ctx.cancel)
            .await
            .map_err(|e| e.to_string())?;
        let spill = work.to_path_buf();
        let previous = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&files).map_err(|e| e.to_string())?;
            let s = std::fs::File::open(&symbols).map_err(|e| e.to_string())?;
            let read = Previous::read_in(&spill, f, s).map_err(|e| e.to_string());
            let _ = std::fs::remove_file(&files);
            let _ = std::fs::remove_file(&symbols);
            read
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok::<_, String>((previous, commit))
    };
    match attempt.await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(repo = %repo, manifest = %manifest_key, error = %e, "the previous index cannot be read; indexing every file");
            None
        }
    }
}

impl super::Handler for RepoIndex {
    const KIND: &'static str = "repo.index";
    type Payload = IndexPayload;

    fn timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    async fn run(&self, ctx: JobContext, p: IndexPayload) -> Result<(), HandlerError> {
        let kind: ProviderKind = p.provider.parse().map_err(HandlerError::Permanent)?;
        if let Some(problem) = repo_name_problem(&p.repo) {
            return Err(HandlerError::Permanent(problem));
        }
        let target = repo_ref(&p, kind)?;
        let provider = ctx.provider(kind)?;
        let host = ctx.provider_host(kind);
        let key = repo_key(kind, &host, &p.repo).map_err(|e| git_error(&p.repo, e))?;
        // The cap: a repository not yet recorded beyond it fails here, before any fetch.
        let row = ctx
            .record_repository(kind, &host, &p.repo, p.installation_id.map(|n| n as i64))
            .await?;
        let access = provider.access(&target).await?;
        let auth = match kind {
            ProviderKind::Github => GitAuth::github(&access.token),
            ProviderKind::Gitlab => GitAuth::gitlab(&access.token),
        };
        // Stops git and the parser when the attempt's future is dropped (timeout, abort) as
        // well as when the attempt is cancelled.
        let cancel = ctx.cancel.child_token();
        let _stop_on_drop = cancel.clone().drop_guard();

        let work = WorkDir(
            self.work_root
                .join(format!("job-{}-attempt-{}", ctx.job.id, ctx.job.attempt)),
        );
        std::fs::create_dir_all(&work.0)
            .map_err(|e| git_error(&p.repo, GitError::io(&work.0, e)))?;

        // Fetch.
        let fetch_span = tracing::info_span!(
            "repo.fetch",
            repo = %p.repo,
            git.refname = p.git_ref.as_deref().unwrap_or("(default branch)"),
            git.commit = tracing::field::Empty,
            git.fresh_clone = tracing::field::Empty,
            git.files = tracing::field::Empty,
            git.bytes = tracing::field::Empty,
        );
        let (dir, fetched, entries) = {
            use tracing::Instrument;
            let scratch = &self.scratch;
            let cancel = &cancel;
            let repo = &p.repo;
            async {
                let dir = scratch
                    .open(&key, cancel)
                    .await
                    .map_err(|e| git_error(repo, e))?;
                let fetched = scratch
                    .fetch(
                        &dir,
                        &access.clone_url,
                        &auth,
                        p.git_ref.as_deref(),
                        cancel,
                        FETCH_TIMEOUT.min(self.timeout),
                    )
                    .await
                    .map_err(|e| git_error(repo, e))?;
                let entries = scratch
                    .ls_tree(&dir, &fetched.commit)
                    .await
                    .map_err(|e| git_error(repo, e))?;
                let span = tracing::Span::current();
                span.record("git.commit", fetched.commit.as_str());
                span.record("git.fresh_clone", fetched.fresh_clone);
                span.record("git.files", entries.len() as i64);
                span.record(
                    "git.bytes",
                    entries.iter().map(|e| e.size).sum::<u64>() as i64,
                );
                Ok::<_, HandlerError>((dir, fetched, entries))
            }
            .instrument(fetch_span)
            .await?
        };
        if cancel.is_cancelled() {
            return Err(cancelled(&p.repo));
        }

        // The previous index, when the repository has one.
        let previous = match ctx.last_index(row.id).await? {
            Some((_, manifest_key)) => read_previous(&ctx, &p.repo, &manifest_key, &work.0).await,
            None => None,
        };
        if cancel.is_cancelled() {
            return Err(cancelled(&p.repo));
        }

        // Parse.
        let parse_span = tracing::info_span!(
            "repo.parse",
            repo = %p.repo,
            index.files = tracing::field::Empty,
            index.parsed = tracing::field::Empty,
            index.carried = tracing::field::Empty,
            index.symbols = tracing::field::Empty,
            index.bytes_parsed = tracing::field::Empty,
            index.incremental = previous.is_some(),
        );
        let blobs = GitBlobs(
            self.scratch
                .blob_reader(&dir)
                .map_err(|e| git_error(&p.repo, e))?,
        );
        let previous_commit = previous.as_ref().map(|(_, c)| c.clone());
        let out_dir = work.0.join("out");
        let output = {
            let span = parse_span.clone();
            let cancel = cancel.clone();
            let out_dir = out_dir.clone();
            let entries: Vec<index::Entry> = entries
                .into_iter()
                .map(|e| index::Entry {
                    path: e.path,
                    mode: e.mode,
                    blob: e.blob,
                    size: e.size,
                })
                .collect();
            tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                let mut blobs = blobs;
                index::index(
                    entries,
                    &mut blobs,
                    previous.as_ref().map(|(p, _)| p),
                    &out_dir,
                    &index::Options::default(),
                    &|| cancel.is_cancelled(),
                )
            })
            .await
            .map_err(|e| {
                HandlerError::Retryable(format!("repository {}: indexing panicked: {e}", p.repo))
            })?
        };
        // The scratch repository is no longer needed: let another attempt have it.
        drop(dir);
        let output = match output {
            Ok(o) => o,
            Err(IndexError::Cancelled) => return Err(cancelled(&p.repo)),
            Err(e) => return Err(index_error(&p.repo, e)),
        };
        parse_span.record("index.files", output.files as i64);
        parse_span.record("index.parsed", output.parsed as i64);
        parse_span.record("index.carried", output.carried as i64);
        parse_span.record("index.symbols", output.symbols as i64);
        parse_span.record("index.bytes_parsed", output.bytes_parsed as i64);
        if cancel.is_cancelled() {
            return Err(cancelled(&p.repo));
        }

        // Upload.
        let upload_span = tracing::info_span!(
            "repo.upload",
            repo = %p.repo,
            artifacts.count = 3i64,
            artifacts.bytes = tracing::field::Empty,
        );
        let (files_row, symbols_row, manifest_row) = {
            use tracing::Instrument;
            let ctx = &ctx;
            let repo = &p.repo;
            let open = |path: PathBuf| async move {
                tokio::fs::File::open(&path).await.map_err(|e| {
                    HandlerError::Retryable(format!(
                        "repository {repo}: index output {}: {e}",
                        path.display()
                    ))
                })
            };
            async {
                let files = ctx
                    .write_artifact(index::FILES_NAME, open(output.files_path.clone()).await?)
                    .await?;
                let symbols = ctx
                    .write_artifact(index::SYMBOLS_NAME, open(output.symbols_path.clone()).await?)
                    .await?;
                let languages: serde_json::Map<String, serde_json::Value> = output
                    .counts
                    .iter()
                    .map(|(name, c)| {
                        (
                            name.clone(),
                            json!({"files": c.files, "parsed": c.parsed, "symbols": c.symbols, "bytes": c.bytes}),
                        )
                    })
                    .collect();
                let manifest = json!({
                    "schema": 1,
                    "repository": repo,
                    "provider": kind.as_str(),
                    "host": host,
                    "commit": fetched.commit,
                    "ref": fetched.refname,
                    "previous_commit": previous_commit,
                    "languages": languages,
                    "totals": {
                        "files": output.files,
                        "symbols": output.symbols,
                        "parsed": output.parsed,
                        "carried": output.carried,
                        "bytes_parsed": output.bytes_parsed,
                    },
                    "artifacts": {"files": files.key, "symbols": symbols.key},
                    "indexer": {"name": "lettuce-worker", "version": env!("CARGO_PKG_VERSION")},
                });
                let bytes = serde_json::to_vec_pretty(&manifest)
                    .map_err(|e| HandlerError::Permanent(format!("manifest: {e}")))?;
                let manifest = ctx.write_artifact(MANIFEST_NAME, &bytes[..]).await?;
                Ok::<_, HandlerError>((files, symbols, manifest))
            }
            .instrument(upload_span.clone())
            .await?
        };
        upload_span.record(
            "artifacts.bytes",
            files_row.size + symbols_row.size + manifest_row.size,
        );
        if cancel.is_cancelled() {
            return Err(cancelled(&p.repo));
        }
        ctx.on_complete_index(RepositoryIndexed {
            job_id: ctx.job.id,
            repository_id: row.id,
            commit: fetched.commit.clone(),
            git_ref: fetched.refname.clone(),
            manifest_key: manifest_row.key.clone(),
            file_count: output.files as i64,
            symbol_count: output.symbols as i64,
            default_branch: p
                .git_ref
                .is_none()
                .then(|| {
                    fetched
                        .refname
                        .strip_prefix("refs/heads/")
                        .map(str::to_string)
                })
                .flatten(),
        });
        tracing::info!(
            repo = %p.repo,
            commit = %fetched.commit,
            files = output.files,
            symbols = output.symbols,
            carried = output.carried,
            "repository indexed"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_refuse_unknown_fields_and_keys_encode_subgroups() {
        let ok: IndexPayload = serde_json::from_value(
            json!({"provider": "github", "repo": "acme/app", "installation_id": 7, "ref": "refs/heads/dev"}),
        )
        .unwrap();
        assert_eq!(ok.git_ref.as_deref(), Some("refs/heads/dev"));
        assert!(
            serde_json::from_value::<IndexPayload>(
                json!({"provider": "github", "repo": "acme/app", "installation_id": 7, "branch": "x"})
            )
            .is_err()
        );
        let key = repo_key(ProviderKind::Gitlab, "gitlab.acme.test", "grp/sub/proj").unwrap();
        assert_eq!(key.to_string(), "gitlab/gitlab.acme.test/grp%2Fsub/proj");
    }
}
