//! The git fetch layer: bring one commit of a customer's repository into the scratch cache
//! and read its files.
//!
//! # Layout and exclusivity
//!
//! [`Scratch`] sits on `$CODEWAZE_DATA_DIR` (the caller passes the path). Each repository is
//! a bare repository at `<root>/repos/<provider>/<host>/<owner>/<name>.git`; every part is
//! validated ([`RepoKey::new`]: not empty, no `/`, not starting with `.` — so no `..` — no
//! NUL or control characters), so a part can never climb out of the root. `<root>/git-home`
//! is an empty directory used as git's `HOME`.
//!
//! Two attempts never use one repository directory at the same time: [`Scratch::open`]
//! takes an advisory `flock(LOCK_EX)` on `<name>.git.lock` (next to the directory; std's
//! `File::try_lock`, which is `flock(2)` on Linux) and the [`RepoDir`] it returns holds it
//! until dropped — keep it for the whole attempt (fetch, `ls_tree`, blob reads). Waiting is
//! a non-blocking try every 50 ms that also watches the cancellation token, so a cancelled
//! job never sits in a blocked thread. Different repositories lock different files and run
//! in parallel. The lock is per open file description, so it also serialises two worker
//! processes sharing a data directory, and the kernel drops it if the worker dies.
//!
//! How a fetch works (the scratch repository is a cache, re-created when broken; a shallow
//! fetch of one ref) is told in `fetch.rs`, next to [`Scratch::fetch`].
//!
//! # Credentials
//!
//! The token reaches git only through the child's environment: `GIT_CONFIG_COUNT` /
//! `GIT_CONFIG_KEY_n` / `GIT_CONFIG_VALUE_n` set `http.extraHeader` to
//! `Authorization: Basic base64(<username>:<token>)` — never argv (visible to every user in
//! `/proc/<pid>/cmdline`), never the URL (git stores and prints URLs). The username is a
//! field of [`GitAuth`]: `x-access-token` for GitHub App tokens, `oauth2` for GitLab. The
//! environment is cleared first and then holds only what git needs: `PATH`, `HOME` (the
//! empty `git-home`), `LANG=C`/`LC_ALL=C` (the stderr classifier reads English),
//! `GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`, `credential.helper=` (empty:
//! no helper), `GIT_TERMINAL_PROMPT=0`, an empty `GIT_ASKPASS`, `GIT_ALLOW_PROTOCOL=http:https`,
//! plus the proxy and CA variables when the worker has them. git's stderr is scrubbed of the
//! token, `user:token`, its base64 and any `Authorization:` line before it is put in an
//! error, and capped to its last 2 KiB. `GitAuth`'s `Debug` shows the username only.
//!
//! # Cancellation and time limits
//!
//! Every child runs in its own process group (`process_group(0)`, `kill_on_drop`); when the
//! cancellation token fires or the deadline passes, the whole group (git and its
//! `git-remote-http` helper) gets SIGKILL, the leader is reaped, and the call returns
//! [`GitError::Cancelled`] / [`GitError::Timeout`] at once. Dropping the future kills the
//! group too. Auto-gc is kept in the foreground (`gc.autoDetach=false`) so it dies with the
//! group instead of outliving the lock.
//!
//! # Why the git CLI and not gix
//!
//! git is already in the image (the `git` check of `check-config` probes it); its smart-HTTP
//! client, auth handling (extra headers, proxies, private CAs via curl), shallow fetch and
//! partial clone are proven against GitHub, GHES and GitLab; a child process can be killed
//! outright on cancellation, where an in-process fetch can only be asked to stop at its next
//! await point; and gix's fetch and authentication surface is still less mature. The costs
//! (a process per operation, parsing stderr to classify errors) are small next to a network
//! fetch.

// Parts of this API are used only by the integration tests and benchmarks in `xtests/`
// (which build with the `testing` feature).
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

mod command;
mod error;
mod fetch;
mod tree;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Secret;

pub use error::GitError;
pub use tree::{BlobReader, TreeEntry};

