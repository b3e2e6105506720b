//! The postgres exporter's metrics, updated only after a commit (so the counters
//! agree with the tables): rows written, per-action activity counts, batch size
//! and duration, ingest lag, write failures, queue depth.

use tokio::time::Instant;

use chrono::Utc;
use tally_model::metrics::{ReasonLabels, TableLabels, OTHER};

use crate::metrics::{metrics, ActivityLabels};
use tally_model::{ActivityEvent, Outcome};

use super::activity::{Inserted, InsertedGroup};

/// Records a committed batch of `rows` submitted rows, of which `inserted` were
/// new; `events` are the batch's activity events (for the ingest lag).
pub(crate) fn batch_committed<'a>(
    events: impl Iterator<Item = &'a ActivityEvent>,
    rows: usize,
    inserted: &Inserted,
    started: Instant,
) {
    let m = metrics();
    m.batch_duration.observe(started.elapsed().as_secs_f64());
    m.batch_rows.observe(rows as f64);
    m.rows_written
        .get_or_create(&TableLabels {
            table: "activity_events",
        })
        .inc_by(inserted.total);
    m.rows_written
        .get_or_create(&TableLabels {
            table: "rejected_events",
        })
        .inc_by(inserted.rejected);
    let with_tenant = m.tenant_labels.cap() > 0;
    for group in &inserted.groups {
        let labels = ActivityLabels {
            action: action_label(group),
            outcome: Outcome::parse(&group.outcome).unwrap_or_default().as_str(),
            tenant: with_tenant.then(|| m.tenant_labels.label(&group.tenant_id)),
        };
        m.activity_events.get_or_create(&labels).inc_by(group.rows);
    }
    let now = Utc::now();
    for event in events {
        let lag = (now - event.ts).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        m.ingest_lag.observe(lag.max(0.0));
    }
}

/// The `action` label: actions the taxonomy declares by name, undeclared ones as
/// `other`; with validation off, the first `action_label_cap` actions seen.
fn action_label(group: &InsertedGroup) -> String {
    if group.taxonomy_valid == Some(false) {
        return OTHER.to_string();
    }
    metrics().action_labels.label(&group.action)
}

/// Records a batch that did not commit.
pub(crate) fn batch_failed(reason: &'static str) {
    metrics()
        .write_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Sets the queue-depth gauge.
pub(crate) fn queue_depth(records: usize) {
    metrics().queue_records.set(records as i64);
}

/// Sets the queue-capacity gauge.
pub(crate) fn queue_capacity(records: usize) {
    metrics().queue_capacity_records.set(records as i64);
}
