//! The GitHub access layer (`lettuce_worker::providers`) against the fake GitHub on loopback
//! (`xtests::fake_github`), and `worker check-config`'s `github.api` probe through the binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lettuce_worker::config::{Config, Secret};
use lettuce_worker::handlers::HandlerError;
use lettuce_worker::metrics::{Metrics, RateLimitCounter};
use lettuce_worker::providers::github::{GithubClient, GithubSettings, HOOKS_PERMISSION};
use lettuce_worker::providers::{HookSpec, Provider, ProviderError, RepoRef};
use xtests::fake_github::{AppKey, FakeGithub, Fault};
use xtests::{TestDb, run_worker};

const APP_ID: u64 = 424242;
const TOKENS: &str = "POST /app/installations/{id}/access_tokens";
const HOOKS: &str = "GET /repos/{o}/{r}/hooks";

fn settings(fake: &FakeGithub, key_text: &str) -> GithubSettings {
    GithubSettings {
        app_id: APP_ID,
        private_key: Secret::new(key_text.to_string()),
        endpoints: lettuce_worker::providers::github::Endpoints {
            api: fake.api_url(),
            server: fake.base.clone(),
        },
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }
}

/// A fake with installation 7 (account acme) holding `acme/app`, and a client for it.
async fn setup(ghes: bool) -> (AppKey, FakeGithub, GithubClient, RateLimitCounter) {
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, ghes).await;
    fake.add_installation(7, "acme");
    fake.add_repo(7, "acme/app", "main");
    let counter = RateLimitCounter::default();
    let client = GithubClient::new(&settings(&fake, &key.pkcs1_pem), counter.clone()).unwrap();
    (key, fake, client, counter)
}

fn app() -> RepoRef {
    RepoRef::github(7, "acme/app")
}

/// No installation token or App JWT the fake ever saw appears in `text`.
fn assert_no_secret(fake: &FakeGithub, text: &str) {
    for s in fake.secrets_seen() {
        // A JWT's claims and signature segments; a token whole.
        for part in s.split('.').filter(|p| p.len() >= 20) {
            assert!(!text.contains(part), "a credential leaked into: {text}");
        }
    }
}

fn spec(secret: &str) -> HookSpec {
    HookSpec {
        url: "https://lettuce.example/v1/github/webhook/acct-1".into(),
        events: vec!["push".into(), "pull_request".into(), "issues".into()],
        secret: Secret::new(secret.into()),
        active: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_token_requests_make_one_access_tokens_call() {
    let (_key, fake, client, _) = setup(false).await;
    fake.set_token_delay(Duration::from_millis(300));
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.access(&app()).await.unwrap() }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        let access = t.await.unwrap();
        // The clone URL is the server's, with no credentials in it.
        assert_eq!(access.clone_url, format!("{}/acme/app.git", fake.base));
        assert!(!access.clone_url.contains('@'));
        assert_eq!(format!("{:?}", access.token), "[redacted]");
        assert_no_secret(&fake, &format!("{access:?} {client:?}"));
        tokens.push(access.token.expose().clone());
    }
    assert_eq!(fake.count(TOKENS), 1, "one refresh served all 20");
    tokens.dedup();
    assert_eq!(tokens.len(), 1);
    let agents = fake.user_agents();
    assert!(
        agents
            .iter()
            .all(|ua| ua == &format!("lettuce-worker/{}", lettuce_worker::VERSION)),
        "{agents:?}"
    );
}

#[tokio::test]
async fn a_token_near_its_expiry_is_refreshed_and_a_fresh_one_is_reused() {
    let (_key, fake, client, _) = setup(false).await;
    // Four minutes left is inside the five-minute margin: every use refreshes.
    fake.set_token_ttl(Duration::from_secs(4 * 60));
    let first = client.access(&app()).await.unwrap();
    let second = client.access(&app()).await.unwrap();
    assert_eq!(fake.count(TOKENS), 2);
    assert_ne!(first.token.expose(), second.token.expose());
    // An hour left: cached.
    fake.set_token_ttl(Duration::from_secs(3600));
    let third = client.access(&app()).await.unwrap();
    let fourth = client.access(&app()).await.unwrap();
    client.repository(&app()).await.unwrap();
    assert_eq!(fake.count(TOKENS), 3);
    assert_eq!(third.token.expose(), fourth.token.expose());
    let left = third.expires_at - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::minutes(59), "{left}");
}

