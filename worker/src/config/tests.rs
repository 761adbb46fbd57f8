//! Unit tests of the configuration: defaults, the layering, every spelling each variable family
//! accepts, and secrets that never show in errors or `Debug`.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_from_an_empty_environment() {
    let c = Config::load(&Env::new()).unwrap();
    assert_eq!(
        c.database_url.expose(),
        "postgres:///lettuce?host=/var/run/postgresql"
    );
    assert!(!c.self_hosted);
    assert_eq!(
        c.queues,
        vec![QueueConfig {
            name: "default".into(),
            concurrency: 10
        }]
    );
    assert_eq!(c.lease, Duration::from_secs(60));
    assert_eq!(c.retention.completed, Duration::from_secs(86_400));
    assert_eq!(c.retention.discarded, Duration::from_secs(7 * 86_400));
    assert_eq!(c.http_addr, Some("0.0.0.0:9090".parse().unwrap()));
    assert!(c.s3.is_none());
}

#[test]
fn every_bad_variable_is_named_in_one_error() {
    let err = Config::load(&env(&[
        ("LETTUCE_SELF_HOSTED", "maybe"),
        ("LETTUCE_QUEUES", "default=zero"),
        ("LETTUCE_LEASE_MS", "soon"),
        ("LETTUCE_HTTP_ADDR", "nowhere"),
    ]))
    .unwrap_err();
    let mut names: Vec<_> = err.vars.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "LETTUCE_HTTP_ADDR",
            "LETTUCE_LEASE_MS",
            "LETTUCE_QUEUES",
            "LETTUCE_SELF_HOSTED"
        ]
    );
    assert_eq!(names.len(), 4, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("accepted: true/false/1/0/yes/no/on/off"),
        "{text}"
    );
}

#[test]
fn booleans_accept_every_documented_spelling() {
    for (s, b) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("On", true),
        ("false", false),
        ("0", false),
        ("no", false),
        ("OFF", false),
        ("False", false),
    ] {
        assert_eq!(parse_bool(s), Some(b), "{s}");
    }
    assert_eq!(parse_bool("y"), None);
    assert_eq!(parse_bool(""), None);
}

#[test]
fn secret_values_never_appear_in_errors_or_debug() {
    let err = Config::load(&env(&[
        ("LETTUCE_SELF_HOSTED", "hunter2-not-a-bool"),
        ("DATABASE_URL", "postgres://u:supersecret@db/x"),
        ("LETTUCE_LICENSE_KEY", "eyJsecret.token.value"),
    ]))
    .unwrap_err();
    assert!(!err.to_string().contains("supersecret"));
    let ok = Config::load(&env(&[
        ("DATABASE_URL", "postgres://u:supersecret@db/x"),
        ("LETTUCE_LICENSE_KEY", "eyJsecret.token.value"),
        ("GITHUB_APP_CLIENT_SECRET", "ghsecret"),
    ]))
    .unwrap();
    let debug = format!("{ok:?}");
    assert!(!debug.contains("supersecret"));
    assert!(!debug.contains("eyJsecret"));
    assert!(!debug.contains("ghsecret"));
}

