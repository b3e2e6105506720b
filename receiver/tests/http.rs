//! OTLP/HTTP: protobuf and JSON, encodings, limits and the error table.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

struct Answer {
    status: StatusCode,
    content_type: String,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `google.rpc.Status` of a protobuf error answer.
    fn status_proto(&self) -> tonic_types::Status {
        assert_eq!(self.content_type, PROTOBUF);
        tonic_types::Status::decode(&self.body[..]).expect("google.rpc.Status body")
    }

    /// `(code, message)` of a JSON error answer.
    fn status_json(&self) -> (i64, String) {
        assert_eq!(self.content_type, JSON);
        let body = self.json();
        (
            body["code"].as_i64().expect("code"),
            body["message"].as_str().expect("message").to_owned(),
        )
    }
}

async fn post(
    running: &Running,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut request = reqwest::Client::new()
        .post(running.url(path))
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("request sent");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Answer {
        status: response.status(),
        content_type: header("content-type").unwrap_or_default(),
        retry_after: header("retry-after"),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// A typical OTLP/JSON trace request, as SDKs write it.
fn json_traces() -> serde_json::Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
            "scopeSpans": [{
                "scope": {"name": "manual"},
                "spans": [{
                    "traceId": "5b8efff798038103d269b633813fc60c",
                    "spanId": "eee19b7ec3c1b174",
                    "parentSpanId": "eee19b7ec3c1b173",
                    "name": "charge",
                    "kind": 2,
                    "startTimeUnixNano": "1544712660000000000",
                    "endTimeUnixNano": 1544712661000000000u64,
                    "attributes": [
                        {"key": "as_string", "value": {"intValue": "9007199254740993"}},
                        {"key": "as_number", "value": {"intValue": 42}},
                    ],
                    "status": {"code": 1}
                }]
            }]
        }]
    })
}

fn only_span(request: &ExportTraceServiceRequest) -> &opentelemetry_proto::tonic::trace::v1::Span {
    assert_eq!(request.resource_spans.len(), 1);
    &request.resource_spans[0].scope_spans[0].spans[0]
}

fn attr_value(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

#[tokio::test]
async fn protobuf_traces_and_logs() {
    let running = start().await;
    let request = traces(vec![span("a")]);
    let answer = post(
        &running,
        "/v1/traces",
        PROTOBUF,
        None,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, PROTOBUF);
    let response = ExportTraceServiceResponse::decode(&answer.body[..]).unwrap();
    assert_eq!(response.partial_success, None);
    assert_eq!(running.recorder.traces(), vec![request]);

    let request = logs(vec![log_record("hello")]);
    let answer = post(
        &running,
        "/v1/logs",
        PROTOBUF,
        None,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    ExportLogsServiceResponse::decode(&answer.body[..]).unwrap();
    assert_eq!(running.recorder.logs(), vec![request]);
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn json_traces_with_int64_as_string_and_number() {
    let running = start().await;
    let body = json_traces().to_string().into_bytes();
    let answer = post(
        &running,
        "/v1/traces",
        "application/json; charset=utf-8",
        None,
        body,
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.content_type, JSON);
    assert_eq!(answer.json(), json!({}));

    let got = running.recorder.traces();
    let span = only_span(&got[0]);
    assert_eq!(
        hex::encode(&span.trace_id),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(hex::encode(&span.span_id), "eee19b7ec3c1b174");
    assert_eq!(hex::encode(&span.parent_span_id), "eee19b7ec3c1b173");
    assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(
        attr_value(span, "as_string"),
        Some(Value::IntValue(9_007_199_254_740_993))
    );
    assert_eq!(attr_value(span, "as_number"), Some(Value::IntValue(42)));
    assert_eq!(
        got[0].resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes[0]
            .key,
        "service.name"
    );
}

#[tokio::test]
async fn json_logs_with_enum_names() {
    let running = start().await;
    let body = json!({
        "resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "timeUnixNano": "1700000000000000000",
            "severityNumber": "SEVERITY_NUMBER_INFO",
            "body": {"stringValue": "login"},
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174"
        }]}]}]
    });
    let answer = post(
        &running,
        "/v1/logs",
        JSON,
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let record = &running.recorder.logs()[0].resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_number, 9);
    assert_eq!(record.time_unix_nano, 1_700_000_000_000_000_000);

    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "kind": "SPAN_KIND_SERVER",
        "status": {"code": "STATUS_CODE_ERROR", "message": "boom"}
    }]}]}]});
    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let got = running.recorder.traces();
    let span = only_span(&got[0]);
    assert_eq!(span.kind, 2);
    assert_eq!(span.status.as_ref().unwrap().code, 2);
}

