//! Boot: the gates, in the documented order (README "Boot gates"), before any job runs.
//!
//! 1. config (parsed by the caller; exit 2)
//! 2. license (exit 3), 3. GitHub App (exit 4), 4. telemetry resolution — [`gates`]
//! 5. database, with retry until `LETTUCE_DB_CONNECT_TIMEOUT_MS` (exit 5)
//! 6. schema, under the advisory lock (exit 6)
//!
//! then the runtime. `check-config` calls the same gate functions in report mode.

pub mod github;

use crate::heartbeat::decision as telemetry;
use crate::license::{self, entitlements};

use std::future::Future;
use std::sync::Arc;

use crate::artifacts::ArtifactStore;
use crate::config::{Config, ConfigError};
use crate::db::{self, DbError, DbPool};
use crate::handlers::Registry;
use crate::heartbeat::HeartbeatConfig;

/// Why the worker did not start (or stopped with an error). Each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    License(#[from] license::LicenseError),
    #[error("{0}")]
    GitHub(#[from] github::GithubError),
    #[error("DatabaseUnavailable: {0}")]
    Database(DbError),
    #[error("SchemaError: {0}")]
    Schema(db::schema::SchemaError),
    #[error("HttpError: cannot listen on LETTUCE_HTTP_ADDR={addr}: {error}")]
    Http { addr: String, error: String },
    #[error("RuntimeError: {0}")]
    Runtime(DbError),
}

impl BootError {
    /// The process exit code README "Exit codes" assigns to this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            BootError::Config(_) => 2,
            BootError::License(_) => 3,
            BootError::GitHub(_) => 4,
            BootError::Database(_) => 5,
            BootError::Schema(_) => 6,
            BootError::Http { .. } | BootError::Runtime(_) => 1,
        }
    }
}

/// Gate 5: connect (creating the database when missing), with retry.
pub async fn connect(config: &Config) -> Result<DbPool, BootError> {
    connect_to(config, true).await
}

/// [`connect`] for commands that change nothing: a missing database is an error, not created.
pub async fn connect_existing(config: &Config) -> Result<DbPool, BootError> {
    connect_to(config, false).await
}

async fn connect_to(config: &Config, create_missing: bool) -> Result<DbPool, BootError> {
    db::connect_with_retry(
        config.database_url.expose(),
        config.db_pool_size,
        config.db_connect_timeout,
        Some(config.db_statement_timeout),
        create_missing,
    )
    .await
    .map_err(BootError::Database)
}

/// Gate 6: apply the embedded schema (never over a newer revision; see [`db::schema`]).
pub async fn schema(pool: &DbPool) -> Result<db::schema::Applied, BootError> {
    db::schema::apply(pool, &db::schema::EMBEDDED, false)
        .await
        .map_err(BootError::Schema)
}

/// What gates 2–4 decided; the runtime receives it through `handlers::Services`.
#[derive(Debug, Clone)]
pub struct Gates {
    /// The verified license (`None` when not self-hosted).
    pub license: Option<license::License>,
    pub github: github::GithubStatus,
    pub telemetry: telemetry::TelemetryDecision,
    /// The license's caps (unlimited when not self-hosted).
    pub entitlements: entitlements::Entitlements,
}

/// Gates 2–4 for `worker run`, in the documented order (README "Boot gates"): license (exit 3), GitHub App (exit 4),
/// telemetry resolution. Each gate logs its own outcome; nothing here touches the network.
pub fn gates(config: &Config, now: time::OffsetDateTime) -> Result<Gates, BootError> {
    let license = license::gate(config, now)?;
    let github = github::check(&config.github)?;
    github::log(&github);
    let claims = license.as_ref().map(|l| &l.claims);
    let telemetry = telemetry::resolve(config, claims);
    telemetry::log(&telemetry);
    Ok(Gates {
        entitlements: entitlements::Entitlements::from_claims(claims),
        license,
        github,
        telemetry,
    })
}

/// What the daily heartbeat needs, when gate 4 made telemetry effective: the receiver and the
/// verified license's facts. `None` (dev mode, or telemetry off) means nothing is ever sent.
pub fn heartbeat_config(gates: &Gates) -> Option<HeartbeatConfig> {
    let claims = &gates.license.as_ref()?.claims;
    gates.telemetry.effective.then(|| {
        HeartbeatConfig::new(
            gates.telemetry.url.clone(),
            claims.jti.clone(),
            claims.sub.clone(),
            claims.seats,
            claims.repos,
        )
    })
}

/// The providers repository jobs use, built once (no network call): the GitHub App client
/// when gate 3 found an App, the GitLab client when `GITLAB_HOST` and `GITLAB_TOKEN` are set.
pub fn providers_for(
    config: &Config,
    gates: &Gates,
    metrics: &crate::metrics::Metrics,
) -> Result<crate::handlers::Providers, BootError> {
    use crate::providers::{Provider, github as client};
    let mut providers = crate::handlers::Providers {
        gitlab_host: config.github.gitlab_host.clone(),
        ..Default::default()
    };
    if gates.github.app().is_ok() {
        let client = client::GithubSettings::from_config(config)
            .and_then(|s| client::GithubClient::new(&s, metrics.rate_limit_counter()))
            .map_err(|e| BootError::GitHub(self::github::GithubError::Client(e.to_string())))?;
        providers.github = Some(Arc::new(Provider::Github(client)));
    }
    if config.github.gitlab_host.is_some() && config.github.gitlab_token.is_some() {
        let client = crate::providers::gitlab::GitlabSettings::from_config(config)
            .and_then(|s| {
                crate::providers::gitlab::GitlabClient::new(&s, metrics.rate_limit_counter())
            })
            .map_err(|e| {
                BootError::Config(ConfigError {
                    vars: vec![crate::config::BadVar {
                        name: "GITLAB_HOST".into(),
                        problem: e.to_string(),
                    }],
                })
            })?;
        providers.gitlab = Some(Arc::new(Provider::Gitlab(client)));
    }
    Ok(providers)
}

/// Builds the artifact store (no network call) and logs where artifacts go; warns when a
/// self-hosted install keeps them on the local disk.
pub fn artifact_store(config: &Config) -> Result<Arc<ArtifactStore>, BootError> {
    let store = ArtifactStore::from_config(config).map_err(|e| {
        BootError::Config(ConfigError {
            vars: vec![crate::config::BadVar {
                name: "CODEWAZE_S3_BUCKET".into(),
                problem: e.to_string(),
            }],
        })
    })?;
    if let Some(warning) = ArtifactStore::durability_warning(config) {
        tracing::warn!("{warning}");
    }
    tracing::info!(store = %store.describe(), "artifact store");
    if let ArtifactStore::Local(local) = &store {
        // A crash mid-write leaves a `.tmp-*` file; an hour without a write means nobody owns it.
        let local = local.clone();
        tokio::task::spawn_blocking(move || {
            let removed = local.sweep_temp(std::time::Duration::from_secs(3600));
            if removed > 0 {
                tracing::info!(removed, "removed stale artifact temp files");
            }
        });
    }
    Ok(Arc::new(store))
}

/// `worker run`: gates 2–4, then [`crate::Worker`] (gates 5–6 and the runtime) until
/// `shutdown` resolves or the runtime stops by itself.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BootError> {
    // Gates 2–4 run before anything listens or connects: a refused gate touches nothing.
    let facts = gates(&config, time::OffsetDateTime::now_utc())?;
    let mut worker = crate::Worker::new(config, facts, registry).start().await?;
    tokio::select! {
        _ = shutdown => worker.shutdown().await,
        ended = worker.stopped() => ended,
    }
}
