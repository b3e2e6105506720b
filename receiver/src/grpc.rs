//! OTLP gRPC: `TraceService/Export`, `LogsService/Export` and
//! `MetricsService/Export` on tonic.
//!
//! Requests may be gzip- or zstd-compressed. tonic enforces the message size limit both on
//! the frame length and while decompressing (into a buffer capped at the limit). It answers
//! `OUT_OF_RANGE` for a too-long frame; Tally rewrites that to `RESOURCE_EXHAUSTED`, the code
//! OTLP clients (and the OpenTelemetry Collector) use for a message over the size limit, as
//! for a message that decompresses past the limit. tonic answers a message it cannot decode
//! (prost's error: truncated, invalid UTF-8 in a string field, nested deeper than prost's
//! recursion limit of 100, …) or decompress with `INTERNAL`; Tally rewrites those to
//! `INVALID_ARGUMENT`, the code of malformed OTLP (as HTTP answers 400), keeping the reason.
//!
//! Every call is charged to the receiver's in-flight bytes budget ([`InFlightBudget`]): a
//! layer in front of tonic wraps the request body in a [`ChargedBody`], which charges the
//! bytes as they arrive (holding the message back from tonic, which reserves the announced
//! length at once, until all of it is in; then the announced length), and fails the body
//! with `RESOURCE_EXHAUSTED` (with `RetryInfo`) when the budget is spent, or with
//! `DEADLINE_EXCEEDED` when it has not arrived within `receivers.otlp.body_read_timeout_ms`. The services are tonic's generated ones with another codec
//! ([`ExportCodec`]): before decoding, its decoder tops the charge up to the decompressed
//! message plus the estimated size of its decoded form ([`estimate`]); a message that alone
//! would exceed the whole budget is refused `RESOURCE_EXHAUSTED` without `RetryInfo` (not
//! retryable), one that finds the budget spent `RESOURCE_EXHAUSTED` with it. The handler
//! holds the charge until its answer is built.
//!
//! Over 600 lines: the three OTLP services plus the body and codec plumbing tonic needs for the byte budget, which the HTTP path cannot share.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http_body::Frame;
use prost::Message;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tally_model::pipeline::{ConsumeError, Consumer, Sender};
use tokio::net::TcpListener;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{Denied, IngestAuth};
use crate::budget::{Charge, DecodeRefusal, Exhausted, InFlightBudget, BUSY_RETRY_AFTER};
use crate::check::{check_logs, check_metrics, check_traces};
use crate::error::{shorten, ReceiverError};
use crate::estimate;
use crate::telemetry::{count_records, observe_duration, SignalKind, Transport};
use crate::{logs_response, metrics_response, trace_response, Admission};

