//! [`Scratch::fetch`]: one ref of a remote, shallow, into a scratch repository that is
//! re-created when broken; and the checks of the remote URL and the ref name.
//!
//! # Scratch is a cache
//!
//! A missing repository directory is created (`git init --bare`); one that is structurally
//! broken (no `HEAD`/`objects`/`refs`), or that git calls corrupt or "not a git repository",
//! is deleted and fetched again, once per [`Scratch::fetch`]. Nothing in scratch is ever the
//! only copy of anything.
//!
//! # What is fetched
//!
//! `git fetch --depth=1 --no-tags <remote> +<ref>:refs/lettuce/head` into the bare repository:
//! a shallow fetch of that one ref, with all of its commit's blobs. A partial clone
//! (`--filter=blob:none`) was considered and rejected: the indexer reads every blob of the
//! commit, so a blobless clone would only move the same bytes into many lazy fetches later
//! (one round trip per missing object batch, each needing the credentials again, and each a
//! new failure point mid-index). The next fetch of the same repository reuses the directory:
//! git negotiates with the commit it already has and only new objects come. The fetched
//! commit is `refs/lettuce/head^{commit}` (an annotated tag is peeled). With no ref given,
//! the remote's default branch comes from `git ls-remote --symref <remote> HEAD`. One
//! repository keeps one `refs/lettuce/head`: fetching another ref moves it (the objects stay
//! and still help negotiation).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::command::{GitEnv, Limits, Output, failure, run};
use super::{Fetched, GitAuth, GitError, LETTUCE_REF, RepoDir, Scratch, git_dir_arg, os};

/// A remote must be `http://` or `https://` with no user info (credentials go in headers)
/// and no whitespace or control characters.
pub(super) fn check_remote(remote: &str) -> Result<(), GitError> {
    let bad = |reason: &str| GitError::Invalid {
        what: "remote URL",
        reason: reason.to_string(),
    };
    let rest = remote
        .strip_prefix("https://")
        .or_else(|| remote.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if remote.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace or a control character"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    if authority.contains('@') {
        // Not echoed: the user info may be a credential.
        return Err(bad(
            "carries user info; credentials go in GitAuth, never the URL",
        ));
    }
    Ok(())
}

/// A ref name git could fetch: a short name (`main`, `v1`) or a full one (`refs/heads/main`).
pub(super) fn check_refname(refname: &str) -> Result<(), GitError> {
    let bad = |reason: &str| GitError::Invalid {
        what: "ref name",
        reason: format!("{refname:?} {reason}"),
    };
    if refname.is_empty() || refname.len() > 1024 {
        return Err(bad("is empty or too long"));
    }
    if refname.starts_with('-') || refname.starts_with('/') || refname.ends_with('/') {
        return Err(bad("starts with '-' or '/', or ends with '/'"));
    }
    if refname.ends_with('.') || refname.ends_with(".lock") {
        return Err(bad("ends with '.' or '.lock'"));
    }
    if refname.contains("..") || refname.contains("//") || refname.contains("@{") {
        return Err(bad("contains '..', '//' or '@{'"));
    }
    if refname
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err(bad(
            "contains a space, a control character or one of ~^:?*[\\",
        ));
    }
    if refname.split('/').any(|p| p.starts_with('.')) {
        return Err(bad("has a component starting with '.'"));
    }
    Ok(())
}

/// The full ref name FETCH_HEAD says was fetched: `branch 'x' of …` → `refs/heads/x`,
/// `tag 'x' of …` → `refs/tags/x`, `'refs/…' of …` → itself.
pub(super) fn fetched_refname(fetch_head: &str) -> Option<String> {
    let line = fetch_head.lines().next()?;
    let desc = line.splitn(3, '\t').nth(2)?;
    let (kind, rest) = match desc.split_once('\'') {
        Some((k, r)) => (k.trim(), r),
        None => return None,
    };
    let name = rest.rsplit_once("' of ").map(|(n, _)| n)?;
    Some(match kind {
        "branch" => format!("refs/heads/{name}"),
        "tag" => format!("refs/tags/{name}"),
        _ => name.to_string(),
    })
}

