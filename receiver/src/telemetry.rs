//! The receiver's own metrics: records accepted and refused per transport,
//! request duration and refused credentials (see `docs/metrics.md`). They
//! register into the process-wide registry (`tally_model::metrics`) on first use;
//! [`register`] does it at start-up so the first scrape lists them.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Unit;
use tally_model::metrics::{
    latency_histogram, register as register_metric, register_with_unit, HistogramFamily,
    ReasonLabels,
};

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

/// `{transport}`: `grpc` or `http`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `grpc` or `http`.
    pub transport: &'static str,
}

/// The receiver's metrics. Obtain them with [`metrics`].
#[derive(Debug)]
pub struct ReceiverMetrics {
    /// `tally_receiver_accepted_spans`.
    pub accepted_spans: Family<TransportLabels, Counter>,
    /// `tally_receiver_refused_spans`.
    pub refused_spans: Family<TransportLabels, Counter>,
    /// `tally_receiver_accepted_log_records`.
    pub accepted_log_records: Family<TransportLabels, Counter>,
    /// `tally_receiver_refused_log_records`.
    pub refused_log_records: Family<TransportLabels, Counter>,
    /// `tally_receiver_accepted_metric_points`.
    pub accepted_metric_points: Family<TransportLabels, Counter>,
    /// `tally_receiver_refused_metric_points`.
    pub refused_metric_points: Family<TransportLabels, Counter>,
    /// `tally_receiver_request_duration`.
    pub request_duration: HistogramFamily<TransportLabels>,
    /// `tally_ingest_auth_failures{reason}`: OTLP and REST requests refused for
    /// their credential (see [`INGEST_AUTH_FAILURE_REASONS`]).
    pub ingest_auth_failures: Family<ReasonLabels, Counter>,
}

impl ReceiverMetrics {
    fn register() -> ReceiverMetrics {
        let metrics = ReceiverMetrics {
            accepted_spans: register_metric(
                "tally_receiver_accepted_spans",
                "Spans in export requests answered success",
                Family::default(),
            ),
            refused_spans: register_metric(
                "tally_receiver_refused_spans",
                "Spans in export requests answered with an error",
                Family::default(),
            ),
            accepted_log_records: register_metric(
                "tally_receiver_accepted_log_records",
                "Log records in export requests answered success",
                Family::default(),
            ),
            refused_log_records: register_metric(
                "tally_receiver_refused_log_records",
                "Log records in export requests answered with an error",
                Family::default(),
            ),
            accepted_metric_points: register_metric(
                "tally_receiver_accepted_metric_points",
                "Metric data points in export requests answered success",
                Family::default(),
            ),
            refused_metric_points: register_metric(
                "tally_receiver_refused_metric_points",
                "Metric data points in export requests answered with an error",
                Family::default(),
            ),
            request_duration: register_with_unit(
                "tally_receiver_request_duration",
                "Time from receiving an export request to answering it",
                Unit::Seconds,
                HistogramFamily::<TransportLabels>::new_with_constructor(latency_histogram),
            ),
            ingest_auth_failures: register_metric(
                "tally_ingest_auth_failures",
                "OTLP requests refused for their credential, by reason",
                Family::default(),
            ),
        };
        // The zero-valued series of the fixed label sets, so dashboards and
        // alerts see them (as 0) before the first request.
        for transport in [Transport::Grpc, Transport::Http] {
            let labels = transport.labels();
            for family in [
                &metrics.accepted_spans,
                &metrics.refused_spans,
                &metrics.accepted_log_records,
                &metrics.refused_log_records,
                &metrics.accepted_metric_points,
                &metrics.refused_metric_points,
            ] {
                let _ = family.get_or_create(&labels);
            }
            let _ = metrics.request_duration.get_or_create(&labels);
        }
        for reason in INGEST_AUTH_FAILURE_REASONS {
            let _ = metrics
                .ingest_auth_failures
                .get_or_create(&ReasonLabels { reason });
        }
        metrics
    }
}

static METRICS: LazyLock<ReceiverMetrics> = LazyLock::new(ReceiverMetrics::register);

/// The receiver's metrics (registered on first use).
pub fn metrics() -> &'static ReceiverMetrics {
    &METRICS
}

/// Registers the receiver's metrics now, so the first scrape lists them.
pub fn register() {
    LazyLock::force(&METRICS);
}

/// Which OTLP signal a request carried.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SignalKind {
    Spans,
    LogRecords,
    MetricPoints,
}

/// Which listener a request came through.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn labels(self) -> TransportLabels {
        let transport = match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        };
        TransportLabels { transport }
    }
}

/// Counts the records of one decoded request as accepted (answered success) or
/// refused (answered with an error).
pub(crate) fn count_records(kind: SignalKind, transport: Transport, records: u64, accepted: bool) {
    if records == 0 {
        return;
    }
    let m = metrics();
    let family = match (kind, accepted) {
        (SignalKind::Spans, true) => &m.accepted_spans,
        (SignalKind::Spans, false) => &m.refused_spans,
        (SignalKind::LogRecords, true) => &m.accepted_log_records,
        (SignalKind::LogRecords, false) => &m.refused_log_records,
        (SignalKind::MetricPoints, true) => &m.accepted_metric_points,
        (SignalKind::MetricPoints, false) => &m.refused_metric_points,
    };
    family.get_or_create(&transport.labels()).inc_by(records);
}

/// Observes the time from `started` to now as one request's duration.
pub(crate) fn observe_duration(transport: Transport, started: Instant) {
    metrics()
        .request_duration
        .get_or_create(&transport.labels())
        .observe(started.elapsed().as_secs_f64());
}

/// Counts one request refused for its credential.
pub(crate) fn count_auth_failure(reason: &'static str) {
    metrics()
        .ingest_auth_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}
