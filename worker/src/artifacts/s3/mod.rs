//! The S3 store (`aws-sdk-s3`): AWS S3, MinIO, R2, B2, Ceph, or moto in tests.
//!
//! Here: the client and its settings, reads and deletes, the request spans, and the mapping of
//! SDK errors to [`ArtifactError`]. Writes (one `PutObject`, or a multipart upload) are in
//! `upload.rs`.

mod upload;

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Builder, Credentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, http::HttpResponse,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ArtifactError;
use crate::config::S3Config;

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
        upload::keep_part_buffers_unmapped_on_free();
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

    /// One traced `GetObject` of `key`, its failure classified.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, ArtifactError> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        self.traced("GetObject", "GET", key, request)
            .await
            .map_err(|e| self.classify("GetObject", e))
    }

    pub async fn get_small(&self, key: &str) -> Result<Vec<u8>, ArtifactError> {
        let out = self.get_object(key).await?;
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
        let mut out = self.get_object(key).await?;
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
