//! Replaying quarantined records (`POST /api/v1/rejected/replay`): re-validate
//! them against the current taxonomy and store the ones that pass, exactly once.
//!
//! The SQL is the storage crate's (`tally_exporters::postgres::rejected`). One
//! transaction: the quarantined rows are locked (`FOR UPDATE SKIP LOCKED`, so
//! concurrent replays never take the same row), the passing events are inserted
//! through the exporter's write path (deterministic ids, `ON CONFLICT DO
//! NOTHING`, commit-ordered `seq`) and deleted from `rejected_events`, the
//! others get their new reason; then COMMIT.

use futures::future::BoxFuture;
use tally_admin_api::rejected::{ReplayReport, ReplayRequest, Replayer};
use tally_exporters::metrics::{metrics, ActivityLabels};
use tally_exporters::postgres::{self, create_partitions, insert_activity_batch, rejected};
use tally_model::metrics::{TableLabels, OTHER};
use tally_model::ActivityEvent;
use tally_processors::validate::{event_from_record, Validator};

/// The collector's replayer: its database and taxonomy validator.
pub struct Replay {
    database_url: String,
    validator: Validator,
}

impl Replay {
    pub fn new(database_url: &str, validator: Validator) -> Self {
        Replay {
            database_url: database_url.to_string(),
            validator,
        }
    }
}

impl Replayer for Replay {
    fn replay(
        &self,
        request: ReplayRequest,
    ) -> BoxFuture<'static, Result<ReplayReport, postgres::PgError>> {
        let url = self.database_url.clone();
        let validator = self.validator.clone();
        Box::pin(async move { replay(&url, &validator, request).await })
    }
}

async fn replay(
    url: &str,
    validator: &Validator,
    request: ReplayRequest,
) -> Result<ReplayReport, postgres::PgError> {
    let (mut client, _) = postgres::connect(url).await?;
    let (partition_client, _) = postgres::connect(url).await?;
    let tx = client.transaction().await?;
    let rows = rejected::lock_rejected(
        &tx,
        request.tenant.as_deref(),
        request.reason.as_deref(),
        request.limit,
    )
    .await?;
    let mut events: Vec<ActivityEvent> = Vec::with_capacity(rows.len());
    let mut unreadable = 0u64;
    for row in &rows {
        match event_from_record(&row.record) {
            Ok(event) => events.push(event),
            // Not an activity record this version can read back: it stays.
            Err(_) => unreadable += 1,
        }
    }
    let validated = validator.validate_batch(events);
    let stored: Vec<ActivityEvent> = validated
        .stored
        .into_iter()
        .map(|checked| {
            let mut event = checked.event;
            event.taxonomy_valid = checked.taxonomy_valid;
            event.taxonomy_reason = checked.reason.map(|r| r.code.as_str().to_string());
            event
        })
        .collect();
    if let (Some(first), Some(last)) = (
        stored.iter().map(|e| e.ts.date_naive()).min(),
        stored.iter().map(|e| e.ts.date_naive()).max(),
    ) {
        // Partitions are created outside the transaction (a short lock of their own).
        create_partitions(&partition_client, first, last.max(first)).await?;
    }
    let inserted = insert_activity_batch(&tx, &stored).await?;
    let tenants: Vec<String> = stored
        .iter()
        .map(|e| e.tenant_id.clone().unwrap_or_default())
        .collect();
    let ids: Vec<uuid::Uuid> = stored.iter().map(|e| e.id).collect();
    rejected::delete_rejected(&tx, &tenants, &ids).await?;
    for item in &validated.quarantined {
        rejected::requarantine(
            &tx,
            item.event.tenant_id.as_deref().unwrap_or_default(),
            &item.event.id,
            item.reason.code.as_str(),
            &item.record_json(),
        )
        .await?;
    }
    tx.commit().await?;
    let m = metrics();
    m.rows_written
        .get_or_create(&TableLabels {
            table: "activity_events",
        })
        .inc_by(inserted);
    // Locked rows cannot have been stored by anyone else, so every replayed
    // event was inserted; should that ever not hold, the per-action counters
    // are left alone rather than over-counted.
    if inserted == stored.len() as u64 {
        let with_tenant = m.tenant_labels.cap() > 0;
        for event in &stored {
            let action = if event.taxonomy_valid == Some(false) {
                OTHER.to_string()
            } else {
                m.action_labels.label(&event.action)
            };
            let labels = ActivityLabels {
                action,
                outcome: event.outcome.as_str(),
                tenant: with_tenant.then(|| {
                    m.tenant_labels
                        .label(event.tenant_id.as_deref().unwrap_or(""))
                }),
            };
            m.activity_events.get_or_create(&labels).inc();
        }
    }
    Ok(ReplayReport {
        replayed: stored.len() as u64,
        still_rejected: validated.quarantined.len() as u64 + unreadable,
    })
}
