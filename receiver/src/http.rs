//! OTLP/HTTP on axum: `POST /v1/traces`, `POST /v1/logs` and `POST /v1/metrics`,
//! protobuf or JSON, identity,
//! gzip or zstd. Answers are encoded like the request: `Export*ServiceResponse` on success,
//! a `google.rpc.Status` on failure.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;
use tally_model::pipeline::{ConsumeError, ConsumeReport, Consumer, Sender};
use tokio::net::TcpListener;

use crate::auth::{Denied, IngestAuth};
use crate::budget::{Charge, InFlightBudget};
use crate::error::{retry_after_secs, shorten, Malformed, ReceiverError, RequestError};
use crate::limits::{decode_body, Encoding};
use crate::telemetry::{count_records, observe_duration, SignalKind, Transport};
use crate::{check, estimate, json, logs_response, metrics_response, trace_response, Admission};

/// Bodies up to this size are decoded on the async worker; larger ones on the blocking pool.
const INLINE_DECODE_MAX: usize = 64 * 1024;
/// The same for compressed bodies, which may expand up to the body limit.
const INLINE_DECOMPRESS_MAX: usize = 1024;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// gRPC status codes used in `google.rpc.Status` bodies.
const CODE_INVALID_ARGUMENT: i32 = 3;
const CODE_DEADLINE_EXCEEDED: i32 = 4;
const CODE_RESOURCE_EXHAUSTED: i32 = 8;
const CODE_UNAUTHENTICATED: i32 = 16;
const CODE_INTERNAL: i32 = 13;
const CODE_UNAVAILABLE: i32 = 14;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) consumer: Arc<dyn Consumer>,
    pub(crate) limit: usize,
    pub(crate) budget: InFlightBudget,
    /// `receivers.otlp.body_read_timeout_ms` (`None`: no deadline).
    pub(crate) body_timeout: Option<std::time::Duration>,
    pub(crate) auth: IngestAuth,
    /// `receivers.otlp.http.events_rate_limit` (REST ingest).
    pub(crate) events_limiter: crate::rest::EventsLimiter,
}

/// The OTLP/HTTP routes and REST ingest; other paths answer 404, other methods 405.
pub(crate) fn router(
    consumer: Arc<dyn Consumer>,
    max_request_body_size: usize,
    admission: Admission,
) -> Router {
    let Admission {
        budget,
        body_timeout,
        auth,
        events_limiter,
    } = admission;
    Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/logs", post(export::<Logs>))
        .route("/v1/metrics", post(export::<Metrics>))
        .route(
            crate::rest::PATH,
            post(crate::rest::ingest).options(crate::rest::preflight),
        )
        .with_state(AppState {
            consumer,
            limit: max_request_body_size,
            budget,
            body_timeout,
            auth,
            events_limiter,
        })
}

/// Serves OTLP/HTTP on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves, then drains in-flight requests.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tally_tls::Reloader>>,
    consumer: Arc<dyn Consumer>,
    max_request_body_size: usize,
    admission: Admission,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ReceiverError> {
    use axum::serve::ListenerExt;
    let app = router(consumer, max_request_body_size, admission);
    if let Some(tls) = tls {
        tls.watch();
        let listener = tally_tls::TlsListener::new(listener, tls).map_err(ReceiverError::Http)?;
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ReceiverError::Http);
    }
    let listener = listener.tap_io(|tcp| {
        // Best effort: small responses should not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ReceiverError::Http)
}

/// The wire format of a request, and so of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn from_headers(headers: &HeaderMap) -> Result<Format, RequestError> {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Err(RequestError::UnsupportedMediaType(format!(
                "missing Content-Type: expected {PROTOBUF} or {JSON}"
            )));
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let media_type = text.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case(PROTOBUF)
            || media_type.eq_ignore_ascii_case("application/protobuf")
        {
            Ok(Format::Protobuf)
        } else if media_type.eq_ignore_ascii_case(JSON) {
            Ok(Format::Json)
        } else {
            Err(RequestError::UnsupportedMediaType(format!(
                "unsupported Content-Type {text:?}: expected {PROTOBUF} or {JSON}"
            )))
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        })
    }
}

