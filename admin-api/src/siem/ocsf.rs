//! OCSF 1.3 events: `auth` / `auth.*` activity is Authentication (class 3002,
//! category 3 Identity & Access Management), every other activity row and every
//! `token_usage` row is API Activity (class 6003, category 6 Application
//! Activity). `type_uid` = `class_uid * 100 + activity_id`.

use serde_json::{json, Map, Value};

use super::{epoch_millis, is_authentication, token_action, PRODUCT, VERSION};
use crate::rows::{ActivityItem, RawRow, TokenItem};

/// The OCSF schema version written in `metadata.version`.
pub const OCSF_VERSION: &str = "1.3.0";

/// Authentication `activity_id` (1 Logon, 2 Logoff, 99 Other) and its name.
pub fn authentication_activity(action: &str) -> (u8, &'static str) {
    let last = action.rsplit('.').next().unwrap_or(action);
    match last {
        "login" | "logon" | "signin" | "sign_in" => (1, "Logon"),
        "logout" | "logoff" | "signout" | "sign_out" => (2, "Logoff"),
        _ => (99, "Other"),
    }
}

/// API Activity `activity_id` (1 Create, 2 Read, 3 Update, 4 Delete, 99 Other)
/// from the action's last segment.
pub fn api_activity(action: &str) -> (u8, &'static str) {
    let last = action.rsplit('.').next().unwrap_or(action);
    match last {
        "create" | "add" | "insert" | "new" | "upload" | "invite" => (1, "Create"),
        "read" | "view" | "get" | "list" | "search" | "download" | "export" | "query" => {
            (2, "Read")
        }
        "update" | "write" | "edit" | "modify" | "patch" | "set" | "rename" => (3, "Update"),
        "delete" | "remove" | "destroy" | "purge" => (4, "Delete"),
        _ => (99, "Other"),
    }
}

/// `status_id` and `status` from the outcome.
pub fn status(outcome: &str) -> (u8, &'static str) {
    match outcome {
        "success" => (1, "Success"),
        "failure" => (2, "Failure"),
        _ => (0, "Unknown"),
    }
}

/// `severity_id` and `severity`: Informational, except failures (Medium for
/// authentication, Low otherwise).
pub fn severity(outcome: &str, authentication: bool) -> (u8, &'static str) {
    match (outcome, authentication) {
        ("failure", true) => (3, "Medium"),
        ("failure", false) => (2, "Low"),
        _ => (1, "Informational"),
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<&String>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), json!(value));
    }
}

fn metadata(
    id: &uuid::Uuid,
    seq: i64,
    received_at: &str,
    tenant: Option<&String>,
    trace: Option<&String>,
) -> Value {
    let mut metadata = Map::new();
    metadata.insert(
        "product".into(),
        json!({ "name": PRODUCT, "vendor_name": PRODUCT, "version": VERSION }),
    );
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert("uid".into(), json!(id));
    metadata.insert("sequence".into(), json!(seq));
    if let Some(logged) = epoch_millis(received_at) {
        metadata.insert("logged_time".into(), json!(logged));
    }
    put(&mut metadata, "tenant_uid", tenant);
    put(&mut metadata, "correlation_uid", trace);
    Value::Object(metadata)
}

fn user(user_id: Option<&String>) -> Value {
    match user_id {
        Some(uid) => json!({ "uid": uid }),
        None => json!({ "type_id": 0, "type": "Unknown" }),
    }
}

/// One OCSF event for a row.
pub fn encode(row: &RawRow) -> Value {
    match row {
        RawRow::Activity(item) => activity(item),
        RawRow::Token(item) => token(item),
    }
}

fn actor(user_id: Option<&String>, session_id: Option<&String>) -> Value {
    let mut actor = Map::new();
    actor.insert("user".into(), user(user_id));
    if let Some(session) = session_id {
        actor.insert("session".into(), json!({ "uid": session }));
    }
    Value::Object(actor)
}

