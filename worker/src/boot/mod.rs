//! Boot: the gates, in the SPEC's order, before any job runs.
//!
//! 1. config (parsed by the caller; exit 2)
//! 2. license, 3. GitHub App, 4. telemetry resolution — the gates issue adds these here
//! 5. database, with retry until `LETTUCE_DB_CONNECT_TIMEOUT_MS` (exit 5)
//! 6. schema, under the advisory lock (exit 6)
//!
//! then the runtime. `check-config` calls the same gate functions in report mode.

pub mod license;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::db::{self, DbError, DbPool};
use crate::handlers::{Registry, Services};
use crate::health::Health;
use crate::runtime::{self, Deps, RuntimeHandle};

/// Why the worker did not start (or stopped with an error). Each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    License(#[from] license::LicenseError),
    #[error("DatabaseUnavailable: {0}")]
    Database(DbError),
    #[error("SchemaError: {0}")]
    Schema(DbError),
    #[error("HttpError: cannot listen on LETTUCE_HTTP_ADDR={addr}: {error}")]
    Http { addr: String, error: String },
    #[error("RuntimeError: {0}")]
    Runtime(DbError),
}

impl BootError {
    /// The process exit code the SPEC assigns to this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            BootError::Config(_) => 2,
            BootError::License(_) => 3,
            BootError::Database(_) => 5,
            BootError::Schema(_) => 6,
            BootError::Http { .. } | BootError::Runtime(_) => 1,
        }
    }
}

/// Gate 5: connect (creating the database when missing), with retry.
pub async fn connect(config: &Config) -> Result<DbPool, BootError> {
    db::connect_with_retry(
        config.database_url.expose(),
        config.db_pool_size,
        config.db_connect_timeout,
    )
    .await
    .map_err(BootError::Database)
}

/// Gate 6: apply the schema.
pub async fn schema(pool: &DbPool) -> Result<db::schema::Applied, BootError> {
    db::schema::apply(pool, false)
        .await
        .map_err(BootError::Schema)
}

/// `worker run`: every gate, then the runtime until `shutdown` resolves.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(RuntimeHandle),
) -> Result<(), BootError> {
    // Gate 2 runs before anything listens or connects: a refused license touches nothing.
    let _license = license::gate(&config, time::OffsetDateTime::now_utc())?;
    let config = Arc::new(config);
    let health = Arc::new(Health::default());
    let http_stop = CancellationToken::new();
    let _http_guard = http_stop.clone().drop_guard();
    if let Some(addr) = config.http_addr {
        crate::http::serve(addr, health.clone(), http_stop.clone())
            .await
            .map_err(|e| BootError::Http {
                addr: addr.to_string(),
                error: e.to_string(),
            })?;
    }
    let pool = connect(&config).await?;
    let applied = schema(&pool).await?;
    tracing::info!(schema = ?applied, "schema ready");
    health.set_pool(pool.clone());
    let services = Arc::new(Services::new(pool.clone()));
    runtime::run(
        config,
        Deps {
            pool,
            registry,
            health,
            services,
        },
        shutdown,
        on_start,
    )
    .await
    .map_err(BootError::Runtime)
}
