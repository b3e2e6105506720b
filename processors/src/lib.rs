//! Tally's processors: they turn decoded OTLP records into storable rows.
//!
//! * [`classify`] — semantic conventions → [`tally_model::ActivityEvent`].
//! * [`redact`] — PII, content and secret scrubbing, in place, before classification.
//! * [`validate`] — the taxonomy registry check and its per-mode decision.
//! * [`tokens`] — LLM token usage → [`tally_model::TokenUsage`], priced;
//!   [`attribution`] — the trace → user/tenant map that attributes it.
//! * [`metrics`] — the processors' metrics (redactions, records not stored).
//!
//! Redaction and taxonomy validation join here as separate modules; a processor
//! knows nothing of PostgreSQL or HTTP.

#![warn(missing_docs)]

pub mod attribution;
pub mod classify;
mod fast_hash;
pub mod metrics;
mod otlp_value;
pub mod redact;
pub mod tokens;
pub mod validate;

pub use classify::{classify_logs, classify_traces, Classified};