fn activity(item: &ActivityItem) -> Value {
    let authentication = is_authentication(&item.action);
    let (class_uid, class_name, category_uid, category_name) = if authentication {
        (
            3002u32,
            "Authentication",
            3u32,
            "Identity & Access Management",
        )
    } else {
        (6003u32, "API Activity", 6u32, "Application Activity")
    };
    let (activity_id, activity_name) = if authentication {
        authentication_activity(&item.action)
    } else {
        api_activity(&item.action)
    };
    let (status_id, status_name) = status(&item.outcome);
    let (severity_id, severity_name) = severity(&item.outcome, authentication);
    let mut event = Map::new();
    event.insert("class_uid".into(), json!(class_uid));
    event.insert("class_name".into(), json!(class_name));
    event.insert("category_uid".into(), json!(category_uid));
    event.insert("category_name".into(), json!(category_name));
    event.insert("activity_id".into(), json!(activity_id));
    event.insert("activity_name".into(), json!(activity_name));
    event.insert(
        "type_uid".into(),
        json!(class_uid * 100 + u32::from(activity_id)),
    );
    event.insert(
        "type_name".into(),
        json!(format!("{class_name}: {activity_name}")),
    );
    event.insert("time".into(), json!(epoch_millis(&item.ts).unwrap_or(0)));
    event.insert("severity_id".into(), json!(severity_id));
    event.insert("severity".into(), json!(severity_name));
    event.insert("status_id".into(), json!(status_id));
    event.insert("status".into(), json!(status_name));
    event.insert(
        "message".into(),
        json!(format!("{} {}", item.action, item.outcome)),
    );
    event.insert(
        "metadata".into(),
        metadata(
            &item.id,
            item.seq,
            &item.received_at,
            item.tenant_id.as_ref(),
            item.trace_id.as_ref(),
        ),
    );
    event.insert(
        "actor".into(),
        actor(item.user_id.as_ref(), item.session_id.as_ref()),
    );
    if authentication {
        event.insert("user".into(), user(item.user_id.as_ref()));
        if let Some(service) = &item.service {
            event.insert("service".into(), json!({ "name": service }));
        }
        if let Some(session) = &item.session_id {
            event.insert("session".into(), json!({ "uid": session }));
        }
    } else {
        let mut api = Map::new();
        api.insert("operation".into(), json!(item.action));
        if let Some(service) = &item.service {
            api.insert("service".into(), json!({ "name": service }));
        }
        event.insert("api".into(), Value::Object(api));
        event.insert("cloud".into(), json!({ "provider": "unknown" }));
        event.insert(
            "src_endpoint".into(),
            json!({ "svc_name": item.service.as_deref().unwrap_or("unknown") }),
        );
    }
    if item.resource_type.is_some() || item.resource_id.is_some() {
        let mut resource = Map::new();
        put(&mut resource, "type", item.resource_type.as_ref());
        put(&mut resource, "uid", item.resource_id.as_ref());
        event.insert("resources".into(), json!([Value::Object(resource)]));
    }
    // OCSF `duration` is whole milliseconds; the exact value stays in `unmapped`.
    if let Some(ms) = item.duration_ms {
        event.insert("duration".into(), json!(ms.round() as i64));
    }
    put(&mut event, "status_code", item.error_type.as_ref());
    put(&mut event, "status_detail", item.error_message.as_ref());
    let mut unmapped = Map::new();
    unmapped.insert("action".into(), json!(item.action));
    put(&mut unmapped, "span_id", item.span_id.as_ref());
    put(&mut unmapped, "name", item.name.as_ref());
    if let Some(ms) = item.duration_ms {
        unmapped.insert("duration_ms".into(), json!(ms));
    }
    unmapped.insert("attributes".into(), item.attributes.clone());
    event.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(event)
}

fn token(item: &TokenItem) -> Value {
    let action = token_action(item.operation.as_deref());
    let (status_id, status_name) = status(&item.outcome);
    let (severity_id, severity_name) = severity(&item.outcome, false);
    let mut api = Map::new();
    api.insert("operation".into(), json!(action));
    if let Some(service) = &item.service {
        api.insert("service".into(), json!({ "name": service }));
    }
    let mut event = json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": 99,
        "activity_name": "Other",
        "type_uid": 600399,
        "type_name": "API Activity: Other",
        "time": epoch_millis(&item.ts).unwrap_or(0),
        "severity_id": severity_id,
        "severity": severity_name,
        "status_id": status_id,
        "status": status_name,
        "message": format!("{action} {}", item.model.as_deref().unwrap_or("")).trim_end().to_owned(),
        "metadata": metadata(&item.id, item.seq, &item.received_at, item.tenant_id.as_ref(), item.trace_id.as_ref()),
        "actor": actor(item.user_id.as_ref(), item.session_id.as_ref()),
        "api": Value::Object(api),
        "cloud": { "provider": item.provider.as_deref().unwrap_or("unknown") },
        "src_endpoint": { "svc_name": item.service.as_deref().unwrap_or("unknown") },
        "unmapped": {
            "span_id": item.span_id,
            "gen_ai": {
                "provider": item.provider,
                "operation": item.operation,
                "request_model": item.request_model,
                "response_model": item.response_model,
                "model": item.model,
                "input_tokens": item.input_tokens,
                "output_tokens": item.output_tokens,
                "cache_read_tokens": item.cache_read_tokens,
                "cache_write_tokens": item.cache_write_tokens,
                "reasoning_tokens": item.reasoning_tokens,
                "total_tokens": item.total_tokens,
                "usage_known": item.usage_known,
                "cost_usd": item.cost_usd,
                "duration_ms": item.duration_ms,
            },
            "attributes": item.attributes,
        },
    });
    if let Some(duration) = item.duration_ms {
        event["duration"] = json!(duration.round() as i64);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_ids() {
        assert_eq!(authentication_activity("auth.login").0, 1);
        assert_eq!(authentication_activity("auth.sso.logout").0, 2);
        assert_eq!(authentication_activity("auth.mfa.verify").0, 99);
        assert_eq!(api_activity("doc.create").0, 1);
        assert_eq!(api_activity("doc.read").0, 2);
        assert_eq!(api_activity("doc.update").0, 3);
        assert_eq!(api_activity("doc.delete").0, 4);
        assert_eq!(api_activity("doc.share").0, 99);
        assert_eq!(status("failure"), (2, "Failure"));
        assert_eq!(severity("failure", true).0, 3);
        assert_eq!(severity("success", true).0, 1);
        assert!(super::super::is_authentication("auth"));
        assert!(!super::super::is_authentication("authz.check"));
    }
}
