//! The in-flight bytes budget (`receivers.otlp.max_in_flight_bytes`): requests that
//! find it spent are refused at once with a retryable answer (HTTP 429 + Retry-After,
//! gRPC RESOURCE_EXHAUSTED + RetryInfo), over both transports, whatever the way the
//! size shows up (Content-Length, chunked upload, decompression, gRPC prefix, the
//! estimated size of the decoded request); the budget is given back once a request is
//! answered. A request whose decoded estimate alone exceeds the whole budget is refused
//! for good (HTTP 413, gRPC RESOURCE_EXHAUSTED without RetryInfo); ordinary requests of
//! 4 MiB fit the default budget.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::CompressionEncoding;
use tonic::Code;
use tonic_types::StatusExt;

const BUDGET: usize = 512 * 1024;

/// A request of about `bytes` bytes in protobuf.
fn sized_request(bytes: usize) -> ExportTraceServiceRequest {
    let mut big = span("sized");
    big.attributes
        .push(attr("pad", Value::StringValue("p".repeat(bytes))));
    traces(vec![big])
}

async fn start_with_budget() -> Running {
    let mut config = config();
    config.max_in_flight_bytes = BUDGET;
    config.http.max_request_body_size = 4 * BUDGET;
    config.grpc.max_recv_msg_size_mib = 2;
    start_with(config).await
}

async fn post(running: &Running, body: Vec<u8>, encoding: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(running.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    request.send().await.expect("post")
}

async fn assert_busy_http(response: reqwest::Response) {
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body = response.bytes().await.expect("body");
    let status = tonic_types::Status::decode(&body[..]).expect("google.rpc.Status");
    assert_eq!(status.code, Code::ResourceExhausted as i32);
    assert!(
        status.message.contains("max_in_flight_bytes"),
        "{}",
        status.message
    );
}

fn assert_busy_grpc(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("max_in_flight_bytes"), "{status}");
    let retry = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    assert_eq!(
        retry,
        Some(Duration::from_secs(1)),
        "RetryInfo makes it retryable"
    );
}

#[tokio::test]
async fn a_held_request_spends_the_budget_for_both_transports_until_answered() {
    let running = start_with_budget().await;
    let (entered, _release) = running.recorder.hold();
    // 200 KiB of wire plus the decoded copy of its string: ~400 KiB charged.
    let held_body = sized_request(200 * 1024).encode_to_vec();
    let url = running.url("/v1/traces");
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(held_body)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    entered
        .await
        .expect("the first request reaches the consumer");

    // 200 KiB more do not fit in 512 KiB: refused without reaching the consumer.
    let second = sized_request(200 * 1024).encode_to_vec();
    assert_busy_http(post(&running, second.clone(), None).await).await;
    let mut client = TraceServiceClient::connect(running.grpc_url())
        .await
        .expect("connect");
    let err = client
        .export(sized_request(200 * 1024))
        .await
        .expect_err("over the budget");
    assert_busy_grpc(&err);
    assert_eq!(running.recorder.calls(), 1);

    // Answering the held request gives its bytes back.
    running.recorder.open();
    assert_eq!(held.await.expect("join").expect("answer"), 200);
    assert_eq!(post(&running, second, None).await.status().as_u16(), 200);
    client
        .export(sized_request(200 * 1024))
        .await
        .expect("fits once the budget is back");
    assert_eq!(running.recorder.calls(), 3);
}