#[tokio::test]
async fn json_empty_array_and_kvlist_values() {
    let running = start().await;
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "attributes": [
            {"key": "tags", "value": {"arrayValue": {}}},
            {"key": "meta", "value": {"kvlistValue": {}}}
        ]
    }]}]}]});
    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let got = running.recorder.traces();
    let span = only_span(&got[0]);
    assert_eq!(
        attr_value(span, "tags"),
        Some(Value::ArrayValue(Default::default()))
    );
    assert_eq!(
        attr_value(span, "meta"),
        Some(Value::KvlistValue(Default::default()))
    );
}

#[tokio::test]
async fn gzip_and_zstd_bodies() {
    let running = start().await;
    let proto = traces(vec![span("p")]).encode_to_vec();
    let json = json_traces().to_string().into_bytes();
    for (content_type, body) in [(PROTOBUF, &proto), (JSON, &json)] {
        for (encoding, compressed) in [("gzip", gzip(body)), ("zstd", zstd(body))] {
            let answer = post(
                &running,
                "/v1/traces",
                content_type,
                Some(encoding),
                compressed,
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK, "{content_type} {encoding}");
        }
        let answer = post(
            &running,
            "/v1/traces",
            content_type,
            Some("identity"),
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{content_type} identity");
    }
    let got = running.recorder.traces();
    assert_eq!(got.len(), 6);
    assert_eq!(only_span(&got[0]).name, "p");
    assert_eq!(only_span(&got[4]).name, "charge");
}

#[tokio::test]
async fn undecodable_bodies_are_400_with_a_status_body() {
    let running = start().await;

    let mut truncated = traces(vec![span("a")]).encode_to_vec();
    truncated.truncate(truncated.len() - 5);
    let answer = post(&running, "/v1/traces", PROTOBUF, None, truncated).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let status = answer.status_proto();
    assert_eq!(status.code, 3);
    assert!(status.message.contains("protobuf"), "{}", status.message);

    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let (code, message) = answer.status_json();
    assert_eq!(code, 3);
    assert!(message.contains("JSON"), "{message}");

    let answer = post(
        &running,
        "/v1/logs",
        PROTOBUF,
        Some("gzip"),
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.status_proto().message.contains("gzip"));
    assert_eq!(running.recorder.calls(), 0);
}

#[tokio::test]
async fn bad_ids_are_400_naming_the_field() {
    let running = start().await;
    let mut bad = span("bad");
    bad.trace_id = vec![1; 15];
    let request = traces(vec![span("a"), span("b"), span("c"), bad]);
    let answer = post(
        &running,
        "/v1/traces",
        PROTOBUF,
        None,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.status_proto().message,
        "resourceSpans[0].scopeSpans[0].spans[3].traceId: 15 bytes, expected 16"
    );

    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc6", "spanId": "eee19b7ec3c1b174"
    }]}]}]});
    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let (_, message) = answer.status_json();
    assert_eq!(
        message,
        "resourceSpans[0].scopeSpans[0].spans[0].traceId: 15 bytes, expected 16"
    );
    assert_eq!(running.recorder.calls(), 0);
}

