//! The one mapping of each raw table's row to its JSON item, used by every
//! route that answers rows: `activity_events` → [`ActivityItem`] (`/activity`,
//! `/activity/stream`, `/export`), `token_usage` → [`TokenItem`] (`/tokens`,
//! `/tokens/stream`, `/export`). The column lists say what to select; the items
//! carry the tables' column names (the SIEM contract of `docs/schema.md`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

/// The `activity_events` columns, in the order [`ActivityItem::from_row`] reads them.
pub const ACTIVITY_COLUMNS: &str = "id, seq, ts, received_at, tenant_id, user_id, session_id, \
     action, outcome, resource_type, resource_id, service, trace_id, span_id, attributes, \
     duration_ms, name, error_type, error_message";

/// The `token_usage` columns, in the order [`TokenItem::from_row`] reads them
/// (`cost_usd` as double precision).
pub const TOKEN_COLUMNS: &str = "id, seq, ts, received_at, tenant_id, user_id, session_id, \
     service, trace_id, span_id, provider, operation, request_model, response_model, model, \
     input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
     total_tokens, usage_known, cost_usd::float8 AS cost_usd, outcome, duration_ms, \
     time_to_first_token_ms, attribution_source, attributes";

/// RFC 3339, UTC, always six fractional digits: `2026-11-23T19:25:50.123456Z`.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `''` (the rollups' and `tenant_id`'s "none") as `None`.
pub(crate) fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// An `activity_events` row, with its column names (`tenant_id` null when '').
#[derive(Debug, Serialize)]
pub struct ActivityItem {
    /// The row's `id`.
    pub id: Uuid,
    /// The row's `seq`.
    pub seq: i64,
    /// The row's `ts`.
    pub ts: String,
    /// The row's `received_at`.
    pub received_at: String,
    /// The row's `tenant_id`.
    pub tenant_id: Option<String>,
    /// The row's `user_id`.
    pub user_id: Option<String>,
    /// The row's `session_id`.
    pub session_id: Option<String>,
    /// The row's `action`.
    pub action: String,
    /// The row's `outcome`.
    pub outcome: String,
    /// The row's `resource_type`.
    pub resource_type: Option<String>,
    /// The row's `resource_id`.
    pub resource_id: Option<String>,
    /// The row's `service`.
    pub service: Option<String>,
    /// The row's `trace_id`.
    pub trace_id: Option<String>,
    /// The row's `span_id`.
    pub span_id: Option<String>,
    /// The row's `attributes`.
    pub attributes: serde_json::Value,
    /// Span end − start in milliseconds (`null` for log records and rows
    /// written before schema version 12).
    pub duration_ms: Option<f64>,
    /// The span name or log event name.
    pub name: Option<String>,
    /// The row's `error_type`.
    pub error_type: Option<String>,
    /// Redacted like any attribute value.
    pub error_message: Option<String>,
}

impl ActivityItem {
    /// Reads a row selected with [`ACTIVITY_COLUMNS`].
    pub fn from_row(row: &Row) -> Result<ActivityItem, tokio_postgres::Error> {
        let ts: DateTime<Utc> = row.try_get("ts")?;
        let received_at: DateTime<Utc> = row.try_get("received_at")?;
        Ok(ActivityItem {
            id: row.try_get("id")?,
            seq: row.try_get("seq")?,
            ts: format_ts(ts),
            received_at: format_ts(received_at),
            tenant_id: non_empty(row.try_get("tenant_id")?),
            user_id: row.try_get("user_id")?,
            session_id: row.try_get("session_id")?,
            action: row.try_get("action")?,
            outcome: row.try_get("outcome")?,
            resource_type: row.try_get("resource_type")?,
            resource_id: row.try_get("resource_id")?,
            service: row.try_get("service")?,
            trace_id: row.try_get("trace_id")?,
            span_id: row.try_get("span_id")?,
            attributes: row.try_get("attributes")?,
            duration_ms: row.try_get("duration_ms")?,
            name: row.try_get("name")?,
            error_type: row.try_get("error_type")?,
            error_message: row.try_get("error_message")?,
        })
    }
}

