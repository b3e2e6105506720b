//! Tally's OTLP receiver: OTLP gRPC (tonic) and OTLP/HTTP (axum; protobuf and JSON;
//! identity, gzip and zstd), with size limits, id checks and backpressure.
//!
//! Each request is decoded, checked (trace ids 16 bytes, span ids 8 bytes, or empty) and
//! handed to a [`Consumer`]; the client gets its answer once the consumer's future resolves,
//! i.e. once the records are committed. Consumer errors become the OTLP retryable answers
//! (HTTP 429/503 with `Retry-After`, gRPC `UNAVAILABLE` with `RetryInfo`).
//!
//! ```no_run
//! # async fn run(config: tally_config::OtlpReceiverConfig,
//! #              consumer: std::sync::Arc<dyn tally_model::pipeline::Consumer>) {
//! let receiver = tally_receiver::OtlpReceiver::bind(&config, consumer).await.unwrap();
//! println!("gRPC on {:?}", receiver.grpc_addr());
//! receiver.serve(async { let _ = tokio::signal::ctrl_c().await; }).await.unwrap();
//! # }
//! ```

#![warn(missing_docs)]

mod auth;
mod budget;
mod check;
mod error;
mod estimate;
mod grpc;
mod http;
mod json;
mod limits;
mod rest;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::FutureExt;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use tally_config::OtlpReceiverConfig;
use tally_model::pipeline::{ConsumeReport, Consumer};
use tokio::net::TcpListener;
use tracing::info;

pub use auth::{AuthFailure, IngestAuthenticator, KeyPolicy, KeyRefusal};
pub use error::{Malformed, ReceiverError};

/// Entry points for the fuzz targets (`fuzz/`): the receiver's decoding and checks of a
/// request body, as the HTTP path runs them (the gRPC path decodes with the same prost
/// types). Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use crate::error::Malformed;

    /// Decodes an uncompressed `/v1/traces` body (`json`: OTLP/JSON with Tally's fix-ups,
    /// else protobuf) and checks its ids; `Err` is the message a client would get (400).
    /// First, as the receiver does, it estimates the decoded size from the wire bytes.
    pub fn traces(body: &[u8], json: bool) -> Result<ExportTraceServiceRequest, Malformed> {
        std::hint::black_box(if json {
            crate::estimate::json(body)
        } else {
            crate::estimate::traces_protobuf(body)
        });
        let request = if json {
            crate::json::decode_traces(body)?
        } else {
            ExportTraceServiceRequest::decode(body)
                .map_err(|e| format!("invalid OTLP protobuf: {e}"))?
        };
        crate::check::check_traces(&request)?;
        Ok(request)
    }

    /// [`traces`] for a `/v1/logs` body.
    pub fn logs(body: &[u8], json: bool) -> Result<ExportLogsServiceRequest, Malformed> {
        std::hint::black_box(if json {
            crate::estimate::json(body)
        } else {
            crate::estimate::logs_protobuf(body)
        });
        let request = if json {
            crate::json::decode_logs(body)?
        } else {
            ExportLogsServiceRequest::decode(body)
                .map_err(|e| format!("invalid OTLP protobuf: {e}"))?
        };
        crate::check::check_logs(&request)?;
        Ok(request)
    }
}

/// The OTLP receiver: bound listeners for gRPC and/or HTTP, not yet serving.
pub struct OtlpReceiver {
    consumer: Arc<dyn Consumer>,
    grpc: Option<(TcpListener, SocketAddr)>,
    http: Option<(TcpListener, SocketAddr)>,
    grpc_tls: Option<Arc<tally_tls::Reloader>>,
    http_tls: Option<Arc<tally_tls::Reloader>>,
    max_recv_msg_size_mib: usize,
    max_request_body_size: usize,
    budget: budget::InFlightBudget,
    /// `receivers.otlp.body_read_timeout_ms` (`None` when 0).
    body_timeout: Option<std::time::Duration>,
    auth: auth::IngestAuth,
    auth_required: bool,
    events_limiter: rest::EventsLimiter,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("grpc_addr", &self.grpc_addr())
            .field("http_addr", &self.http_addr())
            .field("max_recv_msg_size_mib", &self.max_recv_msg_size_mib)
            .field("max_request_body_size", &self.max_request_body_size)
            .field("max_in_flight_bytes", &self.budget.bytes())
            .finish_non_exhaustive()
    }
}

