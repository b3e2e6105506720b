//! Tally's exporters: PostgreSQL (the activity log and token ledger) and the
//! Prometheus `/metrics` endpoint, with the storage metrics ([`metrics`]).

#![warn(missing_docs)]

pub mod apikeys;
pub mod metrics;
pub mod postgres;
pub mod prometheus;

#[doc(hidden)]
pub mod testing;
