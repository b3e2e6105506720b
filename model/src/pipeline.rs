//! The boundary between the OTLP receiver and the rest of the pipeline.
//!
//! The receiver decodes and checks a request, then hands it to a [`Consumer`]. The
//! consumer's future resolves only once every record of the request is committed
//! (or quarantined) — the receiver answers the client with that result.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Who sent a request: the ingest key that authenticated it, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    /// The `api_keys.id` of the ingest key (stored on every row it writes as
    /// `ingest_key_id`); `None` for an unauthenticated request.
    pub key_id: Option<uuid::Uuid>,
    /// The tenant the key is bound to: every record is stamped with it, and a
    /// record naming another tenant is quarantined (`tenant_mismatch`). `None`
    /// for a `*` key and for an unauthenticated request (any tenant).
    pub tenant: Option<Arc<str>>,
}

impl Sender {
    /// An unauthenticated sender (no key, any tenant).
    pub fn anonymous() -> Sender {
        Sender::default()
    }
}

/// What happened to the records of an accepted request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumeReport {
    /// Records Tally could not store; reported in OTLP `partial_success`.
    pub rejected: u64,
    /// Why they were rejected (empty when `rejected == 0`).
    pub message: String,
    /// The ids of the rows quarantined in `rejected_events` (activity events and
    /// token rows), each with its reason code, so that a caller knowing its
    /// records' ids (REST ingest) can say which were not stored.
    pub quarantined: Vec<(uuid::Uuid, String)>,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConsumeError {
    /// The request itself is wrong (bad ids, …): HTTP 400 / gRPC `INVALID_ARGUMENT`.
    /// Not retryable.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The queue is full: HTTP 429 / gRPC `UNAVAILABLE`, retry after the delay.
    #[error("collector overloaded, retry in {}s", retry_after.as_secs())]
    Overloaded {
        /// When to retry.
        retry_after: Duration,
    },
    /// The database cannot be written now, or the collector is shutting down:
    /// HTTP 503 / gRPC `UNAVAILABLE`, retry after the delay.
    #[error("collector unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// When to retry.
        retry_after: Duration,
    },
}

impl ConsumeError {
    /// The delay a client should wait before retrying, if retryable.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConsumeError::Invalid(_) => None,
            ConsumeError::Overloaded { retry_after }
            | ConsumeError::Unavailable { retry_after, .. } => Some(*retry_after),
        }
    }
}

/// Takes decoded OTLP requests and resolves once their records are committed.
pub trait Consumer: Send + Sync + 'static {
    /// Consumes one `TraceService/Export` request sent by `sender`.
    fn consume_traces(
        &self,
        request: ExportTraceServiceRequest,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>>;

    /// Consumes one `LogsService/Export` request sent by `sender`.
    fn consume_logs(
        &self,
        request: ExportLogsServiceRequest,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>>;

    /// Consumes one `MetricsService/Export` request sent by `sender`. The
    /// report's `rejected` counts data points not stored. By default nothing is
    /// stored: every data point is reported rejected.
    fn consume_metrics(
        &self,
        request: ExportMetricsServiceRequest,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let _ = sender;
        let points = count_metric_points(&request);
        Box::pin(std::future::ready(Ok(ConsumeReport {
            rejected: points,
            message: if points > 0 {
                format!("{points} data point(s) not stored: this consumer stores no metrics")
            } else {
                String::new()
            },
            quarantined: Vec::new(),
        })))
    }
}

/// The number of data points of every metric in `request`, whatever their type.
pub fn count_metric_points(request: &ExportMetricsServiceRequest) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum()
}