#[tokio::test]
async fn sizes_learnt_while_reading_are_charged_too() {
    let running = start_with_budget().await;
    let body = sized_request(600 * 1024).encode_to_vec();

    // Known upfront from Content-Length; over gRPC, charged as the bytes arrive.
    assert_busy_http(post(&running, body.clone(), None).await).await;
    let mut client = TraceServiceClient::connect(running.grpc_url())
        .await
        .expect("connect");
    assert_busy_grpc(
        &client
            .export(sized_request(600 * 1024))
            .await
            .expect_err("over the budget"),
    );

    // Learnt while decompressing: 600 KiB of text gzip to a few KiB.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&body).expect("gzip");
    let compressed = gzip.finish().expect("gzip");
    assert!(compressed.len() < BUDGET / 4);
    assert_busy_http(post(&running, compressed, Some("gzip")).await).await;
    let mut compressing = client.clone().send_compressed(CompressionEncoding::Gzip);
    // gRPC learns the decompressed size in the decoder, with the decoded estimate: more
    // than the whole budget, refused for good.
    assert_too_large_grpc(
        &compressing
            .export(sized_request(600 * 1024))
            .await
            .expect_err("over the budget once decompressed"),
    );

    // Learnt chunk by chunk: a chunked upload without Content-Length.
    let (status, response) = chunked_post(&running, &body).await;
    assert_eq!(status, 429, "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"));

    assert_eq!(running.recorder.calls(), 0, "nothing reached the consumer");
    // The budget is whole again: requests that fit pass, compressed or not.
    let fits = sized_request(200 * 1024);
    client.export(fits.clone()).await.expect("fits");
    compressing.export(fits.clone()).await.expect("fits");
    let (status, response) = chunked_post(&running, &fits.encode_to_vec()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(running.recorder.calls(), 3);
}

/// A span of `count` empty attributes: 2 bytes each on the wire, a whole `KeyValue`
/// (and its share of the `Vec`) decoded.
fn empty_attributes(count: usize) -> ExportTraceServiceRequest {
    let mut many = span("empty.attributes");
    many.attributes = vec![Default::default(); count];
    traces(vec![many])
}

/// The same as OTLP/JSON (`{"key":""}` per attribute).
fn empty_attributes_json(count: usize) -> Vec<u8> {
    let attributes = vec![r#"{"key":""}"#; count].join(",");
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b","spanId":"eeeeeeeeeeeeeeee","name":"empty","attributes":[{attributes}]}}]}}]}}]}}"#
    )
    .into_bytes()
}

async fn post_json(running: &Running, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(running.url("/v1/traces"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post")
}

fn assert_too_large_grpc(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("once decoded"), "{status}");
    assert!(status.message().contains("max_in_flight_bytes"), "{status}");
    assert!(
        status.get_details_retry_info().is_none(),
        "no RetryInfo: retrying cannot help"
    );
}

#[tokio::test]
async fn requests_are_charged_their_decoded_size_before_decoding() {
    let running = start_with_budget().await;
    let mut client = TraceServiceClient::connect(running.grpc_url())
        .await
        .expect("connect");

    // 100,000 empty attributes: 200 KB on the wire, ~8 MiB decoded, more than the whole
    // budget of 512 KiB: refused for good, over every transport and encoding.
    let huge = empty_attributes(100_000);
    let wire = huge.encode_to_vec();
    assert!(wire.len() < BUDGET / 2, "{} bytes", wire.len());
    let response = post(&running, wire.clone(), None).await;
    assert_eq!(response.status().as_u16(), 413);
    assert!(response.headers().get("retry-after").is_none());
    let body = response.bytes().await.expect("body");
    let status = tonic_types::Status::decode(&body[..]).expect("google.rpc.Status");
    assert_eq!(status.code, Code::ResourceExhausted as i32);
    assert!(
        status.message.contains("once decoded") && status.message.contains("max_in_flight_bytes"),
        "{}",
        status.message
    );
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&wire).expect("gzip");
    let compressed = gzip.finish().expect("gzip");
    let response = post(&running, compressed, Some("gzip")).await;
    let code = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    let status = tonic_types::Status::decode(&body[..]).expect("google.rpc.Status");
    assert_eq!(code, 413, "{}", status.message);
    // 20,000 in JSON: 220 KB, ~2 MiB decoded.
    let response = post_json(&running, empty_attributes_json(20_000)).await;
    assert_eq!(response.status().as_u16(), 413);
    let text = response.text().await.expect("body");
    assert!(text.contains("once decoded"), "{text}");
    assert_too_large_grpc(
        &client
            .export(huge.clone())
            .await
            .expect_err("too large once decoded"),
    );
    let mut compressing = client.clone().send_compressed(CompressionEncoding::Gzip);
    assert_too_large_grpc(
        &compressing
            .export(huge)
            .await
            .expect_err("too large once decoded"),
    );
    assert_eq!(running.recorder.calls(), 0, "nothing reached the consumer");

    // 3,000 empty attributes: 6 KB on the wire, ~200 KiB decoded: one fits, two do not.
    let (entered, _release) = running.recorder.hold();
    let held_body = empty_attributes(3_000).encode_to_vec();
    let url = running.url("/v1/traces");
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(held_body)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    entered
        .await
        .expect("the first request reaches the consumer");
    let second = empty_attributes(3_000);
    assert_busy_http(post(&running, second.encode_to_vec(), None).await).await;
    let response = post_json(&running, empty_attributes_json(3_000)).await;
    assert_eq!(response.status().as_u16(), 429);
    assert_busy_grpc(
        &client
            .export(second.clone())
            .await
            .expect_err("over the budget once decoded"),
    );
    assert_eq!(running.recorder.calls(), 1);
    running.recorder.open();
    assert_eq!(held.await.expect("join").expect("answer"), 200);
    client
        .export(second)
        .await
        .expect("fits once the budget is back");
    assert_eq!(
        post_json(&running, empty_attributes_json(3_000))
            .await
            .status()
            .as_u16(),
        200
    );
}

