use super::*;
use opentelemetry_proto::tonic::common::v1::{any_value, ArrayValue, InstrumentationScope};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn traces(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope::default()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn span(attributes: Vec<KeyValue>, status: Option<StatusCode>) -> Span {
    Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0xcd; 8],
        name: "POST /login".into(),
        start_time_unix_nano: 1_700_000_000_123_456_789,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        attributes,
        status: status.map(|code| Status {
            code: code as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

#[test]
fn span_with_action_becomes_event_field_by_field() {
    let request = traces(
        vec![s("service.name", "web"), s("tenant.id", "resource-tenant")],
        vec![span(
            vec![
                s("activity.action", "auth.login"),
                s("enduser.id", "u-1"),
                s("tenant.id", "t-1"),
                s("session.id", "sess-9"),
                s("activity.resource.type", "document"),
                s("activity.resource.id", "doc-7"),
                i("http.response.status_code", 200),
                s("custom", "kept"),
            ],
            None,
        )],
    );
    let out = classify_traces(&request, now());
    assert_eq!(out.without_action, 0);
    assert_eq!(out.events.len(), 1);
    let event = &out.events[0];
    assert_eq!(event.action, "auth.login");
    assert_eq!(event.user_id.as_deref(), Some("u-1"));
    assert_eq!(
        event.tenant_id.as_deref(),
        Some("t-1"),
        "record wins over resource"
    );
    assert_eq!(event.session_id.as_deref(), Some("sess-9"));
    assert_eq!(event.resource_type.as_deref(), Some("document"));
    assert_eq!(event.resource_id.as_deref(), Some("doc-7"));
    assert_eq!(event.service.as_deref(), Some("web"));
    assert_eq!(event.outcome, Outcome::Success);
    assert_eq!(
        event.trace_id.as_deref(),
        Some("abababababababababababababababab")
    );
    assert_eq!(event.span_id.as_deref(), Some("cdcdcdcdcdcdcdcd"));
    assert_eq!(
        event.ts.timestamp_nanos_opt(),
        Some(1_700_000_000_123_456_789)
    );
    assert_eq!(
        event.attributes.get("custom"),
        Some(&serde_json::json!("kept"))
    );
    assert_eq!(
        event.attributes.get("http.response.status_code"),
        Some(&serde_json::json!(200))
    );
    assert!(!event.attributes.contains_key("activity.action"));
    assert!(!event.attributes.contains_key("enduser.id"));
    assert_eq!(event.id, ids::span_event_id(&[0xab; 16], &[0xcd; 8]));
}

#[test]
fn outcome_rules() {
    let cases = [
        (
            vec![i("http.response.status_code", 503)],
            None,
            Outcome::Failure,
        ),
        (
            vec![i("http.response.status_code", 404)],
            Some(StatusCode::Unset),
            Outcome::Failure,
        ),
        (vec![s("http.status_code", "201")], None, Outcome::Success),
        (vec![], Some(StatusCode::Error), Outcome::Failure),
        (
            vec![i("http.response.status_code", 200)],
            Some(StatusCode::Error),
            Outcome::Failure,
        ),
        (vec![], Some(StatusCode::Ok), Outcome::Success),
        (vec![], None, Outcome::Unknown),
        (
            vec![s("activity.outcome", "FAILURE")],
            Some(StatusCode::Ok),
            Outcome::Failure,
        ),
    ];
    for (mut attributes, status, expected) in cases {
        attributes.push(s("activity.action", "x.y"));
        let out = classify_traces(
            &traces(vec![], vec![span(attributes.clone(), status)]),
            now(),
        );
        assert_eq!(out.events[0].outcome, expected, "{attributes:?} {status:?}");
    }
}

#[test]
fn records_without_action_are_counted_not_stored() {
    let request = traces(
        vec![],
        vec![
            span(vec![s("enduser.id", "u")], None),
            span(vec![s("event.name", "doc.view")], None),
        ],
    );
    let out = classify_traces(&request, now());
    assert_eq!(out.without_action, 1);
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].action, "doc.view");
}

#[test]
fn aliases_resolve_and_differing_losers_stay_in_attributes() {
    let request = traces(
        vec![],
        vec![span(
            vec![
                s("activity.action", "a.b"),
                s("user.id", "alias-user"),
                s("enduser.id", "main-user"),
                s("organization.id", "org-1"),
            ],
            None,
        )],
    );
    let event = &classify_traces(&request, now()).events[0];
    assert_eq!(event.user_id.as_deref(), Some("main-user"));
    assert_eq!(
        event.attributes.get("user.id"),
        Some(&serde_json::json!("alias-user"))
    );
    assert_eq!(event.tenant_id.as_deref(), Some("org-1"));
}

#[test]
fn an_action_of_any_shape_becomes_an_event_for_the_validator_to_quarantine() {
    let long = "a".repeat(300);
    let request = traces(
        vec![],
        vec![
            span(vec![s("activity.action", &long)], None),
            span(vec![s("activity.action", "bad\u{7}")], None),
        ],
    );
    let out = classify_traces(&request, now());
    let actions: Vec<&str> = out.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, [long.as_str(), "bad\u{7}"]);
}

