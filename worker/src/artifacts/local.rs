//! The local directory store, the embedded default when no bucket is configured. A key is a
//! relative path under the root (keys are validated by `key_for`, so none climbs out).
//!
//! A write goes to a `.tmp-<uuid>` file in the final directory and is renamed over the final
//! path only after every byte was written and synced, so a reader never sees a partial file
//! under a key. A write that fails or is dropped mid-way removes its temp file. Files are created
//! with mode 0640 (whatever the umask allows of it), and the directory is synced after the
//! rename, so a completed artifact survives a power cut. Temp files a crash left behind are
//! swept at boot ([`LocalStore::sweep_temp`]).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{ArtifactError, Hasher, Written};

/// Bytes read from the source per write call.
const CHUNK: usize = 256 * 1024;

/// Artifacts as files under one directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    /// `CODEWAZE_DATA_DIR/artifacts`; created on first write.
    root: PathBuf,
}

/// Removes a temp file unless the write finished (then it was renamed away).
struct TempFile {
    path: PathBuf,
    done: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the file may not exist yet. A sync call is fine here, it is one
            // unlink on a local disk.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(path: &Path) -> impl Fn(std::io::Error) -> ArtifactError + '_ {
        move |error| ArtifactError::Local {
            path: path.display().to_string(),
            error,
        }
    }

    pub async fn put<R>(
        &self,
        key: &str,
        mut body: R,
        cancel: &CancellationToken,
    ) -> Result<Written, ArtifactError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let path = self.path_of(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Self::err(&dir))?;
        let mut temp = TempFile {
            path: dir.join(format!(".tmp-{}", uuid::Uuid::new_v4())),
            done: false,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&temp.path)
            .await
            .map_err(Self::err(&temp.path))?;
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                r = body.read(&mut buf) => r.map_err(ArtifactError::Source)?,
                _ = cancel.cancelled() => return Err(ArtifactError::Cancelled),
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .map_err(Self::err(&temp.path))?;
        }
        file.sync_all().await.map_err(Self::err(&temp.path))?;
        drop(file);
        tokio::fs::rename(&temp.path, &path)
            .await
            .map_err(Self::err(&path))?;
        temp.done = true;
        // The rename is durable once the directory entry is.
        tokio::fs::File::open(&dir)
            .await
            .map_err(Self::err(&dir))?
            .sync_all()
            .await
            .map_err(Self::err(&dir))?;
        let (size, sha256) = hasher.finish();
        Ok(Written {
            key: key.to_string(),
            size,
            sha256,
            etag: None,
        })
    }

    /// Removes `.tmp-*` files under the root not modified for `older_than` (a write in progress
    /// touches its file with every chunk, so only a crash's leftovers are that old). Returns how
    /// many were removed. Errors are logged, never fatal: this is housekeeping.
    pub fn sweep_temp(&self, older_than: std::time::Duration) -> usize {
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                if !kind.is_file() || !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age >= older_than);
                if old {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(e) => {
                            tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale artifact temp file")
                        }
                    }
                }
            }
        }
        removed
    }

    pub async fn get_small(&self, key: &str) -> Result<Vec<u8>, ArtifactError> {
        let path = self.path_of(key);
        tokio::fs::read(&path).await.map_err(Self::err(&path))
    }

    /// Copies object `key` into the file `dest` (created or truncated), streaming.
    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64, ArtifactError> {
        let path = self.path_of(key);
        let mut from = tokio::fs::File::open(&path)
            .await
            .map_err(Self::err(&path))?;
        let mut to = tokio::fs::File::create(dest)
            .await
            .map_err(Self::err(dest))?;
        let n = tokio::io::copy(&mut from, &mut to)
            .await
            .map_err(Self::err(dest))?;
        tokio::io::AsyncWriteExt::flush(&mut to)
            .await
            .map_err(Self::err(dest))?;
        Ok(n)
    }

    pub async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        let path = self.path_of(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (LocalStore, PathBuf) {
        let root = std::env::temp_dir().join(format!("lettuce-local-{}", uuid::Uuid::new_v4()));
        (LocalStore::new(root.clone()), root)
    }

    #[tokio::test]
    async fn round_trip_and_probe() {
        let (s, root) = store();
        let w = s
            .put(
                "jobs/1/attempt-1/a.txt",
                &b"abc"[..],
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(w.size, 3);
        assert_eq!(
            w.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(s.get_small(&w.key).await.unwrap(), b"abc");
        super::super::ArtifactStore::Local(s.clone())
            .probe()
            .await
            .unwrap();
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A source that fails after some bytes.
    struct Failing(usize);
    impl AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("source broke")));
            }
            let n = self.0.min(buf.remaining());
            buf.put_slice(&vec![7u8; n]);
            self.0 -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn artifacts_are_0640_and_stale_temp_files_are_swept() {
        use std::os::unix::fs::PermissionsExt;
        let (store, dir) = store();
        let cancel = CancellationToken::new();
        store
            .put("jobs/1/a.bin", &b"payload"[..], &cancel)
            .await
            .unwrap();
        let mode = std::fs::metadata(store.path_of("jobs/1/a.bin"))
            .unwrap()
            .permissions()
            .mode();
        // 0640 as far as the umask allows: never group-writable or world-readable.
        assert_eq!(mode & 0o137, 0, "mode {mode:o}");
        assert_eq!(mode & 0o600, 0o600, "mode {mode:o}");

        let stale = store.path_of("jobs/1/.tmp-crashed");
        let fresh = store.path_of("jobs/1/.tmp-writing");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&fresh, b"x").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        assert_eq!(store.sweep_temp(std::time::Duration::from_secs(3600)), 1);
        assert!(!stale.exists());
        assert!(fresh.exists(), "a temp file still being written was swept");
        assert!(store.path_of("jobs/1/a.bin").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_file_and_no_temp() {
        let (s, root) = store();
        let err = s
            .put(
                "jobs/2/attempt-1/x",
                Failing(1000),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::Source(_)), "{err}");
        let dir = root.join("jobs/2/attempt-1");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }
}
