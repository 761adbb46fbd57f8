//! Boot gates 2–4, secret stores and `worker check-config`, driven through the binary against
//! real Postgres, a real `bao server -dev` and a real `moto_server` on loopback.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use lettuce_worker::config::{Env, RawConfig};
use lettuce_worker::license::{self, Claims};
use lettuce_worker::secrets::SecretSource;
use xtests::fake_github::{AppKey, FakeGithub};
use xtests::fake_gitlab::{self, FakeGitlab};
use xtests::services::{Moto, Vault, free_port};
use xtests::{TestDb, WorkerProcess, enqueue_sql, run_worker, wait_final};

type Vars = HashMap<String, String>;

fn set(env: &mut Vars, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        env.insert(k.to_string(), v.to_string());
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lettuce-gates-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An empty environment apart from a scratch data directory (the local artifact store must
/// never default to /var/lib/lettuce on the test machine).
fn plain() -> Vars {
    let mut env = Vars::new();
    env.insert(
        "CODEWAZE_DATA_DIR".into(),
        scratch("data").display().to_string(),
    );
    env
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(exp_in_days: i64) -> Claims {
    Claims {
        sub: "acme".into(),
        jti: format!("lic-{:08x}", rand::random::<u32>()),
        iat: Some(now() - 86_400 * 30),
        exp: now() + 86_400 * exp_in_days,
        nbf: None,
        seats: None,
        repos: None,
        telemetry_required: true,
    }
}

/// Self-hosted variables for a license with `claims`: a fresh keypair, the public key in a
/// file, the cache in a scratch directory. Returns the variables and the token.
fn licensed(claims: &Claims) -> (Vars, String) {
    let dir = scratch("lic");
    let key = license::generate_signing_key();
    let pem = license::public_key_pem(&key.verifying_key());
    std::fs::write(dir.join("public.pem"), pem).unwrap();
    let token = license::sign(claims, &key);
    let mut env = plain();
    set(
        &mut env,
        &[
            ("LETTUCE_SELF_HOSTED", "true"),
            ("LETTUCE_LICENSE_KEY", &token),
            (
                "LETTUCE_LICENSE_PUBLIC_KEY",
                dir.join("public.pem").to_str().unwrap(),
            ),
            (
                "LETTUCE_LICENSE_CACHE_PATH",
                dir.join("license.json").to_str().unwrap(),
            ),
            // Tests never reach the real receiver.
            (
                "LETTUCE_TELEMETRY_URL",
                &format!("http://127.0.0.1:{}/v1/heartbeat", free_port()),
            ),
        ],
    );
    (env, token)
}

/// A fresh RSA key (PKCS#1 PEM) from the openssl CLI.
fn rsa_pem() -> String {
    let dir = scratch("rsa");
    let path = dir.join("k.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&path)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl CLI")
        .success();
    assert!(ok);
    std::fs::read_to_string(path).unwrap()
}

fn github_vars(key: &str) -> Vars {
    let mut env = Vars::new();
    set(
        &mut env,
        &[
            ("GITHUB_APP_ID", "424242"),
            ("GITHUB_APP_NAME", "lettuce-test"),
            ("GITHUB_APP_PRIVATE_KEY", key),
            ("GITHUB_APP_CLIENT_ID", "Iv1.0123456789abcdef"),
            ("GITHUB_APP_CLIENT_SECRET", "ghcs-Sekr1t-client-secret-42"),
        ],
    );
    env
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

fn json_report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// (level, message) of check `id` in a JSON report.
fn level_of(report: &serde_json::Value, id: &str) -> (String, String) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"));
    if c["level"] == "fail" {
        assert!(
            c["hint"]
                .as_str()
                .is_some_and(|h| !h.is_empty() && !h.contains('\n')),
            "failed check {id} has no one-line hint: {c}"
        );
    }
    (
        c["level"].as_str().unwrap().to_string(),
        c["message"].as_str().unwrap().to_string(),
    )
}

fn check_config(env: &Vars, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["check-config", "--format", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = run_worker(&args, env);
    (code, json_report(&out), err)
}

// ---------------------------------------------------------------------------------------------
// Secrets never printed

#[tokio::test(flavor = "multi_thread")]
async fn no_failing_gate_prints_a_secret() {
    let db = TestDb::new().await;
    // The App's key, and a fake GitHub that knows it (check-config probes `GET /app`).
    let app_key = AppKey::generate();
    let key_pem = app_key.pkcs1_pem.clone();
    let fake = FakeGithub::start(424242, &app_key, false).await;
    fake.add_installation(1, "acme");
    let (lic_env, token) = licensed(&claims(365));
    // GitLab too: check-config probes `GET /user` with GITLAB_TOKEN.
    let gitlab_token = "glpat-Sekr1t-gitlab-token-55";
    let gitlab = FakeGitlab::start(gitlab_token).await;
    let db_password = "pw-Sekr1t-db-password-77";
    let vault_token = "hvs.Sekr1t-vault-token-99";
    let mut base = db.env();
    base.extend(lic_env);
    base.extend(github_vars(&key_pem));
    base.insert("GITHUB_API_URL".into(), fake.api_url());
    base.insert("GITLAB_HOST".into(), gitlab.base.clone());
    base.insert("GITLAB_TOKEN".into(), gitlab_token.into());
    let url_with_password = db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{db_password}@"),
        1,
    );
    set(
        &mut base,
        &[
            ("DATABASE_URL", &url_with_password),
            ("VAULT_TOKEN", vault_token),
            ("CODEWAZE_S3_SECRET_ACCESS_KEY", "s3-Sekr1t-secret-key"),
        ],
    );
    // Sanity: with everything valid, the gates pass (check-config exits 0).
    let (code, report, _) = check_config(&base, &[]);
    assert_eq!(code, 0, "{report:#}");

    let other_key = license::generate_signing_key();
    let forged = license::sign(&claims(365), &other_key);
    let closed = free_port();
    let mut secrets: Vec<String> = vec![
        db_password.into(),
        vault_token.into(),
        "ghcs-Sekr1t-client-secret-42".into(),
        "s3-Sekr1t-secret-key".into(),
        gitlab_token.into(),
        token.clone(),
        forged.clone(),
    ];
    // Every segment of both tokens and every body line of the PEM must stay unprinted too.
    for t in [&token, &forged] {
        secrets.extend(t.split('.').map(str::to_string));
    }
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string),
    );
    let mangled_key = key_pem.replace("MII", "MIIZZ-Sekr1t-key-body-");
    secrets.push("Sekr1t-key-body".into());

    // (case, variables changed from the good setup, expected exit code of `worker run`)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, i32);
    let cases: Vec<Case> = vec![
        ("config", vec![("LETTUCE_QUEUES", "default=zero".into())], 2),
        ("license", vec![("LETTUCE_LICENSE_KEY", forged.clone())], 3),
        (
            "github partial",
            vec![("GITHUB_APP_CLIENT_ID", "".into())],
            4,
        ),
        (
            "github key",
            vec![("GITHUB_APP_PRIVATE_KEY", mangled_key.clone())],
            4,
        ),
        (
            "secret store",
            vec![
                ("LETTUCE_SECRET_STORE", "vault".into()),
                ("VAULT_ADDR", format!("http://127.0.0.1:{closed}")),
                ("CODEWAZE_S3_SECRET_ACCESS_KEY", "".into()),
            ],
            2,
        ),
        (
            "database",
            vec![
                (
                    "DATABASE_URL",
                    format!("postgres://postgres:{db_password}@127.0.0.1:{closed}/x"),
                ),
                ("LETTUCE_DB_CONNECT_TIMEOUT_MS", "300".into()),
            ],
            5,
        ),
    ];
    let mut all_printed = Vec::new();
    for (name, changes, exit) in cases {
        let mut env = base.clone();
        for (k, v) in changes {
            env.insert(k.to_string(), v);
        }
        env.retain(|_, v| !v.is_empty());
        let (code, out, err) = run_worker(&["run"], &env);
        assert_eq!(code, exit, "{name}: worker run\n{err}");
        let (cc_code, cc_out, cc_err) = run_worker(&["check-config"], &env);
        assert_eq!(cc_code, 1, "{name}: check-config\n{cc_out}\n{cc_err}");
        let (_, json_out, json_err) = run_worker(&["check-config", "--format", "json"], &env);
        for printed in [&out, &err, &cc_out, &cc_err, &json_out, &json_err] {
            for s in &secrets {
                assert!(
                    !printed.contains(s.as_str()),
                    "{name}: a secret ({}…) was printed:\n{printed}",
                    &s[..s.len().min(6)]
                );
            }
        }
        all_printed.extend([out, err, cc_out, cc_err, json_out, json_err]);
    }
    assert!(
        gitlab.count(fake_gitlab::USER) > 0,
        "check-config never probed the fake GitLab with GITLAB_TOKEN"
    );
    // A GitLab token the server refuses fails `gitlab.api` and is not printed either.
    let wrong = "glpat-Sekr1t-wrong-token-66";
    let mut env = base.clone();
    env.insert("GITLAB_TOKEN".into(), wrong.into());
    let (_, report, err) = check_config(&env, &[]);
    assert_eq!(level_of(&report, "gitlab.api").0, "fail", "{report:#}");
    let text = format!("{report}{err}");
    assert!(
        !text.contains(wrong) && !text.contains("Sekr1t-wrong"),
        "{text}"
    );
    // The App JWTs check-config signed for the fake were never printed either.
    let jwts = fake.secrets_seen();
    assert!(
        !jwts.is_empty(),
        "check-config never probed the fake GitHub"
    );
    for jwt in &jwts {
        for part in jwt.split('.').skip(1) {
            for printed in &all_printed {
                assert!(
                    !printed.contains(part),
                    "an App JWT was printed:\n{printed}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GitHub App gate

#[tokio::test]
async fn github_partial_set_exits_4_naming_exactly_the_missing_ones() {
    let mut env = TestDb::absent().env();
    set(
        &mut env,
        &[
            ("GITHUB_APP_ID", "12"),
            ("GITHUB_APP_CLIENT_SECRET", "x"),
            ("GITHUB_APP_NAME", "  "),
        ],
    );
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 4, "{err}");
    assert_eq!(
        last_line(&err),
        "GitHubAppIncomplete: missing GITHUB_APP_NAME, GITHUB_APP_PRIVATE_KEY, GITHUB_APP_CLIENT_ID (set all five GitHub App variables, or none to run without GitHub)"
    );
    // A non-numeric id and an unparsable key also exit 4, saying which key form was seen.
    let key = rsa_pem();
    let mut env = TestDb::absent().env();
    env.extend(github_vars(&key));
    env.insert("GITHUB_APP_ID".into(), "app-12".into());
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 4, "{err}");
    assert!(
        last_line(&err).contains("GITHUB_APP_ID must be a positive integer"),
        "{err}"
    );
    env.insert("GITHUB_APP_ID".into(), "12".into());
    env.insert(
        "GITHUB_APP_PRIVATE_KEY".into(),
        key.replace('\n', "\\n").replace("MII", "MIIA"),
    );
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 4, "{err}");
    assert!(
        last_line(&err).contains("PEM with literal \\n sequences"),
        "{err}"
    );
}

#[tokio::test]
async fn github_not_configured_warns_and_github_jobs_fail_with_the_message() {
    let db = TestDb::new().await;
    let mut env = db.env();
    set(&mut env, &[("GITLAB_HOST", "gitlab.acme.test")]);
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let out = w.output().join("\n");
    assert!(
        out.contains("GitHub App is not configured on this Lettuce instance"),
        "{out}"
    );
    assert!(out.contains("GITHUB_APP_ID, GITHUB_APP_NAME, GITHUB_APP_PRIVATE_KEY, GITHUB_APP_CLIENT_ID, GITHUB_APP_CLIENT_SECRET"), "{out}");
    assert!(out.contains("gitlab.acme.test"), "{out}");
    let client = db.client().await;
    let id = enqueue_sql(&client, "diag.github", serde_json::json!({})).await;
    let (state, attempt, errors) = wait_final(&client, id, Duration::from_secs(20)).await;
    assert_eq!((state.as_str(), attempt), ("discarded", 1));
    assert_eq!(
        errors[0]["error"],
        "GitHub App is not configured on this Lettuce instance"
    );
}

#[tokio::test]
async fn github_configured_with_a_base64_key_boots_and_names_host_and_form() {
    use base64::Engine as _;
    let db = TestDb::new().await;
    let mut env = db.env();
    let key = base64::engine::general_purpose::STANDARD.encode(rsa_pem());
    env.extend(github_vars(&key));
    set(&mut env, &[("GITHUB_HOST", "ghes.acme.test")]);
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let out = w.output().join("\n");
    assert!(out.contains("GitHub App configured"), "{out}");
    assert!(
        out.contains("ghes.acme.test") && out.contains("base64 of a PEM"),
        "{out}"
    );
    let client = db.client().await;
    let id = enqueue_sql(&client, "diag.github", serde_json::json!({})).await;
    let (state, _, _) = wait_final(&client, id, Duration::from_secs(20)).await;
    assert_eq!(state, "completed");
}

// ---------------------------------------------------------------------------------------------
// Telemetry resolution

#[tokio::test]
async fn a_required_license_overrides_the_opt_out_with_a_logged_contradiction() {
    let db = TestDb::new().await;
    let (lic, _) = licensed(&claims(365));
    let mut env = db.env();
    env.extend(lic);
    set(&mut env, &[("LETTUCE_TELEMETRY_ENABLED", "off")]);
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let out = w.output();
    assert!(
        out.iter().any(|l| l.contains("WARN")
            && l.contains(
                "LETTUCE_TELEMETRY_ENABLED is false, but the license requires telemetry"
            )),
        "{}",
        out.join("\n")
    );
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(level_of(&report, "telemetry").0, "warn");
}

#[tokio::test]
async fn the_deprecated_alias_warns_once_and_dev_mode_never_sends() {
    let db = TestDb::new().await;
    let mut env = db.env();
    set(&mut env, &[("LETTUCE_TELEMETRY_DISABLED", "1")]);
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let out = w.output();
    let warnings = out
        .iter()
        .filter(|l| l.contains("LETTUCE_TELEMETRY_DISABLED is deprecated"))
        .count();
    assert_eq!(warnings, 1, "{}", out.join("\n"));
    assert!(
        out.iter()
            .any(|l| l.contains("LETTUCE_TELEMETRY_ENABLED=false"))
    );
    assert!(
        out.iter().any(|l| l.contains("dev mode never sends")),
        "{}",
        out.join("\n")
    );
    // An unparsable switch is a config error naming the variable.
    let mut env = TestDb::absent().env();
    set(&mut env, &[("LETTUCE_TELEMETRY_ENABLED", "sometimes")]);
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 2);
    assert!(
        last_line(&err).contains("LETTUCE_TELEMETRY_ENABLED"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Entitlements

#[tokio::test]
async fn exceeding_a_license_cap_fails_the_job_permanently_and_stamps_the_instance() {
    let db = TestDb::new().await;
    let mut c = claims(365);
    c.repos = Some(3);
    c.seats = Some(2);
    let (lic, _) = licensed(&c);
    let mut env = db.env();
    env.extend(lic);
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let client = db.client().await;
    let stamp = || async {
        client
            .query_one("SELECT license_limit_reached_at FROM lettuce.instance", &[])
            .await
            .unwrap()
            .get::<_, Option<time::OffsetDateTime>>(0)
    };
    let ok = enqueue_sql(
        &client,
        "diag.entitlement",
        serde_json::json!({"repos": 3, "seats": 2}),
    )
    .await;
    assert_eq!(
        wait_final(&client, ok, Duration::from_secs(20)).await.0,
        "completed"
    );
    assert!(stamp().await.is_none());

    let over = enqueue_sql(&client, "diag.entitlement", serde_json::json!({"repos": 4})).await;
    let (state, attempt, errors) = wait_final(&client, over, Duration::from_secs(20)).await;
    assert_eq!((state.as_str(), attempt), ("discarded", 1));
    assert_eq!(
        errors[0]["error"],
        "License limit reached: 4 repositories needed, the license allows 3"
    );
    assert!(stamp().await.is_some());
    let seats = enqueue_sql(&client, "diag.entitlement", serde_json::json!({"seats": 9})).await;
    let (state, _, errors) = wait_final(&client, seats, Duration::from_secs(20)).await;
    assert_eq!(state, "discarded");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("License limit reached: 9 seats")
    );
    // The worker keeps running.
    let after = enqueue_sql(&client, "diag.noop", serde_json::json!({})).await;
    assert_eq!(
        wait_final(&client, after, Duration::from_secs(20)).await.0,
        "completed"
    );
    assert!(w.child.try_wait().unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// Secret stores

#[tokio::test]
async fn vault_fills_unset_secrets_and_missing_denied_or_down_are_boot_errors() {
    let vault = Vault::start().await;
    let db = TestDb::new().await;
    let (lic, token) = licensed(&claims(365));
    let mut env = db.env();
    env.extend(lic);
    env.remove("LETTUCE_LICENSE_KEY");
    set(
        &mut env,
        &[
            ("LETTUCE_SECRET_STORE", "vault"),
            ("VAULT_ADDR", &vault.addr),
            ("VAULT_TOKEN", &vault.token),
        ],
    );
    // Missing: self-hosted needs the license key, and the store has none.
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 2, "{err}");
    let line = last_line(&err);
    assert!(
        line.contains("LETTUCE_LICENSE_KEY: secret LETTUCE_LICENSE_KEY missing"),
        "{line}"
    );
    assert!(
        line.contains("secret/data/lettuce/LETTUCE_LICENSE_KEY"),
        "{line}"
    );

    // Present: the worker boots with the license from the store.
    vault.put("LETTUCE_LICENSE_KEY", &token).await;
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    assert!(w.printed("license verified"));
    assert!(w.printed("LETTUCE_LICENSE_KEY"));
    drop(w);

    // Read through on every fetch: a new version is seen by the next fetch.
    let raw = RawConfig::layer(&env).unwrap();
    let source = SecretSource::from_raw(&raw, &env).unwrap();
    vault.put("GITHUB_APP_CLIENT_SECRET", "first").await;
    let first = source
        .fetch("GITHUB_APP_CLIENT_SECRET")
        .await
        .unwrap()
        .unwrap();
    vault.put("GITHUB_APP_CLIENT_SECRET", "second").await;
    let second = source
        .fetch("GITHUB_APP_CLIENT_SECRET")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.expose().as_str(), second.expose().as_str()),
        ("first", "second")
    );

    // Denied: a token without read on the path.
    let weak = vault.powerless_token().await;
    let mut denied = env.clone();
    denied.insert("VAULT_TOKEN".into(), weak.clone());
    let (code, out, err) = run_worker(&["run"], &denied);
    assert_eq!(code, 2, "{err}");
    assert!(
        last_line(&err).contains("token lacks read on path"),
        "{err}"
    );
    assert!(!out.contains(&weak) && !err.contains(&weak) && !err.contains(&vault.token));

    // Down: nothing listens at VAULT_ADDR.
    let mut down = env.clone();
    down.insert(
        "VAULT_ADDR".into(),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let (code, _, err) = run_worker(&["run"], &down);
    assert_eq!(code, 2, "{err}");
    let line = last_line(&err);
    assert!(
        line.contains("unreachable") && line.contains("LETTUCE_LICENSE_KEY"),
        "{line}"
    );
    assert!(
        line.starts_with("ConfigError: ") && line.contains("cannot read secret"),
        "{line}"
    );
}

#[tokio::test]
async fn aws_secrets_manager_reads_through_and_names_missing_keys() {
    let moto = Moto::start().await;
    let db = TestDb::new().await;
    let (lic, token) = licensed(&claims(365));
    let mut env = db.env();
    env.extend(lic);
    env.remove("LETTUCE_LICENSE_KEY");
    env.insert("LETTUCE_SECRET_STORE".into(), "aws".into());
    env.extend(moto.env());
    let (code, _, err) = run_worker(&["run"], &env);
    assert_eq!(code, 2, "{err}");
    let line = last_line(&err);
    assert!(
        line.contains("secret LETTUCE_LICENSE_KEY missing")
            && line.contains("SecretId LETTUCE_LICENSE_KEY"),
        "{line}"
    );

    moto.create_secret("LETTUCE_LICENSE_KEY", &token).await;
    let mut w = WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    assert!(w.printed("license verified"));
    drop(w);

    let env_map: Env = env.clone();
    let raw = RawConfig::layer(&env_map).unwrap();
    let source = SecretSource::from_raw(&raw, &env_map).unwrap();
    moto.create_secret("GITHUB_APP_CLIENT_SECRET", "v1").await;
    let a = source
        .fetch("GITHUB_APP_CLIENT_SECRET")
        .await
        .unwrap()
        .unwrap();
    moto.put_secret_value("GITHUB_APP_CLIENT_SECRET", "v2")
        .await;
    let b = source
        .fetch("GITHUB_APP_CLIENT_SECRET")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.expose().as_str(), b.expose().as_str()), ("v1", "v2"));
    assert!(source.fetch("NOT_THERE").await.unwrap().is_none());

    // Down: the endpoint refuses connections.
    let mut down = env.clone();
    down.insert(
        "AWS_ENDPOINT_URL".into(),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let (code, _, err) = run_worker(&["run"], &down);
    assert_eq!(code, 2, "{err}");
    assert!(last_line(&err).contains("unreachable"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// check-config

#[tokio::test(flavor = "multi_thread")]
async fn check_config_passes_on_a_good_setup_and_reports_every_check() {
    let db = TestDb::new().await;
    let (lic, _) = licensed(&claims(365));
    let mut env = db.env();
    env.extend(lic);
    let app_key = AppKey::generate();
    let fake = FakeGithub::start(424242, &app_key, false).await;
    fake.add_installation(1, "acme");
    env.extend(github_vars(&app_key.pkcs1_pem));
    env.insert("GITHUB_API_URL".into(), fake.api_url());
    let (code, report, err) = check_config(&env, &[]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    let ids: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "config",
            "secrets",
            "license.signature",
            "license.expiry",
            "github.app",
            "github.api",
            "telemetry",
            "db.connect",
            "db.version",
            "db.privileges",
            "schema",
            "repositories",
            "db.notifications",
            "artifacts",
            "git",
            "scratch",
            "telemetry.receiver",
            "otlp"
        ]
    );
    for id in [
        "config",
        "license.signature",
        "license.expiry",
        "github.app",
        "github.api",
        "db.connect",
        "db.version",
        "db.privileges",
    ] {
        assert_eq!(level_of(&report, id).0, "ok", "{id}: {report:#}");
    }
    // The database did not exist as a schema yet: check-config applied nothing.
    assert_eq!(level_of(&report, "schema").0, "warn");
    let client = db.client().await;
    let schema: bool = client
        .query_one("SELECT to_regnamespace('lettuce') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!schema, "check-config must start nothing");
    // The human table carries the same rows.
    let (code, out, _) = run_worker(&["check-config"], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("db.privileges") && out.contains(" 0 fail"),
        "{out}"
    );
}

#[tokio::test]
async fn check_config_offline_touches_no_network() {
    // Every network dependency points at a closed port: a probe would fail or warn.
    let closed = free_port();
    let mut env = plain();
    set(
        &mut env,
        &[
            (
                "DATABASE_URL",
                &format!("postgres://postgres@127.0.0.1:{closed}/x"),
            ),
            ("LETTUCE_SECRET_STORE", "vault"),
            ("VAULT_ADDR", &format!("http://127.0.0.1:{closed}")),
            ("VAULT_TOKEN", "t"),
            ("CODEWAZE_S3_BUCKET", "b"),
            (
                "CODEWAZE_S3_ENDPOINT",
                &format!("http://127.0.0.1:{closed}"),
            ),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://127.0.0.1:{closed}"),
            ),
        ],
    );
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 0, "{report:#}");
    for id in [
        "secrets",
        "db.connect",
        "db.version",
        "db.privileges",
        "schema",
        "artifacts",
        "otlp",
    ] {
        assert_eq!(level_of(&report, id).0, "skip", "{id}: {report:#}");
    }
    // The same setup online fails on the database and the store.
    let (code, report, _) = check_config(&env, &[]);
    assert_eq!(code, 1);
    assert_eq!(level_of(&report, "secrets").0, "fail");
    assert_eq!(level_of(&report, "db.connect").0, "fail");
    assert_eq!(level_of(&report, "otlp").0, "warn");
}

#[tokio::test]
async fn check_config_fails_on_a_bad_config() {
    let mut env = TestDb::absent().env();
    set(
        &mut env,
        &[
            ("LETTUCE_LEASE_MS", "soon"),
            ("LETTUCE_SELF_HOSTED", "perhaps"),
        ],
    );
    let (code, report, _) = check_config(&env, &[]);
    assert_eq!(code, 1);
    let (level, message) = level_of(&report, "config");
    assert_eq!(level, "fail");
    assert!(
        message.contains("LETTUCE_LEASE_MS") && message.contains("LETTUCE_SELF_HOSTED"),
        "{message}"
    );
    assert_eq!(level_of(&report, "db.connect").0, "skip");
}

#[tokio::test]
async fn check_config_fails_on_license_signature_and_expiry() {
    let (mut env, _) = licensed(&claims(365));
    env.remove("LETTUCE_LICENSE_KEY");
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 1);
    let (level, message) = level_of(&report, "license.signature");
    assert_eq!(level, "fail");
    assert!(
        message.starts_with("LicenseMissing: LETTUCE_LICENSE_KEY is required"),
        "{message}"
    );

    let (mut env, _) = licensed(&claims(365));
    let forged = license::sign(&claims(365), &license::generate_signing_key());
    env.insert("LETTUCE_LICENSE_KEY".into(), forged);
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 1);
    assert!(
        level_of(&report, "license.signature")
            .1
            .starts_with("LicenseInvalid")
    );

    let (env, _) = licensed(&claims(-3));
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 1);
    assert_eq!(level_of(&report, "license.signature").0, "ok");
    let (level, message) = level_of(&report, "license.expiry");
    assert_eq!(level, "fail");
    assert!(message.starts_with("LicenseExpired"), "{message}");

    let (env, _) = licensed(&claims(5));
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 0);
    assert_eq!(level_of(&report, "license.expiry").0, "warn");
}

