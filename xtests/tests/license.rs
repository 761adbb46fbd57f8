//! The license gate through the real binary: `worker run` with `LETTUCE_SELF_HOSTED=1` refuses
//! every bad license with exit 3 and the documented error line (README "License") before it touches Postgres, boots with
//! a good one (even when the cache cannot be written), and never prints the token. Plus the
//! vendor tooling end to end: `license keygen` → `mint` → `inspect` → `run`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettuce_worker::license::{self, Claims};
use time::OffsetDateTime;
use xtests::{TestDb, WorkerProcess, admin_url, connect, run_worker};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "lettuce-xt-license-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `worker license keygen --out DIR`; returns (private.pem, public.pem).
fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let (code, out, err) = run_worker(&["license", "keygen", "--out", &s(dir)], &HashMap::new());
    assert_eq!(code, 0, "keygen failed: {out}{err}");
    (dir.join("private.pem"), dir.join("public.pem"))
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(exp: i64) -> Claims {
    Claims {
        sub: "acme-corp".into(),
        jti: "lic_xt_1".into(),
        iat: Some(now() - 3600),
        exp,
        nbf: None,
        seats: Some(10),
        repos: Some(50),
        telemetry_required: true,
    }
}

fn mint_with(private: &Path, claims: &Claims) -> String {
    license::sign(claims, &license::load_signing_key(private).unwrap())
}

/// The environment of a self-hosted worker whose database must never be touched: the URL
/// names a database that does not exist yet (boot would create it), so its absence afterwards
/// proves the gate ran first.
fn refused_env(db: &TestDb, public: &Path, scratch: &Scratch) -> HashMap<String, String> {
    let mut env = db.env();
    env.insert("LETTUCE_SELF_HOSTED".into(), "1".into());
    env.insert("LETTUCE_LICENSE_PUBLIC_KEY".into(), s(public));
    env.insert(
        "LETTUCE_LICENSE_CACHE_PATH".into(),
        s(&scratch.path("cache/license.json")),
    );
    env
}

