//! The process's own metrics (`tally_build_info`, `tally_process_cpu_seconds_total`,
//! `tally_process_resident_memory_bytes`), and [`register_all`]: every
//! component's metrics registered at start-up, so the first scrape lists each
//! documented family.

use std::sync::Once;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::process_stats::ProcessStats;

/// `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

static REGISTERED: Once = Once::new();

/// Registers the metrics of every component and of the process (once, however
/// often it is called), before `/metrics` is served.
pub fn register_all() {
    REGISTERED.call_once(register_once);
}

fn register_once() {
    tally_receiver::telemetry::register();
    tally_processors::metrics::register();
    tally_exporters::metrics::register();
    tally_admin_api::metrics::register();
    let build_info: Family<VersionLabels, Gauge> =
        tally_model::metrics::register("tally_build_info", "Tally build", Family::default());
    build_info
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    tally_model::metrics::register_collector(Box::new(ProcessStats::default()));
}