/// A config file of its own for one test.
fn toml(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("lettuce-cfg-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn toml_file_is_layered_under_the_environment() {
    let path = toml(
        "layered",
        "lettuce_queues = \"a=1,b=2\"\nlettuce_lease_ms = 5000\nlettuce_diag_jobs = true\n",
    );
    let c = Config::load(&env(&[
        ("LETTUCE_CONFIG", path.to_str().unwrap()),
        ("LETTUCE_LEASE_MS", "7000"),
    ]))
    .unwrap();
    assert_eq!(c.queues.len(), 2);
    assert_eq!(c.lease, Duration::from_millis(7000));
    assert!(c.diag_jobs);
}

#[test]
fn a_missing_config_file_or_unknown_key_is_an_error() {
    let err = Config::load(&env(&[("LETTUCE_CONFIG", "/nonexistent/worker.toml")])).unwrap_err();
    assert!(err.to_string().contains("not found"));
    let path = toml("unknown", "lettuce_queuez = \"a=1\"\n");
    let err = Config::load(&env(&[("LETTUCE_CONFIG", path.to_str().unwrap())])).unwrap_err();
    assert!(
        err.to_string().contains("unknown key `lettuce_queuez`"),
        "{err}"
    );
}

#[test]
fn raw_config_debug_never_shows_a_secret_value() {
    let raw = RawConfig::layer(&env(&[
        ("DATABASE_URL", "postgres://u:DBSECRET@h/d"),
        ("LETTUCE_LICENSE_KEY", "LICENSESECRET"),
        ("LETTUCE_QUEUES", "default=3"),
    ]))
    .unwrap();
    let shown = format!("{raw:?}");
    assert!(!shown.contains("DBSECRET"), "{shown}");
    assert!(!shown.contains("LICENSESECRET"), "{shown}");
    assert!(
        shown.contains("\"DATABASE_URL\": \"<redacted>\""),
        "{shown}"
    );
    assert!(shown.contains("default=3"), "{shown}");
}

#[test]
fn a_toml_syntax_error_names_the_line_and_kind_never_the_text() {
    let path = toml(
        "unterminated",
        "lettuce_queues = \"default=2\"\ndatabase_url = \"postgres://lettuce:PASSWORD@db/lettuce\n",
    );
    let err = Config::load(&env(&[("LETTUCE_CONFIG", path.to_str().unwrap())]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not valid TOML at line 2"), "{err}");
    assert!(!err.contains("PASSWORD"), "{err}");
    assert!(!err.contains("postgres://"), "{err}");
    let path = toml("bare", "database_url = postgres://u:SECRET@h/d\n");
    let err = Config::load(&env(&[("LETTUCE_CONFIG", path.to_str().unwrap())]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at line 1"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
}

#[test]
fn deprecated_telemetry_alias_is_folded_in() {
    let c = Config::load(&env(&[("LETTUCE_TELEMETRY_DISABLED", "1")])).unwrap();
    assert!(!c.telemetry_enabled);
    assert!(c.telemetry_deprecated_alias_used);
    let c = Config::load(&env(&[("LETTUCE_TELEMETRY_ENABLED", "off")])).unwrap();
    assert!(!c.telemetry_enabled);
    assert!(!c.telemetry_deprecated_alias_used);
}

#[test]
fn queues_and_retention_parse() {
    assert_eq!(parse_queues("default=10, reports=2").unwrap().len(), 2);
    assert!(parse_queues("default").is_err());
    assert!(parse_queues("a=1,a=2").is_err());
    assert!(parse_queues("").is_err());
    let r = parse_retention("12h").unwrap();
    assert_eq!(r.cancelled, Duration::from_secs(12 * 3600));
    let r = parse_retention("completed=1h").unwrap();
    assert_eq!(r.completed, Duration::from_secs(3600));
    assert_eq!(r.discarded, Duration::from_secs(7 * 86_400));
    assert!(parse_retention("completed=soon").is_err());
    assert!(parse_retention("99999d").unwrap_err().contains("3650d"));
    assert!(parse_retention("completed=3650d").is_ok());
    // Delete on success: `completed=0` (or `0s`), the rest kept as by default.
    let r = parse_retention("completed=0").unwrap();
    assert_eq!(
        (r.completed, r.discarded),
        (Duration::ZERO, Duration::from_secs(7 * 86_400))
    );
    assert_eq!(
        parse_retention("completed=0s").unwrap().completed,
        Duration::ZERO
    );
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
}

#[test]
fn s3_path_style_defaults_on_with_an_endpoint() {
    let c = Config::load(&env(&[
        ("CODEWAZE_S3_BUCKET", "b"),
        ("CODEWAZE_S3_ENDPOINT", "http://127.0.0.1:9000"),
    ]))
    .unwrap();
    assert!(c.s3.unwrap().force_path_style);
    let c = Config::load(&env(&[("CODEWAZE_S3_BUCKET", "b")])).unwrap();
    assert!(!c.s3.unwrap().force_path_style);
}
