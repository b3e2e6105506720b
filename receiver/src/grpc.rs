//! OTLP gRPC: `TraceService/Export` and `LogsService/Export` on tonic.
//!
//! Requests may be gzip- or zstd-compressed. tonic enforces the message size limit both on
//! the frame length and while decompressing (into a buffer capped at the limit). It answers
//! `OUT_OF_RANGE` for a too-long frame; Tally rewrites that to `RESOURCE_EXHAUSTED`, the code
//! OTLP clients (and the OpenTelemetry Collector) use for a message over the size limit, as
//! for a message that decompresses past the limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tally_model::pipeline::{ConsumeError, Consumer};
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::check::{check_logs, check_traces};
use crate::error::ReceiverError;
use crate::telemetry::{count_records, observe_duration, SignalKind, Transport};
use crate::{logs_response, trace_response};

/// The two OTLP services over one consumer.
#[derive(Clone)]
struct Otlp {
    consumer: Arc<dyn Consumer>,
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let spans = check_traces(&request).map_err(Status::invalid_argument)?;
        if spans == 0 {
            return Ok(Response::new(ExportTraceServiceResponse::default()));
        }
        let result = self.consumer.consume_traces(request).await;
        count_records(
            SignalKind::Spans,
            Transport::Grpc,
            spans as u64,
            result.is_ok(),
        );
        observe_duration(Transport::Grpc, started);
        let report = result.map_err(consume_status)?;
        Ok(Response::new(trace_response(report)))
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let records = check_logs(&request).map_err(Status::invalid_argument)?;
        if records == 0 {
            return Ok(Response::new(ExportLogsServiceResponse::default()));
        }
        let result = self.consumer.consume_logs(request).await;
        count_records(
            SignalKind::LogRecords,
            Transport::Grpc,
            records as u64,
            result.is_ok(),
        );
        observe_duration(Transport::Grpc, started);
        let report = result.map_err(consume_status)?;
        Ok(Response::new(logs_response(report)))
    }
}

/// `Invalid` → `INVALID_ARGUMENT`; `Overloaded` and `Unavailable` → `UNAVAILABLE` (retryable
/// in OTLP) with a `google.rpc.RetryInfo` detail carrying the delay.
fn consume_status(error: ConsumeError) -> Status {
    match error {
        ConsumeError::Invalid(message) => Status::invalid_argument(message),
        other => {
            let message = other.to_string();
            match other.retry_after() {
                Some(delay) => Status::with_error_details(
                    Code::Unavailable,
                    message,
                    ErrorDetails::with_retry_info(Some(delay)),
                ),
                None => Status::unavailable(message),
            }
        }
    }
}

/// Serves OTLP gRPC on `listener` until `shutdown` resolves, then drains in-flight calls.
pub(crate) async fn serve(
    listener: TcpListener,
    consumer: Arc<dyn Consumer>,
    max_recv_msg_size_mib: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ReceiverError> {
    let limit = max_recv_msg_size_mib.saturating_mul(1024 * 1024);
    let otlp = Otlp { consumer };
    let traces = TraceServiceServer::new(otlp.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit);
    let logs = LogsServiceServer::new(otlp)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted,
        ))
        .add_service(traces)
        .add_service(logs)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(ReceiverError::Grpc)
}

/// `grpc-status` of OUT_OF_RANGE and RESOURCE_EXHAUSTED.
const GRPC_OUT_OF_RANGE: &str = "11";
const GRPC_RESOURCE_EXHAUSTED: axum::http::HeaderValue = axum::http::HeaderValue::from_static("8");

/// tonic refuses a frame longer than the limit with a trailers-only `OUT_OF_RANGE`
/// response before any handler runs (Tally's handlers never answer that code):
/// answer `RESOURCE_EXHAUSTED` instead, as gRPC servers do for an oversize message.
fn oversize_is_resource_exhausted<B>(
    mut response: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == GRPC_OUT_OF_RANGE.as_bytes())
    {
        headers.insert("grpc-status", GRPC_RESOURCE_EXHAUSTED);
    }
    response
}