#[tokio::test]
async fn check_config_fails_on_a_partial_github_app() {
    let mut env = plain();
    set(
        &mut env,
        &[("GITHUB_APP_NAME", "x"), ("GITHUB_APP_ID", "7")],
    );
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 1);
    let (level, message) = level_of(&report, "github.app");
    assert_eq!(level, "fail");
    assert!(
        message.contains(
            "missing GITHUB_APP_PRIVATE_KEY, GITHUB_APP_CLIENT_ID, GITHUB_APP_CLIENT_SECRET"
        ),
        "{message}"
    );
    let (code, report, _) = check_config(&plain(), &["--offline"]);
    assert_eq!(code, 0);
    assert_eq!(level_of(&report, "github.app").0, "warn");
}

#[tokio::test]
async fn check_config_fails_when_the_secret_store_is_down() {
    let mut env = plain();
    set(
        &mut env,
        &[
            ("LETTUCE_SECRET_STORE", "vault"),
            ("VAULT_ADDR", &format!("http://127.0.0.1:{}", free_port())),
            ("VAULT_TOKEN", "t"),
            (
                "DATABASE_URL",
                &format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
            ),
        ],
    );
    let (code, report, _) = check_config(&env, &[]);
    assert_eq!(code, 1);
    let (level, message) = level_of(&report, "secrets");
    assert_eq!(level, "fail");
    assert!(message.contains("unreachable"), "{message}");
}

