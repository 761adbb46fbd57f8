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
//! | `job.<kind>` ([`job_span`]) | consumer | `job.id`, `job.kind`, `job.queue`, `job.attempt`, `job.outcome`, `messaging.system`=`lettuce`, `messaging.operation.type`=`process`, `messaging.destination.name` (the queue), `messaging.message.id` (the id as text); on failure status ERROR with the error text, `error.message` and `error.type` ([`error_type`]); a link to the `db.claim_batch` span that claimed it |
//! | `enqueue <queue>` ([`producer_span`]) | producer | `messaging.system`, `messaging.operation.type`=`send`, `messaging.operation.name`=`enqueue`, `messaging.destination.name`, `messaging.message.id` (one job) or `messaging.batch.message_count` |
//! | `db.claim_batch`, `db.complete_batch`, `db.heartbeat`, `db.<statement>` ([`sql_span`]) | client | `db.system.name`=`postgresql`, `db.operation.name`, `db.collection.name`, `db.query.text` (placeholders, never values), `server.address`, `server.port` (none for a Unix socket), `db.rows`; the batched ones link to the spans they serve |
//! | `http.client` helper ([`http_client_span`]) | client | `http.request.method`, `server.address`, `url.full` (no query), `http.response.status_code` |
//! | `S3.<Operation>` ([`s3_client_span`]) | client | the HTTP ones plus `rpc.system`=`aws-api`, `rpc.service`=`S3`, `rpc.method`, `aws.s3.bucket`, `aws.s3.key` |
//!
//! A job span is the child of the `traceparent` stored with the job when there is one (and
//! `OTEL_PROPAGATORS` includes `tracecontext`); the Rust enqueue API stores its producer span's
//! context ([`traceparent_of`]) unless the caller gave one. SQL a handler makes through `db::*`
//! is a child of the job span (the handler runs inside it). Every helper checks
//! `span.is_disabled()` first: without an exporter, spans, links and ids cost nothing.
//!
//! With `LETTUCE_LOG_FORMAT=json` and an exporter, a log line written inside a sampled span
//! carries its `trace_id` and `span_id` ([`JsonWithTraceIds`]).
//!
//! [`heartbeat`] is the daily telemetry ping (README "Telemetry").

pub(crate) mod condition;
pub mod otlp;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets, filter_fn};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
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
    #[cfg(feature = "testing")]
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
/// inside the Tokio runtime, and [`Telemetry::shutdown`] before exit. `instance_id` becomes the
/// resource's `service.instance.id` (the worker id for `run`).
pub fn init(
    format: LogFormat,
    otlp: Option<&OtlpSettings>,
    instance_id: &str,
) -> Result<Telemetry, TelemetryError> {
    let provider = otlp
        .map(|s| otlp::build_provider(s, instance_id))
        .transpose()?;
    if let Some(s) = otlp {
        PROPAGATE_TRACECONTEXT.store(s.propagators.tracecontext, Ordering::Relaxed);
    }
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
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

/// deadpool's own WARN lines ("Connection could not be recycled", one per pooled connection
/// after a database restart) are left out: the pool replaces such connections by itself, and
/// the runtime's retry loops report the outage once each (`condition.rs`). Added to `RUST_LOG`
/// unless it names deadpool itself.
const QUIET_DEADPOOL: &str = "deadpool=error,deadpool.postgres=error";

/// The log filter: `RUST_LOG` (default `info`) plus [`QUIET_DEADPOOL`].
fn log_filter_spec(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) if spec.contains("deadpool") => spec.to_string(),
        Some(spec) => format!("{spec},{QUIET_DEADPOOL}"),
        None => format!("info,{QUIET_DEADPOOL}"),
    }
}

fn install(format: LogFormat, provider: Option<&SdkTracerProvider>) {
    route_panics();
    subscriber(format, provider).init();
}

