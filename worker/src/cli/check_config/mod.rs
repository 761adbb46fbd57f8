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
//!
//! Here: the report, in gate order, and its rendering. The checks themselves: `gates.rs` (license,
//! GitHub App), `database.rs` (`db.*`, `schema`, `repositories`), `services.rs` (`artifacts`,
//! `telemetry.receiver`, `otlp`), `probes.rs` (`gitlab.api`, `git`, `scratch`).

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::boot::github;
use crate::config::{Config, Env, RawConfig};
use crate::heartbeat::decision as telemetry;

mod database;
mod gates;
mod probes;
mod services;

use database::database_checks;
use gates::{github_api_check, github_check, license_checks};
use services::{artifact_check, otlp_check, receiver_check};

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

#[cfg(test)]
mod tests;
