//! Writes to the S3 store: one `PutObject`, or a multipart upload that is aborted on failure.
//!
//! A write reads its source in parts of [`PART_SIZE`], hashing as it goes. A source shorter
//! than one part goes up as one `PutObject`; anything longer is a multipart upload with at
//! most [`PARTS_IN_FLIGHT`] parts uploading while the next one is read, so memory stays
//! around `(PARTS_IN_FLIGHT + 1) × PART_SIZE` whatever the object's size. The multipart
//! upload is aborted on any error, and by a drop guard when the write is dropped (the
//! executor drops an attempt's future on timeout or cancellation), so no upload stays open and
//! nothing becomes visible under the final key unless `CompleteMultipartUpload` succeeded.
//! A process killed mid-upload cannot abort; the README tells operators to add a bucket
//! lifecycle rule for incomplete multipart uploads.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::S3Store;
use crate::artifacts::{ArtifactError, Hasher, Written};

/// Size of each multipart part (S3's minimum is 5 MiB for all but the last; 8 MiB is what
/// `aws s3 cp` uses). With 10 000 parts at most, one object can reach 80 GiB.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once while the next part is read.
pub const PARTS_IN_FLIGHT: usize = 2;

impl S3Store {
    pub async fn put<R>(
        &self,
        key: &str,
        mut body: R,
        cancel: &CancellationToken,
    ) -> Result<Written, ArtifactError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut hasher = Hasher::default();
        let first = cancellable(cancel, read_part(&mut body, &mut hasher)).await?;
        if first.len() < PART_SIZE {
            let len = first.len() as i64;
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(len)
                .body(ByteStream::from(first))
                .send();
            let out = cancellable(cancel, async {
                self.traced("PutObject", "PUT", key, request)
                    .await
                    .map_err(|e| self.classify("PutObject", e))
            })
            .await?;
            let (size, sha256) = hasher.finish();
            return Ok(Written {
                key: key.to_string(),
                size,
                sha256,
                etag: out.e_tag().map(unquote),
            });
        }

        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send();
        let created = cancellable(cancel, async {
            self.traced("CreateMultipartUpload", "POST", key, request)
                .await
                .map_err(|e| self.classify("CreateMultipartUpload", e))
        })
        .await?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| ArtifactError::Store {
                operation: "CreateMultipartUpload",
                detail: "the answer carried no upload id".into(),
            })?
            .to_string();
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let uploaded = async {
            let parts = self
                .upload_parts(key, &upload_id, first, &mut body, &mut hasher, cancel)
                .await?;
            let size = hasher.size();
            cancellable(cancel, self.complete(key, &upload_id, parts, size)).await
        }
        .await;
        match uploaded {
            Ok(etag) => {
                guard.armed = false;
                let (size, sha256) = hasher.finish();
                Ok(Written {
                    key: key.to_string(),
                    size,
                    sha256,
                    etag,
                })
            }
            Err(e) => {
                guard.abort_now().await;
                Err(e)
            }
        }
    }

    /// Uploads `first` and the rest of `body` as parts 1..; returns them in order.
    async fn upload_parts<R>(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        body: &mut R,
        hasher: &mut Hasher,
        cancel: &CancellationToken,
    ) -> Result<Vec<CompletedPart>, ArtifactError>
    where
        R: AsyncRead + Unpin + Send,
    {
        // Dropping the set (error, cancellation, or the whole write being dropped) aborts the
        // part uploads still running.
        let mut running: JoinSet<Result<CompletedPart, ArtifactError>> = JoinSet::new();
        let mut done = Vec::new();
        let mut part = first;
        let mut number: i32 = 1;
        loop {
            while running.len() >= PARTS_IN_FLIGHT {
                done.push(join_one(&mut running, cancel).await?);
            }
            let last = part.len() < PART_SIZE;
            running.spawn(self.upload_part(key, upload_id, number, part));
            if last {
                break;
            }
            part = cancellable(cancel, read_part(body, hasher)).await?;
            if part.is_empty() {
                break;
            }
            number += 1;
        }
        while !running.is_empty() {
            done.push(join_one(&mut running, cancel).await?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    /// `CompleteMultipartUpload`; returns the object's ETag.
    ///
    /// Some S3-compatible servers answer 200 with a body the SDK cannot parse (moto 5.2 names
    /// the root element `CompleteMultipartUploadResponse`, getmoto/moto#10055). A 200 is not
    /// proof by itself (S3 may put an `<Error>` in a 200 body, which the SDK does parse into
    /// an error code), so in that one case the object is checked with `HeadObject` and
    /// accepted only when it exists with exactly the size we uploaded.
    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        size: u64,
    ) -> Result<Option<String>, ArtifactError> {
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send();
        let result = self
            .traced("CompleteMultipartUpload", "POST", key, request)
            .await;
        let err = match result {
            Ok(out) => return Ok(out.e_tag().map(unquote)),
            Err(err) => err,
        };
        let unparsed_success = matches!(&err, SdkError::ServiceError(se)
            if se.raw().status().as_u16() == 200 && err.code().is_none());
        if !unparsed_success {
            return Err(self.classify("CompleteMultipartUpload", err));
        }
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        let head = self
            .traced("HeadObject", "HEAD", key, request)
            .await
            .map_err(|e| self.classify("HeadObject", e))?;
        if head.content_length() != Some(size as i64) {
            return Err(ArtifactError::Store {
                operation: "CompleteMultipartUpload",
                detail: format!(
                    "unreadable answer, and the object has {:?} bytes instead of {size}",
                    head.content_length()
                ),
            });
        }
        tracing::debug!(
            key,
            "CompleteMultipartUpload answer unreadable; object verified by HeadObject"
        );
        Ok(head.e_tag().map(unquote))
    }

    /// One `UploadPart`, as an owned future so it can run on its own task.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        bytes: Bytes,
    ) -> impl Future<Output = Result<CompletedPart, ArtifactError>> + Send + 'static {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes));
        let classifier = self.clone();
        let sent = self.traced("UploadPart", "PUT", key, request.send());
        async move {
            let out = sent
                .await
                .map_err(|e| classifier.classify("UploadPart", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        }
    }

}

/// Aborts a multipart upload that did not complete. `abort_now` is the explicit path; `Drop`
/// covers a write whose future was dropped (timeout, cancellation, panic elsewhere).
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    /// False once the upload completed or was aborted.
    armed: bool,
}

