//! `worker check-config`: every boot gate in report mode, plus live probes, and nothing
//! started. It calls the same functions as `worker run` (config layering, the secret store's
//! `fill`, `license::verify`, `github::check`, `telemetry::resolve`) and turns each outcome
//! into a [`Check`] with a stable id instead of an exit.
//!
//! | id | what | live |
//! |---|---|---|
//! | `config` | variables parse (every bad one named) | |
//! | `secrets` | the secret store answers and holds what is required | yes |
//! | `license.signature` | the token verifies against the public key | |
//! | `license.expiry` | not expired; WARN under 14 days | |
//! | `github.app` | none or all five variables; id numeric; RSA key parses | |
//! | `github.api` | only when the App is configured: `GET /app` accepts the App JWT (the slug), installations it sees | yes |
//! | `gitlab.api` | only when `GITLAB_HOST` and `GITLAB_TOKEN` are set: `GET /api/v4/user` accepts the token (the user) | yes |
//! | `telemetry` | the resolved decision; WARN on a contradiction or the deprecated alias | |
//! | `db.connect` | one connection within min(`LETTUCE_DB_CONNECT_TIMEOUT_MS`, 5 s) | yes |
//! | `db.version` | server 15 or newer | yes |
//! | `db.privileges` | CREATE on schema `lettuce`, or on the database before it exists | yes |
//! | `schema` | the stored digest against this binary's list | yes |
//! | `artifacts` | write, read back and delete a probe object | S3 only |
//! | `git` | `git --version` answers (WARN only) | |
//! | `scratch` | `CODEWAZE_DATA_DIR` is writable; its free space (WARN under 1 GiB) | |
//! | `telemetry.receiver` | `LETTUCE_TELEMETRY_URL` answers (WARN only) | yes |
//! | `otlp` | the OTLP endpoint accepts a TCP connection (WARN only) | yes |
//!
//! `--offline` turns every network probe into `skip`. Secret values never appear: messages
//! carry variable names, paths and error kinds only.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::artifacts::ArtifactStore;
use crate::boot::github;
use crate::config::{Config, Env, RawConfig};
use crate::db;
use crate::heartbeat::decision as telemetry;
use crate::license;

mod probes;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    pub format: String,
    /// No network at all: no database, S3, secret store, receiver or OTLP probe
    #[arg(long)]
    pub offline: bool,
}

/// The outcome level of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id scripts match on (`license.signature`, `db.connect`, …).
    pub id: &'static str,
    pub level: Level,
    pub message: String,
    /// One line telling the operator what to do; set on every failure and most warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn check(id: &'static str, level: Level, message: impl Into<String>) -> Check {
    Check {
        id,
        level,
        message: message.into(),
        hint: None,
    }
}

fn hinted(id: &'static str, level: Level, message: impl Into<String>, hint: &str) -> Check {
    Check {
        id,
        level,
        message: message.into(),
        hint: Some(hint.to_string()),
    }
}

/// The longest a single probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Cap on the database connect timeout, so check-config answers fast.
const DB_TIMEOUT_CAP: Duration = Duration::from_secs(5);