/// An ordinary activity span (number `n`): 15 string attributes like an instrumented
/// web app's.
fn ordinary_span(n: usize) -> opentelemetry_proto::tonic::trace::v1::Span {
    let mut ordinary = span(&format!("GET /api/v1/documents/{n}"));
    ordinary.span_id = (n as u64).to_be_bytes().to_vec();
    ordinary.parent_span_id = vec![0x11; 8];
    let text = |key: &str, value: String| attr(key, Value::StringValue(value));
    ordinary.attributes = vec![
        text("activity.action", "document.view".into()),
        text("enduser.id", format!("user-{}", n % 100_000)),
        text("tenant.id", format!("tenant-{}", n % 1_000)),
        text("session.id", format!("sess-{:x}", n / 7)),
        text("activity.resource.type", "document".into()),
        text("activity.resource.id", format!("doc-{}", n % 50_000)),
        text("user.email", format!("user{n}@example.com")),
        text(
            "client.address",
            format!("10.{}.{}.{}", n % 250, n % 200, n % 100),
        ),
        text("file.name", format!("report-{n}.pdf")),
        text(
            "user_agent.original",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0".into(),
        ),
        text("http.request.method", "GET".into()),
        text("url.path", format!("/api/v1/documents/{n}")),
        attr("http.response.status_code", Value::IntValue(200)),
        text("server.address", "app.example.com".into()),
        text("network.protocol.version", "1.1".into()),
    ];
    ordinary
}

#[tokio::test]
async fn four_mib_of_ordinary_spans_fit_the_default_budget() {
    let running = start().await;
    let mut spans = Vec::new();
    let mut request = traces(Vec::new());
    while request.encoded_len() < 4 * 1024 * 1024 {
        spans.extend((spans.len()..spans.len() + 500).map(ordinary_span));
        request = traces(spans.clone());
    }
    let body = request.encode_to_vec();
    let response = post(&running, body.clone(), None).await;
    assert_eq!(response.status().as_u16(), 200, "{} bytes", body.len());
    let mut client = TraceServiceClient::connect(running.grpc_url())
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX);
    client
        .export(request.clone())
        .await
        .expect("4 MiB over gRPC");
    // As JSON (about twice the size): fits too.
    let json = serde_json::to_vec(&request).expect("json");
    assert_eq!(post_json(&running, json).await.status().as_u16(), 200);
    assert_eq!(running.recorder.calls(), 3);
}

