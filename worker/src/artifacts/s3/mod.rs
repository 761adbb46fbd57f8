//! The S3 store (`aws-sdk-s3`): AWS S3, MinIO, R2, B2, Ceph, or moto in tests.
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

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Builder, Credentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, http::HttpResponse,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{ArtifactError, Hasher, Written};
use crate::config::S3Config;

/// Size of each multipart part (S3's minimum is 5 MiB for all but the last; 8 MiB is what
/// `aws s3 cp` uses). With 10 000 parts at most, one object can reach 80 GiB.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once while the next part is read.
pub const PARTS_IN_FLIGHT: usize = 2;

/// A bucket and the client that reaches it.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// The endpoint as configured (or "AWS S3"), for error text; carries no credentials.
    endpoint: String,
    /// Where the bucket's objects live (`<base>/<key>`), for the `url.full` of request spans.
    url_base: String,
}

impl S3Store {
    /// Builds the client; makes no network call.
    pub fn new(cfg: &S3Config) -> Result<S3Store, ArtifactError> {
        let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) else {
            return Err(ArtifactError::Config(
                "CODEWAZE_S3_ACCESS_KEY_ID and CODEWAZE_S3_SECRET_ACCESS_KEY must both be set when CODEWAZE_S3_BUCKET is".into(),
            ));
        };
        let mut b = Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(Credentials::new(
                id.clone(),
                secret.expose().clone(),
                None,
                None,
                "lettuce-config",
            ))
            .force_path_style(cfg.force_path_style)
            // We hash every byte ourselves (sha256, recorded with the job) and SigV4 signs the
            // payload; the extra CRC the SDK adds by default is not understood by every
            // S3-compatible server.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // An unreachable store should fail the attempt quickly (it is retried with
            // backoff), not hold its slot.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(endpoint) = &cfg.endpoint {
            b = b.endpoint_url(endpoint);
        }
        keep_part_buffers_unmapped_on_free();
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            endpoint: cfg.endpoint.clone().unwrap_or_else(|| "AWS S3".into()),
            url_base: url_base(cfg),
        })
    }

    /// Sends one request on `key` inside its client span and records how it ended. The span is
    /// created here, at the call, so it is the child of the caller's span even when the
    /// returned future runs on another task.
    fn traced<T, E, F>(
        &self,
        operation: &'static str,
        method: &'static str,
        key: &str,
        request: F,
    ) -> impl Future<Output = Result<T, SdkError<E, HttpResponse>>> + use<T, E, F>
    where
        E: std::error::Error + Send + Sync + 'static,
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let url = format!("{}/{key}", self.url_base);
        let span = crate::observability::s3_client_span(operation, method, &url, &self.bucket, key);
        async move {
            let result = request.instrument(span.clone()).await;
            record_outcome(&span, &result);
            result
        }
    }

    pub fn describe(&self) -> String {
        format!("s3 bucket {:?} at {}", self.bucket, self.endpoint)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The client, for tools (sweeps, benchmarks) that need more than the store offers.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Turns an SDK error into one the operator can act on.
    fn classify<E>(&self, operation: &'static str, err: SdkError<E, HttpResponse>) -> ArtifactError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => ArtifactError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: DisplayErrorContext(&err).to_string(),
            },
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                match err.code() {
                    Some("NoSuchBucket") => ArtifactError::NoSuchBucket {
                        bucket: self.bucket.clone(),
                    },
                    Some(
                        code @ ("InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "AccessDenied"
                        | "InvalidToken"
                        | "ExpiredToken"),
                    ) => ArtifactError::AccessDenied {
                        bucket: self.bucket.clone(),
                        code: code.to_string(),
                    },
                    None if status == 403 => ArtifactError::AccessDenied {
                        bucket: self.bucket.clone(),
                        code: "HTTP 403".into(),
                    },
                    code => ArtifactError::Store {
                        operation,
                        detail: format!(
                            "{} (HTTP {status}): {}",
                            code.unwrap_or("no error code"),
                            err.message().unwrap_or("no message")
                        ),
                    },
                }
            }
            _ => ArtifactError::Store {
                operation,
                detail: DisplayErrorContext(&err).to_string(),
            },
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

    pub async fn get_small(&self, key: &str) -> Result<Vec<u8>, ArtifactError> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        let out = self
            .traced("GetObject", "GET", key, request)
            .await
            .map_err(|e| self.classify("GetObject", e))?;
        let bytes = out.body.collect().await.map_err(|e| ArtifactError::Store {
            operation: "GetObject",
            detail: e.to_string(),
        })?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// Streams object `key` into the file `dest` (created or truncated), chunk by chunk.
    pub async fn get_to_file(
        &self,
        key: &str,
        dest: &std::path::Path,
        cancel: &CancellationToken,
    ) -> Result<u64, ArtifactError> {
        use tokio::io::AsyncWriteExt;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        let mut out = self
            .traced("GetObject", "GET", key, request)
            .await
            .map_err(|e| self.classify("GetObject", e))?;
        let local = |error| ArtifactError::Local {
            path: dest.display().to_string(),
            error,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
        let mut size = 0u64;
        loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return Err(ArtifactError::Cancelled),
                c = out.body.next() => c,
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| ArtifactError::Store {
                operation: "GetObject",
                detail: e.to_string(),
            })?;
            file.write_all(&chunk).await.map_err(local)?;
            size += chunk.len() as u64;
        }
        file.flush().await.map_err(local)?;
        Ok(size)
    }

    pub async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        let request = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        self.traced("DeleteObject", "DELETE", key, request)
            .await
            .map_err(|e| self.classify("DeleteObject", e))?;
        Ok(())
    }
}

/// Where the bucket's objects are addressed: `<endpoint>/<bucket>` in path style,
/// `<scheme>://<bucket>.<host>` otherwise; AWS's regional endpoint without a custom one.
fn url_base(cfg: &S3Config) -> String {
    let endpoint = cfg
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
    let endpoint = endpoint.trim_end_matches('/');
    match endpoint.split_once("://") {
        Some((scheme, host)) if !cfg.force_path_style => {
            format!("{scheme}://{}.{host}", cfg.bucket)
        }
        _ => format!("{endpoint}/{}", cfg.bucket),
    }
}

/// Records how a request ended on its span: the status code when the server answered, and
/// status ERROR for an error answer or no answer at all.
fn record_outcome<T, E>(span: &tracing::Span, result: &Result<T, SdkError<E, HttpResponse>>)
where
    E: std::error::Error + Send + Sync + 'static,
{
    if span.is_disabled() {
        return;
    }
    match result {
        // The SDK only hands back a successful output for a 2xx answer.
        Ok(_) => {
            span.record("http.response.status_code", 200);
        }
        Err(err) => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            if let Some(status) = status {
                span.record("http.response.status_code", status);
            }
            if status.is_none_or(|s| s >= 300) {
                crate::observability::record_error(span, &DisplayErrorContext(err));
            }
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
fn keep_part_buffers_unmapped_on_free() {
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
