//! The HTTP round trip both provider clients share: send a request inside its client span,
//! keep the answer whole (status, headers, body), record the status on the span, and name a
//! transport failure (timeout, no connection) without the query string. What an answer means
//! (rate limits, permissions, messages) stays with each provider.

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use tracing::Instrument;

use super::ProviderError;

/// One answer, read whole.
pub(super) struct Answer {
    /// `GitHub` or `GitLab`, for error texts.
    pub provider: &'static str,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as `T`, or an error naming the provider and `what` was asked.
    pub fn json<T: for<'de> Deserialize<'de>>(&self, what: &str) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::Rejected(format!(
                "{}'s answer to {what} does not parse: {e}",
                self.provider
            ))
        })
    }
}

/// Sends `request` (`method` `url`) inside `span`, recording the answer's status on it.
pub(super) async fn send(
    provider: &'static str,
    request: RequestBuilder,
    span: &tracing::Span,
    method: &Method,
    url: &str,
) -> Result<Answer, ProviderError> {
    let outcome = async {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok::<_, reqwest::Error>(Answer {
            provider,
            status,
            headers,
            body,
        })
    }
    .instrument(span.clone())
    .await;
    match outcome {
        Ok(answer) => {
            span.record("http.response.status_code", answer.status.as_u16());
            if answer.status.is_client_error() || answer.status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
            Ok(answer)
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            Err(transport_error(provider, method, url, &e))
        }
    }
}

/// A request that got no answer: timed out, could not connect, or failed otherwise, with the
/// error's causes and the URL without its query.
fn transport_error(
    provider: &str,
    method: &Method,
    url: &str,
    e: &reqwest::Error,
) -> ProviderError {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    text.push_str(&crate::error_text::causes(e));
    let url = url.split('?').next().unwrap_or(url);
    ProviderError::Unavailable(format!("{provider} {method} {url}: {text}"))
}
