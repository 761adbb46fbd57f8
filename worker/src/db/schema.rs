//! The embedded statement list from `schema/` and how it is applied.
//!
//! Applying takes a transaction-scoped advisory lock first, so N replicas booting at once
//! serialise here and the later ones find nothing to do. A digest of the list is stored in
//! `lettuce.schema_state`; when it matches, boot skips the list (fast boot, and no
//! `CREATE OR REPLACE FUNCTION` churn under running replicas).

use sha2::{Digest, Sha256};

use super::{DbError, DbPool};

include!(concat!(env!("OUT_DIR"), "/schema_statements.rs"));

/// Key of the advisory lock that serialises schema application across replicas.
const SCHEMA_LOCK_KEY: i64 = 0x6c65_7474_7563_6501; // "lettuce" + 1

/// The SHA-256 of every statement, in order: what `lettuce.schema_state.digest` holds.
pub fn digest() -> String {
    let mut h = Sha256::new();
    for (name, sql) in STATEMENTS {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(sql.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The statement list as one printable SQL script (`worker schema print`).
pub fn script() -> String {
    let mut out = String::new();
    for (name, sql) in STATEMENTS {
        out.push_str(&format!(
            "-- {name}\n{};\n\n",
            sql.trim_end().trim_end_matches(';')
        ));
    }
    out
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The stored digest matched; nothing ran.
    UpToDate,
    /// Every statement ran (each is idempotent).
    Applied,
}

/// Applies the list in one transaction under the advisory lock. With `force`, runs the list even
/// when the digest matches.
pub async fn apply(pool: &DbPool, force: bool) -> Result<Applied, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Waiting for another replica's upgrade, or a long VALIDATE, is not a stuck statement.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await?;
    let digest = digest();
    if !force {
        let row = tx
            .query_one(
                "SELECT to_regclass('lettuce.schema_state') IS NOT NULL AS present",
                &[],
            )
            .await?;
        if row.get::<_, bool>(0) {
            let stored = tx
                .query_opt("SELECT digest FROM lettuce.schema_state", &[])
                .await?;
            if stored.is_some_and(|r| r.get::<_, String>(0) == digest) {
                tx.commit().await?;
                return Ok(Applied::UpToDate);
            }
        }
    }
    for (name, sql) in STATEMENTS {
        tx.batch_execute(sql).await.inspect_err(|e| {
            tracing::error!(statement = name, error = %super::error_text(e), "schema statement failed");
        })?;
    }
    tx.execute(
        "INSERT INTO lettuce.schema_state (singleton, digest, version) VALUES (true, $1, $2)
         ON CONFLICT (singleton) DO UPDATE SET digest = excluded.digest, version = excluded.version, applied_at = now()",
        &[&digest, &crate::VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(Applied::Applied)
}

/// Whether the stored digest matches this binary's list (for `check-config`).
pub async fn state(pool: &DbPool) -> Result<Option<bool>, DbError> {
    let client = pool.get().await?;
    let present: bool = client
        .query_one(
            "SELECT to_regclass('lettuce.schema_state') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !present {
        return Ok(None);
    }
    let stored = client
        .query_opt("SELECT digest FROM lettuce.schema_state", &[])
        .await?;
    Ok(Some(
        stored.is_some_and(|r| r.get::<_, String>(0) == digest()),
    ))
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
}
