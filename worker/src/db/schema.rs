//! The embedded statement list from `schema/`, its revision, and how it is applied.
//!
//! Applying takes a transaction-scoped advisory lock first, so N replicas booting at once
//! serialise here and the later ones find nothing to do. `lettuce.schema_state` records the
//! revision, the oldest revision still compatible with it, and a digest of the list; boot skips
//! the list when revision and digest match (fast boot, and no `CREATE OR REPLACE FUNCTION`
//! churn under running replicas). A binary never applies its list over a newer revision: in a
//! mixed-version fleet or after a rollback, the older binary runs against the newer schema when
//! that schema declares it compatible, and refuses (exit 6) otherwise. Only `worker run` and
//! `worker schema apply` apply; every other command checks ([`require_usable`]) and runs no DDL.

use sha2::{Digest, Sha256};

use super::{DbError, DbPool};

include!(concat!(env!("OUT_DIR"), "/schema_statements.rs"));

/// Key of the advisory lock that serialises schema application across replicas.
const SCHEMA_LOCK_KEY: i64 = 0x6c65_7474_7563_6501; // "lettuce" + 1

/// A statement list and the revision it declares.
#[derive(Debug, Clone, Copy)]
pub struct StatementList<'a> {
    /// Increases by one with every change to the list.
    pub revision: i32,
    /// The oldest revision whose binaries still run correctly against this list's schema.
    pub min_compatible: i32,
    /// `(name, SQL)` in apply order; every statement idempotent.
    pub statements: &'a [(&'a str, &'a str)],
}

/// The list compiled into this binary (`schema/*.sql`, `schema/REVISION`).
pub const EMBEDDED: StatementList<'static> = StatementList {
    revision: REVISION,
    min_compatible: MIN_COMPATIBLE,
    statements: STATEMENTS,
};

impl StatementList<'_> {
    /// The SHA-256 of every statement, in order: what `lettuce.schema_state.digest` holds.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (name, sql) in self.statements {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(sql.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// The list as one printable SQL script (`worker schema print`).
    pub fn script(&self) -> String {
        let mut out = format!(
            "-- lettuce schema revision {} (compatible with binaries of revision {} and newer)\n\n",
            self.revision, self.min_compatible
        );
        for (name, sql) in self.statements {
            out.push_str(&format!(
                "-- {name}\n{};\n\n",
                sql.trim_end().trim_end_matches(';')
            ));
        }
        out
    }
}

#[cfg(any(test, feature = "testing"))]
/// The embedded list's digest.
pub fn digest() -> String {
    EMBEDDED.digest()
}

/// The embedded list as a script.
pub fn script() -> String {
    EMBEDDED.script()
}

/// What `lettuce.schema_state` records about the schema in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// 0 for a schema applied before revisions were recorded.
    pub revision: i32,
    pub min_compatible: i32,
    pub digest: String,
    /// The release that applied it.
    pub version: String,
}

/// What [`apply`] did.
// `Applied::Applied` is the name logs and tests use; kept when the type stopped being exported.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Revision and digest matched; nothing ran.
    UpToDate,
    /// Every statement ran (each is idempotent); `from` is the revision found, if any.
    Applied { from: Option<i32> },
    /// The database is at a newer revision that declares this binary compatible: left alone.
    LeftNewer { database: i32 },
}

/// Why the schema cannot be used or applied (exit 6).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "the database's schema is at revision {database} (applied by worker {applied_by}), which \
         runs binaries of revision {min_compatible} or newer; this binary ({binary_version}) is \
         revision {binary}: run the newer release, or restore the database from before the upgrade"
    )]
    TooNew {
        database: i32,
        min_compatible: i32,
        applied_by: String,
        binary: i32,
        binary_version: &'static str,
    },
    #[error(
        "the database has no lettuce schema yet: run `worker schema apply` or start `worker run` first"
    )]
    Missing,
    #[error(
        "the database's schema is at revision {database}, older than this binary's revision \
         {binary}: run `worker schema apply` (or start `worker run`) of this release first"
    )]
    Older { database: i32, binary: i32 },
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(e: tokio_postgres::Error) -> Self {
        SchemaError::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for SchemaError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        SchemaError::Db(e.into())
    }
}

