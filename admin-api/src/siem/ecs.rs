//! Elastic Common Schema (8.x) documents. Fields without an ECS home go to
//! `labels` (keyword strings) or to the custom `tally` object.

use serde_json::{json, Map, Value};

use super::{is_authentication, token_action};
use crate::rows::{ActivityItem, RawRow, TokenItem};

/// The ECS version written in `ecs.version`.
pub const ECS_VERSION: &str = "8.11.0";

/// `event.outcome`: ECS allows exactly `success`, `failure` and `unknown`,
/// Tally's own outcome values.
pub fn outcome(outcome: &str) -> &str {
    match outcome {
        "success" | "failure" => outcome,
        _ => "unknown",
    }
}

/// One ECS document for a row.
pub fn encode(row: &RawRow) -> Value {
    match row {
        RawRow::Activity(item) => activity(item),
        RawRow::Token(item) => token(item),
    }
}

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: Option<&String>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), json!({ "id": value }));
    }
}

fn common(
    document: &mut Map<String, Value>,
    user_id: Option<&String>,
    tenant_id: Option<&String>,
    trace_id: Option<&String>,
    span_id: Option<&String>,
    service: Option<&String>,
) {
    document.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    insert_opt(document, "user", user_id);
    insert_opt(document, "organization", tenant_id);
    insert_opt(document, "trace", trace_id);
    insert_opt(document, "span", span_id);
    if let Some(service) = service {
        document.insert("service".into(), json!({ "name": service }));
    }
    document.insert(
        "observer".into(),
        json!({ "product": "Tally", "vendor": "Tally", "type": "collector", "version": super::VERSION }),
    );
}

fn activity(item: &ActivityItem) -> Value {
    let category = if is_authentication(&item.action) {
        json!(["authentication"])
    } else {
        json!(["web"])
    };
    let mut document = Map::new();
    document.insert("@timestamp".into(), json!(item.ts));
    document.insert(
        "event".into(),
        json!({
            "id": item.id,
            "sequence": item.seq,
            "kind": "event",
            "category": category,
            "type": ["info"],
            "action": item.action,
            "outcome": outcome(&item.outcome),
            "ingested": item.received_at,
            "dataset": "tally.activity",
        }),
    );
    common(
        &mut document,
        item.user_id.as_ref(),
        item.tenant_id.as_ref(),
        item.trace_id.as_ref(),
        item.span_id.as_ref(),
        item.service.as_ref(),
    );
    let mut labels = Map::new();
    for (key, value) in [
        ("session_id", &item.session_id),
        ("resource_type", &item.resource_type),
        ("resource_id", &item.resource_id),
    ] {
        if let Some(value) = value {
            labels.insert(key.to_owned(), json!(value));
        }
    }
    if !labels.is_empty() {
        document.insert("labels".into(), Value::Object(labels));
    }
    if let Some(ms) = item.duration_ms {
        // ECS `event.duration` is nanoseconds.
        if let Some(event) = document.get_mut("event").and_then(Value::as_object_mut) {
            event.insert("duration".into(), json!((ms * 1e6).round() as i64));
        }
    }
    if item.error_type.is_some() || item.error_message.is_some() {
        let mut error = Map::new();
        if let Some(kind) = &item.error_type {
            error.insert("type".into(), json!(kind));
        }
        if let Some(message) = &item.error_message {
            error.insert("message".into(), json!(message));
        }
        document.insert("error".into(), Value::Object(error));
    }
    let mut tally = Map::new();
    tally.insert("table".into(), json!("activity_events"));
    if let Some(name) = &item.name {
        tally.insert("name".into(), json!(name));
    }
    tally.insert("attributes".into(), item.attributes.clone());
    document.insert("tally".into(), Value::Object(tally));
    Value::Object(document)
}

fn token(item: &TokenItem) -> Value {
    let mut document = Map::new();
    document.insert("@timestamp".into(), json!(item.ts));
    let mut event = json!({
        "id": item.id,
        "sequence": item.seq,
        "kind": "event",
        "type": ["info"],
        "action": token_action(item.operation.as_deref()),
        "outcome": outcome(&item.outcome),
        "ingested": item.received_at,
        "dataset": "tally.tokens",
    });
    if let Some(duration) = item.duration_ms {
        // event.duration is in nanoseconds.
        event["duration"] = json!((duration * 1_000_000.0).round() as i64);
    }
    document.insert("event".into(), event);
    common(
        &mut document,
        item.user_id.as_ref(),
        item.tenant_id.as_ref(),
        item.trace_id.as_ref(),
        item.span_id.as_ref(),
        item.service.as_ref(),
    );
    if let Some(session) = &item.session_id {
        document.insert("labels".into(), json!({ "session_id": session }));
    }
    document.insert(
        "gen_ai".into(),
        json!({
            "system": item.provider,
            "operation": { "name": item.operation },
            "request": { "model": { "id": item.request_model } },
            "response": { "model": item.response_model },
            "usage": {
                "input_tokens": item.input_tokens,
                "output_tokens": item.output_tokens,
            },
        }),
    );
    document.insert(
        "tally".into(),
        json!({
            "table": "token_usage",
            "model": item.model,
            "cache_read_tokens": item.cache_read_tokens,
            "cache_write_tokens": item.cache_write_tokens,
            "reasoning_tokens": item.reasoning_tokens,
            "total_tokens": item.total_tokens,
            "usage_known": item.usage_known,
            "cost_usd": item.cost_usd,
            "attribution_source": item.attribution_source,
            "attributes": item.attributes,
        }),
    );
    Value::Object(document)
}
