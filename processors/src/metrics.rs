//! The processors' metrics: what redaction changed and what the pipeline did not
//! store as it came (records without an action, quarantined records, metric
//! points left out), by the processors' own vocabularies. They register into the
//! process-wide registry (`tally_model::metrics`) on first use; [`register`] does
//! it at start-up so the first scrape lists them.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tally_model::metrics::{register as register_metric, ReasonLabels};

use crate::redact::Rule;
use crate::tokens::metrics::NotStored;
use crate::validate::ReasonCode;

/// `reason` of a quarantined record naming another tenant than its ingest key's
/// (the pipeline's check, beside the taxonomy's [`ReasonCode`]s).
pub const TENANT_MISMATCH: &str = "tenant_mismatch";

/// `{rule}` (redaction rule ids).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The redaction rule's id.
    pub rule: String,
}

/// The processors' metrics. Obtain them with [`metrics`].
#[derive(Debug)]
pub struct ProcessorMetrics {
    /// `tally_redactions{rule}`.
    pub redactions: Family<RuleLabels, Counter>,
    /// `tally_rejected_events{reason}`: records quarantined or rejected.
    pub rejected_events: Family<ReasonLabels, Counter>,
    /// `tally_records_without_action`.
    pub records_without_action: Counter,
    /// `tally_metric_points_not_stored{reason}`: data points of accepted metric
    /// requests that were not stored (see [`NotStored`]).
    pub metric_points_not_stored: Family<ReasonLabels, Counter>,
}

impl ProcessorMetrics {
    fn register() -> ProcessorMetrics {
        let metrics = ProcessorMetrics {
            metric_points_not_stored: register_metric(
                "tally_metric_points_not_stored",
                "Metric data points of accepted requests not stored, by reason",
                Family::default(),
            ),
            records_without_action: register_metric(
                "tally_records_without_action",
                "Spans and log records that carried no action (not stored)",
                Counter::default(),
            ),
            rejected_events: register_metric(
                "tally_rejected_events",
                "Records quarantined or rejected, by reason",
                Family::default(),
            ),
            redactions: register_metric(
                "tally_redactions",
                "Values redacted, by rule",
                Family::default(),
            ),
        };
        // The zero-valued series of every reason and rule, so dashboards and
        // alerts see them (as 0) before the first one.
        let rejected = ReasonCode::ALL.iter().map(|code| code.as_str());
        for reason in rejected.chain([TENANT_MISMATCH]) {
            let _ = metrics
                .rejected_events
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in NotStored::ALL {
            let _ = metrics
                .metric_points_not_stored
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                });
        }
        for rule in Rule::ALL {
            let _ = metrics.redactions.get_or_create(&RuleLabels {
                rule: rule.as_str().to_string(),
            });
        }
        metrics
    }
}

static METRICS: LazyLock<ProcessorMetrics> = LazyLock::new(ProcessorMetrics::register);

/// The processors' metrics (registered on first use).
pub fn metrics() -> &'static ProcessorMetrics {
    &METRICS
}

/// Registers the processors' metrics now, so the first scrape lists them.
pub fn register() {
    LazyLock::force(&METRICS);
}