/// What to do with `list` given what the database holds. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Skip,
    Apply,
    LeaveNewer,
}

fn plan(stored: Option<&Stored>, list: &StatementList, force: bool) -> Result<Plan, SchemaError> {
    let Some(stored) = stored else {
        return Ok(Plan::Apply);
    };
    if stored.revision > list.revision {
        compatible(stored, list)?;
        return Ok(Plan::LeaveNewer);
    }
    if !force && stored.revision == list.revision && stored.digest == list.digest() {
        return Ok(Plan::Skip);
    }
    Ok(Plan::Apply)
}

/// `Ok` when a binary of `list`'s revision may run against the `stored` schema.
fn compatible(stored: &Stored, list: &StatementList) -> Result<(), SchemaError> {
    if stored.revision > list.revision && list.revision < stored.min_compatible {
        return Err(SchemaError::TooNew {
            database: stored.revision,
            min_compatible: stored.min_compatible,
            applied_by: stored.version.clone(),
            binary: list.revision,
            binary_version: crate::VERSION,
        });
    }
    Ok(())
}

/// Reads `lettuce.schema_state` (through `to_jsonb`, so a row from before a column existed
/// reads with that column's default).
async fn read_stored(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Option<Stored>, DbError> {
    let present: bool = client
        .query_typed_one(
            "SELECT to_regclass('lettuce.schema_state') IS NOT NULL",
            params![])
        .await?
        .get(0);
    if !present {
        return Ok(None);
    }
    let Some(row) = client
        .query_typed_opt("SELECT to_jsonb(s) FROM lettuce.schema_state s", params![])
        .await?
    else {
        return Ok(None);
    };
    let v: serde_json::Value = row.get(0);
    let int = |key: &str| v[key].as_i64().unwrap_or(0) as i32;
    let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
    Ok(Some(Stored {
        revision: int("revision"),
        min_compatible: int("min_compatible_revision"),
        digest: text("digest"),
        version: text("version"),
    }))
}

/// Applies `list` in one transaction under the advisory lock, unless the database is already
/// at its revision and digest (with `force`, runs it then too) or at a newer revision (never
/// applied over; an error when that revision is not compatible with `list`'s).
pub async fn apply(
    pool: &DbPool,
    list: &StatementList<'_>,
    force: bool,
) -> Result<Applied, SchemaError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Waiting for another replica's upgrade, or a long VALIDATE, is not a stuck statement; the
    // NOTICEs of `IF NOT EXISTS` statements that find their object are not news.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute_typed("SELECT pg_advisory_xact_lock($1)", params![SCHEMA_LOCK_KEY])
        .await?;
    let stored = read_stored(&*tx).await?;
    match plan(stored.as_ref(), list, force)? {
        Plan::Skip => {
            tx.commit().await?;
            return Ok(Applied::UpToDate);
        }
        Plan::LeaveNewer => {
            tx.commit().await?;
            return Ok(Applied::LeftNewer {
                database: stored.map_or(0, |s| s.revision),
            });
        }
        Plan::Apply => {}
    }
    for (name, sql) in list.statements {
        tx.batch_execute(sql).await.inspect_err(|e| {
            tracing::error!(statement = name, error = %super::error_text(e), "schema statement failed");
        })?;
    }
    tx.execute_typed(
        "INSERT INTO lettuce.schema_state (singleton, digest, version, revision, min_compatible_revision)
         VALUES (true, $1, $2, $3, $4)
         ON CONFLICT (singleton) DO UPDATE SET digest = excluded.digest, version = excluded.version,
                revision = excluded.revision, min_compatible_revision = excluded.min_compatible_revision,
                applied_at = now()",
        params![list.digest(), crate::VERSION, list.revision, list.min_compatible])
    .await?;
    tx.commit().await?;
    Ok(Applied::Applied {
        from: stored.map(|s| s.revision),
    })
}

