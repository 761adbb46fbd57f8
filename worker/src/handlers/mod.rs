//! Handlers: one per job kind, with a typed payload. The runtime sees only the [`Registry`];
//! handlers see only their [`JobContext`], never the pool or `lettuce.jobs`.
//!
//! A handler's error tells the runtime what to do next (`HandlerError`): retry with backoff,
//! discard at once, snooze without using an attempt, or cancel.

pub mod diag;
pub mod diag_gates;
pub mod github_event;
pub mod repo_index;
pub mod repo_webhook;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{ArtifactStore, key_for};
use crate::boot::github::{GithubApp, GithubStatus};
use crate::db::DbPool;
use crate::db::jobs::ArtifactRow;
use crate::license::entitlements::{Entitlements, LimitReached};

/// What a handler's failure asks of the runtime.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// Try again after backoff (or discard when attempts are spent).
    #[error("{0}")]
    Retryable(String),
    /// Discard now; retrying cannot help (bad payload, license limit, …).
    #[error("{0}")]
    Permanent(String),
    /// Not now: run again after the delay, without using an attempt.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
    /// Stop this job for good, as `cancelled`.
    #[error("{0}")]
    Cancel(String),
}

/// Facts about the attempt being run.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
    /// `locked_by` of this attempt.
    pub worker_id: String,
}

/// Process-wide services handlers may use. Built once by the runtime.
pub struct Services {
    /// Used only through the narrow methods below, never handed to a handler.
    pool: DbPool,
    /// Where artifacts go; built once at boot from the configuration.
    artifacts: Arc<ArtifactStore>,
    /// The license caps handlers enforce through [`JobContext::require_repos`] and friends.
    pub entitlements: Entitlements,
    /// Gate 3's outcome; GitHub-dependent handlers call [`JobContext::github_app`].
    pub github: GithubStatus,
    /// The providers this instance can reach (built once at boot; each holds its token cache).
    providers: Providers,
    /// Where per-repository webhooks point and what they are signed with.
    webhooks: crate::config::WebhookVars,
}

/// The configured providers, by kind.
#[derive(Default, Clone)]
pub struct Providers {
    pub github: Option<Arc<crate::providers::Provider>>,
    pub gitlab: Option<Arc<crate::providers::Provider>>,
    /// The GitLab host repositories are recorded under.
    pub gitlab_host: Option<String>,
}

impl Services {
    /// Services with dev-mode gate outcomes (no license, no caps, no telemetry, no GitHub
    /// App); boot replaces them with [`Services::with_gates`].
    pub fn new(pool: DbPool, artifacts: Arc<ArtifactStore>) -> Self {
        Services {
            pool,
            artifacts,
            entitlements: Entitlements::unlimited(),
            github: GithubStatus::NotConfigured { gitlab_host: None },
            providers: Providers::default(),
            webhooks: crate::config::WebhookVars::default(),
        }
    }

    /// Takes the providers built at boot and the webhook settings.
    pub fn with_providers(
        mut self,
        providers: Providers,
        webhooks: crate::config::WebhookVars,
    ) -> Self {
        self.providers = providers;
        self.webhooks = webhooks;
        self
    }

    /// Takes the outcomes of boot gates 2–4.
    pub fn with_gates(mut self, gates: &crate::boot::Gates) -> Self {
        self.entitlements = gates.entitlements;
        self.github = gates.github.clone();
        self
    }
}

/// Everything a handler gets besides its payload.
#[derive(Clone)]
pub struct JobContext {
    pub job: JobInfo,
    /// Cancelled when the attempt must stop (lease lost, shutdown past its grace).
    pub cancel: CancellationToken,
    services: Arc<Services>,
    /// Artifacts this attempt produced; recorded with the completion.
    artifacts: Arc<Mutex<Vec<ArtifactRow>>>,
    /// Repository rows to update with the completion (`repo.index`).
    indexed: Arc<Mutex<Vec<crate::db::repositories::RepositoryIndexed>>>,
}

