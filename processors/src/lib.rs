//! Tally's processors: they turn decoded OTLP records into storable rows.
//!
//! * [`classify`] — semantic conventions → [`tally_model::ActivityEvent`].
//!
//! Redaction and taxonomy validation join here as separate modules; a processor
//! knows nothing of PostgreSQL or HTTP.

pub mod classify;
mod otlp_value;

pub use classify::{classify_logs, classify_traces, Classified};
