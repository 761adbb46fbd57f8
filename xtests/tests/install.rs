//! The install path, guarded by reading it: the compose stack, `.env.example`, the Dockerfile
//! and `.dockerignore` are parsed and checked point by point (no Docker engine runs here), and
//! `worker init` runs as a real binary against licenses minted in the test.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::{Signer as _, SigningKey};
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parse_yaml(text: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(text).expect("YAML parses");
    assert_eq!(docs.len(), 1, "exactly one YAML document");
    docs.remove(0)
}

fn compose() -> Yaml {
    parse_yaml(&read("compose/docker-compose.yml"))
}

fn service<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &doc["services"][name];
    assert!(!s.is_badvalue(), "service `{name}` exists");
    s
}

/// A mapping key's presence (yaml-rust2 indexes missing keys as BadValue).
fn has(node: &Yaml, key: &str) -> bool {
    !node[key].is_badvalue()
}

fn str_of<'a>(node: &'a Yaml, what: &str) -> &'a str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what} is a string, got {node:?}"))
}

/// `${NAME:-default}` → `default`; other text unchanged.
fn default_of(value: &str) -> &str {
    value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once(":-"))
        .map(|(_, d)| d)
        .unwrap_or(value)
}

/// A service's `environment` as a map, in either the mapping or the list form.
fn environment(svc: &Yaml) -> BTreeMap<String, String> {
    let env = &svc["environment"];
    let mut out = BTreeMap::new();
    if let Some(h) = env.as_hash() {
        for (k, v) in h {
            let value = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Boolean(b) => b.to_string(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("environment value {other:?}"),
            };
            out.insert(str_of(k, "environment key").to_string(), value);
        }
    } else if let Some(list) = env.as_vec() {
        for item in list {
            let (k, v) = str_of(item, "environment item")
                .split_once('=')
                .expect("NAME=value");
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// A compose duration (`40s`, `1m30s`, `500ms`).
fn compose_duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            unit.push(chars.next().unwrap());
        }
        let n: u64 = number.parse().expect("number before unit");
        number.clear();
        total += match unit.as_str() {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            other => panic!("unknown duration unit {other} in {text}"),
        };
    }
    assert!(number.is_empty(), "duration {text} ends with a unit");
    total
}

/// What stops `docker compose up --scale worker=N` from working, or makes a replica different
/// from another. Empty when the service scales.
fn worker_scaling_problems(doc: &Yaml) -> Vec<String> {
    let worker = &doc["services"]["worker"];
    let mut problems = Vec::new();
    if has(worker, "container_name") {
        problems.push("worker has container_name (replicas would clash on the name)".into());
    }
    if has(worker, "ports") {
        problems.push("worker publishes host ports (replicas would clash on the port)".into());
    }
    if has(worker, "hostname") {
        problems.push("worker has a fixed hostname (replicas would share it)".into());
    }
    if worker["network_mode"].as_str() == Some("host") {
        problems.push("worker uses host networking (replicas would clash on :9090)".into());
    }
    if has(worker, "deploy") && !worker["deploy"]["replicas"].is_badvalue() {
        problems.push("worker pins deploy.replicas (overrides --scale)".into());
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// compose/docker-compose.yml
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_postgres_is_16_with_a_healthcheck_and_a_volume() {
    let doc = compose();
    let pg = service(&doc, "postgres");
    let image = default_of(str_of(&pg["image"], "postgres image"));
    assert!(image.starts_with("postgres:16"), "{image}");
    let test = format!("{:?}", pg["healthcheck"]["test"]);
    assert!(test.contains("pg_isready"), "{test}");
    let env = environment(pg);
    assert_eq!(env["POSTGRES_USER"], "lettuce");
    assert_eq!(env["POSTGRES_DB"], "lettuce");
    assert!(env["POSTGRES_PASSWORD"].starts_with("${POSTGRES_PASSWORD:?"));
    let volumes = pg["volumes"].as_vec().expect("postgres volumes");
    let data = volumes
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.ends_with(":/var/lib/postgresql/data"))
        .expect("a volume on /var/lib/postgresql/data");
    let name = data.split(':').next().unwrap();
    assert!(
        has(&doc["volumes"], name),
        "`{name}` is a named top-level volume, so data survives `docker compose down`"
    );
}

#[test]
fn compose_minio_is_healthchecked_and_a_one_shot_creates_the_bucket() {
    let doc = compose();
    let minio = service(&doc, "minio");
    assert!(default_of(str_of(&minio["image"], "minio image")).starts_with("minio/minio:"));
    assert!(
        has(&minio["healthcheck"], "test"),
        "minio has a healthcheck"
    );
    assert!(
        minio["volumes"]
            .as_vec()
            .expect("minio volumes")
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/data")))
    );

    let init = service(&doc, "minio-init");
    assert!(default_of(str_of(&init["image"], "mc image")).starts_with("minio/mc:"));
    assert_eq!(
        str_of(&init["depends_on"]["minio"]["condition"], "condition"),
        "service_healthy"
    );
    assert_ne!(
        init["restart"].as_str(),
        Some("always"),
        "a one-shot job must not restart"
    );
    let command = format!("{:?}", init["command"]);
    assert!(command.contains("mc mb --ignore-existing"), "{command}");
    // The bucket it creates is the one the worker is told to use.
    let env = environment(init);
    assert!(env["BUCKET"].contains("CODEWAZE_S3_BUCKET"));
    assert!(command.contains("http://minio:9000"));
}

#[test]
fn compose_worker_image_build_env_and_dependencies() {
    let doc = compose();
    let worker = service(&doc, "worker");
    assert_eq!(
        str_of(&worker["image"], "worker image"),
        "ghcr.io/uselettuce/worker:${LETTUCE_VERSION:?set LETTUCE_VERSION in .env}"
    );
    // The build fallback points at this repository's Dockerfile.
    let context = str_of(&worker["build"]["context"], "build context");
    let dockerfile = str_of(&worker["build"]["dockerfile"], "dockerfile");
    assert!(
        repo_root()
            .join("compose")
            .join(context)
            .join(dockerfile)
            .is_file(),
        "build context {context} has {dockerfile}"
    );
    let env_files: Vec<&str> = match &worker["env_file"] {
        Yaml::String(s) => vec![s.as_str()],
        Yaml::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        other => panic!("env_file {other:?}"),
    };
    assert_eq!(env_files, [".env"]);
    assert_eq!(environment(worker)["LETTUCE_SELF_HOSTED"], "true");
    let deps = &worker["depends_on"];
    for (name, condition) in [
        ("postgres", "service_healthy"),
        ("minio", "service_healthy"),
        ("minio-init", "service_completed_successfully"),
    ] {
        assert_eq!(
            str_of(&deps[name]["condition"], "condition"),
            condition,
            "worker depends on {name}"
        );
    }
    let test: Vec<&str> = worker["healthcheck"]["test"]
        .as_vec()
        .expect("healthcheck test list")
        .iter()
        .map(|v| str_of(v, "test item"))
        .collect();
    assert_eq!(test, ["CMD", "worker", "healthcheck"]);
}

#[test]
fn compose_worker_scales_and_outlives_its_shutdown_grace() {
    let doc = compose();
    assert_eq!(worker_scaling_problems(&doc), Vec::<String>::new());

    let grace = lettuce_worker::config::Config::load(&HashMap::new())
        .expect("defaults load")
        .shutdown_grace;
    let stop = compose_duration(str_of(
        &doc["services"]["worker"]["stop_grace_period"],
        "stop_grace_period",
    ));
    // The drain (completer flush, hand-back, presence row) needs a few seconds after the grace.
    assert!(
        stop >= grace + Duration::from_secs(10),
        "stop_grace_period {stop:?} must exceed LETTUCE_SHUTDOWN_GRACE_MS {grace:?} with room to drain"
    );
    if let Some(signal) = doc["services"]["worker"]["stop_signal"].as_str() {
        assert_eq!(signal, "SIGTERM");
    }
}

#[test]
fn the_scaling_check_catches_container_name_and_ports() {
    let text = read("compose/docker-compose.yml");
    let anchor = "  worker:\n";
    assert!(text.contains(anchor));
    for (added, expect) in [
        ("    container_name: lettuce-worker\n", "container_name"),
        ("    ports:\n      - \"9090:9090\"\n", "host ports"),
        ("    network_mode: host\n", "host networking"),
    ] {
        let mutated = text.replacen(anchor, &format!("{anchor}{added}"), 1);
        let problems = worker_scaling_problems(&parse_yaml(&mutated));
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "adding {added:?} is caught: {problems:?}"
        );
    }
}