use command::{GitEnv, Limits, failure, run};

/// The ref that holds the last fetched commit of a scratch repository.
pub const LETTUCE_REF: &str = "refs/lettuce/head";

/// How often a waiting [`Scratch::open`] retries the lock.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Credentials for the remote.
#[derive(Clone, Debug)]
pub enum GitAuth {
    /// A public repository: no `Authorization` header.
    Anonymous,
    /// HTTP Basic `username:token`. `Debug` shows the username, never the token.
    Token {
        username: String,
        token: Secret<String>,
    },
}

impl GitAuth {
    /// A GitHub App installation token (`x-access-token:<token>`).
    pub fn github(token: &Secret<String>) -> GitAuth {
        GitAuth::Token {
            username: "x-access-token".into(),
            token: token.clone(),
        }
    }

    /// A GitLab token (`oauth2:<token>`).
    pub fn gitlab(token: &Secret<String>) -> GitAuth {
        GitAuth::Token {
            username: "oauth2".into(),
            token: token.clone(),
        }
    }
}

/// Which repository: the four parts of its scratch path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoKey {
    provider: String,
    host: String,
    owner: String,
    name: String,
}

fn check_part(what: &'static str, part: &str) -> Result<(), GitError> {
    let reason = if part.is_empty() {
        Some("is empty")
    } else if part.contains('/') {
        Some("contains '/'")
    } else if part.starts_with('.') {
        Some("starts with '.'")
    } else if part.contains("..") {
        Some("contains '..'")
    } else if part.chars().any(|c| c.is_control()) {
        Some("contains a control character")
    } else if part.len() > 255 {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(r) => Err(GitError::Invalid {
            what,
            reason: format!("{part:?} {r}"),
        }),
        None => Ok(()),
    }
}

impl RepoKey {
    /// `provider` (`github`, `gitlab`), `host` (`github.com`, `gitlab.example:8443`), `owner`
    /// and `name` as the provider spells them. Each must be one non-empty path component
    /// that does not start with `.` and has no `/`, `..` or control character; a GitLab
    /// subgroup path must be encoded by the caller (e.g. `group%2Fsub`), not passed with `/`.
    pub fn new(provider: &str, host: &str, owner: &str, name: &str) -> Result<RepoKey, GitError> {
        check_part("provider", provider)?;
        check_part("host", host)?;
        check_part("owner", owner)?;
        check_part("name", name)?;
        Ok(RepoKey {
            provider: provider.into(),
            host: host.into(),
            owner: owner.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.provider, self.host, self.owner, self.name
        )
    }
}

/// A scratch repository directory held exclusively: the lock is released when this drops.
#[derive(Debug)]
pub struct RepoDir {
    key: RepoKey,
    git_dir: PathBuf,
    lock_path: PathBuf,
    _lock: std::fs::File,
}

impl RepoDir {
    /// The bare repository (`…/<name>.git`).
    pub fn path(&self) -> &Path {
        &self.git_dir
    }
    /// The lock file (`…/<name>.git.lock`).
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }
    pub fn key(&self) -> &RepoKey {
        &self.key
    }
}

/// What [`Scratch::fetch`] brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The commit id (hex).
    pub commit: String,
    /// The full ref name it came from (`refs/heads/main`, `refs/tags/v1`, …).
    pub refname: String,
    /// The scratch repository had no fetched commit before (created, re-created after
    /// corruption, or never fetched successfully).
    pub fresh_clone: bool,
}

