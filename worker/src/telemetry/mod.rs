//! Logging and tracing: `tracing` to stderr (human by default, JSON with
//! `LETTUCE_LOG_FORMAT=json`, level from `RUST_LOG`, default `info`), and, when an OTLP endpoint
//! is configured (see [`otlp`]), spans exported over OTLP through `tracing-opentelemetry`.
//!
//! Spans meant for the trace backend use the target [`SPAN_TARGET`]. The log layer never enables
//! that target and, without an exporter, no layer does, so a job span then costs one cached
//! callsite check and nothing else. The exporter layer sees only that target plus this crate's
//! own events (as span events), never the spans of the HTTP clients it exports with.
//!
//! The span and attribute names are a contract, like the SQL (ARCHITECTURE.md lists them):
//!
//! | span | kind | attributes |
//! |---|---|---|
//! | `job.<kind>` | consumer | `job.id`, `job.kind`, `job.queue`, `job.attempt`, `job.outcome`; on failure status ERROR with the error text and `error.message` |
//! | `db.claim_batch`, `db.complete_batch`, `db.heartbeat` | client | `db.system`=`postgresql`, `db.operation`, `db.statement` (placeholders, never values), `db.rows` |
//! | `http.client` helper ([`http_client_span`]) | client | `http.request.method`, `server.address`, `url.full` (no query), `http.response.status_code` |
//! | `S3.<Operation>` ([`s3_client_span`]) | client | the HTTP ones plus `rpc.system`=`aws-api`, `rpc.service`=`S3`, `rpc.method`, `aws.s3.bucket`, `aws.s3.key` |
//!
//! A job span is the child of the `traceparent` stored with the job when there is one;
//! [`current_traceparent`] is what the Rust enqueue API stores.
//!
//! [`heartbeat`] is the daily telemetry ping (SPEC §8).

pub mod heartbeat;
pub mod otlp;

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;
pub use otlp::{OtlpSettings, TelemetryError};

/// The `tracing` target of every span meant for the trace backend.
pub const SPAN_TARGET: &str = "lettuce_otel";

/// Holds the tracer provider until the process is about to exit.
#[must_use = "call shutdown() before exit, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes buffered spans and stops the exporter. The SDK's shutdown blocks (it waits for
    /// the batch thread's last export), so it runs on the blocking pool; the runtime stays free
    /// to drive a gRPC exporter meanwhile.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans at exit failed"),
            Err(e) => tracing::warn!(error = %e, "flushing spans at exit failed"),
        }
    }
}

/// Installs the global subscriber without an exporter (one-shot commands). Call once.
pub fn init_logging(format: LogFormat) {
    install(format, None);
}

/// Installs the global subscriber with the OTLP exporter when `otlp` is given. Call once,
/// inside the Tokio runtime, and [`Telemetry::shutdown`] before exit.
pub fn init(format: LogFormat, otlp: Option<&OtlpSettings>) -> Result<Telemetry, TelemetryError> {
    let provider = otlp.map(otlp::build_provider).transpose()?;
    install(format, provider.as_ref());
    if let Some(s) = otlp {
        tracing::info!(endpoint = %s.endpoint, protocol = ?s.protocol, service = %s.service_name, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// Colour codes only on a terminal, and never when `NO_COLOR` is set (to anything but empty):
/// `docker logs`, journald and files get plain text.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Routes panics through `tracing`, so that with `LETTUCE_LOG_FORMAT=json` every line of stderr
/// stays one JSON object (the default hook writes several plain lines). A handler's panic is
/// still caught by its attempt and recorded as the attempt's error.
fn route_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-text payload".to_string());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "lettuce_worker::panic", panic = %payload, %location, thread = thread.name().unwrap_or("unnamed"), backtrace = %backtrace, "panic");
        } else {
            tracing::error!(target: "lettuce_worker::panic", panic = %payload, %location, thread = thread.name().unwrap_or("unnamed"), "panic");
        }
    }));
}

fn install(format: LogFormat, provider: Option<&SdkTracerProvider>) {
    route_panics();
    let otel = provider.map(otel_layer);
    let log_filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Backend-only spans never reach the log layer, whatever RUST_LOG says.
    let not_backend_only = || filter_fn(|m| m.target() != SPAN_TARGET);
    let registry = tracing_subscriber::registry().with(otel);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(crate::redact::stderr)
                    .with_filter(log_filter())
                    .with_filter(not_backend_only()),
            )
            .init(),
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(colour())
                    .with_writer(crate::redact::stderr)
                    .with_filter(log_filter())
                    .with_filter(not_backend_only()),
            )
            .init(),
    }
}

/// The exporter layer with its filter: backend spans, and this crate's INFO+ events (which
/// become events of the span they happen in). Public so tests run the same layer against an
/// in-memory exporter.
pub fn otel_layer(provider: &SdkTracerProvider) -> impl Layer<Registry> + Send + Sync + use<> {
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("lettuce-worker"))
        .with_filter(
            Targets::new()
                .with_target(SPAN_TARGET, tracing::Level::TRACE)
                .with_target("lettuce_worker", tracing::Level::INFO),
        )
}

/// The span of one attempt, named `job.<kind>`, parented to `traceparent` when it parses.
/// Disabled (and free) when nothing exports spans.
pub fn job_span(
    id: i64,
    kind: &str,
    queue: &str,
    attempt: i32,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "job",
        otel.name = format!("job.{kind}").as_str(),
        otel.kind = "consumer",
        job.id = id,
        job.kind = kind,
        job.queue = queue,
        job.attempt = attempt,
        job.outcome = Empty,
        error.message = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if !span.is_disabled()
        && let Some(parent) = traceparent.and_then(context_from_traceparent)
    {
        // Only fails when the span was already started elsewhere, which it was not.
        let _ = span.set_parent(parent);
    }
    span
}

