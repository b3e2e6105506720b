//! Tally's Prometheus metrics: one process-wide registry that every component
//! updates and the prometheus exporter serves (OpenMetrics text).
//!
//! Labels are bounded by construction: free-form values (actions, models,
//! tenants) pass through a [`LabelCap`] that admits the first N distinct values
//! and maps the rest to `other`. No label ever holds a user id, trace id or
//! request id.
//!
//! ```
//! use tally_model::metrics::{metrics, TransportLabels};
//! metrics().receiver_accepted_spans.get_or_create(&TransportLabels::grpc()).inc();
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

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

/// `reason` values of `tally_exporter_write_failures_total`.
pub const WRITE_FAILURE_REASONS: [&str; 3] = ["connection", "database", "panic"];

/// The counter families whose series appear only with the first row they count (their
/// labels name what was committed): name and help. Until then a scrape still lists each
/// (OpenMetrics allows a family without samples), so every documented metric is there
/// from the first scrape.
const LAZY_FAMILIES: [(&str, &str); 5] = [
    (
        "tally_activity_events",
        "Activity events committed, by action and outcome",
    ),
    (
        "tally_llm_tokens",
        "LLM tokens committed, by provider, model and kind",
    ),
    (
        "tally_llm_requests",
        "LLM model calls committed, by provider, model and outcome",
    ),
    (
        "tally_llm_cost_usd",
        "Estimated LLM cost in US dollars committed, by provider and model",
    ),
    (
        "tally_llm_unpriced_requests",
        "LLM model calls that reported usage but have no price for their model",
    ),
];

/// `tally_budget_used_ratio`: one series per configured budget, so none without
/// budgets (the family is still listed).
const BUDGET_FAMILY: (&str, &str) = (
    "tally_budget_used_ratio",
    "Use of each configured budget in its current period, as a fraction of its limit",
);

/// `reason` values of `tally_rejected_events_total` that no taxonomy verdict gives
/// (those are listed from the first scrape as well, by the validator).
pub const REJECT_REASONS: [&str; 1] = ["tenant_mismatch"];

/// `reason` values of `tally_ingest_auth_failures_total`: no credential, not the
/// shape of a key, no such key (or a wrong secret), a revoked key, a key without
/// the `ingest` scope, a key that could not be checked (database unavailable);
/// on REST ingest also a browser origin the key does not list and a key over its
/// events rate limit.
pub const INGEST_AUTH_FAILURE_REASONS: [&str; 8] = [
    "missing",
    "malformed",
    "unknown",
    "revoked",
    "scope",
    "unavailable",
    "origin",
    "rate_limited",
];

/// `reason` values of `tally_metric_points_not_stored_total`: a metric Tally does
/// not store (anything but `gen_ai.client.token.usage` and
/// `gen_ai.client.operation.duration`), one of those with another data type than
/// a histogram, a point Tally cannot use (no time, no sum, an unknown
/// `gen_ai.token.type`), a point naming another tenant than its ingest key's, and
/// a point already counted (a resent cumulative or delta point).
pub const METRIC_POINT_REASONS: [&str; 5] = [
    "unsupported_metric",
    "unsupported_type",
    "invalid_point",
    "tenant_mismatch",
    "duplicate",
];

/// `{transport}`: `grpc` or `http`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `grpc` or `http`.
    pub transport: &'static str,
}

impl TransportLabels {
    /// The labels of the gRPC transport.
    pub fn grpc() -> Self {
        TransportLabels { transport: "grpc" }
    }
    /// The labels of the HTTP transport.
    pub fn http() -> Self {
        TransportLabels { transport: "http" }
    }
}

/// `{action, outcome}` (+ `tenant` when enabled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabels {
    /// The action, capped (see [`Metrics::action_labels`]).
    pub action: String,
    /// `success`, `failure` or `unknown`.
    pub outcome: &'static str,
    /// The tenant, when tenant labels are on and under their cap.
    pub tenant: Option<String>,
}

/// `{provider, model, kind}` (+ `tenant` when enabled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The LLM provider.
    pub provider: String,
    /// The model, capped (see [`Metrics::model_labels`]).
    pub model: String,
    /// The token kind (`input`, `output`, …).
    pub kind: &'static str,
    /// The tenant, when tenant labels are on and under their cap.
    pub tenant: Option<String>,
}