async fn database_exists(name: &str) -> bool {
    let admin = connect(&admin_url()).await;
    admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// Runs `worker run`, expects exit 3, and returns the last stderr line. Also checks that
/// nothing printed contains `secret` and that the database was never created.
async fn refused(env: &HashMap<String, String>, db: &TestDb, secret: Option<&str>) -> String {
    let (code, out, err) = run_worker(&["run"], env);
    assert_eq!(code, 3, "expected exit 3:\n{out}{err}");
    if let Some(secret) = secret {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "the token was printed:\n{err}"
        );
    }
    assert!(
        !database_exists(&db.name).await,
        "a refused license must not reach the database"
    );
    err.lines()
        .rev()
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_self_hosted_worker_without_a_key_exits_3_with_the_spec_line() {
    let scratch = Scratch::new("missing");
    let (_, public) = keygen(&scratch.0);
    let db = TestDb::absent();
    let env = refused_env(&db, &public, &scratch);
    let last = refused(&env, &db, None).await;
    assert_eq!(
        last,
        "LicenseMissing: LETTUCE_LICENSE_KEY is required when LETTUCE_SELF_HOSTED=1"
    );
    // Blank is missing too.
    let mut env = env;
    env.insert("LETTUCE_LICENSE_KEY".into(), "  ".into());
    assert!(
        refused(&env, &db, None)
            .await
            .starts_with("LicenseMissing: ")
    );
}

#[tokio::test]
async fn an_expired_license_exits_3_naming_the_date() {
    let scratch = Scratch::new("expired");
    let (private, public) = keygen(&scratch.0);
    let db = TestDb::absent();
    let exp = now() - 3 * 86_400;
    let token = mint_with(&private, &claims(exp));
    let mut env = refused_env(&db, &public, &scratch);
    env.insert("LETTUCE_LICENSE_KEY".into(), token.clone());
    let last = refused(&env, &db, Some(&token)).await;
    assert!(last.starts_with("LicenseExpired: "), "{last}");
    assert!(last.contains(&license::format_unix(exp)), "{last}");
    assert!(!scratch.path("cache/license.json").exists());
}

#[tokio::test]
async fn a_bad_signature_or_a_malformed_token_exits_3() {
    let scratch = Scratch::new("badsig");
    let (_, public) = keygen(&scratch.0);
    let other = Scratch::new("badsig-other");
    let (other_private, _) = keygen(&other.0);
    let db = TestDb::absent();
    let token = mint_with(&other_private, &claims(now() + 30 * 86_400));
    let mut env = refused_env(&db, &public, &scratch);
    env.insert("LETTUCE_LICENSE_KEY".into(), token.clone());
    let last = refused(&env, &db, Some(&token)).await;
    assert!(last.starts_with("LicenseInvalid: "), "{last}");

    let garbled = format!("{token}.extra");
    env.insert("LETTUCE_LICENSE_KEY".into(), garbled.clone());
    let last = refused(&env, &db, Some(&garbled)).await;
    assert!(last.starts_with("LicenseMalformed: "), "{last}");
}

#[tokio::test]
async fn a_missing_or_garbage_public_key_exits_3_naming_the_source() {
    let scratch = Scratch::new("pubkey");
    let (private, _) = keygen(&scratch.0);
    let db = TestDb::absent();
    let token = mint_with(&private, &claims(now() + 30 * 86_400));
    let missing = scratch.path("nowhere/public.pem");
    let mut env = refused_env(&db, &missing, &scratch);
    env.insert("LETTUCE_LICENSE_KEY".into(), token.clone());
    let last = refused(&env, &db, Some(&token)).await;
    assert!(last.starts_with("LicensePublicKeyError: "), "{last}");
    assert!(last.contains(&s(&missing)), "{last}");

    let garbage = scratch.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    env.insert("LETTUCE_LICENSE_PUBLIC_KEY".into(), s(&garbage));
    let last = refused(&env, &db, Some(&token)).await;
    assert!(last.starts_with("LicensePublicKeyError: "), "{last}");
    assert!(last.contains(&s(&garbage)), "{last}");
}

/// Boots `worker run` against a real database, waits for ready, stops it; returns its output.
async fn boot_and_stop(env: &HashMap<String, String>) -> Vec<String> {
    let mut worker = WorkerProcess::start(&["run"], env);
    worker.wait_ready(Duration::from_secs(30)).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).await, Some(0));
    worker.output()
}

#[tokio::test]
async fn a_valid_license_boots_even_when_the_cache_cannot_be_written() {
    let scratch = Scratch::new("unwritable");
    let (private, public) = keygen(&scratch.0);
    let token = mint_with(&private, &claims(now() + 30 * 86_400));
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_SELF_HOSTED".into(), "1".into());
    env.insert("LETTUCE_LICENSE_KEY".into(), token.clone());
    env.insert("LETTUCE_LICENSE_PUBLIC_KEY".into(), s(&public));
    // A path below a regular file cannot be created by anyone, root included.
    let blocker = scratch.path("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    env.insert(
        "LETTUCE_LICENSE_CACHE_PATH".into(),
        s(&blocker.join("license.json")),
    );
    let output = boot_and_stop(&env).await;
    assert!(
        output
            .iter()
            .any(|l| l.contains("WARN") && l.contains("cannot write the license cache")),
        "no WARN about the cache:\n{}",
        output.join("\n")
    );
    assert!(
        output.iter().all(|l| !l.contains(&token)),
        "the token was printed"
    );
}

