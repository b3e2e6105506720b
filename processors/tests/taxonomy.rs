//! Taxonomy validation: action shapes, declarations, outcomes, required fields
//! and attributes, attribute schemas, and each mode's decision.

use chrono::Utc;
use serde_json::{json, Map, Value};
use tally_config::{Taxonomy, TaxonomyHandle, ValidateConfig, ValidateMode};
use tally_model::{ActivityEvent, Outcome};
use tally_processors::validate::{check, decide, ModeDecision, ReasonCode, Validator, Verdict};

const REGISTRY: &str = r#"
version: 1
actions:
  auth.login.success:
    description: A user signed in.
    outcomes: [success]
    required: [auth.method]
    required_fields: [user_id]
    attributes:
      auth.method: { type: string, enum: [password, sso] }
      auth.attempts: { type: integer, minimum: 1, maximum: 10 }
      auth.mfa: { type: boolean }
      auth.note: { type: string, min_length: 2, max_length: 5 }
      auth.score: { type: number, minimum: 0.5 }
      auth.level: { type: integer, enum: [1, 2, 3] }
      auth.tags: { type: array, max_items: 2, items: { type: string, max_length: 3 } }
      auth.device:
        type: object
        required: [os]
        properties:
          os: { type: string, enum: [linux, mac] }
          version: { type: object, properties: { major: { type: integer } } }
  auth.logout:
    description: legacy two-segment name
  billing.*:
    description: every billing action
    attributes:
      billing.amount: { type: number, minimum: 0 }
"#;

fn taxonomy() -> Taxonomy {
    Taxonomy::from_yaml_str(REGISTRY).expect("registry parses")
}

