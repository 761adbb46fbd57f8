//! Unit tests of the metrics: the rendered families and the label alphabet.

use super::*;
use std::time::Duration;

#[tokio::test]
async fn renders_every_family_with_labels() {
    let m = Metrics::default();
    let s = m.job_series("diag.noop", "default");
    s.attempt_started(Duration::from_millis(30));
    s.attempt_finished("completed", Duration::from_millis(2));
    m.job_series("diag.noop", "default")
        .attempt_started(Duration::from_millis(10));
    s.job_final("completed");
    // A label outside the known set still counts, under its own (sanitized) value.
    m.job_series("diag.noop", "other\nq").attempt_finished("weird\"", Duration::ZERO);
    let text = m.render().await;
    assert!(text.contains(
        "lettuce_job_attempts_total{kind=\"diag.noop\",queue=\"default\",outcome=\"completed\"} 1"
    ));
    assert!(text.contains(
        "lettuce_jobs_final_total{kind=\"diag.noop\",queue=\"default\",state=\"completed\"} 1"
    ));
    assert!(text.contains("lettuce_telemetry_heartbeats_total{result=\"sent\"} 0"));
    assert!(text.contains("# TYPE process_cpu_seconds counter"));
    assert!(text.contains("process_open_fds "));
    assert!(text.contains("lettuce_jobs_in_flight{queue=\"default\"} 1"));
    assert!(text.contains("lettuce_job_pickup_latency_seconds_count{queue=\"default\"} 2"));
    assert!(text.contains(
        "lettuce_job_attempt_duration_seconds_count{kind=\"diag.noop\",queue=\"default\"} 1"
    ));
    assert!(text.contains("# TYPE lettuce_listen_reconnects counter"));
    assert!(text.contains(
        "lettuce_job_attempts_total{kind=\"diag.noop\",queue=\"other_q\",outcome=\"weird_\"} 1"
    ));
    assert!(text.trim_end().ends_with("# EOF"));
}

#[test]
fn label_values_keep_the_name_alphabet_only() {
    assert_eq!(label("repo.index"), "repo.index");
    assert_eq!(label("tenant-a:high_1"), "tenant-a:high_1");
    assert_eq!(label("evil\"} 1\n# x{q=\""), "evil___1___x_q__");
    assert_eq!(label("é"), "_");
    assert_eq!(label(&"a".repeat(500)).len(), MAX_LABEL_LEN);
}
