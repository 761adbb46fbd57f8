//! [`GitError`], the classifier that turns git's stderr into one, and the scrubber that keeps
//! credentials out of every message.

use std::path::PathBuf;
use std::time::Duration;

/// How much of git's stderr an error keeps (the tail, where `fatal:` lines are).
pub const STDERR_CAP: usize = 2048;

/// What went wrong talking to git. [`GitError::is_retryable`] says whether another attempt
/// of the job can succeed without anyone changing anything.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started (not installed, not on PATH, not executable).
    #[error("git cannot run: {detail}")]
    GitMissing { detail: String },
    /// The remote did not answer: connection refused, unknown host, network timeout, HTTP 5xx,
    /// a connection cut mid-transfer (early EOF).
    #[error("the git remote is unreachable: {detail}")]
    Unreachable { detail: String },
    /// The remote refused the credentials (HTTP 401/403).
    #[error("the git remote refused the credentials: {detail}")]
    AuthFailed { detail: String },
    /// The remote has no such repository (HTTP 404), or does not show it to these credentials.
    #[error("the git remote has no such repository: {detail}")]
    RepoNotFound { detail: String },
    /// The repository exists but has no such ref (or is empty, for the default branch).
    #[error("the git remote has no ref {refname:?}: {detail}")]
    RefNotFound { refname: String, detail: String },
    /// The scratch filesystem is full; `dir` is the scratch directory git was writing into.
    #[error("no space left on the scratch filesystem under {}: {detail}", dir.display())]
    DiskFull { dir: PathBuf, detail: String },
    /// The scratch repository is damaged and re-creating it once did not help.
    #[error("the scratch repository {} is corrupt: {detail}", dir.display())]
    Corrupt { dir: PathBuf, detail: String },
    /// The operation ran past its time limit; git was killed.
    #[error("git did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// The job was cancelled; git was killed.
    #[error("cancelled; git was killed")]
    Cancelled,
    /// An argument was refused before running git (a path part, the remote URL, a ref name,
    /// an object id).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A local filesystem operation on the scratch directory failed.
    #[error("scratch {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// git failed in a way not recognised above.
    #[error("git {command} failed ({status}): {detail}")]
    Failed {
        command: &'static str,
        status: String,
        detail: String,
    },
}

impl GitError {
    /// Whether a later attempt can succeed unchanged. Permanent: credentials, a missing
    /// repository or ref, an invalid argument. Everything else is retryable, including
    /// [`GitError::Failed`] (an unrecognised git failure is more often the environment than
    /// the request) and [`GitError::Corrupt`] (the next attempt re-creates the cache again).
    /// `GitMissing` is retryable: it is the host's problem, not the job's, and a fixed image
    /// picks the job up again. `Cancelled` is reported as retryable; the runtime decides
    /// what a cancelled job becomes.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            GitError::AuthFailed { .. }
                | GitError::RepoNotFound { .. }
                | GitError::RefNotFound { .. }
                | GitError::Invalid { .. }
        )
    }

    /// A short stable name of the variant, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            GitError::GitMissing { .. } => "git_missing",
            GitError::Unreachable { .. } => "unreachable",
            GitError::AuthFailed { .. } => "auth_failed",
            GitError::RepoNotFound { .. } => "repo_not_found",
            GitError::RefNotFound { .. } => "ref_not_found",
            GitError::DiskFull { .. } => "disk_full",
            GitError::Corrupt { .. } => "corrupt",
            GitError::Timeout(_) => "timeout",
            GitError::Cancelled => "cancelled",
            GitError::Invalid { .. } => "invalid",
            GitError::Io { .. } => "io",
            GitError::Failed { .. } => "failed",
        }
    }

    /// A local I/O error on `path`; ENOSPC and EDQUOT become [`GitError::DiskFull`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> GitError {
        let path = path.into();
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            return GitError::DiskFull {
                dir: path,
                detail: source.to_string(),
            };
        }
        GitError::Io { path, source }
    }
}

/// Which class git's (already scrubbed) stderr of a failed command falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    DiskFull,
    RefNotFound,
    AuthFailed,
    RepoNotFound,
    Unreachable,
    Corrupt,
    Other,
}

/// Classifies git's stderr. Order matters: a full disk often also shows as "index-pack
/// failed", a missing ref's message mentions "find", an auth failure can mention the URL.
pub(crate) fn classify(stderr: &str) -> Class {
    let s = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if any(&["no space left on device", "disk quota exceeded"]) {
        return Class::DiskFull;
    }
    if any(&["couldn't find remote ref", "no such remote ref"]) {
        return Class::RefNotFound;
    }
    if any(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "returned error: 401",
        "returned error: 403",
        "http 401",
        "http 403",
        "invalid username or password",
        "invalid credentials",
        "access denied",
    ]) {
        return Class::AuthFailed;
    }
    if any(&[
        "repository not found",
        "returned error: 404",
        "http 404",
        "could not be found",
        "does not appear to be a git repository",
    ]) || (s.contains("repository") && s.contains("not found"))
    {
        return Class::RepoNotFound;
    }
    if any(&[
        "could not resolve host",
        "couldn't resolve host",
        "could not resolve proxy",
        "failed to connect",
        "couldn't connect",
        "connection refused",
        "connection reset",
        "connection timed out",
        "operation timed out",
        "timed out",
        "network is unreachable",
        "no route to host",
        "empty reply from server",
        "recv failure",
        "send failure",
        "early eof",
        "the remote end hung up unexpectedly",
        "rpc failed",
        "returned error: 5",
        "http 5",
        "transfer closed",
        "ssl",
        "gnutls",
    ]) {
        return Class::Unreachable;
    }
    if any(&[
        "not a git repository",
        "corrupt",
        "bad object",
        "bad tree",
        "is empty",
        "unable to read",
        "cannot be accessed",
        "missing blob",
        "missing tree",
        "missing commit",
        "invalid object",
        "bad sha1 file",
        "did not send all necessary objects",
        "object directory",
        "broken link",
        "bad ref",
        "unable to parse object",
    ]) {
        return Class::Corrupt;
    }
    Class::Other
}

