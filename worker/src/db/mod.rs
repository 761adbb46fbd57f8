//! Everything that talks to Postgres. Only this module contains SQL (besides `schema/`).
//!
//! - `mod.rs`: the shared pool and the boot-time connect-with-retry (creating the database when
//!   it is missing, so a fresh machine needs no manual `createdb`).
//! - `schema.rs`: the embedded statement list, applied under an advisory lock.
//! - `jobs.rs`: one function per job statement, each fenced where the SPEC asks.
//! - `listener.rs`: the dedicated LISTEN connection and its reconnect loop.
//! - `workers.rs`: presence rows in `lettuce.workers`.
//! - `telemetry.rs`: the daily heartbeat's per-day claim, receipt and reported figures.
//! - `tls.rs`: TLS to Postgres with libpq's `sslmode` meanings (rustls).

pub mod diag;
pub mod entitlements;
pub mod jobs;
pub mod listener;
pub mod probe;
pub mod schema;
pub mod telemetry;
pub mod tls;
pub mod workers;

use std::str::FromStr;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Config as PgConfig;
use tokio_postgres::config::Host;

pub use tls::Tls;

/// The shared pool of ordinary connections.
pub type DbPool = Pool;

/// Errors from the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL does not parse: {0}")]
    BadUrl(String),
    #[error("database at {target} unreachable after {waited_ms} ms: {last_error}")]
    Unreachable {
        target: String,
        waited_ms: u128,
        last_error: String,
    },
    #[error("database error: {}", error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool error: {}", pool_error_text(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database TLS: {0}")]
    Tls(String),
    /// A job input outside its limit, refused before any statement ran.
    #[error("{0}")]
    Limit(#[from] crate::limits::LimitError),
}

/// Parses `DATABASE_URL` without ever echoing it (it may hold a password).
/// The TLS verification part (`sslmode=verify-ca|verify-full`, `sslrootcert`) is taken out
/// first (see [`tls`]); [`tls_for`] builds the matching connector.
pub fn parse_url(url: &str) -> Result<PgConfig, DbError> {
    PgConfig::from_str(&tls::split(url).0).map_err(|e| {
        // tokio-postgres errors describe the syntax problem, not the value.
        DbError::BadUrl(e.to_string())
    })
}

/// The TLS connector for `url`'s `sslmode` and `sslrootcert`.
pub fn tls_for(url: &str) -> Result<Tls, DbError> {
    tls::connector(&tls::split(url).1)
}

/// A pool for `url` (parsed, with its TLS), without connecting.
pub fn pool_for_url(url: &str, pool_size: usize) -> Result<DbPool, DbError> {
    Ok(build_pool(parse_url(url)?, tls_for(url)?, pool_size))
}

/// A printable description of where we connect: hosts, ports and database, never the password.
pub fn describe(cfg: &PgConfig) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = cfg
                .get_ports()
                .get(i)
                .or(cfg.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    format!(
        "{hosts} database {}",
        cfg.get_dbname().unwrap_or("(default)")
    )
}

/// Connects once, creating the database when the server says it does not exist.
async fn connect_once(cfg: &PgConfig, tls: &Tls) -> Result<(), tokio_postgres::Error> {
    match cfg.connect(tls.clone()).await {
        Ok((client, conn)) => {
            drop(client);
            drop(conn);
            Ok(())
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            let Some(name) = cfg.get_dbname() else {
                return Err(e);
            };
            let mut admin = cfg.clone();
            admin.dbname("postgres");
            let (client, conn) = admin.connect(tls.clone()).await?;
            let driver = tokio::spawn(conn);
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match client
                .batch_execute(&format!("CREATE DATABASE {quoted}"))
                .await
            {
                Ok(()) => tracing::info!(database = name, "created missing database"),
                // Another replica created it first.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                Err(e) => return Err(e),
            }
            drop(client);
            let _ = driver.await;
            let (client, conn) = cfg.connect(tls.clone()).await?;
            drop(client);
            drop(conn);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Connects with retry until `timeout` has passed, then builds the pool.
pub async fn connect_with_retry(
    url: &str,
    pool_size: usize,
    timeout: Duration,
) -> Result<DbPool, DbError> {
    let cfg = parse_url(url)?;
    let tls = tls_for(url)?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match connect_once(&cfg, &tls).await {
            Ok(()) => break,
            Err(e) => {
                let waited = started.elapsed();
                if waited >= timeout {
                    return Err(DbError::Unreachable {
                        target: describe(&cfg),
                        waited_ms: waited.as_millis(),
                        last_error: error_text(&e),
                    });
                }
                tracing::warn!(target_db = %describe(&cfg), error = %error_text(&e), "database not reachable yet; retrying");
                tokio::time::sleep(delay.min(timeout.saturating_sub(waited))).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    Ok(build_pool(cfg, tls, pool_size))
}

/// Builds a pool without connecting (connections open on first use).
pub fn build_pool(mut cfg: PgConfig, tls: Tls, pool_size: usize) -> DbPool {
    if cfg.get_application_name().is_none() {
        cfg.application_name("lettuce-worker");
    }
    let mgr = Manager::from_config(
        cfg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(pool_size)
        .runtime(Runtime::Tokio1)
        .build()
        // Only fails when a timeout is set without a runtime; we always set the runtime.
        .expect("pool configuration is valid")
}

/// The full text of a Postgres error, including the server's message and the OS error.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    if let Some(db) = e.as_db_error() {
        text = format!("{text}: {}", db.message());
    } else if let Some(src) = std::error::Error::source(e) {
        text = format!("{text}: {src}");
    }
    text
}

/// A pool error with the cause of a failed connection (e.g. the TLS verification failure).
fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pe) => error_text(pe),
        other => other.to_string(),
    }
}

/// True for errors that mean "the connection is gone" rather than "the statement is wrong".
pub fn is_connection_error(e: &DbError) -> bool {
    match e {
        DbError::Pool(_) => true,
        DbError::Postgres(pe) => {
            pe.is_closed()
                || pe.as_db_error().is_none_or(|db| {
                    // admin_shutdown, crash_shutdown, cannot_connect_now
                    matches!(db.code().code(), "57P01" | "57P02" | "57P03")
                })
        }
        _ => false,
    }
}
