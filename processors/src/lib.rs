//! Tally's processors: they turn decoded OTLP records into storable rows.
//!
//! * [`classify`] — semantic conventions → [`tally_model::ActivityEvent`].
//! * [`redact`] — PII, content and secret scrubbing, in place, before classification.
//! * [`validate`] — the taxonomy registry check and its per-mode decision.
//!
//! Redaction and taxonomy validation join here as separate modules; a processor
//! knows nothing of PostgreSQL or HTTP.

pub mod classify;
mod otlp_value;
pub mod redact;
pub mod validate;

pub use classify::{classify_logs, classify_traces, Classified};
