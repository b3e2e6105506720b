//! Tally's exporters: PostgreSQL (the activity log and token ledger) and the
//! Prometheus `/metrics` endpoint.

#![warn(missing_docs)]

pub mod apikeys;
pub mod postgres;
pub mod prometheus;

#[doc(hidden)]
pub mod testing;
