//! `lettuce.repositories` and `worker repos list|index` (issue 15): the table's rules, the
//! listing an operator reads, and the `repo.index` jobs the CLI enqueues. Real binary, real
//! Postgres.

use xtests::{TestDb, run_worker};

async fn applied() -> (TestDb, std::collections::HashMap<String, String>) {
    let db = TestDb::new().await;
    let env = db.env();
    let (code, out, err) = run_worker(&["schema", "apply"], &env);
    assert_eq!(code, 0, "{out}{err}");
    (db, env)
}

#[tokio::test(flavor = "multi_thread")]
async fn repos_list_shows_each_repository_and_the_table_refuses_bad_rows() {
    let (db, env) = applied().await;
    let (code, out, err) = run_worker(&["repos", "list"], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "a header only: {out}");

    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id, webhook_status, webhook_error)
             VALUES ('github', 'github.com', 'acme/widgets', 42, 'manual', 'the App lacks Webhooks: Read & write'),
                    ('gitlab', 'gitlab.acme.test', 'grp/sub/proj', NULL, 'active', NULL)",
        )
        .await
        .unwrap();
    for bad in [
        "('github', 'github.com', 'acme/../etc', 1, 'pending')",
        "('github', 'github.com', 'widgets', 1, 'pending')",
        "('github', 'github.com/evil', 'a/b', 1, 'pending')",
        "('bitbucket', 'bitbucket.org', 'a/b', 1, 'pending')",
        "('github', 'github.com', 'a/b', 1, 'unknown')",
        "('github', 'github.com', 'a/b', 0, 'pending')",
    ] {
        let e = client
            .batch_execute(&format!(
                "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id, webhook_status) VALUES {bad}"
            ))
            .await
            .expect_err(bad);
        let text = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(text.contains("check constraint"), "{bad}: {e:?}");
    }
    let dup = client
        .batch_execute(
            "INSERT INTO lettuce.repositories (provider, host, full_name) VALUES ('github', 'github.com', 'acme/widgets')",
        )
        .await
        .expect_err("one row per provider, host and name");
    let text = dup
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(text.contains("duplicate key"), "{dup:?}");

    let (code, out, err) = run_worker(&["repos", "list"], &env);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].starts_with("github")
            && lines[1].contains("acme/widgets")
            && lines[1].contains("manual")
            && lines[1].ends_with("never"),
        "{out}"
    );
    assert!(
        lines[2].contains("webhook: the App lacks Webhooks: Read & write"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("gitlab")
            && lines[3].contains("grp/sub/proj")
            && lines[3].contains("active"),
        "{out}"
    );

    let (code, out, err) = run_worker(&["repos", "list", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["full_name"], "acme/widgets");
    assert_eq!(rows[0]["installation_id"], 42);
    assert_eq!(rows[0]["webhook_status"], "manual");
    assert_eq!(rows[0]["last_indexed_at"], serde_json::Value::Null);
    assert_eq!(rows[1]["provider"], "gitlab");
}

#[tokio::test(flavor = "multi_thread")]
async fn repos_index_enqueues_one_waiting_index_per_repository_and_ref() {
    let (db, env) = applied().await;
    let client = db.client().await;
    let (code, out, err) = run_worker(
        &["repos", "index", "acme/widgets", "--installation", "42"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let id: i64 = out.trim().parse().unwrap();
    let (again, _, _) = {
        let (c, o, e) = run_worker(
            &["repos", "index", "acme/widgets", "--installation", "42"],
            &env,
        );
        (o.trim().parse::<i64>().ok(), c, e)
    };
    assert_eq!(
        again,
        Some(id),
        "a second request while one waits is the same job"
    );
    let (code, out, err) = run_worker(
        &[
            "repos",
            "index",
            "acme/widgets",
            "--installation",
            "42",
            "--ref",
            "refs/heads/dev",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let dev: i64 = out.trim().parse().unwrap();
    assert_ne!(dev, id, "another ref is another job");
    let row = client
        .query_one(
            "SELECT kind, payload, state FROM lettuce.jobs WHERE id = $1",
            &[&dev],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "repo.index");
    assert_eq!(
        row.get::<_, serde_json::Value>(1),
        serde_json::json!({"provider": "github", "repo": "acme/widgets", "installation_id": 42, "ref": "refs/heads/dev"})
    );
    assert_eq!(row.get::<_, String>(2), "available");

    // Refused before anything connects: a database that does not answer is never asked.
    let mut nowhere = env.clone();
    nowhere.insert(
        "DATABASE_URL".into(),
        "postgres://postgres@127.0.0.1:1/none".into(),
    );
    for (args, want) in [
        (
            vec!["repos", "index", "acme/widgets"],
            "--installation: required",
        ),
        (
            vec!["repos", "index", "acme/../x", "--installation", "1"],
            "OWNER/NAME",
        ),
        (
            vec![
                "repos",
                "index",
                "a/b",
                "--provider",
                "svn",
                "--installation",
                "1",
            ],
            "--provider",
        ),
    ] {
        let (code, _, err) = run_worker(&args, &nowhere);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let n: i64 = xtests::scalar(&client, "SELECT count(*) FROM lettuce.jobs").await;
    assert_eq!(n, 2);
}

/// What `lettuce.enqueue_coalesced` promises (issue 15, "a burst of pushes coalesces"): twenty
/// concurrent calls leave one waiting job; while it runs, the next call makes exactly one more,
/// which later calls return; once it runs too, a third appears (a push during a run is never
/// swallowed), and the waiting one is always the one returned.
#[tokio::test(flavor = "multi_thread")]
async fn coalesced_enqueue_keeps_one_waiting_job_and_never_swallows_a_call_during_a_run() {
    let (db, _env) = applied().await;
    let enqueue = |url: String| async move {
        let client = xtests::connect(&url).await;
        let id: i64 = client
            .query_one(
                "SELECT lettuce.enqueue_coalesced('repo.index', 'github:acme/widgets:', '{\"repo\": \"acme/widgets\"}')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        id
    };
    let burst: Vec<i64> = futures_join(
        (0..20)
            .map(|_| tokio::spawn(enqueue(db.url.clone())))
            .collect(),
    )
    .await;
    let first = burst[0];
    assert!(burst.iter().all(|&id| id == first), "{burst:?}");
    let client = db.client().await;
    let run = |id: i64| {
        format!(
            "UPDATE lettuce.job_queue SET state = 'running', attempt = 1, locked_by = 'w', attempted_at = now(), lease_expires_at = now() + interval '1 minute' WHERE id = {id}"
        )
    };
    client.batch_execute(&run(first)).await.unwrap();
    let second = enqueue(db.url.clone()).await;
    assert_ne!(second, first, "a call while one runs leads to one more run");
    assert_eq!(enqueue(db.url.clone()).await, second, "…and only one");
    client.batch_execute(&run(second)).await.unwrap();
    let third = enqueue(db.url.clone()).await;
    assert!(third != first && third != second);
    let keys: Vec<String> = client
        .query(
            "SELECT unique_key FROM lettuce.job_queue WHERE kind = 'repo.index' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        [
            "github:acme/widgets:#0",
            "github:acme/widgets:#1",
            "github:acme/widgets:#2"
        ]
    );
    // Another repository, another key: not coalesced with these.
    let other: i64 = xtests::scalar(
        &client,
        "SELECT lettuce.enqueue_coalesced('repo.index', 'github:acme/gadgets:')",
    )
    .await;
    assert!(![first, second, third].contains(&other));
    let e = client
        .query_one("SELECT lettuce.enqueue_coalesced('repo.index', '')", &[])
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("coalesce_key must be"), "{e:?}");
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<i64>>) -> Vec<i64> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// The scheduled fallback's statement (issue 15): repositories never indexed, or not within
/// the interval, get one default-branch `repo.index` each (stalest first, bounded); a fresh one
/// gets none; running it again adds nothing while those wait.
#[tokio::test(flavor = "multi_thread")]
async fn due_repositories_get_one_reindex_each_and_fresh_ones_none() {
    let (db, _env) = applied().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id, last_indexed_at) VALUES
               ('github', 'github.com', 'acme/never', 7, NULL),
               ('github', 'github.com', 'acme/stale', 7, now() - interval '7 hours'),
               ('github', 'github.com', 'acme/fresh', 7, now() - interval '1 minute'),
               ('gitlab', 'gitlab.acme.test', 'grp/proj', NULL, now() - interval '1 day')",
        )
        .await
        .unwrap();
    let six_hours = std::time::Duration::from_secs(6 * 3600);
    let due = lettuce_worker::db::repositories::enqueue_due_reindexes(&client, six_hours, 100)
        .await
        .unwrap();
    assert_eq!(due.len(), 3, "{due:?}");
    let payloads: Vec<serde_json::Value> = client
        .query(
            "SELECT payload FROM lettuce.jobs WHERE kind = 'repo.index' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        payloads,
        [
            serde_json::json!({"provider": "github", "repo": "acme/never", "installation_id": 7}),
            serde_json::json!({"provider": "gitlab", "repo": "grp/proj"}),
            serde_json::json!({"provider": "github", "repo": "acme/stale", "installation_id": 7}),
        ]
    );
    let again = lettuce_worker::db::repositories::enqueue_due_reindexes(&client, six_hours, 100)
        .await
        .unwrap();
    assert!(again.is_empty(), "none added while those wait: {again:?}");
    let n: i64 = xtests::scalar(&client, "SELECT count(*) FROM lettuce.jobs").await;
    assert_eq!(n, 3);
    // Bounded: with those gone, one pass of limit 1 enqueues one.
    client
        .batch_execute("DELETE FROM lettuce.job_queue")
        .await
        .unwrap();
    let bounded = lettuce_worker::db::repositories::enqueue_due_reindexes(&client, six_hours, 1)
        .await
        .unwrap();
    assert_eq!(bounded.len(), 1);

    // A repository whose last index failed within the interval waits for the next one; one
    // that failed longer ago is due again.
    client
        .batch_execute(
            "DELETE FROM lettuce.job_queue;
             UPDATE lettuce.repositories SET last_indexed_at = now() WHERE full_name <> 'acme/stale';
             INSERT INTO lettuce.jobs (kind, payload, state, unique_key, finished_at, attempt, max_attempts)
             VALUES ('repo.index', '{}', 'discarded', 'github:acme/stale:#1', now() - interval '1 minute', 1, 1)",
        )
        .await
        .unwrap();
    let failed = lettuce_worker::db::repositories::enqueue_due_reindexes(&client, six_hours, 100)
        .await
        .unwrap();
    assert!(
        failed.is_empty(),
        "a repository that just failed is not retried every pass: {failed:?}"
    );
    client
        .batch_execute("UPDATE lettuce.job_history SET finished_at = now() - interval '7 hours'")
        .await
        .unwrap();
    let later = lettuce_worker::db::repositories::enqueue_due_reindexes(&client, six_hours, 100)
        .await
        .unwrap();
    assert_eq!(later.len(), 1, "due again one interval after the failure");
}

/// `github.event` through the real binary (issue 15): a push to the indexed branch enqueues one
/// `repo.index`; a redelivery does nothing twice; a burst coalesces into the waiting index; a
/// push while one runs leads to exactly one more; a pull request indexes its head; other
/// branches, other events and repositories this instance does not keep are ignored; a bad or
/// hostile payload is discarded naming the problem, and the jobs beside it go on.
#[tokio::test(flavor = "multi_thread")]
async fn github_events_enqueue_coalesced_indexes_once_per_delivery() {
    use std::time::Duration;
    let (db, mut env) = applied().await;
    env.remove("LETTUCE_DIAG_JOBS");
    // The events run on a queue of their own; the `repo.index` jobs they enqueue (queue
    // `default`) stay unclaimed, so their states show what was enqueued.
    env.insert("LETTUCE_QUEUES".into(), "events=4".into());
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id, default_branch)
             VALUES ('github', 'github.com', 'acme/widgets', 42, 'main')",
        )
        .await
        .unwrap();
    let mut w = xtests::WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let event = |delivery: &str, event: &str, body: serde_json::Value| serde_json::json!({"delivery_id": delivery, "event": event, "payload": body});
    let push = |git_ref: &str, repo: &str| {
        serde_json::json!({
            "ref": git_ref,
            "repository": {"full_name": repo, "default_branch": "main"},
            "installation": {"id": 42}
        })
    };
    let send = |payload: serde_json::Value| {
        let client = &client;
        async move {
            let id: i64 = client
                .query_one(
                    "SELECT lettuce.enqueue('github.event', $1, 'events')",
                    &[&payload],
                )
                .await
                .unwrap()
                .get(0);
            xtests::wait_final(client, id, Duration::from_secs(20)).await
        }
    };
    let indexes = || {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT id, state, payload FROM lettuce.jobs WHERE kind = 'repo.index' ORDER BY id",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, serde_json::Value>(2)))
                .collect::<Vec<_>>()
        }
    };

    let (state, ..) = send(event("d1", "push", push("refs/heads/main", "acme/widgets"))).await;
    assert_eq!(state, "completed");
    let first = indexes().await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1, "available");
    assert_eq!(
        first[0].2,
        serde_json::json!({"provider": "github", "repo": "acme/widgets", "installation_id": 42})
    );
    // Redelivered: handled once.
    assert_eq!(
        send(event("d1", "push", push("refs/heads/main", "acme/widgets")))
            .await
            .0,
        "completed"
    );
    // A burst while the index waits: coalesced into it.
    let burst: Vec<i64> = {
        let mut ids = Vec::new();
        for i in 2..22 {
            let p = event(
                &format!("d{i}"),
                "push",
                push("refs/heads/main", "acme/widgets"),
            );
            ids.push(
                client
                    .query_one(
                        "SELECT lettuce.enqueue('github.event', $1, 'events')",
                        &[&p],
                    )
                    .await
                    .unwrap()
                    .get(0),
            );
        }
        ids
    };
    for id in burst {
        assert_eq!(
            xtests::wait_final(&client, id, Duration::from_secs(20))
                .await
                .0,
            "completed"
        );
    }
    assert_eq!(indexes().await.len(), 1, "twenty pushes, one waiting index");
    // While it runs, a push leads to exactly one more.
    client
        .batch_execute(&format!(
            "UPDATE lettuce.job_queue SET state = 'running', attempt = 1, locked_by = 'elsewhere',
                    attempted_at = now(), lease_expires_at = now() + interval '1 hour' WHERE id = {}",
            first[0].0
        ))
        .await
        .unwrap();
    for d in ["d30", "d31"] {
        send(event(d, "push", push("refs/heads/main", "acme/widgets"))).await;
    }
    let now = indexes().await;
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(
        (now[0].1.as_str(), now[1].1.as_str()),
        ("running", "available")
    );
    // Ignored: another branch, another event, a repository this instance does not keep.
    send(event(
        "d40",
        "push",
        push("refs/heads/feature", "acme/widgets"),
    ))
    .await;
    send(event(
        "d41",
        "issues",
        serde_json::json!({"action": "opened"}),
    ))
    .await;
    send(event(
        "d42",
        "push",
        push("refs/heads/main", "acme/unknown"),
    ))
    .await;
    assert_eq!(indexes().await.len(), 2);
    // A pull request indexes its head.
    let mut pr = push("refs/heads/x", "acme/widgets");
    pr["action"] = "synchronize".into();
    pr["number"] = 7.into();
    send(event("d50", "pull_request", pr)).await;
    let now = indexes().await;
    assert_eq!(now.len(), 3);
    assert_eq!(now[2].2["ref"], "refs/pull/7/head");
    // Bad input is discarded naming the problem; the queue goes on.
    let (state, _, errors) =
        send(serde_json::json!({"delivery_id": "d60", "event": "push", "payload": {}, "extra": 1}))
            .await;
    assert_eq!(state, "discarded");
    assert!(errors.to_string().contains("extra"), "{errors}");
    let (state, _, errors) = send(event(
        "d61",
        "push",
        push("refs/heads/main", "acme/../../etc"),
    ))
    .await;
    assert_eq!(state, "discarded");
    assert!(errors.to_string().contains("OWNER/NAME"), "{errors}");
    let recorded: i64 =
        xtests::scalar(&client, "SELECT count(*) FROM lettuce.github_deliveries").await;
    assert_eq!(recorded, 1 + 20 + 2 + 3 + 1, "each handled delivery once");
    let linked: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.github_deliveries WHERE job_id IS NOT NULL",
    )
    .await;
    assert_eq!(linked, 1 + 20 + 2 + 1);
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// The scheduled fallback through three real replicas (issue 15): a stale repository gets one
/// `repo.index`, enqueued by one replica's pass (the maintenance turn), not one per replica.
#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_reindex_enqueues_once_for_three_replicas() {
    use std::time::Duration;
    let (db, mut env) = applied().await;
    env.insert("LETTUCE_REINDEX_INTERVAL".into(), "10s".into());
    // No replica claims the `repo.index` it enqueues (queue `default`): the test counts them.
    env.insert("LETTUCE_QUEUES".into(), "elsewhere=1".into());
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id, last_indexed_at)
             VALUES ('github', 'github.com', 'acme/stale', 7, now() - interval '1 hour'),
                    ('github', 'github.com', 'acme/fresh', 7, now())",
        )
        .await
        .unwrap();
    let mut replicas: Vec<_> = (0..3)
        .map(|_| xtests::WorkerProcess::start(&["run"], &env))
        .collect();
    for w in &mut replicas {
        w.wait_ready(Duration::from_secs(30)).await;
    }
    let jobs = xtests::eventually(Duration::from_secs(15), "a scheduled repo.index", || {
        let client = &client;
        async move {
            let rows = client
                .query(
                    "SELECT payload FROM lettuce.jobs WHERE kind = 'repo.index'",
                    &[],
                )
                .await
                .unwrap();
            (!rows.is_empty()).then(|| {
                rows.iter()
                    .map(|r| r.get::<_, serde_json::Value>(0))
                    .collect::<Vec<_>>()
            })
        }
    })
    .await;
    // Three more passes' worth of time: still the one job, and one replica said so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n: i64 = xtests::scalar(
        &client,
        "SELECT count(*) FROM lettuce.jobs WHERE kind = 'repo.index'",
    )
    .await;
    assert_eq!(n, 1, "{jobs:?}");
    assert_eq!(jobs[0]["repo"], "acme/stale");
    let told = replicas
        .iter()
        .filter(|w| w.printed("scheduled reindex: 1 repositories"))
        .count();
    assert_eq!(told, 1, "one replica enqueued it");
    for w in &mut replicas {
        w.signal(libc::SIGTERM);
        assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    }
}

