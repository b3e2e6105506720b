//! Tally's shared data model: the records that flow through the pipeline and the
//! boundary between the OTLP receiver and everything behind it.
//!
//! * [`ActivityEvent`] — one row of the user activity log.
//! * [`Outcome`] — success / failure / unknown.
//! * [`ids`] — deterministic record ids, so an SDK retry is stored once.
//! * [`pipeline`] — the [`pipeline::Consumer`] trait the receiver hands decoded
//!   OTLP requests to, and the errors it may answer with.
//! * [`health`] — readiness shared between the exporter and the admin API.
//! * [`walk`] — one walk over an OTLP traces or logs request (resource → scope →
//!   record), used by the receiver's checks and every processor.

#![warn(missing_docs)]

pub mod activity;
pub mod health;
pub mod ids;
pub mod metrics;
pub mod pipeline;
pub mod token_metrics;
pub mod tokens;
pub mod walk;

pub use activity::{ActivityEvent, Outcome, RejectedRecord};
pub use health::Readiness;
pub use pipeline::{ConsumeError, ConsumeReport, Consumer, Sender};
pub use tokens::{AttributionSource, TokenUsage};

/// Re-export of the OTLP wire types so dependants use the same version.
pub use opentelemetry_proto::tonic as otlp;