impl JobContext {
    pub fn new(job: JobInfo, cancel: CancellationToken, services: Arc<Services>) -> Self {
        JobContext {
            job,
            cancel,
            services,
            artifacts: Arc::default(),
            indexed: Arc::default(),
        }
    }

    /// Records one execution in `lettuce.diag_executions` (diagnostic kinds only).
    pub async fn record_diag_execution(&self) -> Result<i64, HandlerError> {
        crate::db::diag::record_execution(&self.services.pool, &self.job)
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    /// The license caps in force (unlimited when not self-hosted).
    pub fn entitlements(&self) -> &Entitlements {
        &self.services.entitlements
    }

    /// Fails the job permanently with `License limit reached: …` when `wanted` repositories
    /// exceed the license, and stamps `lettuce.instance.license_limit_reached_at` for the UI.
    pub async fn require_repos(&self, wanted: u64) -> Result<(), HandlerError> {
        let checked = self.services.entitlements.check_repos(wanted);
        self.limit_outcome(checked).await
    }

    /// Like [`JobContext::require_repos`], for seats.
    pub async fn require_seats(&self, wanted: u64) -> Result<(), HandlerError> {
        let checked = self.services.entitlements.check_seats(wanted);
        self.limit_outcome(checked).await
    }

    async fn limit_outcome(&self, checked: Result<(), LimitReached>) -> Result<(), HandlerError> {
        let Err(limit) = checked else {
            return Ok(());
        };
        // The badge is informative: failing to stamp it must not turn a permanent error into
        // a retry, so the error is only logged.
        if let Err(e) = crate::db::entitlements::record_limit_reached(&self.services.pool).await {
            tracing::warn!(error = %e, "could not record license_limit_reached_at");
        }
        tracing::warn!(job.id = self.job.id, job.kind = %self.job.kind, "{limit}");
        Err(HandlerError::Permanent(limit.to_string()))
    }

    /// The configured GitHub App, or the permanent error `GitHub App is not configured on
    /// this Lettuce instance` for GitHub-dependent jobs.
    pub fn github_app(&self) -> Result<&GithubApp, HandlerError> {
        self.services
            .github
            .app()
            .map_err(|m| HandlerError::Permanent(m.to_string()))
    }

    /// The GitHub host repositories are recorded under: the App's (`GITHUB_HOST`, default
    /// `github.com`), or `github.com` when no App is configured.
    pub fn github_host(&self) -> String {
        self.services
            .github
            .app()
            .map_or_else(|_| "github.com".to_string(), |a| a.github_host.clone())
    }

    /// The repository this instance keeps as (`provider`, `host`, `full_name`), if any.
    pub async fn repository(
        &self,
        provider: crate::providers::ProviderKind,
        host: &str,
        full_name: &str,
    ) -> Result<Option<crate::db::repositories::Repository>, HandlerError> {
        let client = self.client().await?;
        crate::db::repositories::find(&**client, provider, host, full_name)
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    /// Records a webhook delivery and, in the same transaction, enqueues its `repo.index`
    /// (coalesced); a delivery id seen before does nothing ([`crate::db::deliveries`]).
    pub async fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        index: Option<&crate::db::deliveries::IndexRequest>,
    ) -> Result<crate::db::deliveries::Delivery, HandlerError> {
        crate::db::deliveries::record(&self.services.pool, delivery_id, event, index)
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    /// The provider for `kind`, or the permanent error saying it is not configured.
    pub fn provider(
        &self,
        kind: crate::providers::ProviderKind,
    ) -> Result<&crate::providers::Provider, HandlerError> {
        use crate::providers::ProviderKind;
        let found = match kind {
            ProviderKind::Github => self.services.providers.github.as_deref(),
            ProviderKind::Gitlab => self.services.providers.gitlab.as_deref(),
        };
        found.ok_or_else(|| {
            HandlerError::Permanent(match kind {
                ProviderKind::Github => crate::boot::github::NOT_CONFIGURED.to_string(),
                ProviderKind::Gitlab => "GitLab is not configured on this Lettuce instance: set GITLAB_HOST and GITLAB_TOKEN".to_string(),
            })
        })
    }

    /// The host repositories of `kind` are recorded under.
    pub fn provider_host(&self, kind: crate::providers::ProviderKind) -> String {
        match kind {
            crate::providers::ProviderKind::Github => self.github_host(),
            crate::providers::ProviderKind::Gitlab => self
                .services
                .providers
                .gitlab_host
                .clone()
                .unwrap_or_default(),
        }
    }

    /// `LETTUCE_WEB_URL` and `LETTUCE_WEBHOOK_SECRET`.
    pub fn webhook_settings(&self) -> &crate::config::WebhookVars {
        &self.services.webhooks
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, HandlerError> {
        self.services
            .pool
            .get()
            .await
            .map_err(|e| HandlerError::Retryable(crate::db::DbError::from(e).to_string()))
    }

    /// Records the repository (provider, host, name) this job is about, within the license's
    /// `repos` cap: a new repository beyond it fails with `License limit reached: …`.
    pub async fn record_repository(
        &self,
        kind: crate::providers::ProviderKind,
        host: &str,
        full_name: &str,
        installation_id: Option<i64>,
    ) -> Result<crate::db::repositories::Repository, HandlerError> {
        let mut client = self.client().await?;
        let cap = self.services.entitlements.repos.map(u64::from);
        let recorded = crate::db::repositories::upsert_within(
            &mut client,
            kind,
            host,
            full_name,
            installation_id,
            cap,
        )
        .await
        .map_err(|e| HandlerError::Retryable(e.to_string()))?;
        match recorded {
            Ok(row) => Ok(row),
            Err(n) => {
                self.require_repos(n as u64).await?;
                Err(HandlerError::Permanent(format!(
                    "License limit reached: {n} repositories needed"
                )))
            }
        }
    }

    /// The hook recorded for repository `id`: `(webhook_id, webhook_secret_sha256)`.
    pub async fn webhook_record(
        &self,
        id: i64,
    ) -> Result<(Option<i64>, Option<String>), HandlerError> {
        let client = self.client().await?;
        crate::db::repositories::webhook_record(&**client, id)
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    /// Marks repository `id`'s webhook `active` with the hook and the secret's digest.
    pub async fn set_webhook_active(
        &self,
        id: i64,
        webhook_id: i64,
        secret_sha256: &str,
    ) -> Result<(), HandlerError> {
        let client = self.client().await?;
        crate::db::repositories::set_webhook_active(&**client, id, webhook_id, secret_sha256)
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    /// Sets repository `id`'s webhook status (`manual`, `failed`, …) and its last error.
    pub async fn set_webhook_status(
        &self,
        id: i64,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), HandlerError> {
        let client = self.client().await?;
        crate::db::repositories::set_webhook_status(&**client, id, status, error)
            .await
            .map(|_| ())
            .map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    /// The artifact store, for handlers that need more than [`JobContext::write_artifact`].
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.services.artifacts
    }

    /// Streams `body` to this attempt's artifact `name` (key `jobs/<id>/attempt-<n>/<name>`)
    /// and notes it, so the completion records its row. A failed write is retryable: the store
    /// may be down or misconfigured, and nothing is lost by trying the job again later.
    pub async fn write_artifact<R>(&self, name: &str, body: R) -> Result<ArtifactRow, HandlerError>
    where
        R: tokio::io::AsyncRead + Unpin + Send,
    {
        let key = key_for(self.job.id, self.job.attempt, name)
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let written = self
            .services
            .artifacts
            .put(&key, body, &self.cancel)
            .await
            .map_err(|e| HandlerError::Retryable(format!("artifact {key}: {e}")))?;
        let row = ArtifactRow {
            job_id: self.job.id,
            key: written.key,
            size: written.size as i64,
            sha256: written.sha256,
            etag: written.etag,
        };
        self.add_artifact(row.clone());
        Ok(row)
    }

    /// Notes an artifact this attempt wrote, to be recorded when the job completes.
    pub fn add_artifact(&self, row: ArtifactRow) {
        self.artifacts.lock().expect("artifact list lock").push(row);
    }

    /// Notes a repository's new index, recorded on its `lettuce.repositories` row in the
    /// transaction that completes the job (and only if it completes).
    pub fn on_complete_index(&self, row: crate::db::repositories::RepositoryIndexed) {
        self.indexed.lock().expect("indexed list lock").push(row);
    }

    /// Takes the repository rows noted so far.
    pub fn take_indexed(&self) -> Vec<crate::db::repositories::RepositoryIndexed> {
        std::mem::take(&mut *self.indexed.lock().expect("indexed list lock"))
    }

    /// The latest index recorded for repository `id`: `(commit, manifest_key)`.
    pub async fn last_index(&self, id: i64) -> Result<Option<(String, String)>, HandlerError> {
        let client = self.client().await?;
        crate::db::repositories::last_index(&**client, id)
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    /// Takes the artifacts noted so far.
    pub fn take_artifacts(&self) -> Vec<ArtifactRow> {
        std::mem::take(&mut *self.artifacts.lock().expect("artifact list lock"))
    }
}

/// A job kind's code.
pub trait Handler: Send + Sync + 'static {
    /// The kind name (`repo.index`, `diag.noop`).
    const KIND: &'static str;
    /// The payload's shape; a payload that does not deserialize discards the job at once.
    type Payload: DeserializeOwned + Send + 'static;

    /// The limit on one attempt; `None` uses `LETTUCE_JOB_TIMEOUT_MS`.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    fn run(
        &self,
        ctx: JobContext,
        payload: Self::Payload,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A boxed attempt future.
pub type AttemptFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// The type-erased face of a handler, as the runtime sees it.
pub trait ErasedHandler: Send + Sync {
    fn timeout(&self) -> Option<Duration>;
    fn call(&self, ctx: JobContext, payload: Value) -> AttemptFuture;
}

struct Typed<H>(Arc<H>);

impl<H: Handler> ErasedHandler for Typed<H> {
    fn timeout(&self) -> Option<Duration> {
        self.0.timeout()
    }

    fn call(&self, ctx: JobContext, payload: Value) -> AttemptFuture {
        let handler = self.0.clone();
        Box::pin(async move {
            let payload: H::Payload = serde_json::from_value(payload).map_err(|e| {
                HandlerError::Permanent(format!("payload does not match kind {}: {e}", H::KIND))
            })?;
            handler.run(ctx, payload).await
        })
    }
}

/// Kind name → handler. Built once at boot; the claim query asks only for these kinds.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn ErasedHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `handler` for its kind. Registering a kind twice is a wiring bug.
    pub fn register<H: Handler>(&mut self, handler: H) -> &mut Self {
        let previous = self
            .handlers
            .insert(H::KIND.to_string(), Arc::new(Typed(Arc::new(handler))));
        assert!(previous.is_none(), "job kind {} registered twice", H::KIND);
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn ErasedHandler>> {
        self.handlers.get(kind)
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.handlers.keys().cloned().collect();
        k.sort();
        k
    }

    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

/// The registry a `worker run` process uses for this configuration.
pub fn registry_for(config: &crate::config::Config) -> Registry {
    let mut r = Registry::new();
    // The kinds of the worker's own work (README "Job kinds"), in every `worker run`.
    r.register(github_event::GithubEvent)
        .register(repo_webhook::RepoWebhookEnsure)
        .register(repo_index::RepoIndex::new(config));
    if config.diag_jobs {
        diag::register(&mut r);
        diag_gates::register(&mut r);
    }
    r
}
