//! Reading a fetched commit: its file list (`git ls-tree`) and its blobs (`git cat-file
//! --batch`).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::GitError;

/// One file of a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The path from the repository root, `/`-separated. Git paths are bytes; a path that is
    /// not UTF-8 is converted lossily (U+FFFD for bad bytes), so it may not name the file
    /// exactly — the content is still read through `blob`, which is exact.
    pub path: String,
    /// The git mode: 0o100644, 0o100755 (executable), 0o120000 (symlink; the blob is the
    /// target), 0o160000 (submodule; `blob` is then the submodule's commit id and `size` 0).
    pub mode: u32,
    /// The object id (hex).
    pub blob: String,
    /// The blob's size in bytes; 0 for a submodule.
    pub size: u64,
}

impl TreeEntry {
    /// A submodule (gitlink): no content in this repository.
    pub fn is_submodule(&self) -> bool {
        self.mode == 0o160000
    }
    /// A symbolic link: the blob holds the link's target.
    pub fn is_symlink(&self) -> bool {
        self.mode == 0o120000
    }
}

/// Parses `git ls-tree -r -z --long --full-tree` output:
/// `<mode> SP <type> SP <oid> SP+ <size|-> TAB <path> NUL`, in git's order (sorted by path).
pub(crate) fn parse_ls_tree(out: &[u8]) -> Result<Vec<TreeEntry>, String> {
    let mut entries = Vec::new();
    for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let tab = record
            .iter()
            .position(|b| *b == b'\t')
            .ok_or_else(|| "an ls-tree record without a tab".to_string())?;
        let (meta, path) = (&record[..tab], &record[tab + 1..]);
        let meta = std::str::from_utf8(meta).map_err(|_| "non-UTF-8 ls-tree metadata")?;
        let mut fields = meta.split_ascii_whitespace();
        let (Some(mode), Some(_kind), Some(oid), Some(size), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(format!("an unexpected ls-tree record: {meta:?}"));
        };
        let mode = u32::from_str_radix(mode, 8).map_err(|_| format!("bad mode {mode:?}"))?;
        let size = if size == "-" {
            0
        } else {
            size.parse::<u64>()
                .map_err(|_| format!("bad size {size:?}"))?
        };
        entries.push(TreeEntry {
            path: String::from_utf8_lossy(path).into_owned(),
            mode,
            blob: oid.to_string(),
            size,
        });
    }
    Ok(entries)
}

/// An object id as git prints it: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub(crate) fn valid_oid(oid: &str) -> bool {
    (oid.len() == 40 || oid.len() == 64)
        && oid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads blobs of a scratch repository through one long-lived `git cat-file --batch`.
/// Synchronous: use it inside `spawn_blocking`. Killed (with its process group) on drop.
/// Holds no lock itself: keep the [`super::RepoDir`] it was made from alive while reading.
pub struct BlobReader {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Set after an I/O error mid-object: the stream is out of step and every read fails.
    broken: bool,
}

fn broken() -> std::io::Error {
    std::io::Error::other("the cat-file stream broke on an earlier read")
}

impl BlobReader {
    pub(crate) fn spawn(mut cmd: Command) -> Result<BlobReader, GitError> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(super::command::spawn_error)?;
        let stdin = child.stdin.take();
        let stdout = BufReader::with_capacity(64 * 1024, child.stdout.take().expect("piped"));
        Ok(BlobReader {
            child,
            stdin,
            stdout,
            broken: false,
        })
    }

    /// The content of blob `blob` (hex id). `size_hint` (the size from `ls_tree`) only sizes
    /// the buffer; the size git reports wins. A missing object is an `ErrorKind::NotFound`
    /// error and leaves the reader usable; an object that is not a blob is `InvalidData`.
    pub fn read(&mut self, blob: &str, size_hint: u64) -> std::io::Result<Vec<u8>> {
        if self.broken {
            return Err(broken());
        }
        if !valid_oid(blob) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not an object id: {blob:?}"),
            ));
        }
        let result = self.read_inner(blob, size_hint);
        if let Err(e) = &result
            && !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
            )
        {
            self.broken = true;
        }
        result
    }

    fn read_inner(&mut self, blob: &str, size_hint: u64) -> std::io::Result<Vec<u8>> {
        let stdin = self.stdin.as_mut().ok_or_else(broken)?;
        stdin.write_all(blob.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let mut header = String::new();
        if self.stdout.read_line(&mut header)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "git cat-file exited",
            ));
        }
        let header = header.trim_end_matches('\n');
        let mut parts = header.split(' ');
        let (Some(oid), Some(kind)) = (parts.next(), parts.next()) else {
            self.broken = true;
            return Err(std::io::Error::other(format!(
                "unexpected cat-file header {header:?}"
            )));
        };
        if kind == "missing" || kind == "ambiguous" {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("object {oid} is {kind} in the scratch repository"),
            ));
        }
        let size: u64 = match parts.next().map(str::parse) {
            Some(Ok(n)) => n,
            _ => {
                self.broken = true;
                return Err(std::io::Error::other(format!(
                    "unexpected cat-file header {header:?}"
                )));
            }
        };
        let cap = size.max(size_hint).min(64 * 1024 * 1024) as usize;
        let mut content = Vec::with_capacity(cap.min(size as usize));
        (&mut self.stdout).take(size).read_to_end(&mut content)?;
        if content.len() as u64 != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "git cat-file ended mid-object",
            ));
        }
        let mut lf = [0u8; 1];
        self.stdout.read_exact(&mut lf)?;
        if lf[0] != b'\n' {
            return Err(std::io::Error::other(
                "cat-file framing: no LF after object",
            ));
        }
        if kind != "blob" {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("object {oid} is a {kind}, not a blob"),
            ));
        }
        Ok(content)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        // Closing stdin ends cat-file by itself; kill anyway so a stuck one cannot linger.
        drop(self.stdin.take());
        let pid = self.child.id() as i32;
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) with the group id of our own unreaped child.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ls_tree_records() {
        let oid = "a".repeat(40);
        let sub = "b".repeat(40);
        let out = format!(
            "100644 blob {oid}      12\tREADME.md\0100755 blob {oid} 1234567\tbin/run\0160000 commit {sub}       -\tvendor/lib\0120000 blob {oid}       6\tlink\0"
        );
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(b"100644 blob ");
        bytes.extend_from_slice(oid.as_bytes());
        bytes.extend_from_slice(b"       3\tbad-\xff-name\0");
        let e = parse_ls_tree(&bytes).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(
            e[0],
            TreeEntry {
                path: "README.md".into(),
                mode: 0o100644,
                blob: oid.clone(),
                size: 12
            }
        );
        assert_eq!(e[1].mode, 0o100755);
        assert_eq!(e[1].size, 1234567);
        assert!(e[2].is_submodule());
        assert_eq!(e[2].size, 0);
        assert_eq!(e[2].blob, sub);
        assert!(e[3].is_symlink());
        assert_eq!(e[4].path, "bad-\u{fffd}-name");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_ls_tree(b"garbage\0").is_err());
        assert!(parse_ls_tree(b"").unwrap().is_empty());
    }

    #[test]
    fn oids() {
        assert!(valid_oid(&"0".repeat(40)));
        assert!(valid_oid(&"f".repeat(64)));
        assert!(!valid_oid(&"F".repeat(40)));
        assert!(!valid_oid("HEAD"));
        assert!(!valid_oid(&format!("{}\n", "a".repeat(39))));
    }
}