#[tokio::test]
async fn snake_case_keys_are_400_naming_the_key() {
    let running = start().await;
    let body = json!({"resource_spans": [{"scope_spans": [{"spans": [{"name": "x"}]}]}]});
    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let (code, message) = answer.status_json();
    assert_eq!(code, 3);
    assert!(message.contains("\"resource_spans\""), "{message}");

    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "trace_id": "5b8efff798038103d269b633813fc60c"
    }]}]}]});
    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let (_, message) = answer.status_json();
    assert!(message.contains("\"trace_id\""), "{message}");
    assert!(
        message.contains("resourceSpans[0].scopeSpans[0].spans[0]"),
        "{message}"
    );
    assert_eq!(running.recorder.calls(), 0);
}

#[tokio::test]
async fn unsupported_content_type_and_encoding_are_415() {
    let running = start().await;
    let body = traces(vec![span("a")]).encode_to_vec();
    let answer = post(&running, "/v1/traces", "text/plain", None, body.clone()).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(answer.status_json().1.contains("text/plain"));

    let answer = post(&running, "/v1/traces", PROTOBUF, Some("br"), body).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(answer.status_proto().message.contains("\"br\""));
    assert_eq!(running.recorder.calls(), 0);
}

#[tokio::test]
async fn wrong_method_is_405_and_unknown_path_404() {
    let running = start().await;
    let client = reqwest::Client::new();
    let response = client.get(running.url("/v1/traces")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = client.put(running.url("/v1/logs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let answer = post(&running, "/v1/profiles", PROTOBUF, None, Vec::new()).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn oversize_raw_body_is_413() {
    let mut config = config();
    config.http.max_request_body_size = 1 << 20;
    let running = start_with(config).await;
    let mut big = span("big");
    big.attributes
        .push(attr("pad", Value::StringValue("x".repeat(2 << 20))));
    let answer = post(
        &running,
        "/v1/traces",
        PROTOBUF,
        None,
        traces(vec![big]).encode_to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.status_proto().message.contains("limit"));
    assert_eq!(running.recorder.calls(), 0);
}

#[tokio::test]
async fn decompression_bomb_is_413() {
    // 100 MiB of zeros, gzipped (~100 KiB) and zstd-compressed (a few KiB), against the
    // default 20 MiB limit.
    let running = start().await;
    let zeros = vec![0u8; 100 << 20];
    for (encoding, bomb) in [("gzip", gzip(&zeros)), ("zstd", zstd(&zeros))] {
        assert!(
            bomb.len() < 1 << 20,
            "{encoding} bomb is {} bytes",
            bomb.len()
        );
        let answer = post(&running, "/v1/traces", PROTOBUF, Some(encoding), bomb).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{encoding}");
        let message = answer.status_proto().message;
        assert!(message.contains("20971520 bytes"), "{message}");
    }
    assert_eq!(running.recorder.calls(), 0);
}

#[tokio::test]
async fn consumer_backpressure_is_429_and_503_with_retry_after() {
    let running = start().await;
    let body = traces(vec![span("a")]).encode_to_vec();

    running
        .recorder
        .set(Behaviour::Unavailable(Duration::from_millis(2500)));
    let answer = post(&running, "/v1/traces", PROTOBUF, None, body.clone()).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.retry_after.as_deref(), Some("3"));
    assert!(answer.status_proto().message.contains("database down"));

    running
        .recorder
        .set(Behaviour::Overloaded(Duration::from_secs(5)));
    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        json_traces().to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.retry_after.as_deref(), Some("5"));
    assert!(answer.status_json().1.contains("overloaded"));

    running
        .recorder
        .set(Behaviour::Invalid("unknown tenant".into()));
    let answer = post(&running, "/v1/traces", PROTOBUF, None, body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.retry_after, None);
    assert_eq!(answer.status_proto().message, "unknown tenant");
}

#[tokio::test]
async fn partial_success_is_reported_in_both_formats() {
    let running = start().await;
    running.recorder.set(Behaviour::Partial {
        rejected: 1,
        message: "1 span quarantined".into(),
    });
    let request = traces(vec![span("a"), span("b")]);
    let answer = post(
        &running,
        "/v1/traces",
        PROTOBUF,
        None,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let partial = ExportTraceServiceResponse::decode(&answer.body[..])
        .unwrap()
        .partial_success
        .expect("partial_success");
    assert_eq!(partial.rejected_spans, 1);
    assert_eq!(partial.error_message, "1 span quarantined");

    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        json_traces().to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        answer.json(),
        json!({"partialSuccess": {"rejectedSpans": 1, "errorMessage": "1 span quarantined"}})
    );
    // The JSON answer reads back through the OTLP types.
    let decoded: ExportTraceServiceResponse = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(decoded.partial_success.unwrap().rejected_spans, 1);

    let request = logs(vec![log_record("x")]);
    let answer = post(
        &running,
        "/v1/logs",
        PROTOBUF,
        None,
        request.encode_to_vec(),
    )
    .await;
    let partial = ExportLogsServiceResponse::decode(&answer.body[..])
        .unwrap()
        .partial_success
        .unwrap();
    assert_eq!(partial.rejected_log_records, 1);
}

#[tokio::test]
async fn empty_requests_succeed_without_the_consumer() {
    let running = start().await;
    let answer = post(&running, "/v1/traces", PROTOBUF, None, Vec::new()).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = post(&running, "/v1/logs", JSON, None, b"{}".to_vec()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({}));
    let answer = post(
        &running,
        "/v1/traces",
        JSON,
        None,
        br#"{"resourceSpans":[{"scopeSpans":[]}]}"#.to_vec(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(running.recorder.calls(), 0);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut running = start().await;
    let (entered, release) = running.recorder.hold();
    let url = running.url("/v1/traces");
    let body = traces(vec![span("late")]).encode_to_vec();
    let call = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("content-type", PROTOBUF)
            .body(body)
            .send()
            .await
            .map(|r| r.status())
    });
    entered.await.expect("request reached the consumer");

    running.shutdown();
    wait_until_refused(running.http).await;
    release.notify_one();
    assert_eq!(call.await.unwrap().expect("answered"), StatusCode::OK);
    running.stop().await.expect("clean stop");
}