/// `repo.webhook.ensure` through the real binary against the fake GitHub (issue 15): the hook
/// is created once across re-runs, updated when the secret changes, a 403 for want of the
/// Webhooks permission completes the job as `manual` naming it (no retry loop), a rate limit
/// snoozes without using an attempt, an uninstalled App is permanent (`failed`), a missing
/// `LETTUCE_WEB_URL` is named; no secret or token reaches the worker's output.
#[tokio::test(flavor = "multi_thread")]
async fn repo_webhook_ensure_creates_once_updates_on_a_new_secret_and_falls_back_to_manual() {
    use std::time::Duration;
    use xtests::fake_github::{AppKey, FakeGithub, Fault};
    const APP_ID: u64 = 515151;
    let key = AppKey::generate();
    let fake = FakeGithub::start(APP_ID, &key, false).await;
    fake.add_installation(7, "acme");
    fake.add_repo(7, "acme/app", "main");
    fake.add_repo(7, "acme/locked", "main");
    let (db, mut env) = applied().await;
    for (k, v) in [
        ("GITHUB_APP_ID", APP_ID.to_string()),
        ("GITHUB_APP_NAME", "lettuce-test".into()),
        ("GITHUB_APP_PRIVATE_KEY", key.base64_pem()),
        ("GITHUB_APP_CLIENT_ID", "Iv1.0123456789abcdef".into()),
        ("GITHUB_APP_CLIENT_SECRET", "ghcs-client-secret".into()),
        ("GITHUB_API_URL", fake.api_url()),
        ("GITHUB_SERVER_URL", fake.base.clone()),
        ("LETTUCE_WEB_URL", "https://lettuce.acme.test/".into()),
        ("LETTUCE_WEBHOOK_SECRET", "first-webhook-secret".into()),
        ("RUST_LOG", "info,lettuce_worker=debug".into()),
    ] {
        env.insert(k.into(), v);
    }
    let client = db.client().await;
    let ensure = |repo: &str, installation: u64| {
        let client = &client;
        let payload = serde_json::json!({"provider": "github", "repo": repo, "installation_id": installation, "account_id": 99});
        async move {
            let id: i64 = client
                .query_one(
                    "SELECT lettuce.enqueue('repo.webhook.ensure', $1)",
                    &[&payload],
                )
                .await
                .unwrap()
                .get(0);
            xtests::wait_final(client, id, Duration::from_secs(30)).await
        }
    };
    let status = |repo: &str| {
        let client = &client;
        let repo = repo.to_string();
        async move {
            let r = client
                .query_one(
                    "SELECT webhook_status, webhook_error, webhook_id FROM lettuce.repositories WHERE full_name = $1",
                    &[&repo],
                )
                .await
                .unwrap();
            (
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<i64>>(2),
            )
        }
    };
    let mut outputs = Vec::new();

    let mut w = xtests::WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(ensure("acme/app", 7).await.0, "completed");
    let hooks = fake.hooks("acme/app");
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(
        hooks[0].url,
        "https://lettuce.acme.test/v1/github/webhook/99"
    );
    let mut events = hooks[0].events.clone();
    events.sort();
    assert_eq!(events, ["issues", "pull_request", "push"]);
    assert_eq!(
        (hooks[0].secret.as_str(), hooks[0].content_type.as_str()),
        ("first-webhook-secret", "json")
    );
    assert_eq!(
        status("acme/app").await,
        ("active".into(), None, Some(hooks[0].id as i64))
    );
    // Again: nothing to change, no write.
    assert_eq!(ensure("acme/app", 7).await.0, "completed");
    assert_eq!(fake.hooks("acme/app").len(), 1);
    assert_eq!(fake.count("POST /repos/{o}/{r}/hooks"), 1);
    assert_eq!(fake.count("PATCH /repos/{o}/{r}/hooks/{id}"), 0);
    // 403 for want of the permission: completed, `manual`, naming it.
    fake.fail_next(
        "POST /repos/{o}/{r}/hooks",
        Fault::Forbidden {
            accepted_permissions: "admin:repo_hook".into(),
        },
        1,
    );
    assert_eq!(ensure("acme/locked", 7).await.0, "completed");
    let (st, err, _) = status("acme/locked").await;
    assert_eq!(st, "manual");
    assert!(
        err.as_deref().unwrap_or_default().contains("permission"),
        "{err:?}"
    );
    // A rate limit snoozes: the job ends completed on its first attempt.
    let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 2;
    fake.fail_next(
        "GET /repos/{o}/{r}/hooks",
        Fault::PrimaryRateLimit { reset },
        1,
    );
    let (state, attempt, _) = ensure("acme/app", 7).await;
    assert_eq!(
        (state.as_str(), attempt),
        ("completed", 1),
        "snoozed without an attempt"
    );
    // Uninstalled App: permanent, `failed`, naming the installation.
    let (state, _, errors) = ensure("acme/other", 8).await;
    assert_eq!(state, "discarded");
    assert!(errors.to_string().contains("installation 8"), "{errors}");
    assert_eq!(status("acme/other").await.0, "failed");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    outputs.extend(w.output());

    // A new secret: the hook is updated in place, not duplicated.
    env.insert(
        "LETTUCE_WEBHOOK_SECRET".into(),
        "second-webhook-secret".into(),
    );
    let mut w = xtests::WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(ensure("acme/app", 7).await.0, "completed");
    let hooks = fake.hooks("acme/app");
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].secret, "second-webhook-secret");
    assert_eq!(fake.count("PATCH /repos/{o}/{r}/hooks/{id}"), 1);
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    outputs.extend(w.output());

    // No LETTUCE_WEB_URL: permanent, naming it.
    env.remove("LETTUCE_WEB_URL");
    let mut w = xtests::WorkerProcess::start(&["run"], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let (state, _, errors) = ensure("acme/app", 7).await;
    assert_eq!(state, "discarded");
    assert!(errors.to_string().contains("LETTUCE_WEB_URL"), "{errors}");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(20)).await, Some(0));
    outputs.extend(w.output());

    let all = outputs.join("\n");
    for secret in ["first-webhook-secret", "second-webhook-secret"] {
        assert!(!all.contains(secret), "{secret} reached the log");
    }
    for s in fake.secrets_seen() {
        for part in s.split('.').filter(|p| p.len() >= 20) {
            assert!(!all.contains(part), "a credential reached the log");
        }
    }
}