/// Entry point straight from the environment: a configuration that does not load is a failed
/// `config` check (exit 1), not a boot error.
pub async fn run_env(args: Args, env: &Env) -> ExitCode {
    let checks = report(env, args.offline, OffsetDateTime::now_utc()).await;
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if args.format == "json" {
        let doc = serde_json::json!({ "ok": !failed, "offline": args.offline, "checks": checks });
        let text = serde_json::to_string_pretty(&doc).expect("report serialises");
        println!("{}", crate::redact::userinfo(&text));
    } else {
        print!("{}", crate::redact::userinfo(&render_human(&checks)));
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The human table: one row per check, a hint line under failures and warnings.
pub fn render_human(checks: &[Check]) -> String {
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    let mut out = String::new();
    for c in checks {
        let level = match c.level {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
            Level::Skip => "skip",
        };
        out.push_str(&format!("{level:<5} {:<19} {}\n", c.id, c.message));
        if let Some(h) = &c.hint {
            out.push_str(&format!("{:<25} hint: {h}\n", ""));
        }
    }
    out.push_str(&format!(
        "\n{} ok, {} warn, {} fail, {} skipped\n",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail),
        count(Level::Skip)
    ));
    out
}

/// Every check, in gate order. `offline` skips each network probe.
pub async fn report(env: &Env, offline: bool, now: OffsetDateTime) -> Vec<Check> {
    let mut out = Vec::new();
    let mut after_config = [
        "secrets",
        "license.signature",
        "license.expiry",
        "github.app",
        "telemetry",
        "db.connect",
        "db.version",
        "db.privileges",
        "schema",
        "repositories",
        "artifacts",
        "telemetry.receiver",
        "otlp",
    ]
    .into_iter();
    let skip_rest = |out: &mut Vec<Check>, rest: &mut dyn Iterator<Item = &'static str>| {
        for id in rest {
            out.push(check(
                id,
                Level::Skip,
                "skipped: the configuration did not load",
            ));
        }
    };

    // Gate 1 and the secret store, layered exactly as `Config::load_with_secrets` does.
    let mut raw = match RawConfig::layer(env) {
        Ok(raw) => raw,
        Err(e) => {
            out.push(hinted(
                "config",
                Level::Fail,
                e.to_string(),
                "fix each variable named above; booleans accept true/false/1/0/yes/no/on/off",
            ));
            skip_rest(&mut out, &mut after_config);
            return out;
        }
    };
    let store_kind = raw
        .get("LETTUCE_SECRET_STORE")
        .unwrap_or("env")
        .trim()
        .to_ascii_lowercase();
    let secrets_check = if store_kind == "env" {
        check(
            "secrets",
            Level::Ok,
            "LETTUCE_SECRET_STORE=env: secrets come from the environment",
        )
    } else if offline {
        check(
            "secrets",
            Level::Skip,
            format!(
                "skipped (--offline): the {store_kind} store was not asked for secret variables"
            ),
        )
    } else {
        match crate::secrets::fill(&mut raw, env).await {
            Ok(filled) => {
                let from = if filled.from_store.is_empty() {
                    "none".to_string()
                } else {
                    filled.from_store.join(", ")
                };
                check(
                    "secrets",
                    Level::Ok,
                    format!("{} answered; from the store: {from}", filled.store),
                )
            }
            Err(bad) => hinted(
                "secrets",
                Level::Fail,
                bad.iter()
                    .map(|b| format!("{}: {}", b.name, b.problem))
                    .collect::<Vec<_>>()
                    .join("; "),
                "check VAULT_ADDR/VAULT_TOKEN (vault) or AWS_* credentials and endpoint (aws), and that each named secret exists",
            ),
        }
    };
    // Secret variables a store would have filled are unknown offline; gates that need them
    // are skipped rather than failed.
    let unknown_offline =
        |raw: &RawConfig, name: &str| offline && store_kind != "env" && !raw.is_explicit(name);
    let config = match Config::from_raw(raw.clone()) {
        Ok(c) => c,
        Err(e) => {
            out.push(hinted(
                "config",
                Level::Fail,
                e.to_string(),
                "fix each variable named above; booleans accept true/false/1/0/yes/no/on/off",
            ));
            out.push(secrets_check);
            after_config.next();
            skip_rest(&mut out, &mut after_config);
            return out;
        }
    };
    let source = match &config.config_file {
        Some(f) => format!("defaults, {}, secret store, environment", f.display()),
        None => "defaults, secret store, environment".to_string(),
    };
    out.push(check(
        "config",
        Level::Ok,
        format!("every variable parses (layers: {source})"),
    ));
    out.push(secrets_check);

    // Gate 2: the license, without writing the cache (check-config starts nothing).
    let claims = license_checks(&config, &raw, now, &unknown_offline, &mut out);

    // Gate 3: the GitHub App.
    out.push(github_check(&config, &raw, &unknown_offline));
    if !offline
        && matches!(
            github::check(&config.github),
            Ok(github::GithubStatus::Configured(_))
        )
    {
        out.push(github_api_check(&config).await);
    }
    if !offline && probes::gitlab_configured(&config) {
        out.push(probes::gitlab_api_check(&config).await);
    }

    // Gate 4: telemetry resolution.
    let decision = telemetry::resolve(&config, claims.as_ref());
    let mut notes = vec![decision.reason.clone()];
    if decision.deprecated_alias_used {
        notes.push(telemetry::DEPRECATED_ALIAS_WARNING.to_string());
    }
    out.push(
        if decision.contradiction || decision.deprecated_alias_used {
            hinted(
                "telemetry",
                Level::Warn,
                notes.join("; "),
                "set LETTUCE_TELEMETRY_ENABLED explicitly and remove LETTUCE_TELEMETRY_DISABLED",
            )
        } else {
            check("telemetry", Level::Ok, decision.reason.clone())
        },
    );

    // Gates 5–6 as live probes.
    out.extend(database_checks(&config, offline).await);
    out.push(artifact_check(&config, offline).await);
    out.push(probes::git_check().await);
    out.push(probes::scratch_check(&config));
    out.push(receiver_check(&config, &decision, offline).await);
    out.push(otlp_check(env, offline).await);
    out
}

