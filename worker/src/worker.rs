//! The composition root: the one place that assembles a running worker from its configuration,
//! what the boot gates decided ([`Gates`]), the job kinds ([`Registry`]) and the probe port.
//!
//! `worker run` (`boot::run`), the test harness and an embedder's binary all start a worker
//! here, the same way:
//!
//! ```no_run
//! # async fn demo(config: lettuce_worker::config::Config) -> Result<(), lettuce_worker::boot::BootError> {
//! use lettuce_worker::{Worker, boot, handlers};
//! let facts = boot::gates(&config, time::OffsetDateTime::now_utc())?;
//! let registry = handlers::registry_for(&config);
//! let worker = Worker::new(config, facts, registry).start().await?;
//! println!("probes on {:?}", worker.http_addr);
//! worker.shutdown().await
//! # }
//! ```
//!
//! Order (README "Boot gates" 5–6, then the runtime): the probe port answers first (`/healthz`
//! 200, `/readyz` 503 while connecting), then the database connection with retry, the schema
//! under its advisory lock, the probe pool, the artifact store and the providers, then the
//! runtime. [`Worker::start`] returns once the runtime is ready.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::boot::{self, BootError, Gates};
use crate::config::Config;
use crate::db;
use crate::handlers::{Registry, Services};
use crate::health::Health;
use crate::heartbeat::HeartbeatConfig;
use crate::metrics::Metrics;
use crate::runtime::{self, Deps, RuntimeHandle};

/// A worker to start: configuration, gate facts, job kinds, and optional overrides.
pub struct Worker {
    config: Config,
    facts: Gates,
    registry: Registry,
    /// A listener the caller bound (tests bind `127.0.0.1:0`); `None` binds
    /// `LETTUCE_HTTP_ADDR` when it is set.
    listener: Option<tokio::net::TcpListener>,
    /// `None`: derive the heartbeat from the gate facts (what `worker run` does).
    heartbeat: Option<Option<HeartbeatConfig>>,
}

impl Worker {
    /// A worker as `worker run` builds it.
    pub fn new(config: Config, facts: Gates, registry: Registry) -> Worker {
        Worker {
            config,
            facts,
            registry,
            listener: None,
            heartbeat: None,
        }
    }

    /// Serves the probes on `listener` instead of binding `LETTUCE_HTTP_ADDR`.
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Worker {
        self.listener = Some(listener);
        self
    }

    /// Replaces the telemetry heartbeat the gate facts imply (tests shorten its timings and
    /// move its clock; `None` turns it off).
    pub fn heartbeat(mut self, heartbeat: Option<HeartbeatConfig>) -> Worker {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// Gates 5–6 and the runtime; returns once the worker is ready to claim. A failure before
    /// that (database, schema, probe port) is the [`BootError`] `worker run` exits with.
    pub async fn start(self) -> Result<WorkerHandle, BootError> {
        let Worker {
            config,
            facts,
            registry,
            listener,
            heartbeat,
        } = self;
        let config = Arc::new(config);
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        let http_stop = CancellationToken::new();
        let http_guard = http_stop.clone().drop_guard();
        let listener =
            match (listener, config.http_addr) {
                (Some(l), _) => Some(l),
                (None, Some(addr)) => {
                    Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                        BootError::Http {
                            addr: addr.to_string(),
                            error: e.to_string(),
                        }
                    })?)
                }
                (None, None) => None,
            };
        let http_addr = match listener {
            Some(l) => Some(
                crate::http::serve_on(l, health.clone(), metrics.clone(), http_stop.clone())
                    .map_err(|e| BootError::Http {
                        addr: config
                            .http_addr
                            .map_or_else(|| "(a given listener)".into(), |a| a.to_string()),
                        error: e.to_string(),
                    })?,
            ),
            None => None,
        };
        let pool = boot::connect(&config).await?;
        match boot::schema(&pool).await? {
            db::schema::Applied::LeftNewer { database } => tracing::info!(
                database_revision = database,
                binary_revision = db::schema::EMBEDDED.revision,
                "schema ready: the database is at a newer revision that declares this binary compatible; left as it is"
            ),
            applied => tracing::info!(
                schema = ?applied,
                revision = db::schema::EMBEDDED.revision,
                "schema ready"
            ),
        }
        // `/readyz` and `/metrics` probe over their own two connections: scrapes never take a
        // connection that claims, completions or lease heartbeats need.
        let probes = db::probe_pool(config.database_url.expose(), config.db_statement_timeout)
            .map_err(BootError::Database)?;
        health.set_pool(probes.clone());
        metrics.set_pool(probes);
        let artifacts = boot::artifact_store(&config)?;
        let providers = boot::providers_for(&config, &facts, &metrics)?;
        let services = Arc::new(
            Services::new(pool.clone(), artifacts)
                .with_gates(&facts)
                .with_providers(providers, config.webhooks.clone()),
        );
        let heartbeat = heartbeat.unwrap_or_else(|| boot::heartbeat_config(&facts));
        let deps = Deps {
            pool,
            registry,
            health: health.clone(),
            services,
            heartbeat,
            metrics,
            license: facts.license.as_ref().map(|l| l.claims.clone()),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut task = tokio::spawn(async move {
            runtime::run(
                config,
                deps,
                async move {
                    let _ = stop_rx.await;
                },
                move |handle| {
                    let _ = ready_tx.send(handle);
                },
            )
            .await
            .map_err(BootError::Runtime)
        });
        let runtime = tokio::select! {
            ready = ready_rx => match ready {
                Ok(handle) => handle,
                // The runtime ended before it was ready: its error is the answer.
                Err(_) => return Err(join(&mut task).await.err().unwrap_or_else(not_ready)),
            },
            ended = &mut task => return Err(flatten(ended).err().unwrap_or_else(not_ready)),
        };
        Ok(WorkerHandle {
            http_addr,
            runtime,
            health,
            stop: Some(stop_tx),
            task,
            _http: http_guard,
        })
    }
}

