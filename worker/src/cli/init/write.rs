//! Putting the files in place without losing anything: a backup of each file that changes,
//! a refusal of anything `init` did not write, and atomic writes that never replace a file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::InitError;

/// `20261129T050433Z`: sortable and safe in a file name.
pub(super) fn timestamp(now: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// `<name>.bak-<stamp>`, with `-1`, `-2`, … when two runs share a second.
pub(super) fn backup_path(dir: &Path, name: &str, stamp: &str) -> PathBuf {
    let base = dir.join(format!("{name}.bak-{stamp}"));
    if base.symlink_metadata().is_err() {
        return base;
    }
    (1..)
        .map(|n| dir.join(format!("{name}.bak-{stamp}-{n}")))
        .find(|p| p.symlink_metadata().is_err())
        .expect("some suffix is free")
}

pub(super) fn is_env_backup(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".env.bak-"))
}

/// The largest file `init` compares with what it would write.
const MAX_EXISTING_BYTES: u64 = 1024 * 1024;

/// The current content of `path` when it is a regular file (`None` when it does not exist).
/// Anything else there — a symlink, a FIFO (reading one would hang), a directory, a device —
/// or a file over 1 MiB is refused, `--force` or not: `init` replaces only what it wrote.
pub(super) fn read_existing(path: &Path) -> Result<Option<Vec<u8>>, InitError> {
    use std::io::Read as _;
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(InitError::io(path, e)),
    };
    let refuse = |why: &str| {
        InitError::io(
            path,
            std::io::Error::other(format!("{why}; refusing to replace it")),
        )
    };
    if !meta.file_type().is_file() {
        return Err(refuse(
            "is not a regular file (a symlink, FIFO, directory or device)",
        ));
    }
    if meta.len() > MAX_EXISTING_BYTES {
        return Err(refuse("is larger than 1 MiB"));
    }
    // O_NOFOLLOW and O_NONBLOCK: if the file was swapped for a symlink or a FIFO since the check
    // above, the open fails or returns at once instead of following or hanging.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| InitError::io(path, e))?;
    if !f.metadata().map_err(|e| InitError::io(path, e))?.is_file() {
        return Err(refuse("is not a regular file"));
    }
    let mut bytes = Vec::new();
    (&f).take(MAX_EXISTING_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InitError::io(path, e))?;
    Ok(Some(bytes))
}

/// Writes `content` to a temporary file created with `mode` (so a secret file is never readable
/// by others, not even briefly), syncs it, and links it in at `path` without replacing anything:
/// a file that appeared at `path` since the backup (another `init`, an operator's editor) is
/// kept, and this write fails naming it.
pub(super) fn write_atomically(path: &Path, content: &str, mode: u32) -> Result<(), InitError> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::other(
                    "it appeared while init was writing; it was kept, not replaced",
                )
            } else {
                e
            }
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| InitError::io(path, e))
}