/// `license.signature` and `license.expiry`; returns the claims when the token verified.
fn license_checks(
    config: &Config,
    raw: &RawConfig,
    now: OffsetDateTime,
    unknown_offline: &dyn Fn(&RawConfig, &str) -> bool,
    out: &mut Vec<Check>,
) -> Option<license::Claims> {
    if !config.self_hosted {
        out.push(check(
            "license.signature",
            Level::Skip,
            "LETTUCE_SELF_HOSTED is false: no license needed",
        ));
        out.push(check(
            "license.expiry",
            Level::Skip,
            "LETTUCE_SELF_HOSTED is false: no license needed",
        ));
        return None;
    }
    let token = config.license_key.as_ref().map(|t| t.expose().trim());
    match token {
        Some(t) if !t.is_empty() => {}
        _ if unknown_offline(raw, "LETTUCE_LICENSE_KEY") => {
            for id in ["license.signature", "license.expiry"] {
                out.push(check(
                    id,
                    Level::Skip,
                    "skipped (--offline): LETTUCE_LICENSE_KEY would come from the secret store",
                ));
            }
            return None;
        }
        _ => {
            out.push(hinted(
                "license.signature",
                Level::Fail,
                license::LicenseError::Missing.to_string(),
                "set LETTUCE_LICENSE_KEY to the license JWT from Lettuce sales",
            ));
            out.push(check("license.expiry", Level::Skip, "no license to check"));
            return None;
        }
    };
    // The same findings gate 2 computes for `worker run` (without its one side effect, the
    // cache write), rendered as checks.
    match license::evaluate(config, now) {
        Ok(Some(l)) => {
            out.push(check(
                "license.signature",
                Level::Ok,
                format!(
                    "signature valid: customer {}, license {}",
                    l.claims.sub, l.claims.jti
                ),
            ));
            let date = OffsetDateTime::from_unix_timestamp(l.claims.exp)
                .map(|d| d.date().to_string())
                .unwrap_or_else(|_| l.claims.exp.to_string());
            let message = format!("expires on {date} ({} days left)", l.days_left);
            out.push(if license::expiring_soon(l.days_left) {
                hinted(
                    "license.expiry",
                    Level::Warn,
                    message,
                    "ask Lettuce sales for a renewal before the license expires",
                )
            } else {
                check("license.expiry", Level::Ok, message)
            });
            for w in l.warnings.iter().filter(|w| w.id != "license.expiry") {
                let hint = match w.id {
                    "license.clock" => {
                        "check NTP on this host; a clock turned back does not stretch a license"
                    }
                    _ => {
                        "check LETTUCE_LICENSE_CACHE_PATH: the worker keeps its license cache there"
                    }
                };
                out.push(hinted(w.id, Level::Warn, w.message.clone(), hint));
            }
            Some(l.claims)
        }
        Ok(None) => None,
        Err(e @ license::LicenseError::PublicKeyError(_)) => {
            out.push(hinted(
                "license.signature",
                Level::Fail,
                e.to_string(),
                "point LETTUCE_LICENSE_PUBLIC_KEY at the Ed25519 public key PEM (path or inline text)",
            ));
            out.push(check("license.expiry", Level::Skip, "no license to check"));
            None
        }
        Err(e @ license::LicenseError::Expired { .. }) => {
            out.push(check(
                "license.signature",
                Level::Ok,
                "signature valid".to_string(),
            ));
            out.push(hinted(
                "license.expiry",
                Level::Fail,
                e.to_string(),
                "install a renewed license in LETTUCE_LICENSE_KEY; the next boot refuses an expired one",
            ));
            None
        }
        Err(e) => {
            out.push(hinted(
                "license.signature",
                Level::Fail,
                e.to_string(),
                "use the exact token Lettuce issued and the matching public key",
            ));
            out.push(check(
                "license.expiry",
                Level::Skip,
                "no verified license to check",
            ));
            None
        }
    }
}