/// Records how the attempt ended: `job.outcome`, and on failure the ERROR status and the error.
pub fn record_outcome(span: &tracing::Span, outcome: &str, error: Option<&str>) {
    span.record("job.outcome", outcome);
    if let Some(error) = error {
        span.record("error.message", error);
        span.record("otel.status_code", "error");
        span.record("otel.status_description", error);
    }
}

/// A child span for one SQL statement. `statement` is the text with `$n` placeholders.
pub fn sql_span(
    name: &'static str,
    operation: &'static str,
    statement: &'static str,
) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        "db",
        otel.name = name,
        otel.kind = "client",
        db.system = "postgresql",
        db.operation = operation,
        db.statement = statement.trim(),
        db.rows = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Marks a SQL (or HTTP) span as failed.
pub fn record_error(span: &tracing::Span, error: &dyn std::fmt::Display) {
    if !span.is_disabled() {
        let text = error.to_string();
        span.record("otel.status_code", "error");
        span.record("otel.status_description", text.as_str());
    }
}

/// A span for one outbound HTTP request (telemetry heartbeat, secret stores). The query string
/// is dropped: it may carry credentials. Record `http.response.status_code` when it answers.
pub fn http_client_span(method: &str, url: &str) -> tracing::Span {
    let (host, full) = sanitize_url(url);
    tracing::info_span!(
        target: SPAN_TARGET,
        "http",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        server.address = host.as_str(),
        url.full = full.as_str(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// A span for one S3 request (`S3.PutObject`, `S3.UploadPart`, …): the HTTP client attributes
/// of [`http_client_span`] plus the AWS ones. Record `http.response.status_code` when it answers.
pub fn s3_client_span(
    operation: &str,
    method: &str,
    url: &str,
    bucket: &str,
    key: &str,
) -> tracing::Span {
    let (host, full) = sanitize_url(url);
    let name = format!("S3.{operation}");
    tracing::info_span!(
        target: SPAN_TARGET,
        "s3",
        otel.name = name.as_str(),
        otel.kind = "client",
        rpc.system = "aws-api",
        rpc.service = "S3",
        rpc.method = operation,
        aws.s3.bucket = bucket,
        aws.s3.key = key,
        http.request.method = method,
        server.address = host.as_str(),
        url.full = full.as_str(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// `(host, url)` of a URL without its query, fragment and userinfo: they may carry credentials.
fn sanitize_url(url: &str) -> (String, String) {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            (host.to_string(), format!("{scheme}://{host}{path}"))
        }
        None => (String::new(), without_query.to_string()),
    }
}

/// The W3C `traceparent` of the current span, when a sampled or unsampled trace is active and
/// exported; `None` otherwise (no exporter: nothing to link to).
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Parses a W3C `traceparent` into a remote parent context; `None` when it does not parse.
pub fn context_from_traceparent(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    fn with_exporter(f: impl FnOnce()) -> Vec<opentelemetry_sdk::trace::SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let sub = tracing_subscriber::registry().with(otel_layer(&provider));
        tracing::subscriber::with_default(sub, f);
        provider.force_flush().unwrap();
        exporter.get_finished_spans().unwrap()
    }

    fn attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn job_span_has_contract_names_and_remote_parent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let spans = with_exporter(|| {
            let span = job_span(42, "diag.fail", "default", 3, Some(tp));
            record_outcome(&span, "error", Some("boom"));
        });
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.name, "job.diag.fail");
        assert_eq!(s.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert_eq!(attr(s, "job.id").as_deref(), Some("42"));
        assert_eq!(attr(s, "job.kind").as_deref(), Some("diag.fail"));
        assert_eq!(attr(s, "job.queue").as_deref(), Some("default"));
        assert_eq!(attr(s, "job.attempt").as_deref(), Some("3"));
        assert_eq!(attr(s, "job.outcome").as_deref(), Some("error"));
        assert_eq!(attr(s, "error.message").as_deref(), Some("boom"));
        assert_eq!(s.status, opentelemetry::trace::Status::error("boom"));
        assert_eq!(
            s.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(s.parent_span_id.to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn traceparent_round_trips_and_garbage_is_ignored() {
        assert!(context_from_traceparent("not a traceparent").is_none());
        assert!(current_traceparent().is_none(), "no exporter, no context");
        let mut seen = None;
        let spans = with_exporter(|| {
            let root = tracing::info_span!(target: SPAN_TARGET, "root");
            let _g = root.enter();
            seen = current_traceparent();
        });
        let tp = seen.expect("a traceparent inside an exported span");
        let root = &spans[0];
        assert_eq!(
            tp,
            format!(
                "00-{}-{}-01",
                root.span_context.trace_id(),
                root.span_context.span_id()
            )
        );
    }

    #[test]
    fn http_span_drops_query_and_userinfo() {
        let spans = with_exporter(|| {
            let s = http_client_span(
                "POST",
                "https://user:pw@t.example:8443/v1/heartbeat?token=x",
            );
            s.record("http.response.status_code", 202);
        });
        let s = &spans[0];
        assert_eq!(s.name, "POST");
        assert_eq!(
            attr(s, "url.full").as_deref(),
            Some("https://t.example:8443/v1/heartbeat")
        );
        assert_eq!(attr(s, "server.address").as_deref(), Some("t.example:8443"));
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("202"));
    }
}
