//! Rows for the crate's unit tests.

use tally_model::{ActivityEvent, Outcome};

/// A `doc.read` success with id `id`, at a fixed time, with every optional
/// column empty: tests set what they need with `..event(id)`.
pub(crate) fn event(id: u128) -> ActivityEvent {
    ActivityEvent {
        id: uuid::Uuid::from_u128(id),
        ts: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        tenant_id: None,
        user_id: None,
        session_id: None,
        action: "doc.read".into(),
        outcome: Outcome::Success,
        resource_type: None,
        resource_id: None,
        service: None,
        trace_id: None,
        span_id: None,
        attributes: serde_json::Map::new(),
        duration_ms: None,
        name: None,
        error_type: None,
        error_message: None,
        taxonomy_valid: None,
        taxonomy_reason: None,
    }
}