fn github_check(
    config: &Config,
    raw: &RawConfig,
    unknown_offline: &dyn Fn(&RawConfig, &str) -> bool,
) -> Check {
    let gitlab = config
        .github
        .gitlab_host
        .as_ref()
        .map(|h| format!("; GitLab host {h}"))
        .unwrap_or_default();
    match github::check(&config.github) {
        Ok(github::GithubStatus::NotConfigured { .. }) => hinted(
            "github.app",
            Level::Warn,
            format!(
                "{}: none of {} is set; GitHub jobs will fail{gitlab}",
                github::NOT_CONFIGURED,
                github::VARIABLES.join(", ")
            ),
            "register a GitHub App and set all five GITHUB_APP_* variables on every worker and api",
        ),
        Ok(github::GithubStatus::Configured(app)) => check(
            "github.app",
            Level::Ok,
            format!(
                "app {} (`{}`) on {}; private key: {} {}{gitlab}",
                app.app_id,
                app.app_name,
                app.github_host,
                app.key_form.describe(),
                app.key_encoding
            ),
        ),
        Err(github::GithubError::Incomplete { missing })
            if missing.iter().all(|m| unknown_offline(raw, m)) =>
        {
            check(
                "github.app",
                Level::Skip,
                format!(
                    "skipped (--offline): {} would come from the secret store",
                    missing.join(", ")
                ),
            )
        }
        Err(e) => {
            let hint = match e {
                github::GithubError::Incomplete { .. } => {
                    "set the missing variables (or unset all five to run without GitHub)"
                }
                github::GithubError::BadAppId(_) => {
                    "GITHUB_APP_ID is the numeric App ID from the App's settings page"
                }
                github::GithubError::BadPrivateKey { .. } => {
                    "paste the App's .pem as is, with literal \\n, or base64-encoded"
                }
                github::GithubError::Client(_) => {
                    "check GITHUB_APP_PRIVATE_KEY (an RSA key GitHub issued) and GITHUB_API_URL"
                }
            };
            hinted("github.app", Level::Fail, e.to_string(), hint)
        }
    }
}

/// `github.api`: the App JWT against `GET /app`, and the installations the App can see.
async fn github_api_check(config: &Config) -> Check {
    use crate::providers::ProviderError;
    use crate::providers::github::{GithubClient, GithubSettings};
    let probe = async {
        let settings = GithubSettings::from_config(config)?;
        let client = GithubClient::new(&settings, Default::default())?;
        let api = client.endpoints().api.clone();
        client.probe_app().await.map(|p| (p, api))
    };
    match probe.await {
        Ok((p, api)) => check(
            "github.api",
            if p.installations == 0 {
                Level::Warn
            } else {
                Level::Ok
            },
            format!(
                "{api} accepts the App JWT: app `{}`; {} installation(s) visible",
                p.slug, p.installations
            ),
        ),
        Err(e @ ProviderError::BadCredentials { .. }) => hinted(
            "github.api",
            Level::Fail,
            e.to_string(),
            "GITHUB_APP_PRIVATE_KEY does not match GITHUB_APP_ID: generate a new private key on the App's settings page, or fix the id",
        ),
        Err(e) => hinted(
            "github.api",
            Level::Fail,
            e.to_string(),
            "check that this host reaches GITHUB_HOST (or GITHUB_API_URL) over HTTPS",
        ),
    }
}

const CONNECT_HINT: &str = "check DATABASE_URL's host, port, user and password, and that Postgres accepts connections from here";

/// The hint for a failed connection: its real cause, not the generic list.
fn connect_hint(e: &tokio_postgres::Error) -> &'static str {
    match db::classify_connect_error(e) {
        db::ConnectFailure::Permanent("TLS") => {
            "the TLS handshake failed: check DATABASE_URL's sslmode and sslrootcert (verify-full also checks the host name; sslmode=disable or prefer for a server without TLS); TLS is never used over a Unix socket"
        }
        db::ConnectFailure::Permanent("authentication failed") => {
            "the server refused the credentials: check DATABASE_URL's user and password and the server's pg_hba.conf"
        }
        db::ConnectFailure::Permanent("role or client not allowed") => {
            "the role does not exist or pg_hba.conf does not let it in from here: check DATABASE_URL's user"
        }
        db::ConnectFailure::Permanent("permission denied") => {
            "the role may not connect to (or create) this database: grant CONNECT, or create the database first"
        }
        db::ConnectFailure::Transient("too many connections") => {
            "the server is at max_connections: lower LETTUCE_DB_POOL_SIZE or the replica count, or raise max_connections"
        }
        db::ConnectFailure::Permanent(db::STARTUP_PARAMETER_REFUSED) => {
            "PgBouncer accepts no `options` startup parameter: set LETTUCE_DB_STATEMENT_TIMEOUT_MS=0 (statement_timeout is then the server's or the role's setting)"
        }
        db::ConnectFailure::Transient("server starting up") => {
            "the server is starting up or in recovery: try again in a moment"
        }
        _ => CONNECT_HINT,
    }
}

