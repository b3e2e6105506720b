//! Hostile input against the real `tally` binary and a real PostgreSQL: values nested
//! 10,000 levels deep, a million attributes in one record (refused: too large once
//! decoded), 20 MiB of empty attributes, invalid UTF-8, NaN and
//! infinities, huge and wrong-length ids; over OTLP/HTTP protobuf, OTLP/JSON and gRPC.
//!
//! Each is refused with a non-retryable answer naming the problem (HTTP 400/413, gRPC
//! `INVALID_ARGUMENT`/`RESOURCE_EXHAUSTED`) or stored, never a crash, a hang, a write
//! failure clients would retry forever, or unbounded memory: after each group Tally still
//! answers `/readyz` 200, acknowledges and stores a normal export, and its peak resident
//! set (`VmHWM`) stays within a stated bound.

mod common;

use common::{Tally, TallyOptions, TestDatabase};
use prost::bytes::{Buf, BufMut};
use prost::Message;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// The default body limit (20 MiB), as DESIGN.md states it.
const BODY_LIMIT: usize = 20 * 1024 * 1024;
const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    attr(key, any_value::Value::StringValue(value.into()))
}

/// A span with `activity.action = action` and `extra` attributes.
fn span(action: &str, extra: Vec<KeyValue>) -> Span {
    let now = now_nanos();
    let mut attributes = vec![
        text("activity.action", action),
        text("tenant.id", "t-hostile"),
    ];
    attributes.extend(extra);
    Span {
        trace_id: vec![0x11; 16],
        span_id: now.to_be_bytes().to_vec(),
        name: "hostile".into(),
        start_time_unix_nano: now,
        end_time_unix_nano: now,
        attributes,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

// ---- hand-written protobuf, for shapes too deep to build as values -------------------

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field `field` holding `body`.
fn field(field: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    varint(&mut out, (u64::from(field) << 3) | 2);
    varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

/// The encoding of an `AnyValue` nested `levels` deep: `kvlistValue` (field 6) of one
/// `KeyValue{key: "k", value: …}` per level, or `arrayValue` (field 5) of one value per
/// level; a string at the bottom.
fn nested_any_value(levels: usize, kvlist: bool) -> Vec<u8> {
    let mut value = field(1, b"bottom"); // AnyValue.string_value
    for _ in 0..levels {
        value = if kvlist {
            let mut key_value = field(1, b"k");
            key_value.extend(field(2, &value));
            field(6, &field(1, &key_value))
        } else {
            field(5, &field(1, &value))
        };
    }
    value
}

/// An `ExportTraceServiceRequest` with one span of `action` carrying the already
/// encoded `AnyValue` under the attribute `nested`.
fn request_with_raw_value(action: &str, any_value: &[u8]) -> Vec<u8> {
    let mut span_bytes = span(action, Vec::new()).encode_to_vec();
    let mut key_value = field(1, b"nested");
    key_value.extend(field(2, any_value));
    span_bytes.extend(field(9, &key_value)); // Span.attributes
    let scope_spans = field(2, &span_bytes); // ScopeSpans.spans
    let resource_spans = field(2, &scope_spans); // ResourceSpans.scope_spans
    field(1, &resource_spans) // ExportTraceServiceRequest.resource_spans
}

/// OTLP/JSON of one span of `action` whose attribute `nested` is `value` (JSON text).
fn json_with_value(action: &str, value: &str) -> Vec<u8> {
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{}","spanId":"{:016x}",
        "name":"hostile","startTimeUnixNano":"{}","attributes":[
        {{"key":"activity.action","value":{{"stringValue":"{action}"}}}},
        {{"key":"tenant.id","value":{{"stringValue":"t-hostile"}}}},
        {{"key":"nested","value":{value}}}]}}]}}]}}]}}"#,
        "11".repeat(16),
        now_nanos(),
        now_nanos()
    )
    .into_bytes()
}

