//! The storage crate's metrics, updated only after a commit (so the counters
//! agree with the tables): rows written, activity and LLM counts, batch size and
//! duration, ingest lag, write failures, queue depth, API key lookups, budget use,
//! the rollup lag and the retention archive counts;
//! and the caps that bound their free-form labels. They register into the
//! process-wide registry (`tally_model::metrics`) on first use; [`register`] does
//! it at start-up so the first scrape lists them.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Unit;
use tally_model::metrics::{
    latency_histogram, register as register_metric, register_listed, register_with_unit, LabelCap,
    ReasonLabels, TableLabels,
};

/// `reason` values of `tally_exporter_write_failures_total`.
pub const WRITE_FAILURE_REASONS: [&str; 3] = ["connection", "database", "panic"];

/// `{action, outcome}` (+ `tenant` when enabled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabels {
    /// The action, capped (see [`StorageMetrics::action_labels`]).
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
    /// The model, capped (see [`StorageMetrics::model_labels`]).
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

/// `{budget}` (configured budget names: a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// The configured budget's name.
    pub budget: String,
}

/// The storage crate's metrics. Obtain them with [`metrics`].
#[derive(Debug)]
pub struct StorageMetrics {
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
    /// `tally_queue_records`.
    pub queue_records: Gauge,
    /// `tally_queue_capacity_records`.
    pub queue_capacity_records: Gauge,
    /// `tally_exporter_rows_written`.
    pub rows_written: Family<TableLabels, Counter>,
    /// `tally_exporter_write_failures` (see [`WRITE_FAILURE_REASONS`]).
    pub write_failures: Family<ReasonLabels, Counter>,
    /// `tally_exporter_batch_rows`.
    pub batch_rows: Histogram,
    /// `tally_exporter_batch_duration`.
    pub batch_duration: Histogram,
    /// `tally_ingest_lag`.
    pub ingest_lag: Histogram,
    /// Database round trips made to verify API keys (row lookups and refreshes
    /// of the known-prefix set).
    pub api_key_lookups: Counter,
    /// Use of each configured budget in its current period, as a fraction of its limit.
    pub budget_used_ratio: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    /// `tally_rollup_lag_seq`: raw rows committed but not yet folded into the
    /// daily rollups (set by the rollup job).
    pub rollup_lag_seq: Gauge,
    /// Raw rows written to retention archives (`retention.archive`), by table.
    pub retention_archived_rows: Family<TableLabels, Counter>,
    /// Archives retention could not write (the rows were kept), by table.
    pub retention_archive_failures: Family<TableLabels, Counter>,
    /// The cap on distinct action labels.
    pub action_labels: LabelCap,
    /// The cap on distinct model labels.
    pub model_labels: LabelCap,
    /// The cap on distinct tenant labels (0: no tenant label).
    pub tenant_labels: LabelCap,
}

impl StorageMetrics {
    fn register() -> StorageMetrics {
        let metrics = StorageMetrics {
            activity_events: register_listed(
                "tally_activity_events",
                "Activity events committed, by action and outcome",
                Family::default(),
            ),
            llm_tokens: register_listed(
                "tally_llm_tokens",
                "LLM tokens committed, by provider, model and kind",
                Family::default(),
            ),
            llm_requests: register_listed(
                "tally_llm_requests",
                "LLM model calls committed, by provider, model and outcome",
                Family::default(),
            ),
            llm_cost_usd: register_listed(
                "tally_llm_cost_usd",
                "Estimated LLM cost in US dollars committed, by provider and model",
                Family::default(),
            ),
            llm_unpriced_requests: register_listed(
                "tally_llm_unpriced_requests",
                "LLM model calls that reported usage but have no price for their model",
                Family::default(),
            ),
            queue_records: register_metric(
                "tally_queue_records",
                "Records queued for writing to PostgreSQL",
                Gauge::default(),
            ),
            queue_capacity_records: register_metric(
                "tally_queue_capacity_records",
                "Capacity of the write queue in records",
                Gauge::default(),
            ),
            rows_written: register_metric(
                "tally_exporter_rows_written",
                "Rows committed to PostgreSQL, by table",
                Family::default(),
            ),
            write_failures: register_metric(
                "tally_exporter_write_failures",
                "Failed batch writes, by reason",
                Family::default(),
            ),
            // 1 … 32768 rows
            batch_rows: register_metric(
                "tally_exporter_batch_rows",
                "Rows per committed batch",
                Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            ),
            batch_duration: register_with_unit(
                "tally_exporter_batch_duration",
                "Time to write and commit one batch",
                Unit::Seconds,
                latency_histogram(),
            ),
            ingest_lag: register_with_unit(
                "tally_ingest_lag",
                "Event time to commit",
                Unit::Seconds,
                Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            ),
            api_key_lookups: register_metric(
                "tally_api_key_lookups",
                "Database round trips made to verify API keys",
                Counter::default(),
            ),
            // One series per configured budget, so none without budgets (the
            // family is still listed).
            budget_used_ratio: register_listed(
                "tally_budget_used_ratio",
                "Use of each configured budget in its current period, as a fraction of its limit",
                Family::default(),
            ),
            rollup_lag_seq: register_metric(
                "tally_rollup_lag_seq",
                "Raw rows committed but not yet folded into the daily rollups",
                Gauge::default(),
            ),
            retention_archived_rows: register_metric(
                "tally_retention_archived_rows",
                "Raw rows written to retention archives before removal, by table",
                Family::default(),
            ),
            retention_archive_failures: register_metric(
                "tally_retention_archive_failures",
                "Archives retention could not write (the rows were kept), by table",
                Family::default(),
            ),
            action_labels: LabelCap::new(200),
            model_labels: LabelCap::new(100),
            tenant_labels: LabelCap::new(0),
        };
        // The zero-valued series of the fixed label sets, so dashboards and
        // alerts see them (as 0) before the first batch.
        for table in ["activity_events", "token_usage", "rejected_events"] {
            let _ = metrics.rows_written.get_or_create(&TableLabels { table });
        }
        for table in ["activity_events", "token_usage"] {
            let _ = metrics
                .retention_archived_rows
                .get_or_create(&TableLabels { table });
            let _ = metrics
                .retention_archive_failures
                .get_or_create(&TableLabels { table });
        }
        for reason in WRITE_FAILURE_REASONS {
            let _ = metrics
                .write_failures
                .get_or_create(&ReasonLabels { reason });
        }
        metrics
    }

    /// Sets `tally_budget_used_ratio{budget}`.
    pub fn set_budget_used_ratio(&self, budget: &str, ratio: f64) {
        self.budget_used_ratio
            .get_or_create(&BudgetLabels {
                budget: budget.to_string(),
            })
            .set(ratio);
    }
}

static METRICS: LazyLock<StorageMetrics> = LazyLock::new(StorageMetrics::register);

/// The storage crate's metrics (registered on first use).
pub fn metrics() -> &'static StorageMetrics {
    &METRICS
}

/// Registers the storage crate's metrics now (the writer's, the rollup,
/// retention and budget jobs'), so the first scrape lists them.
pub fn register() {
    LazyLock::force(&METRICS);
}