#[tokio::test]
async fn a_401_on_a_cached_token_refreshes_once_and_a_second_401_is_permanent() {
    let (_key, fake, client, _) = setup(false).await;
    client.list_hooks(&app()).await.unwrap();
    assert_eq!(fake.count(TOKENS), 1);
    // GitHub revoked the token: one refresh, then the call succeeds.
    fake.revoke_tokens();
    client.list_hooks(&app()).await.unwrap();
    assert_eq!(fake.count(TOKENS), 2);
    assert_eq!(fake.count(HOOKS), 3);
    // A 401 again on the fresh token: permanent, naming the key/App id mismatch.
    fake.fail_next(HOOKS, Fault::Unauthorized, 2);
    let err = client.list_hooks(&app()).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ProviderError::BadCredentials {
                provider: "GitHub",
                credential: "fresh installation token",
                hint,
            } if hint.contains("GITHUB_APP_ID=424242")
        ),
        "{err:?}"
    );
    assert_eq!(fake.count(TOKENS), 3, "refreshed exactly once");
    let HandlerError::Permanent(msg) = HandlerError::from(err.clone()) else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("GITHUB_APP_PRIVATE_KEY") && msg.contains("GITHUB_APP_ID=424242"),
        "{msg}"
    );
    assert_no_secret(&fake, &format!("{msg} {err:?}"));
}

#[tokio::test]
async fn rate_limits_of_both_kinds_snooze_until_the_reset_are_counted_then_succeed() {
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    fake.add_installation(7, "acme");
    fake.add_repo(7, "acme/app", "main");
    let metrics = Metrics::default();
    let client = GithubClient::new(
        &settings(&fake, &key.pkcs1_pem),
        metrics.rate_limit_counter(),
    )
    .unwrap();
    let provider = Provider::Github(client);

    // Primary: 403 with x-ratelimit-remaining 0 → until the reset, exactly.
    let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 120;
    fake.fail_next("GET /repos/{o}/{r}", Fault::PrimaryRateLimit { reset }, 1);
    let err = provider.repository(&app()).await.unwrap_err();
    let ProviderError::RateLimited {
        until,
        provider: "github",
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(until.unix_timestamp(), reset);
    let HandlerError::Snooze(d) = HandlerError::from(err) else {
        panic!()
    };
    assert!(
        d > Duration::from_secs(110) && d <= Duration::from_secs(120),
        "{d:?}"
    );

    // Secondary: retry-after → now + that.
    fake.fail_next(HOOKS, Fault::SecondaryRateLimit { retry_after: 30 }, 1);
    let before = time::OffsetDateTime::now_utc();
    let err = provider.list_hooks(&app()).await.unwrap_err();
    let ProviderError::RateLimited { until, .. } = err else {
        panic!("{err:?}")
    };
    let waited = until - before;
    assert!(
        waited >= time::Duration::seconds(29) && waited <= time::Duration::seconds(31),
        "{waited}"
    );
    // A rate limit on the token endpoint itself is one too.
    fake.revoke_tokens();
    let fresh = FakeGithub::start(APP_ID, &key, false).await;
    fresh.add_installation(7, "acme");
    fresh.fail_next(TOKENS, Fault::SecondaryRateLimit { retry_after: 5 }, 1);
    let c2 = GithubClient::new(
        &settings(&fresh, &key.pkcs1_pem),
        metrics.rate_limit_counter(),
    )
    .unwrap();
    assert!(matches!(
        c2.access(&app()).await,
        Err(ProviderError::RateLimited { .. })
    ));

    let text = metrics.render().await;
    assert!(
        text.contains("lettuce_provider_rate_limited_total{provider=\"github\"} 3"),
        "{text}"
    );
    // Then the calls go through.
    assert_eq!(
        provider.repository(&app()).await.unwrap().default_branch,
        "main"
    );
    provider.list_hooks(&app()).await.unwrap();
    c2.access(&app()).await.unwrap();
}

#[tokio::test]
async fn an_uninstalled_installation_is_permanent_and_names_it() {
    let (_key, fake, client, _) = setup(false).await;
    let err = client
        .access(&RepoRef::github(999, "acme/app"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::InstallationMissing {
            installation_id: 999
        }
    );
    // Uninstalled after a token was cached: the token stops working, the refresh finds none.
    client.repository(&app()).await.unwrap();
    fake.remove_installation(7);
    let err = client.repository(&app()).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::InstallationMissing { installation_id: 7 }
    );
    let HandlerError::Permanent(msg) = HandlerError::from(err) else {
        panic!()
    };
    assert!(
        msg.contains("installation 7") && msg.contains("uninstalled"),
        "{msg}"
    );
    assert_no_secret(&fake, &msg);
}

#[tokio::test]
async fn an_unknown_repository_is_permanent_and_names_it() {
    let (_key, fake, client, _) = setup(false).await;
    let gone = RepoRef::github(7, "acme/gone");
    let err = client.repository(&gone).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::RepositoryMissing {
            repo: "acme/gone".into()
        }
    );
    let HandlerError::Permanent(msg) = HandlerError::from(err) else {
        panic!()
    };
    assert!(msg.contains("repository acme/gone not found"), "{msg}");
    assert!(matches!(
        client.list_hooks(&gone).await,
        Err(ProviderError::RepositoryMissing { .. })
    ));
    assert_no_secret(&fake, &msg);
}

