//! Differential conformance: one OTLP request is one request whatever its transport.
//!
//! Property-based: valid trace and log requests are generated (every `AnyValue` kind, NaN
//! and ±Infinity, empty and nested arrays and kvlists, 64-bit integers at the edges,
//! unicode, ids present, absent, upper- and lowercase, identity and token attributes,
//! well-formed and malformed actions) and each is sent to three Tally processes, each on
//! its own database and with the same redaction key: over gRPC, over OTLP/HTTP protobuf and
//! over OTLP/HTTP JSON. The JSON comes from a reference encoder, opentelemetry-proto's serde
//! types, with what they get wrong fixed per the proto3 JSON mapping (non-finite doubles
//! are written as `"NaN"`, `"Infinity"`, `"-Infinity"`, where serde_json writes `null`).
//! Every request must be acknowledged on every transport with the same `partial_success`,
//! and the stored rows (`activity_events`, `token_usage`, `rejected_events`, all columns
//! but `seq`, `received_at` and the random `chain_salt`) must be identical across the
//! three databases.
//!
//! The committed corpus (`tests/conformance/*.json`: OTLP/JSON as
//! `google.protobuf.json_format` writes it, with the protobuf encoding of the same
//! message beside it as `*.binpb`) goes through the same comparison first.
//!
//! Cases per run: `TALLY_CONFORMANCE_CASES` (default 48, about a minute on two shared
//! cores); a longer run: `TALLY_CONFORMANCE_CASES=2000 cargo test --test e2e_conformance`.
//! A failing case is shrunk and printed by proptest. Each case also goes through the fuzz
//! target's JSON check (`fuzz/src/reference_json.rs`, without a database).

mod common;
/// The fuzz target `otlp_protobuf`'s JSON check, compiled and run here on every generated
/// case too (the fuzz crate itself is not built in CI).
#[path = "../fuzz/src/reference_json.rs"]
mod reference_json;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Tally, TallyOptions, TestDatabase};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use prost::Message;
use serde_json::Value as Json;
use tally_model::otlp::collector::logs::v1::logs_service_client::LogsServiceClient;
use tally_model::otlp::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use tally_model::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use tally_model::otlp::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tally_model::otlp::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use tally_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tally_model::otlp::resource::v1::Resource;
use tally_model::otlp::trace::v1::span::{Event, Link};
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

const HMAC_KEY: &str = "conformance-redaction-key-0123456789";

// ---- generators ---------------------------------------------------------------------

fn kv(key: impl Into<String>, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}

fn av(value: Value) -> AnyValue {
    AnyValue { value: Some(value) }
}

/// Text of every kind: plain, any unicode (control characters included), fixed
/// multi-script samples, empty.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9 ._-]{0,16}",
        2 => any::<String>().prop_map(|s| s.chars().take(24).collect()),
        1 => Just("héllo wörld ✓ 日本語 🎉 \u{200d}\u{feff}".to_owned()),
        1 => Just(r#"quote " backslash \ slash / tab	"#.to_owned()),
        1 => Just(String::new()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9_.]{0,12}",
        1 => text(),
    ]
}

/// Stand-ins for non-finite doubles while the reference encoder runs (serde_json writes
/// those as `null`); no generated double equals them.
const NAN_STANDIN: f64 = 3.141_592_653_589_793e-300;
const INF_STANDIN: f64 = 2.718_281_828_459_045e-300;
const NEG_INF_STANDIN: f64 = -2.718_281_828_459_045e-300;

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::MAX),
        1 => Just(f64::MIN),
        1 => Just(f64::MIN_POSITIVE),
        1 => Just(5e-324),
        1 => Just(-0.0),
        1 => Just(0.1),
        1 => Just(9_007_199_254_740_993.0),
    ]
    .prop_filter("not a stand-in", |d| {
        ![NAN_STANDIN, INF_STANDIN, NEG_INF_STANDIN].contains(d)
    })
}