#[test]
fn the_records_own_identity_wins_over_its_resources_whatever_the_spelling() {
    let request = traces(
        vec![
            s("enduser.id", "resource-user"),
            s("tenant.id", "resource-tenant"),
        ],
        vec![
            span(
                vec![
                    s("activity.action", "a.b"),
                    s("user.id", "record-user"),
                    s("organization.id", "record-tenant"),
                ],
                None,
            ),
            span(vec![s("activity.action", "a.c")], None),
        ],
    );
    for out in [
        classify_traces(&request, now()),
        classify_traces_taking(&mut request.clone(), now()),
    ] {
        let event = &out.events[0];
        assert_eq!(event.user_id.as_deref(), Some("record-user"));
        assert_eq!(event.tenant_id.as_deref(), Some("record-tenant"));
        // The resource's differing values stay, under their own names.
        assert_eq!(event.attributes["enduser.id"], "resource-user");
        assert_eq!(event.attributes["tenant.id"], "resource-tenant");
        // A record without its own: the resource's.
        let event = &out.events[1];
        assert_eq!(event.user_id.as_deref(), Some("resource-user"));
        assert_eq!(event.tenant_id.as_deref(), Some("resource-tenant"));
    }

    let logs = logs(vec![LogRecord {
        attributes: vec![
            s("activity.action", "a.b"),
            s("company.id", "record-tenant"),
        ],
        ..Default::default()
    }]);
    let mut logs = logs;
    if let Some(r) = logs.resource_logs[0].resource.as_mut() {
        r.attributes.push(s("tenant.id", "resource-tenant"));
    }
    let event = &classify_logs(&logs, now()).events[0];
    assert_eq!(event.tenant_id.as_deref(), Some("record-tenant"));
}

fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![s("service.name", "api")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn log_event_name_field_and_attribute_both_classify() {
    let by_field = LogRecord {
        event_name: "billing.invoice.paid".into(),
        time_unix_nano: 1_700_000_000_000_000_000,
        attributes: vec![s("user.id", "u-2")],
        ..Default::default()
    };
    let by_attribute = LogRecord {
        observed_time_unix_nano: 1_700_000_005_000_000_000,
        severity_number: 17,
        attributes: vec![s("event.name", "auth.logout"), s("company.id", "c-1")],
        ..Default::default()
    };
    let plain = LogRecord {
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("just a log".into())),
        }),
        ..Default::default()
    };
    let out = classify_logs(&logs(vec![by_field, by_attribute, plain]), now());
    assert_eq!(out.without_action, 1);
    assert_eq!(out.events.len(), 2);
    assert_eq!(out.events[0].action, "billing.invoice.paid");
    assert_eq!(out.events[0].user_id.as_deref(), Some("u-2"));
    assert_eq!(out.events[0].service.as_deref(), Some("api"));
    assert_eq!(out.events[0].trace_id, None);
    assert_eq!(out.events[1].action, "auth.logout");
    assert_eq!(out.events[1].tenant_id.as_deref(), Some("c-1"));
    assert_eq!(out.events[1].outcome, Outcome::Failure);
    assert_eq!(out.events[1].ts.timestamp(), 1_700_000_005);
    assert_ne!(out.events[0].id, out.events[1].id);
}

#[test]
fn event_name_attribute_that_is_not_the_action_is_kept() {
    let record = LogRecord {
        event_name: "billing.invoice.paid".into(),
        attributes: vec![s("event.name", "chat.message.sent")],
        ..Default::default()
    };
    let out = classify_logs(&logs(vec![record]), now());
    assert_eq!(out.events[0].action, "billing.invoice.paid");
    assert_eq!(
        out.events[0].attributes.get("event.name"),
        Some(&serde_json::json!("chat.message.sent"))
    );
}

