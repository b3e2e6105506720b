//! Tally's exporters: PostgreSQL (the activity log) and, later, Prometheus.

pub mod postgres;

#[doc(hidden)]
pub mod testing;