/// One OTLP signal as served over HTTP.
trait Signal: Send + 'static {
    /// Which records the requests carry (for the receiver's counters).
    const KIND: SignalKind;
    type Request: Message + Default + Send + 'static;
    type Response: Message + Send;

    fn decode_json(body: &[u8]) -> Result<Self::Request, Malformed>;
    /// The estimated size of a protobuf body once decoded ([`estimate`]).
    fn estimate_protobuf(body: &[u8]) -> usize;
    /// Checks the ids and counts the records.
    fn check(request: &Self::Request) -> Result<usize, Malformed>;
    fn consume(
        consumer: &dyn Consumer,
        request: Self::Request,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>>;
    fn response(report: ConsumeReport) -> Self::Response;
    fn response_json(report: &ConsumeReport) -> serde_json::Value;
}

struct Traces;

impl Signal for Traces {
    const KIND: SignalKind = SignalKind::Spans;
    type Request = ExportTraceServiceRequest;
    type Response = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

    fn decode_json(body: &[u8]) -> Result<Self::Request, Malformed> {
        json::decode_traces(body)
    }

    fn estimate_protobuf(body: &[u8]) -> usize {
        estimate::traces_protobuf(body)
    }

    fn check(request: &Self::Request) -> Result<usize, Malformed> {
        check::check_traces(request)
    }

    fn consume(
        consumer: &dyn Consumer,
        request: Self::Request,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        consumer.consume_traces(request, sender)
    }

    fn response(report: ConsumeReport) -> Self::Response {
        trace_response(report)
    }

    fn response_json(report: &ConsumeReport) -> serde_json::Value {
        partial_success_json(report, "rejectedSpans")
    }
}

struct Logs;

impl Signal for Logs {
    const KIND: SignalKind = SignalKind::LogRecords;
    type Request = ExportLogsServiceRequest;
    type Response = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;

    fn decode_json(body: &[u8]) -> Result<Self::Request, Malformed> {
        json::decode_logs(body)
    }

    fn estimate_protobuf(body: &[u8]) -> usize {
        estimate::logs_protobuf(body)
    }

    fn check(request: &Self::Request) -> Result<usize, Malformed> {
        check::check_logs(request)
    }

    fn consume(
        consumer: &dyn Consumer,
        request: Self::Request,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        consumer.consume_logs(request, sender)
    }

    fn response(report: ConsumeReport) -> Self::Response {
        logs_response(report)
    }

    fn response_json(report: &ConsumeReport) -> serde_json::Value {
        partial_success_json(report, "rejectedLogRecords")
    }
}

struct Metrics;

impl Signal for Metrics {
    const KIND: SignalKind = SignalKind::MetricPoints;
    type Request = ExportMetricsServiceRequest;
    type Response =
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;

    fn decode_json(body: &[u8]) -> Result<Self::Request, Malformed> {
        json::decode_metrics(body)
    }

    fn estimate_protobuf(body: &[u8]) -> usize {
        estimate::metrics_protobuf(body)
    }

    fn check(request: &Self::Request) -> Result<usize, Malformed> {
        check::check_metrics(request)
    }

    fn consume(
        consumer: &dyn Consumer,
        request: Self::Request,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        consumer.consume_metrics(request, sender)
    }

    fn response(report: ConsumeReport) -> Self::Response {
        metrics_response(report)
    }

    fn response_json(report: &ConsumeReport) -> serde_json::Value {
        partial_success_json(report, "rejectedDataPoints")
    }
}

/// `{}` or `{"partialSuccess": {"rejected…": n, "errorMessage": "…"}}`. The protobuf-JSON
/// mapping allows int64 as a number; the opentelemetry-proto serde types only read numbers.
fn partial_success_json(report: &ConsumeReport, rejected_key: &str) -> serde_json::Value {
    if report.rejected == 0 && report.message.is_empty() {
        return json!({});
    }
    json!({ "partialSuccess": { rejected_key: report.rejected, "errorMessage": report.message } })
}

async fn export<S: Signal>(State(state): State<AppState>, request: Request) -> Response {
    let format = match Format::from_headers(request.headers()) {
        Ok(format) => format,
        // No format to answer in: JSON is the readable one.
        Err(error) => return error_response(Format::Json, &error),
    };
    let started = Instant::now();
    let sender = match state.auth.check(request.headers()).await {
        Ok(sender) => sender,
        Err(denied) => {
            // Read (and drop) what the client sends so it gets the answer.
            discard(request.into_body().into_data_stream(), state.limit).await;
            let error = match denied {
                Denied::Unauthenticated(message) => RequestError::Unauthenticated(message),
                Denied::Unavailable(message) => RequestError::Consume(ConsumeError::Unavailable {
                    reason: message,
                    retry_after: crate::budget::BUSY_RETRY_AFTER,
                }),
            };
            return error_response(format, &error);
        }
    };
    let headers = request_headers(&request);
    let response = match handle::<S>(&state, format, request.into_body(), headers, sender).await {
        Ok(response) => response,
        Err(error) => error_response(format, &error),
    };
    observe_duration(Transport::Http, started);
    response
}

