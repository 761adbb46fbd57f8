use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn no_endpoint_means_no_exporter() {
    assert!(settings_from_env(&env(&[])).unwrap().is_none());
    assert!(
        settings_from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]))
            .unwrap()
            .is_none()
    );
    assert!(
        settings_from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ]))
        .unwrap()
        .is_none()
    );
    assert!(
        settings_from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ]))
        .unwrap()
        .is_none()
    );
}

#[test]
fn http_base_endpoint_gets_the_traces_path_and_signal_endpoint_is_kept() {
    let s = settings_from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]))
        .unwrap()
        .unwrap();
    assert_eq!(s.endpoint, "http://c:4318/v1/traces");
    assert_eq!(s.protocol, Protocol::HttpProtobuf);
    assert_eq!(s.service_name, "lettuce-worker");
    assert_eq!(s.sampler, SamplerSetting::ParentBasedAlwaysOn);
    let s = settings_from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(s.endpoint, "http://t:9/custom");
    let s = settings_from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (s.endpoint.as_str(), s.protocol),
        ("http://c:4317", Protocol::Grpc)
    );
}

#[test]
fn bad_values_name_the_variable_and_hide_header_values() {
    let e = settings_from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("ConfigError: OTEL_EXPORTER_OTLP_PROTOCOL:"),
        "{e}"
    );
    let e = settings_from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t,broken"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("OTEL_EXPORTER_OTLP_HEADERS") && !e.contains("s3cr3t"),
        "{e}"
    );
    let e = settings_from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    assert!(settings_from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")])).is_err());
}

#[test]
fn headers_service_name_and_sampler() {
    let s = settings_from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%3Db, x-team = core"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "API-KEY=override"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment=prod,service.name=from-attrs",
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
    ]))
    .unwrap()
    .unwrap();
    let h: Vec<(String, String)> = s
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().clone()))
        .collect();
    assert_eq!(
        h,
        vec![
            ("x-team".to_string(), "core".to_string()),
            ("API-KEY".to_string(), "override".to_string())
        ]
    );
    assert!(!format!("{s:?}").contains("override"));
    assert_eq!(s.service_name, "from-attrs");
    assert_eq!(s.sampler, SamplerSetting::ParentBasedTraceIdRatio(0.25));
    assert_eq!(s.timeout, Some(Duration::from_millis(1500)));
    let s = settings_from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_SERVICE_NAME", "lettuce-eu"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(s.service_name, "lettuce-eu");
}

#[test]
fn propagators_default_list_and_refusal() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    let s = settings_from_env(&env(&[base])).unwrap().unwrap();
    assert_eq!(s.propagators, Propagators::default());
    assert!(s.propagators.tracecontext);
    let s = settings_from_env(&env(&[base, ("OTEL_PROPAGATORS", "baggage, tracecontext")]))
        .unwrap()
        .unwrap();
    assert_eq!(
        s.propagators,
        Propagators {
            tracecontext: true,
            baggage: true
        }
    );
    let s = settings_from_env(&env(&[base, ("OTEL_PROPAGATORS", "none")]))
        .unwrap()
        .unwrap();
    assert!(!s.propagators.tracecontext && !s.propagators.baggage);
    let e = settings_from_env(&env(&[base, ("OTEL_PROPAGATORS", "tracecontext,b3")]))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("ConfigError: OTEL_PROPAGATORS:"), "{e}");
    assert!(e.contains("\"b3\""), "names the value: {e}");
}

#[test]
fn compression_gzip_none_and_refusal() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    let s = settings_from_env(&env(&[base])).unwrap().unwrap();
    assert_eq!(s.compression, Compression::None);
    let s = settings_from_env(&env(&[base, ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]))
        .unwrap()
        .unwrap();
    assert_eq!(s.compression, Compression::Gzip);
    // The signal-specific variable wins.
    let s = settings_from_env(&env(&[
        base,
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(s.compression, Compression::None);
    let e = settings_from_env(&env(&[
        base,
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("ConfigError: OTEL_EXPORTER_OTLP_TRACES_COMPRESSION:"),
        "{e}"
    );
}

#[tokio::test]
async fn gzip_exporters_build_for_both_protocols() {
    for protocol in ["http/protobuf", "grpc"] {
        let s = settings_from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]))
        .unwrap()
        .unwrap();
        let provider = build_provider(&s, "host:1:abc").expect(protocol);
        let _ = provider.shutdown();
    }
}
