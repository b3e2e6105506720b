//! The admin API's metrics. They register into the process-wide registry
//! (`tally_model::metrics`) on first use; [`register`] does it at start-up so
//! the first scrape lists them.

use std::sync::LazyLock;

use prometheus_client::metrics::gauge::Gauge;
use tally_model::metrics::register as register_metric;

/// The admin API's metrics. Obtain them with [`metrics`].
#[derive(Debug)]
pub struct AdminMetrics {
    /// `tally_sse_clients`.
    pub sse_clients: Gauge,
}

static METRICS: LazyLock<AdminMetrics> = LazyLock::new(|| AdminMetrics {
    sse_clients: register_metric(
        "tally_sse_clients",
        "Connected live-feed clients",
        Gauge::default(),
    ),
});

/// The admin API's metrics (registered on first use).
pub fn metrics() -> &'static AdminMetrics {
    &METRICS
}

/// Registers the admin API's metrics now, so the first scrape lists them.
pub fn register() {
    LazyLock::force(&METRICS);
}