#[tokio::test]
async fn ghes_style_configuration_uses_the_api_v3_prefix_and_clones_from_the_host() {
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, true).await;
    fake.add_installation(7, "acme");
    fake.add_repo(7, "acme/app", "trunk");
    let host = fake.base.trim_start_matches("http://").to_string();
    let env: HashMap<String, String> = [
        ("GITHUB_APP_ID", APP_ID.to_string()),
        ("GITHUB_APP_NAME", "lettuce-test".into()),
        ("GITHUB_APP_PRIVATE_KEY", key.base64_pem()),
        ("GITHUB_APP_CLIENT_ID", "Iv1.abc".into()),
        ("GITHUB_APP_CLIENT_SECRET", "s3cr3t".into()),
        ("GITHUB_HOST", host.clone()),
        // Loopback speaks http, so the server URL is given; the API is derived from it.
        ("GITHUB_SERVER_URL", fake.base.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = Config::load(&env).unwrap();
    let settings = GithubSettings::from_config(&config).unwrap();
    assert_eq!(settings.endpoints.api, format!("{}/api/v3", fake.base));
    let client = GithubClient::new(&settings, RateLimitCounter::default()).unwrap();
    let meta = client.repository(&app()).await.unwrap();
    assert_eq!(meta.default_branch, "trunk");
    assert_eq!(meta.clone_url, format!("http://{host}/acme/app.git"));
    assert_eq!(fake.count(TOKENS), 1);
    assert_eq!(fake.count("GET /repos/{o}/{r}"), 1);
    assert!(format!("{settings:?}").contains("[redacted]"));
    assert!(!format!("{settings:?}").contains("BEGIN"));
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retryable() {
    let (key, fake, client, _) = setup(false).await;
    fake.fail_next("GET /repos/{o}/{r}", Fault::ServerError(502), 1);
    let err = client.repository(&app()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(matches!(HandlerError::from(err), HandlerError::Retryable(m) if m.contains("502")));
    // A slow answer past the request timeout.
    let mut s = settings(&fake, &key.pkcs1_pem);
    s.request_timeout = Duration::from_millis(300);
    let quick = GithubClient::new(&s, RateLimitCounter::default()).unwrap();
    fake.fail_next(HOOKS, Fault::Slow(Duration::from_secs(2)), 1);
    let err = quick.list_hooks(&app()).await.unwrap_err();
    let HandlerError::Retryable(msg) = HandlerError::from(err) else {
        panic!()
    };
    assert!(msg.contains("timed out"), "{msg}");
    // Nothing listening: retryable too.
    let port = xtests::services::free_port();
    s.endpoints.api = format!("http://127.0.0.1:{port}");
    let nowhere = GithubClient::new(&s, RateLimitCounter::default()).unwrap();
    let err = nowhere.access(&app()).await.unwrap_err();
    assert!(
        matches!(HandlerError::from(err.clone()), HandlerError::Retryable(_)),
        "{err:?}"
    );
    assert_no_secret(&fake, &format!("{msg} {err}"));
}

#[tokio::test]
async fn hooks_are_listed_created_updated_and_a_403_names_the_missing_permission() {
    let (_key, fake, client, _) = setup(false).await;
    assert!(client.list_hooks(&app()).await.unwrap().is_empty());
    let created = client
        .create_hook(&app(), &spec("whsec-one"))
        .await
        .unwrap();
    assert_eq!(
        created.url,
        "https://lettuce.example/v1/github/webhook/acct-1"
    );
    assert_eq!(created.events, ["push", "pull_request", "issues"]);
    let stored = fake.hooks("acme/app");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].secret.as_str(), stored[0].content_type.as_str()),
        ("whsec-one", "json")
    );
    let updated = client
        .update_hook(&app(), created.id, &spec("whsec-two"))
        .await
        .unwrap();
    assert_eq!(updated.id, created.id);
    assert_eq!(fake.hooks("acme/app")[0].secret, "whsec-two");
    assert_eq!(client.list_hooks(&app()).await.unwrap(), vec![updated]);

    fake.fail_next(
        "POST /repos/{o}/{r}/hooks",
        Fault::Forbidden {
            accepted_permissions: "repository_hooks=write".into(),
        },
        1,
    );
    let err = client.create_hook(&app(), &spec("x")).await.unwrap_err();
    let ProviderError::MissingPermission {
        permission,
        message,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(permission, "repository_hooks=write");
    assert_eq!(message, "Resource not accessible by integration");
    // Without GitHub's header, the permission the call needs is named.
    fake.fail_next(
        HOOKS,
        Fault::Forbidden {
            accepted_permissions: " ".into(),
        },
        1,
    );
    let err = client.list_hooks(&app()).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::MissingPermission { permission, .. } if permission == HOOKS_PERMISSION),
        "{err:?}"
    );
    assert!(
        matches!(HandlerError::from(err), HandlerError::Permanent(m) if m.contains(HOOKS_PERMISSION))
    );
}