fn integer() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => any::<i64>(),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(0),
        1 => Just(-1),
        1 => Just(1 << 53),
        1 => Just((1 << 53) + 1),
    ]
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        1 => Just(AnyValue { value: None }),
        3 => text().prop_map(|s| av(Value::StringValue(s))),
        1 => any::<bool>().prop_map(|b| av(Value::BoolValue(b))),
        2 => integer().prop_map(|i| av(Value::IntValue(i))),
        2 => double().prop_map(|d| av(Value::DoubleValue(d))),
        1 => vec(any::<u8>(), 0..12).prop_map(|b| av(Value::BytesValue(b))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4)
                .prop_map(|values| av(Value::ArrayValue(ArrayValue { values }))),
            vec((key(), inner), 0..4).prop_map(|pairs| {
                av(Value::KvlistValue(KeyValueList {
                    values: pairs.into_iter().map(|(k, v)| kv(k, v)).collect(),
                }))
            }),
        ]
    })
}

fn string_value(s: &str) -> AnyValue {
    av(Value::StringValue(s.to_owned()))
}

/// Attributes Tally reads (action, identity, token usage) mixed with arbitrary ones.
fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    let action = prop_oneof![
        3 => prop_oneof![
            Just("auth.login.success"),
            Just("doc.read"),
            Just("billing.invoice.pay"),
        ]
        .prop_map(str::to_owned),
        2 => "[a-z]{1,6}\\.[a-z_]{1,6}(\\.[a-z]{1,4})?",
        1 => Just("Not A Valid Action".to_owned()),
        1 => "[a-z]{129,300}",
    ];
    let user_key = prop_oneof![Just("enduser.id"), Just("user.id")];
    let tenant_key = prop_oneof![
        Just("tenant.id"),
        Just("company.id"),
        Just("organization.id")
    ];
    let count = prop_oneof![
        integer().prop_map(|i| av(Value::IntValue(i % 100_000))),
        (0..5_000i64).prop_map(|i| av(Value::DoubleValue(i as f64))),
        (-5..5_000i64).prop_map(|i| av(Value::StringValue(i.to_string()))),
        Just(string_value("abc")),
    ];
    let tokens = (
        prop_oneof![
            Just("gpt-4o"),
            Just("claude-3-5-haiku-20241022"),
            Just("house-llm")
        ],
        count.clone(),
        count,
    )
        .prop_map(|(model, input, output)| {
            vec![
                kv("gen_ai.operation.name", string_value("chat")),
                kv("gen_ai.request.model", string_value(model)),
                kv("gen_ai.usage.input_tokens", input),
                kv("gen_ai.usage.output_tokens", output),
            ]
        });
    (
        proptest::option::weighted(0.8, action),
        proptest::option::of((user_key, text())),
        proptest::option::of((tenant_key, text())),
        proptest::option::of(text()),
        proptest::option::weighted(0.3, tokens),
        vec((key(), any_value()), 0..5),
    )
        .prop_map(|(action, user, tenant, session, tokens, random)| {
            let mut out: Vec<KeyValue> = random.into_iter().map(|(k, v)| kv(k, v)).collect();
            if let Some(action) = action {
                out.push(kv("activity.action", string_value(&action)));
            }
            if let Some((k, v)) = user {
                out.push(kv(k, string_value(&v)));
            }
            if let Some((k, v)) = tenant {
                out.push(kv(k, string_value(&v)));
            }
            if let Some(session) = session {
                out.push(kv("session.id", string_value(&session)));
            }
            out.extend(tokens.into_iter().flatten());
            out
        })
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    proptest::option::weighted(
        0.9,
        (text(), vec((key(), any_value()), 0..3), any::<bool>()).prop_map(
            |(service, random, with_user)| {
                let mut attributes = vec![kv("service.name", string_value(&service))];
                if with_user {
                    attributes.push(kv("enduser.id", string_value("resource-user")));
                    attributes.push(kv("tenant.id", string_value("resource-tenant")));
                }
                attributes.extend(random.into_iter().map(|(k, v)| kv(k, v)));
                Resource {
                    attributes,
                    ..Default::default()
                }
            },
        ),
    )
}

fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
    proptest::option::of((text(), text(), vec((key(), any_value()), 0..2)).prop_map(
        |(name, version, random)| InstrumentationScope {
            name,
            version,
            attributes: random.into_iter().map(|(k, v)| kv(k, v)).collect(),
            ..Default::default()
        },
    ))
}

/// An id of `len` bytes, or absent (empty).
fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), len..=len),
        1 => Just(Vec::new()),
    ]
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// A nonzero time within the last hour (the event time is never the receive time, which
/// differs between the three processes).
fn time() -> impl Strategy<Value = u64> {
    (1u64..3_600_000_000_000).prop_map(|ago| now_nanos() - ago)
}