#[tokio::test]
async fn keygen_mint_inspect_and_run_end_to_end() {
    let scratch = Scratch::new("e2e");
    let (private, public) = keygen(&scratch.0);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&private), 0o600);
    let private_text = std::fs::read_to_string(&private).unwrap();
    assert!(private_text.starts_with("-----BEGIN PRIVATE KEY-----"));
    let public_text = std::fs::read_to_string(&public).unwrap();
    assert!(public_text.starts_with("-----BEGIN PUBLIC KEY-----"));
    // keygen never overwrites a key silently.
    let (code, _, err) = run_worker(
        &["license", "keygen", "--out", &s(&scratch.0)],
        &HashMap::new(),
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), private_text);

    let no_env = HashMap::new();
    let (code, token, err) = run_worker(
        &[
            "license",
            "mint",
            "--private-key",
            &s(&private),
            "--sub",
            "acme-corp",
            "--jti",
            "lic_e2e",
            "--days",
            "30",
            "--seats",
            "5",
            "--repos",
            "7",
            "--telemetry-required",
            "false",
        ],
        &no_env,
    );
    assert_eq!(code, 0, "mint failed: {err}");
    let token = token.trim().to_string();
    assert_eq!(token.split('.').count(), 3);

    // inspect: argument, stdin-free env form, JSON.
    let (code, out, err) = run_worker(
        &["license", "inspect", &token, "--public-key", &s(&public)],
        &no_env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("acme-corp") && out.contains("lic_e2e"),
        "{out}"
    );
    assert!(
        out.contains("days left           29") || out.contains("days left           30"),
        "{out}"
    );
    assert!(out.contains("seats               5"), "{out}");
    let mut env = HashMap::new();
    env.insert("LETTUCE_LICENSE_KEY".to_string(), token.clone());
    env.insert(
        "LETTUCE_LICENSE_PUBLIC_KEY".to_string(),
        public_text.clone(),
    );
    let (code, out, err) = run_worker(&["license", "inspect", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["claims"]["repos"], 7);
    assert_eq!(json["claims"]["telemetry_required"], false);
    assert!(json["days_left"].as_i64().unwrap() >= 29);
    assert!(!out.contains(&token));

    // inspect with another key: the gate's own error, exit 3.
    let other = Scratch::new("e2e-other");
    let (_, other_public) = keygen(&other.0);
    let (code, out, err) = run_worker(
        &[
            "license",
            "inspect",
            &token,
            "--public-key",
            &s(&other_public),
        ],
        &no_env,
    );
    assert_eq!(code, 3);
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("LicenseInvalid: "),
        "{err}"
    );
    assert!(!out.contains(&token) && !err.contains(&token));

    // An expired mint is printed with a warning, and inspect refuses it.
    let (code, expired, err) = run_worker(
        &[
            "license",
            "mint",
            "--private-key",
            &s(&private),
            "--sub",
            "a",
            "--jti",
            "b",
            "--days",
            "-2",
        ],
        &no_env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("LicenseExpired"), "{err}");
    let (code, _, err) = run_worker(
        &[
            "license",
            "inspect",
            expired.trim(),
            "--public-key",
            &s(&public),
        ],
        &no_env,
    );
    assert_eq!(code, 3);
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("LicenseExpired: "),
        "{err}"
    );

    // The minted token boots a real worker and leaves a 0600 cache without the token.
    let db = TestDb::new().await;
    let cache = scratch.path("cache/license.json");
    let mut env = db.env();
    env.insert("LETTUCE_SELF_HOSTED".into(), "1".into());
    env.insert("LETTUCE_LICENSE_KEY".into(), token.clone());
    env.insert("LETTUCE_LICENSE_PUBLIC_KEY".into(), s(&public));
    env.insert("LETTUCE_LICENSE_CACHE_PATH".into(), s(&cache));
    let output = boot_and_stop(&env).await;
    assert!(
        output.iter().any(|l| l.contains("license verified")),
        "{}",
        output.join("\n")
    );
    assert!(
        output.iter().all(|l| !l.contains(&token)),
        "the token was printed"
    );
    assert_eq!(mode(&cache), 0o600);
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(!text.contains(&token), "the cache holds the token");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["token_sha256"], license::token_sha256(&token));
    assert_eq!(json["claims"]["sub"], "acme-corp");
    assert!(json["verified_at"].is_string());

    // inspect shows the cache for information.
    let mut env = HashMap::new();
    env.insert("LETTUCE_LICENSE_KEY".to_string(), token.clone());
    env.insert("LETTUCE_LICENSE_PUBLIC_KEY".to_string(), s(&public));
    env.insert("LETTUCE_LICENSE_CACHE_PATH".to_string(), s(&cache));
    let (code, out, _) = run_worker(&["license", "inspect"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("(this token)"), "{out}");
}

