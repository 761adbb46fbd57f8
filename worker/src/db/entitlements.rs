//! The entitlement record on the singleton `lettuce.instance` row: when a job last hit a
//! license cap (the UI's "License limit reached" badge reads it).

#[cfg(feature = "testing")]
use time::OffsetDateTime;

use super::{DbError, DbPool};

/// Stamps `license_limit_reached_at = now()` on the instance row.
pub async fn record_limit_reached(pool: &DbPool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute_typed(
            "UPDATE lettuce.instance SET license_limit_reached_at = now()",
            params![],
        )
        .await?;
    Ok(())
}

#[cfg(feature = "testing")]
/// When a job last hit a license cap, if ever.
pub async fn limit_reached_at(pool: &DbPool) -> Result<Option<OffsetDateTime>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_opt("SELECT license_limit_reached_at FROM lettuce.instance", params![])
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}
