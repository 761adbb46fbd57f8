//! Artifacts: what handlers produce (indexes, manifests, reports), written through one
//! [`ArtifactStore`] and recorded with the job's completion.
//!
//! The store is an S3 bucket (`aws-sdk-s3`, MinIO-compatible with path-style addressing) when
//! `CODEWAZE_S3_BUCKET` is set, else a directory under `CODEWAZE_DATA_DIR` (the embedded
//! default). It is built once at boot and reached by handlers through their `JobContext`.
//!
//! What this module owns: deterministic keys per `(job, attempt)` ([`key_for`]), streaming
//! writes that hash (sha256) as they upload and never hold a whole object in memory, and the
//! promise that a write which fails or is cut short leaves nothing under its final key (S3:
//! the multipart upload is aborted; local: a temp file is renamed into place only when
//! complete). It never writes `lettuce.job_artifacts`: the handler notes each written object
//! on its context and the completer records the rows in the transaction that completes the
//! job, so an attempt that does not complete leaves no row.

pub mod local;
pub mod s3;

use std::fmt;

use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The largest artifact name (the part of the key after `attempt-<n>/`).
const MAX_NAME_LEN: usize = 512;

/// One object written completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub key: String,
    pub size: u64,
    /// Lowercase hex sha256 of the bytes as written.
    pub sha256: String,
    /// The store's entity tag, quotes removed (S3 only).
    pub etag: Option<String>,
}

/// Why an artifact operation failed. Every variant renders a line an operator can act on; none
/// carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The store did not answer (connection refused, timeout, DNS); retrying later can help.
    #[error("artifact store unreachable at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// The bucket named by `CODEWAZE_S3_BUCKET` does not exist.
    #[error(
        "artifact bucket {bucket:?} does not exist (CODEWAZE_S3_BUCKET); create it or fix the name"
    )]
    NoSuchBucket { bucket: String },
    /// The store refused the credentials or the operation.
    #[error(
        "artifact store refused access to bucket {bucket:?} ({code}): check CODEWAZE_S3_ACCESS_KEY_ID / CODEWAZE_S3_SECRET_ACCESS_KEY and the bucket policy"
    )]
    AccessDenied { bucket: String, code: String },
    /// Any other answer from the store.
    #[error("artifact store {operation} failed: {detail}")]
    Store {
        operation: &'static str,
        detail: String,
    },
    /// The bytes to write could not be read.
    #[error("reading the artifact's bytes failed: {0}")]
    Source(std::io::Error),
    /// The local directory store could not write or read.
    #[error("artifact directory {path}: {error}")]
    Local { path: String, error: std::io::Error },
    /// The attempt was cancelled while writing.
    #[error("artifact write cancelled")]
    Cancelled,
    /// The artifact name cannot be turned into a key.
    #[error("invalid artifact name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// The configuration cannot build a store.
    #[error("{0}")]
    Config(String),
    /// The probe read back other bytes than it wrote.
    #[error("artifact store probe read back different bytes than it wrote")]
    ProbeMismatch,
}