/// The headers `handle` needs, copied out before the request is taken apart.
#[derive(Debug)]
pub(crate) struct RequestHeaders {
    pub(crate) encoding: Result<Encoding, RequestError>,
    pub(crate) content_length: Option<u64>,
}

pub(crate) fn request_headers(request: &Request) -> RequestHeaders {
    let headers = request.headers();
    RequestHeaders {
        encoding: Encoding::parse(headers.get(CONTENT_ENCODING).map(HeaderValue::as_bytes)),
        content_length: headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
    }
}

async fn handle<S: Signal>(
    state: &AppState,
    format: Format,
    body: Body,
    headers: RequestHeaders,
    sender: Sender,
) -> Result<Response, RequestError> {
    let encoding = headers.encoding?;
    let limit = state.limit;
    let (body, mut charge) = receive_body(state, body, headers.content_length).await?;
    let inline_max = match encoding {
        Encoding::Identity => INLINE_DECODE_MAX,
        Encoding::Gzip | Encoding::Zstd => INLINE_DECOMPRESS_MAX,
    };
    let request = if body.len() <= inline_max {
        decode::<S>(format, encoding, body, limit, &mut charge)?
    } else {
        let (decoded, returned) = tokio::task::spawn_blocking(move || {
            let decoded = decode::<S>(format, encoding, body, limit, &mut charge);
            (decoded, charge)
        })
        .await
        .map_err(|e| RequestError::Internal(format!("decoding task failed: {e}")))?;
        charge = returned;
        decoded?
    };
    let records = S::check(&request).map_err(|e| RequestError::Invalid(e.0))?;
    let report = if records == 0 {
        ConsumeReport::default()
    } else {
        let result = S::consume(state.consumer.as_ref(), request, sender).await;
        count_records(S::KIND, Transport::Http, records as u64, result.is_ok());
        result?
    };
    let response = success_response::<S>(format, report);
    drop(charge);
    Ok(response)
}

/// Reads a request's body as every HTTP ingest route does: a body announced
/// larger than the request limit (`max_request_body_size`) is refused at once (413),
/// and the whole body must arrive within `receivers.otlp.body_read_timeout_ms`.
///
/// The returned charge is held until the answer is built: the body, its decoded
/// form and its queued records all count against the in-flight budget. The body
/// is charged as its bytes arrive, not as announced: a client trickling a large
/// body holds only what it has sent, and for at most the body deadline.
pub(crate) async fn receive_body(
    state: &AppState,
    body: Body,
    content_length: Option<u64>,
) -> Result<(Bytes, Charge), RequestError> {
    let limit = state.limit;
    if content_length.is_some_and(|len| len > limit as u64) {
        discard(body.into_data_stream(), limit).await;
        return Err(too_large(limit));
    }
    let mut charge = state.budget.charge();
    let reading = read_body(body, content_length, limit, &mut charge);
    let body = match state.body_timeout {
        Some(deadline) => tokio::time::timeout(deadline, reading)
            .await
            .map_err(|_| {
                RequestError::Timeout(format!(
                    "request body not received within {} ms \
                     (receivers.otlp.body_read_timeout_ms)",
                    deadline.as_millis()
                ))
            })??,
        None => reading.await?,
    };
    Ok((body, charge))
}

pub(crate) fn too_large(limit: usize) -> RequestError {
    RequestError::TooLarge(format!("request body exceeds the limit of {limit} bytes"))
}

