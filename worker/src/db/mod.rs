//! Everything that talks to Postgres. Only this module contains SQL (besides `schema/`).
//!
//! - `mod.rs`: the shared pool and the boot-time connect-with-retry (creating the database when
//!   it is missing, so a fresh machine needs no manual `createdb`).
//! - `schema.rs`: the embedded statement list, applied under an advisory lock.
//! - `jobs/`: one function per job statement, split by audience (enqueue, attempt, upkeep,
//!   steer), each fenced where the contract asks (ARCHITECTURE.md "Job states").
//! - `listener.rs`: the dedicated LISTEN connection and its reconnect loop.
//! - `workers.rs`: presence rows in `lettuce.workers`.
//! - `telemetry.rs`: the daily heartbeat's per-day claim, receipt and reported figures.
//! - `tls.rs`: TLS to Postgres with libpq's `sslmode` meanings (rustls).

/// The presence upsert of a worker row (`lettuce.workers`): registration and every lease
/// heartbeat write it; the five placeholders are id, hostname, pid, version and queues.
macro_rules! presence_upsert {
    ($id:literal, $host:literal, $pid:literal, $version:literal, $queues:literal) => {
        concat!(
            "INSERT INTO lettuce.workers (id, hostname, pid, version, queues) VALUES (",
            $id, ", ", $host, ", ", $pid, ", ", $version, ", ", $queues,
            ") ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"
        )
    };
}

#[macro_use]
pub mod statement;

pub mod deliveries;
pub mod diag;
pub mod entitlements;
pub mod jobs;
pub mod listener;
pub mod probe;
pub mod repositories;
pub mod schema;
pub mod telemetry;
pub mod tls;
pub mod workers;

use std::str::FromStr;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Config as PgConfig;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;

pub use tls::Tls;

/// The shared pool of ordinary connections.
pub type DbPool = Pool;

/// Errors from the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL does not parse: {0}")]
    BadUrl(String),
    #[error("database at {target} unreachable after {waited_ms} ms ({reason}): {last_error}")]
    Unreachable {
        target: String,
        waited_ms: u128,
        reason: &'static str,
        last_error: String,
    },
    /// A connection failure that retrying cannot mend (authentication, a missing role or
    /// database, TLS settings): reported at once.
    #[error("database at {target} refused the connection ({reason}; not retried): {error}")]
    Refused {
        target: String,
        reason: &'static str,
        error: String,
    },
    #[error("database error: {}", error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool error: {}", pool_error_text(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database TLS: {0}")]
    Tls(String),
    /// A task of the runtime failed outside any statement (it panicked, or ended early).
    #[error("{0}")]
    Task(String),
    /// A job input outside its limit, refused before any statement ran.
    #[error("{0}")]
    Limit(#[from] crate::limits::LimitError),
}

/// Parses `DATABASE_URL` without ever echoing it (it may hold a password).
/// The TLS verification part (`sslmode=verify-ca|verify-full`, `sslrootcert`) is taken out
/// first (see [`tls`]); [`tls_for`] builds the matching connector.
///
/// On top of what the URL says: a Unix-socket host never uses TLS, whatever `sslmode` says (as
/// libpq); and unless the URL sets them, each attempt to connect is bounded
/// ([`ATTEMPT_TIMEOUT`]) and TCP keepalives and a user timeout notice a dead peer within about
/// a minute instead of the kernel's two hours.
pub fn parse_url(url: &str) -> Result<PgConfig, DbError> {
    let mut cfg = PgConfig::from_str(&tls::split(url).0).map_err(|e| {
        // tokio-postgres errors describe the syntax problem, not the value.
        DbError::BadUrl(e.to_string())
    })?;
    let hosts = cfg.get_hosts();
    if !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_))) {
        cfg.ssl_mode(SslMode::Disable);
    }
    let says = |key: &str| url.contains(key);
    if !says("connect_timeout") {
        cfg.connect_timeout(ATTEMPT_TIMEOUT);
    }
    if !says("keepalives_idle") {
        cfg.keepalives_idle(Duration::from_secs(30));
    }
    if !says("keepalives_interval") {
        cfg.keepalives_interval(Duration::from_secs(10));
    }
    if !says("keepalives_retries") {
        cfg.keepalives_retries(3);
    }
    if !says("tcp_user_timeout") {
        cfg.tcp_user_timeout(Duration::from_secs(60));
    }
    Ok(cfg)
}