/// JSON text of an `AnyValue` nested `levels` deep.
fn nested_json(levels: usize, kvlist: bool) -> String {
    let (open, close) = if kvlist {
        (r#"{"kvlistValue":{"values":[{"key":"k","value":"#, "}]}}")
    } else {
        (r#"{"arrayValue":{"values":["#, "]}}")
    };
    let mut out = String::with_capacity(levels * (open.len() + close.len()) + 32);
    for _ in 0..levels {
        out.push_str(open);
    }
    out.push_str(r#"{"stringValue":"bottom"}"#);
    for _ in 0..levels {
        out.push_str(close);
    }
    out
}

// ---- clients ---------------------------------------------------------------------------

struct Reply {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<String>,
}

impl Reply {
    /// The message of the `google.rpc.Status` body (protobuf or JSON).
    fn message(&self) -> String {
        #[derive(Clone, PartialEq, prost::Message)]
        struct RpcStatus {
            #[prost(int32, tag = "1")]
            code: i32,
            #[prost(string, tag = "2")]
            message: String,
        }
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            return json["message"].as_str().unwrap_or_default().to_string();
        }
        RpcStatus::decode(&self.body[..])
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Reply {
        status,
        body,
        retry_after,
    }
}

/// A gRPC codec that sends already encoded messages as they are (so the test can send
/// what no generated client would) and returns the raw answer.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Sends `message` (an encoded `ExportTraceServiceRequest`, valid or not) over gRPC.
async fn grpc_export(tally: &Tally, message: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(tally.grpc_url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(message),
        tonic::codegen::http::uri::PathAndQuery::from_static(TRACES_PATH),
        RawCodec,
    )
    .await
    .map(|_| ())
}

// ---- checks ----------------------------------------------------------------------------

/// Number of stored activity events of `action`.
async fn stored(database: &TestDatabase, action: &str) -> i64 {
    let client = database.client().await;
    client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE action = $1",
            &[&action],
        )
        .await
        .expect("count")
        .get(0)
}

/// The stored attributes of the one event of `action`.
async fn stored_attributes(database: &TestDatabase, action: &str) -> serde_json::Value {
    let client = database.client().await;
    let text: String = client
        .query_one(
            "SELECT attributes::text FROM activity_events WHERE action = $1",
            &[&action],
        )
        .await
        .expect("one stored event")
        .get(0);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{action}: {e}: {text:.2000}"))
}

/// `/readyz` answers 200 and a normal export (HTTP and gRPC) is acknowledged and stored.
async fn still_healthy(tally: &Tally, database: &TestDatabase, after: &str) {
    let (status, body) = common::get_json(&tally.api_url("/readyz"), None).await;
    assert_eq!(status, 200, "readyz after {after}: {body}");
    let action = format!("healthy.after.{after}");
    let reply = post(
        &tally.http_url("/v1/traces"),
        PROTOBUF,
        request(vec![span(&action, Vec::new())]).encode_to_vec(),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "normal export after {after}: {}",
        reply.message()
    );
    let grpc_action = format!("{action}.grpc");
    grpc_export(
        tally,
        request(vec![span(&grpc_action, Vec::new())]).encode_to_vec(),
    )
    .await
    .unwrap_or_else(|status| panic!("normal gRPC export after {after}: {status}"));
    // Acknowledged means committed: both rows are there at once.
    assert_eq!(stored(database, &action).await, 1, "after {after}");
    assert_eq!(stored(database, &grpc_action).await, 1, "after {after}");
}

/// Peak resident set of the Tally process, in MiB.
fn peak_mib(tally: &Tally) -> u64 {
    tally.memory_kib("VmHWM").expect("VmHWM") / 1024
}

fn assert_refused_http(reply: &Reply, status: u16, needle: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.message());
    assert!(reply.retry_after.is_none(), "{what}: not retryable");
    let message = reply.message();
    assert!(
        message.contains(needle),
        "{what}: {message:?} names {needle:?}"
    );
    assert!(message.len() < 1024, "{what}: a short message, not an echo");
}

fn assert_refused_grpc(result: Result<(), tonic::Status>, code: Code, needle: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status}");
    assert!(
        status.message().contains(needle),
        "{what}: {:?} names {needle:?}",
        status.message()
    );
    assert!(status.message().len() < 1024, "{what}: a short message");
}

async fn launch(database: &TestDatabase) -> Tally {
    Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        ..Default::default()
    })
    .await
}