#[tokio::test]
async fn every_key_form_signs_a_jwt_the_fake_accepts_and_a_wrong_key_is_named() {
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    fake.add_installation(7, "acme");
    fake.add_repo(7, "acme/app", "main");
    for text in [
        key.pkcs1_pem.clone(),
        key.pkcs8_pem.clone(),
        key.escaped_pem(),
        key.base64_pem(),
    ] {
        let client =
            GithubClient::new(&settings(&fake, &text), RateLimitCounter::default()).unwrap();
        client.access(&app()).await.unwrap();
        let probe = client.probe_app().await.unwrap();
        assert_eq!(
            (probe.slug.as_str(), probe.installations),
            ("lettuce-test-app", 1)
        );
    }
    // Another key: GitHub's 401 on the fresh JWT names the mismatch.
    let other = AppKey::generate();
    let client = GithubClient::new(
        &settings(&fake, &other.pkcs1_pem),
        RateLimitCounter::default(),
    )
    .unwrap();
    for err in [
        client.access(&app()).await.unwrap_err(),
        client.probe_app().await.unwrap_err(),
    ] {
        assert_eq!(
            err,
            ProviderError::BadCredentials {
                provider: "GitHub",
                credential: "fresh App JWT",
                hint: lettuce_worker::providers::github::bad_key_hint(APP_ID),
            }
        );
        assert!(err.to_string().contains("GITHUB_APP_ID=424242"), "{err}");
        assert_no_secret(&fake, &format!("{err} {err:?}"));
    }
}

/// RS256 JWT over `claims` with `key`, as a test forges one.
fn forge(key: &AppKey, claims: serde_json::Value) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            key.pkcs1_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let pair = ring::signature::RsaKeyPair::from_der(&der).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", b64(&sig))
}

