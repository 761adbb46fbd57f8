//! The GitLab access layer (`lettuce_worker::providers::gitlab`) against the fake GitLab on
//! loopback (`xtests::fake_gitlab`), and `worker check-config`'s `gitlab.api`, `git` and
//! `scratch` checks through the binary.

use std::collections::HashMap;
use std::time::Duration;

use lettuce_worker::config::{Config, Secret};
use lettuce_worker::handlers::HandlerError;
use lettuce_worker::metrics::{Metrics, RateLimitCounter};
use lettuce_worker::providers::gitlab::{Endpoints, GitlabClient, GitlabSettings};
use lettuce_worker::providers::{HookSpec, Provider, ProviderError, ProviderKind, RepoRef};
use xtests::fake_gitlab::{CREATE_HOOK, FakeGitlab, Fault, LIST_HOOKS, PROJECT, UPDATE_HOOK, USER};
use xtests::{TestDb, run_worker};

const TOKEN: &str = "glpat-Zx81qYt0pLmNb7RvWc3K";

fn settings(fake: &FakeGitlab, token: &str) -> GitlabSettings {
    GitlabSettings {
        endpoints: Endpoints {
            api: format!("{}/api/v4", fake.base),
            server: fake.base.clone(),
        },
        token: Secret::new(token.to_string()),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }
}

/// A fake holding the private project `grp/sub/proj` and the public `grp/site`, and a client.
async fn setup() -> (FakeGitlab, GitlabClient) {
    let fake = FakeGitlab::start(TOKEN).await;
    fake.add_project("grp/sub/proj", "main", "private");
    fake.add_project("grp/site", "pages", "public");
    let client = GitlabClient::new(&settings(&fake, TOKEN), RateLimitCounter::default()).unwrap();
    (fake, client)
}

fn proj() -> RepoRef {
    RepoRef::gitlab("grp/sub/proj")
}

/// The token does not appear in `text`, whole or as a long piece.
fn assert_no_secret(text: &str) {
    assert!(!text.contains(TOKEN), "the token leaked into: {text}");
    assert!(
        !text.contains(&TOKEN[6..]),
        "part of the token leaked into: {text}"
    );
}

fn spec(secret: &str, events: &[&str]) -> HookSpec {
    HookSpec {
        url: "https://lettuce.example/v1/gitlab/webhook/acct-1".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        secret: Secret::new(secret.into()),
        active: true,
    }
}

#[tokio::test]
async fn project_metadata_and_clone_urls_carry_no_token() {
    let (fake, client) = setup().await;
    let provider = Provider::Gitlab(client);
    assert_eq!(provider.kind(), ProviderKind::Gitlab);
    let meta = provider.repository(&proj()).await.unwrap();
    assert_eq!(meta.full_name, "grp/sub/proj");
    assert_eq!(meta.default_branch, "main");
    assert!(meta.private);
    assert_eq!(meta.clone_url, format!("{}/grp/sub/proj.git", fake.base));
    let site = provider
        .repository(&RepoRef::gitlab("grp/site"))
        .await
        .unwrap();
    assert!(!site.private, "public visibility");
    assert_ne!(site.id, meta.id);

    // access: the configured token itself, far from expiry; no request, no credentials in the URL.
    let before = fake.count(PROJECT);
    let access = provider.access(&proj()).await.unwrap();
    assert_eq!(fake.count(PROJECT), before);
    assert_eq!(access.token.expose(), TOKEN);
    assert_eq!(access.clone_url, meta.clone_url);
    assert!(!access.clone_url.contains('@'));
    assert!(access.expires_at - time::OffsetDateTime::now_utc() > time::Duration::days(300));
    let Provider::Gitlab(client) = &provider else {
        unreachable!()
    };
    assert_no_secret(&format!(
        "{access:?} {meta:?} {client:?} {:?}",
        settings(&fake, TOKEN)
    ));

    // Projects are addressed by encoded path; the token never travels in a URL.
    let uris = fake.uris();
    assert!(
        uris.iter()
            .any(|u| u == "/api/v4/projects/grp%2Fsub%2Fproj"),
        "{uris:?}"
    );
    for u in &uris {
        assert_no_secret(u);
    }
    let agents = fake.user_agents();
    assert!(
        agents
            .iter()
            .all(|ua| ua == &format!("lettuce-worker/{}", lettuce_worker::VERSION)),
        "{agents:?}"
    );
}