// ---- tests -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_nested_ten_thousand_levels_are_refused_on_every_transport() {
    let database = TestDatabase::create().await;
    let tally = launch(&database).await;
    let traces = tally.http_url("/v1/traces");
    let baseline = peak_mib(&tally);

    for kvlist in [true, false] {
        let shape = if kvlist { "kvlist" } else { "array" };
        let action = format!("nested.{shape}");
        // Protobuf: prost stops at its recursion limit (100).
        let body = request_with_raw_value(&action, &nested_any_value(10_000, kvlist));
        let reply = post(&traces, PROTOBUF, body.clone()).await;
        assert_refused_http(&reply, 400, "recursion limit", &format!("HTTP {shape}"));
        assert_refused_grpc(
            grpc_export(&tally, body).await,
            Code::InvalidArgument,
            "recursion limit",
            &format!("gRPC {shape}"),
        );
        // JSON: serde_json stops at its recursion limit (128), both for a body decoded
        // on the async worker (< 64 KiB) and on the blocking pool.
        for levels in [200, 10_000] {
            let reply = post(
                &traces,
                JSON,
                json_with_value(&action, &nested_json(levels, kvlist)),
            )
            .await;
            assert_refused_http(
                &reply,
                400,
                "recursion limit",
                &format!("JSON {shape} {levels}"),
            );
        }
        assert_eq!(stored(&database, &action).await, 0);

        // Nesting within the decoders' limits (a kvlist level is 3 protobuf messages and
        // 4 JSON containers deep) is stored, cut at processors.redact.max_depth (8).
        let action = format!("nested.{shape}.deep");
        let body = request_with_raw_value(&action, &nested_any_value(25, kvlist));
        let reply = post(&traces, PROTOBUF, body.clone()).await;
        assert_eq!(reply.status, 200, "25 levels: {}", reply.message());
        let grpc_action = format!("{action}.grpc");
        grpc_export(
            &tally,
            request_with_raw_value(&grpc_action, &nested_any_value(25, kvlist)),
        )
        .await
        .expect("25 levels over gRPC");
        let json_action = format!("{action}.json");
        let reply = post(
            &traces,
            JSON,
            json_with_value(&json_action, &nested_json(25, kvlist)),
        )
        .await;
        assert_eq!(reply.status, 200, "25 levels of JSON: {}", reply.message());
        for action in [&action, &grpc_action, &json_action] {
            let attributes = stored_attributes(&database, action).await;
            let text = attributes["nested"].to_string();
            assert!(text.contains("[REDACTED:depth]"), "{action}: {text:.300}");
            assert!(!text.contains("bottom"), "{action}: cut above the bottom");
        }
        still_healthy(&tally, &database, &format!("nested.{shape}")).await;
    }
    let peak = peak_mib(&tally);
    println!("nested: VmHWM {baseline} MiB at start, {peak} MiB after");
    assert!(
        peak < baseline + 256,
        "VmHWM {peak} MiB (baseline {baseline} MiB)"
    );
}

