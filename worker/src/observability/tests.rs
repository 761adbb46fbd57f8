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
fn job_and_sql_spans_are_not_built_when_nothing_exports_them_whatever_the_log_level() {
    let quiet = subscriber(LogFormat::Json, None);
    tracing::subscriber::with_default(quiet, || {
        assert!(job_span(1, "diag.noop", "default", 1, None, None).is_disabled());
        assert!(sql_span("db.claim_batch", "UPDATE", "lettuce.job_queue", "UPDATE x").is_disabled());
        // The log layer still takes this crate's events: only the backend spans are gone.
        assert!(tracing::enabled!(target: "lettuce_worker", tracing::Level::ERROR));
    });
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing::subscriber::with_default(subscriber(LogFormat::Human, Some(&provider)), || {
        assert!(!job_span(1, "diag.noop", "default", 1, None, None).is_disabled());
    });
}

#[test]
fn job_span_has_contract_names_and_remote_parent() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let spans = with_exporter(|| {
        let span = job_span(42, "diag.fail", "default", 3, Some(tp), None);
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
    assert_eq!(attr(s, "messaging.system").as_deref(), Some("lettuce"));
    assert_eq!(
        attr(s, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attr(s, "messaging.destination.name").as_deref(),
        Some("default")
    );
    assert_eq!(attr(s, "messaging.message.id").as_deref(), Some("42"));
    assert_eq!(attr(s, "error.type").as_deref(), Some("handler_error"));
}

#[test]
fn spans_carry_no_location_thread_timing_or_target_noise() {
    let spans = with_exporter(|| {
        let span = job_span(1, "diag.noop", "default", 1, None, None);
        let _g = span.enter();
        let sql = sql_span("db.x", "SELECT", "lettuce.job_queue", "SELECT $1");
        drop(sql);
    });
    assert_eq!(spans.len(), 2);
    for s in &spans {
        for noise in [
            "code.filepath",
            "code.file.path",
            "code.namespace",
            "code.lineno",
            "code.line.number",
            "thread.id",
            "thread.name",
            "busy_ns",
            "idle_ns",
            "target",
        ] {
            assert_eq!(attr(s, noise), None, "{noise} on {}", s.name);
        }
    }
}

#[test]
fn error_types_are_a_closed_set() {
    assert_eq!(error_type("completed", None), None);
    assert_eq!(error_type("snoozed", None), None);
    assert_eq!(error_type("error", Some("panic: x")), Some("panic"));
    assert_eq!(
        error_type("error", Some("timeout: attempt exceeded 5 ms")),
        Some("timeout")
    );
    assert_eq!(error_type("error", Some("nope")), Some("handler_error"));
    assert_eq!(error_type("discarded", Some("p")), Some("discarded"));
    assert_eq!(error_type("lost", None), Some("lost"));
}

#[test]
fn sql_span_uses_stable_db_names_and_links() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let spans = with_exporter(|| {
        let s = sql_span(
            "db.claim_batch",
            "UPDATE",
            "lettuce.job_queue",
            "  UPDATE lettuce.job_queue SET x = $1 ",
        );
        add_links(&s, [&span_context_from_traceparent(tp).unwrap()]);
    });
    let s = &spans[0];
    assert_eq!(s.name, "db.claim_batch");
    assert_eq!(attr(s, "db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(attr(s, "db.operation.name").as_deref(), Some("UPDATE"));
    assert_eq!(
        attr(s, "db.collection.name").as_deref(),
        Some("lettuce.job_queue")
    );
    assert_eq!(
        attr(s, "db.query.text").as_deref(),
        Some("UPDATE lettuce.job_queue SET x = $1")
    );
    for old in ["db.system", "db.operation", "db.statement"] {
        assert_eq!(attr(s, old), None, "{old}");
    }
    assert_eq!(s.links.len(), 1);
    assert_eq!(
        s.links[0].span_context.span_id().to_string(),
        "00f067aa0ba902b7"
    );
}

#[test]
fn producer_span_becomes_the_stored_parent() {
    let mut stored = None;
    let spans = with_exporter(|| {
        let p = producer_span(Some("mail"), 1);
        stored = traceparent_of(&p);
        p.record("messaging.message.id", "9");
    });
    let p = &spans[0];
    assert_eq!(p.name, "enqueue mail");
    assert_eq!(p.span_kind, opentelemetry::trace::SpanKind::Producer);
    assert_eq!(attr(p, "messaging.operation.type").as_deref(), Some("send"));
    assert_eq!(
        attr(p, "messaging.destination.name").as_deref(),
        Some("mail")
    );
    assert_eq!(attr(p, "messaging.message.id").as_deref(), Some("9"));
    assert_eq!(
        stored,
        Some(format!(
            "00-{}-{}-01",
            p.span_context.trace_id(),
            p.span_context.span_id()
        ))
    );
}

#[test]
fn disabled_spans_do_no_work() {
    // No subscriber: every helper returns at once, nothing to link or carry.
    let span = job_span(1, "k", "q", 1, Some("garbage"), None);
    assert!(span.is_disabled());
    assert!(span_context(&span).is_none());
    assert!(traceparent_of(&producer_span(Some("q"), 1)).is_none());
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

#[test]
fn the_log_filter_quiets_deadpool_unless_rust_log_names_it() {
    assert_eq!(
        log_filter_spec(None),
        "info,deadpool=error,deadpool.postgres=error"
    );
    assert_eq!(
        log_filter_spec(Some(" ")),
        "info,deadpool=error,deadpool.postgres=error"
    );
    assert_eq!(
        log_filter_spec(Some("debug")),
        "debug,deadpool=error,deadpool.postgres=error"
    );
    assert_eq!(
        log_filter_spec(Some("info,deadpool=debug")),
        "info,deadpool=debug"
    );
    // Every spec parses, and deadpool's WARN is below what the default lets through.
    for spec in [log_filter_spec(None), log_filter_spec(Some("warn"))] {
        tracing_subscriber::EnvFilter::try_new(&spec).unwrap();
    }
}