impl OtlpReceiver {
    /// Binds the enabled listeners (so port 0 resolves now) without serving yet, and
    /// reads their TLS files if they have a `tls` block (an unusable file is an error now).
    pub async fn bind(
        config: &OtlpReceiverConfig,
        consumer: Arc<dyn Consumer>,
    ) -> Result<OtlpReceiver, ReceiverError> {
        let grpc_tls = match (&config.grpc.tls, config.grpc.enabled) {
            (Some(tls), true) => Some(tally_tls::Reloader::new(
                tls,
                "receivers.otlp.grpc.tls",
                tally_tls::ALPN_GRPC,
            )?),
            _ => None,
        };
        let http_tls = match (&config.http.tls, config.http.enabled) {
            (Some(tls), true) => Some(tally_tls::Reloader::new(
                tls,
                "receivers.otlp.http.tls",
                tally_tls::ALPN_HTTP,
            )?),
            _ => None,
        };
        let grpc = if config.grpc.enabled {
            let bound = bind_listener(
                config.grpc.endpoint.socket_addr(),
                "receivers.otlp.grpc.endpoint",
            )
            .await?;
            info!(addr = %bound.1, tls = grpc_tls.is_some(), "OTLP gRPC receiver listening");
            Some(bound)
        } else {
            None
        };
        let http = if config.http.enabled {
            let bound = bind_listener(
                config.http.endpoint.socket_addr(),
                "receivers.otlp.http.endpoint",
            )
            .await?;
            info!(addr = %bound.1, tls = http_tls.is_some(), "OTLP/HTTP receiver listening");
            Some(bound)
        } else {
            None
        };
        Ok(OtlpReceiver {
            consumer,
            grpc,
            http,
            grpc_tls,
            http_tls,
            max_recv_msg_size_mib: config.grpc.max_recv_msg_size_mib,
            max_request_body_size: config.http.max_request_body_size,
            budget: budget::InFlightBudget::new(config.max_in_flight_bytes),
            body_timeout: (config.body_read_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(config.body_read_timeout_ms)),
            auth: auth::IngestAuth::new(None, config.auth.required),
            auth_required: config.auth.required,
            events_limiter: rest::EventsLimiter::new(&config.http.events_rate_limit),
        })
    }

    /// Checks the API keys requests present with `authenticator` (without one,
    /// any presented key is refused, and so is every request when
    /// `receivers.otlp.auth.required` is on).
    pub fn with_authenticator(mut self, authenticator: Arc<dyn IngestAuthenticator>) -> Self {
        self.auth = auth::IngestAuth::new(Some(authenticator), self.auth_required);
        self
    }

    /// The address the gRPC listener is bound to, if gRPC is enabled.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|(_, addr)| *addr)
    }

    /// The address the HTTP listener is bound to, if HTTP is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr)| *addr)
    }

    /// Serves until `shutdown` resolves, then stops accepting new connections/requests,
    /// lets in-flight requests finish (their consumer futures complete and clients get
    /// answers), and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ReceiverError> {
        let shutdown = shutdown.boxed().shared();
        let admission = self.admission();
        let grpc = async {
            match self.grpc {
                Some((listener, _)) => {
                    grpc::serve(
                        listener,
                        self.grpc_tls.clone(),
                        self.consumer.clone(),
                        self.max_recv_msg_size_mib,
                        admission.clone(),
                        shutdown.clone(),
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let http = async {
            match self.http {
                Some((listener, _)) => {
                    http::serve(
                        listener,
                        self.http_tls.clone(),
                        self.consumer.clone(),
                        self.max_request_body_size,
                        admission.clone(),
                        shutdown.clone(),
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        tokio::try_join!(grpc, http)?;
        info!("OTLP receiver stopped");
        Ok(())
    }
}

impl OtlpReceiver {
    /// What both transports check before a request reaches the pipeline.
    fn admission(&self) -> Admission {
        Admission {
            budget: self.budget.clone(),
            body_timeout: self.body_timeout,
            auth: self.auth.clone(),
            events_limiter: self.events_limiter.clone(),
        }
    }
}

/// What every export request goes through on either transport before the
/// pipeline sees it: the ingest-key check, the receiver-wide in-flight byte budget
/// and the body-read deadline.
#[derive(Clone)]
pub(crate) struct Admission {
    /// `receivers.otlp.max_in_flight_bytes`, shared by gRPC and HTTP.
    pub(crate) budget: budget::InFlightBudget,
    /// `receivers.otlp.body_read_timeout_ms` (`None`: no deadline).
    pub(crate) body_timeout: Option<std::time::Duration>,
    /// `receivers.otlp.auth`.
    pub(crate) auth: auth::IngestAuth,
    /// `receivers.otlp.http.events_rate_limit` (REST ingest only).
    pub(crate) events_limiter: rest::EventsLimiter,
}

async fn bind_listener(
    endpoint: SocketAddr,
    config_path: &'static str,
) -> Result<(TcpListener, SocketAddr), ReceiverError> {
    let bind_error = |source| ReceiverError::Bind {
        endpoint,
        config_path,
        source,
    };
    let listener = TcpListener::bind(endpoint).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

/// The `ExportTraceServiceResponse` for a consumer's report (`partial_success` when records
/// were rejected or the consumer left a message).
pub(crate) fn trace_response(report: ConsumeReport) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (report.rejected > 0 || !report.message.is_empty()).then(|| {
            ExportTracePartialSuccess {
                rejected_spans: i64::try_from(report.rejected).unwrap_or(i64::MAX),
                error_message: report.message,
            }
        }),
    }
}

/// The `ExportLogsServiceResponse` for a consumer's report.
pub(crate) fn logs_response(report: ConsumeReport) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (report.rejected > 0 || !report.message.is_empty()).then(|| {
            ExportLogsPartialSuccess {
                rejected_log_records: i64::try_from(report.rejected).unwrap_or(i64::MAX),
                error_message: report.message,
            }
        }),
    }
}

/// The `ExportMetricsServiceResponse` for a consumer's report (`rejected`: data
/// points not stored).
pub(crate) fn metrics_response(report: ConsumeReport) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (report.rejected > 0 || !report.message.is_empty()).then(|| {
            ExportMetricsPartialSuccess {
                rejected_data_points: i64::try_from(report.rejected).unwrap_or(i64::MAX),
                error_message: report.message,
            }
        }),
    }
}