/// Where a handler's artifacts go. Built once by boot from [`Config`].
pub enum ArtifactStore {
    S3(s3::S3Store),
    Local(local::LocalStore),
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ArtifactStore {
    /// Builds the store the configuration names: the S3 bucket when one is set, else a
    /// directory `artifacts/` under `CODEWAZE_DATA_DIR`. Makes no network call.
    pub fn from_config(config: &Config) -> Result<ArtifactStore, ArtifactError> {
        match &config.s3 {
            Some(s3) => Ok(ArtifactStore::S3(s3::S3Store::new(s3)?)),
            None => Ok(ArtifactStore::Local(local::LocalStore::new(
                config.data_dir.join("artifacts"),
            ))),
        }
    }

    /// The warning boot logs (and `check-config` may report) for this configuration: a local
    /// directory in self-hosted mode makes artifact durability depend on one disk.
    pub fn durability_warning(config: &Config) -> Option<String> {
        (config.self_hosted && config.s3.is_none()).then(|| {
            format!(
                "artifacts are stored in the local directory {} because CODEWAZE_S3_BUCKET is not set; \
                 they are only as durable as this disk and are not shared between replicas",
                config.data_dir.join("artifacts").display()
            )
        })
    }

    /// One line naming the store, for logs and `check-config` (never a secret).
    pub fn describe(&self) -> String {
        match self {
            ArtifactStore::S3(s) => s.describe(),
            ArtifactStore::Local(l) => format!("local directory {}", l.root().display()),
        }
    }

    /// Streams `body` to `key`. The object appears under `key` only when every byte was
    /// written; on error or cancellation nothing is left there (and no multipart upload stays
    /// open). Memory stays bounded whatever the size.
    pub async fn put<R>(
        &self,
        key: &str,
        body: R,
        cancel: &CancellationToken,
    ) -> Result<Written, ArtifactError>
    where
        R: AsyncRead + Unpin + Send,
    {
        match self {
            ArtifactStore::S3(s) => s.put(key, body, cancel).await,
            ArtifactStore::Local(l) => l.put(key, body, cancel).await,
        }
    }

    /// Reads a whole object. Meant for small objects (probes, tools), not for artifacts.
    pub async fn get_small(&self, key: &str) -> Result<Vec<u8>, ArtifactError> {
        match self {
            ArtifactStore::S3(s) => s.get_small(key).await,
            ArtifactStore::Local(l) => l.get_small(key).await,
        }
    }

    /// Streams a whole object into the file `dest` (created or truncated), in bounded
    /// memory; returns its size. For artifacts read back (a previous index).
    pub async fn get_to_file(
        &self,
        key: &str,
        dest: &std::path::Path,
        cancel: &CancellationToken,
    ) -> Result<u64, ArtifactError> {
        match self {
            ArtifactStore::S3(s) => s.get_to_file(key, dest, cancel).await,
            ArtifactStore::Local(l) => l.get_to_file(key, dest).await,
        }
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        match self {
            ArtifactStore::S3(s) => s.delete(key).await,
            ArtifactStore::Local(l) => l.delete(key).await,
        }
    }

    /// Checks the store end to end: writes a small probe object, reads it back, compares, and
    /// deletes it. `check-config` and boot diagnostics call this; the error says what is wrong
    /// (unreachable, missing bucket, refused credentials, unwritable directory).
    pub async fn probe(&self) -> Result<(), ArtifactError> {
        let key = format!("probes/{}", uuid::Uuid::new_v4());
        let bytes = format!("lettuce artifact store probe {key}").into_bytes();
        self.put(&key, &bytes[..], &CancellationToken::new())
            .await?;
        let back = self.get_small(&key).await;
        let deleted = self.delete(&key).await;
        if back? != bytes {
            return Err(ArtifactError::ProbeMismatch);
        }
        deleted
    }
}

/// The key of artifact `name` written by attempt `attempt` of job `job_id`:
/// `jobs/<job_id>/attempt-<attempt>/<name>`. Deterministic, so a retried write of the same
/// attempt replaces its own object and attempts never overwrite each other.
pub fn key_for(job_id: i64, attempt: i32, name: &str) -> Result<String, ArtifactError> {
    let bad = |why| Err(ArtifactError::InvalidName(name.to_string(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 512 bytes");
    }
    if name.starts_with('/') || name.ends_with('/') {
        return bad("starts or ends with '/'");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    // Keys double as relative paths in the local store, so no segment may climb out of it or
    // hide as a temp file.
    if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with(".tmp-"))
    {
        return bad("has an empty, '.', '..' or '.tmp-' segment");
    }
    Ok(format!("jobs/{job_id}/attempt-{attempt}/{name}"))
}

/// A sha256 that is fed as bytes stream past, and the byte count.
#[derive(Default)]
pub(crate) struct Hasher {
    sha: Sha256,
    size: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// (size, lowercase hex digest)
    pub fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.sha.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_per_job_and_attempt() {
        assert_eq!(
            key_for(42, 3, "index/manifest.json").unwrap(),
            "jobs/42/attempt-3/index/manifest.json"
        );
        assert_ne!(key_for(42, 1, "a").unwrap(), key_for(42, 2, "a").unwrap());
    }

    #[test]
    fn names_that_could_escape_or_collide_are_refused() {
        for name in [
            "",
            "/abs",
            "dir/",
            "a//b",
            "../x",
            "a/./b",
            "a/../../b",
            "x\n",
            ".tmp-123",
        ] {
            assert!(key_for(1, 1, name).is_err(), "{name:?} should be refused");
        }
        assert!(key_for(1, 1, &"a".repeat(513)).is_err());
        assert!(key_for(1, 1, "report.v2.tar.gz").is_ok());
    }

    #[test]
    fn hasher_matches_one_shot_sha256() {
        let mut h = Hasher::default();
        h.update(b"hello ");
        h.update(b"world");
        let (size, hex) = h.finish();
        assert_eq!(size, 11);
        assert_eq!(
            hex,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
