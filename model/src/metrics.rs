//! The process-wide Prometheus registry and the label helpers the components share.
//!
//! Each component owns its metrics next to its code and registers them here once
//! (a `LazyLock` in the component's `metrics` module, forced at start-up by the
//! binary so the first scrape lists every family); the Prometheus exporter
//! serves [`encode`] (OpenMetrics text):
//!
//! | component | module |
//! | --- | --- |
//! | receiver | `tally_receiver::telemetry` |
//! | processors | `tally_processors::metrics` |
//! | storage | `tally_exporters::metrics` |
//! | admin API | `tally_admin_api::metrics` |
//! | the process | the binary's `src/metrics.rs` |
//!
//! Labels are bounded by construction: free-form values (actions, models,
//! tenants) pass through a [`LabelCap`] that admits the first N distinct values
//! and maps the rest to `other`. No label ever holds a user id, trace id or
//! request id.
//!
//! ```
//! use prometheus_client::metrics::counter::Counter;
//! let lookups = tally_model::metrics::register("doc_example", "An example", Counter::<u64>::default());
//! lookups.inc();
//! assert!(tally_model::metrics::encode().contains("doc_example_total 1"));
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

/// The label value used for everything beyond a cap.
pub const OTHER: &str = "other";

/// Admits at most `cap` distinct label values; later new values become `other`.
#[derive(Debug)]
pub struct LabelCap {
    cap: AtomicUsize,
    admitted: Mutex<HashSet<String>>,
}

impl LabelCap {
    /// A cap admitting `cap` distinct values.
    pub fn new(cap: usize) -> Self {
        LabelCap {
            cap: AtomicUsize::new(cap),
            admitted: Mutex::new(HashSet::new()),
        }
    }

    /// The value to use as a label: `value` if admitted (or admissible), else `other`.
    pub fn label(&self, value: &str) -> String {
        let Ok(mut admitted) = self.admitted.lock() else {
            return OTHER.to_string();
        };
        if admitted.contains(value) {
            return value.to_string();
        }
        if admitted.len() < self.cap.load(Ordering::Relaxed) {
            admitted.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }

    /// Changes the cap; values already admitted stay admitted.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// The current cap.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }
}

/// `{table}`: the table a row went to (several components count rows per table).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// The table written.
    pub table: &'static str,
}

/// `{reason}` (a fixed vocabulary, never free text).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A reason from a fixed list.
    pub reason: &'static str,
}

/// A histogram family whose histograms all have the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The buckets of a duration in seconds: 0.5 ms … ~16 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A family Prometheus' encoder would leave out while it has no series: its
/// name, help and type, and how to tell that it is empty.
struct ListedWhenEmpty {
    name: &'static str,
    help: &'static str,
    metric_type: String,
    is_empty: Box<dyn Fn() -> bool + Send + Sync>,
}

/// The registry and the families it lists even without series.
#[derive(Default)]
struct Shared {
    registry: Registry,
    listed_when_empty: Vec<ListedWhenEmpty>,
}

static SHARED: LazyLock<Mutex<Shared>> = LazyLock::new(Mutex::default);

fn shared() -> std::sync::MutexGuard<'static, Shared> {
    // A panic while registering leaves the registry usable: it only ever grows.
    SHARED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers `metric` as `name` in the process-wide registry and returns it
/// (a metric is a handle: the returned clone and the registered one are the same).
pub fn register<M: Metric + Clone>(name: &str, help: &str, metric: M) -> M {
    shared().registry.register(name, help, metric.clone());
    metric
}

/// [`register`] with a unit (its name gets the unit's suffix).
pub fn register_with_unit<M: Metric + Clone>(name: &str, help: &str, unit: Unit, metric: M) -> M {
    shared()
        .registry
        .register_with_unit(name, help, unit, metric.clone());
    metric
}

/// [`register`] for a family whose series appear only with the first thing they
/// count (their labels name it): until then a scrape still lists the family
/// (OpenMetrics allows a family without samples), so every documented metric is
/// there from the first scrape.
pub fn register_listed<M: Metric + Clone>(name: &'static str, help: &'static str, family: M) -> M {
    let metric_type = family.metric_type().as_str().to_string();
    let mut shared = shared();
    shared.registry.register(name, help, family.clone());
    let watched = family.clone();
    shared.listed_when_empty.push(ListedWhenEmpty {
        name,
        help,
        metric_type,
        is_empty: Box::new(move || EncodeMetric::is_empty(&watched)),
    });
    family
}

/// Registers a collector: metrics computed at each scrape (e.g. the process's
/// CPU time).
pub fn register_collector(collector: Box<dyn prometheus_client::collector::Collector>) {
    shared().registry.register_collector(collector);
}

/// Encodes every registered metric as OpenMetrics text.
pub fn encode() -> String {
    let shared = shared();
    let mut text = String::with_capacity(16 * 1024);
    if encode_registry(&mut text, &shared.registry).is_err() {
        text.clear();
    }
    // prometheus-client leaves out a family without series; name the empty ones.
    for family in &shared.listed_when_empty {
        if (family.is_empty)() {
            let ListedWhenEmpty {
                name,
                help,
                metric_type,
                ..
            } = family;
            text.push_str(&format!(
                "# HELP {name} {help}.\n# TYPE {name} {metric_type}\n"
            ));
        }
    }
    if encode_eof(&mut text).is_err() {
        text.clear();
    }
    text
}