/// The three OTLP services over one consumer.
#[derive(Clone)]
struct Otlp {
    consumer: Arc<dyn Consumer>,
    auth: IngestAuth,
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let started = Instant::now();
        // Charged by the decoder (`ExportCodec`); held until the answer is built.
        let charge = request.extensions().get::<CallCharge>().cloned();
        // Put there by `ExportServer::call` once the credential was checked.
        let sender = request.extensions().get::<Sender>().cloned();
        let request = request.into_inner();
        let spans = check_traces(&request).map_err(|e| Status::invalid_argument(e.0))?;
        if spans == 0 {
            return Ok(Response::new(ExportTraceServiceResponse::default()));
        }
        let sender = sender.ok_or_else(|| Status::internal("unchecked credential"))?;
        let result = self.consumer.consume_traces(request, sender).await;
        count_records(
            SignalKind::Spans,
            Transport::Grpc,
            spans as u64,
            result.is_ok(),
        );
        observe_duration(Transport::Grpc, started);
        let report = result.map_err(consume_status)?;
        let response = Response::new(trace_response(report));
        drop(charge);
        Ok(response)
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let started = Instant::now();
        // Charged by the decoder (`ExportCodec`); held until the answer is built.
        let charge = request.extensions().get::<CallCharge>().cloned();
        let sender = request.extensions().get::<Sender>().cloned();
        let request = request.into_inner();
        let records = check_logs(&request).map_err(|e| Status::invalid_argument(e.0))?;
        if records == 0 {
            return Ok(Response::new(ExportLogsServiceResponse::default()));
        }
        let sender = sender.ok_or_else(|| Status::internal("unchecked credential"))?;
        let result = self.consumer.consume_logs(request, sender).await;
        count_records(
            SignalKind::LogRecords,
            Transport::Grpc,
            records as u64,
            result.is_ok(),
        );
        observe_duration(Transport::Grpc, started);
        let report = result.map_err(consume_status)?;
        let response = Response::new(logs_response(report));
        drop(charge);
        Ok(response)
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let started = Instant::now();
        // Charged by the decoder (`ExportCodec`); held until the answer is built.
        let charge = request.extensions().get::<CallCharge>().cloned();
        let sender = request.extensions().get::<Sender>().cloned();
        let request = request.into_inner();
        let points = check_metrics(&request).map_err(|e| Status::invalid_argument(e.0))?;
        if points == 0 {
            return Ok(Response::new(ExportMetricsServiceResponse::default()));
        }
        let sender = sender.ok_or_else(|| Status::internal("unchecked credential"))?;
        let result = self.consumer.consume_metrics(request, sender).await;
        count_records(
            SignalKind::MetricPoints,
            Transport::Grpc,
            points as u64,
            result.is_ok(),
        );
        observe_duration(Transport::Grpc, started);
        let report = result.map_err(consume_status)?;
        let response = Response::new(metrics_response(report));
        drop(charge);
        Ok(response)
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

/// The charge of one call, shared by its [`ChargedBody`] and (through the request's
/// extensions) its handler.
#[derive(Clone)]
struct CallCharge(Arc<Mutex<Charge>>);

impl CallCharge {
    fn lock(&self) -> std::sync::MutexGuard<'_, Charge> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ensure(&self, bytes: usize) -> Result<(), Exhausted> {
        self.lock().ensure(bytes)
    }