#[test]
fn log_ids_are_stable_across_resends() {
    let record = LogRecord {
        event_name: "a.b".into(),
        time_unix_nano: 5,
        ..Default::default()
    };
    let first = classify_logs(&logs(vec![record.clone()]), now());
    let again = classify_logs(&logs(vec![record]), now());
    assert_eq!(first.events[0].id, again.events[0].id);
}

#[test]
fn a_records_own_event_id_attribute_sets_its_id() {
    let id = "0190a5c8-7f3e-7a1b-9c2d-1234567890ab";
    let given = LogRecord {
        event_name: "a.b".into(),
        attributes: vec![s("tally.event.id", id), s("k", "v")],
        ..Default::default()
    };
    let invalid = LogRecord {
        event_name: "a.b".into(),
        attributes: vec![s("tally.event.id", "not-a-uuid")],
        ..Default::default()
    };
    let out = classify_logs(&logs(vec![given, invalid]), now());
    assert_eq!(out.events[0].id.to_string(), id);
    assert_eq!(out.events[0].attributes.get("tally.event.id"), None);
    assert_eq!(
        out.events[0].attributes.get("k"),
        Some(&serde_json::json!("v"))
    );
    assert_ne!(out.events[1].id.to_string(), id);
    assert_eq!(
        out.events[1].attributes.get("tally.event.id"),
        Some(&serde_json::json!("not-a-uuid"))
    );
    // On the resource, it would name every record the same: it is not an id there.
    let mut shared = logs(vec![LogRecord {
        event_name: "a.b".into(),
        ..Default::default()
    }]);
    if let Some(resource) = shared.resource_logs[0].resource.as_mut() {
        resource.attributes.push(s("tally.event.id", id));
    }
    assert_ne!(classify_logs(&shared, now()).events[0].id.to_string(), id);
}

#[test]
fn missing_times_fall_back_to_received_at() {
    let mut no_time = span(vec![s("activity.action", "a.b")], None);
    no_time.start_time_unix_nano = 0;
    let out = classify_traces(&traces(vec![], vec![no_time]), now());
    assert_eq!(out.events[0].ts, now());
}

#[test]
fn attribute_values_convert_to_json() {
    let request = traces(
        vec![],
        vec![span(
            vec![
                s("activity.action", "a.b"),
                kv("flag", any_value::Value::BoolValue(true)),
                kv("ratio", any_value::Value::DoubleValue(0.5)),
                kv("nan", any_value::Value::DoubleValue(f64::NAN)),
                kv("blob", any_value::Value::BytesValue(vec![1, 255])),
                kv(
                    "list",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::IntValue(3)),
                        }],
                    }),
                ),
            ],
            None,
        )],
    );
    let attrs = &classify_traces(&request, now()).events[0].attributes;
    assert_eq!(attrs["flag"], serde_json::json!(true));
    assert_eq!(attrs["ratio"], serde_json::json!(0.5));
    assert_eq!(attrs["nan"], serde_json::json!("NaN"));
    assert_eq!(attrs["blob"], serde_json::json!("01ff"));
    assert_eq!(attrs["list"], serde_json::json!([3]));
}

#[test]
fn taking_classification_gives_the_same_events() {
    let mut second = span(
        vec![
            s("event.name", "doc.view"),
            s("user.id", "u-2"),
            s("tenant.id", "record-tenant"),
            i("http.response.status_code", 404),
            s("dup", "first"),
            s("dup", "second"),
        ],
        Some(StatusCode::Ok),
    );
    second.span_id = vec![0xce; 8];
    let mut request = traces(
        vec![
            s("service.name", "svc"),
            s("tenant.id", "resource-tenant"),
            s("deployment.environment.name", "prod"),
        ],
        vec![
            span(
                vec![
                    s("activity.action", " a.b "),
                    s("enduser.id", "main-user"),
                    s("user.id", "alias-user"),
                    s("session.id", "s-1"),
                    s("activity.resource.type", "doc"),
                    s("activity.resource.id", "d-1"),
                    s("event.name", "not.the.action"),
                    kv("flag", any_value::Value::BoolValue(true)),
                    kv("nan", any_value::Value::DoubleValue(f64::NAN)),
                    kv("blob", any_value::Value::BytesValue(vec![1, 255])),
                    kv(
                        "list",
                        any_value::Value::ArrayValue(ArrayValue {
                            values: vec![AnyValue {
                                value: Some(any_value::Value::StringValue("x".into())),
                            }],
                        }),
                    ),
                ],
                Some(StatusCode::Error),
            ),
            second,
            span(vec![s("no.action", "x")], None),
            span(vec![s("activity.action", "bad\u{7}")], None),
        ],
    );
    let copied = classify_traces(&request, now());
    let taken = classify_traces_taking(&mut request, now());
    assert_eq!(taken.events, copied.events);
    assert_eq!(taken.without_action, copied.without_action);
    assert_eq!(copied.events.len(), 3);
    assert_eq!(
        copied.events[1].attributes["dup"],
        serde_json::json!("second")
    );
}