/// A `token_usage` row, with its column names (`tenant_id` null when '').
#[derive(Debug, Clone, Serialize)]
pub struct TokenItem {
    /// The row's `id`.
    pub id: Uuid,
    /// The row's `seq`.
    pub seq: i64,
    /// The row's `ts`.
    pub ts: String,
    /// The row's `received_at`.
    pub received_at: String,
    /// The row's `tenant_id`.
    pub tenant_id: Option<String>,
    /// The row's `user_id`.
    pub user_id: Option<String>,
    /// The row's `session_id`.
    pub session_id: Option<String>,
    /// The row's `service`.
    pub service: Option<String>,
    /// The row's `trace_id`.
    pub trace_id: Option<String>,
    /// The row's `span_id`.
    pub span_id: Option<String>,
    /// The row's `provider`.
    pub provider: Option<String>,
    /// The row's `operation`.
    pub operation: Option<String>,
    /// The row's `request_model`.
    pub request_model: Option<String>,
    /// The row's `response_model`.
    pub response_model: Option<String>,
    /// The row's `model`.
    pub model: Option<String>,
    /// The row's `input_tokens`.
    pub input_tokens: Option<i64>,
    /// The row's `output_tokens`.
    pub output_tokens: Option<i64>,
    /// The row's `cache_read_tokens`.
    pub cache_read_tokens: Option<i64>,
    /// The row's `cache_write_tokens`.
    pub cache_write_tokens: Option<i64>,
    /// The row's `reasoning_tokens`.
    pub reasoning_tokens: Option<i64>,
    /// The row's `total_tokens`.
    pub total_tokens: Option<i64>,
    /// The row's `usage_known`.
    pub usage_known: bool,
    /// The row's `cost_usd`.
    pub cost_usd: Option<f64>,
    /// The row's `outcome`.
    pub outcome: String,
    /// The row's `duration_ms`.
    pub duration_ms: Option<f64>,
    /// The row's `time_to_first_token_ms`.
    pub time_to_first_token_ms: Option<f64>,
    /// Derived, not stored: `output_tokens` over `duration_ms` in seconds (see
    /// [`output_tokens_per_second`]).
    pub output_tokens_per_second: Option<f64>,
    /// The row's `attribution_source`.
    pub attribution_source: String,
    /// The row's `attributes`.
    pub attributes: serde_json::Value,
}

impl TokenItem {
    /// Reads a row selected with [`TOKEN_COLUMNS`].
    pub fn from_row(row: &Row) -> Result<TokenItem, tokio_postgres::Error> {
        let ts: DateTime<Utc> = row.try_get("ts")?;
        let received_at: DateTime<Utc> = row.try_get("received_at")?;
        let output_tokens: Option<i64> = row.try_get("output_tokens")?;
        let duration_ms: Option<f64> = row.try_get("duration_ms")?;
        Ok(TokenItem {
            id: row.try_get("id")?,
            seq: row.try_get("seq")?,
            ts: format_ts(ts),
            received_at: format_ts(received_at),
            tenant_id: non_empty(row.try_get("tenant_id")?),
            user_id: row.try_get("user_id")?,
            session_id: row.try_get("session_id")?,
            service: row.try_get("service")?,
            trace_id: row.try_get("trace_id")?,
            span_id: row.try_get("span_id")?,
            provider: row.try_get("provider")?,
            operation: row.try_get("operation")?,
            request_model: row.try_get("request_model")?,
            response_model: row.try_get("response_model")?,
            model: row.try_get("model")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens,
            cache_read_tokens: row.try_get("cache_read_tokens")?,
            cache_write_tokens: row.try_get("cache_write_tokens")?,
            reasoning_tokens: row.try_get("reasoning_tokens")?,
            total_tokens: row.try_get("total_tokens")?,
            usage_known: row.try_get("usage_known")?,
            cost_usd: row.try_get("cost_usd")?,
            outcome: row.try_get("outcome")?,
            duration_ms,
            time_to_first_token_ms: row.try_get("time_to_first_token_ms")?,
            output_tokens_per_second: output_tokens_per_second(output_tokens, duration_ms),
            attribution_source: row.try_get("attribution_source")?,
            attributes: row.try_get("attributes")?,
        })
    }
}

/// One call's output speed: its output tokens over its duration in seconds
/// (the whole call, time to first token included: the measure `/stats`
/// averages), rounded to 3 decimals; `None` without both or with a duration
/// that is not positive.
pub fn output_tokens_per_second(
    output_tokens: Option<i64>,
    duration_ms: Option<f64>,
) -> Option<f64> {
    let output = output_tokens?;
    let duration_ms = duration_ms.filter(|d| d.is_finite() && *d > 0.0)?;
    let rate = output as f64 / (duration_ms / 1000.0);
    rate.is_finite().then(|| (rate * 1000.0).round() / 1000.0)
}

/// A row of either table.
#[derive(Debug)]
pub enum RawRow {
    /// An `activity_events` row.
    Activity(Box<ActivityItem>),
    /// A `token_usage` row.
    Token(Box<TokenItem>),
}

impl RawRow {
    /// The row's `seq`.
    pub fn seq(&self) -> i64 {
        match self {
            RawRow::Activity(item) => item.seq,
            RawRow::Token(item) => item.seq,
        }
    }
}
