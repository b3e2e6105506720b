//! The benchmark workload: realistic OTLP export requests — activity spans with
//! ~15 attributes (PII included, so redaction has real work), GenAI spans with
//! token usage and prompt content, and activity log records.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

const ACTIONS: [&str; 12] = [
    "auth.login.success",
    "auth.login.failure",
    "auth.logout",
    "session.start",
    "document.view",
    "document.edit",
    "file.upload",
    "file.download",
    "admin.user.invite",
    "apikey.create",
    "billing.invoice.view",
    "chat.message.send",
];

/// How many tenants the records spread over (record `n` belongs to tenant
/// `n % TENANTS`): 1,000 by default, `tally-bench ingest --tenants`.
static TENANTS: AtomicU64 = AtomicU64::new(1_000);

/// Sets the number of tenants the workload spreads over (at least 1).
pub fn set_tenants(tenants: u64) {
    TENANTS.store(tenants.max(1), Ordering::Relaxed);
}

/// The tenant of record `n`.
fn tenant(n: u64) -> String {
    format!("tenant-{}", n % TENANTS.load(Ordering::Relaxed).max(1))
}

/// A source of unique record numbers shared by every client.
pub static NEXT_RECORD: AtomicU64 = AtomicU64::new(1);

fn s(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn i(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn resource() -> Resource {
    Resource {
        attributes: vec![
            s("service.name", "bench-web".into()),
            s("service.version", "1.4.2".into()),
            s("deployment.environment.name", "production".into()),
        ],
        ..Default::default()
    }
}

/// Attributes of one activity record (number `n`): ~15 keys, some personal.
fn activity_attributes(n: u64) -> Vec<KeyValue> {
    let action = ACTIONS[(n % ACTIONS.len() as u64) as usize];
    let status = if n.is_multiple_of(17) { 403 } else { 200 };
    vec![
        s("activity.action", action.into()),
        s("enduser.id", format!("user-{}", n % 100_000)),
        s("tenant.id", tenant(n)),
        s("session.id", format!("sess-{:x}", n / 7)),
        s("activity.resource.type", "document".into()),
        s("activity.resource.id", format!("doc-{}", n % 50_000)),
        s("http.request.method", "POST".into()),
        s("http.route", "/api/documents/{id}".into()),
        i("http.response.status_code", status),
        s(
            "client.address",
            format!("203.0.{}.{}", (n / 256) % 256, n % 256),
        ),
        s(
            "user_agent.original",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0".into(),
        ),
        s("user.email", format!("person{}@example.com", n % 100_000)),
        s("app.request_id", format!("req-{n:016x}")),
        s("file.name", format!("quarterly-report-{}.pdf", n % 977)),
        i("app.items", (n % 50) as i64),
    ]
}

fn genai_attributes(n: u64) -> Vec<KeyValue> {
    vec![
        s("gen_ai.operation.name", "chat".into()),
        s("gen_ai.provider.name", "openai".into()),
        s("gen_ai.request.model", "gpt-4o-mini".into()),
        s("gen_ai.response.model", "gpt-4o-mini-2024-07-18".into()),
        i("gen_ai.usage.input_tokens", 300 + (n % 700) as i64),
        i("gen_ai.usage.output_tokens", 50 + (n % 300) as i64),
        s("enduser.id", format!("user-{}", n % 100_000)),
        s("tenant.id", tenant(n)),
        s(
            "gen_ai.input.messages",
            format!("[{{\"role\":\"user\",\"content\":\"summarise ticket {n} for alice@example.com\"}}]"),
        ),
        s("server.address", "api.openai.example".into()),
    ]
}

fn ids(n: u64) -> (Vec<u8>, Vec<u8>) {
    let mut trace_id = vec![0u8; 16];
    trace_id[..8].copy_from_slice(&0x7a11_7a11_u64.to_be_bytes());
    trace_id[8..].copy_from_slice(&(n / 4 + 1).to_be_bytes());
    (trace_id, (n + 1).to_be_bytes().to_vec())
}

/// A trace export of `spans` spans (every fifth a GenAI chat call).
pub fn traces(spans: usize) -> ExportTraceServiceRequest {
    let start = NEXT_RECORD.fetch_add(spans as u64, Ordering::Relaxed);
    let now = now_nanos();
    let spans = (start..start + spans as u64)
        .map(|n| {
            let (trace_id, span_id) = ids(n);
            let attributes = if n.is_multiple_of(5) {
                genai_attributes(n)
            } else {
                activity_attributes(n)
            };
            Span {
                trace_id,
                span_id,
                name: "POST /api/documents/{id}".into(),
                kind: 2,
                start_time_unix_nano: now - 3_000_000,
                end_time_unix_nano: now,
                attributes,
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "bench".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A log export of `records` activity log records.
pub fn logs(records: usize) -> ExportLogsServiceRequest {
    let start = NEXT_RECORD.fetch_add(records as u64, Ordering::Relaxed);
    let now = now_nanos();
    let log_records = (start..start + records as u64)
        .map(|n| {
            let (trace_id, span_id) = ids(n);
            let mut attributes = activity_attributes(n);
            attributes.remove(0);
            LogRecord {
                time_unix_nano: now,
                observed_time_unix_nano: now,
                severity_number: 9,
                event_name: ACTIONS[(n % ACTIONS.len() as u64) as usize].into(),
                attributes,
                trace_id,
                span_id,
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource()),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A REST ingest body (`POST /api/v1/events`, a JSON array) of `items` events:
/// the same mix as [`traces`] (every fifth a chat call with a `tokens` object,
/// the others activity with the same ~15 attributes, personal data included).
pub fn rest_events(items: usize) -> Vec<u8> {
    let start = NEXT_RECORD.fetch_add(items as u64, Ordering::Relaxed);
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let events: Vec<serde_json::Value> = (start..start + items as u64)
        .map(|n| rest_event(n, &ts))
        .collect();
    serde_json::Value::Array(events).to_string().into_bytes()
}

fn rest_event(n: u64, ts: &str) -> serde_json::Value {
    let user = format!("user-{}", n % 100_000);
    let tenant = tenant(n);
    if n.is_multiple_of(5) {
        let prompt = format!("summarise ticket {n} for alice@example.com");
        return serde_json::json!({
            "action": "chat.message.send",
            "ts": ts,
            "user_id": user,
            "tenant_id": tenant,
            "service": "bench-web",
            "attributes": {
                "gen_ai.input.messages": [{"role": "user", "content": prompt}],
                "server.address": "api.openai.example",
                "app.request_id": format!("req-{n:016x}"),
            },
            "tokens": {
                "provider": "openai",
                "operation": "chat",
                "request_model": "gpt-4o-mini",
                "response_model": "gpt-4o-mini-2024-07-18",
                "input_tokens": 300 + n % 700,
                "output_tokens": 50 + n % 300,
            },
        });
    }
    let status = if n.is_multiple_of(17) { 403 } else { 200 };
    serde_json::json!({
        "action": ACTIONS[(n % ACTIONS.len() as u64) as usize],
        "ts": ts,
        "user_id": user,
        "tenant_id": tenant,
        "session_id": format!("sess-{:x}", n / 7),
        "resource_type": "document",
        "resource_id": format!("doc-{}", n % 50_000),
        "service": "bench-web",
        "attributes": {
            "http.request.method": "POST",
            "http.route": "/api/documents/{id}",
            "http.response.status_code": status,
            "client.address": format!("203.0.{}.{}", (n / 256) % 256, n % 256),
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
            "user.email": format!("person{}@example.com", n % 100_000),
            "app.request_id": format!("req-{n:016x}"),
            "file.name": format!("quarterly-report-{}.pdf", n % 977),
            "app.items": n % 50,
        },
    })
}