async fn database_checks(config: &Config, offline: bool) -> Vec<Check> {
    let ids = [
        "db.connect",
        "db.version",
        "db.privileges",
        "schema",
        "repositories",
        "db.notifications",
    ];
    if offline {
        return ids
            .iter()
            .map(|id| check(id, Level::Skip, "skipped (--offline)"))
            .collect();
    }
    let skipped = |from: usize, why: &str| -> Vec<Check> {
        ids[from..]
            .iter()
            .map(|id| check(id, Level::Skip, format!("skipped: {why}")))
            .collect()
    };
    let parsed = db::parse_url(config.database_url.expose())
        .and_then(|pg| Ok((pg, db::tls_for(config.database_url.expose())?)));
    let (mut pg, tls) = match parsed {
        Ok(pair) => pair,
        Err(e) => {
            let hint = match e {
                db::DbError::Tls(_) => {
                    "sslrootcert must name a readable PEM file of CA certificates (or drop it to use the system roots)"
                }
                _ => "DATABASE_URL must be a postgres:// URL or key=value connection string",
            };
            let mut v = vec![hinted("db.connect", Level::Fail, e.to_string(), hint)];
            v.extend(skipped(1, "no connection"));
            return v;
        }
    };
    // The same startup options `worker run` sends, so a pooler that refuses them says so here.
    db::set_statement_timeout(&mut pg, Some(config.db_statement_timeout));
    let target = db::describe(&pg);
    let dbname = pg.get_dbname().unwrap_or("(default)").to_string();
    let pool = db::build_pool(pg, tls, 1);
    let limit = config.db_connect_timeout.min(DB_TIMEOUT_CAP);
    match tokio::time::timeout(limit, pool.get()).await {
        Ok(Ok(client)) => drop(client),
        Ok(Err(e)) => {
            let text = match &e {
                deadpool_postgres::PoolError::Backend(pe) => {
                    if pe.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
                        let mut v = vec![hinted(
                            "db.connect",
                            Level::Warn,
                            format!(
                                "{target}: the server answers but database `{dbname}` does not exist yet"
                            ),
                            "`worker run` creates it when the role has CREATEDB; otherwise create it first",
                        )];
                        v.extend(skipped(1, "the database does not exist yet"));
                        return v;
                    }
                    db::error_text(pe)
                }
                other => other.to_string(),
            };
            let hint = match &e {
                deadpool_postgres::PoolError::Backend(pe) => connect_hint(pe),
                _ => CONNECT_HINT,
            };
            let mut v = vec![hinted(
                "db.connect",
                Level::Fail,
                format!("{target}: {text}"),
                hint,
            )];
            v.extend(skipped(1, "no connection"));
            return v;
        }
        Err(_) => {
            let mut v = vec![hinted(
                "db.connect",
                Level::Fail,
                format!("{target}: no connection within {} ms", limit.as_millis()),
                "check DATABASE_URL's host and port and any firewall in between",
            )];
            v.extend(skipped(1, "no connection"));
            return v;
        }
    }
    let mut v = vec![check(
        "db.connect",
        Level::Ok,
        format!("connected to {target}"),
    )];
    let facts = match db::probe::server_facts(&pool).await {
        Ok(f) => f,
        Err(e) => {
            v.push(hinted(
                "db.version",
                Level::Fail,
                e.to_string(),
                "the role must be able to run simple queries",
            ));
            v.extend(skipped(2, "server facts unavailable"));
            return v;
        }
    };
    v.push(version_check(facts.version_num, &facts.version));
    let privilege_target = if facts.schema_exists {
        "schema `lettuce`".to_string()
    } else {
        format!("database `{}` (to create schema `lettuce`)", facts.database)
    };
    v.push(if facts.can_create {
        check(
            "db.privileges",
            Level::Ok,
            format!("role `{}` may CREATE in {privilege_target}", facts.user),
        )
    } else {
        hinted(
            "db.privileges",
            Level::Fail,
            format!("role `{}` lacks CREATE on {privilege_target}", facts.user),
            if facts.schema_exists {
                "GRANT CREATE ON SCHEMA lettuce TO the worker's role (or make it the owner)"
            } else {
                "GRANT CREATE ON DATABASE to the worker's role, or create schema lettuce owned by it"
            },
        )
    });
    let schema = schema_check(db::schema::state(&pool).await, facts.can_create);
    let usable = schema.level == Level::Ok;
    v.push(schema);
    v.push(if usable {
        repositories_check(&pool).await
    } else {
        check(
            "repositories",
            Level::Skip,
            "skipped: the schema is not at this binary's revision",
        )
    });
    v.push(notifications_check(config, &pool).await);
    v
}

