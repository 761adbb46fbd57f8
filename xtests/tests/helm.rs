//! The Helm chart (`helm/lettuce-worker/`), rendered by a real Helm 3 and checked as Kubernetes
//! would: every built-in object against the Kubernetes JSON schemas of the versions the chart
//! claims (PyPI's `kubernetes-validate`, offline), the restricted-pod rules on the rendered pod,
//! the rendered KEDA query against a real database, and the rendered probes against a real
//! worker. `scripts/setup.d/40-helm.sh` installs helm and the validator.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use xtests::services::free_port;
use xtests::{TestDb, WorkerProcess, eventually, run_worker, scalar};

/// Kubernetes versions the chart's `kubeVersion` (>=1.27) claims, oldest and newest validated.
const KUBE_VERSIONS: &[&str] = &["1.27.0", "1.30.0", "1.33.0"];

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/lettuce-worker")
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new("helm")
        .args(args)
        .output()
        .expect("helm on PATH (scripts/setup.d/40-helm.sh installs it)")
}

/// `helm template` with the given extra arguments: every rendered object as JSON.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec!["template", "t", chart.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_to_json(&out.stdout)
}

fn yaml_to_json(yaml: &[u8]) -> Vec<Value> {
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(yaml).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "rendered output is not YAML");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn full_values() -> String {
    chart_dir()
        .join("ci/full-values.yaml")
        .display()
        .to_string()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

/// Validates the built-in objects strictly (unknown fields refused) against each version.
fn validate_builtin(objects: &[Value]) {
    let builtin: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            let group = o["apiVersion"].as_str().unwrap();
            !group.starts_with("keda.sh/") && !group.starts_with("monitoring.coreos.com/")
        })
        .collect();
    assert!(!builtin.is_empty());
    let dir = std::env::temp_dir().join(format!(
        "lettuce-helm-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, o) in builtin.iter().enumerate() {
        let f = dir.join(format!("{i}.json"));
        std::fs::write(&f, serde_json::to_vec(o).unwrap()).unwrap();
        files.push(f);
    }
    for version in KUBE_VERSIONS {
        let out = Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--quiet",
                "-k",
                version,
            ])
            .args(&files)
            .output()
            .expect("kubernetes-validate (scripts/setup.d/40-helm.sh installs it)");
        assert!(
            out.status.success(),
            "objects invalid for Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chart_lints_and_renders_valid_objects_with_default_and_full_values() {
    for values in [vec![], vec!["-f".to_string(), full_values()]] {
        let chart = chart_dir();
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend(values.iter().map(String::as_str));
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm lint {values:?}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let defaults = render(&[]);
    assert_eq!(
        kinds(&defaults),
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    validate_builtin(&defaults);

    let full = render(&["-f", &full_values()]);
    assert_eq!(
        kinds(&full),
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "ScaledObject",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "TriggerAuthentication"
        ]
    );
    validate_builtin(&full);

    // The custom resources, which no schema here knows: their shape, checked by hand.
    let so = find(&full, "ScaledObject");
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], "t-lettuce-worker");
    assert_eq!(so["spec"]["minReplicaCount"], 1);
    assert_eq!(so["spec"]["maxReplicaCount"], 50);
    let down = &so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"];
    assert!(down["stabilizationWindowSeconds"].as_i64().unwrap() >= 60);
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "postgresql");
    assert_eq!(trigger["metadata"]["targetQueryValue"], "1");
    let auth = find(&full, "TriggerAuthentication");
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let target = &auth["spec"]["secretTargetRef"][0];
    assert_eq!(target["parameter"], "connection");
    assert_eq!(target["key"], "LETTUCE_LISTEN_DATABASE_URL");
    let sm = find(&full, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let svc = find(&full, "Service");
    assert_eq!(svc["spec"]["ports"][0]["name"], "http-metrics");

    // With autoscaling the Deployment leaves the replica count to the autoscaler.
    assert!(find(&full, "Deployment")["spec"]["replicas"].is_null());
    assert_eq!(find(&defaults, "Deployment")["spec"]["replicas"], 2);

    // The CPU HPA instead of KEDA, also a valid built-in object.
    let hpa = render(&["--set", "autoscaling.hpa.enabled=true"]);
    let h = find(&hpa, "HorizontalPodAutoscaler");
    assert_eq!(h["spec"]["scaleTargetRef"]["name"], "t-lettuce-worker");
    assert!(h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"].as_i64() >= Some(60));
    validate_builtin(&hpa);
}

#[test]
fn chart_refuses_bad_values_by_name() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for (set, says) in [
        // A secret as a literal env value of the pod.
        ("worker.env.DATABASE_URL=postgres://u:pw@db/x", "worker.env"),
        // A queue name that would leave the quoted SQL string of the KEDA query.
        ("autoscaling.keda.queue=x'); DROP TABLE y; --", "queue"),
        ("worker.httpPort=0", "httpPort"),
        ("networkPolicy.egress.postgres.prots[0].port=5432", "prots"),
    ] {
        let out = helm(&["template", "t", chart, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(stderr.contains(says), "--set {set}: {stderr}");
    }
    // Both autoscalers at once, and KEDA without a direct connection in the chart's Secret.
    let out = helm(&[
        "template",
        "t",
        chart,
        "--set",
        "autoscaling.keda.enabled=true,autoscaling.hpa.enabled=true,secrets.LETTUCE_LISTEN_DATABASE_URL=x",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exclude each other"));
    let out = helm(&[
        "template",
        "t",
        chart,
        "--set",
        "autoscaling.keda.enabled=true",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LETTUCE_LISTEN_DATABASE_URL"));
}

#[test]
fn rendered_pod_is_restricted_and_takes_every_secret_from_a_secret() {
    for objects in [render(&[]), render(&["-f", &full_values()])] {
        let deploy = find(&objects, "Deployment");
        let pod = &deploy["spec"]["template"];
        let spec = &pod["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
            "true"
        );
        assert!(
            !spec["topologySpreadConstraints"]
                .as_array()
                .unwrap()
                .is_empty()
        );

        let c = &spec["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(sc["capabilities"]["add"].is_null());
        assert!(c["resources"]["requests"].is_object());
        assert!(c["resources"]["limits"]["memory"].is_string());

        // Writable paths are volumes: scratch, the license cache, /tmp.
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        for path in ["/var/lib/lettuce/data", "/var/cache/lettuce", "/tmp"] {
            assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
        }

        // No literal env at all: settings from the ConfigMap, secrets from the Secret.
        assert!(c["env"].is_null(), "literal env rendered: {}", c["env"]);
        let secret_ref = c["envFrom"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e["secretRef"]["name"].as_str())
            .expect("envFrom a Secret");
        let secret = find(&objects, "Secret");
        assert_eq!(secret["metadata"]["name"], secret_ref);
        let config = &find(&objects, "ConfigMap")["data"];
        for name in lettuce_worker::config::SECRET_VARIABLES {
            assert!(config[name].is_null(), "{name} in the ConfigMap");
        }

        // Grace: above the worker's shutdown grace plus a margin.
        let grace_ms: u64 = config["LETTUCE_SHUTDOWN_GRACE_MS"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let term = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(term * 1000 >= grace_ms + 10_000, "{term}s vs {grace_ms}ms");

        // Probes: liveness on /healthz, readiness and startup on /readyz, the named port.
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["startupProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["ports"][0]["name"], "http");

        let sa = find(&objects, "ServiceAccount");
        assert_eq!(sa["automountServiceAccountToken"], false);
        assert!(find(&objects, "PodDisruptionBudget")["spec"]["maxUnavailable"].is_number());

        // NetworkPolicy on by default: ingress only to the HTTP port; DNS and Postgres egress.
        let np = &find(&objects, "NetworkPolicy")["spec"];
        let ingress = np["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0]["ports"],
            serde_json::json!([{"port": "http", "protocol": "TCP"}])
        );
        let egress_ports: Vec<i64> = np["egress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_i64())
            .collect();
        for port in [53, 5432, 443, 4318] {
            assert!(egress_ports.contains(&port), "no egress to {port}");
        }
    }
    // The chart's own Secret is not made when the operator brings one.
    let objects = render(&["--set", "existingSecret=lettuce-prod"]);
    assert!(objects.iter().all(|o| o["kind"] != "Secret"));
    let c = &find(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        c["envFrom"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["secretRef"]["name"] == "lettuce-prod")
    );
}

#[tokio::test]
async fn rendered_keda_query_answers_replicas_wanted_at_any_backlog() {
    let full = render(&["-f", &full_values()]);
    let query = find(&full, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        query.contains("lettuce.desired_workers(10, 'default', 50)"),
        "{query}"
    );

    let db = TestDb::new().await;
    let (code, _, err) = run_worker(&["schema", "apply"], &db.env());
    assert_eq!(code, 0, "schema apply: {err}");
    let client = db.client().await;

    // Finished jobs (history) and future jobs are not work; other queues are not this queue's.
    client
        .batch_execute(
            "SELECT lettuce.enqueue('diag.noop', queue => 'default', run_at => now() + interval '1 hour')
               FROM generate_series(1, 300);
             SELECT lettuce.enqueue('diag.noop', queue => 'other') FROM generate_series(1, 300);
             INSERT INTO lettuce.job_history (id, kind, queue, payload, priority, state, attempt,
                    max_attempts, run_at, created_at, finished_at, errors)
             SELECT 1000000 + g, 'diag.noop', 'default', '{}', 0, 'completed', 1, 5, now(), now(),
                    now(), '[]' FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    assert_eq!(wanted(&client, &query).await, 0, "no runnable jobs");

    client
        .batch_execute("SELECT lettuce.enqueue('diag.noop') FROM generate_series(1, 250)")
        .await
        .unwrap();
    assert_eq!(wanted(&client, &query).await, 25, "250 runnable / 10 slots");
    // A running job still needs its slot.
    client
        .batch_execute(
            "UPDATE lettuce.job_queue SET state = 'running', attempt = 1
              WHERE id IN (SELECT id FROM lettuce.job_queue WHERE queue = 'default'
                           AND run_at <= now() LIMIT 5)",
        )
        .await
        .unwrap();
    assert_eq!(wanted(&client, &query).await, 25);
    client
        .batch_execute("SELECT lettuce.enqueue('diag.noop') FROM generate_series(1, 2250)")
        .await
        .unwrap();
    // 2,500 runnable would want 250; the scan stops at slots × max (500 rows → 50 replicas).
    assert_eq!(wanted(&client, &query).await, 50, "capped at maxReplicas");
    assert_eq!(
        scalar::<i32>(&client, "SELECT lettuce.desired_workers(10, NULL, 1000)").await,
        280,
        "every queue: 2,500 + 300 runnable"
    );

    // The plan reads the queue table under a limit, never the history (at this size a seq scan;
    // on a large queue table the planner takes `job_queue_fetch_idx`).
    client
        .batch_execute("VACUUM ANALYZE lettuce.job_queue")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            "EXPLAIN SELECT count(*) FROM (SELECT 1 FROM lettuce.job_queue j
              WHERE j.queue = 'default' AND j.run_at <= now() LIMIT 500) s",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("Limit"), "{plan}");
    assert!(plan.contains("job_queue"), "{plan}");
    assert!(!plan.contains("job_history"), "{plan}");
}

/// Runs the rendered KEDA query: replicas wanted.
async fn wanted(client: &tokio_postgres::Client, query: &str) -> i32 {
    client.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn rendered_probes_are_answered_by_a_real_worker() {
    let port = free_port();
    let objects = render(&["--set", &format!("worker.httpPort={port}")]);
    let deploy = find(&objects, "Deployment");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["ports"][0]["containerPort"], port);
    let config = find(&objects, "ConfigMap")["data"]
        .as_object()
        .unwrap()
        .clone();

    // The worker booted with the rendered settings (paths inside the pod swapped for temporary
    // ones; self-hosted off: no license here).
    let db = TestDb::absent();
    let mut env: HashMap<String, String> = db.env();
    for (k, v) in &config {
        env.insert(k.clone(), v.as_str().unwrap().to_string());
    }
    let scratch = std::env::temp_dir().join(format!("{}-helm", db.name));
    env.insert(
        "CODEWAZE_DATA_DIR".into(),
        scratch.join("data").display().to_string(),
    );
    env.insert(
        "LETTUCE_LICENSE_CACHE_PATH".into(),
        scratch.join("license.json").display().to_string(),
    );
    env.insert("LETTUCE_SELF_HOSTED".into(), "false".into());
    env.insert("LETTUCE_SHUTDOWN_GRACE_MS".into(), "15000".into());
    let mut worker = WorkerProcess::start(&["run"], &env);
    worker.wait_ready(Duration::from_secs(60)).await;

    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}{path}"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let path = |probe: &str| c[probe]["httpGet"]["path"].as_str().unwrap().to_string();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "http");
        let p = path(probe);
        eventually(
            Duration::from_secs(20),
            &format!("{probe} {p} → 200"),
            || {
                let p = p.clone();
                async move { (get(p).await == 200).then_some(()) }
            },
        )
        .await;
    }

    // While draining, liveness stays 200 (the pod is not killed mid-drain) and readiness is 503.
    let client = xtests::connect(&db.url).await;
    let id = xtests::enqueue_sql(&client, "diag.sleep", serde_json::json!({"ms": 8000})).await;
    eventually(Duration::from_secs(20), "the sleep job running", || {
        let client = &client;
        async move {
            let s: String = client
                .query_one("SELECT state FROM lettuce.jobs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            (s == "running").then_some(())
        }
    })
    .await;
    worker.signal(libc::SIGTERM);
    eventually(
        Duration::from_secs(5),
        "readiness 503 while draining",
        || {
            let p = path("readinessProbe");
            async move { (get(p).await == 503).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        get(path("livenessProbe")).await,
        200,
        "liveness while draining"
    );
    let _ = worker.wait_exit(Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(&scratch);
}