#[tokio::test]
async fn settings_come_from_gitlab_host_as_a_host_name_or_a_full_url() {
    let load = |vars: &[(&str, &str)]| {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GitlabSettings::from_config(&Config::load(&env).unwrap())
    };
    let s = load(&[("GITLAB_HOST", "gitlab.acme.test"), ("GITLAB_TOKEN", TOKEN)]).unwrap();
    assert_eq!(s.endpoints.api, "https://gitlab.acme.test/api/v4");
    assert_eq!(s.endpoints.server, "https://gitlab.acme.test");
    assert_eq!(s.token.expose(), TOKEN);
    assert_no_secret(&format!("{s:?}"));

    // A full URL (how tests reach loopback): taken as the server, the API under it.
    let fake = FakeGitlab::start(TOKEN).await;
    fake.add_project("grp/sub/proj", "trunk", "internal");
    let s = load(&[("GITLAB_HOST", &fake.base), ("GITLAB_TOKEN", TOKEN)]).unwrap();
    assert_eq!(s.endpoints.api, format!("{}/api/v4", fake.base));
    let client = GitlabClient::new(&s, RateLimitCounter::default()).unwrap();
    assert_eq!(
        client.repository(&proj()).await.unwrap().default_branch,
        "trunk"
    );

    // A host without a token is named.
    let err = load(&[("GITLAB_HOST", "gitlab.acme.test")]).unwrap_err();
    assert!(err.to_string().contains("GITLAB_TOKEN"), "{err}");
}

#[tokio::test]
async fn hooks_are_listed_created_and_updated_with_gitlabs_flags_and_the_token_stored() {
    let (fake, client) = setup().await;
    assert!(client.list_hooks(&proj()).await.unwrap().is_empty());
    let created = client
        .create_hook(
            &proj(),
            &spec("whsec-one", &["push", "pull_request", "issues"]),
        )
        .await
        .unwrap();
    assert_eq!(
        created.url,
        "https://lettuce.example/v1/gitlab/webhook/acct-1"
    );
    assert_eq!(created.events, ["push", "pull_request", "issues"]);
    assert!(created.active);
    let stored = fake.hooks("grp/sub/proj");
    assert_eq!(stored.len(), 1);
    let h = &stored[0];
    assert!(h.push_events && h.merge_requests_events && h.issues_events);
    assert!(h.enable_ssl_verification);
    assert_eq!(h.token, "whsec-one");

    // Update in place: a new secret, issues dropped.
    let updated = client
        .update_hook(
            &proj(),
            created.id,
            &spec("whsec-two", &["push", "pull_request"]),
        )
        .await
        .unwrap();
    assert_eq!(updated.id, created.id);
    assert_eq!(updated.events, ["push", "pull_request"]);
    let stored = fake.hooks("grp/sub/proj");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].token, "whsec-two");
    assert!(!stored[0].issues_events && stored[0].merge_requests_events);
    assert_eq!(client.list_hooks(&proj()).await.unwrap(), vec![updated]);
    assert_eq!(
        (
            fake.count(LIST_HOOKS),
            fake.count(CREATE_HOOK),
            fake.count(UPDATE_HOOK)
        ),
        (2, 1, 1)
    );
    // An event GitLab has no flag for is refused before any request.
    let err = client
        .create_hook(&proj(), &spec("x", &["push", "release"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected(m) if m.contains("release")),
        "{err:?}"
    );
    assert_eq!(fake.count(CREATE_HOOK), 1);
}

