//! The activity-log record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether the user's action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action completed.
    Success,
    /// The action failed (error span status, HTTP status >= 400, explicit outcome).
    Failure,
    /// Nothing says either way.
    #[default]
    Unknown,
}

impl Outcome {
    /// The column value: `success`, `failure` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }

    /// Parses a column value or query parameter.
    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "unknown" => Some(Outcome::Unknown),
            _ => None,
        }
    }
}

/// One entry of the user activity log, as stored in `activity_events`.
///
/// Optional identity fields are `None` when the record did not carry them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityEvent {
    /// Deterministic id (see [`crate::ids`]): the same record resent is the same id.
    pub id: Uuid,
    /// Event time (span start or log record time).
    pub ts: DateTime<Utc>,
    /// The tenant the event belongs to.
    pub tenant_id: Option<String>,
    /// The user who acted.
    pub user_id: Option<String>,
    /// The user's session.
    pub session_id: Option<String>,
    /// Dotted action name, e.g. `auth.login`.
    pub action: String,
    /// Whether the action succeeded.
    pub outcome: Outcome,
    /// The kind of resource acted on (`document`, `api_key`, …).
    pub resource_type: Option<String>,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// `service.name` of the emitting resource.
    pub service: Option<String>,
    /// Lowercase hex, 32 characters.
    pub trace_id: Option<String>,
    /// Lowercase hex, 16 characters.
    pub span_id: Option<String>,
    /// Remaining attributes (resource, scope and record), as a JSON object.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// Span end − start in milliseconds (`None` for log records and spans
    /// without both times).
    #[serde(default)]
    pub duration_ms: Option<f64>,
    /// The span name, or the log record's event name.
    #[serde(default)]
    pub name: Option<String>,
    /// `error.type`, else the `exception.type` of an exception (span event or
    /// log record attribute).
    #[serde(default)]
    pub error_type: Option<String>,
    /// The span status message, else `exception.message`; already redacted
    /// like any attribute value.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Taxonomy verdict: `None` when not checked (mode `off`), `Some(true)` for a
    /// declared action with valid metadata, `Some(false)` when stored flagged
    /// (mode `lenient`).
    #[serde(default)]
    pub taxonomy_valid: Option<bool>,
    /// The reason code when `taxonomy_valid` is `Some(false)`.
    #[serde(default)]
    pub taxonomy_reason: Option<String>,
}

/// A record Tally accepted but quarantined in `rejected_events` instead of
/// storing it (e.g. an action the taxonomy does not declare, in strict mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// The id the record would have had (deterministic: a retry is stored once).
    pub id: Uuid,
    /// `''` when the record carried no tenant.
    pub tenant_id: String,
    /// A reason code from a fixed vocabulary (also the metric label).
    pub reason: String,
    /// The record, already redacted, with the reason's message.
    pub record: serde_json::Value,
}
