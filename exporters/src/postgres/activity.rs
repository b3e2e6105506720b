//! The activity rows' insert: binary `COPY` into a per-connection temporary
//! staging table, then the advisory lock
//! [`ACTIVITY_EVENTS_LOCK_KEY`](super::ACTIVITY_EVENTS_LOCK_KEY), then
//! `INSERT … SELECT nextval('activity_events_seq') … ORDER BY ts ON CONFLICT DO
//! NOTHING`, counting what was really inserted. Called by the batching writer
//! (`writer.rs`) inside each batch's transaction.

use std::sync::LazyLock;

use tokio_postgres::{SimpleQueryMessage, Transaction};

use tally_model::ActivityEvent;

use super::copy::{self, copy_rows};
use super::personal::PersonalKeys;
use super::tokens::TokensInserted;
use super::{PgError, TraceAttribution, ACTIVITY_EVENTS_LOCK_KEY};

const STAGING_DDL: &str = "DO $$ BEGIN \
    IF to_regclass('pg_temp.tally_activity_staging_v5') IS NULL THEN \
        CREATE TEMP TABLE tally_activity_staging_v5 ( \
            id uuid, ts timestamptz, tenant_id text, user_id text, session_id text, \
            action text, outcome text, resource_type text, resource_id text, service text, \
            trace_id text, span_id text, attributes jsonb, taxonomy_valid boolean, \
            taxonomy_reason text, ingest_key_id uuid, duration_ms double precision, \
            name text, error_type text, error_message text, personal_keys text[] \
        ) ON COMMIT DELETE ROWS; \
    END IF; END $$";

const COPY_SQL: &str = "COPY pg_temp.tally_activity_staging_v5 (id, ts, tenant_id, user_id, \
    session_id, action, outcome, resource_type, resource_id, service, trace_id, span_id, \
    attributes, taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name, error_type, \
    error_message, personal_keys) FROM STDIN (FORMAT binary)";

/// Lock, then insert from staging (one simple-protocol round trip).
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT pg_advisory_xact_lock({ACTIVITY_EVENTS_LOCK_KEY}); \
         INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, session_id, action, \
             outcome, resource_type, resource_id, service, trace_id, span_id, attributes, \
             taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name, error_type, \
             error_message, personal_keys) \
         SELECT id, nextval('activity_events_seq'), ts, tenant_id, user_id, session_id, action, \
             outcome, resource_type, resource_id, service, trace_id, span_id, attributes, \
             taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name, error_type, \
             error_message, personal_keys \
         FROM pg_temp.tally_activity_staging_v5 ORDER BY ts \
         ON CONFLICT DO NOTHING"
    )
});

/// [`INSERT_SQL`] answering, per (action, outcome, tenant), how many rows it
/// really inserted (duplicates skipped), for the committed-rows counters.
static INSERT_COUNTED_SQL: LazyLock<String> = LazyLock::new(|| {
    let (lock, insert) = INSERT_SQL
        .split_once("; ")
        .unwrap_or(("SELECT 1", INSERT_SQL.as_str()));
    format!(
        "{lock}; WITH inserted AS ({insert} RETURNING action, outcome, tenant_id, taxonomy_valid) \
         SELECT action, outcome, tenant_id, taxonomy_valid, count(*) FROM inserted \
         GROUP BY action, outcome, tenant_id, taxonomy_valid"
    )
});

/// Rows an insert really added, in total and per (action, outcome, tenant).
#[derive(Debug, Default)]
pub(crate) struct Inserted {
    pub total: u64,
    pub groups: Vec<InsertedGroup>,
    /// The `token_usage` rows of the same batch.
    pub tokens: TokensInserted,
    /// `rejected_events` rows added (retries of quarantined records skipped).
    pub rejected: u64,
    /// Traces identified and pending in `trace_identities` after this batch, by
    /// (scope, trace id): their stored rows are to be attributed.
    pub ready: Vec<((String, String), TraceAttribution)>,
}

/// How many rows of one (action, outcome, tenant) an insert added.
#[derive(Debug)]
pub(crate) struct InsertedGroup {
    pub action: String,
    pub outcome: String,
    pub tenant_id: String,
    /// The taxonomy verdict of these rows (`None`: not checked).
    pub taxonomy_valid: Option<bool>,
    pub rows: u64,
}

/// Writes `events` into `activity_events` inside `tx`, the way the exporter's
/// writers do: binary `COPY` into a temporary staging table, then the advisory
/// lock [`ACTIVITY_EVENTS_LOCK_KEY`], then `INSERT … SELECT nextval(…) … ON
/// CONFLICT DO NOTHING`. Returns the number of rows inserted (duplicates of rows
/// already stored are skipped).
///
/// The lock is held until `tx` ends, so commit promptly. The daily partitions
/// for the events' days must exist (the exporter creates them before calling
/// this; see [`create_partitions`](super::create_partitions)).
///
/// The rows' personal keys are those of [`PersonalKeys::default`] (the user id
/// under other keys); see [`insert_activity_batch_with`].
pub async fn insert_activity_batch(
    tx: &Transaction<'_>,
    events: &[ActivityEvent],
) -> Result<u64, PgError> {
    insert_activity_batch_with(tx, events, &PersonalKeys::default()).await
}

/// [`insert_activity_batch`] naming the personal keys `personal` declares.
pub async fn insert_activity_batch_with(
    tx: &Transaction<'_>,
    events: &[ActivityEvent],
    personal: &PersonalKeys,
) -> Result<u64, PgError> {
    if events.is_empty() {
        return Ok(0);
    }
    Ok(
        insert_rows(tx, events.iter().map(|e| (e, None)).collect(), personal)
            .await?
            .total,
    )
}

/// `events`, each with the ingest key that sent it.
pub(crate) async fn insert_rows(
    tx: &Transaction<'_>,
    events: Vec<(&ActivityEvent, Option<uuid::Uuid>)>,
    personal: &PersonalKeys,
) -> Result<Inserted, PgError> {
    tx.batch_execute(STAGING_DDL).await?;
    let rows: Vec<(copy::ActivityRow<'_>, Option<uuid::Uuid>)> = events
        .into_iter()
        .map(|(event, key)| {
            (
                copy::ActivityRow {
                    event,
                    personal_keys: personal.of(event),
                },
                key,
            )
        })
        .collect();
    let rows: Vec<(&copy::ActivityRow<'_>, Option<uuid::Uuid>)> =
        rows.iter().map(|(row, key)| (row, *key)).collect();
    let copied = copy_rows(tx, COPY_SQL, &rows, copy::activity_row).await?;
    if copied == 0 {
        return Ok(Inserted::default());
    }
    let messages = tx.simple_query(&INSERT_COUNTED_SQL).await?;
    let mut inserted = Inserted::default();
    for message in &messages {
        // The lock's SELECT answers a one-column row first: only the counts have five.
        if let SimpleQueryMessage::Row(row) = message {
            if row.len() != 5 {
                continue;
            }
            let rows: u64 = row.get(4).and_then(|c| c.parse().ok()).unwrap_or(0);
            inserted.total += rows;
            inserted.groups.push(InsertedGroup {
                action: row.get(0).unwrap_or_default().to_string(),
                outcome: row.get(1).unwrap_or_default().to_string(),
                tenant_id: row.get(2).unwrap_or_default().to_string(),
                // Simple-protocol text: "t", "f", or NULL (not checked).
                taxonomy_valid: row.get(3).map(|v| v == "t"),
                rows,
            });
        }
    }
    Ok(inserted)
}
