//! The PII corpus (`processors/tests/data/pii_corpus.json`, 144 cases) sent
//! through OTLP to a running Tally: afterwards every table is dumped as text and
//! Tally's own log (at debug level) is read. No raw sensitive value appears
//! anywhere, and the near-misses stored as attributes are intact.

mod common;

use common::{Tally, TallyOptions, TestDatabase};
use prost::Message;
use serde_json::Value;
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use tally_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tally_model::otlp::resource::v1::Resource;
use tally_model::otlp::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};

const CORPUS: &str = include_str!("../processors/tests/data/pii_corpus.json");

fn any(value: &Value) -> AnyValue {
    let value = match value {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        Value::Array(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(any).collect(),
        }),
        Value::Object(map) => any_value::Value::KvlistValue(KeyValueList {
            values: map.iter().map(|(k, v)| kv(k, any(v))).collect(),
        }),
        Value::Null => any_value::Value::StringValue(String::new()),
    };
    AnyValue { value: Some(value) }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any(&Value::String(value.to_string())))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// Each case becomes one stored activity record (it carries an action) with the
/// case's value where the case says.
fn requests(cases: &[Value]) -> (ExportTraceServiceRequest, ExportLogsServiceRequest) {
    let mut traces = ExportTraceServiceRequest::default();
    let mut logs = ExportLogsServiceRequest::default();
    for (n, case) in cases.iter().enumerate() {
        let place = case["where"].as_str().unwrap_or_default();
        let key = case["key"].as_str().unwrap_or("app.attr");
        let value = any(&case["value"]);
        let action = format!("privacy.case.n{n}");
        let event = case["event"].as_str().unwrap_or("exception").to_string();
        if place.starts_with("log") {
            let mut record = LogRecord {
                time_unix_nano: now(),
                event_name: action.clone(),
                attributes: vec![text("tenant.id", "privacy")],
                ..Default::default()
            };
            let mut resource = Resource::default();
            match place {
                "log" => record.attributes.push(kv(key, value)),
                "log_resource" => resource.attributes.push(kv(key, value)),
                "log_body" => record.body = Some(value),
                "log_event" => {
                    record.event_name = event;
                    record.attributes.push(text("activity.action", &action));
                    record.body = Some(value);
                }
                "log_with_prompt" => {
                    record.attributes.push(text("gen_ai.prompt", "a prompt"));
                    record.body = Some(value);
                }
                other => panic!("unknown log place {other}"),
            }
            logs.resource_logs.push(ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record],
                    ..Default::default()
                }],
                ..Default::default()
            });
            continue;
        }
        let mut id = [0u8; 8];
        id[..].copy_from_slice(&(n as u64 + 1).to_be_bytes());
        let mut span = Span {
            trace_id: [[0x9a; 8], id].concat(),
            span_id: id.to_vec(),
            name: "op".into(),
            start_time_unix_nano: now(),
            end_time_unix_nano: now(),
            attributes: vec![
                text("activity.action", &action),
                text("tenant.id", "privacy"),
            ],
            ..Default::default()
        };
        let mut resource = Resource::default();
        let mut scope = InstrumentationScope::default();
        match place {
            "span" => span.attributes.push(kv(key, value)),
            "resource" => resource.attributes.push(kv(key, value)),
            "scope" => scope.attributes.push(kv(key, value)),
            "span_name" => span.name = case["value"].as_str().unwrap_or_default().into(),
            "span_status" => {
                span.status = Some(Status {
                    code: status::StatusCode::Error as i32,
                    message: case["value"].as_str().unwrap_or_default().into(),
                })
            }
            "span_event" => span.events.push(span::Event {
                name: event,
                time_unix_nano: now(),
                attributes: vec![kv(key, value)],
                ..Default::default()
            }),
            "link" => span.links.push(span::Link {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                attributes: vec![kv(key, value)],
                ..Default::default()
            }),
            other => panic!("unknown span place {other}"),
        }
        traces.resource_spans.push(ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    (traces, logs)
}

/// `needle` as it would appear in a JSON text (escaped), besides its raw form.
fn forms(needle: &str) -> [String; 2] {
    let json = serde_json::to_string(needle).unwrap_or_default();
    [needle.to_string(), json.trim_matches('"').to_string()]
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_pii_reaches_tables_or_logs_and_near_misses_stay() {
    let corpus: Value = serde_json::from_str(CORPUS).expect("corpus JSON");
    let cases = corpus["cases"].as_array().expect("cases").clone();
    assert!(cases.len() >= 100, "at least 100 cases");
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    })
    .await;

    let (traces, logs) = requests(&cases);
    let client = reqwest::Client::new();
    for (path, body) in [
        ("/v1/traces", traces.encode_to_vec()),
        ("/v1/logs", logs.encode_to_vec()),
    ] {
        let response = client
            .post(tally.http_url(path))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .expect("export");
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }

    let db = database.client().await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM activity_events WHERE action LIKE 'privacy.case.n%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        stored as usize,
        cases.len(),
        "every case was stored as an event"
    );

    // Every table of the schema, dumped as text, plus Tally's own log.
    let tables: Vec<String> = db
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
             AND tablename NOT LIKE '%\\_p________' ESCAPE '\\'",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(tables.contains(&"activity_events".to_string()));
    let mut dump = String::new();
    for table in &tables {
        for row in db
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .expect("dump")
        {
            dump.push_str(row.get::<_, &str>(0));
            dump.push('\n');
        }
    }
    let log = tally.log_text();

    let mut checked_secrets = 0;
    let mut checked_keeps = 0;
    for case in &cases {
        let id = case["id"].as_str().unwrap_or_default();
        for secret in strings(&case["secret"]) {
            for form in forms(&secret) {
                assert!(
                    !dump.contains(&form),
                    "{id}: {secret:?} reached the database"
                );
                assert!(!log.contains(&form), "{id}: {secret:?} reached Tally's log");
            }
            checked_secrets += 1;
        }
        // Near-misses in attributes are stored as they were.
        let place = case["where"].as_str().unwrap_or_default();
        if case["clean"] == Value::Bool(true)
            && ["span", "resource", "scope", "log"].contains(&place)
        {
            for keep in strings(&case["keep"])
                .into_iter()
                .chain(strings(&case["value"]))
            {
                let [raw, escaped] = forms(&keep);
                assert!(
                    dump.contains(&raw) || dump.contains(&escaped),
                    "{id}: near-miss {keep:?} was altered"
                );
                checked_keeps += 1;
            }
        }
    }
    assert!(checked_secrets >= 100, "{checked_secrets} secrets checked");
    assert!(checked_keeps >= 20, "{checked_keeps} near-misses checked");
}