/// POSTs `body` with `Transfer-Encoding: chunked` (64 KiB chunks) over a raw
/// connection; returns the status and the response head.
async fn chunked_post(running: &Running, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(running.http)
        .await
        .expect("connect");
    let mut request = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        running.http
    )
    .into_bytes();
    for chunk in body.chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer before reading everything; a failed write is fine then.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    (status, head)
}

#[tokio::test]
async fn a_trickling_body_cannot_starve_a_fast_client() {
    let mut config = config();
    config.max_in_flight_bytes = BUDGET;
    config.http.max_request_body_size = 4 * BUDGET;
    config.body_read_timeout_ms = 1500;
    let running = start_with(config).await;

    // Four clients announce 400 KiB bodies (together three times the budget) and
    // send ten bytes of them.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(running.http)
            .await
            .expect("connect");
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}\r\n\r\n",
            running.http,
            400 * 1024
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream.write_all(&[0u8; 10]).await.expect("ten bytes");
        slow.push(stream);
    }

    // Meanwhile a client with a whole 200 KiB request is served, every time.
    let fast = sized_request(200 * 1024).encode_to_vec();
    for attempt in 0..5 {
        let status = post(&running, fast.clone(), None).await.status().as_u16();
        assert_eq!(status, 200, "fast request {attempt} while bodies trickle");
    }

    // The trickling clients are cut off at the deadline with 408.
    for mut stream in slow {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answered within the deadline")
            .expect("read");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert_eq!(running.recorder.calls(), 5);
}

/// A gRPC call that announces `length` bytes in its message prefix and sends ten of
/// them, its stream kept open; answers the response future and the send stream.
async fn trickling_grpc_call(
    running: &Running,
    length: u32,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(running.grpc)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("h2 ready");
    let request = axum::http::Request::post(format!(
        "http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        running.grpc
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    let mut start = vec![0u8];
    start.extend_from_slice(&length.to_be_bytes());
    start.extend_from_slice(&[0u8; 10]);
    send.send_data(bytes::Bytes::from(start), false)
        .expect("first bytes");
    (response, send, driver)
}

/// The gRPC status of an answer: the trailers' (or, for a trailers-only answer, the
/// headers') `grpc-status`, with its message.
async fn grpc_status(response: h2::client::ResponseFuture) -> (i32, String) {
    let response = response.await.expect("an answer");
    let header = |headers: &axum::http::HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(code) = header(response.headers(), "grpc-status") {
        let message = header(response.headers(), "grpc-message").unwrap_or_default();
        return (code.parse().unwrap_or(-1), message);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk;
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    let code = header(&trailers, "grpc-status").unwrap_or_default();
    let message = header(&trailers, "grpc-message").unwrap_or_default();
    (code.parse().unwrap_or(-1), message)
}

#[tokio::test]
async fn a_trickling_grpc_message_cannot_starve_a_fast_client() {
    let mut config = config();
    config.max_in_flight_bytes = BUDGET;
    config.grpc.max_recv_msg_size_mib = 2;
    config.body_read_timeout_ms = 1500;
    let running = start_with(config).await;

    // Four calls announce 400 KiB messages (together three times the budget) and send
    // ten bytes of them: what they hold is what they sent, not what they announced.
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(trickling_grpc_call(&running, 400 * 1024).await);
    }

    // Meanwhile a client with a whole 200 KiB request is served, every time.
    let mut client = TraceServiceClient::connect(running.grpc_url())
        .await
        .expect("connect");
    for attempt in 0..5 {
        client
            .export(sized_request(200 * 1024))
            .await
            .unwrap_or_else(|status| {
                panic!("fast call {attempt} while messages trickle: {status}")
            });
    }

    // The trickling calls are cut off at the deadline with DEADLINE_EXCEEDED.
    for (response, _send, driver) in slow {
        let (code, message) = tokio::time::timeout(Duration::from_secs(10), grpc_status(response))
            .await
            .expect("answered within the deadline");
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
        assert!(message.contains("body_read_timeout_ms"), "{message}");
        driver.abort();
    }
    assert_eq!(running.recorder.calls(), 5);
}