/// What the database records, for `check-config`; `None` when no schema was applied.
pub async fn state(pool: &DbPool) -> Result<Option<Stored>, DbError> {
    let client = pool.get().await?;
    read_stored(&**client).await
}

/// For commands that never change the schema: `Ok` when this binary can work with the schema
/// the database holds (its own revision, or a newer one that declares it compatible).
pub async fn require_usable(pool: &DbPool) -> Result<Stored, SchemaError> {
    let stored = state(pool).await?.ok_or(SchemaError::Missing)?;
    if stored.revision < EMBEDDED.revision {
        return Err(SchemaError::Older {
            database: stored.revision,
            binary: EMBEDDED.revision,
        });
    }
    compatible(&stored, &EMBEDDED)?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_embedded_in_file_order_and_guarded() {
        assert!(STATEMENTS.len() >= 10);
        let names: Vec<_> = STATEMENTS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, sql) in STATEMENTS {
            let upper = sql.to_uppercase();
            for create in [
                "CREATE TABLE ",
                "CREATE SCHEMA ",
                "CREATE INDEX ",
                "CREATE UNIQUE INDEX ",
            ] {
                for (i, _) in upper.match_indices(create) {
                    let rest = &upper[i + create.len()..];
                    assert!(
                        rest.starts_with("IF NOT EXISTS"),
                        "{name}: `{create}` without IF NOT EXISTS"
                    );
                }
            }
            for create in ["CREATE FUNCTION", "CREATE TRIGGER"] {
                assert!(!upper.contains(create), "{name}: use CREATE OR REPLACE");
            }
        }
    }

    #[test]
    fn digest_is_stable() {
        assert_eq!(digest(), digest());
        assert_eq!(digest().len(), 64);
    }

    #[test]
    fn every_change_to_the_list_bumps_the_revision() {
        assert_eq!(
            digest(),
            RECORDED_DIGEST,
            "schema/*.sql changed: bump `revision` in schema/REVISION and set `digest = \"{}\"`",
            digest()
        );
    }

    fn stored(revision: i32, min_compatible: i32, digest: &str) -> Stored {
        Stored {
            revision,
            min_compatible,
            digest: digest.into(),
            version: "9.9.9".into(),
        }
    }

    #[test]
    fn a_list_applies_over_its_own_revision_or_older_and_never_over_a_newer_one() {
        let list = StatementList {
            revision: 5,
            min_compatible: 4,
            statements: &[("a.sql", "SELECT 1")],
        };
        let d = list.digest();
        assert_eq!(plan(None, &list, false).unwrap(), Plan::Apply);
        assert_eq!(
            plan(Some(&stored(0, 0, "x")), &list, false).unwrap(),
            Plan::Apply
        );
        assert_eq!(
            plan(Some(&stored(4, 4, "x")), &list, false).unwrap(),
            Plan::Apply
        );
        assert_eq!(
            plan(Some(&stored(5, 4, &d)), &list, false).unwrap(),
            Plan::Skip
        );
        assert_eq!(
            plan(Some(&stored(5, 4, &d)), &list, true).unwrap(),
            Plan::Apply
        );
        assert_eq!(
            plan(Some(&stored(5, 4, "x")), &list, false).unwrap(),
            Plan::Apply
        );
        // Newer and compatible: left alone, even with force.
        assert_eq!(
            plan(Some(&stored(6, 5, "x")), &list, true).unwrap(),
            Plan::LeaveNewer
        );
        assert_eq!(
            plan(Some(&stored(9, 3, "x")), &list, false).unwrap(),
            Plan::LeaveNewer
        );
        // Newer and incompatible: refused, naming both revisions.
        let e = plan(Some(&stored(7, 6, "x")), &list, false).unwrap_err();
        let text = e.to_string();
        assert!(matches!(
            e,
            SchemaError::TooNew {
                database: 7,
                min_compatible: 6,
                binary: 5,
                ..
            }
        ));
        assert!(
            text.contains("revision 7") && text.contains("revision 5"),
            "{text}"
        );
    }
}