fn span() -> impl Strategy<Value = Span> {
    (
        (id(16), vec(any::<u8>(), 8..=8), id(8)),
        (text(), 0..6i32, time(), 0..5_000_000_000u64),
        attributes(),
        proptest::option::of((0..3i32, text())),
        vec((text(), time(), vec((key(), any_value()), 0..2)), 0..2),
        vec((id(16), vec(any::<u8>(), 8..=8)), 0..2),
        (any::<u32>(), 0..3u32),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent_span_id),
                (name, kind, start, length),
                attributes,
                status,
                events,
                links,
                (flags, dropped),
            )| Span {
                trace_id,
                span_id,
                parent_span_id,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start.saturating_add(length),
                attributes,
                dropped_attributes_count: dropped,
                events: events
                    .into_iter()
                    .map(|(name, time, attributes)| Event {
                        name,
                        time_unix_nano: time,
                        attributes: attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
                        ..Default::default()
                    })
                    .collect(),
                links: links
                    .into_iter()
                    .map(|(trace_id, span_id)| Link {
                        trace_id,
                        span_id,
                        ..Default::default()
                    })
                    .collect(),
                status: status.map(|(code, message)| Status { code, message }),
                flags,
                ..Default::default()
            },
        )
}

fn log_record() -> impl Strategy<Value = LogRecord> {
    (
        (time(), proptest::option::of(time())),
        (0..25i32, text()),
        any_value(),
        attributes(),
        (id(16), id(8), any::<u32>()),
        proptest::option::weighted(0.3, "[a-z]{1,6}\\.[a-z]{1,6}"),
    )
        .prop_map(
            |(
                (observed, time),
                (severity_number, severity_text),
                body,
                attributes,
                (trace_id, span_id, flags),
                event_name,
            )| LogRecord {
                time_unix_nano: time.unwrap_or(0),
                observed_time_unix_nano: observed,
                severity_number,
                severity_text,
                body: Some(body),
                attributes,
                trace_id,
                span_id,
                flags,
                event_name: event_name.unwrap_or_default(),
                ..Default::default()
            },
        )
}