/// `db.notifications`: does a NOTIFY sent over `DATABASE_URL` arrive over the URL LISTEN uses?
/// Not through a transaction pooler: then the worker polls, and this says how to wake it at once.
async fn notifications_check(config: &Config, pool: &db::DbPool) -> Check {
    const ID: &str = "db.notifications";
    let (url, var) = config.listen_url();
    let parsed = db::parse_url(url).and_then(|pg| Ok((pg, db::tls_for(url)?)));
    let (pg, tls) = match parsed {
        Ok(pair) => pair,
        Err(e) => {
            return hinted(
                ID,
                Level::Fail,
                format!("{var}: {e}"),
                "LETTUCE_LISTEN_DATABASE_URL must be a postgres:// URL or key=value connection string",
            );
        }
    };
    let target = db::describe(&pg);
    let round_trip = db::listener::notifications_arrive(&pg, &tls, pool, NOTIFY_LIMIT);
    match tokio::time::timeout(NOTIFY_LIMIT + DB_TIMEOUT_CAP, round_trip).await {
        Ok(Ok(Some(took))) => check(
            ID,
            Level::Ok,
            format!(
                "a NOTIFY over DATABASE_URL arrived over {var} ({target}) in {} ms",
                took.as_millis()
            ),
        ),
        Ok(Ok(None)) => hinted(
            ID,
            Level::Warn,
            format!(
                "a NOTIFY over DATABASE_URL did not arrive over {var} ({target}) within {} ms: the worker will poll every {} ms",
                NOTIFY_LIMIT.as_millis(),
                config.poll_interval.as_millis()
            ),
            "behind a transaction pooler (PgBouncer in transaction mode) LISTEN does not last: set LETTUCE_LISTEN_DATABASE_URL to a direct connection to the server (or a session-mode pool)",
        ),
        Ok(Err(e)) => hinted(
            ID,
            Level::Fail,
            format!("{var} ({target}): {e}"),
            "LETTUCE_LISTEN_DATABASE_URL (default DATABASE_URL) must reach the same database",
        ),
        Err(_) => hinted(
            ID,
            Level::Fail,
            format!("{var} ({target}): no answer in time"),
            "check LETTUCE_LISTEN_DATABASE_URL's host and port",
        ),
    }
}

/// How long `db.notifications` waits for its NOTIFY (as long as the worker waits at boot).
const NOTIFY_LIMIT: Duration = Duration::from_millis(1500);

/// `repositories`: how many repositories this instance keeps, and each whose webhook is
/// `manual` (the App or token lacks the webhook permission) or `failed`, with its error.
async fn repositories_check(pool: &db::DbPool) -> Check {
    const SHOWN: i64 = 10;
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            return hinted(
                "repositories",
                Level::Warn,
                e.to_string(),
                "the database answered a moment ago; run check-config again",
            );
        }
    };
    match db::repositories::webhook_problems(&**client, SHOWN).await {
        Ok((total, 0, _)) => check(
            "repositories",
            Level::Ok,
            format!("{total} repositories kept; no webhook needs attention"),
        ),
        Ok((total, bad, rows)) => {
            let mut listed: Vec<String> = rows
                .iter()
                .map(|(provider, host, name, status, error)| {
                    let why = error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    format!("{provider}:{host}/{name} {status}{why}")
                })
                .collect();
            if bad > SHOWN {
                listed.push(format!("and {} more (`worker repos list`)", bad - SHOWN));
            }
            hinted(
                "repositories",
                Level::Warn,
                format!(
                    "{total} repositories kept; {bad} without an active webhook: {}",
                    listed.join("; ")
                ),
                "for `manual`, grant the App \"Webhooks: Read & write\" (GitLab: a token with the `api` scope) and enqueue repo.webhook.ensure again, or add the hook by hand; until then the scheduled reindex keeps them fresh",
            )
        }
        Err(e) => hinted(
            "repositories",
            Level::Warn,
            e.to_string(),
            "the role must be able to read lettuce.repositories",
        ),
    }
}