/// check-config's `repositories` check: how many repositories are kept, and each whose webhook
/// is `manual` or `failed`, with its error; `ok` when none needs attention.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_lists_repositories_whose_webhook_needs_attention() {
    let (db, env) = applied().await;
    let report = |env: &std::collections::HashMap<String, String>| {
        let (_, out, err) = run_worker(&["check-config", "--format", "json"], env);
        let doc: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "repositories")
            .cloned()
            .unwrap_or_else(|| panic!("no repositories check: {doc}"))
    };
    let none = report(&env);
    assert_eq!(none["level"], "ok", "{none}");
    assert!(
        none["message"]
            .as_str()
            .unwrap()
            .starts_with("0 repositories"),
        "{none}"
    );

    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO lettuce.repositories (provider, host, full_name, installation_id, webhook_status, webhook_error)
             VALUES ('github', 'github.com', 'acme/widgets', 42, 'manual', 'the App lacks Webhooks: Read & write'),
                    ('github', 'github.com', 'acme/gone', 42, 'failed', 'repository acme/gone not found'),
                    ('gitlab', 'gitlab.acme.test', 'grp/sub/proj', NULL, 'active', NULL)",
        )
        .await
        .unwrap();
    let some = report(&env);
    assert_eq!(some["level"], "warn", "{some}");
    let message = some["message"].as_str().unwrap();
    assert!(
        message.starts_with("3 repositories kept; 2 without an active webhook"),
        "{message}"
    );
    assert!(
        message.contains("github:github.com/acme/widgets manual: the App lacks Webhooks")
            && message
                .contains("github:github.com/acme/gone failed: repository acme/gone not found")
            && !message.contains("grp/sub/proj"),
        "{message}"
    );
    assert!(
        some["hint"]
            .as_str()
            .unwrap()
            .contains("Webhooks: Read & write"),
        "{some}"
    );
}