fn traces() -> impl Strategy<Value = ExportTraceServiceRequest> {
    vec((resource(), vec((scope(), vec(span(), 0..4)), 1..3)), 1..3).prop_map(|resources| {
        ExportTraceServiceRequest {
            resource_spans: resources
                .into_iter()
                .map(|(resource, scopes)| ResourceSpans {
                    resource,
                    scope_spans: scopes
                        .into_iter()
                        .map(|(scope, spans)| ScopeSpans {
                            scope,
                            spans,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
    })
}

fn logs() -> impl Strategy<Value = ExportLogsServiceRequest> {
    vec(
        (resource(), vec((scope(), vec(log_record(), 0..4)), 1..3)),
        1..3,
    )
    .prop_map(|resources| ExportLogsServiceRequest {
        resource_logs: resources
            .into_iter()
            .map(|(resource, scopes)| ResourceLogs {
                resource,
                scope_logs: scopes
                    .into_iter()
                    .map(|(scope, log_records)| ScopeLogs {
                        scope,
                        log_records,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    })
}

/// How the JSON of a case is spelled (all valid OTLP/JSON).
#[derive(Debug, Clone, Copy)]
struct Spelling {
    /// Hex ids in uppercase (OTLP/JSON decoders accept either case).
    uppercase_ids: bool,
    /// `intValue` as a JSON number instead of a string (proto3 JSON accepts both).
    ints_as_numbers: bool,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (any::<bool>(), any::<bool>()).prop_map(|(uppercase_ids, ints_as_numbers)| Spelling {
        uppercase_ids,
        ints_as_numbers,
    })
}

// ---- the reference JSON encoder, fixed up -----------------------------------------------

/// Replaces non-finite doubles by their stand-ins (serde_json cannot write them).
fn stand_in_doubles(value: &mut AnyValue) {
    match value.value.as_mut() {
        Some(Value::DoubleValue(d)) if d.is_nan() => *d = NAN_STANDIN,
        Some(Value::DoubleValue(d)) if *d == f64::INFINITY => *d = INF_STANDIN,
        Some(Value::DoubleValue(d)) if *d == f64::NEG_INFINITY => *d = NEG_INF_STANDIN,
        Some(Value::ArrayValue(a)) => a.values.iter_mut().for_each(stand_in_doubles),
        Some(Value::KvlistValue(l)) => l
            .values
            .iter_mut()
            .filter_map(|kv| kv.value.as_mut())
            .for_each(stand_in_doubles),
        _ => {}
    }
}

fn stand_in_attributes(attributes: &mut [KeyValue]) {
    attributes
        .iter_mut()
        .filter_map(|kv| kv.value.as_mut())
        .for_each(stand_in_doubles);
}

fn stand_in_resource(resource: Option<&mut Resource>, scope: Option<&mut InstrumentationScope>) {
    if let Some(r) = resource {
        stand_in_attributes(&mut r.attributes);
    }
    if let Some(s) = scope {
        stand_in_attributes(&mut s.attributes);
    }
}

/// The JSON tree's fix-ups: stand-ins back to the proto3 JSON strings, the case's spelling.
fn fix_json(json: &mut Json, spelling: Spelling) {
    match json {
        Json::Object(map) => {
            for (key, value) in map.iter_mut() {
                match (key.as_str(), &*value) {
                    ("doubleValue", Json::Number(n)) => {
                        let text = match n.as_f64() {
                            Some(d) if d == NAN_STANDIN => Some("NaN"),
                            Some(d) if d == INF_STANDIN => Some("Infinity"),
                            Some(d) if d == NEG_INF_STANDIN => Some("-Infinity"),
                            _ => None,
                        };
                        if let Some(text) = text {
                            *value = Json::String(text.to_owned());
                        }
                    }
                    ("intValue", Json::String(s)) if spelling.ints_as_numbers => {
                        if let Ok(i) = s.parse::<i64>() {
                            *value = Json::from(i);
                        }
                    }
                    ("traceId" | "spanId" | "parentSpanId", Json::String(s))
                        if spelling.uppercase_ids =>
                    {
                        *value = Json::String(s.to_uppercase());
                    }
                    _ => fix_json(value, spelling),
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|v| fix_json(v, spelling)),
        _ => {}
    }
}

fn traces_json(request: &ExportTraceServiceRequest, spelling: Spelling) -> Vec<u8> {
    let mut request = request.clone();
    for rs in &mut request.resource_spans {
        for ss in &mut rs.scope_spans {
            stand_in_resource(rs.resource.as_mut(), ss.scope.as_mut());
            for span in &mut ss.spans {
                stand_in_attributes(&mut span.attributes);
                for event in &mut span.events {
                    stand_in_attributes(&mut event.attributes);
                }
                for link in &mut span.links {
                    stand_in_attributes(&mut link.attributes);
                }
            }
        }
        if rs.scope_spans.is_empty() {
            stand_in_resource(rs.resource.as_mut(), None);
        }
    }
    let mut json = serde_json::to_value(&request).expect("reference encoder (traces)");
    fix_json(&mut json, spelling);
    serde_json::to_vec(&json).expect("JSON text")
}

fn logs_json(request: &ExportLogsServiceRequest, spelling: Spelling) -> Vec<u8> {
    let mut request = request.clone();
    for rl in &mut request.resource_logs {
        for sl in &mut rl.scope_logs {
            stand_in_resource(rl.resource.as_mut(), sl.scope.as_mut());
            for record in &mut sl.log_records {
                stand_in_attributes(&mut record.attributes);
                if let Some(body) = record.body.as_mut() {
                    stand_in_doubles(body);
                }
            }
        }
    }
    let mut json = serde_json::to_value(&request).expect("reference encoder (logs)");
    fix_json(&mut json, spelling);
    serde_json::to_vec(&json).expect("JSON text")
}

// ---- transports ------------------------------------------------------------------------

/// The three instances: gRPC, HTTP protobuf, HTTP JSON.
struct Trio {
    grpc: (Tally, TestDatabase),
    protobuf: (Tally, TestDatabase),
    json: (Tally, TestDatabase),
    http: reqwest::Client,
}

async fn instance() -> (Tally, TestDatabase) {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        hmac_key: Some(HMAC_KEY.to_owned()),
        ..Default::default()
    })
    .await;
    (tally, database)
}

/// `rejected` of a `partial_success` (0 when absent).
type Rejected = i64;

async fn post(
    http: &reqwest::Client,
    tally: &Tally,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let response = http
        .post(tally.http_url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
    if status != 200 {
        return Err(format!(
            "{path} {content_type}: {status} {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(bytes)
}

fn json_rejected(body: &[u8], key: &str) -> Result<Rejected, String> {
    if body.is_empty() {
        return Ok(0);
    }
    let json: Json = serde_json::from_slice(body).map_err(|e| format!("JSON answer: {e}"))?;
    let value = &json["partialSuccess"][key];
    Ok(match value {
        Json::Null => 0,
        Json::Number(n) => n.as_i64().unwrap_or(-1),
        Json::String(s) => s.parse().unwrap_or(-1),
        _ => -1,
    })
}

impl Trio {
    async fn traces(
        &self,
        request: &ExportTraceServiceRequest,
        json: Vec<u8>,
    ) -> Result<[Rejected; 3], String> {
        let mut client = TraceServiceClient::connect(self.grpc.0.grpc_url())
            .await
            .map_err(|e| e.to_string())?;
        let grpc = client
            .export(request.clone())
            .await
            .map_err(|status| format!("gRPC traces: {status}"))?
            .into_inner()
            .partial_success
            .map_or(0, |p| p.rejected_spans);
        let body = post(
            &self.http,
            &self.protobuf.0,
            "/v1/traces",
            "application/x-protobuf",
            request.encode_to_vec(),
        )
        .await?;
        let protobuf = ExportTraceServiceResponse::decode(&body[..])
            .map_err(|e| e.to_string())?
            .partial_success
            .map_or(0, |p| p.rejected_spans);
        let body = post(
            &self.http,
            &self.json.0,
            "/v1/traces",
            "application/json",
            json,
        )
        .await?;
        Ok([grpc, protobuf, json_rejected(&body, "rejectedSpans")?])
    }

    async fn logs(
        &self,
        request: &ExportLogsServiceRequest,
        json: Vec<u8>,
    ) -> Result<[Rejected; 3], String> {
        let mut client = LogsServiceClient::connect(self.grpc.0.grpc_url())
            .await
            .map_err(|e| e.to_string())?;
        let grpc = client
            .export(request.clone())
            .await
            .map_err(|status| format!("gRPC logs: {status}"))?
            .into_inner()
            .partial_success
            .map_or(0, |p| p.rejected_log_records);
        let body = post(
            &self.http,
            &self.protobuf.0,
            "/v1/logs",
            "application/x-protobuf",
            request.encode_to_vec(),
        )
        .await?;
        let protobuf = ExportLogsServiceResponse::decode(&body[..])
            .map_err(|e| e.to_string())?
            .partial_success
            .map_or(0, |p| p.rejected_log_records);
        let body = post(
            &self.http,
            &self.json.0,
            "/v1/logs",
            "application/json",
            json,
        )
        .await?;
        Ok([grpc, protobuf, json_rejected(&body, "rejectedLogRecords")?])
    }

    /// Every stored row of the three databases: `table/id` → the row as JSON text.
    async fn rows(&self) -> [Rows; 3] {
        let mut out: [Rows; 3] = Default::default();
        for (slot, (_, database)) in out.iter_mut().zip([&self.grpc, &self.protobuf, &self.json]) {
            let client = database.client().await;
            for table in ["activity_events", "token_usage", "rejected_events"] {
                let rows = client
                    .query(
                        &format!(
                            "SELECT t.id::text, (to_jsonb(t) - 'seq' - 'received_at' - 'chain_salt')::text \
                             FROM {table} t"
                        ),
                        &[],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"));
                for row in rows {
                    slot.insert(format!("{table}/{}", row.get::<_, String>(0)), row.get(1));
                }
            }
        }
        out
    }

    /// Sends one case over the three transports and compares answers and rows.
    async fn check(
        &self,
        traces: &ExportTraceServiceRequest,
        logs: &ExportLogsServiceRequest,
        spelling: Spelling,
    ) -> Result<(), String> {
        // The fuzz target's check: the JSON of a valid request decodes to the same request.
        reference_json::check_traces(traces);
        reference_json::check_logs(logs);
        let before = self.rows().await;
        let answers = self.traces(traces, traces_json(traces, spelling)).await?;
        if answers.iter().any(|a| *a != answers[0]) {
            return Err(format!(
                "traces: rejected spans differ (gRPC, protobuf, JSON): {answers:?}"
            ));
        }
        let answers = self.logs(logs, logs_json(logs, spelling)).await?;
        if answers.iter().any(|a| *a != answers[0]) {
            return Err(format!(
                "logs: rejected records differ (gRPC, protobuf, JSON): {answers:?}"
            ));
        }
        let after = self.rows().await;
        let [grpc, protobuf, json] = changed(before, after);
        compare("gRPC", &grpc, "HTTP protobuf", &protobuf)?;
        compare("gRPC", &grpc, "HTTP JSON", &json)
    }
}

/// Stored rows: `table/id` → the row (all columns but `seq`, `received_at` and
/// `chain_salt`) as JSON text.
type Rows = BTreeMap<String, String>;

/// The rows a case added or changed, per database (earlier cases' rows left out, so a
/// case is judged, and shrunk, on its own).
fn changed(before: [Rows; 3], after: [Rows; 3]) -> [Rows; 3] {
    let mut out: [Rows; 3] = Default::default();
    for ((slot, before), after) in out.iter_mut().zip(before).zip(after) {
        *slot = after
            .into_iter()
            .filter(|(key, row)| before.get(key) != Some(row))
            .collect();
    }
    out
}

fn compare(a_name: &str, a: &Rows, b_name: &str, b: &Rows) -> Result<(), String> {
    for (key, row) in a {
        match b.get(key) {
            None => {
                return Err(format!(
                    "{key} stored over {a_name}, not over {b_name}: {row}"
                ))
            }
            Some(other) if other != row => {
                return Err(first_difference(key, a_name, row, b_name, other))
            }
            Some(_) => {}
        }
    }
    if let Some((key, row)) = b.iter().find(|(key, _)| !a.contains_key(*key)) {
        return Err(format!(
            "{key} stored over {b_name}, not over {a_name}: {row}"
        ));
    }
    Ok(())
}

/// Where two texts of one row first differ, with some context.
fn first_difference(key: &str, a_name: &str, a: &str, b_name: &str, b: &str) -> String {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    let from = a[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
    let window = |s: &str| -> String { s.get(from..).unwrap_or("").chars().take(400).collect() };
    format!(
        "{key} differs at byte {at}:\n{a_name}: …{}\n{b_name}: …{}",
        window(a),
        window(b)
    )
}

// ---- the tests ----------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("TALLY_CONFORMANCE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_stored_the_same_over_grpc_http_protobuf_and_http_json() {
    let trio = Trio {
        grpc: instance().await,
        protobuf: instance().await,
        json: instance().await,
        http: reqwest::Client::new(),
    };

    // The committed corpus first.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut corpus: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/conformance")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    corpus.sort();
    assert!(!corpus.is_empty(), "the corpus is committed");
    for json_path in &corpus {
        let name = json_path.display().to_string();
        let json = std::fs::read(json_path).expect("corpus JSON");
        let binpb = std::fs::read(json_path.with_extension("binpb")).expect("corpus binpb");
        let result = if name.contains("logs") {
            let request = ExportLogsServiceRequest::decode(&binpb[..]).expect("corpus protobuf");
            trio.logs(&request, json).await
        } else {
            let request = ExportTraceServiceRequest::decode(&binpb[..]).expect("corpus protobuf");
            trio.traces(&request, json).await
        };
        let answers = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{name}: {answers:?}"
        );
        let [grpc, protobuf, json] = trio.rows().await;
        assert!(!grpc.is_empty(), "{name}: rows are stored");
        if let Err(e) = compare("gRPC", &grpc, "HTTP protobuf", &protobuf)
            .and_then(|()| compare("gRPC", &grpc, "HTTP JSON", &json))
        {
            panic!("{name}: {e}");
        }
    }

    // Then generated requests.
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        // Shrinking re-sends every smaller case to the three instances: bounded.
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    });
    let result = tokio::task::block_in_place(|| {
        runner.run(
            &(traces(), logs(), spelling()),
            |(traces, logs, spelling)| {
                handle
                    .block_on(trio.check(&traces, &logs, spelling))
                    .map_err(TestCaseError::fail)
            },
        )
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