fn event_of(
    name: &str,
    attributes: Vec<KeyValue>,
) -> opentelemetry_proto::tonic::trace::v1::span::Event {
    opentelemetry_proto::tonic::trace::v1::span::Event {
        name: name.into(),
        attributes,
        ..Default::default()
    }
}

#[test]
fn span_fills_duration_name_and_error_columns() {
    let mut failed = span(
        vec![
            s("activity.action", "doc.export"),
            s("error.type", "timeout"),
        ],
        Some(StatusCode::Error),
    );
    if let Some(status) = failed.status.as_mut() {
        status.message = "upstream timed out".into();
    }
    failed.events = vec![event_of(
        "exception",
        vec![
            s("exception.type", "TimeoutError"),
            s("exception.message", "from the event"),
        ],
    )];
    let mut from_event = span(vec![s("activity.action", "doc.export")], None);
    from_event.events = vec![
        event_of("retry", vec![s("exception.type", "not an exception event")]),
        event_of(
            "exception",
            vec![
                s("exception.type", "ValueError"),
                s("exception.message", "bad page size"),
            ],
        ),
    ];
    let mut plain = span(vec![s("activity.action", "doc.view")], None);
    plain.end_time_unix_nano = 0;
    plain.name = String::new();
    let request = traces(vec![], vec![failed, from_event, plain]);
    let out = classify_traces(&request, now());
    let [failed, from_event, plain] = &out.events[..] else {
        panic!("three events, got {}", out.events.len());
    };
    assert_eq!(failed.name.as_deref(), Some("POST /login"));
    // 1_700_000_001_000_000_000 − 1_700_000_000_123_456_789 ns.
    assert_eq!(failed.duration_ms, Some(876.543211));
    assert_eq!(
        failed.error_type.as_deref(),
        Some("timeout"),
        "error.type wins"
    );
    assert_eq!(
        failed.error_message.as_deref(),
        Some("upstream timed out"),
        "the status message wins"
    );
    assert_eq!(
        failed.attributes.get("error.type"),
        Some(&serde_json::json!("timeout")),
        "error.type stays an attribute"
    );
    assert_eq!(from_event.error_type.as_deref(), Some("ValueError"));
    assert_eq!(from_event.error_message.as_deref(), Some("bad page size"));
    assert_eq!(plain.name, None);
    assert_eq!(plain.duration_ms, None, "no end time, no duration");
    assert_eq!(plain.error_type, None);
    assert_eq!(plain.error_message, None);

    // Taking the attributes gives the same events.
    let mut taken = request.clone();
    let taken = classify_traces_taking(&mut taken, now());
    assert_eq!(taken.events, out.events);
}

#[test]
fn log_record_fills_name_and_error_columns() {
    let by_field = LogRecord {
        event_name: "payment.capture".into(),
        severity_number: 17,
        attributes: vec![
            s("exception.type", "CardDeclined"),
            s("exception.message", "card declined"),
        ],
        ..Default::default()
    };
    let by_attribute = LogRecord {
        attributes: vec![
            s("activity.action", "auth.login"),
            s("event.name", "login.attempt"),
            s("error.type", "invalid_password"),
            s("exception.type", "AuthError"),
        ],
        ..Default::default()
    };
    let out = classify_logs(&logs(vec![by_field, by_attribute]), now());
    let [by_field, by_attribute] = &out.events[..] else {
        panic!("two events, got {}", out.events.len());
    };
    assert_eq!(by_field.name.as_deref(), Some("payment.capture"));
    assert_eq!(by_field.duration_ms, None);
    assert_eq!(by_field.error_type.as_deref(), Some("CardDeclined"));
    assert_eq!(by_field.error_message.as_deref(), Some("card declined"));
    assert_eq!(by_attribute.action, "auth.login");
    assert_eq!(by_attribute.name.as_deref(), Some("login.attempt"));
    assert_eq!(by_attribute.error_type.as_deref(), Some("invalid_password"));
    assert_eq!(by_attribute.error_message, None);
}