    fn ensure_decoded(&self, wire: usize, decoded: usize) -> Result<(), DecodeRefusal> {
        self.lock().ensure_decoded(wire, decoded)
    }
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo`: retryable for OTLP clients.
fn busy_status(busy: &Exhausted) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        busy.message(),
        ErrorDetails::with_retry_info(Some(BUSY_RETRY_AFTER)),
    )
}

/// `RESOURCE_EXHAUSTED` without a retry delay: the message alone, decoded, would take
/// more than the whole budget, so retrying cannot help.
fn refusal_status(refusal: &DecodeRefusal) -> Status {
    match refusal {
        DecodeRefusal::TooLarge { wanted, budget } => {
            let message = DecodeRefusal::too_large_message(*wanted, *budget);
            tracing::debug!(%message, "OTLP gRPC call refused");
            Status::resource_exhausted(message)
        }
        DecodeRefusal::Busy(busy) => {
            tracing::debug!(message = %busy.message(), "OTLP gRPC call refused");
            busy_status(busy)
        }
    }
}

/// One OTLP export service served over gRPC with [`ExportCodec`].
trait GrpcSignal: Send + Sync + 'static {
    /// The gRPC service name.
    const SERVICE: &'static str;
    /// The path of its `Export` method.
    const PATH: &'static str;
    type Request: Message + Default + Send + 'static;
    type Response: Message + Send + 'static;
    /// The estimated size of a request once decoded ([`estimate`]).
    fn estimate(wire: &[u8]) -> usize;
    fn export(
        otlp: Arc<Otlp>,
        request: Request<Self::Request>,
    ) -> BoxFuture<'static, Result<Response<Self::Response>, Status>>;
}

struct TracesSignal;

impl GrpcSignal for TracesSignal {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;

    fn estimate(wire: &[u8]) -> usize {
        estimate::traces_protobuf(wire)
    }

    fn export(
        otlp: Arc<Otlp>,
        request: Request<Self::Request>,
    ) -> BoxFuture<'static, Result<Response<Self::Response>, Status>> {
        Box::pin(async move { TraceService::export(otlp.as_ref(), request).await })
    }
}

struct LogsSignal;

impl GrpcSignal for LogsSignal {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;

    fn estimate(wire: &[u8]) -> usize {
        estimate::logs_protobuf(wire)
    }

    fn export(
        otlp: Arc<Otlp>,
        request: Request<Self::Request>,
    ) -> BoxFuture<'static, Result<Response<Self::Response>, Status>> {
        Box::pin(async move { LogsService::export(otlp.as_ref(), request).await })
    }
}

struct MetricsSignal;

impl GrpcSignal for MetricsSignal {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;

    fn estimate(wire: &[u8]) -> usize {
        estimate::metrics_protobuf(wire)
    }

    fn export(
        otlp: Arc<Otlp>,
        request: Request<Self::Request>,
    ) -> BoxFuture<'static, Result<Response<Self::Response>, Status>> {
        Box::pin(async move { MetricsService::export(otlp.as_ref(), request).await })
    }
}

/// The protobuf codec of an export call, whose decoder charges the call's budget for the
/// decoded size (estimated from the decompressed message by [`estimate`]) before
/// decoding, and answers an undecodable message `INVALID_ARGUMENT`.
struct ExportCodec<S> {
    charge: Option<CallCharge>,
    signal: PhantomData<fn() -> S>,
}

impl<S: GrpcSignal> Codec for ExportCodec<S> {
    type Encode = S::Response;
    type Decode = S::Request;
    type Encoder = ResponseEncoder<S::Response>;
    type Decoder = ExportDecoder<S>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ExportDecoder {
            charge: self.charge.clone(),
            signal: PhantomData,
        }
    }
}

struct ResponseEncoder<M>(PhantomData<fn(M)>);

impl<M: Message> Encoder for ResponseEncoder<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))
    }
}

struct ExportDecoder<S> {
    charge: Option<CallCharge>,
    signal: PhantomData<fn() -> S>,
}

impl<S: GrpcSignal> Decoder for ExportDecoder<S> {
    type Item = S::Request;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<S::Request>, Status> {
        let wire = buf.remaining();
        // tonic hands over the whole (decompressed) message as one buffer; were it ever
        // in pieces, it is copied once to be scanned.
        let copy = (buf.chunk().len() < wire).then(|| buf.copy_to_bytes(wire));
        if let Some(charge) = &self.charge {
            let decoded = S::estimate(copy.as_deref().unwrap_or_else(|| buf.chunk()));
            charge
                .ensure_decoded(wire, decoded)
                .map_err(|refusal| refusal_status(&refusal))?;
        }
        let decoded = match copy {
            Some(copy) => S::Request::decode(copy),
            None => S::Request::decode(buf),
        };
        decoded
            .map(Some)
            // prost's wording, as tonic's own codec reports it.
            .map_err(|e| Status::invalid_argument(shorten(e.to_string())))
    }
}

/// The export service of one signal: what tonic generates, with [`ExportCodec`]
/// instead of its prost codec.
struct ExportServer<S> {
    otlp: Arc<Otlp>,
    max_decoding_message_size: usize,
    signal: PhantomData<fn() -> S>,
}

impl<S> Clone for ExportServer<S> {
    fn clone(&self) -> Self {
        ExportServer {
            otlp: self.otlp.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
            signal: PhantomData,
        }
    }
}

impl<S: GrpcSignal> NamedService for ExportServer<S> {
    const NAME: &'static str = S::SERVICE;
}

struct ExportMethod<S> {
    otlp: Arc<Otlp>,
    signal: PhantomData<fn() -> S>,
}

impl<S: GrpcSignal> UnaryService<S::Request> for ExportMethod<S> {
    type Response = S::Response;
    type Future = BoxFuture<'static, Result<Response<S::Response>, Status>>;

    fn call(&mut self, request: Request<S::Request>) -> Self::Future {
        S::export(self.otlp.clone(), request)
    }
}

impl<S, B> tower::Service<axum::http::Request<B>> for ExportServer<S>
where
    S: GrpcSignal,
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        if request.uri().path() != S::PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("unknown method").into_http::<tonic::body::Body>())
            });
        }
        let codec = ExportCodec::<S> {
            charge: request.extensions().get::<CallCharge>().cloned(),
            signal: PhantomData,
        };
        let method = ExportMethod::<S> {
            otlp: self.otlp.clone(),
            signal: PhantomData,
        };
        let mut accept = EnabledCompressionEncodings::default();
        accept.enable(CompressionEncoding::Gzip);
        accept.enable(CompressionEncoding::Zstd);
        let limit = self.max_decoding_message_size;
        let otlp = self.otlp.clone();
        Box::pin(async move {
            // The credential is checked before the body is read.
            match otlp.auth.check(request.headers()).await {
                Ok(sender) => {
                    request.extensions_mut().insert(sender);
                }
                Err(denied) => {
                    let status = match denied {
                        Denied::Unauthenticated(message) => {
                            tracing::debug!(%message, "OTLP gRPC call refused");
                            Status::unauthenticated(message)
                        }
                        Denied::Unavailable(message) => Status::with_error_details(
                            Code::Unavailable,
                            message,
                            ErrorDetails::with_retry_info(Some(BUSY_RETRY_AFTER)),
                        ),
                    };
                    return Ok(status.into_http::<tonic::body::Body>());
                }
            }
            let mut grpc = Grpc::new(codec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// Length of the gRPC message prefix: compressed flag and big-endian `u32` length.
const PREFIX_LEN: usize = 5;

/// A request body that charges its bytes to the in-flight budget as they arrive. tonic
/// reserves a buffer of the length the gRPC message prefix announces as soon as it reads
/// the prefix; so that a client announcing a large message and trickling it cannot hold
/// that much budget (and memory) with a few bytes, the body holds the message's frames
/// back until the whole message is in (charging what has arrived), then hands them to
/// tonic and charges the announced length. A prefix announcing more than the decoding
/// limit goes to tonic at once (which refuses it). Fails with `RESOURCE_EXHAUSTED` when
/// the budget cannot cover it, and with `DEADLINE_EXCEEDED` when the body has not all
/// arrived by its deadline, which gives the charge back: a client trickling its body
/// holds only the bytes it sent, and those that long at most.
struct ChargedBody {
    inner: tonic::body::Body,
    charge: CallCharge,
    /// `receivers.otlp.body_read_timeout_ms` from the call's start; `None` once the
    /// body has ended (or without a deadline).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    /// The decoding limit: tonic refuses a longer message as soon as it sees its prefix.
    max_message: usize,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    /// Prefix plus announced length, once the prefix is in.
    announced: usize,
    seen: usize,
    /// Whether the first message is still held back (incomplete).
    holding: bool,
    /// Frames received and not yet handed to tonic.
    queue: VecDeque<Frame<Bytes>>,
    /// The inner body has ended.
    inner_done: bool,
}

impl ChargedBody {
    fn new(
        inner: tonic::body::Body,
        charge: CallCharge,
        max_message: usize,
        timeout: Option<Duration>,
    ) -> ChargedBody {
        ChargedBody {
            inner,
            charge,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            timeout: timeout.unwrap_or_default(),
            max_message,
            prefix: [0; PREFIX_LEN],
            prefix_len: 0,
            announced: 0,
            seen: 0,
            holding: true,
            queue: VecDeque::new(),
            inner_done: false,
        }
    }

    /// Charges for `data`, the next bytes of the body: what has arrived while the first
    /// message is held back, the announced length once tonic gets it.
    fn account(&mut self, data: &[u8]) -> Result<(), Exhausted> {
        if self.prefix_len < PREFIX_LEN {
            let take = (PREFIX_LEN - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            if self.prefix_len == PREFIX_LEN {
                let [_, a, b, c, d] = self.prefix;
                let length = u32::from_be_bytes([a, b, c, d]) as usize;
                if length > self.max_message {
                    // tonic refuses it on sight; no reason to wait for the rest.
                    self.holding = false;
                }
                self.announced = PREFIX_LEN + length.min(self.max_message);
            }
        }
        self.seen = self.seen.saturating_add(data.len());
        if self.prefix_len == PREFIX_LEN && self.seen >= self.announced {
            self.holding = false;
        }
        let wanted = if self.holding {
            self.seen
        } else {
            self.seen.max(self.announced)
        };
        self.charge.ensure(wanted)
    }
}
impl http_body::Body for ChargedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if !self.holding {
                if let Some(frame) = self.queue.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if self.inner_done {
                    return Poll::Ready(None);
                }
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    match frame.data_ref() {
                        Some(data) => {
                            let data = data.clone();
                            if let Err(busy) = self.account(&data) {
                                tracing::debug!(message = %busy.message(), "OTLP gRPC call refused");
                                return Poll::Ready(Some(Err(busy_status(&busy))));
                            }
                        }
                        // Trailers: whatever came before them is all there is.
                        None => self.holding = false,
                    }
                    if self.inner.is_end_stream() {
                        self.deadline = None;
                        self.holding = false;
                    }
                    self.queue.push_back(frame);
                }
                Poll::Ready(None) => {
                    self.deadline = None;
                    self.holding = false;
                    self.inner_done = true;
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Pending => {
                    let expired = self
                        .deadline
                        .as_mut()
                        .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                    if expired {
                        self.deadline = None;
                        // Give the bytes back now, not when tonic drops the call.
                        let mut charge = self.charge.lock();
                        *charge = charge.release();
                        drop(charge);
                        let message = format!(
                            "request body not received within {} ms (receivers.otlp.body_read_timeout_ms)",
                            self.timeout.as_millis()
                        );
                        tracing::debug!(%message, "OTLP gRPC call refused");
                        return Poll::Ready(Some(Err(Status::deadline_exceeded(message))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.holding && self.queue.is_empty() && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.queue.is_empty() && !self.holding {
            self.inner.size_hint()
        } else {
            http_body::SizeHint::default()
        }
    }
}

/// Wraps each call's body in a [`ChargedBody`] and puts its charge in the extensions.
fn charge_calls(
    budget: InFlightBudget,
    max_message: usize,
    timeout: Option<Duration>,
) -> impl Fn(axum::http::Request<tonic::body::Body>) -> axum::http::Request<tonic::body::Body> + Clone
{
    move |request| {
        let charge = CallCharge(Arc::new(Mutex::new(budget.charge())));
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(charge.clone());
        let body = tonic::body::Body::new(ChargedBody::new(body, charge, max_message, timeout));
        axum::http::Request::from_parts(parts, body)
    }
}

/// Serves OTLP gRPC on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves, then drains in-flight calls.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tally_tls::Reloader>>,
    consumer: Arc<dyn Consumer>,
    max_recv_msg_size_mib: usize,
    admission: Admission,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ReceiverError> {
    let Admission {
        budget,
        body_timeout,
        auth,
        ..
    } = admission;
    let limit = max_recv_msg_size_mib.saturating_mul(1024 * 1024);
    let otlp = Arc::new(Otlp { consumer, auth });
    let traces = ExportServer::<TracesSignal> {
        otlp: otlp.clone(),
        max_decoding_message_size: limit,
        signal: PhantomData,
    };
    let logs = ExportServer::<LogsSignal> {
        otlp: otlp.clone(),
        max_decoding_message_size: limit,
        signal: PhantomData,
    };
    let metrics = ExportServer::<MetricsSignal> {
        otlp,
        max_decoding_message_size: limit,
        signal: PhantomData,
    };
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(refusal_codes))
        .layer(tower::util::MapRequestLayer::new(charge_calls(
            budget,
            limit,
            body_timeout,
        )))
        .add_service(traces)
        .add_service(logs)
        .add_service(metrics);
    match tls {
        Some(tls) => {
            tls.watch();
            let incoming = tally_tls::TlsListener::new(listener, tls)
                .map_err(ReceiverError::Http)?
                .into_incoming();
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
    .map_err(ReceiverError::Grpc)
}

/// `grpc-status` values rewritten by [`refusal_codes`].
const GRPC_OUT_OF_RANGE: &str = "11";
const GRPC_INTERNAL: &str = "13";
const GRPC_RESOURCE_EXHAUSTED: axum::http::HeaderValue = axum::http::HeaderValue::from_static("8");
const GRPC_INVALID_ARGUMENT: axum::http::HeaderValue = axum::http::HeaderValue::from_static("3");

/// Starts of the (percent-encoded) `grpc-message` of tonic's `INTERNAL` answers to a
/// request it could not decode: prost's decode error and a decompression error (the
/// decompression size limit is `RESOURCE_EXHAUSTED` already).
const UNDECODABLE_MESSAGES: [&[u8]; 2] = [
    b"failed%20to%20decode%20Protobuf%20message",
    b"Error%20decompressing",
];

/// Rewrites the codes of the trailers-only answers tonic gives before any handler runs
/// (Tally's handlers never answer `OUT_OF_RANGE` or `INTERNAL`):
/// - `OUT_OF_RANGE` for a frame longer than the limit → `RESOURCE_EXHAUSTED`, as gRPC
///   servers answer an oversize message;
/// - `INTERNAL` for a message that cannot be decoded or decompressed →
///   `INVALID_ARGUMENT`, the code of malformed OTLP (not retryable, as it should be).
fn refusal_codes<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    let Some(status) = headers.get("grpc-status") else {
        return response;
    };
    if status.as_bytes() == GRPC_OUT_OF_RANGE.as_bytes() {
        headers.insert("grpc-status", GRPC_RESOURCE_EXHAUSTED);
    } else if status.as_bytes() == GRPC_INTERNAL.as_bytes()
        && headers.get("grpc-message").is_some_and(|message| {
            UNDECODABLE_MESSAGES
                .iter()
                .any(|start| message.as_bytes().starts_with(start))
        })
    {
        headers.insert("grpc-status", GRPC_INVALID_ARGUMENT);
        if let Some(message) = headers.get("grpc-message") {
            let short = shorten_encoded(message.as_bytes());
            if let Ok(short) = axum::http::HeaderValue::from_bytes(&short) {
                headers.insert("grpc-message", short);
            }
        }
    }
    response
}

/// A percent-encoded `grpc-message` cut like [`crate::error::shorten`]: its start and
/// its end (where prost puts the reason), never inside a `%XX` escape.
fn shorten_encoded(message: &[u8]) -> Vec<u8> {
    let half = crate::error::MAX_MESSAGE / 2;
    if message.len() <= crate::error::MAX_MESSAGE {
        return message.to_vec();
    }
    let in_escape =
        |at: usize| (at >= 1 && message[at - 1] == b'%') || (at >= 2 && message[at - 2] == b'%');
    let mut head = half;
    while in_escape(head) {
        head -= 1;
    }
    let mut tail = message.len() - half;
    while tail < message.len() && in_escape(tail) {
        tail += 1;
    }
    [&message[..head], b"%20%E2%80%A6%20", &message[tail..]].concat()
}

#[cfg(test)]
mod tests;