#[tokio::test]
async fn a_403_on_hooks_is_a_missing_permission_naming_the_api_scope() {
    let (fake, client) = setup().await;
    fake.fail_next(CREATE_HOOK, Fault::Forbidden, 1);
    let err = client
        .create_hook(&proj(), &spec("x", &["push"]))
        .await
        .unwrap_err();
    let ProviderError::MissingPermission {
        provider,
        permission,
        message,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((*provider, permission.as_str()), ("GitLab", "api"));
    assert!(message.contains("higher privileges"), "{message}");
    let HandlerError::Permanent(msg) = HandlerError::from(err.clone()) else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("GITLAB_TOKEN") && msg.contains("`api` scope"),
        "{msg}"
    );
    assert_no_secret(&format!("{msg} {err:?}"));
    assert!(fake.hooks("grp/sub/proj").is_empty());
}

#[tokio::test]
async fn an_unknown_project_is_repository_missing_and_names_it() {
    let (_fake, client) = setup().await;
    let gone = RepoRef::gitlab("grp/gone");
    let err = client.repository(&gone).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::RepositoryMissing {
            repo: "grp/gone".into()
        }
    );
    let HandlerError::Permanent(msg) = HandlerError::from(err) else {
        panic!()
    };
    assert!(msg.contains("repository grp/gone not found"), "{msg}");
    assert!(matches!(
        client.list_hooks(&gone).await,
        Err(ProviderError::RepositoryMissing { .. })
    ));
    // A path outside the name rule never reaches the server.
    assert!(matches!(
        client.repository(&RepoRef::gitlab("grp/../x")).await,
        Err(ProviderError::Rejected(_))
    ));
    assert_no_secret(&msg);
}

#[tokio::test]
async fn a_wrong_token_is_bad_credentials_naming_gitlab_token() {
    let (fake, _) = setup().await;
    let wrong = "glpat-WrongWrongWrong0000";
    let client = GitlabClient::new(&settings(&fake, wrong), RateLimitCounter::default()).unwrap();
    for err in [
        client.repository(&proj()).await.unwrap_err(),
        client.list_hooks(&proj()).await.unwrap_err(),
        client.probe_user().await.unwrap_err(),
    ] {
        assert!(
            matches!(
                &err,
                ProviderError::BadCredentials {
                    provider: "GitLab",
                    ..
                }
            ),
            "{err:?}"
        );
        let HandlerError::Permanent(msg) = HandlerError::from(err.clone()) else {
            panic!("{err:?}")
        };
        assert!(msg.contains("GITLAB_TOKEN") && msg.contains("401"), "{msg}");
        assert!(!msg.contains(wrong) && !format!("{err:?}").contains(wrong));
        assert_no_secret(&msg);
    }
    assert_eq!(fake.count(PROJECT), 1);
    assert_eq!(fake.count(USER), 1);
}