/// The scratch cache of repositories.
#[derive(Clone, Debug)]
pub struct Scratch {
    root: PathBuf,
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn git_dir_arg(dir: &Path) -> OsString {
    let mut a = OsString::from("--git-dir=");
    a.push(dir);
    a
}

impl Scratch {
    /// A scratch cache rooted at `root` (`$CODEWAZE_DATA_DIR`). Nothing is created yet.
    pub fn new(root: impl Into<PathBuf>) -> Scratch {
        Scratch { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn home(&self) -> PathBuf {
        self.root.join("git-home")
    }

    fn env(&self, auth: &GitAuth) -> Result<GitEnv, GitError> {
        let home = self.home();
        std::fs::create_dir_all(&home).map_err(|e| GitError::io(&home, e))?;
        Ok(GitEnv::new(&home, auth))
    }

    /// The bare repository path of `key` (it may not exist).
    pub fn repo_path(&self, key: &RepoKey) -> PathBuf {
        self.root
            .join("repos")
            .join(&key.provider)
            .join(&key.host)
            .join(&key.owner)
            .join(format!("{}.git", key.name))
    }

    /// Takes the repository's lock, waiting while another attempt holds it (until `cancel`
    /// fires: [`GitError::Cancelled`]). The returned [`RepoDir`] holds the lock until dropped.
    pub async fn open(
        &self,
        key: &RepoKey,
        cancel: &CancellationToken,
    ) -> Result<RepoDir, GitError> {
        let git_dir = self.repo_path(key);
        let parent = git_dir.parent().expect("a repo path has a parent");
        std::fs::create_dir_all(parent).map_err(|e| GitError::io(parent, e))?;
        let lock_path = parent.join(format!("{}.git.lock", key.name));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| GitError::io(&lock_path, e))?;
        loop {
            if cancel.is_cancelled() {
                return Err(GitError::Cancelled);
            }
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(GitError::io(&lock_path, e)),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(GitError::Cancelled),
                _ = tokio::time::sleep(LOCK_POLL) => {}
            }
        }
        Ok(RepoDir {
            key: key.clone(),
            git_dir,
            lock_path,
            _lock: file,
        })
    }

    /// Every file of `commit`'s tree: `git ls-tree -r -z --long --full-tree`, in git's order.
    pub async fn ls_tree(&self, repo: &RepoDir, commit: &str) -> Result<Vec<TreeEntry>, GitError> {
        if !tree::valid_oid(commit) {
            return Err(GitError::Invalid {
                what: "commit id",
                reason: format!("{commit:?} is not a hex object id"),
            });
        }
        let env = self.env(&GitAuth::Anonymous)?;
        let dir = repo.path();
        let mut args = vec![git_dir_arg(dir)];
        args.extend(os(&[
            "ls-tree",
            "-r",
            "-z",
            "--long",
            "--full-tree",
            commit,
        ]));
        let out = run(&env, &args, Limits::NONE).await?;
        if !out.status.success() {
            return Err(match failure("ls-tree", &out, &env, dir, None) {
                e @ GitError::DiskFull { .. } => e,
                other => GitError::Corrupt {
                    dir: dir.to_path_buf(),
                    detail: other.to_string(),
                },
            });
        }
        tree::parse_ls_tree(&out.stdout).map_err(|detail| GitError::Failed {
            command: "ls-tree",
            status: out.status.to_string(),
            detail,
        })
    }

    /// A blob reader over `repo` (`git cat-file --batch`). Keep `repo` alive while reading.
    pub fn blob_reader(&self, repo: &RepoDir) -> Result<BlobReader, GitError> {
        let env = self.env(&GitAuth::Anonymous)?;
        let mut cmd = std::process::Command::new("git");
        env.apply_std(&mut cmd);
        cmd.arg(git_dir_arg(repo.path()))
            .args(["cat-file", "--batch"]);
        BlobReader::spawn(cmd)
    }
}


/// `git --version` (e.g. `git version 2.47.3`).
pub async fn version() -> Result<String, GitError> {
    let env = GitEnv::new(Path::new("/"), &GitAuth::Anonymous);
    let deadline = Duration::from_secs(10);
    let out = run(
        &env,
        &os(&["--version"]),
        Limits {
            cancel: None,
            deadline: Some((tokio::time::Instant::now() + deadline, deadline)),
        },
    )
    .await?;
    if !out.status.success() {
        return Err(GitError::GitMissing {
            detail: format!("`git --version` exited with {}", out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests;
