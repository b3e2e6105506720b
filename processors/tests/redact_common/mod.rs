//! Shared by the redaction tests and the benchmark: the PII corpus
//! (`tests/data/pii_corpus.json`), request builders and a walker that collects
//! every string a request holds.
#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use serde_json::Value as Json;

pub const KEY: &[u8] = b"corpus-test-key-0123456789abcdef";

pub const CORPUS: &str = include_str!("../data/pii_corpus.json");

/// One corpus case.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub place: String,
    pub key: String,
    pub value: Json,
    pub event: String,
    pub secret: Vec<String>,
    pub keep: Vec<String>,
    pub rule: Option<String>,
    pub clean: bool,
}

fn strings(v: Option<&Json>) -> Vec<String> {
    v.and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn corpus() -> Vec<Case> {
    let doc: Json = match serde_json::from_str(CORPUS) {
        Ok(doc) => doc,
        Err(e) => panic!("pii_corpus.json: {e}"),
    };
    let Some(cases) = doc.get("cases").and_then(Json::as_array) else {
        panic!("pii_corpus.json has no cases");
    };
    cases
        .iter()
        .map(|c| {
            let text = |k: &str| c.get(k).and_then(Json::as_str).unwrap_or("").to_string();
            Case {
                id: text("id"),
                place: text("where"),
                key: text("key"),
                value: c.get("value").cloned().unwrap_or(Json::Null),
                event: c
                    .get("event")
                    .and_then(Json::as_str)
                    .unwrap_or("exception")
                    .to_string(),
                secret: strings(c.get("secret")),
                keep: strings(c.get("keep")),
                rule: c.get("rule").and_then(Json::as_str).map(str::to_string),
                clean: c.get("clean").and_then(Json::as_bool).unwrap_or(false),
            }
        })
        .collect()
}

pub fn any(v: &Json) -> AnyValue {
    let value = match v {
        Json::Null => None,
        Json::Bool(b) => Some(Value::BoolValue(*b)),
        Json::Number(n) => Some(match n.as_i64() {
            Some(i) => Value::IntValue(i),
            None => Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        }),
        Json::String(s) => Some(Value::StringValue(s.clone())),
        Json::Array(items) => Some(Value::ArrayValue(ArrayValue {
            values: items.iter().map(any).collect(),
        })),
        Json::Object(map) => Some(Value::KvlistValue(KeyValueList {
            values: map.iter().map(|(k, v)| kv(k, any(v))).collect(),
        })),
    };
    AnyValue { value }
}

pub fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

pub fn s(key: &str, value: &str) -> KeyValue {
    kv(
        key,
        AnyValue {
            value: Some(Value::StringValue(value.to_string())),
        },
    )
}

pub fn int(key: &str, value: i64) -> KeyValue {
    kv(
        key,
        AnyValue {
            value: Some(Value::IntValue(value)),
        },
    )
}

pub fn base_span() -> Span {
    Span {
        trace_id: vec![0x4b; 16],
        span_id: vec![0x7a; 8],
        name: "chat gpt-4o".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        attributes: vec![s("activity.action", "chat.completion.create")],
        ..Default::default()
    }
}

pub fn traces(
    resource: Vec<KeyValue>,
    scope: Vec<KeyValue>,
    spans: Vec<Span>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "corpus".into(),
                    attributes: scope,
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn logs(resource: Vec<KeyValue>, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "corpus".into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A request holding one case.
#[derive(Debug, Clone)]
pub enum Request {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
}

pub fn build(case: &Case) -> Request {
    let attr = || kv(&case.key, any(&case.value));
    let text = || case.value.as_str().unwrap_or("").to_string();
    let mut span = base_span();
    let mut record = LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        attributes: vec![s("activity.action", "app.log")],
        ..Default::default()
    };
    match case.place.as_str() {
        "resource" => return Request::Traces(traces(vec![attr()], vec![], vec![span])),
        "scope" => return Request::Traces(traces(vec![], vec![attr()], vec![span])),
        "span" => span.attributes.push(attr()),
        "span_name" => span.name = text(),
        "span_status" => {
            span.status = Some(Status {
                message: text(),
                code: 2,
            })
        }
        "span_event" => span.events.push(span::Event {
            name: case.event.clone(),
            attributes: vec![attr()],
            ..Default::default()
        }),
        "link" => span.links.push(span::Link {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![attr()],
            ..Default::default()
        }),
        "log" => {
            record.attributes.push(attr());
            return Request::Logs(logs(vec![], vec![record]));
        }
        "log_resource" => return Request::Logs(logs(vec![attr()], vec![record])),
        "log_body" => {
            record.body = Some(any(&case.value));
            return Request::Logs(logs(vec![], vec![record]));
        }
        "log_event" => {
            record.event_name = case.event.clone();
            record.body = Some(any(&case.value));
            return Request::Logs(logs(vec![], vec![record]));
        }
        "log_with_prompt" => {
            record.attributes.push(s("gen_ai.prompt", "see body"));
            record.body = Some(any(&case.value));
            return Request::Logs(logs(vec![], vec![record]));
        }
        other => panic!("case {}: unknown place {other}", case.id),
    }
    Request::Traces(traces(vec![], vec![], vec![span]))
}

fn value_strings(v: &AnyValue, out: &mut String) {
    match &v.value {
        Some(Value::StringValue(s)) => {
            out.push_str(s);
            out.push('\u{1}');
        }
        Some(Value::BytesValue(b)) => {
            out.push_str(&String::from_utf8_lossy(b));
            out.push('\u{1}');
        }
        Some(Value::ArrayValue(a)) => a.values.iter().for_each(|v| value_strings(v, out)),
        Some(Value::KvlistValue(l)) => kvs_strings(&l.values, out),
        Some(Value::IntValue(i)) => {
            out.push_str(&i.to_string());
            out.push('\u{1}');
        }
        _ => {}
    }
}

fn kvs_strings(kvs: &[KeyValue], out: &mut String) {
    for kv in kvs {
        out.push_str(&kv.key);
        out.push('\u{1}');
        if let Some(v) = &kv.value {
            value_strings(v, out);
        }
    }
}

/// Every string in the request (names, keys, values, bodies, messages),
/// separated by U+0001, plus its serde JSON form.
pub fn all_text(req: &Request) -> String {
    let mut out = String::new();
    match req {
        Request::Traces(t) => {
            for rs in &t.resource_spans {
                if let Some(r) = &rs.resource {
                    kvs_strings(&r.attributes, &mut out);
                }
                for ss in &rs.scope_spans {
                    if let Some(sc) = &ss.scope {
                        out.push_str(&sc.name);
                        kvs_strings(&sc.attributes, &mut out);
                    }
                    for sp in &ss.spans {
                        out.push_str(&sp.name);
                        out.push('\u{1}');
                        kvs_strings(&sp.attributes, &mut out);
                        for e in &sp.events {
                            out.push_str(&e.name);
                            out.push('\u{1}');
                            kvs_strings(&e.attributes, &mut out);
                        }
                        for l in &sp.links {
                            kvs_strings(&l.attributes, &mut out);
                        }
                        if let Some(st) = &sp.status {
                            out.push_str(&st.message);
                            out.push('\u{1}');
                        }
                    }
                }
            }
            out.push_str(&serde_json::to_string(t).unwrap_or_default());
        }
        Request::Logs(l) => {
            for rl in &l.resource_logs {
                if let Some(r) = &rl.resource {
                    kvs_strings(&r.attributes, &mut out);
                }
                for sl in &rl.scope_logs {
                    for rec in &sl.log_records {
                        out.push_str(&rec.event_name);
                        out.push('\u{1}');
                        kvs_strings(&rec.attributes, &mut out);
                        if let Some(b) = &rec.body {
                            value_strings(b, &mut out);
                        }
                    }
                }
            }
            out.push_str(&serde_json::to_string(l).unwrap_or_default());
        }
    }
    out
}