#[tokio::test]
async fn a_429_snoozes_until_the_reset_and_is_counted_under_gitlab() {
    let fake = FakeGitlab::start(TOKEN).await;
    fake.add_project("grp/sub/proj", "main", "private");
    let metrics = Metrics::default();
    let client = GitlabClient::new(&settings(&fake, TOKEN), metrics.rate_limit_counter()).unwrap();
    let provider = Provider::Gitlab(client);

    // RateLimit-Reset: until that Unix time, exactly.
    let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 120;
    fake.fail_next(PROJECT, Fault::RateLimitReset { reset }, 1);
    let err = provider.repository(&proj()).await.unwrap_err();
    let ProviderError::RateLimited {
        until,
        provider: "gitlab",
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

    // Retry-After: now + that.
    fake.fail_next(LIST_HOOKS, Fault::RetryAfter { secs: 30 }, 1);
    let before = time::OffsetDateTime::now_utc();
    let err = provider.list_hooks(&proj()).await.unwrap_err();
    let ProviderError::RateLimited { until, .. } = err else {
        panic!("{err:?}")
    };
    let waited = until - before;
    assert!(
        waited >= time::Duration::seconds(29) && waited <= time::Duration::seconds(31),
        "{waited}"
    );
    let text = metrics.render().await;
    assert!(
        text.contains("lettuce_provider_rate_limited_total{provider=\"gitlab\"} 2"),
        "{text}"
    );
    // Then the calls go through.
    assert_eq!(
        provider.repository(&proj()).await.unwrap().default_branch,
        "main"
    );
    provider.list_hooks(&proj()).await.unwrap();
}

#[tokio::test]
async fn server_errors_and_timeouts_are_unavailable_and_retryable() {
    let (fake, client) = setup().await;
    fake.fail_next(PROJECT, Fault::ServerError(502), 1);
    let err = client.repository(&proj()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(matches!(HandlerError::from(err), HandlerError::Retryable(m) if m.contains("502")));

    let mut s = settings(&fake, TOKEN);
    s.request_timeout = Duration::from_millis(300);
    let quick = GitlabClient::new(&s, RateLimitCounter::default()).unwrap();
    fake.fail_next(LIST_HOOKS, Fault::Slow(Duration::from_secs(2)), 1);
    let err = quick.list_hooks(&proj()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    let HandlerError::Retryable(msg) = HandlerError::from(err.clone()) else {
        panic!()
    };
    assert!(msg.contains("timed out"), "{msg}");
    assert_no_secret(&format!("{msg} {err:?}"));

    // Nothing listening: retryable too.
    s.endpoints.api = format!("http://127.0.0.1:{}/api/v4", xtests::services::free_port());
    let nowhere = GitlabClient::new(&s, RateLimitCounter::default()).unwrap();
    let err = nowhere.repository(&proj()).await.unwrap_err();
    assert!(
        matches!(HandlerError::from(err.clone()), HandlerError::Retryable(_)),
        "{err:?}"
    );
    assert_no_secret(&format!("{err} {err:?}"));
}

fn find_check(stdout: &str, id: &str) -> Option<serde_json::Value> {
    let report: serde_json::Value =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
}

fn gitlab_env(db: &TestDb, fake: &FakeGitlab, token: &str) -> HashMap<String, String> {
    let mut env = db.env();
    env.insert("GITLAB_HOST".into(), fake.base.clone());
    env.insert("GITLAB_TOKEN".into(), token.into());
    env.insert("RUST_LOG".into(), "debug".into());
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_gitlab_api_passes_against_the_fake_and_a_wrong_token_fails_with_the_hint() {
    let db = TestDb::new().await;
    let fake = FakeGitlab::start(TOKEN).await;

    let env = gitlab_env(&db, &fake, TOKEN);
    let (_, out, err) = run_worker(&["check-config", "--format", "json"], &env);
    let check = find_check(&out, "gitlab.api").unwrap_or_else(|| panic!("{out}"));
    assert_eq!(check["level"], "ok", "{check}\n{err}");
    let msg = check["message"].as_str().unwrap();
    assert!(
        msg.contains("project_7_bot_lettuce") && msg.contains(&fake.base),
        "{msg}"
    );
    assert_eq!(fake.count(USER), 1);
    let (_, human, human_err) = run_worker(&["check-config"], &env);
    assert!(human.contains("gitlab.api"), "{human}");
    for printed in [&out, &err, &human, &human_err] {
        assert_no_secret(printed);
    }

    // A wrong token: fail, the hint naming GITLAB_TOKEN.
    let wrong = "glpat-NotTheRightOne12345";
    let env = gitlab_env(&db, &fake, wrong);
    let (code, out, err) = run_worker(&["check-config", "--format", "json"], &env);
    assert_eq!(code, 1, "{out}\n{err}");
    let check = find_check(&out, "gitlab.api").unwrap();
    assert_eq!(check["level"], "fail", "{check}");
    assert!(
        check["message"].as_str().unwrap().contains("401"),
        "{check}"
    );
    let hint = check["hint"].as_str().unwrap();
    assert!(
        hint.contains("GITLAB_TOKEN") && hint.contains("`api`"),
        "{hint}"
    );
    for printed in [&out, &err] {
        assert!(!printed.contains(wrong), "{printed}");
    }

    // --offline: no probe; without a token: no probe either.
    let calls = fake.count(USER);
    let (_, out, _) = run_worker(&["check-config", "--format", "json", "--offline"], &env);
    assert!(find_check(&out, "gitlab.api").is_none(), "{out}");
    let mut no_token = env.clone();
    no_token.remove("GITLAB_TOKEN");
    let (_, out, _) = run_worker(&["check-config", "--format", "json"], &no_token);
    assert!(find_check(&out, "gitlab.api").is_none(), "{out}");
    assert_eq!(fake.count(USER), calls);
}

/// `worker check-config --offline --format json` with exactly `env` (PATH included).
fn offline_report(env: &HashMap<String, String>) -> String {
    let out = std::process::Command::new(xtests::worker_bin())
        .args(["check-config", "--offline", "--format", "json"])
        .env_clear()
        .envs(env)
        .output()
        .expect("run worker");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn check_config_shows_git_and_a_writable_scratch_directory_and_fails_an_unwritable_one() {
    let data = std::env::temp_dir().join(format!("lettuce-gl-scratch-{}", std::process::id()));
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("PATH".into(), std::env::var("PATH").unwrap());
    env.insert(
        "DATABASE_URL".into(),
        "postgres://postgres@127.0.0.1:9/offline".into(),
    );
    env.insert("CODEWAZE_DATA_DIR".into(), data.display().to_string());

    // Good: git answers, the directory is created, written and its free space shown.
    let out = offline_report(&env);
    let git = find_check(&out, "git").unwrap_or_else(|| panic!("{out}"));
    assert_eq!(git["level"], "ok", "{git}");
    assert!(
        git["message"].as_str().unwrap().starts_with("git version"),
        "{git}"
    );
    let scratch = find_check(&out, "scratch").unwrap();
    assert!(
        matches!(scratch["level"].as_str(), Some("ok" | "warn")),
        "{scratch}"
    );
    let msg = scratch["message"].as_str().unwrap();
    assert!(
        msg.contains(&data.display().to_string()) && msg.contains("GiB free"),
        "{msg}"
    );
    assert!(data.is_dir());
    // The probe file is gone (the local artifact store's directory stays).
    let left: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".check-config"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Unwritable (tests run as root, so a path under a regular file): fail with the hint.
    env.insert("CODEWAZE_DATA_DIR".into(), "/etc/hostname/x".into());
    let out = offline_report(&env);
    let scratch = find_check(&out, "scratch").unwrap();
    assert_eq!(scratch["level"], "fail", "{scratch}");
    assert!(
        scratch["message"]
            .as_str()
            .unwrap()
            .contains("/etc/hostname/x"),
        "{scratch}"
    );
    assert!(
        scratch["hint"]
            .as_str()
            .unwrap()
            .contains("CODEWAZE_DATA_DIR"),
        "{scratch}"
    );

    // No git on PATH: a warning, not a failure.
    env.insert("CODEWAZE_DATA_DIR".into(), data.display().to_string());
    env.insert("PATH".into(), "/nonexistent".into());
    let out = offline_report(&env);
    let git = find_check(&out, "git").unwrap();
    assert_eq!(git["level"], "warn", "{git}");
    assert!(
        git["hint"].as_str().unwrap().contains("install git"),
        "{git}"
    );
    std::fs::remove_dir_all(&data).unwrap();
}