#[tokio::test]
async fn check_config_fails_when_the_database_is_unreachable() {
    let mut env = plain();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
    );
    let started = std::time::Instant::now();
    let (code, report, _) = check_config(&env, &[]);
    assert_eq!(code, 1);
    assert_eq!(level_of(&report, "db.connect").0, "fail");
    assert_eq!(level_of(&report, "db.version").0, "skip");
    // The connect is capped, not the 60 s boot retry (a bound, not a performance figure).
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn check_config_fails_when_the_role_cannot_create() {
    let db = TestDb::new().await;
    let role = format!("lettuce_weak_{:08x}", rand::random::<u32>());
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; REVOKE CREATE ON DATABASE {} FROM PUBLIC",
            db.name
        ))
        .await
        .unwrap();
    let mut env = db.env();
    env.insert(
        "DATABASE_URL".into(),
        db.url
            .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1),
    );
    let (code, report, _) = check_config(&env, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(level_of(&report, "db.connect").0, "ok");
    let (level, message) = level_of(&report, "db.privileges");
    assert_eq!(level, "fail");
    assert!(
        message.contains(&role) && message.contains("lacks CREATE"),
        "{message}"
    );
    assert_eq!(level_of(&report, "schema").0, "fail");
    drop(db);
    let admin = xtests::connect(&xtests::admin_url()).await;
    let _ = admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await;
}

