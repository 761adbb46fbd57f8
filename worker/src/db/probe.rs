//! Read-only facts about the server for `worker check-config`: version and whether this role
//! may create what the schema needs. Nothing here changes the database.

use super::{DbError, DbPool};

/// What `check-config` needs to know about the server and the connected role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    /// `server_version`, e.g. `15.4 (Debian 15.4-1)`.
    pub version: String,
    pub user: String,
    pub database: String,
    /// True when the schema `lettuce` exists already.
    pub schema_exists: bool,
    /// CREATE on schema `lettuce` when it exists, else CREATE on the database (to create it).
    pub can_create: bool,
}

pub async fn server_facts(pool: &DbPool) -> Result<ServerFacts, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_one(
            "SELECT current_setting('server_version_num')::int,
                    current_setting('server_version'),
                    current_user::text,
                    current_database()::text,
                    to_regnamespace('lettuce') IS NOT NULL,
                    CASE WHEN to_regnamespace('lettuce') IS NOT NULL
                         THEN has_schema_privilege('lettuce', 'CREATE')
                         ELSE has_database_privilege(current_database(), 'CREATE') END",
            params![])
        .await?;
    Ok(ServerFacts {
        version_num: row.get(0),
        version: row.get(1),
        user: row.get(2),
        database: row.get(3),
        schema_exists: row.get(4),
        can_create: row.get(5),
    })
}

/// One round trip on a connection of `pool`: the readiness probe.
pub async fn ping(pool: &DbPool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// The oldest open transaction of another session in this database: while it lasts, vacuum
/// cannot remove the queue's dead rows, and every claim steps over them.
#[derive(Debug, Clone, PartialEq)]
pub struct OldestTransaction {
    /// `now() - xact_start` of the oldest (0 when none is open).
    pub age_seconds: f64,
    /// The largest `age(backend_xmin)`: how many transactions behind the oldest snapshot is.
    pub xmin_age: i64,
    /// The session holding the oldest one.
    pub pid: Option<i32>,
    pub application_name: Option<String>,
}

pub async fn oldest_transaction(pool: &DbPool) -> Result<OldestTransaction, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_one(
            "WITH others AS (
                 SELECT pid, application_name, xact_start, backend_xmin
                   FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND xact_start IS NOT NULL
                    AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
             ), oldest AS (
                 SELECT pid, application_name FROM others ORDER BY xact_start LIMIT 1
             )
             SELECT coalesce((SELECT extract(epoch FROM now() - min(xact_start)) FROM others), 0)::float8,
                    coalesce((SELECT max(age(backend_xmin)) FROM others), 0)::int8,
                    (SELECT pid FROM oldest),
                    (SELECT application_name FROM oldest)::text",
            params![],
        )
        .await?;
    Ok(OldestTransaction {
        age_seconds: row.get(0),
        xmin_age: row.get(1),
        pid: row.get(2),
        application_name: row.get(3),
    })
}