/// Removes every occurrence of each secret from `text`, replacing it with `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    // Belt and braces: an Authorization header echoed by a verbose curl or a proxy page.
    let mut cleaned = String::with_capacity(out.len());
    for line in out.split_inclusive('\n') {
        if line.to_ascii_lowercase().contains("authorization:") {
            cleaned.push_str("[an Authorization header line was removed]\n");
        } else {
            cleaned.push_str(line);
        }
    }
    cleaned
}

/// Scrubs, trims and caps stderr to its last [`STDERR_CAP`] bytes (on a char boundary).
pub(crate) fn tidy(stderr: &[u8], secrets: &[String]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = scrub(&text, secrets);
    let text = text.trim();
    if text.len() <= STDERR_CAP {
        return text.to_string();
    }
    let mut start = text.len() - STDERR_CAP;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_git_and_curl_print() {
        let cases: &[(&str, Class)] = &[
            (
                "fatal: unable to access 'http://127.0.0.1:1/x.git/': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server",
                Class::Unreachable,
            ),
            (
                "fatal: unable to access 'https://nope.invalid/x.git/': Could not resolve host: nope.invalid",
                Class::Unreachable,
            ),
            (
                "fatal: unable to access 'http://h/x.git/': The requested URL returned error: 503",
                Class::Unreachable,
            ),
            (
                "error: RPC failed; curl 18 transfer closed with outstanding read data remaining\nfatal: early EOF\nfatal: index-pack failed",
                Class::Unreachable,
            ),
            (
                "fatal: unable to access 'http://h/x.git/': The requested URL returned error: 403",
                Class::AuthFailed,
            ),
            (
                "fatal: could not read Username for 'http://h': terminal prompts disabled",
                Class::AuthFailed,
            ),
            (
                "remote: Invalid username or password.\nfatal: Authentication failed for 'https://github.com/a/b.git/'",
                Class::AuthFailed,
            ),
            (
                "remote: Repository not found.\nfatal: repository 'https://github.com/a/b.git/' not found",
                Class::RepoNotFound,
            ),
            (
                "fatal: unable to access 'http://h/x.git/': The requested URL returned error: 404",
                Class::RepoNotFound,
            ),
            (
                "remote: The project you were looking for could not be found or you don't have permission to view it.",
                Class::RepoNotFound,
            ),
            (
                "fatal: couldn't find remote ref refs/heads/nope",
                Class::RefNotFound,
            ),
            (
                "error: unable to write file ./objects/pack/tmp_pack_x: No space left on device\nfatal: index-pack failed",
                Class::DiskFull,
            ),
            (
                "fatal: write error: No space left on device",
                Class::DiskFull,
            ),
            (
                "fatal: not a git repository: '/data/repos/github/github.com/a/b.git'",
                Class::Corrupt,
            ),
            (
                "error: object file ./objects/ab/cdef is empty\nfatal: loose object abcdef (stored in ./objects/ab/cdef) is corrupt",
                Class::Corrupt,
            ),
            ("fatal: something new and strange", Class::Other),
        ];
        for (text, want) in cases {
            assert_eq!(classify(text), *want, "{text}");
        }
    }

    #[test]
    fn scrub_removes_secrets_and_header_lines() {
        let secrets = vec!["tok3n".to_string(), "eC1hY2Nlc3M=".to_string()];
        let text = "fatal: tok3n here\n> Authorization: Basic eC1hY2Nlc3M=\nend eC1hY2Nlc3M=\n";
        let out = scrub(text, &secrets);
        assert!(!out.contains("tok3n"));
        assert!(!out.contains("eC1hY2Nlc3M="));
        assert!(out.contains("fatal: *** here"));
        assert!(out.contains("end ***"));
    }

    #[test]
    fn tidy_caps_to_the_tail_on_a_char_boundary() {
        let mut long = "é".repeat(3000);
        long.push_str("fatal: the end");
        let out = tidy(long.as_bytes(), &[]);
        assert!(out.len() <= STDERR_CAP + "…".len());
        assert!(out.ends_with("fatal: the end"));
    }

    #[test]
    fn retryable_split() {
        let d = || "d".to_string();
        assert!(GitError::Unreachable { detail: d() }.is_retryable());
        assert!(
            GitError::DiskFull {
                dir: "/x".into(),
                detail: d()
            }
            .is_retryable()
        );
        assert!(GitError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!GitError::AuthFailed { detail: d() }.is_retryable());
        assert!(!GitError::RepoNotFound { detail: d() }.is_retryable());
        assert!(
            !GitError::RefNotFound {
                refname: d(),
                detail: d()
            }
            .is_retryable()
        );
    }

    #[test]
    fn enospc_io_error_is_disk_full() {
        let e = GitError::io(
            "/scratch/x",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(
            matches!(e, GitError::DiskFull { ref dir, .. } if dir == std::path::Path::new("/scratch/x"))
        );
    }
}