/// A running worker.
pub struct WorkerHandle {
    /// Where the probes (`/healthz`, `/readyz`, `/metrics`) answer; `None` when none is served.
    pub http_addr: Option<SocketAddr>,
    runtime: RuntimeHandle,
    health: Arc<Health>,
    /// Resolves the runtime's shutdown future: stop claiming, drain, hand back.
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), BootError>>,
    /// Stops the probe server when the handle goes (after the drain).
    _http: DropGuard,
}

/// What a running worker reports about itself.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    /// `locked_by` of this worker's attempts.
    pub worker_id: String,
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// Why not, when not ready (the keys `/readyz` logs).
    pub unready: Vec<String>,
    pub claimed: u64,
    pub completed: u64,
    pub failed: u64,
    pub rescued: u64,
    /// The periodic tasks (rescuer, pruner, …) and what each last activation reported.
    pub tasks: Vec<crate::runtime::periodic::TaskStatus>,
}

impl WorkerHandle {
    /// The runtime's counters and the heartbeat's trigger (tests read them).
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    /// This worker's id (`lettuce.workers.id`, `locked_by`).
    pub fn worker_id(&self) -> &str {
        &self.runtime.worker_id
    }

    /// A snapshot of the worker's state.
    pub fn status(&self) -> WorkerStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.runtime.stats;
        let (ready, unready) = self.health.snapshot();
        WorkerStatus {
            worker_id: self.runtime.worker_id.clone(),
            ready,
            unready,
            claimed: stats.claimed.load(Relaxed),
            completed: stats.completed.load(Relaxed),
            failed: stats.failed.load(Relaxed),
            rescued: stats.rescued.load(Relaxed),
            tasks: self.runtime.tasks.snapshot(),
        }
    }

    /// Resolves when the runtime stopped by itself (an error); pending while it runs.
    pub async fn stopped(&mut self) -> Result<(), BootError> {
        join(&mut self.task).await
    }

    /// Two-phase shutdown (README "Shutdown"): stop claiming, let attempts finish within the
    /// grace, hand back the rest. Returns once the worker's presence row is gone.
    pub async fn shutdown(mut self) -> Result<(), BootError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        join(&mut self.task).await
    }
}

async fn join(task: &mut tokio::task::JoinHandle<Result<(), BootError>>) -> Result<(), BootError> {
    flatten(task.await)
}

fn flatten(joined: Result<Result<(), BootError>, tokio::task::JoinError>) -> Result<(), BootError> {
    joined.unwrap_or_else(|e| {
        Err(BootError::Runtime(db::DbError::Task(format!(
            "the runtime task failed: {e}"
        ))))
    })
}

fn not_ready() -> BootError {
    BootError::Runtime(db::DbError::Task(
        "the runtime stopped before it was ready".into(),
    ))
}
