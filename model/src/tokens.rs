//! The token-usage ledger record: one LLM model call, as stored in `token_usage`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Outcome;

/// Where a token row's user, tenant and session came from (`attribution_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttributionSource {
    /// The model-call record itself carried a user or tenant.
    Record,
    /// Another span or log record of the same trace carried them.
    Trace,
    /// Nothing did (yet: a later record of the trace may still attribute the row
    /// within the attribution window).
    #[default]
    None,
}

impl AttributionSource {
    /// The column value: `record`, `trace` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttributionSource::Record => "record",
            AttributionSource::Trace => "trace",
            AttributionSource::None => "none",
        }
    }
}

/// One LLM model call (chat, text completion, embeddings, …), as stored in
/// `token_usage`. Token counts are `None` when the call did not report them
/// (`usage_known == false`: e.g. a stream without usage), never zero-filled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Deterministic id (see [`token_span_id`] / [`token_log_id`]).
    pub id: Uuid,
    /// Call start time (span start or log record time).
    pub ts: DateTime<Utc>,
    /// The tenant the call belongs to.
    pub tenant_id: Option<String>,
    /// The user the call is attributed to.
    pub user_id: Option<String>,
    /// The user's session.
    pub session_id: Option<String>,
    /// `service.name` of the emitting resource.
    pub service: Option<String>,
    /// Lowercase hex, 32 characters.
    pub trace_id: Option<String>,
    /// Lowercase hex, 16 characters.
    pub span_id: Option<String>,
    /// `openai`, `anthropic`, … as the instrumentation names it.
    pub provider: Option<String>,
    /// `chat`, `text_completion`, `embeddings`, … as the instrumentation names it.
    pub operation: Option<String>,
    /// The model asked for.
    pub request_model: Option<String>,
    /// The model that answered.
    pub response_model: Option<String>,
    /// The response model, else the request model.
    pub model: Option<String>,
    /// Every input token, cached ones included (GenAI semantic conventions).
    pub input_tokens: Option<i64>,
    /// Output (completion) tokens.
    pub output_tokens: Option<i64>,
    /// Input tokens read from the provider's prompt cache (a subset of `input_tokens`).
    pub cache_read_tokens: Option<i64>,
    /// Input tokens written to the provider's prompt cache (a subset of `input_tokens`).
    pub cache_write_tokens: Option<i64>,
    /// Output tokens spent on reasoning (a subset of `output_tokens`).
    pub reasoning_tokens: Option<i64>,
    /// As reported, else input + output.
    pub total_tokens: Option<i64>,
    /// Whether the call reported its usage.
    pub usage_known: bool,
    /// Estimated cost in US dollars at ingest; `None` when the model has no price
    /// or the usage is unknown.
    pub cost_usd: Option<f64>,
    /// Whether the call succeeded.
    pub outcome: Outcome,
    /// Span duration; `None` for log records.
    pub duration_ms: Option<f64>,
    /// Time to the first output token or chunk of a streamed call, when the
    /// instrumentation reports it (`gen_ai.server.time_to_first_token`,
    /// `gen_ai.response.time_to_first_chunk`, in seconds).
    pub time_to_first_token_ms: Option<f64>,
    /// Where the user attribution came from.
    pub attribution_source: AttributionSource,
    /// A few content-free attributes (span name, finish reasons, response id, …).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// How the call was reported, for storing one row per call (not a column).
    #[serde(skip)]
    pub report: CallReport,
}

/// How a model call was reported: the writer keeps one `token_usage` row per call
/// when a span and log records (or several log records) report the same call.
/// See `docs/tokens.md` ("One row per model call").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallReport {
    /// Reported by a span (preferred) rather than a log record.
    pub from_span: bool,
    /// The sender's tenant scope: its ingest key's tenant, `""` for senders bound
    /// to none. Reports match only within one scope.
    pub scope: String,
    /// `s` + trace id + span id (lowercase hex) when the record has both.
    pub span_key: Option<String>,
    /// `r` + `gen_ai.response.id` when the record has one.
    pub response_key: Option<String>,
}

impl TokenUsage {
    /// Whether the row carries neither a user nor a tenant.
    pub fn is_unattributed(&self) -> bool {
        self.user_id.is_none() && self.tenant_id.is_none()
    }
}

pub use crate::ids::{token_log_id, token_span_id};

/// The count measures of the token rollups (`token_usage_daily`, `_tenant`,
/// `_all`), in their column order. They are also the JSON names of the count
/// fields in `GET /api/v1/tokens/usage` items and in `/stats`' token section.
pub const TOKEN_COUNT_MEASURES: [&str; 9] = [
    "requests",
    "unknown_usage_requests",
    "unpriced_requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
];

/// Every measure of the token rollups: the counts, then `cost_usd`.
pub const TOKEN_MEASURES: [&str; 10] = {
    let mut all = [""; 10];
    let mut i = 0;
    while i < TOKEN_COUNT_MEASURES.len() {
        all[i] = TOKEN_COUNT_MEASURES[i];
        i += 1;
    }
    all[9] = "cost_usd";
    all
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_differ_from_activity_ids_and_are_stable() {
        let a = token_span_id(&[1; 16], &[2; 8]);
        assert_eq!(a, token_span_id(&[1; 16], &[2; 8]));
        assert_ne!(a, token_span_id(&[1; 16], &[3; 8]));
        assert_ne!(a, crate::ids::span_event_id(&[1; 16], &[2; 8]));
        assert_ne!(token_log_id("s", b"r"), crate::ids::log_event_id("s", b"r"));
    }
}