fn event(action: &str, outcome: Outcome, attributes: Value) -> ActivityEvent {
    let attributes: Map<String, Value> = match attributes {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    ActivityEvent {
        id: uuid::Uuid::new_v4(),
        ts: Utc::now(),
        tenant_id: Some("t1".into()),
        user_id: Some("u1".into()),
        session_id: None,
        action: action.into(),
        outcome,
        resource_type: None,
        resource_id: None,
        service: Some("web".into()),
        trace_id: None,
        span_id: None,
        attributes,
        taxonomy_valid: None,
        taxonomy_reason: None,
        duration_ms: None,
        name: None,
        error_type: None,
        error_message: None,
    }
}

fn login(attributes: Value) -> ActivityEvent {
    event("auth.login.success", Outcome::Success, attributes)
}

/// The reason of an invalid verdict (panics on any other verdict).
fn invalid(verdict: Verdict) -> (ReasonCode, String) {
    match verdict {
        Verdict::Invalid { reason } => (reason.code, reason.message),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_conforming_event_is_valid() {
    let t = taxonomy();
    let e = login(json!({
        "auth.method": "sso", "auth.attempts": 3, "auth.mfa": true, "auth.note": "ok",
        "auth.score": 0.5, "auth.level": 2, "auth.tags": ["a", "bc"],
        "auth.device": { "os": "linux", "version": { "major": 6 }, "extra": [1] },
        "undeclared.attribute": { "anything": "goes" }
    }));
    assert_eq!(check(&t, &e), Verdict::Valid);
    // Whole doubles are integers; legacy and family names resolve.
    assert_eq!(
        check(
            &t,
            &login(json!({"auth.method": "sso", "auth.attempts": 2.0}))
        ),
        Verdict::Valid
    );
    assert_eq!(
        check(&t, &event("auth.logout", Outcome::Unknown, json!({}))),
        Verdict::Valid
    );
    assert_eq!(
        check(
            &t,
            &event(
                "billing.invoice.pay",
                Outcome::Failure,
                json!({"billing.amount": 12.5})
            )
        ),
        Verdict::Valid
    );
}

#[test]
fn malformed_names_are_malformed_before_anything_else() {
    let t = taxonomy();
    for name in [
        "login",
        "Auth.Login.Success",
        "auth..login",
        "auth.login.",
        "auth.log-in",
        "",
        "auth.lögin",
    ] {
        match check(&t, &event(name, Outcome::Success, json!({}))) {
            Verdict::Malformed { reason } => {
                assert_eq!(reason.code, ReasonCode::MalformedAction, "{name:?}");
                assert!(!reason.message.is_empty());
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }
    let long = format!("auth.{}", "x".repeat(124));
    assert_eq!(long.len(), 129);
    assert!(matches!(
        check(&t, &event(&long, Outcome::Success, json!({}))),
        Verdict::Malformed { .. }
    ));
    let longest = format!("auth.{}", "x".repeat(123));
    assert!(matches!(
        check(&t, &event(&longest, Outcome::Success, json!({}))),
        Verdict::Unknown { .. }
    ));
}

#[test]
fn undeclared_actions_are_unknown() {
    let t = taxonomy();
    for name in [
        "auth.login.failure",
        "auth.login",
        "billing",
        "chat.message.send",
    ] {
        let verdict = check(&t, &event(name, Outcome::Success, json!({})));
        match &verdict {
            Verdict::Unknown { reason } if name != "billing" => {
                assert_eq!(reason.code, ReasonCode::UnknownAction)
            }
            Verdict::Malformed { .. } if name == "billing" => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn outcome_required_fields_and_attributes() {
    let t = taxonomy();
    let mut e = event(
        "auth.login.success",
        Outcome::Failure,
        json!({"auth.method": "sso"}),
    );
    let (code, message) = invalid(check(&t, &e));
    assert_eq!(code, ReasonCode::OutcomeNotAllowed);
    assert!(
        message.contains("outcome failure is not allowed") && message.contains("success"),
        "{message}"
    );

    e.outcome = Outcome::Success;
    e.user_id = None;
    let (code, message) = invalid(check(&t, &e));
    assert_eq!(code, ReasonCode::MissingField);
    assert!(message.starts_with("user_id: required"), "{message}");
    e.user_id = Some(String::new());
    assert_eq!(invalid(check(&t, &e)).0, ReasonCode::MissingField);

    let (code, message) = invalid(check(&t, &login(json!({}))));
    assert_eq!(code, ReasonCode::MissingAttribute);
    assert_eq!(
        message,
        "attributes.auth.method: required by auth.login.success, missing"
    );
    assert_eq!(
        invalid(check(&t, &login(json!({"auth.method": null})))).0,
        ReasonCode::MissingAttribute
    );
}

#[test]
fn attribute_schema_rules() {
    let t = taxonomy();
    let cases: Vec<(Value, ReasonCode, &str)> = vec![
        (
            json!({"auth.attempts": "3"}),
            ReasonCode::WrongType,
            "attributes.auth.attempts: expected integer, got string",
        ),
        (
            json!({"auth.attempts": 2.5}),
            ReasonCode::WrongType,
            "attributes.auth.attempts: expected integer, got number",
        ),
        (
            json!({"auth.mfa": "true"}),
            ReasonCode::WrongType,
            "attributes.auth.mfa: expected boolean, got string",
        ),
        (
            json!({"auth.score": true}),
            ReasonCode::WrongType,
            "attributes.auth.score: expected number, got boolean",
        ),
        (
            json!({"auth.tags": "a"}),
            ReasonCode::WrongType,
            "attributes.auth.tags: expected array, got string",
        ),
        (
            json!({"auth.device": ["linux"]}),
            ReasonCode::WrongType,
            "attributes.auth.device: expected object, got array",
        ),
        (
            json!({"auth.method": 1}),
            ReasonCode::WrongType,
            "attributes.auth.method: expected string, got integer",
        ),
        (
            json!({"auth.method": "magic"}),
            ReasonCode::NotInEnum,
            "attributes.auth.method: not one of the allowed values (password, sso)",
        ),
        (
            json!({"auth.level": 4}),
            ReasonCode::NotInEnum,
            "attributes.auth.level: not one of the allowed values (1, 2, 3)",
        ),
        (
            json!({"auth.note": "toolong"}),
            ReasonCode::TooLong,
            "attributes.auth.note: 7 characters, at most 5 allowed",
        ),
        (
            json!({"auth.note": "x"}),
            ReasonCode::TooShort,
            "attributes.auth.note: 1 characters, at least 2 required",
        ),
        (
            json!({"auth.attempts": 0}),
            ReasonCode::OutOfRange,
            "attributes.auth.attempts: outside the allowed range 1..=10",
        ),
        (
            json!({"auth.attempts": 11}),
            ReasonCode::OutOfRange,
            "attributes.auth.attempts: outside the allowed range 1..=10",
        ),
        (
            json!({"auth.score": 0.25}),
            ReasonCode::OutOfRange,
            "attributes.auth.score: outside the allowed range 0.5..=…",
        ),
        (
            json!({"auth.tags": ["a", "b", "c"]}),
            ReasonCode::TooManyItems,
            "attributes.auth.tags: 3 items, at most 2 allowed",
        ),
        (
            json!({"auth.tags": ["a", "long"]}),
            ReasonCode::TooLong,
            "attributes.auth.tags[1]: 4 characters, at most 3 allowed",
        ),
        (
            json!({"auth.tags": [1]}),
            ReasonCode::WrongType,
            "attributes.auth.tags[0]: expected string, got integer",
        ),
        (
            json!({"auth.device": {}}),
            ReasonCode::MissingAttribute,
            "attributes.auth.device.os: required, missing",
        ),
        (
            json!({"auth.device": {"os": "win"}}),
            ReasonCode::NotInEnum,
            "attributes.auth.device.os: not one of the allowed values (linux, mac)",
        ),
        (
            json!({"auth.device": {"os": "mac", "version": {"major": "6"}}}),
            ReasonCode::WrongType,
            "attributes.auth.device.version.major: expected integer, got string",
        ),
    ];
    // Lengths count characters, not bytes.
    let five = login(json!({"auth.method": "sso", "auth.note": "ééééé"}));
    assert_eq!(check(&t, &five), Verdict::Valid);
    for (mut attributes, code, message) in cases {
        if attributes.get("auth.method").is_none() {
            attributes["auth.method"] = json!("sso");
        }
        let verdict = check(&t, &login(attributes.clone()));
        let (got_code, got_message) = invalid(verdict);
        assert_eq!(
            (got_code, got_message.as_str()),
            (code, message),
            "{attributes}"
        );
    }
}

#[test]
fn reasons_never_echo_attribute_values() {
    let t = taxonomy();
    let secret = "s3cr3t-value-xyz";
    for attributes in [
        json!({"auth.method": secret}),
        json!({"auth.method": "sso", "auth.note": secret}),
        json!({"auth.method": "sso", "auth.attempts": secret}),
    ] {
        let (_, message) = invalid(check(&t, &login(attributes)));
        assert!(!message.contains(secret), "{message}");
    }
    match check(&t, &event("auth.Secret.x", Outcome::Success, json!({}))) {
        Verdict::Malformed { reason } => {
            assert!(!reason.message.contains("Secret"), "{}", reason.message)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn several_problems_keep_the_first_code_and_count_the_rest() {
    let t = taxonomy();
    let mut e = login(json!({
        "auth.method": "nope", "auth.attempts": 99, "auth.mfa": 1, "auth.note": "way too long", "auth.level": 9
    }));
    e.outcome = Outcome::Unknown;
    let (code, message) = invalid(check(&t, &e));
    assert_eq!(code, ReasonCode::OutcomeNotAllowed);
    assert_eq!(message.matches("; ").count(), 2, "{message}");
    assert!(message.ends_with("(and 3 more)"), "{message}");
}

#[test]
fn each_mode_decides() {
    use ValidateMode::*;
    let t = taxonomy();
    let valid = login(json!({"auth.method": "sso"}));
    let unknown = event("chat.message.send", Outcome::Success, json!({}));
    let bad = login(json!({"auth.method": "magic"}));
    let malformed = event("Login", Outcome::Success, json!({}));

    for mode in [Off, Lenient, Strict] {
        assert_eq!(
            decide(mode, check(&t, &valid)),
            ModeDecision::Store,
            "{mode:?}"
        );
        assert!(
            matches!(decide(mode, check(&t, &malformed)),
            ModeDecision::Quarantine { reason } if reason.code == ReasonCode::MalformedAction),
            "{mode:?}"
        );
    }
    assert_eq!(decide(Off, check(&t, &unknown)), ModeDecision::Store);
    assert_eq!(decide(Off, check(&t, &bad)), ModeDecision::Store);
    assert!(matches!(decide(Lenient, check(&t, &unknown)),
        ModeDecision::StoreFlagged { reason } if reason.code == ReasonCode::UnknownAction));
    assert!(matches!(decide(Lenient, check(&t, &bad)),
        ModeDecision::StoreFlagged { reason } if reason.code == ReasonCode::NotInEnum));
    assert!(matches!(decide(Strict, check(&t, &unknown)),
        ModeDecision::Quarantine { reason } if reason.code == ReasonCode::UnknownAction));
    assert!(matches!(decide(Strict, check(&t, &bad)),
        ModeDecision::Quarantine { reason } if reason.code == ReasonCode::NotInEnum));
}

#[test]
fn validator_batches_by_mode() {
    let events = vec![
        login(json!({"auth.method": "sso"})),
        event("chat.message.send", Outcome::Success, json!({})),
        event("NotDotted", Outcome::Success, json!({})),
        login(json!({"auth.method": "magic"})),
        event("auth.logout", Outcome::Success, json!({})),
    ];
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();

    let strict = Validator::new(TaxonomyHandle::fixed(taxonomy(), ValidateMode::Strict));
    let batch = strict.validate_batch(events.clone());
    assert_eq!(
        batch.stored.iter().map(|c| c.event.id).collect::<Vec<_>>(),
        [ids[0], ids[4]]
    );
    assert!(batch
        .stored
        .iter()
        .all(|c| c.taxonomy_valid == Some(true) && c.reason.is_none()));
    assert_eq!(
        batch
            .quarantined
            .iter()
            .map(|q| q.event.id)
            .collect::<Vec<_>>(),
        [ids[1], ids[2], ids[3]]
    );
    let counts = batch.quarantined_by_reason();
    assert_eq!(counts.get(&ReasonCode::UnknownAction), Some(&1));
    assert_eq!(counts.get(&ReasonCode::MalformedAction), Some(&1));
    assert_eq!(counts.get(&ReasonCode::NotInEnum), Some(&1));
    let message = batch.partial_success_message().expect("message");
    assert!(message.starts_with("3 records quarantined by the taxonomy (malformed_action: 1, unknown_action: 1, not_in_enum: 1); first: unknown_action"), "{message}");
    let record = batch.quarantined[0].record_json();
    assert_eq!(record["reason"]["code"], "unknown_action");
    assert_eq!(record["event"]["action"], "chat.message.send");
    let back: ActivityEvent = serde_json::from_value(record["event"].clone()).expect("replayable");
    assert_eq!(back, batch.quarantined[0].event);

    let lenient = Validator::new(TaxonomyHandle::fixed(taxonomy(), ValidateMode::Lenient));
    let batch = lenient.validate_batch(events.clone());
    assert_eq!(batch.stored.len(), 4);
    assert_eq!(batch.flagged(), 2);
    assert_eq!(batch.quarantined.len(), 1);
    assert_eq!(batch.quarantined[0].event.id, ids[2]);
    assert_eq!(batch.stored[1].taxonomy_valid, Some(false));
    assert_eq!(
        batch.stored[1].reason.as_ref().map(|r| r.code),
        Some(ReasonCode::UnknownAction)
    );
    assert_eq!(
        batch
            .partial_success_message()
            .as_deref()
            .map(|m| m.starts_with("1 record quarantined")),
        Some(true)
    );

    let off = Validator::new(TaxonomyHandle::fixed(taxonomy(), ValidateMode::Off));
    let batch = off.validate_batch(events);
    assert_eq!(batch.stored.len(), 4);
    assert!(batch
        .stored
        .iter()
        .all(|c| c.taxonomy_valid.is_none() && c.reason.is_none()));
    assert_eq!(batch.quarantined.len(), 1);
    assert_eq!(
        batch.quarantined[0].reason.code,
        ReasonCode::MalformedAction
    );

    let all_valid = Validator::new(TaxonomyHandle::fixed(taxonomy(), ValidateMode::Strict))
        .validate_batch(vec![login(json!({"auth.method": "sso"}))]);
    assert_eq!(all_valid.partial_success_message(), None);
}

#[test]
fn default_config_is_lenient_on_the_builtin_registry() {
    let validator =
        Validator::new(TaxonomyHandle::load(&ValidateConfig::default()).expect("builtin"));
    assert_eq!(validator.mode(), ValidateMode::Lenient);
    let known = event(
        "auth.login.success",
        Outcome::Success,
        json!({"auth.method": "sso"}),
    );
    assert_eq!(validator.decide(&known), ModeDecision::Store);
    let legacy = event("auth.login", Outcome::Failure, json!({}));
    assert_eq!(validator.decide(&legacy), ModeDecision::Store);
    let unknown = event("custom.widget.click", Outcome::Success, json!({}));
    assert!(matches!(
        validator.decide(&unknown),
        ModeDecision::StoreFlagged { .. }
    ));
}

#[test]
fn reason_codes_are_a_closed_vocabulary() {
    let mut labels: Vec<&str> = ReasonCode::ALL.iter().map(|c| c.as_str()).collect();
    for label in &labels {
        assert!(
            label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{label}"
        );
        assert_eq!(ReasonCode::parse(label).map(|c| c.as_str()), Some(*label));
    }
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), ReasonCode::ALL.len());
    assert_eq!(ReasonCode::parse("other"), None);
}
