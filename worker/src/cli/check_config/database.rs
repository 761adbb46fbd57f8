//! The database checks (gates 5–6 as live probes): `db.connect`, `db.version`, `db.privileges`,
//! `schema` and `repositories`.

use std::time::Duration;

use super::{Check, Level, check, hinted};
use crate::config::Config;
use crate::db;

/// Cap on the database connect timeout, so check-config answers fast.
const DB_TIMEOUT_CAP: Duration = Duration::from_secs(5);

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

pub(super) async fn database_checks(config: &Config, offline: bool) -> Vec<Check> {
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

/// `db.version`: PostgreSQL 15 or newer (`server_version_num` ≥ 150000).
pub(super) fn version_check(version_num: i32, version: &str) -> Check {
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