impl Scratch {
    /// Fetches `refname` (the remote's default branch when `None`) of `remote` into `repo`
    /// and returns the commit. `timeout` bounds the whole call (ls-remote, fetch, and a
    /// re-clone after corruption); on `cancel` or `timeout` git is killed and the call
    /// returns `Cancelled` / `Timeout` at once.
    pub async fn fetch(
        &self,
        repo: &RepoDir,
        remote: &str,
        auth: &GitAuth,
        refname: Option<&str>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<Fetched, GitError> {
        check_remote(remote)?;
        if let Some(r) = refname {
            check_refname(r)?;
        }
        let env = self.env(auth)?;
        let limits = Limits {
            cancel: Some(cancel),
            deadline: Some((tokio::time::Instant::now() + timeout, timeout)),
        };
        let dir = repo.path();
        let wanted = match refname {
            Some(r) => r.to_string(),
            None => self.default_branch(&env, dir, remote, limits).await?,
        };
        let mut recreated = false;
        loop {
            let had_commit = match self.prepare(&env, dir, limits).await {
                Ok(had) => had,
                Err(GitError::Corrupt { .. }) if !recreated => {
                    recreated = true;
                    remove_repo(dir)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.fetch_into(&env, dir, remote, &wanted, limits).await {
                Ok((commit, refname)) => {
                    return Ok(Fetched {
                        commit,
                        refname,
                        fresh_clone: !had_commit,
                    });
                }
                Err(GitError::Corrupt { .. }) if !recreated => {
                    recreated = true;
                    remove_repo(dir)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `git ls-remote --symref <remote> HEAD` → `refs/heads/<default>`.
    async fn default_branch(
        &self,
        env: &GitEnv,
        dir: &Path,
        remote: &str,
        limits: Limits<'_>,
    ) -> Result<String, GitError> {
        let mut args = os(&["ls-remote", "--symref"]);
        args.push(remote.into());
        args.push("HEAD".into());
        let out = run(env, &args, limits).await?;
        if !out.status.success() {
            return Err(failure("ls-remote", &out, env, dir, Some("HEAD")));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("ref: ")
                && let Some((target, "HEAD")) = rest.split_once('\t')
            {
                return Ok(target.to_string());
            }
        }
        if text.lines().any(|l| l.ends_with("\tHEAD")) {
            // A server that does not advertise the symref: fetch HEAD itself.
            return Ok("HEAD".to_string());
        }
        Err(GitError::RefNotFound {
            refname: "HEAD".into(),
            detail: "the remote repository is empty (no default branch)".into(),
        })
    }

    /// Makes sure `dir` is a usable bare repository; returns whether it holds a fetched
    /// commit. A broken one is `Corrupt` (the caller deletes it and calls again).
    async fn prepare(
        &self,
        env: &GitEnv,
        dir: &Path,
        limits: Limits<'_>,
    ) -> Result<bool, GitError> {
        if !dir.exists() {
            self.init(env, dir, limits).await?;
            return Ok(false);
        }
        let corrupt = |detail: &str| GitError::Corrupt {
            dir: dir.to_path_buf(),
            detail: detail.to_string(),
        };
        if !(dir.join("HEAD").is_file()
            && dir.join("objects").is_dir()
            && dir.join("refs").is_dir())
        {
            return Err(corrupt("HEAD, objects or refs is missing"));
        }
        let mut args = vec![git_dir_arg(dir)];
        args.extend(os(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{LETTUCE_REF}^{{commit}}"),
        ]));
        let out = run(env, &args, limits).await?;
        if out.status.success() {
            return Ok(true);
        }
        if out.stderr.iter().all(u8::is_ascii_whitespace) {
            // --quiet and no output: the ref is simply not there yet.
            return Ok(false);
        }
        match failure("rev-parse", &out, env, dir, None) {
            GitError::DiskFull { dir, detail } => Err(GitError::DiskFull { dir, detail }),
            // Anything rev-parse complains about in our own cache is damage.
            other => Err(corrupt(&other.to_string())),
        }
    }

    async fn init(&self, env: &GitEnv, dir: &Path, limits: Limits<'_>) -> Result<(), GitError> {
        // No templates: no sample hooks, nothing to run, less to write.
        let mut args = os(&["init", "--bare", "--quiet", "--template="]);
        args.push(dir.into());
        let out = run(env, &args, limits).await?;
        if !out.status.success() {
            let e = failure("init", &out, env, dir, None);
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
        Ok(())
    }

    async fn fetch_into(
        &self,
        env: &GitEnv,
        dir: &Path,
        remote: &str,
        refname: &str,
        limits: Limits<'_>,
    ) -> Result<(String, String), GitError> {
        let mut args = vec![git_dir_arg(dir)];
        args.extend(os(&[
            "fetch",
            "--quiet",
            "--depth=1",
            "--no-tags",
            "--no-recurse-submodules",
            "--end-of-options",
        ]));
        args.push(remote.into());
        args.push(format!("+{refname}:{LETTUCE_REF}").into());
        let out = run(env, &args, limits).await?;
        if !out.status.success() {
            return Err(failure("fetch", &out, env, dir, Some(refname)));
        }
        let mut args = vec![git_dir_arg(dir)];
        args.extend(os(&[
            "rev-parse",
            "--verify",
            &format!("{LETTUCE_REF}^{{commit}}"),
        ]));
        let out: Output = run(env, &args, limits).await?;
        if !out.status.success() {
            return Err(match failure("rev-parse", &out, env, dir, None) {
                e @ GitError::DiskFull { .. } => e,
                other => GitError::Corrupt {
                    dir: dir.to_path_buf(),
                    detail: other.to_string(),
                },
            });
        }
        let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let full = if refname.starts_with("refs/") {
            refname.to_string()
        } else {
            std::fs::read_to_string(dir.join("FETCH_HEAD"))
                .ok()
                .and_then(|t| fetched_refname(&t))
                .unwrap_or_else(|| refname.to_string())
        };
        Ok((commit, full))
    }
}

fn remove_repo(dir: &Path) -> Result<(), GitError> {
    tracing::warn!(dir = %dir.display(), "scratch repository is corrupt; re-creating it");
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GitError::io(dir, e)),
    }
}