/// Issue 13, item 3: on dc07b51 `license keygen --force` followed a `private.pem` symlink and
/// wrote the private key into its target. Now the symlink itself is replaced and the target keeps
/// its content; the key file is 0600.
#[test]
fn keygen_never_writes_the_private_key_through_a_symlink() {
    let scratch = Scratch::new("keygen-symlink");
    let out = scratch.path("keys");
    std::fs::create_dir_all(&out).unwrap();
    let target = scratch.path("victim.txt");
    std::fs::write(&target, "not a key\n").unwrap();
    std::os::unix::fs::symlink(&target, out.join("private.pem")).unwrap();
    let (code, stdout, err) = run_worker(
        &["license", "keygen", "--out", &s(&out), "--force"],
        &HashMap::new(),
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a key\n");
    let private = out.join("private.pem");
    let meta = std::fs::symlink_metadata(&private).unwrap();
    assert!(meta.file_type().is_file(), "private.pem is still a symlink");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&private)
            .unwrap()
            .contains("PRIVATE KEY")
    );
}

/// check-config renders gate 2's own findings: the clock-behind warning `worker run` logs
/// (from the cache's high-water mark) is a `license.clock` check, the near-expiry rule is the
/// gate's, and check-config never writes the cache.
#[tokio::test]
async fn check_config_reports_the_gates_findings_and_writes_no_cache() {
    let scratch = Scratch::new("findings");
    let (private, public) = keygen(&scratch.0);
    let token = mint_with(&private, &claims(now() + 10 * 86_400));
    let db = TestDb::new().await;
    let mut env = db.env();
    env.insert("LETTUCE_SELF_HOSTED".into(), "1".into());
    env.insert("LETTUCE_LICENSE_KEY".into(), token.clone());
    env.insert("LETTUCE_LICENSE_PUBLIC_KEY".into(), s(&public));
    let cache = scratch.path("license.json");
    env.insert("LETTUCE_LICENSE_CACHE_PATH".into(), s(&cache));

    let (_, out, err) = run_worker(&["check-config", "--offline", "--format", "json"], &env);
    assert!(!cache.exists(), "check-config wrote the license cache");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let find = |id: &str| {
        report["checks"]
            .as_array()
            .or_else(|| report.as_array())
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
    };
    let expiry = find("license.expiry").expect("license.expiry");
    assert_eq!(expiry["level"], "warn", "{expiry}");
    assert!(
        find("license.clock").is_none(),
        "no cache yet, no clock finding"
    );

    // A verification recorded two days ahead of this clock: the gate's clock-behind finding.
    let ahead = OffsetDateTime::now_utc() + time::Duration::days(2) + time::Duration::hours(1);
    license::write_cache(&cache, &claims(now() + 10 * 86_400), &token, ahead).unwrap();
    let before = std::fs::read(&cache).unwrap();
    let (_, out, _) = run_worker(&["check-config", "--offline", "--format", "json"], &env);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let checks = report["checks"]
        .as_array()
        .or_else(|| report.as_array())
        .unwrap()
        .clone();
    let clock = checks
        .iter()
        .find(|c| c["id"] == "license.clock")
        .unwrap_or_else(|| panic!("no license.clock check: {report}"));
    assert_eq!(clock["level"], "warn");
    assert!(
        clock["message"].as_str().unwrap().contains("2 days behind"),
        "{clock}"
    );
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        before,
        "the cache is left as it was"
    );
    assert!(!out.contains(&token), "the token was printed");
}
