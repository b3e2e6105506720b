//! The receiver's own metrics: records accepted and refused per transport, and
//! request duration (see `docs/metrics.md`).

use std::time::Instant;

use tally_model::metrics::{metrics, TransportLabels};

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
        match self {
            Transport::Grpc => TransportLabels::grpc(),
            Transport::Http => TransportLabels::http(),
        }
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
        (SignalKind::Spans, true) => &m.receiver_accepted_spans,
        (SignalKind::Spans, false) => &m.receiver_refused_spans,
        (SignalKind::LogRecords, true) => &m.receiver_accepted_log_records,
        (SignalKind::LogRecords, false) => &m.receiver_refused_log_records,
        (SignalKind::MetricPoints, true) => &m.receiver_accepted_metric_points,
        (SignalKind::MetricPoints, false) => &m.receiver_refused_metric_points,
    };
    family.get_or_create(&transport.labels()).inc_by(records);
}

/// Observes the time from `started` to now as one request's duration.
pub(crate) fn observe_duration(transport: Transport, started: Instant) {
    metrics()
        .receiver_request_duration
        .get_or_create(&transport.labels())
        .observe(started.elapsed().as_secs_f64());
}
