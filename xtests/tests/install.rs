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