#[test]
fn compose_observability_profile_runs_an_otel_collector() {
    let doc = compose();
    let collector = service(&doc, "otel-collector");
    let profiles: Vec<&str> = collector["profiles"]
        .as_vec()
        .expect("profiles")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(profiles, ["observability"]);
    assert!(
        default_of(str_of(&collector["image"], "collector image"))
            .contains("opentelemetry-collector")
    );
    // No service outside the profile depends on it, or a plain `up` would fail.
    for (name, svc) in doc["services"].as_hash().unwrap() {
        assert!(
            svc["depends_on"]["otel-collector"].is_badvalue(),
            "{name:?} depends on the optional collector"
        );
    }
    // Its configuration file is mounted from compose/ and receives OTLP for traces.
    let mount = collector["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.starts_with("./"))
        .expect("config mount");
    let file = mount.split(':').next().unwrap().trim_start_matches("./");
    let config = parse_yaml(&read(&format!("compose/{file}")));
    assert!(has(&config["receivers"]["otlp"]["protocols"], "http"));
    assert!(has(&config["receivers"]["otlp"]["protocols"], "grpc"));
    let receivers = format!(
        "{:?}",
        config["service"]["pipelines"]["traces"]["receivers"]
    );
    assert!(receivers.contains("otlp"), "{receivers}");
}

/// Issue 17: the same profile's Prometheus scrapes every `--scale`d worker through DNS service
/// discovery on the compose network (one A record per replica of the service `worker`), at the
/// worker's metrics port (`LETTUCE_HTTP_ADDR`'s default, 9090).
#[test]
fn compose_observability_prometheus_scrapes_every_worker_replica() {
    let doc = compose();
    let prometheus = service(&doc, "prometheus");
    assert_eq!(
        format!("{:?}", prometheus["profiles"]),
        format!("{:?}", service(&doc, "otel-collector")["profiles"]),
        "in the observability profile"
    );
    assert!(
        default_of(str_of(&prometheus["image"], "prometheus image"))
            .starts_with("prom/prometheus:v")
    );
    // Published on loopback only, and nothing depends on it.
    for port in prometheus["ports"].as_vec().expect("ports") {
        assert!(str_of(port, "port").starts_with("127.0.0.1:"), "{port:?}");
    }
    for (name, svc) in doc["services"].as_hash().unwrap() {
        assert!(
            svc["depends_on"]["prometheus"].is_badvalue(),
            "{name:?} depends on prometheus"
        );
    }
    let mount = &prometheus["configs"][0];
    assert_eq!(
        str_of(&mount["target"], "config target"),
        "/etc/prometheus/prometheus.yml"
    );
    let source = str_of(&mount["source"], "config source");
    let config = parse_yaml(str_of(&doc["configs"][source]["content"], "inline config"));
    let jobs = config["scrape_configs"].as_vec().expect("scrape_configs");
    let worker_job = jobs
        .iter()
        .find(|j| !j["dns_sd_configs"].is_badvalue())
        .expect("a scrape job with dns_sd_configs");
    let sd = &worker_job["dns_sd_configs"][0];
    assert_eq!(str_of(&sd["type"], "type"), "A");
    let names: Vec<&str> = sd["names"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(
        names,
        ["worker"],
        "the worker service's name, which resolves to every replica"
    );
    assert!(has(&doc["services"], "worker"));
    let port = sd["port"].as_i64().expect("port");
    let default_addr = lettuce_worker::config::Config::load(&HashMap::new())
        .expect("defaults load")
        .http_addr
        .expect("served by default");
    assert_eq!(
        port,
        i64::from(default_addr.port()),
        "the worker's metrics port"
    );
    let path = worker_job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    assert!(has(&doc["volumes"], "prometheus-data"));
}

// ---------------------------------------------------------------------------------------------
// compose/.env.example
// ---------------------------------------------------------------------------------------------

/// Variable name → its description (the comment block it sits in), for `NAME=` and `# NAME=`.
fn env_example() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut description = String::new();
    for line in read("compose/.env.example").lines() {
        let line = line.trim();
        if line.is_empty() {
            description.clear();
            continue;
        }
        let assignment = line.trim_start_matches('#').trim_start();
        let is_assignment = assignment.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        if is_assignment {
            let name = assignment.split_once('=').unwrap().0.to_string();
            out.insert(name, description.clone());
        } else if let Some(comment) = line.strip_prefix('#') {
            description.push_str(comment.trim());
            description.push(' ');
        }
    }
    out
}

#[test]
fn env_example_lists_every_variable_the_worker_reads_with_a_comment() {
    let listed = env_example();
    let mut missing = Vec::new();
    for name in lettuce_worker::config::VARIABLES {
        match listed.get(*name) {
            None => missing.push(format!("{name}: not listed")),
            Some(d) if d.trim().len() < 10 => missing.push(format!("{name}: no comment")),
            Some(_) => {}
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn env_example_sets_every_variable_the_compose_file_requires() {
    let text = read("compose/docker-compose.yml");
    let listed = env_example();
    let mut rest = text.as_str();
    let mut required = Vec::new();
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after.find('}').expect("closing brace");
        let expr = &after[..end];
        if let Some((name, _)) = expr.split_once(":?") {
            required.push(name.to_string());
        }
        rest = &after[end..];
    }
    assert!(required.contains(&"LETTUCE_VERSION".to_string()));
    for name in required {
        assert!(listed.contains_key(&name), "{name} is required by compose");
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile and .dockerignore
// ---------------------------------------------------------------------------------------------

/// Dockerfile instructions, continuation lines joined, comments dropped: (KEYWORD, arguments).
fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

/// One Dockerfile instruction: (KEYWORD, arguments).
type Instruction = (String, String);

/// One build stage: (name after `AS`, base image, its instructions).
type Stage = (String, String, Vec<Instruction>);

/// The stages of the Dockerfile, in order.
fn stages() -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for (keyword, args) in dockerfile() {
        if keyword == "FROM" {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let name = match parts.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push((name, parts[0].to_string(), Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.2.push((keyword, args));
        }
    }
    stages
}

#[test]
fn dockerfile_builder_caches_dependencies_before_sources() {
    let stages = stages();
    assert!(stages.len() >= 2, "multi-stage");
    let (name, image, steps) = &stages[0];
    assert_eq!(name, "builder");
    assert!(image.starts_with("rust:"), "{image}");
    let position = |pred: &dyn Fn(&(String, String)) -> bool| steps.iter().position(pred);
    let manifests =
        position(&|(k, a)| k == "COPY" && a.contains("Cargo.toml") && a.contains("Cargo.lock"))
            .expect("COPY of the manifests");
    let schema = position(&|(k, a)| k == "COPY" && a.starts_with("schema"))
        .expect("COPY of schema/ (build.rs embeds it)");
    let dep_build =
        position(&|(k, a)| k == "RUN" && a.contains("cargo build")).expect("a dependency build");
    let sources = position(&|(k, a)| k == "COPY" && a.starts_with("worker "))
        .expect("COPY of the worker sources");
    let final_build = steps
        .iter()
        .rposition(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .unwrap();
    assert!(
        manifests < dep_build && schema < dep_build,
        "manifests and schema/ before the dependency build"
    );
    assert!(
        dep_build < sources,
        "the dependency layer is built before the sources are copied"
    );
    assert!(
        sources < final_build,
        "the real build comes after the sources"
    );
    assert!(steps[dep_build].1.contains("--locked"));
    // `worker init` embeds the compose files, so the builder must have them.
    let compose_copy = position(&|(k, a)| {
        k == "COPY"
            && a.contains("compose/docker-compose.yml")
            && a.contains("compose/otel-collector.yaml")
    })
    .expect("COPY of the compose files");
    assert!(compose_copy < final_build);
}

#[test]
fn dockerfile_runtime_is_slim_non_root_and_healthchecked() {
    let stages = stages();
    let (_, image, steps) = stages.last().unwrap();
    assert_eq!(image, "debian:bookworm-slim");
    let all = |k: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|(kw, _)| kw == k)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let runs = all("RUN").join(" && ");
    assert!(
        runs.contains("apt-get install")
            && runs.contains("ca-certificates")
            && runs.contains(" git"),
        "{runs}"
    );
    assert!(
        runs.contains("rm -rf /var/lib/apt/lists"),
        "apt lists are cleaned"
    );

    let user = *all("USER").last().expect("USER");
    let user_name = user.split(':').next().unwrap();
    assert!(
        user_name != "root" && user_name != "0",
        "non-root USER, got {user}"
    );
    assert!(runs.contains("useradd"), "the user is created");
    for dir in ["/var/lib/lettuce/data", "/var/cache/lettuce"] {
        assert!(
            runs.contains("mkdir -p") && runs.contains(dir),
            "{dir} is created"
        );
        let chown = runs
            .split("&&")
            .find(|c| c.trim_start().starts_with("chown"))
            .expect("a chown");
        assert!(
            chown.contains(dir) && chown.contains(user_name),
            "{dir} is writable by {user_name}"
        );
    }
    let envs = all("ENV").join(" ");
    assert!(
        envs.contains("CODEWAZE_DATA_DIR=/var/lib/lettuce/data"),
        "{envs}"
    );
    assert!(envs.contains("LETTUCE_LICENSE_PUBLIC_KEY=/var/lib/lettuce/public.pem"));

    let key_copy = all("COPY")
        .into_iter()
        .find(|a| a.ends_with("/var/lib/lettuce/public.pem"))
        .expect("the bundled public key is copied");
    assert!(key_copy.contains("worker/assets/public.pem"));
    assert!(
        key_copy.contains("--chown=root"),
        "the key is root-owned: {key_copy}"
    );
    assert!(
        all("COPY")
            .iter()
            .any(|a| a.contains("--from=builder") && a.contains("/usr/local/bin/worker"))
    );

    let healthcheck = all("HEALTHCHECK").join(" ");
    assert!(
        healthcheck.ends_with(r#"CMD ["worker", "healthcheck"]"#),
        "{healthcheck}"
    );
    assert_eq!(all("ENTRYPOINT"), [r#"["worker"]"#]);
    assert_eq!(all("CMD"), [r#"["run"]"#]);
    let labels = all("LABEL").join(" ");
    for key in [
        "title",
        "description",
        "source",
        "version",
        "revision",
        "licenses",
    ] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "OCI label {key}"
        );
    }
}

#[test]
fn dockerignore_admits_what_the_dockerfile_copies_and_nothing_secret() {
    let rules: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert_eq!(
        rules.first().map(String::as_str),
        Some("*"),
        "an allow-list"
    );
    let allowed = |path: &str| {
        rules.iter().filter_map(|r| r.strip_prefix('!')).any(|a| {
            let a = a.trim_end_matches('/');
            path == a || path.starts_with(&format!("{a}/"))
        })
    };
    for (keyword, args) in dockerfile() {
        if keyword != "COPY" || args.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            assert!(
                allowed(source.trim_end_matches('/')),
                "COPY {source} is in the build context"
            );
        }
    }
    for secret in ["compose/.env", "target/release/worker", ".git/config"] {
        assert!(!allowed(secret), "{secret} stays out of the build context");
    }
}

#[test]
fn the_bundled_public_key_is_an_ed25519_spki_pem() {
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let pem = read("worker/assets/public.pem");
    let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).expect("Ed25519 SPKI PEM");
    assert!(!key.is_weak());
    assert!(
        !pem.contains("PRIVATE"),
        "only the public key is in the repository"
    );
}

// ---------------------------------------------------------------------------------------------
// worker init
// ---------------------------------------------------------------------------------------------

struct Vendor {
    key: SigningKey,
    pem: String,
}

impl Vendor {
    fn new() -> Vendor {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM");
        Vendor { key, pem }
    }

    /// A license that expires `days` from now.
    fn mint(&self, days: i64) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "sub": "acme-corp", "jti": "lic-0001", "iat": now - 60, "exp": now + days * 86_400,
            "seats": 50, "repos": 200, "telemetry_required": true,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// The public key in a file, for `--public-key PATH`.
    fn pem_file(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("vendor.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// A fresh scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "lettuce-init-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn init(token: &str, public_key: Option<&str>, out: &Path, force: bool) -> (i32, String, String) {
    let out = out.display().to_string();
    let mut args = vec![
        "init",
        "--license-key",
        token,
        "--domain",
        "lettuce.example.com",
        "--version",
        "1.4.2",
        "--out",
        &out,
    ];
    if let Some(k) = public_key {
        args.extend(["--public-key", k]);
    }
    if force {
        args.push("--force");
    }
    xtests::run_worker(&args, &HashMap::new())
}

fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

const SECRETS: &[&str] = &[
    "POSTGRES_PASSWORD",
    "CODEWAZE_ADMIN_TOKEN",
    "JWT_SIGNING_KEY",
    "MINIO_ROOT_PASSWORD",
];

#[test]
fn init_writes_a_stack_that_matches_the_compose_services() {
    let vendor = Vendor::new();
    let scratch = Scratch::new();
    let key_path = vendor.pem_file(&scratch.0.join("keys"));
    let out = scratch.0.join("lettuce");
    let token = vendor.mint(365);

    let (code, stdout, stderr) = init(&token, Some(key_path.to_str().unwrap()), &out, false);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        !stderr.contains("WARN"),
        "a year-long license does not warn: {stderr}"
    );

    for name in [
        ".env",
        "docker-compose.yml",
        "otel-collector.yaml",
        "public.pem",
        "README.md",
    ] {
        assert!(out.join(name).is_file(), "{name} written");
    }
    assert_eq!(mode(&out.join(".env")), 0o600);
    assert_eq!(
        std::fs::read_to_string(out.join("public.pem")).unwrap(),
        vendor.pem
    );

    let env = parse_env_file(&std::fs::read_to_string(out.join(".env")).unwrap());
    assert_eq!(env["LETTUCE_LICENSE_KEY"], token);
    assert_eq!(env["LETTUCE_DOMAIN"], "lettuce.example.com");
    assert_eq!(env["LETTUCE_VERSION"], "1.4.2");
    assert_eq!(env["LETTUCE_TELEMETRY_ENABLED"], "true");
    assert_eq!(env["LETTUCE_SELF_HOSTED"], "true");
    let mut values: Vec<&str> = SECRETS.iter().map(|n| env[*n].as_str()).collect();
    for (name, value) in SECRETS.iter().zip(&values) {
        assert_eq!(value.len(), 43, "{name} is 32 bytes of unpadded base64url");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(value).expect("base64url").len(),
            32,
            "{name}"
        );
    }
    values.sort();
    values.dedup();
    assert_eq!(values.len(), SECRETS.len(), "every secret is distinct");

    // The connection settings point at the services of the compose file it wrote.
    let stack = parse_yaml(&std::fs::read_to_string(out.join("docker-compose.yml")).unwrap());
    let pg = environment(service(&stack, "postgres"));
    assert_eq!(
        env["DATABASE_URL"],
        format!(
            "postgres://{}:{}@postgres:5432/{}",
            pg["POSTGRES_USER"], env["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
        )
    );
    assert_eq!(env["CODEWAZE_S3_ENDPOINT"], "http://minio:9000");
    assert_eq!(env["CODEWAZE_S3_ACCESS_KEY_ID"], env["MINIO_ROOT_USER"]);
    assert_eq!(
        env["CODEWAZE_S3_SECRET_ACCESS_KEY"],
        env["MINIO_ROOT_PASSWORD"]
    );
    assert_eq!(env["CODEWAZE_S3_FORCE_PATH_STYLE"], "true");

    // The worker image is pinned; the build fallback is gone; the custom key is mounted.
    let worker = service(&stack, "worker");
    assert_eq!(
        str_of(&worker["image"], "image"),
        "ghcr.io/uselettuce/worker:1.4.2"
    );
    assert!(
        !has(worker, "build"),
        "no build fallback without a source tree"
    );
    assert!(
        format!("{:?}", worker["volumes"]).contains("./public.pem:/var/lib/lettuce/public.pem:ro")
    );
    assert_eq!(worker_scaling_problems(&stack), Vec::<String>::new());
    for name in ["postgres", "minio", "minio-init", "otel-collector"] {
        assert_eq!(
            service(&stack, name),
            service(&compose(), name),
            "{name} as in compose/"
        );
    }

    // The worker's own configuration accepts the .env as its environment.
    let config = lettuce_worker::config::Config::load(&env.clone().into_iter().collect())
        .expect("the written .env is a valid worker configuration");
    assert!(config.self_hosted);
    assert_eq!(
        config.s3.expect("S3 configured").bucket,
        env["CODEWAZE_S3_BUCKET"]
    );

    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for command in [
        format!("cd {}", out.display()),
        "docker compose up -d".into(),
        "--scale worker=".into(),
    ] {
        assert!(readme.contains(&command), "README has `{command}`");
    }
    assert!(
        stdout.contains("docker compose up -d"),
        "stdout has the next commands"
    );

    // Neither the key nor any secret is printed.
    for value in std::iter::once(token.as_str()).chain(SECRETS.iter().map(|n| env[*n].as_str())) {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "a secret was printed"
        );
    }
}

#[test]
fn init_refuses_to_overwrite_without_force_and_backs_up_with_it() {
    let vendor = Vendor::new();
    let scratch = Scratch::new();
    let out = scratch.0.join("lettuce");
    let token = vendor.mint(365);
    let (code, _, stderr) = init(&token, Some(&vendor.pem), &out, false);
    assert_eq!(code, 0, "{stderr}");
    let before = snapshot(&out);
    let first_env = parse_env_file(std::str::from_utf8(&before[".env"]).unwrap());

    // Without --force: exit 1, a clear message, and not one byte changed.
    let (code, stdout, stderr) = init(&token, Some(&vendor.pem), &out, false);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains(".env") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert_eq!(snapshot(&out), before, "files untouched");

    // With --force: the old .env is kept (still private), the new one has new secrets.
    let (code, stdout, stderr) = init(&token, Some(&vendor.pem), &out, true);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let after = snapshot(&out);
    let backups: Vec<&String> = after
        .keys()
        .filter(|n| n.starts_with(".env.bak-"))
        .collect();
    assert_eq!(backups.len(), 1, "{:?}", after.keys());
    assert_eq!(
        after[backups[0]], before[".env"],
        "the backup is the previous .env"
    );
    assert_eq!(
        mode(&out.join(backups[0])),
        0o600,
        "the backup stays private"
    );
    assert_eq!(mode(&out.join(".env")), 0o600);
    let second_env = parse_env_file(std::str::from_utf8(&after[".env"]).unwrap());
    for name in SECRETS {
        assert_ne!(first_env[*name], second_env[*name], "{name} is fresh");
    }
    // Files whose content did not change are not backed up.
    assert!(!after.keys().any(|n| n.starts_with("public.pem.bak-")));
    assert!(
        stdout.contains(backups[0].as_str()),
        "stdout names the backup: {stdout}"
    );
    for name in SECRETS {
        assert!(!stdout.contains(&first_env[*name]) && !stdout.contains(&second_env[*name]));
    }
}

#[test]
fn init_rejects_bad_keys_with_exit_3_and_writes_nothing() {
    let vendor = Vendor::new();
    let other = Vendor::new();
    let scratch = Scratch::new();
    let cases = [
        ("not-a-jwt", Some(vendor.pem.as_str()), "LicenseMalformed"),
        ("a.b", Some(vendor.pem.as_str()), "LicenseMalformed"),
        (
            &other.mint(365)[..],
            Some(vendor.pem.as_str()),
            "LicenseInvalid",
        ),
        (
            &vendor.mint(-3)[..],
            Some(vendor.pem.as_str()),
            "LicenseExpired",
        ),
        // No --public-key: the bundled key is used, and it did not sign this token.
        (&vendor.mint(365)[..], None, "LicenseInvalid"),
        (
            &vendor.mint(365)[..],
            Some("/nonexistent/key.pem"),
            "LicensePublicKeyError",
        ),
    ];
    for (i, (token, key, expect)) in cases.iter().enumerate() {
        let out = scratch.0.join(format!("case{i}"));
        let (code, stdout, stderr) = init(token, *key, &out, false);
        assert_eq!(code, 3, "case {i}: stdout:\n{stdout}\nstderr:\n{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(expect),
            "case {i}: last stderr line {last:?}"
        );
        assert!(!out.exists(), "case {i}: nothing written");
        assert!(
            !stdout.contains(token) && !stderr.contains(token),
            "case {i}: key printed"
        );
    }
}

#[test]
fn init_warns_when_the_license_expires_within_14_days() {
    let vendor = Vendor::new();
    let scratch = Scratch::new();
    let out = scratch.0.join("lettuce");
    let token = vendor.mint(5);
    let (code, stdout, stderr) = init(&token, Some(&vendor.pem), &out, false);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let warn = stderr
        .lines()
        .find(|l| l.starts_with("WARN"))
        .expect("a WARN line");
    assert!(warn.contains("days left"), "{warn}");
    assert!(out.join(".env").is_file());
}

// ---------------------------------------------------------------------------------------------
// An install story that is true: one version, keys off the command line, docs that stay in
// the repository, a stripped binary, a systemd unit
// ---------------------------------------------------------------------------------------------

/// The release this checkout builds (the workspace version, what `worker --version` prints).
const VERSION: &str = lettuce_worker::VERSION;

/// The `key = value` pairs of one `[section]` of a TOML file (quotes stripped; enough for the
/// flat manifests here).
fn toml_section(text: &str, section: &str) -> BTreeMap<String, String> {
    let header = format!("[{section}]");
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if !inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// Every file of the repository an operator or a contributor reads as documentation: Markdown
/// and text files anywhere, and the install files (Dockerfile, compose/, packaging/, helm/).
/// Paths relative to the repository root.
fn doc_files() -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(root.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = rel.join(&name);
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    walk(root, &path, out);
                }
                continue;
            }
            let top = path
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .into_owned();
            let is_doc = name.ends_with(".md")
                || name.ends_with(".txt")
                || name == "Dockerfile"
                || matches!(top.as_str(), "compose" | "packaging" | "helm");
            if kind.is_file() && is_doc {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_root(), Path::new(""), &mut out);
    // Hidden files of the install directories (compose/.env.example).
    for dir in ["compose", "packaging"] {
        if let Ok(entries) = std::fs::read_dir(repo_root().join(dir)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && e.file_type().unwrap().is_file() {
                    out.push(Path::new(dir).join(name));
                }
            }
        }
    }
    out.sort();
    out
}

/// The lines of example commands in a documentation file, continuation lines (`\`) joined:
/// Markdown code blocks (indented or fenced), and in other files the commented command lines
/// (`#   docker …`).
fn command_lines(rel: &Path) -> Vec<String> {
    let markdown = rel.extension().is_some_and(|e| e == "md");
    lines_of_commands(&read(rel.to_str().unwrap()), markdown)
}

fn lines_of_commands(text: &str, markdown: bool) -> Vec<String> {
    let mut raw = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if markdown {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                raw.push(line.to_string());
            } else if let Some(code) = line.strip_prefix("    ") {
                raw.push(code.to_string());
            } else {
                raw.push(String::new()); // a block ends
            }
        } else if let Some(comment) = line.trim_start().strip_prefix('#')
            && comment.starts_with("  ")
        {
            raw.push(comment.trim().to_string());
        } else {
            raw.push(String::new());
        }
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for line in raw {
        if let Some(body) = line.trim_end().strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(&line);
        out.push(std::mem::take(&mut current));
    }
    out
}

/// The code blocks of a Markdown file, each as its logical lines (continuations joined).
fn code_blocks(rel: &str) -> Vec<Vec<String>> {
    code_blocks_of(&read(rel))
}

fn code_blocks_of(markdown: &str) -> Vec<Vec<String>> {
    let mut blocks = vec![Vec::new()];
    for line in lines_of_commands(markdown, true) {
        if line.trim().is_empty() {
            if !blocks.last().unwrap().is_empty() {
                blocks.push(Vec::new());
            }
        } else {
            blocks.last_mut().unwrap().push(line);
        }
    }
    blocks.retain(|b| !b.is_empty());
    blocks
}

/// One `## ` section of a Markdown text, heading included, up to the next `## ` heading.
fn markdown_section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("section {heading:?}"))
        + 1;
    let end = text[start + heading.len()..]
        .find("\n## ")
        .map_or(text.len(), |i| start + heading.len() + i + 1);
    &text[start..end]
}

/// Characters of an image tag or a version.
fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Every mention of this product's release in a text: the worker image tag, `VERSION=` /
/// `LETTUCE_VERSION=` values, `--version X`, `appVersion:`. Variables (`${…}`, `$X`) and
/// placeholders (`…`, `<…>`) are not mentions.
fn version_mentions(text: &str) -> Vec<String> {
    let value_at = |rest: &str| -> Option<String> {
        let rest = rest.trim_start_matches(['"', '\'']);
        let tag: String = rest.chars().take_while(|c| is_tag_char(*c)).collect();
        (!tag.is_empty() && !tag.starts_with('-')).then_some(tag)
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices("uselettuce/worker:") {
        out.extend(value_at(&text[i + "uselettuce/worker:".len()..]));
    }
    for (i, _) in text.match_indices("VERSION=") {
        let before = &text[..i];
        let prefix_ok = before.ends_with("LETTUCE_")
            || !before
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if prefix_ok {
            out.extend(value_at(&text[i + "VERSION=".len()..]));
        }
    }
    for (i, _) in text.match_indices("--version ") {
        out.extend(
            value_at(&text[i + "--version ".len()..])
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit())),
        );
    }
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("appVersion:") {
            out.extend(value_at(v.trim()));
        }
    }
    out
}

#[test]
fn version_mentions_finds_tags_and_skips_variables() {
    let text = r#"ghcr.io/uselettuce/worker:1.4.2 init --version 1.4.2
image: ghcr.io/uselettuce/worker:${LETTUCE_VERSION:?set}
ARG RUST_VERSION=1.95
ARG VERSION=0.1.0
--build-arg VERSION=… LETTUCE_VERSION=2.0 echo VERSION=$VERSION `worker --version`
appVersion: "0.3.0""#;
    assert_eq!(
        version_mentions(text),
        ["1.4.2", "0.1.0", "2.0", "1.4.2", "0.3.0"]
    );
}

#[test]
fn one_release_version_everywhere() {
    let workspace = toml_section(&read("Cargo.toml"), "workspace.package");
    assert_eq!(
        workspace.get("version").map(String::as_str),
        Some(VERSION),
        "the workspace version is the crate's"
    );

    let mut wrong = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for file in doc_files() {
        let name = file.display().to_string();
        for v in version_mentions(&read(&name)) {
            *seen.entry(name.clone()).or_default() += 1;
            if v != VERSION {
                wrong.push(format!("{name}: {v}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "every release mention is {VERSION}: {wrong:#?}"
    );
    for file in [
        "README.md",
        "Dockerfile",
        "compose/.env.example",
        "helm/lettuce-worker/Chart.yaml",
    ] {
        assert!(seen.contains_key(file), "{file} names the release");
    }
    assert_eq!(env_example_value("LETTUCE_VERSION"), VERSION);
    let chart = parse_yaml(&read("helm/lettuce-worker/Chart.yaml"));
    assert_eq!(str_of(&chart["appVersion"], "appVersion"), VERSION);

    // The honest caveat, and the build that stands in for the pull until images exist.
    let readme = read("README.md");
    let docker = markdown_section(&readme, "## Install with Docker");
    assert!(docker.contains("No image is published yet"), "the caveat");
    assert!(
        docker.contains("unauthorized") && docker.contains("manifest unknown"),
        "the errors a pull gives today"
    );
    let blocks = code_blocks("README.md");
    let build = format!("docker build -t ghcr.io/uselettuce/worker:{VERSION} .");
    assert!(
        blocks.iter().flatten().any(|l| l.trim() == build),
        "README builds the image first: `{build}`"
    );
    let from_repo = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.trim() == "cd compose"))
        .expect("the compose/ block");
    let joined = from_repo.join("\n");
    let (b, u) = (
        joined.find("docker compose build worker"),
        joined.find("docker compose up -d"),
    );
    assert!(
        matches!((b, u), (Some(b), Some(u)) if b < u),
        "compose/ builds before it starts:\n{joined}"
    );
    assert!(!joined.contains("docker compose pull"), "{joined}");
    let quick = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.contains(" init ")))
        .expect("the quick-start block");
    assert!(
        !quick.iter().any(|l| l.contains("docker compose pull")),
        "no pull of an image that does not exist: {quick:#?}"
    );
    for (file, text) in [
        (
            "compose/docker-compose.yml",
            read("compose/docker-compose.yml"),
        ),
        ("compose/.env.example", read("compose/.env.example")),
    ] {
        let (b, u) = (
            text.find("docker compose build worker"),
            text.find("docker compose up -d"),
        );
        assert!(
            matches!((b, u), (Some(b), Some(u)) if b < u),
            "{file}: build before up"
        );
    }
}

/// The value of a `NAME=value` line of `compose/.env.example`.
fn env_example_value(name: &str) -> String {
    read("compose/.env.example")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name}= in .env.example"))
        .trim()
        .to_string()
}

#[test]
fn the_image_version_is_the_crate_version_or_the_build_fails() {
    let instructions = dockerfile();
    let first_from = instructions
        .iter()
        .position(|(k, _)| k == "FROM")
        .expect("FROM");
    let global_default = instructions[..first_from]
        .iter()
        .find_map(|(k, a)| (k == "ARG").then(|| a.strip_prefix("VERSION=")).flatten())
        .expect("a global `ARG VERSION=…`");
    assert_eq!(global_default, VERSION, "the default VERSION build-arg");

    let stages = stages();
    let (_, _, builder) = &stages[0];
    let declares = |steps: &[Instruction]| steps.iter().any(|(k, a)| k == "ARG" && a == "VERSION");
    assert!(declares(&builder[..]), "the builder stage sees VERSION");
    let guard_at = builder
        .iter()
        .position(|(k, a)| {
            k == "RUN" && a.contains("Cargo.toml") && a.contains("$VERSION") && !a.contains("cargo")
        })
        .expect("a RUN that compares VERSION with Cargo.toml");
    let dep_build = builder
        .iter()
        .position(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .unwrap();
    let final_build = builder
        .iter()
        .rposition(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .unwrap();
    assert!(
        dep_build < guard_at && guard_at < final_build,
        "the guard runs after the cached dependency layer and before the real build"
    );
    assert!(
        builder[final_build].1.contains("--version") && builder[final_build].1.contains("$VERSION"),
        "the built binary's --version is checked too: {}",
        builder[final_build].1
    );

    // Run the guard as Docker would (`/bin/sh -c`, the build-arg in the environment), in a
    // directory holding this repository's Cargo.toml.
    let scratch = Scratch::new();
    std::fs::copy(repo_root().join("Cargo.toml"), scratch.0.join("Cargo.toml")).unwrap();
    let guard = |version: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&builder[guard_at].1)
            .current_dir(&scratch.0)
            .env("VERSION", version)
            .output()
            .expect("sh")
    };
    let ok = guard(VERSION);
    assert!(
        ok.status.success(),
        "VERSION={VERSION} passes: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = guard("9.9.9");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "VERSION=9.9.9 fails the build");
    assert!(
        stderr.contains("9.9.9") && stderr.contains(VERSION),
        "the refusal names both: {stderr}"
    );

    let (_, _, runtime) = stages.last().unwrap();
    assert!(declares(&runtime[..]), "the runtime stage sees VERSION");
    assert!(
        runtime
            .iter()
            .any(|(k, a)| k == "LABEL"
                && a.contains("org.opencontainers.image.version=\"${VERSION}\"")),
        "the OCI version label is the build-arg"
    );

    // compose/ passes LETTUCE_VERSION as the build-arg, so its tag and its binary agree.
    let doc = compose();
    let worker = service(&doc, "worker");
    assert_eq!(
        str_of(&worker["build"]["args"]["VERSION"], "build arg"),
        "${LETTUCE_VERSION:?set LETTUCE_VERSION in .env}"
    );
}

#[test]
fn release_builds_strip_debug_info_and_keep_symbols() {
    let profile = toml_section(&read("Cargo.toml"), "profile.release");
    assert_eq!(
        profile.get("strip").map(String::as_str),
        Some("debuginfo"),
        "[profile.release] strip = \"debuginfo\": no debug info in the image; symbols stay so \
         backtraces name functions ({profile:?})"
    );
    assert!(
        !matches!(
            profile.get("debug").map(String::as_str),
            Some("true" | "full" | "2" | "line-tables-only" | "limited" | "1")
        ),
        "debug info that strip would throw away is not built: {profile:?}"
    );
    let readme = read("README.md");
    let image = readme
        .split("**The image**")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("README \"The image\" paragraph");
    assert!(
        image.contains("strip = \"debuginfo\"") && image.contains("backtrace"),
        "README says what was chosen and what it keeps: {image}"
    );
}

/// What `worker init` prints and writes when the key comes from somewhere else than argv.
fn init_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(xtests::worker_bin());
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for keep in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    let mut child = cmd.spawn().expect("run worker");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn init_reads_the_license_key_from_a_file_stdin_or_the_environment() {
    let vendor = Vendor::new();
    let scratch = Scratch::new();
    let key = vendor.pem_file(&scratch.0.join("keys"));
    let key = key.to_str().unwrap();
    let token = vendor.mint(365);
    let key_file = scratch.0.join("license.jwt");
    std::fs::write(&key_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_file = key_file.to_str().unwrap();
    let piped = format!("{token}\n");

    /// (what, the key options, the environment, stdin)
    type Case<'a> = (
        &'a str,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        Option<&'a str>,
    );
    let cases: [Case; 4] = [
        ("file", vec!["--license-key-file", key_file], vec![], None),
        (
            "stdin via --license-key-file -",
            vec!["--license-key-file", "-"],
            vec![],
            Some(piped.as_str()),
        ),
        (
            "stdin via --license-key -",
            vec!["--license-key", "-"],
            vec![],
            Some(piped.as_str()),
        ),
        (
            "environment",
            vec![],
            vec![("LETTUCE_LICENSE_KEY", token.as_str())],
            None,
        ),
    ];
    for (i, (what, key_args, env, stdin)) in cases.into_iter().enumerate() {
        let out = scratch.0.join(format!("out{i}"));
        let out_arg = out.display().to_string();
        let mut args = vec![
            "init",
            "--domain",
            "lettuce.example.com",
            "--public-key",
            key,
            "--out",
            &out_arg,
        ];
        args.extend(key_args);
        assert!(
            !args.contains(&token.as_str()),
            "{what}: the key is not in argv"
        );
        let (code, stdout, stderr) = init_with(&args, &env, stdin);
        assert_eq!(code, 0, "{what}: stdout:\n{stdout}\nstderr:\n{stderr}");
        let written = parse_env_file(&std::fs::read_to_string(out.join(".env")).unwrap());
        assert_eq!(written["LETTUCE_LICENSE_KEY"], token, "{what}");
        assert!(
            !stdout.contains(&token) && !stderr.contains(&token),
            "{what}: key printed"
        );
        // Without --version, the release pinned is this binary's own.
        assert_eq!(written["LETTUCE_VERSION"], VERSION, "{what}");
        let stack = parse_yaml(&std::fs::read_to_string(out.join("docker-compose.yml")).unwrap());
        assert_eq!(
            str_of(&service(&stack, "worker")["image"], "image"),
            format!("ghcr.io/uselettuce/worker:{VERSION}")
        );
    }

    // No key from anywhere: a usage error that names the ways to give one; nothing written.
    let out = scratch.0.join("none");
    let out_arg = out.display().to_string();
    let base = ["init", "--domain", "lettuce.example.com", "--out", &out_arg];
    let (code, _, stderr) = init_with(&base, &[], None);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--license-key-file") && stderr.contains("LETTUCE_LICENSE_KEY"),
        "{stderr}"
    );
    // Two key options at once, or an unreadable file: usage errors too.
    let both = [
        &base[..],
        &["--license-key", "x", "--license-key-file", key_file],
    ]
    .concat();
    let (code, _, stderr) = init_with(&both, &[], None);
    assert_eq!(code, 2, "{stderr}");
    let missing = [
        &base[..],
        &["--license-key-file", "/nonexistent/license.jwt"],
    ]
    .concat();
    let (code, _, stderr) = init_with(&missing, &[], None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/license.jwt"), "{stderr}");
    // An empty stdin is a missing key (exit 3, as for an empty variable).
    let empty = [&base[..], &["--license-key-file", "-"]].concat();
    let (code, _, stderr) = init_with(&empty, &[], Some(""));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("LicenseMissing"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");
}

/// Why a command line puts a license key where `ps` (or shell history) shows it, if it does.
fn key_on_command_line(line: &str) -> Option<&'static str> {
    // `NAME=value` alone on a line is file content (an env file), not a command.
    if let Some(value) = line.trim().strip_prefix("LETTUCE_LICENSE_KEY=")
        && (!value.contains(char::is_whitespace)
            || (value.starts_with('<') && value.ends_with('>')))
    {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        if *w == "--license-key" && next != "-" && !next.is_empty() {
            return Some("--license-key with a value");
        }
        if w.strip_prefix("--license-key=").is_some_and(|v| v != "-") {
            return Some("--license-key= with a value");
        }
        if let Some((_, value)) = w.split_once("LETTUCE_LICENSE_KEY=") {
            let from_file = w.starts_with("--from-file=");
            if !value.is_empty() && !from_file {
                return Some("LETTUCE_LICENSE_KEY=<value> on a command line");
            }
        }
        if *w == "inspect" && !next.is_empty() && next != "-" && !next.starts_with("--") {
            return Some("license inspect with a token argument");
        }
    }
    if line.contains("$(cat") && line.contains("LICENSE") {
        return Some("the key expanded into arguments");
    }
    None
}

#[test]
fn key_on_command_line_catches_the_forms_that_show_in_ps() {
    for bad in [
        r#"docker run -e LETTUCE_LICENSE_KEY="<your key>" img init"#,
        "worker init --license-key eyJ.a.b --domain d",
        "worker init --license-key=eyJ.a.b",
        r#"kubectl create secret generic l --from-literal=LETTUCE_LICENSE_KEY="$(cat license.jwt)""#,
        "worker license inspect eyJ.a.b",
        "export LETTUCE_LICENSE_KEY=eyJ.a.b",
        "LETTUCE_LICENSE_KEY=eyJ.a.b worker init --domain d",
    ] {
        assert!(key_on_command_line(bad).is_some(), "{bad}");
    }
    for good in [
        "LETTUCE_LICENSE_KEY=<your key>",
        "docker run -i img init --license-key-file - < license.jwt",
        "docker run -e LETTUCE_LICENSE_KEY img init",
        "worker init --license-key - < license.jwt",
        "kubectl create secret generic l --from-file=LETTUCE_LICENSE_KEY=license.jwt",
        "worker license inspect - < license.jwt",
    ] {
        assert_eq!(key_on_command_line(good), None, "{good}");
    }
}

#[test]
fn doc_examples_never_put_a_license_key_on_a_command_line() {
    let mut found = Vec::new();
    for file in doc_files() {
        for line in command_lines(&file) {
            if let Some(why) = key_on_command_line(&line) {
                found.push(format!("{}: {why}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
    // The quick start hands the key over on stdin (or from the environment).
    let quick = code_blocks("README.md")
        .into_iter()
        .find(|b| b.iter().any(|l| l.contains(" init ")))
        .expect("the quick-start block");
    let init = quick.iter().find(|l| l.contains(" init ")).unwrap();
    assert!(
        init.contains("--license-key-file -") || init.contains("-e LETTUCE_LICENSE_KEY "),
        "{init}"
    );
}

#[test]
fn readme_makes_a_bind_mounted_directory_before_docker_run_does() {
    let mut checked = 0;
    for block in code_blocks("README.md") {
        for (i, line) in block.iter().enumerate() {
            if !line.contains("docker run") {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.windows(2) {
                if pair[0] != "-v" {
                    continue;
                }
                let mount = pair[1].trim_matches('"');
                let Some(source) = mount
                    .strip_prefix("$PWD/")
                    .and_then(|m| m.split(':').next())
                else {
                    continue;
                };
                if source.contains('.') {
                    continue; // a file (public.pem): Docker creates only missing directories
                }
                checked += 1;
                let made = block[..i]
                    .iter()
                    .any(|l| l.split('#').next().unwrap().trim() == format!("mkdir -p {source}"));
                assert!(
                    made,
                    "`mkdir -p {source}` before `{}` (else Docker creates it owned by root)",
                    line.trim()
                );
            }
        }
    }
    assert!(
        checked > 0,
        "the quick start's output directory was checked"
    );
}

#[test]
fn install_without_docker_takes_the_production_public_key() {
    let readme = read("README.md");
    let section = markdown_section(&readme, "## Install without Docker");
    let code: Vec<String> = code_blocks_of(section).into_iter().flatten().collect();
    assert!(
        !code
            .iter()
            .any(|l| l.contains("worker/assets/public.pem") && l.contains("/var/lib/lettuce")),
        "the development key is never installed as the vendor key: {code:#?}"
    );
    assert!(
        code.iter().any(|l| l.contains("docker create")),
        "{code:#?}"
    );
    assert!(
        code.iter()
            .any(|l| l.contains("docker cp") && l.contains(":/var/lib/lettuce/public.pem")),
        "the key is copied out of the release image: {code:#?}"
    );
    assert!(section.contains("sales"), "or asked from sales: {section}");
    assert!(
        section.contains("development key"),
        "says why the repository's key will not do"
    );
}

#[test]
fn docs_point_nowhere_outside_the_repository() {
    let root = repo_root();
    let files = doc_files();
    let in_repo = |name: &str| {
        files
            .iter()
            .chain(std::iter::once(&PathBuf::from(name)))
            .any(|f| f.file_name().is_some_and(|n| n == name) && root.join(f).is_file())
    };
    let mut found = Vec::new();
    for file in &files {
        let text = read(file.to_str().unwrap());
        for needle in ["../shared", "/work/shared", "SPEC §", "seed §", "seed/"] {
            if text.contains(needle) {
                found.push(format!("{}: `{needle}`", file.display()));
            }
        }
        for name in ["SPEC.md", "NOTES.md", "STYLE.md"] {
            if text.contains(name) && !in_repo(name) {
                found.push(format!(
                    "{}: {name}, which is not in the repository",
                    file.display()
                ));
            }
        }
        // The contract, by the name of a document that is not here.
        let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        if words.clone().any(|w| w == "SPEC") && !in_repo("SPEC.md") {
            found.push(format!("{}: \"SPEC\"", file.display()));
        }
        // Relative Markdown links resolve to a file or directory inside the repository.
        if file.extension().is_some_and(|e| e == "md") {
            let dir = root.join(file.parent().unwrap());
            for (i, _) in text.match_indices("](") {
                let target = text[i + 2..].split(')').next().unwrap();
                let target = target.split('#').next().unwrap();
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let resolved = dir.join(target);
                let inside = resolved
                    .canonicalize()
                    .is_ok_and(|p| p.starts_with(root.canonicalize().unwrap()));
                if !inside {
                    found.push(format!("{}: link to {target}", file.display()));
                }
            }
            for (i, _) in text.match_indices("`../") {
                let target = text[i + 1..].split('`').next().unwrap();
                let resolved = dir.join(target);
                let inside = resolved
                    .canonicalize()
                    .is_ok_and(|p| p.starts_with(root.canonicalize().unwrap()));
                if !inside {
                    found.push(format!("{}: `{target}`", file.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The environment variables the worker reads: `config::VARIABLES`, plus every variable-shaped
/// literal inside a `get(…)`, `var(…)`, `var_os(…)` or `pick(…)` call of the worker's sources
/// (test modules excluded).
fn variables_the_worker_reads() -> std::collections::BTreeSet<String> {
    let is_var = |s: &str| {
        s.contains('_')
            && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    let mut out: std::collections::BTreeSet<String> = lettuce_worker::config::VARIABLES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut stack = vec![repo_root().join("worker/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap();
            for call in ["get(", "var(", "var_os(", "pick("] {
                for (i, _) in text.match_indices(call) {
                    let preceded = text[..i]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                    if preceded {
                        continue; // `forget(`, `my_get(`
                    }
                    let args = &text[i + call.len()..];
                    let mut depth = 1;
                    let end = args
                        .char_indices()
                        .find(|(_, c)| {
                            match c {
                                '(' => depth += 1,
                                ')' => depth -= 1,
                                _ => {}
                            }
                            depth == 0
                        })
                        .map_or(args.len(), |(j, _)| j);
                    for (n, literal) in args[..end].split('"').enumerate() {
                        if n % 2 == 1 && is_var(literal) {
                            out.insert(literal.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// Names written in the first cell of a Markdown table row of `text`.
fn table_variables(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(row) = line.trim().strip_prefix('|') else {
            continue;
        };
        let first = row.split(" | ").next().unwrap_or_default();
        for word in first.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.is_empty() {
                out.insert(word.to_string());
            }
        }
    }
    out
}

#[test]
fn the_docs_variable_tables_name_every_variable_the_worker_reads() {
    let reads = variables_the_worker_reads();
    for expected in [
        "LETTUCE_QUEUES",
        "OTEL_TRACES_SAMPLER_ARG",
        "AWS_REGION",
        "NO_COLOR",
    ] {
        assert!(reads.contains(expected), "the scan finds {expected}");
    }
    let readme = read("README.md");
    let documented = table_variables(&readme);
    let missing: Vec<&String> = reads.iter().filter(|v| !documented.contains(*v)).collect();
    assert!(
        missing.is_empty(),
        "variables the worker reads that no README table names: {missing:?}"
    );
    // The Configuration table itself names every variable of the configuration.
    let configuration = table_variables(markdown_section(&readme, "## Configuration"));
    let missing: Vec<&&str> = lettuce_worker::config::VARIABLES
        .iter()
        .filter(|v| !v.starts_with("OTEL_") && !configuration.contains(**v))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the Configuration table: {missing:?}"
    );
}

#[test]
fn env_example_names_only_what_the_worker_or_compose_reads() {
    let reads = variables_the_worker_reads();
    let compose_text = read("compose/docker-compose.yml");
    let mut compose_reads = std::collections::BTreeSet::new();
    for (i, _) in compose_text.match_indices("${") {
        let name: String = compose_text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        compose_reads.insert(name);
    }
    let stray: Vec<String> = env_example()
        .into_keys()
        .filter(|n| !reads.contains(n) && !compose_reads.contains(n))
        .collect();
    assert!(
        stray.is_empty(),
        "named in .env.example, read by neither the worker nor docker-compose.yml: {stray:?}"
    );
    assert_eq!(env_example_value("LETTUCE_VERSION"), VERSION);
}

/// A systemd unit file: section → key → every value given (in order).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=value");
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn the_systemd_unit_is_hardened_restarts_only_what_a_restart_fixes_and_verifies() {
    let rel = "packaging/lettuce-worker.service";
    let text = read(rel);
    let unit = parse_unit(&text);
    let one = |section: &str, key: &str| -> String {
        unit.get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.last())
            .unwrap_or_else(|| panic!("[{section}] {key}="))
            .clone()
    };
    let words = |section: &str, key: &str| -> Vec<String> {
        one(section, key)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert!(words("Unit", "Wants").contains(&"network-online.target".to_string()));
    assert!(words("Unit", "After").contains(&"network-online.target".to_string()));
    assert_eq!(one("Service", "Restart"), "on-failure");
    let mut no_restart: Vec<u32> = words("Service", "RestartPreventExitStatus")
        .iter()
        .map(|c| c.parse().expect("an exit code"))
        .collect();
    no_restart.sort();
    assert_eq!(
        no_restart,
        [2, 3, 4, 6],
        "configuration, license, GitHub App and schema errors stay down; 1 and 5 retry"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one("Service", key), value, "{key}");
    }
    let user = one("Service", "User");
    assert!(
        user != "root" && user != "0" && !user.is_empty(),
        "a dedicated user"
    );
    assert!(
        one("Service", "EnvironmentFile")
            .trim_start_matches('-')
            .starts_with('/')
    );
    assert!(one("Service", "ExecStart").ends_with("worker run"));
    // The directories the worker writes by default are the writable ones.
    let config = lettuce_worker::config::Config::load(&HashMap::new()).expect("defaults load");
    let writable = words("Service", "ReadWritePaths");
    for dir in [
        config.data_dir.clone(),
        config.license_cache_path.parent().unwrap().to_path_buf(),
    ] {
        assert!(
            writable
                .iter()
                .any(|w| Path::new(w.trim_start_matches('-')) == dir),
            "ReadWritePaths has {} ({writable:?})",
            dir.display()
        );
    }
    // Stops within the drain: longer than the default shutdown grace.
    let stop: u64 = one("Service", "TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(Duration::from_secs(stop) > config.shutdown_grace);

    // systemd's own check (scripts/setup.d/50-systemd.sh installs it). The unit names the
    // installed binary, which this machine lacks; the copy verified names the built one.
    let scratch = Scratch::new();
    let copy = scratch.0.join("lettuce-worker.service");
    let bin = xtests::worker_bin();
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/worker", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze on PATH (scripts/setup.d/50-systemd.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // The README installs this file instead of carrying a copy of its own.
    let readme = read("README.md");
    let section = markdown_section(&readme, "## Install without Docker");
    assert!(section.contains(rel), "README refers to {rel}");
    assert!(
        !section.contains("[Service]") && !readme.contains("ExecStart="),
        "no second copy of the unit in the README"
    );
}

/// The same rule for the code: no comment or text in the sources names a document that is not
/// in the repository (this file excepted: it holds the needles).
#[test]
fn sources_point_nowhere_outside_the_repository() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .extension()
                .is_some_and(|e| e == "rs" || e == "sql" || e == "sh")
                || path.parent().is_some_and(|p| p.ends_with("scripts"))
            {
                out.push(path);
            }
        }
    }
    let root = repo_root();
    let mut files = Vec::new();
    for top in ["worker", "schema", "xtests", "scripts", ".ci"] {
        walk(&root.join(top), &mut files);
    }
    assert!(files.len() > 50, "{} files", files.len());
    let mut found = Vec::new();
    for file in files
        .iter()
        .filter(|f| !f.ends_with("xtests/tests/install.rs"))
    {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for needle in [
            "../shared",
            "/work/shared",
            "SPEC §",
            "seed §",
            "NOTES.md",
            "STYLE.md",
        ] {
            if text.contains(needle) {
                found.push(format!("{}: `{needle}`", file.display()));
            }
        }
        if text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "SPEC")
        {
            found.push(format!("{}: \"SPEC\"", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "pointing outside the repository: {found:#?}"
    );
}