/// The process's subscriber: the exporter layer (when spans are exported) and the log layer.
fn subscriber(
    format: LogFormat,
    provider: Option<&SdkTracerProvider>,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    // Without an exporter the slot holds a layer that wants nothing. Not `None`: an absent
    // `Option` layer declares interest in every callsite, so every span would be built (and
    // `job_span` would format its name) for nobody — a tenth of the per-job CPU.
    let otel: Box<dyn Layer<Registry> + Send + Sync> = match provider {
        Some(p) => Box::new(otel_layer(p)),
        None => Box::new(tracing_subscriber::layer::Identity::new().with_filter(LevelFilter::OFF)),
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    let log_filter = EnvFilter::try_new(log_filter_spec(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(log_filter_spec(None)));
    // Backend-only spans never reach the log layer, whatever RUST_LOG says.
    let not_backend_only = filter_fn(|m| m.target() != SPAN_TARGET);
    let registry = tracing_subscriber::registry().with(otel);
    match format {
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .map_event_format(JsonWithTraceIds)
                    .with_writer(crate::redact::stderr)
                    .with_filter(log_filter)
                    .with_filter(not_backend_only),
            ),
        ),
        LogFormat::Human => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(colour())
                    .with_writer(crate::redact::stderr)
                    .with_filter(log_filter)
                    .with_filter(not_backend_only),
            ),
        ),
    }
}

/// The exporter layer with its filter: backend spans, and this crate's INFO+ events (which
/// become events of the span they happen in). Public so tests run the same layer against an
/// in-memory exporter.
pub fn otel_layer(provider: &SdkTracerProvider) -> impl Layer<Registry> + Send + Sync + use<> {
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("lettuce-worker"))
        // No per-span noise: source locations, threads, busy/idle times and the `tracing` target
        // say nothing a trace backend can use, and cost bytes on every span.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_filter(
            Targets::new()
                .with_target(SPAN_TARGET, tracing::Level::TRACE)
                .with_target("lettuce_worker", tracing::Level::INFO),
        )
}

/// True while spans are exported (set by [`init`]); log lines look for trace ids only then.
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// False when `OTEL_PROPAGATORS` leaves out `tracecontext`: nothing is stored with a job nor
/// read back from one.
static PROPAGATE_TRACECONTEXT: AtomicBool = AtomicBool::new(true);

/// The span of one attempt, named `job.<kind>`, parented to `traceparent` when it parses and
/// linked to the claim span that claimed it. Disabled (and free: nothing is allocated) when
/// nothing exports spans.
pub fn job_span(
    id: i64,
    kind: &str,
    queue: &str,
    attempt: i32,
    traceparent: Option<&str>,
    claim: Option<&SpanContext>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "job",
        otel.name = Empty,
        otel.kind = "consumer",
        job.id = id,
        job.kind = kind,
        job.queue = queue,
        job.attempt = attempt,
        job.outcome = Empty,
        messaging.system = "lettuce",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.message.id = Empty,
        error.message = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record("otel.name", format!("job.{kind}").as_str());
    span.record("messaging.message.id", id.to_string().as_str());
    if let Some(parent) = traceparent.and_then(context_from_traceparent) {
        // Only fails when the span was already started elsewhere, which it was not.
        let _ = span.set_parent(parent);
    }
    if let Some(claim) = claim {
        span.add_link(claim.clone());
    }
    span
}

/// The `error.type` of a failed attempt, a closed low-cardinality set: `panic`, `timeout`,
/// `handler_error` (a retryable error the handler returned, or an aborted attempt),
/// `discarded` (a permanent error, or a row that cannot be decoded), `lost` (the lease was
/// taken away). `None` for the outcomes that are no failure.
pub fn error_type(outcome: &str, error: Option<&str>) -> Option<&'static str> {
    match outcome {
        "lost" => Some("lost"),
        "discarded" => Some("discarded"),
        "error" => Some(match error {
            Some(e) if e.starts_with("panic:") => "panic",
            Some(e) if e.starts_with("timeout:") => "timeout",
            _ => "handler_error",
        }),
        _ => None,
    }
}

/// Records how the attempt ended: `job.outcome`, and on failure the ERROR status, the error
/// and its `error.type`.
pub fn record_outcome(span: &tracing::Span, outcome: &str, error: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    span.record("job.outcome", outcome);
    if let Some(kind) = error_type(outcome, error) {
        span.record("error.type", kind);
    }
    if let Some(error) = error {
        span.record("error.message", error);
        span.record("otel.status_code", "error");
        span.record("otel.status_description", error);
    }
}