fn length_delimited(tag: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    prost::encoding::encode_varint(inner.len() as u64, &mut out);
    out.extend_from_slice(inner);
    out
}

#[tokio::test]
async fn deeply_nested_values_are_400_not_a_crash() {
    let running = start().await;

    // JSON: serde_json's recursion limit (128 levels) applies through the fix-ups.
    let mut value = r#"{"stringValue":"x"}"#.to_string();
    for _ in 0..5000 {
        value = format!(r#"{{"arrayValue":{{"values":[{value}]}}}}"#);
    }
    let body = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"attributes":[{{"key":"a","value":{value}}}]}}]}}]}}]}}"#
    );
    let answer = post(&running, "/v1/traces", JSON, None, body.into_bytes()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.status_json().1.contains("recursion limit"));

    // Protobuf: prost's recursion limit (100), on bytes built by hand so the client does not
    // recurse either.
    let mut value = vec![0x0a, 1, b'x']; // AnyValue { string_value: "x" }
    for _ in 0..5000 {
        // AnyValue { array_value (5): ArrayValue { values (1): [value] } }
        value = length_delimited(0x2a, &length_delimited(0x0a, &value));
    }
    let mut key_value = vec![0x0a, 1, b'a'];
    key_value.extend(length_delimited(0x12, &value));
    // request.resource_spans(1).scope_spans(2).spans(2).attributes(9)
    let body = length_delimited(
        0x0a,
        &length_delimited(
            0x12,
            &length_delimited(0x12, &length_delimited(0x4a, &key_value)),
        ),
    );
    let answer = post(&running, "/v1/traces", PROTOBUF, None, body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.status_proto().message.contains("recursion limit"));
    assert_eq!(running.recorder.calls(), 0);
}
