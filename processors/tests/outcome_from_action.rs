//! A record that says nothing of its outcome (no `activity.outcome`, no HTTP
//! status, no span status) takes it from its action: the last segment
//! (`auth.login.success`), else the one outcome the taxonomy declares for it.

use chrono::Utc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{
    status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use tally_config::{Taxonomy, TaxonomyHandle, ValidateMode};
use tally_model::{ActivityEvent, Outcome};
use tally_processors::classify::classify_traces;
use tally_processors::validate::Validator;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// One span with `action`, an optional HTTP status and an optional span status.
fn classify(action: &str, http_status: Option<i64>, status: Option<StatusCode>) -> ActivityEvent {
    let mut attributes = vec![
        kv("activity.action", Value::StringValue(action.into())),
        kv("enduser.id", Value::StringValue("u1".into())),
        kv("tenant.id", Value::StringValue("t1".into())),
    ];
    if let Some(code) = http_status {
        attributes.push(kv("http.response.status_code", Value::IntValue(code)));
    }
    let span = Span {
        trace_id: vec![3; 16],
        span_id: vec![4; 8],
        name: action.into(),
        start_time_unix_nano: 1_767_225_600_000_000_000,
        end_time_unix_nano: 1_767_225_600_100_000_000,
        attributes,
        status: status.map(|code| Status {
            code: code as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut classified = classify_traces(&request, Utc::now());
    assert_eq!(classified.events.len(), 1, "one activity event");
    classified.events.remove(0)
}

#[test]
fn the_last_segment_of_the_action_names_the_outcome_when_nothing_else_does() {
    assert_eq!(
        classify("auth.login.success", None, None).outcome,
        Outcome::Success
    );
    assert_eq!(
        classify("auth.login.failure", None, None).outcome,
        Outcome::Failure
    );
    assert_eq!(classify("auth.login", None, None).outcome, Outcome::Unknown);
    assert_eq!(
        classify("auth.success_page.view", None, None).outcome,
        Outcome::Unknown
    );
}

#[test]
fn a_status_the_record_carries_wins_over_the_action_name() {
    assert_eq!(
        classify("auth.login.success", Some(401), None).outcome,
        Outcome::Failure
    );
    assert_eq!(
        classify("auth.login.success", None, Some(StatusCode::Error)).outcome,
        Outcome::Failure
    );
    assert_eq!(
        classify("auth.login.failure", None, Some(StatusCode::Ok)).outcome,
        Outcome::Success
    );
}

#[test]
fn the_built_in_taxonomy_accepts_a_success_action_without_a_status() {
    let validator = Validator::new(TaxonomyHandle::fixed(
        Taxonomy::builtin(),
        ValidateMode::Lenient,
    ));
    let event = classify("auth.login.success", None, None);
    let batch = validator.validate_batch(vec![event]);
    assert_eq!(batch.stored.len(), 1);
    let checked = &batch.stored[0];
    assert_eq!(checked.taxonomy_valid, Some(true), "{:?}", checked.reason);
    assert_eq!(checked.event.outcome, Outcome::Success);
}

#[test]
fn the_one_outcome_a_taxonomy_declares_is_the_outcome_of_a_silent_record() {
    let registry = "version: 1\nactions:\n  report.export:\n    description: a report was exported\n    outcomes: [success]\n  report.view:\n    description: a report was viewed\n    outcomes: [success, failure]\n";
    let taxonomy = Taxonomy::from_yaml_str(registry).expect("registry parses");
    let validator = Validator::new(TaxonomyHandle::fixed(taxonomy, ValidateMode::Strict));
    let batch = validator.validate_batch(vec![
        classify("report.export", None, None),
        classify("report.view", None, None),
    ]);
    assert_eq!(batch.stored.len(), 1, "the declared outcome makes it valid");
    assert_eq!(batch.stored[0].event.action, "report.export");
    assert_eq!(batch.stored[0].event.outcome, Outcome::Success);
    assert_eq!(
        batch.quarantined.len(),
        1,
        "two outcomes allowed: nothing to infer"
    );
    assert_eq!(batch.quarantined[0].event.outcome, Outcome::Unknown);
}