/// Most of an oversize body read and thrown away before answering 413.
const DISCARD_MAX: usize = 64 * 1024 * 1024;
/// Longest time spent throwing an oversize body away.
const DISCARD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops what remains of a refused body (at most `limit` more bytes,
/// capped at [`DISCARD_MAX`], for at most [`DISCARD_DEADLINE`]), so the client is
/// not cut off mid-upload and reliably reads the 413 instead of a reset
/// connection. Nothing is buffered; a body larger still is cut off.
pub(crate) async fn discard(mut stream: axum::body::BodyDataStream, limit: usize) {
    let budget = limit.min(DISCARD_MAX);
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > budget {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_DEADLINE, drain).await;
}

/// Collects the body, refusing it as soon as it grows past `limit` (413) or past what
/// `charge` can grow to (429).
pub(crate) async fn read_body(
    body: Body,
    content_length: Option<u64>,
    limit: usize,
    charge: &mut Charge,
) -> Result<Bytes, RequestError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| RequestError::Invalid(format!("cannot read the request body: {e}")))?;
        let so_far = rest
            .as_ref()
            .map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len);
        if so_far + chunk.len() > limit {
            discard(stream, limit).await;
            return Err(too_large(limit));
        }
        if let Err(busy) = charge.ensure(so_far + chunk.len()) {
            discard(stream, limit).await;
            return Err(busy.into());
        }
        // One chunk is kept as is; a second starts a contiguous copy.
        match (&mut first, &mut rest) {
            (None, None) => first = Some(chunk),
            (Some(_), None) => {
                let hint = content_length.map_or(0, |len| len.min(limit as u64) as usize);
                let mut buf = BytesMut::with_capacity(hint.max(so_far + chunk.len()));
                if let Some(first) = first.take() {
                    buf.extend_from_slice(&first);
                }
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(first), None) => first,
        (None, None) => Bytes::new(),
    })
}

/// Decompresses (within the limit), grows `charge` to the decompressed size plus the
/// estimated size of the decoded request (refusing when it cannot: 413 when the request
/// alone exceeds the whole budget, 429 when the budget is spent for now) and decodes a
/// request body.
fn decode<S: Signal>(
    format: Format,
    encoding: Encoding,
    body: Bytes,
    limit: usize,
    charge: &mut Charge,
) -> Result<S::Request, RequestError> {
    let body = decode_body(encoding, body, limit, charge)?;
    let decoded = match format {
        Format::Protobuf => S::estimate_protobuf(&body),
        Format::Json => estimate::json(&body),
    };
    charge.ensure_decoded(body.len(), decoded)?;
    match format {
        Format::Protobuf => S::Request::decode(body)
            .map_err(|e| RequestError::Invalid(shorten(format!("invalid OTLP protobuf: {e}")))),
        Format::Json => S::decode_json(&body).map_err(|e| RequestError::Invalid(shorten(e.0))),
    }
}

fn success_response<S: Signal>(format: Format, report: ConsumeReport) -> Response {
    let body = match format {
        Format::Protobuf => S::response(report).encode_to_vec(),
        Format::Json => S::response_json(&report).to_string().into_bytes(),
    };
    (
        StatusCode::OK,
        [(CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

fn error_response(format: Format, error: &RequestError) -> Response {
    let (status, code) = match error {
        RequestError::Invalid(_) => (StatusCode::BAD_REQUEST, CODE_INVALID_ARGUMENT),
        RequestError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, CODE_UNAUTHENTICATED),
        RequestError::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, CODE_INVALID_ARGUMENT)
        }
        RequestError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, CODE_RESOURCE_EXHAUSTED),
        RequestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, CODE_INTERNAL),
        RequestError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, CODE_DEADLINE_EXCEEDED),
        RequestError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, CODE_RESOURCE_EXHAUSTED),
        RequestError::Consume(ConsumeError::Overloaded { .. }) => {
            (StatusCode::TOO_MANY_REQUESTS, CODE_RESOURCE_EXHAUSTED)
        }
        RequestError::Consume(ConsumeError::Unavailable { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, CODE_UNAVAILABLE)
        }
        RequestError::Consume(ConsumeError::Invalid(_)) => {
            (StatusCode::BAD_REQUEST, CODE_INVALID_ARGUMENT)
        }
    };
    let message = error.message();
    tracing::debug!(%status, %message, "OTLP/HTTP request refused");
    let body = match format {
        Format::Protobuf => tonic_types::Status {
            code,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
        Format::Json => json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
    };
    let mut response = (status, [(CONTENT_TYPE, format.content_type())], body).into_response();
    if matches!(error, RequestError::Unauthenticated(_)) {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    if let Some(delay) = error.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(delay)));
    }
    response
}