/// Encoded size of one attribute `a{i}` = int `i` in a `Span`.
fn attributes(count: usize) -> Vec<KeyValue> {
    (0..count)
        .map(|i| attr(&format!("a{i}"), any_value::Value::IntValue(i as i64)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_attributes_are_charged_their_decoded_size_and_capped_when_stored() {
    let database = TestDatabase::create().await;
    let tally = launch(&database).await;
    let traces = tally.http_url("/v1/traces");
    let baseline = peak_mib(&tally);

    // One record with 1,000,000 attributes: ~16.9 MB of protobuf, within the 20 MiB body
    // limit, but ~90 MB once decoded (a 64-byte `KeyValue` each, in a `Vec` of 2^20,
    // plus the keys): more than the default in-flight budget of 64 MiB, so refused for
    // good before decoding (413 / RESOURCE_EXHAUSTED without RetryInfo).
    let million = request(vec![span("many.attributes", attributes(1_000_000))]).encode_to_vec();
    println!("1,000,000 attributes: {} bytes of protobuf", million.len());
    assert!(million.len() < BODY_LIMIT);
    let reply = post(&traces, PROTOBUF, million.clone()).await;
    assert_refused_http(
        &reply,
        413,
        "max_in_flight_bytes",
        "1,000,000 attributes over HTTP",
    );
    assert!(
        reply.message().contains("once decoded"),
        "{}",
        reply.message()
    );
    assert_refused_grpc(
        grpc_export(&tally, million).await,
        Code::ResourceExhausted,
        "max_in_flight_bytes",
        "1,000,000 attributes over gRPC",
    );
    assert_eq!(stored(&database, "many.attributes").await, 0);

    // 300,000 (~5 MB, ~40 MB charged) fit: stored, with the attributes over
    // processors.redact.max_record_attributes_bytes (16 KiB) dropped.
    let body = request(vec![span("many.attributes", attributes(300_000))]).encode_to_vec();
    println!("300,000 attributes: {} bytes of protobuf", body.len());
    let reply = post(&traces, PROTOBUF, body).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let stored_attrs = stored_attributes(&database, "many.attributes").await;
    let kept = stored_attrs.as_object().map_or(0, |m| m.len());
    assert!(kept > 100 && kept < 5_000, "{kept} attributes kept");
    assert!(stored_attrs.to_string().len() < 64 * 1024);
    let after_http = peak_mib(&tally);
    assert!(
        after_http < baseline + 256,
        "VmHWM {after_http} MiB after 300,000 attributes (baseline {baseline} MiB)"
    );

    let grpc_body =
        request(vec![span("many.attributes.grpc", attributes(300_000))]).encode_to_vec();
    grpc_export(&tally, grpc_body)
        .await
        .expect("300,000 attributes over gRPC");
    assert_eq!(stored(&database, "many.attributes.grpc").await, 1);

    // OTLP/JSON spends ~45 bytes an attribute: 300,000 (~13 MB) fit the body limit and
    // the budget (charged ~45 MB).
    let mut json_attrs = String::with_capacity(20 * 1024 * 1024);
    for i in 0..300_000 {
        if i > 0 {
            json_attrs.push(',');
        }
        json_attrs.push_str(&format!(r#"{{"key":"a{i}","value":{{"intValue":"{i}"}}}}"#));
    }
    let json = json_with_value("many.attributes.json", r#"{"stringValue":"x"}"#);
    let json = String::from_utf8(json).expect("utf-8");
    let json = json.replacen(
        r#"{"key":"nested""#,
        &format!(r#"{json_attrs},{{"key":"nested""#),
        1,
    );
    println!("300,000 attributes: {} bytes of JSON", json.len());
    assert!(json.len() < BODY_LIMIT);
    let reply = post(&traces, JSON, json.into_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    assert_eq!(stored(&database, "many.attributes.json").await, 1);

    // 1,270,000 attributes (~21.4 MB) are over the body limit: 413 / RESOURCE_EXHAUSTED.
    // (Just over it: Tally reads and drops at most one limit's worth of a refused body
    // before it answers, so a client of a much larger body may see the connection cut.)
    let too_many =
        request(vec![span("too.many.attributes", attributes(1_270_000))]).encode_to_vec();
    assert!(too_many.len() > BODY_LIMIT);
    let reply = post(&traces, PROTOBUF, too_many.clone()).await;
    assert_refused_http(&reply, 413, "limit", "1,270,000 attributes over HTTP");
    assert_refused_grpc(
        grpc_export(&tally, too_many).await,
        Code::ResourceExhausted,
        "too large",
        "1,270,000 attributes over gRPC",
    );
    assert_eq!(stored(&database, "too.many.attributes").await, 0);

    // The worst case of the body limit: 20 MiB of empty attributes (2 bytes each on the
    // wire, ~1 GiB decoded; before the decoded size was charged this peaked at 1.2 GiB
    // VmHWM). Refused before decoding, over HTTP and gRPC.
    let mut empty = span("empty.attributes", Vec::new()).encode_to_vec();
    let room = BODY_LIMIT - empty.len() - 64;
    empty.extend(std::iter::repeat_n([0x4a_u8, 0x00], room / 2).flatten());
    let body = field(1, &field(2, &field(2, &empty)));
    assert!(body.len() <= BODY_LIMIT);
    let reply = post(&traces, PROTOBUF, body.clone()).await;
    assert_refused_http(
        &reply,
        413,
        "once decoded",
        "20 MiB of empty attributes over HTTP",
    );
    assert_refused_grpc(
        grpc_export(&tally, body).await,
        Code::ResourceExhausted,
        "once decoded",
        "20 MiB of empty attributes over gRPC",
    );
    assert_eq!(stored(&database, "empty.attributes").await, 0);

    still_healthy(&tally, &database, "many.attributes").await;
    let peak = peak_mib(&tally);
    println!(
        "many attributes: VmHWM {baseline} MiB at start, {after_http} MiB after 300,000 \
         over HTTP, {peak} MiB at the end"
    );
    // Every request is charged its wire bytes plus its estimated decoded size, so the
    // decoded requests in memory stay within the budget (64 MiB) plus the pipeline's
    // copies of the records (capped) and the allocator's slack.
    assert!(
        peak < baseline + 256,
        "VmHWM {peak} MiB (baseline {baseline} MiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_non_finite_numbers_and_bad_ids() {
    let database = TestDatabase::create().await;
    let tally = launch(&database).await;
    let traces = tally.http_url("/v1/traces");
    let baseline = peak_mib(&tally);

    // Invalid UTF-8 in a protobuf string field: prost refuses it.
    let mut body =
        request(vec![span("bad.utf8", vec![text("city", "PLACEHOLDER")])]).encode_to_vec();
    let at = body
        .windows(11)
        .position(|w| w == b"PLACEHOLDER")
        .expect("placeholder");
    body[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xc0, 0x80]);
    let reply = post(&traces, PROTOBUF, body.clone()).await;
    assert_refused_http(&reply, 400, "UTF-8", "invalid UTF-8 over HTTP");
    assert_refused_grpc(
        grpc_export(&tally, body).await,
        Code::InvalidArgument,
        "UTF-8",
        "invalid UTF-8 over gRPC",
    );
    // … and in JSON: raw invalid bytes, and an escaped lone surrogate.
    let mut json = json_with_value("bad.utf8", r#"{"stringValue":"PLACEHOLDER"}"#);
    let at = json
        .windows(11)
        .position(|w| w == b"PLACEHOLDER")
        .expect("placeholder");
    json[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let reply = post(&traces, JSON, json).await;
    assert_refused_http(&reply, 400, "invalid OTLP/JSON", "invalid UTF-8 in JSON");
    let reply = post(
        &traces,
        JSON,
        json_with_value("bad.utf8", r#"{"stringValue":"\ud800"}"#),
    )
    .await;
    assert_refused_http(&reply, 400, "invalid OTLP/JSON", "lone surrogate in JSON");
    assert_eq!(stored(&database, "bad.utf8").await, 0);
    still_healthy(&tally, &database, "utf8").await;

    // NaN and infinities as protobuf doubleValue: stored, as the strings "NaN", "inf",
    // "-inf" (jsonb has no such numbers), also as token counts (ignored there).
    let double = any_value::Value::DoubleValue;
    let non_finite = vec![
        attr("x.nan", double(f64::NAN)),
        attr("x.inf", double(f64::INFINITY)),
        attr("x.neg_inf", double(f64::NEG_INFINITY)),
        attr("x.max", double(f64::MAX)),
        attr("gen_ai.usage.input_tokens", double(f64::INFINITY)),
        attr("gen_ai.usage.output_tokens", double(f64::NAN)),
        attr(
            "gen_ai.request.model",
            any_value::Value::StringValue("gpt-4o".into()),
        ),
    ];
    let body = request(vec![span("non.finite", non_finite.clone())]).encode_to_vec();
    let reply = post(&traces, PROTOBUF, body).await;
    assert_eq!(reply.status, 200, "NaN over HTTP: {}", reply.message());
    grpc_export(
        &tally,
        request(vec![span("non.finite.grpc", non_finite)]).encode_to_vec(),
    )
    .await
    .expect("NaN over gRPC");
    for action in ["non.finite", "non.finite.grpc"] {
        let attributes = stored_attributes(&database, action).await;
        assert_eq!(attributes["x.nan"], "NaN", "{attributes}");
        assert_eq!(attributes["x.inf"], "inf", "{attributes}");
        assert_eq!(attributes["x.neg_inf"], "-inf", "{attributes}");
        // Near the double's maximum PostgreSQL's plain digits would not read back.
        assert_eq!(
            attributes["x.max"], "1.7976931348623157e308",
            "{attributes}"
        );
    }
    // In JSON: proto3 JSON writes NaN and the infinities as the strings "NaN",
    // "Infinity", "-Infinity": stored exactly as the protobuf path stores them. A bare NaN
    // literal is not JSON and 1e999 is not a double: refused with the attribute's path,
    // never stored half-way.
    for (value, stored_as, name) in [
        (r#""NaN""#, "NaN", "nan"),
        (r#""Infinity""#, "inf", "infinity"),
        (r#""-Infinity""#, "-inf", "neg_infinity"),
    ] {
        let action = format!("non.finite.json.{name}");
        let body = json_with_value(&action, &format!(r#"{{"doubleValue":{value}}}"#));
        let reply = post(&traces, JSON, body).await;
        assert_eq!(reply.status, 200, "{value} in JSON: {}", reply.message());
        let attributes = stored_attributes(&database, &action).await;
        assert_eq!(attributes["nested"], stored_as, "{value}: {attributes}");
    }
    for (value, name) in [
        ("NaN", "nan literal"),
        ("1e999", "huge"),
        ("-1e999", "negative huge"),
        (r#""inf""#, "rust inf spelling"),
    ] {
        let action = format!("non.finite.json.bad.{}", name.replace(' ', "_"));
        let body = json_with_value(&action, &format!(r#"{{"doubleValue":{value}}}"#));
        let reply = post(&traces, JSON, body).await;
        assert_refused_http(&reply, 400, "invalid OTLP/JSON", name);
        assert_eq!(stored(&database, &action).await, 0);
    }
    still_healthy(&tally, &database, "non.finite").await;

    // Huge and wrong-length ids: 400 / INVALID_ARGUMENT naming the field and its length,
    // without echoing the id.
    let mut huge = span("huge.id", Vec::new());
    huge.trace_id = vec![0xab; 1024 * 1024];
    let body = request(vec![huge]).encode_to_vec();
    let reply = post(&traces, PROTOBUF, body.clone()).await;
    assert_refused_http(
        &reply,
        400,
        "traceId: 1048576 bytes, expected 16",
        "1 MB trace id",
    );
    assert_refused_grpc(
        grpc_export(&tally, body).await,
        Code::InvalidArgument,
        "traceId: 1048576 bytes, expected 16",
        "1 MB trace id over gRPC",
    );
    let json = String::from_utf8(json_with_value("huge.id", r#"{"stringValue":"x"}"#))
        .expect("utf-8")
        .replacen(&"11".repeat(16), &"ab".repeat(1024 * 1024), 1);
    let reply = post(&traces, JSON, json.into_bytes()).await;
    assert_refused_http(
        &reply,
        400,
        "traceId: 1048576 bytes, expected 16",
        "1 MB trace id in JSON",
    );
    let mut wrong = span("huge.id", Vec::new());
    wrong.span_id = vec![1; 9];
    let body = request(vec![wrong]).encode_to_vec();
    let reply = post(&traces, PROTOBUF, body.clone()).await;
    assert_refused_http(&reply, 400, "spanId: 9 bytes, expected 8", "9-byte span id");
    assert_refused_grpc(
        grpc_export(&tally, body).await,
        Code::InvalidArgument,
        "spanId: 9 bytes, expected 8",
        "9-byte span id over gRPC",
    );
    let json = String::from_utf8(json_with_value("huge.id", r#"{"stringValue":"x"}"#))
        .expect("utf-8")
        .replacen(
            r#""traceId":"#,
            r#""parentSpanId":"0102030405","traceId":"#,
            1,
        );
    let reply = post(&traces, JSON, json.into_bytes()).await;
    assert_refused_http(
        &reply,
        400,
        "parentSpanId: 5 bytes, expected 8",
        "5-byte parent in JSON",
    );
    // An odd-length hex id in JSON.
    let json = String::from_utf8(json_with_value("huge.id", r#"{"stringValue":"x"}"#))
        .expect("utf-8")
        .replacen(&"11".repeat(16), "abc", 1);
    let reply = post(&traces, JSON, json.into_bytes()).await;
    assert_refused_http(&reply, 400, "traceId", "odd-length hex id in JSON");
    assert_eq!(stored(&database, "huge.id").await, 0);
    still_healthy(&tally, &database, "huge.ids").await;

    let peak = peak_mib(&tally);
    println!("utf8/non-finite/ids: VmHWM {baseline} MiB at start, {peak} MiB after");
    assert!(
        peak < baseline + 256,
        "VmHWM {peak} MiB (baseline {baseline} MiB)"
    );
}