/// The `schema` check: what the database records against this binary's revision.
fn schema_check(state: Result<Option<db::schema::Stored>, db::DbError>, can_create: bool) -> Check {
    use std::cmp::Ordering;
    let list = db::schema::EMBEDDED;
    let stored = match state {
        Ok(s) => s,
        Err(e) => {
            return hinted(
                "schema",
                Level::Fail,
                e.to_string(),
                "the role must be able to read lettuce.schema_state",
            );
        }
    };
    let current = stored
        .as_ref()
        .is_some_and(|s| s.revision == list.revision && s.digest == list.digest());
    if current {
        return check(
            "schema",
            Level::Ok,
            format!("revision {} applied and matches this binary", list.revision),
        );
    }
    if let Some(s) = stored.as_ref().filter(|s| s.revision > list.revision) {
        return if list.revision >= s.min_compatible {
            check(
                "schema",
                Level::Ok,
                format!(
                    "revision {} (applied by worker {}) is newer than this binary's {} and \
                     compatible with it; this binary leaves it as it is",
                    s.revision, s.version, list.revision
                ),
            )
        } else {
            hinted(
                "schema",
                Level::Fail,
                format!(
                    "revision {} (applied by worker {}) runs binaries of revision {} or newer; \
                     this binary is revision {}",
                    s.revision, s.version, s.min_compatible, list.revision
                ),
                "run the release that applied the schema (or a newer one)",
            )
        };
    }
    let found = match &stored {
        None => "not applied".to_string(),
        Some(s) => match s.revision.cmp(&list.revision) {
            Ordering::Less => format!(
                "at revision {}, older than this binary's {}",
                s.revision, list.revision
            ),
            _ => format!(
                "at revision {} but differs from this binary's statement list",
                s.revision
            ),
        },
    };
    if !can_create {
        return hinted(
            "schema",
            Level::Fail,
            format!("{found}, and this role cannot apply it"),
            "grant the CREATE privilege above, or run `worker schema apply` as a role that has it",
        );
    }
    check(
        "schema",
        Level::Warn,
        format!(
            "{found}; `worker run` applies revision {} at boot (or run `worker schema apply`)",
            list.revision
        ),
    )
}