/// The span context of an exported span, to link to or carry; `None` (nothing allocated) when
/// the span is disabled.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to each of `contexts` (no work when the span is disabled).
pub fn add_links<'a>(span: &tracing::Span, contexts: impl IntoIterator<Item = &'a SpanContext>) {
    if span.is_disabled() {
        return;
    }
    for cx in contexts {
        span.add_link(cx.clone());
    }
}

/// The PRODUCER span of an enqueue: `enqueue <queue>` (`enqueue` when a batch spans several
/// queues). Its context is what the enqueue stores as the jobs' `traceparent`.
pub fn producer_span(queue: Option<&str>, count: usize) -> tracing::Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "enqueue",
        otel.name = Empty,
        otel.kind = "producer",
        messaging.system = "lettuce",
        messaging.operation.type = "send",
        messaging.operation.name = "enqueue",
        messaging.destination.name = Empty,
        messaging.message.id = Empty,
        messaging.batch.message_count = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    match queue {
        Some(q) => {
            span.record("otel.name", format!("enqueue {q}").as_str());
            span.record("messaging.destination.name", q);
        }
        None => {
            span.record("otel.name", "enqueue");
        }
    }
    if count != 1 {
        span.record("messaging.batch.message_count", count as i64);
    }
    span
}

/// Where the pools connect to, for `server.address` / `server.port` of SQL spans (set once, by
/// the first pool built: every pool of a process points at the same database).
static DB_SERVER: OnceLock<(String, Option<u16>)> = OnceLock::new();

/// Records the database server SQL spans name: a host and port, or for a Unix socket the
/// socket directory and no port. Never the URL (it may hold a password).
pub fn set_db_server(address: String, port: Option<u16>) {
    let _ = DB_SERVER.set((address, port));
}

/// A span for one SQL statement, a child of the current span (the job span, for a handler's
/// SQL). `statement` is the text with `$n` placeholders; `collection` the main table.
pub fn sql_span(
    name: &'static str,
    operation: &'static str,
    collection: &'static str,
    statement: &'static str,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "db",
        otel.name = name,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = collection,
        db.query.text = statement.trim(),
        server.address = Empty,
        server.port = Empty,
        db.rows = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if !span.is_disabled()
        && let Some((address, port)) = DB_SERVER.get()
    {
        span.record("server.address", address.as_str());
        if let Some(port) = port {
            span.record("server.port", *port);
        }
    }
    span
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

#[cfg(any(test, feature = "testing"))]
/// The W3C `traceparent` of the current span, when a sampled or unsampled trace is active and
/// exported; `None` otherwise (no exporter: nothing to link to).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`; `None` when it is not exported or `OTEL_PROPAGATORS`
/// leaves out `tracecontext`.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() || !PROPAGATE_TRACECONTEXT.load(Ordering::Relaxed) {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Parses a W3C `traceparent` into a remote parent context; `None` when it does not parse (or
/// `OTEL_PROPAGATORS` leaves out `tracecontext`).
pub fn context_from_traceparent(traceparent: &str) -> Option<opentelemetry::Context> {
    if !PROPAGATE_TRACECONTEXT.load(Ordering::Relaxed) {
        return None;
    }
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The remote span context a stored `traceparent` names, for links.
pub fn span_context_from_traceparent(traceparent: &str) -> Option<SpanContext> {
    context_from_traceparent(traceparent).map(|cx| cx.span().span_context().clone())
}

/// The JSON log format plus `trace_id` and `span_id` of the current OpenTelemetry span, when
/// spans are exported and that span is sampled. The other fields are the standard JSON
/// formatter's, untouched: its line is written first, then the two fields are appended.
pub struct JsonWithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for JsonWithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = if EXPORTING.load(Ordering::Relaxed) {
            current_sampled_ids()
        } else {
            None
        };
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(body) => writeln!(
                writer,
                "{body},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Trace and span id (hex) of the current span when it is exported and sampled.
fn current_sampled_ids() -> Option<(String, String)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled())
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests;
