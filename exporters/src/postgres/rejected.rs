//! `rejected_events` for the replay of quarantined records: take a batch of them
//! (locked, so concurrent replays never take the same row), delete the ones that
//! were stored, record a new reason for the ones that still fail.

use tokio_postgres::Transaction;
use uuid::Uuid;

use super::PgError;

/// Records replayed per request when the caller names no limit.
pub const DEFAULT_REPLAY_LIMIT: i64 = 1000;

/// One quarantined record, as stored.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    /// `tenant_id` (`''` when the record named none).
    pub tenant_id: String,
    /// The record's id.
    pub id: Uuid,
    /// The record as quarantined (`rejected_events.record`).
    pub record: serde_json::Value,
}

/// Locks up to `limit` quarantined records in `seq` order, of `tenant` and with
/// `reason` when given (`FOR UPDATE SKIP LOCKED`: rows another replay holds are
/// passed over).
pub async fn lock_rejected(
    tx: &Transaction<'_>,
    tenant: Option<&str>,
    reason: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<RejectedRow>, PgError> {
    let rows = tx
        .query(
            "SELECT tenant_id, id, record FROM rejected_events \
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR reason = $2) \
             ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED",
            &[&tenant, &reason, &limit.unwrap_or(DEFAULT_REPLAY_LIMIT)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(RejectedRow {
                tenant_id: row.try_get(0)?,
                id: row.try_get(1)?,
                record: row.try_get(2)?,
            })
        })
        .collect()
}

/// Deletes the quarantined records `(tenant_id, id)` (they were stored).
pub async fn delete_rejected(
    tx: &Transaction<'_>,
    tenants: &[String],
    ids: &[Uuid],
) -> Result<u64, PgError> {
    Ok(tx
        .execute(
            "DELETE FROM rejected_events r \
             USING unnest($1::text[], $2::uuid[]) AS x(tenant_id, id) \
             WHERE r.tenant_id = x.tenant_id AND r.id = x.id",
            &[&tenants, &ids],
        )
        .await?)
}

/// Records the reason a quarantined record still fails, with its record as now read.
pub async fn requarantine(
    tx: &Transaction<'_>,
    tenant_id: &str,
    id: &Uuid,
    reason: &str,
    record: &serde_json::Value,
) -> Result<(), PgError> {
    tx.execute(
        "UPDATE rejected_events SET reason = $3, record = $4 WHERE tenant_id = $1 AND id = $2",
        &[&tenant_id, id, &reason, record],
    )
    .await?;
    Ok(())
}