/// `{provider, model, outcome}` (+ `tenant` when enabled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmRequestLabels {
    /// The LLM provider.
    pub provider: String,
    /// The model, capped.
    pub model: String,
    /// `success`, `failure` or `unknown`.
    pub outcome: &'static str,
    /// The tenant, when tenant labels are on and under their cap.
    pub tenant: Option<String>,
}

/// `{provider, model}` (+ `tenant` when enabled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The LLM provider.
    pub provider: String,
    /// The model, capped.
    pub model: String,
    /// The tenant, when tenant labels are on and under their cap.
    pub tenant: Option<String>,
}

/// `{model}` (+ `tenant` when enabled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelOnlyLabels {
    /// The model, capped.
    pub model: String,
    /// The tenant, when tenant labels are on and under their cap.
    pub tenant: Option<String>,
}

/// `{table}`.
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

/// `{rule}` (redaction rule ids).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The redaction rule's id.
    pub rule: String,
}

/// `{budget}` (configured budget names: a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// The configured budget's name.
    pub budget: String,
}

/// `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Tally's version.
    pub version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn rows_histogram() -> Histogram {
    // 1 … 32768 rows
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Every metric Tally exports. Obtain it with [`metrics()`].
pub struct Metrics {
    registry: Registry,
    /// `tally_activity_events`.
    pub activity_events: Family<ActivityLabels, Counter>,
    /// `tally_llm_tokens`.
    pub llm_tokens: Family<TokenLabels, Counter>,
    /// `tally_llm_requests`.
    pub llm_requests: Family<LlmRequestLabels, Counter>,
    /// `tally_llm_cost_usd`.
    pub llm_cost_usd: Family<ModelLabels, Counter<f64, AtomicU64>>,
    /// `tally_llm_unpriced_requests`.
    pub llm_unpriced_requests: Family<ModelOnlyLabels, Counter>,
    /// `tally_receiver_accepted_spans`.
    pub receiver_accepted_spans: Family<TransportLabels, Counter>,
    /// `tally_receiver_refused_spans`.
    pub receiver_refused_spans: Family<TransportLabels, Counter>,
    /// `tally_receiver_accepted_log_records`.
    pub receiver_accepted_log_records: Family<TransportLabels, Counter>,
    /// `tally_receiver_refused_log_records`.
    pub receiver_refused_log_records: Family<TransportLabels, Counter>,
    /// `tally_receiver_accepted_metric_points`.
    pub receiver_accepted_metric_points: Family<TransportLabels, Counter>,
    /// `tally_receiver_refused_metric_points`.
    pub receiver_refused_metric_points: Family<TransportLabels, Counter>,
    /// `tally_metric_points_not_stored_total{reason}`: data points of accepted
    /// metric requests that were not stored (see [`METRIC_POINT_REASONS`]).
    pub metric_points_not_stored: Family<ReasonLabels, Counter>,
    /// `tally_receiver_request_duration`.
    pub receiver_request_duration: HistogramFamily<TransportLabels>,
    /// `tally_records_without_action`.
    pub records_without_action: Counter,
    /// `tally_queue_records`.
    pub queue_records: Gauge,
    /// `tally_queue_capacity_records`.
    pub queue_capacity_records: Gauge,
    /// `tally_exporter_rows_written`.
    pub exporter_rows_written: Family<TableLabels, Counter>,
    /// `tally_exporter_write_failures`.
    pub exporter_write_failures: Family<ReasonLabels, Counter>,
    /// `tally_exporter_batch_rows`.
    pub exporter_batch_rows: Histogram,
    /// `tally_exporter_batch_duration`.
    pub exporter_batch_duration: Histogram,
    /// `tally_ingest_lag`.
    pub ingest_lag: Histogram,
    /// `tally_rejected_events`.
    pub rejected_events: Family<ReasonLabels, Counter>,
    /// OTLP requests refused for their credential, by reason.
    pub ingest_auth_failures: Family<ReasonLabels, Counter>,
    /// Database round trips made to verify API keys (row lookups and refreshes
    /// of the known-prefix set).
    pub api_key_lookups: Counter,
    /// `tally_redactions`.
    pub redactions: Family<RuleLabels, Counter>,
    /// `tally_sse_clients`.
    pub sse_clients: Gauge,
    /// `tally_rollup_lag_seq`.
    pub rollup_lag_seq: Gauge,
    /// Raw rows written to retention archives (`retention.archive`), by table.
    pub retention_archived_rows: Family<TableLabels, Counter>,
    /// Archives retention could not write (the rows were kept), by table.
    pub retention_archive_failures: Family<TableLabels, Counter>,
    /// `tally_build_info`.
    pub build_info: Family<VersionLabels, Gauge>,
    /// Use of each configured budget in its current period, as a fraction of its limit.
    pub budget_used_ratio: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    /// `tally_process_cpu` (seconds).
    pub process_cpu_seconds: Counter<f64, AtomicU64>,
    /// `tally_process_resident_memory` (bytes).
    pub process_resident_memory_bytes: Gauge,
    /// Caps for the free-form label values.
    pub action_labels: LabelCap,
    /// The cap on distinct model labels.
    pub model_labels: LabelCap,
    /// The cap on distinct tenant labels (0: no tenant label).
    pub tenant_labels: LabelCap,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        macro_rules! reg {
            ($name:expr, $help:expr, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
            ($name:expr, $help:expr, $unit:expr, $metric:expr) => {{
                let metric = $metric;
                registry.register_with_unit($name, $help, $unit, metric.clone());
                metric
            }};
        }
        let metrics = Metrics {
            activity_events: reg!(LAZY_FAMILIES[0].0, LAZY_FAMILIES[0].1, Family::default()),
            llm_tokens: reg!(LAZY_FAMILIES[1].0, LAZY_FAMILIES[1].1, Family::default()),
            llm_requests: reg!(LAZY_FAMILIES[2].0, LAZY_FAMILIES[2].1, Family::default()),
            llm_cost_usd: reg!(LAZY_FAMILIES[3].0, LAZY_FAMILIES[3].1, Family::default()),
            llm_unpriced_requests: reg!(LAZY_FAMILIES[4].0, LAZY_FAMILIES[4].1, Family::default()),
            receiver_accepted_spans: reg!(
                "tally_receiver_accepted_spans",
                "Spans in export requests answered success",
                Family::default()
            ),
            receiver_refused_spans: reg!(
                "tally_receiver_refused_spans",
                "Spans in export requests answered with an error",
                Family::default()
            ),
            receiver_accepted_log_records: reg!(
                "tally_receiver_accepted_log_records",
                "Log records in export requests answered success",
                Family::default()
            ),
            receiver_refused_log_records: reg!(
                "tally_receiver_refused_log_records",
                "Log records in export requests answered with an error",
                Family::default()
            ),
            receiver_accepted_metric_points: reg!(
                "tally_receiver_accepted_metric_points",
                "Metric data points in export requests answered success",
                Family::default()
            ),
            receiver_refused_metric_points: reg!(
                "tally_receiver_refused_metric_points",
                "Metric data points in export requests answered with an error",
                Family::default()
            ),
            metric_points_not_stored: reg!(
                "tally_metric_points_not_stored",
                "Metric data points of accepted requests not stored, by reason",
                Family::default()
            ),
            receiver_request_duration: reg!(
                "tally_receiver_request_duration",
                "Time from receiving an export request to answering it",
                Unit::Seconds,
                HistogramFamily::<TransportLabels>::new_with_constructor(latency_histogram)
            ),
            records_without_action: reg!(
                "tally_records_without_action",
                "Spans and log records that carried no action (not stored)",
                Counter::default()
            ),
            queue_records: reg!(
                "tally_queue_records",
                "Records queued for writing to PostgreSQL",
                Gauge::default()
            ),
            queue_capacity_records: reg!(
                "tally_queue_capacity_records",
                "Capacity of the write queue in records",
                Gauge::default()
            ),
            exporter_rows_written: reg!(
                "tally_exporter_rows_written",
                "Rows committed to PostgreSQL, by table",
                Family::default()
            ),
            exporter_write_failures: reg!(
                "tally_exporter_write_failures",
                "Failed batch writes, by reason",
                Family::default()
            ),
            exporter_batch_rows: reg!(
                "tally_exporter_batch_rows",
                "Rows per committed batch",
                rows_histogram()
            ),
            exporter_batch_duration: reg!(
                "tally_exporter_batch_duration",
                "Time to write and commit one batch",
                Unit::Seconds,
                latency_histogram()
            ),
            ingest_lag: reg!(
                "tally_ingest_lag",
                "Event time to commit",
                Unit::Seconds,
                Histogram::new(exponential_buckets(0.001, 2.0, 20))
            ),
            rejected_events: reg!(
                "tally_rejected_events",
                "Records quarantined or rejected, by reason",
                Family::default()
            ),
            ingest_auth_failures: reg!(
                "tally_ingest_auth_failures",
                "OTLP requests refused for their credential, by reason",
                Family::default()
            ),
            api_key_lookups: reg!(
                "tally_api_key_lookups",
                "Database round trips made to verify API keys",
                Counter::default()
            ),
            redactions: reg!(
                "tally_redactions",
                "Values redacted, by rule",
                Family::default()
            ),
            sse_clients: reg!(
                "tally_sse_clients",
                "Connected live-feed clients",
                Gauge::default()
            ),
            rollup_lag_seq: reg!(
                "tally_rollup_lag_seq",
                "Raw rows committed but not yet folded into the daily rollups",
                Gauge::default()
            ),
            retention_archived_rows: reg!(
                "tally_retention_archived_rows",
                "Raw rows written to retention archives before removal, by table",
                Family::default()
            ),
            retention_archive_failures: reg!(
                "tally_retention_archive_failures",
                "Archives retention could not write (the rows were kept), by table",
                Family::default()
            ),
            build_info: reg!("tally_build_info", "Tally build", Family::default()),
            budget_used_ratio: reg!(BUDGET_FAMILY.0, BUDGET_FAMILY.1, Family::default()),
            process_cpu_seconds: reg!(
                "tally_process_cpu",
                "CPU time used by the Tally process",
                Unit::Seconds,
                Counter::<f64, AtomicU64>::default()
            ),
            process_resident_memory_bytes: reg!(
                "tally_process_resident_memory",
                "Resident memory of the Tally process",
                Unit::Bytes,
                Gauge::default()
            ),
            action_labels: LabelCap::new(200),
            model_labels: LabelCap::new(100),
            tenant_labels: LabelCap::new(0),
            registry,
        };
        metrics.precreate_bounded_series();
        metrics
            .build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        metrics
    }

    /// Creates the zero-valued series of labels whose values are a fixed set, so
    /// dashboards and alerts see them (as 0) before the first event.
    fn precreate_bounded_series(&self) {
        for transport in [TransportLabels::grpc(), TransportLabels::http()] {
            for family in [
                &self.receiver_accepted_spans,
                &self.receiver_refused_spans,
                &self.receiver_accepted_log_records,
                &self.receiver_refused_log_records,
                &self.receiver_accepted_metric_points,
                &self.receiver_refused_metric_points,
            ] {
                let _ = family.get_or_create(&transport);
            }
            let _ = self.receiver_request_duration.get_or_create(&transport);
        }
        for table in ["activity_events", "token_usage", "rejected_events"] {
            let _ = self
                .exporter_rows_written
                .get_or_create(&TableLabels { table });
        }
        for table in ["activity_events", "token_usage"] {
            let _ = self
                .retention_archived_rows
                .get_or_create(&TableLabels { table });
            let _ = self
                .retention_archive_failures
                .get_or_create(&TableLabels { table });
        }
        for reason in WRITE_FAILURE_REASONS {
            let _ = self
                .exporter_write_failures
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in REJECT_REASONS {
            let _ = self.rejected_events.get_or_create(&ReasonLabels { reason });
        }
        for reason in METRIC_POINT_REASONS {
            let _ = self
                .metric_points_not_stored
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in INGEST_AUTH_FAILURE_REASONS {
            let _ = self
                .ingest_auth_failures
                .get_or_create(&ReasonLabels { reason });
        }
    }

    /// Sets `tally_budget_used_ratio{budget}`.
    pub fn set_budget_used_ratio(&self, budget: &str, ratio: f64) {
        self.budget_used_ratio
            .get_or_create(&BudgetLabels {
                budget: budget.to_string(),
            })
            .set(ratio);
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Encodes every metric as OpenMetrics text (process figures refreshed first).
    pub fn encode(&self) -> String {
        crate::process_stats::refresh(self);
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        use prometheus_client::encoding::EncodeMetric;
        let mut text = String::with_capacity(16 * 1024);
        if encode_registry(&mut text, &self.registry).is_err() {
            text.clear();
        }
        // prometheus-client leaves out a family without series; name the empty ones.
        let empty = [
            self.activity_events.is_empty(),
            self.llm_tokens.is_empty(),
            self.llm_requests.is_empty(),
            self.llm_cost_usd.is_empty(),
            self.llm_unpriced_requests.is_empty(),
        ];
        for ((name, help), empty) in LAZY_FAMILIES.iter().zip(empty) {
            if empty {
                text.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} counter\n"));
            }
        }
        if self.budget_used_ratio.is_empty() {
            let (name, help) = BUDGET_FAMILY;
            text.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} gauge\n"));
        }
        if encode_eof(&mut text).is_err() {
            text.clear();
        }
        text
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
