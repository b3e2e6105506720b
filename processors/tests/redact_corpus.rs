//! The PII corpus (`tests/data/pii_corpus.json`) at the processor level: after
//! redaction no sensitive value appears anywhere in the request, near-misses
//! are intact, and each case's rule counted it.

mod redact_common;

use redact_common::{all_text, build, corpus, Request, KEY};
use tally_config::RedactConfig;
use tally_processors::redact::{RedactionCounts, Redactor, Rule};

fn redactor() -> Redactor {
    match Redactor::new(&RedactConfig::default(), KEY) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn redact(r: &Redactor, req: &mut Request) -> RedactionCounts {
    match req {
        Request::Traces(t) => r.redact_traces(t),
        Request::Logs(l) => r.redact_logs(l),
    }
}

fn rule_by_id(id: &str) -> Rule {
    match Rule::ALL.iter().find(|r| r.as_str() == id) {
        Some(rule) => *rule,
        None => panic!("unknown rule id {id}"),
    }
}

#[test]
fn corpus_has_at_least_100_cases_covering_every_rule() {
    let cases = corpus();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    for rule in ["ip", "content", "secret", "card", "email", "file"] {
        assert!(
            cases.iter().any(|c| c.rule.as_deref() == Some(rule)),
            "no case for {rule}"
        );
    }
    assert!(cases.iter().filter(|c| c.clean).count() >= 20);
}

#[test]
fn every_case_redacts_and_keeps() {
    let r = redactor();
    let mut failures = Vec::new();
    for case in corpus() {
        let original = build(&case);
        let mut req = original.clone();
        let counts = redact(&r, &mut req);
        let text = all_text(&req);
        for secret in &case.secret {
            if text.contains(secret.as_str()) {
                failures.push(format!("{}: raw {secret:?} survived", case.id));
            }
        }
        for keep in &case.keep {
            if !text.contains(keep.as_str()) {
                failures.push(format!("{}: {keep:?} was lost", case.id));
            }
        }
        if let Some(rule) = &case.rule {
            if counts.get(rule_by_id(rule)) == 0 {
                failures.push(format!("{}: rule {rule} not counted ({counts:?})", case.id));
            }
        }
        if case.clean {
            if !counts.is_empty() {
                failures.push(format!("{}: near-miss counted {counts:?}", case.id));
            }
            if all_text(&original) != text {
                failures.push(format!("{}: near-miss changed", case.id));
            }
        }
        // Idempotent: a second pass changes nothing and counts nothing.
        let mut again = req.clone();
        let second = redact(&r, &mut again);
        if !second.is_empty() || all_text(&again) != text {
            failures.push(format!("{}: second pass changed it ({second:?})", case.id));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What classification would store (the rows' JSON) holds no raw value either:
/// redaction runs before classify, as the pipeline does.
#[test]
fn classified_rows_hold_no_raw_value() {
    let r = redactor();
    let now = chrono::Utc::now();
    let mut failures = Vec::new();
    for case in corpus() {
        let mut req = build(&case);
        redact(&r, &mut req);
        let classified = match &req {
            Request::Traces(t) => tally_processors::classify_traces(t, now),
            Request::Logs(l) => tally_processors::classify_logs(l, now),
        };
        if classified.events.is_empty() {
            failures.push(format!("{}: nothing classified", case.id));
            continue;
        }
        let rows = serde_json::to_string(&classified.events).unwrap_or_default();
        for secret in &case.secret {
            let escaped = serde_json::to_string(secret).unwrap_or_default();
            let escaped = escaped.trim_matches('"');
            if rows.contains(secret.as_str()) || rows.contains(escaped) {
                failures.push(format!("{}: raw {secret:?} in the stored row", case.id));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The check above has teeth: without redaction the attribute cases leak into rows.
#[test]
fn without_redaction_rows_leak() {
    let now = chrono::Utc::now();
    let mut leaking = 0;
    let mut attribute_cases = 0;
    for case in corpus().iter().filter(|c| !c.clean) {
        let req = build(case);
        if matches!(
            case.place.as_str(),
            "resource" | "scope" | "span" | "log" | "log_resource"
        ) {
            attribute_cases += 1;
        }
        let classified = match &req {
            Request::Traces(t) => tally_processors::classify_traces(t, now),
            Request::Logs(l) => tally_processors::classify_logs(l, now),
        };
        let rows = serde_json::to_string(&classified.events).unwrap_or_default();
        if case.secret.iter().any(|s| {
            let escaped = serde_json::to_string(s).unwrap_or_default();
            rows.contains(s.as_str()) || rows.contains(escaped.trim_matches('"'))
        }) {
            leaking += 1;
        }
    }
    assert!(attribute_cases > 80, "{attribute_cases}");
    assert!(
        leaking >= attribute_cases,
        "{leaking} of {attribute_cases} attribute cases leak"
    );
}

/// All cases in two requests (one traces, one logs): nothing leaks across.
#[test]
fn whole_corpus_in_one_request() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let r = redactor();
    let cases = corpus();
    let mut traces = ExportTraceServiceRequest::default();
    let mut logs = ExportLogsServiceRequest::default();
    for case in &cases {
        match build(case) {
            Request::Traces(t) => traces.resource_spans.extend(t.resource_spans),
            Request::Logs(l) => logs.resource_logs.extend(l.resource_logs),
        }
    }
    let mut counts = r.redact_traces(&mut traces);
    counts.merge(&r.redact_logs(&mut logs));
    let text = all_text(&Request::Traces(traces)) + &all_text(&Request::Logs(logs));
    for case in &cases {
        for secret in &case.secret {
            assert!(
                !text.contains(secret.as_str()),
                "{}: {secret:?} survived",
                case.id
            );
        }
        for keep in &case.keep {
            assert!(text.contains(keep.as_str()), "{}: {keep:?} lost", case.id);
        }
    }
    for rule in ["ip", "content", "secret", "card", "email", "file"] {
        assert!(counts.get(rule_by_id(rule)) > 0, "{rule}: {counts:?}");
    }
}

#[test]
fn hashes_are_stable_and_keyed() {
    let a = redactor();
    let b = redactor();
    let other = match Redactor::new(&RedactConfig::default(), b"another-key-0123456789abcdef") {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let one = |r: &Redactor| r.redact_str("from 203.0.113.7").into_owned();
    assert_eq!(one(&a), one(&b));
    assert_ne!(one(&a), one(&other));
}