#[tokio::test]
async fn check_config_fails_when_the_artifact_store_cannot_write() {
    let dir = scratch("art");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut env = Vars::new();
    env.insert(
        "CODEWAZE_DATA_DIR".into(),
        file.join("data").display().to_string(),
    );
    let (code, report, _) = check_config(&env, &["--offline"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(level_of(&report, "artifacts").0, "fail");
}

#[tokio::test]
async fn check_config_warns_when_receiver_or_otlp_are_unreachable() {
    let (mut env, _) = licensed(&claims(365));
    env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://127.0.0.1:{}", free_port()),
    );
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
    );
    let (_, report, _) = check_config(&env, &[]);
    let (level, message) = level_of(&report, "telemetry.receiver");
    assert_eq!(level, "warn", "{message}");
    assert!(message.contains("unreachable"));
    assert_eq!(level_of(&report, "otlp").0, "warn");
    // A listening receiver is ok.
    let port = answering_receiver().await;
    env.insert(
        "LETTUCE_TELEMETRY_URL".into(),
        format!("http://127.0.0.1:{port}/v1/heartbeat"),
    );
    env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://127.0.0.1:{port}"),
    );
    let (_, report, _) = tokio::task::spawn_blocking(move || check_config(&env, &[]))
        .await
        .unwrap();
    assert_eq!(level_of(&report, "telemetry.receiver").0, "ok");
    assert_eq!(level_of(&report, "otlp").0, "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_shows_the_age_of_the_last_heartbeat_receipt() {
    let db = TestDb::new().await;
    let (mut env, _) = licensed(&claims(365));
    env.insert("DATABASE_URL".into(), db.url.clone());
    let (code, _, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{err}");
    let port = answering_receiver().await;
    env.insert(
        "LETTUCE_TELEMETRY_URL".into(),
        format!("http://127.0.0.1:{port}/v1/heartbeat"),
    );
    let client = db.client().await;
    let report_for = |env: HashMap<String, String>| async move {
        tokio::task::spawn_blocking(move || check_config(&env, &[]))
            .await
            .unwrap()
            .1
    };
    let report = report_for(env.clone()).await;
    let (level, message) = level_of(&report, "telemetry.receiver");
    assert_eq!(level, "ok", "{message}");
    assert!(message.contains("no receipt yet"), "{message}");

    client
        .execute(
            "UPDATE lettuce.instance SET telemetry_last_receipt_at = now() - interval '3 hours'",
            &[],
        )
        .await
        .unwrap();
    let (level, message) = level_of(&report_for(env.clone()).await, "telemetry.receiver");
    assert_eq!(level, "ok", "{message}");
    assert!(message.contains("last receipt 3 h ago"), "{message}");

    client
        .execute(
            "UPDATE lettuce.instance SET telemetry_last_receipt_at = now() - interval '8 days', created_at = now() - interval '30 days'",
            &[],
        )
        .await
        .unwrap();
    let (level, message) = level_of(&report_for(env.clone()).await, "telemetry.receiver");
    assert_eq!(level, "warn", "{message}");
    assert!(message.contains("last receipt 8 d ago"), "{message}");
}

/// A loopback HTTP server that answers every request with 405 (reachable, but not a receiver
/// that takes GETs); returns its port.
async fn answering_receiver() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    port
}