impl AbortGuard {
    fn request(
        &self,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder
    {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
    }

    async fn abort_now(&mut self) {
        self.armed = false;
        if let Err(e) = self.request().send().await {
            tracing::warn!(key = %self.key, error = %DisplayErrorContext(&e), "could not abort a failed multipart upload; a bucket lifecycle rule will remove it");
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, "multipart upload left open: no runtime to abort it");
            return;
        };
        let request = self.request();
        let key = std::mem::take(&mut self.key);
        runtime.spawn(async move {
            match request.send().await {
                Ok(_) => tracing::debug!(key = %key, "aborted the multipart upload of a dropped write"),
                Err(e) => tracing::warn!(key = %key, error = %DisplayErrorContext(&e), "could not abort the multipart upload of a dropped write"),
            }
        });
    }
}

/// Part buffers are 8 MiB allocations, usually freed on another thread than the one that
/// made them (the part upload runs on its own task). glibc serves allocations that large with
/// mmap, but raises its mmap threshold the first time one is freed and from then on carves
/// them from per-thread arenas, where freed parts stay resident: measured, that added about
/// 20 MiB of peak RSS per write. Pinning the threshold (which also turns off the dynamic
/// raise) keeps every part an mmap that goes back to the kernel when freed. Process-wide, set
/// once; small allocations are unaffected.
pub(super) fn keep_part_buffers_unmapped_on_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning; it is thread-safe in glibc.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
            }
        });
    }
}

/// Runs `f` unless `cancel` fires first.
async fn cancellable<T>(
    cancel: &CancellationToken,
    f: impl Future<Output = Result<T, ArtifactError>>,
) -> Result<T, ArtifactError> {
    tokio::select! {
        r = f => r,
        _ = cancel.cancelled() => Err(ArtifactError::Cancelled),
    }
}

/// Waits for one running part upload.
async fn join_one(
    running: &mut JoinSet<Result<CompletedPart, ArtifactError>>,
    cancel: &CancellationToken,
) -> Result<CompletedPart, ArtifactError> {
    let joined = cancellable(cancel, async {
        Ok(running
            .join_next()
            .await
            .expect("caller checked the set is not empty"))
    })
    .await?;
    joined.map_err(|e| ArtifactError::Store {
        operation: "UploadPart",
        detail: format!("part upload task failed: {e}"),
    })?
}

/// Reads up to one part (fewer only at the end of the source), hashing what it reads.
async fn read_part<R>(body: &mut R, hasher: &mut Hasher) -> Result<Bytes, ArtifactError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; PART_SIZE];
    let mut filled = 0;
    while filled < PART_SIZE {
        let n = body
            .read(&mut buf[filled..])
            .await
            .map_err(ArtifactError::Source)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[filled..filled + n]);
        filled += n;
    }
    buf.truncate(filled);
    if filled < PART_SIZE {
        // The last (or only) part: give back the unused capacity, which `Bytes` would keep.
        buf.shrink_to_fit();
    }
    Ok(Bytes::from(buf))
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}
