//! Running one `git` child: a cleared environment, its own process group, the output read
//! while racing the cancellation token and the deadline, and the whole group killed when
//! either wins (or when the future is dropped).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::GitAuth;
use super::error::{Class, GitError, classify, tidy};

/// The most of git's stderr kept in memory (its tail); the error keeps far less.
const STDERR_KEEP: usize = 64 * 1024;

/// Variables passed through from the worker's own environment when set: how to reach the
/// network (proxies) and which CAs to trust (GHES / GitLab behind a private CA).
const PASS_THROUGH: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
];

/// The environment of every git child, and the strings that must never leave in an error.
#[derive(Clone)]
pub(crate) struct GitEnv {
    vars: Vec<(String, String)>,
    /// The token, `user:token` and its base64: scrubbed from anything shown.
    secrets: Vec<String>,
    home: PathBuf,
}

impl GitEnv {
    /// `home` is an empty directory of the scratch root: no user config, no credential helper.
    pub(crate) fn new(home: &Path, auth: &GitAuth) -> GitEnv {
        let home_s = home.display().to_string();
        let mut vars: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            ("HOME".into(), home_s.clone()),
            ("XDG_CONFIG_HOME".into(), home_s),
            ("LANG".into(), "C".into()),
            ("LC_ALL".into(), "C".into()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_ASKPASS".into(), String::new()),
            ("GIT_ALLOW_PROTOCOL".into(), "http:https".into()),
            ("GIT_NO_LAZY_FETCH".into(), "1".into()),
        ];
        for name in PASS_THROUGH {
            if let Ok(v) = std::env::var(name) {
                vars.push(((*name).into(), v));
            }
        }
        // Configuration through GIT_CONFIG_COUNT/KEY_n/VALUE_n: it reaches git like `-c`, but
        // through the environment, so no value is visible in /proc/<pid>/cmdline.
        let mut config: Vec<(&str, String)> = vec![
            // An empty value resets the helper list: nothing may answer for credentials.
            ("credential.helper", String::new()),
            // Auto-gc and maintenance run in the foreground, inside our process group: they
            // are killed with it and never touch the repository after the lock is released.
            ("gc.autoDetach", "false".into()),
            ("maintenance.autoDetach", "false".into()),
            ("init.defaultBranch", "lettuce".into()),
            ("advice.detachedHead", "false".into()),
        ];
        let mut secrets = Vec::new();
        if let GitAuth::Token { username, token } = auth {
            let token = token.expose();
            let pair = format!("{username}:{token}");
            let b64 = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
            config.push(("http.extraHeader", format!("Authorization: Basic {b64}")));
            secrets.push(b64);
            secrets.push(pair);
            secrets.push(token.clone());
            // The percent-encoded token, should it ever show up in a URL-shaped message.
            let encoded: String =
                percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            secrets.push(encoded);
        }
        vars.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
        for (i, (k, v)) in config.into_iter().enumerate() {
            vars.push((format!("GIT_CONFIG_KEY_{i}"), k.to_string()));
            vars.push((format!("GIT_CONFIG_VALUE_{i}"), v));
        }
        GitEnv {
            vars,
            secrets,
            home: home.to_path_buf(),
        }
    }

    pub(crate) fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Applies the environment to a `std` command (the blob reader).
    pub(crate) fn apply_std(&self, cmd: &mut std::process::Command) {
        cmd.env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home);
    }

    fn apply_tokio(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home);
    }
}

/// What a finished git child left.
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// When a run must stop.
#[derive(Clone, Copy)]
pub(crate) struct Limits<'a> {
    pub cancel: Option<&'a CancellationToken>,
    /// The deadline and the whole time limit it came from (for the error).
    pub deadline: Option<(Instant, std::time::Duration)>,
}

impl Limits<'_> {
    pub(crate) const NONE: Limits<'static> = Limits {
        cancel: None,
        deadline: None,
    };
}