#[tokio::test]
async fn the_fake_refuses_the_jwts_github_refuses() {
    let key = AppKey::generate();
    let other = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let http = reqwest::Client::new();
    let get = |jwt: String| {
        let http = http.clone();
        let url = format!("{}/app", fake.api_url());
        async move {
            let r = http.get(url).bearer_auth(jwt).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body)
        }
    };
    let good = serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": APP_ID.to_string()});
    assert_eq!(get(forge(&key, good.clone())).await.0, 200);
    for (what, jwt) in [
        (
            "expired",
            forge(
                &key,
                serde_json::json!({"iat": now - 700, "exp": now - 100, "iss": APP_ID}),
            ),
        ),
        (
            "lifetime over 10 min",
            forge(
                &key,
                serde_json::json!({"iat": now - 60, "exp": now + 900, "iss": APP_ID}),
            ),
        ),
        (
            "wrong iss",
            forge(
                &key,
                serde_json::json!({"iat": now - 60, "exp": now + 500, "iss": "1"}),
            ),
        ),
        ("wrong key", forge(&other, good.clone())),
        ("not a JWT", "ghs_notajwt".to_string()),
    ] {
        let (status, body) = get(jwt).await;
        assert_eq!(status, 401, "{what}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        assert!(body["documentation_url"].is_string(), "{what}: {body}");
    }
}

fn check_config_env(db: &TestDb, key_text: &str, fake: &FakeGithub) -> HashMap<String, String> {
    let mut env = db.env();
    for (k, v) in [
        ("GITHUB_APP_ID", APP_ID.to_string()),
        ("GITHUB_APP_NAME", "lettuce-test".into()),
        ("GITHUB_APP_PRIVATE_KEY", key_text.to_string()),
        ("GITHUB_APP_CLIENT_ID", "Iv1.0123456789abcdef".into()),
        ("GITHUB_APP_CLIENT_SECRET", "ghcs-client-secret".into()),
        ("GITHUB_API_URL", fake.api_url()),
        ("RUST_LOG", "debug".into()),
    ] {
        env.insert(k.into(), v);
    }
    env
}

fn github_api_check(stdout: &str) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "github.api")
        .cloned()
        .unwrap_or_else(|| panic!("no github.api check: {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_github_api_passes_against_the_fake_and_names_a_key_mismatch() {
    let db = TestDb::new().await;
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    fake.add_installation(7, "acme");
    fake.add_installation(8, "globex");

    let env = check_config_env(&db, &key.escaped_pem(), &fake);
    let (_, out, err) = run_worker(&["check-config", "--format", "json"], &env);
    let check = github_api_check(&out);
    assert_eq!(check["level"], "ok", "{check}\n{err}");
    let msg = check["message"].as_str().unwrap();
    assert!(
        msg.contains("lettuce-test-app") && msg.contains("2 installation(s)"),
        "{msg}"
    );
    assert_eq!(fake.count("GET /app"), 1);
    assert_eq!(fake.count("GET /app/installations"), 1);
    let (_, human, human_err) = run_worker(&["check-config"], &env);
    assert!(human.contains("github.api"), "{human}");
    for printed in [&out, &err, &human, &human_err] {
        assert_no_secret(&fake, printed);
    }

    // The fake knows another public key: fail, with the hint naming both variables.
    let other = AppKey::generate();
    let env = check_config_env(&db, &other.pkcs1_pem, &fake);
    let (code, out, err) = run_worker(&["check-config", "--format", "json"], &env);
    assert_eq!(code, 1, "{out}\n{err}");
    let check = github_api_check(&out);
    assert_eq!(check["level"], "fail", "{check}");
    assert!(
        check["message"].as_str().unwrap().contains("401"),
        "{check}"
    );
    let hint = check["hint"].as_str().unwrap();
    assert!(
        hint.contains("GITHUB_APP_PRIVATE_KEY does not match GITHUB_APP_ID"),
        "{hint}"
    );
    for printed in [&out, &err] {
        assert_no_secret(&fake, printed);
    }

    // --offline: no probe at all.
    let calls = fake.count("GET /app");
    let (_, out, _) = run_worker(&["check-config", "--format", "json", "--offline"], &env);
    assert!(!out.contains("github.api"), "{out}");
    assert_eq!(fake.count("GET /app"), calls);
}

/// check-config's installation count covers every page of `GET /app/installations`, not the
/// first 100 only.
#[tokio::test(flavor = "multi_thread")]
async fn the_installation_count_follows_every_page() {
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    for id in 1..=250 {
        fake.add_installation(id, &format!("org-{id}"));
    }
    let client = GithubClient::new(
        &settings(&fake, &key.pkcs1_pem),
        RateLimitCounter::default(),
    )
    .unwrap();
    let probe = client.probe_app().await.unwrap();
    assert_eq!(probe.installations, 250);
    assert_eq!(
        fake.count("GET /app/installations"),
        3,
        "pages of 100, 100 and 50"
    );
}