/// The longest one attempt to connect may take (TCP, TLS and startup together); boot retries
/// within `LETTUCE_DB_CONNECT_TIMEOUT_MS`.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a task waits for a free pooled connection before the wait counts as a failure.
pub const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the server to cancel any statement of this process's connections that runs longer than
/// `limit` (`statement_timeout`, sent at connection start). The URL's own `options` win.
pub fn set_statement_timeout(cfg: &mut PgConfig, limit: Option<Duration>) {
    let Some(limit) = limit.filter(|l| !l.is_zero()) else {
        return;
    };
    let existing = cfg.get_options().unwrap_or("").to_string();
    if existing.contains("statement_timeout") {
        return;
    }
    let option = format!("-c statement_timeout={}", limit.as_millis());
    cfg.options(if existing.is_empty() {
        option
    } else {
        format!("{existing} {option}")
    });
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

/// Connects once; with `create_missing`, creates the database when the server says it does not
/// exist.
async fn connect_once(
    cfg: &PgConfig,
    tls: &Tls,
    create_missing: bool,
) -> Result<(), tokio_postgres::Error> {
    match cfg.connect(tls.clone()).await {
        Ok((client, conn)) => {
            drop(client);
            drop(conn);
            Ok(())
        }
        Err(e)
            if create_missing
                && e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) =>
        {
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

/// Whether a failed connection attempt can get better by waiting, and in a word why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Worth retrying: refused, reset, starting up, too many connections, no answer yet.
    Transient(&'static str),
    /// Retrying cannot help: authentication, a missing role or database, TLS settings.
    Permanent(&'static str),
}

/// The reason of a connection a pooler refused for its startup parameters: PgBouncer accepts
/// only a few (`application_name`, `client_encoding`, …) and refuses `options`, which carries
/// `statement_timeout`.
pub const STARTUP_PARAMETER_REFUSED: &str = "a pooler (PgBouncer?) refused a startup parameter: set LETTUCE_DB_STATEMENT_TIMEOUT_MS=0 behind it, and take `options` out of DATABASE_URL";

/// Sorts a connection error into [`ConnectFailure`].
pub fn classify_connect_error(e: &tokio_postgres::Error) -> ConnectFailure {
    use ConnectFailure::{Permanent, Transient};
    if let Some(db) = e.as_db_error() {
        if db.message().starts_with("unsupported startup parameter") {
            return Permanent(STARTUP_PARAMETER_REFUSED);
        }
        let code = db.code().code();
        return match code {
            "28P01" => Permanent("authentication failed"),
            "28000" => Permanent("role or client not allowed"),
            "3D000" => Permanent("database does not exist"),
            "42501" => Permanent("permission denied"),
            "57P03" => Transient("server starting up"),
            "53300" => Transient("too many connections"),
            "57P01" | "57P02" => Transient("server shutting down"),
            _ if code.starts_with("28") => Permanent("authentication failed"),
            _ if code.starts_with("08") => Transient("connection failure"),
            _ => Transient("server error"),
        };
    }
    let text = e.to_string();
    if text.starts_with("error performing TLS handshake") {
        return Permanent("TLS");
    }
    if text.starts_with("invalid configuration") || text.starts_with("authentication error") {
        return Permanent("connection settings");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return Transient(match io.kind() {
                K::ConnectionRefused => "connection refused",
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    "connection reset"
                }
                K::TimedOut => "no answer in time",
                K::NotFound => "no server at the socket",
                _ => "network error",
            });
        }
        source = s.source();
    }
    if text.starts_with("timeout waiting for server") {
        return Transient("no answer in time");
    }
    Transient("network error")
}

/// Connects with retry until `timeout` has passed, then builds the pool. Each attempt is bounded
/// by what is left of `timeout` (and [`ATTEMPT_TIMEOUT`]), so a server that accepts TCP and never
/// answers cannot hold boot past it. A [`ConnectFailure::Permanent`] failure ends at once.
/// With `create_missing` (boot), a database that does not exist is created; without it
/// (one-shot commands, which change nothing), that is a permanent failure.
pub async fn connect_with_retry(
    url: &str,
    pool_size: usize,
    timeout: Duration,
    statement_timeout: Option<Duration>,
    create_missing: bool,
) -> Result<DbPool, DbError> {
    let mut cfg = parse_url(url)?;
    set_statement_timeout(&mut cfg, statement_timeout);
    let tls = tls_for(url)?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let attempt = left.clamp(Duration::from_millis(100), ATTEMPT_TIMEOUT);
        let (reason, text) =
            match tokio::time::timeout(attempt, connect_once(&cfg, &tls, create_missing)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => match classify_connect_error(&e) {
                    ConnectFailure::Permanent(reason) => {
                        return Err(DbError::Refused {
                            target: describe(&cfg),
                            reason,
                            error: error_text(&e),
                        });
                    }
                    ConnectFailure::Transient(reason) => (reason, error_text(&e)),
                },
                Err(_) => (
                    "no answer in time",
                    format!(
                        "the server did not complete the connection within {} ms",
                        attempt.as_millis()
                    ),
                ),
            };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(DbError::Unreachable {
                target: describe(&cfg),
                waited_ms: waited.as_millis(),
                reason,
                last_error: text,
            });
        }
        tracing::warn!(target_db = %describe(&cfg), reason, error = %text, "database not reachable yet; retrying");
        tokio::time::sleep(delay.min(timeout.saturating_sub(waited))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    Ok(build_pool(cfg, tls, pool_size))
}

/// Connections of the probe pool behind `/readyz` and `/metrics`.
pub const PROBE_POOL_SIZE: usize = 2;
/// `statement_timeout` of the probe pool's connections: a probe never waits on a slow server.
const PROBE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The probe pool for `url`: [`PROBE_POOL_SIZE`] connections, opened on first use, named
/// `lettuce-worker-probe` (unless the URL names the application), with a short statement
/// timeout — none when `statement_timeout` (`LETTUCE_DB_STATEMENT_TIMEOUT_MS`) is zero: a
/// pooler in front refuses the startup option, and `/readyz` has its own answer deadline. A
/// flood of scrapes waits on these two connections, never on the job pool's.
pub fn probe_pool(url: &str, statement_timeout: Duration) -> Result<DbPool, DbError> {
    let mut cfg = parse_url(url)?;
    if cfg.get_application_name().is_none() {
        cfg.application_name("lettuce-worker-probe");
    }
    let limit = (!statement_timeout.is_zero()).then(|| statement_timeout.min(PROBE_STATEMENT_TIMEOUT));
    set_statement_timeout(&mut cfg, limit);
    Ok(build_pool(cfg, tls_for(url)?, PROBE_POOL_SIZE))
}

/// Builds a pool without connecting (connections open on first use).
pub fn build_pool(mut cfg: PgConfig, tls: Tls, pool_size: usize) -> DbPool {
    if cfg.get_application_name().is_none() {
        cfg.application_name("lettuce-worker");
    }
    // `server.address` / `server.port` of SQL spans: the first host, never the URL.
    if let Some(host) = cfg.get_hosts().first() {
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        match host {
            Host::Tcp(h) => crate::observability::set_db_server(h.clone(), Some(port)),
            Host::Unix(dir) => crate::observability::set_db_server(dir.display().to_string(), None),
        }
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
        .wait_timeout(Some(POOL_WAIT_TIMEOUT))
        .create_timeout(Some(ATTEMPT_TIMEOUT))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        // Only fails when a timeout is set without a runtime; we always set the runtime.
        .expect("pool configuration is valid")
}

/// Runs one statement's future inside its SQL span (see `telemetry::sql_span`), recording the
/// row count or the error: how every SQL a handler makes gets its client span under the job.
pub(crate) async fn traced<T>(
    span: tracing::Span,
    rows: impl Fn(&T) -> usize,
    fut: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    use tracing::Instrument;
    let result = fut.instrument(span.clone()).await;
    if !span.is_disabled() {
        match &result {
            Ok(v) => {
                span.record("db.rows", rows(v) as i64);
            }
            Err(e) => crate::observability::record_error(&span, e),
        }
    }
    result
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
/// A read-only server (a standby after failover) counts: the statement is fine, the server is
/// the wrong one, and another connection may reach the new primary.
pub fn is_connection_error(e: &DbError) -> bool {
    match e {
        DbError::Pool(_) => true,
        DbError::Postgres(pe) => {
            pe.is_closed()
                || pe.as_db_error().is_none_or(|db| {
                    // admin_shutdown, crash_shutdown, cannot_connect_now, read_only_sql_transaction,
                    // query_canceled (statement_timeout), idle_session_timeout
                    matches!(
                        db.code().code(),
                        "57P01" | "57P02" | "57P03" | "25006" | "57014" | "57P05"
                    )
                })
        }
        _ => false,
    }
}

/// True when the server refused a write because it is read-only (`25006`): a standby, or
/// `default_transaction_read_only` on.
pub fn is_read_only(e: &DbError) -> bool {
    match e {
        DbError::Postgres(pe) => pe.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        _ => false,
    }
}