/// Kills the process group on drop unless disarmed (after the leader was reaped, when the
/// group id may no longer be ours).
struct GroupKill {
    pgid: i32,
    armed: bool,
}

impl GroupKill {
    fn kill(&self) {
        if self.armed && self.pgid > 0 {
            // SAFETY: kill(2) takes plain integers; -pgid names the group we created with
            // process_group(0), whose leader is not reaped yet (so the id is still ours).
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A failed spawn: `git` not found or not executable is [`GitError::GitMissing`].
pub(crate) fn spawn_error(e: std::io::Error) -> GitError {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            GitError::GitMissing {
                detail: format!("cannot start `git`: {e}"),
            }
        }
        _ => GitError::Failed {
            command: "spawn",
            status: "not started".into(),
            detail: e.to_string(),
        },
    }
}

async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf).await;
    }
    buf
}

async fn read_tail<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut keep = Vec::new();
    if let Some(mut r) = r {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = r.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            keep.extend_from_slice(&chunk[..n]);
            if keep.len() > 2 * STDERR_KEEP {
                keep.drain(..keep.len() - STDERR_KEEP);
            }
        }
    }
    keep
}

/// Runs `git <args>` to completion (any exit status), or kills its whole process group and
/// returns `Cancelled` / `Timeout` as soon as the token fires or the deadline passes.
pub(crate) async fn run(
    env: &GitEnv,
    args: &[OsString],
    limits: Limits<'_>,
) -> Result<Output, GitError> {
    let mut cmd = tokio::process::Command::new("git");
    env.apply_tokio(&mut cmd);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(c) = limits.cancel
        && c.is_cancelled()
    {
        return Err(GitError::Cancelled);
    }
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let mut group = GroupKill {
        pgid: child.id().map(|p| p as i32).unwrap_or(0),
        armed: true,
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stop = {
        let work = async {
            let (o, e, s) = tokio::join!(read_all(stdout), read_tail(stderr), child.wait());
            (o, e, s)
        };
        let cancelled = async {
            match limits.cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let timed_out = async {
            match limits.deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            (stdout, stderr, status) = work => Ok((stdout, stderr, status)),
            _ = cancelled => Err(GitError::Cancelled),
            _ = timed_out => Err(GitError::Timeout(limits.deadline.map(|d| d.1).unwrap_or_default())),
        }
    };
    match stop {
        Ok((stdout, stderr, status)) => {
            group.armed = false;
            let status = status.map_err(|e| GitError::Failed {
                command: "wait",
                status: "unknown".into(),
                detail: e.to_string(),
            })?;
            Ok(Output {
                status,
                stdout,
                stderr,
            })
        }
        Err(e) => {
            group.kill();
            let _ = child.wait().await;
            group.armed = false;
            Err(e)
        }
    }
}

/// Turns a failed run into the error its stderr describes. `dir` is the scratch repository
/// (named by `DiskFull` and `Corrupt`); `refname` is what a `RefNotFound` names.
pub(crate) fn failure(
    command: &'static str,
    out: &Output,
    env: &GitEnv,
    dir: &Path,
    refname: Option<&str>,
) -> GitError {
    let detail = tidy(&out.stderr, env.secrets());
    match classify(&detail) {
        Class::DiskFull => GitError::DiskFull {
            dir: dir.to_path_buf(),
            detail,
        },
        Class::RefNotFound => GitError::RefNotFound {
            refname: refname.unwrap_or("").to_string(),
            detail,
        },
        Class::AuthFailed => GitError::AuthFailed { detail },
        Class::RepoNotFound => GitError::RepoNotFound { detail },
        Class::Unreachable => GitError::Unreachable { detail },
        Class::Corrupt => GitError::Corrupt {
            dir: dir.to_path_buf(),
            detail,
        },
        Class::Other => GitError::Failed {
            command,
            status: out.status.to_string(),
            detail,
        },
    }
}
