//! check-config probes for the repository jobs: `gitlab.api` (live), `git` and `scratch`
//! (local, so they run `--offline` too).

use std::path::Path;

use super::{Check, Level, PROBE_TIMEOUT, check, hinted};
use crate::config::Config;
use crate::providers::ProviderError;
use crate::providers::gitlab::{GitlabClient, GitlabSettings};

/// Below this much free space the scratch check warns (a clone of a large repository needs it).
pub const LOW_SPACE_BYTES: u64 = 1 << 30;

/// Whether `gitlab.api` applies: both variables set.
pub fn gitlab_configured(config: &Config) -> bool {
    let set = |v: Option<&str>| v.is_some_and(|s| !s.trim().is_empty());
    set(config.github.gitlab_host.as_deref())
        && set(config
            .github
            .gitlab_token
            .as_ref()
            .map(|t| t.expose().as_str()))
}

/// `gitlab.api`: `GET /api/v4/user` with `GITLAB_TOKEN`.
pub async fn gitlab_api_check(config: &Config) -> Check {
    let probe = async {
        let mut settings = GitlabSettings::from_config(config)?;
        settings.connect_timeout = PROBE_TIMEOUT;
        settings.request_timeout = PROBE_TIMEOUT * 3;
        let client = GitlabClient::new(&settings, Default::default())?;
        let api = client.endpoints().api.clone();
        client.probe_user().await.map(|u| (u, api))
    };
    match probe.await {
        Ok((user, api)) => check(
            "gitlab.api",
            Level::Ok,
            format!(
                "{api} accepts GITLAB_TOKEN: user `{}` ({})",
                user.username, user.name
            ),
        ),
        Err(e @ ProviderError::BadCredentials { .. }) => hinted(
            "gitlab.api",
            Level::Fail,
            e.to_string(),
            "GITLAB_TOKEN is wrong, expired or revoked: create an access token with the `api` scope on GITLAB_HOST and set GITLAB_TOKEN to it",
        ),
        Err(e @ ProviderError::MissingPermission { .. }) => hinted(
            "gitlab.api",
            Level::Fail,
            e.to_string(),
            "give GITLAB_TOKEN the `api` scope (the hooks API needs it)",
        ),
        Err(e) => hinted(
            "gitlab.api",
            Level::Fail,
            e.to_string(),
            "check that this host reaches GITLAB_HOST over HTTPS (a full http(s):// URL is taken as given)",
        ),
    }
}

/// `git`: `git --version` answers (repository jobs clone with it). Missing is a warning: the
/// worker runs without it, only the repository jobs cannot.
pub async fn git_check() -> Check {
    let run = tokio::process::Command::new("git")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    const HINT: &str =
        "install git on this host (or in the image): the repository jobs clone with it";
    match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => check(
            "git",
            Level::Ok,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ),
        Ok(Ok(out)) => hinted(
            "git",
            Level::Warn,
            format!("`git --version` exited with {}", out.status),
            HINT,
        ),
        Ok(Err(e)) => hinted(
            "git",
            Level::Warn,
            format!("`git --version` could not run: {e}"),
            HINT,
        ),
        Err(_) => hinted(
            "git",
            Level::Warn,
            format!("`git --version` gave no answer within {PROBE_TIMEOUT:?}"),
            HINT,
        ),
    }
}

/// Free bytes for an unprivileged writer on the file system holding `dir` (`statvfs`).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is a
    // zeroed, properly aligned statvfs the call only writes into.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `scratch`: `CODEWAZE_DATA_DIR` exists (created if missing, as `run` does) and takes a probe
/// file; its free space shown, a warning under [`LOW_SPACE_BYTES`].
pub fn scratch_check(config: &Config) -> Check {
    let dir = &config.data_dir;
    let shown = dir.display();
    let writable = std::fs::create_dir_all(dir).and_then(|()| {
        let probe = dir.join(format!(".check-config-{}", std::process::id()));
        std::fs::write(&probe, b"probe")?;
        std::fs::remove_file(&probe)
    });
    if let Err(e) = writable {
        return hinted(
            "scratch",
            Level::Fail,
            format!("CODEWAZE_DATA_DIR {shown} is not writable: {e}"),
            "point CODEWAZE_DATA_DIR at a directory the worker's user can write (a volume with room for the repository clones)",
        );
    }
    match free_bytes(dir) {
        Ok(free) if free < LOW_SPACE_BYTES => hinted(
            "scratch",
            Level::Warn,
            format!("{shown} is writable; {} free", gib(free)),
            "give CODEWAZE_DATA_DIR more space: repository clones live there",
        ),
        Ok(free) => check(
            "scratch",
            Level::Ok,
            format!("{shown} is writable; {} free", gib(free)),
        ),
        Err(e) => hinted(
            "scratch",
            Level::Warn,
            format!("{shown} is writable; free space unknown: {e}"),
            "check the file system under CODEWAZE_DATA_DIR",
        ),
    }
}