async fn artifact_check(config: &Config, offline: bool) -> Check {
    // S3 is network (and its credentials may be waiting in the secret store): skip offline.
    // A local directory is not network, so it is probed even offline.
    if offline && config.s3.is_some() {
        let bucket = config
            .s3
            .as_ref()
            .map(|s| s.bucket.as_str())
            .unwrap_or_default();
        return check(
            "artifacts",
            Level::Skip,
            format!("skipped (--offline): S3 bucket {bucket}"),
        );
    }
    let store = match ArtifactStore::from_config(config) {
        Ok(s) => s,
        Err(e) => {
            return hinted(
                "artifacts",
                Level::Fail,
                e.to_string(),
                "check the CODEWAZE_S3_* variables",
            );
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT * 4, store.probe()).await {
        Ok(Ok(())) => {
            let durability = ArtifactStore::durability_warning(config);
            match durability {
                Some(w) => hinted(
                    "artifacts",
                    Level::Warn,
                    format!(
                        "probe object written, read back and deleted in {}; {w}",
                        store.describe()
                    ),
                    "set CODEWAZE_S3_BUCKET so every replica shares one artifact store",
                ),
                None => check(
                    "artifacts",
                    Level::Ok,
                    format!(
                        "probe object written, read back and deleted in {}",
                        store.describe()
                    ),
                ),
            }
        }
        Ok(Err(e)) => hinted(
            "artifacts",
            Level::Fail,
            format!("{}: {e}", store.describe()),
            "check the bucket exists and the credentials may put, get and delete objects (or that CODEWAZE_DATA_DIR is writable)",
        ),
        Err(_) => hinted(
            "artifacts",
            Level::Fail,
            format!(
                "{}: no answer within {:?}",
                store.describe(),
                PROBE_TIMEOUT * 4
            ),
            "check CODEWAZE_S3_ENDPOINT and the network path to it",
        ),
    }
}

/// The last heartbeat receipt as the database records it (`None` when it cannot be read, e.g.
/// before the schema exists).
/// `db.version`: PostgreSQL 15 or newer (`server_version_num` ≥ 150000).
fn version_check(version_num: i32, version: &str) -> Check {
    if version_num >= 150_000 {
        check("db.version", Level::Ok, format!("PostgreSQL {version}"))
    } else {
        hinted(
            "db.version",
            Level::Fail,
            format!("PostgreSQL {version} is too old; 15 or newer is required"),
            "upgrade the server to PostgreSQL 15+",
        )
    }
}

async fn receipt_status(config: &Config) -> Option<crate::heartbeat::HeartbeatStatus> {
    let pool = db::pool_for_url(config.database_url.expose(), 1).ok()?;
    let status = crate::heartbeat::status(&pool, OffsetDateTime::now_utc());
    tokio::time::timeout(PROBE_TIMEOUT, status).await.ok()?.ok()
}

async fn receiver_check(
    config: &Config,
    decision: &telemetry::TelemetryDecision,
    offline: bool,
) -> Check {
    if !decision.effective {
        return check("telemetry.receiver", Level::Skip, "telemetry is off");
    }
    if offline {
        return check(
            "telemetry.receiver",
            Level::Skip,
            format!("skipped (--offline): {}", decision.url),
        );
    }
    let receipt = receipt_status(config).await;
    let receipt_text = receipt
        .as_ref()
        .map_or_else(|| "no receipt recorded".to_string(), |r| r.describe());
    let http = match reqwest::Client::builder().timeout(PROBE_TIMEOUT).build() {
        Ok(h) => h,
        Err(e) => return check("telemetry.receiver", Level::Warn, e.to_string()),
    };
    match http.get(&decision.url).send().await {
        Ok(_) if receipt.as_ref().is_some_and(|r| r.receipt_stale) => hinted(
            "telemetry.receiver",
            Level::Warn,
            format!("{} reachable, but {receipt_text}", decision.url),
            "No telemetry receipt verified in 7 days: check the worker logs for heartbeat errors",
        ),
        Ok(r) => check(
            "telemetry.receiver",
            Level::Ok,
            format!(
                "{} answered HTTP {}; {receipt_text}",
                decision.url,
                r.status().as_u16()
            ),
        ),
        Err(e) => hinted(
            "telemetry.receiver",
            Level::Warn,
            format!(
                "{} unreachable: {}; {receipt_text}",
                decision.url,
                crate::error_text::full(&e)
            ),
            "allow outbound HTTPS to the receiver (or set LETTUCE_TELEMETRY_URL to your proxy); the worker runs anyway",
        ),
    }
}

async fn otlp_check(env: &Env, offline: bool) -> Check {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| {
        env.get(*k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    let Some(endpoint) = endpoint else {
        return check("otlp", Level::Skip, "no OTLP endpoint set: no exporter");
    };
    if offline {
        return check(
            "otlp",
            Level::Skip,
            format!("skipped (--offline): {endpoint}"),
        );
    }
    let url = match reqwest::Url::parse(&endpoint) {
        Ok(u) => u,
        Err(e) => {
            return hinted(
                "otlp",
                Level::Warn,
                format!("{endpoint} is not a URL: {e}"),
                "set OTEL_EXPORTER_OTLP_ENDPOINT like http://collector:4318",
            );
        }
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return hinted(
            "otlp",
            Level::Warn,
            format!("{endpoint} names no host"),
            "set OTEL_EXPORTER_OTLP_ENDPOINT like http://collector:4318",
        );
    };
    let addr = format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    );
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => check("otlp", Level::Ok, format!("{endpoint} accepts connections")),
        Ok(Err(e)) => hinted(
            "otlp",
            Level::Warn,
            format!("{endpoint} unreachable: {e}"),
            "start the collector or fix OTEL_EXPORTER_OTLP_ENDPOINT; traces are dropped meanwhile",
        ),
        Err(_) => hinted(
            "otlp",
            Level::Warn,
            format!("{endpoint}: no connection within {PROBE_TIMEOUT:?}"),
            "start the collector or fix OTEL_EXPORTER_OTLP_ENDPOINT; traces are dropped meanwhile",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_15_fail_the_version_check() {
        let old = version_check(140_010, "14.10");
        assert_eq!(old.level, Level::Fail);
        assert!(old.message.contains("too old"), "{}", old.message);
        assert_eq!(version_check(150_004, "15.4").level, Level::Ok);
        assert_eq!(version_check(170_000, "17.0").level, Level::Ok);
    }
}
