//! Rule toggles, allowlist, identity hashing, record cap, content events and
//! the free-text API, at the processor level.

mod redact_common;

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use redact_common::{base_span, int, logs, s, traces, KEY};
use tally_config::{AllowlistConfig, RedactConfig, RedactKeys, RedactRules};
use tally_processors::redact::{
    generate_key, RedactError, Redactor, Rule, MARK_API_KEY, MARK_CARD, MARK_CONTENT, MARK_EMAIL,
};

fn redactor(config: RedactConfig) -> Redactor {
    match Redactor::new(&config, KEY) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn text_of(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        }
    })
}

/// Redacts one span carrying `attrs`; returns its attributes and the counts.
fn span_attrs(
    r: &Redactor,
    attrs: Vec<KeyValue>,
) -> (Vec<KeyValue>, tally_processors::redact::RedactionCounts) {
    let mut sp = base_span();
    sp.attributes.extend(attrs);
    let mut req = traces(vec![], vec![], vec![sp]);
    let counts = r.redact_traces(&mut req);
    let attrs = req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .clone();
    (attrs, counts)
}

#[test]
fn token_counts_models_and_identity_survive_content_removal() {
    let r = redactor(RedactConfig::default());
    let (attrs, counts) = span_attrs(
        &r,
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.response.model", "gpt-4o-2024-08-06"),
            s("gen_ai.provider.name", "openai"),
            int("gen_ai.usage.input_tokens", 812),
            int("gen_ai.usage.output_tokens", 164),
            int("llm.usage.total_tokens", 976),
            s("gen_ai.prompt.0.content", "secret plan"),
            s("tenant.id", "acme"),
            s("enduser.id", "u-123"),
        ],
    );
    assert_eq!(
        text_of(&attrs, "gen_ai.request.model").as_deref(),
        Some("gpt-4o")
    );
    assert_eq!(
        text_of(&attrs, "gen_ai.response.model").as_deref(),
        Some("gpt-4o-2024-08-06")
    );
    assert_eq!(
        text_of(&attrs, "gen_ai.usage.input_tokens").as_deref(),
        Some("812")
    );
    assert_eq!(
        text_of(&attrs, "gen_ai.usage.output_tokens").as_deref(),
        Some("164")
    );
    assert_eq!(
        text_of(&attrs, "llm.usage.total_tokens").as_deref(),
        Some("976")
    );
    assert_eq!(
        text_of(&attrs, "gen_ai.prompt.0.content").as_deref(),
        Some(MARK_CONTENT)
    );
    assert_eq!(text_of(&attrs, "tenant.id").as_deref(), Some("acme"));
    assert_eq!(text_of(&attrs, "enduser.id").as_deref(), Some("u-123"));
    assert_eq!(counts.get(Rule::Content), 1);
    assert_eq!(counts.total(), 1);
}

#[test]
fn identity_email_is_a_stable_keyed_hash() {
    let r = redactor(RedactConfig::default());
    let (a, _) = span_attrs(&r, vec![s("enduser.id", "Alice@Example.com")]);
    let (b, _) = span_attrs(&r, vec![s("enduser.id", "alice@example.com")]);
    let hash = text_of(&a, "enduser.id").unwrap_or_default();
    assert!(
        hash.starts_with("email:hmac:") && hash.len() == 27,
        "{hash}"
    );
    assert_eq!(
        Some(hash),
        text_of(&b, "enduser.id"),
        "case-insensitive grouping"
    );
}

#[test]
fn each_rule_can_be_turned_off() {
    let attrs = || {
        vec![
            s("client.address", "203.0.113.7"),
            s("gen_ai.prompt", "the prompt"),
            s("app.key", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"),
            s("app.card", "4111 1111 1111 1111"),
            s("app.mail", "bob@example.com"),
            s("file.name", "plan.pdf"),
        ]
    };
    let all_on = redactor(RedactConfig::default());
    let (_, counts) = span_attrs(&all_on, attrs());
    for rule in [
        Rule::Ip,
        Rule::Content,
        Rule::Secret,
        Rule::Card,
        Rule::Email,
        Rule::File,
    ] {
        assert_eq!(counts.get(rule), 1, "{rule:?}: {counts:?}");
    }
    let all_off = redactor(RedactConfig {
        rules: RedactRules {
            ip: false,
            content: false,
            secrets: false,
            cards: false,
            emails: false,
            files: false,
        },
        ..RedactConfig::default()
    });
    let (kept, counts) = span_attrs(&all_off, attrs());
    assert!(counts.is_empty(), "{counts:?}");
    assert_eq!(
        text_of(&kept, "app.mail").as_deref(),
        Some("bob@example.com")
    );
    let disabled = redactor(RedactConfig {
        enabled: false,
        ..RedactConfig::default()
    });
    let (kept, counts) = span_attrs(&disabled, attrs());
    assert!(counts.is_empty());
    assert_eq!(
        text_of(&kept, "gen_ai.prompt").as_deref(),
        Some("the prompt")
    );
    assert_eq!(disabled.redact_str("bob@example.com"), "bob@example.com");
}

#[test]
fn hash_emails_option_and_markers() {
    let marker = redactor(RedactConfig::default());
    assert_eq!(
        marker.redact_str("to bob@example.com"),
        format!("to {MARK_EMAIL}")
    );
    let hashing = redactor(RedactConfig {
        hash_emails: true,
        ..RedactConfig::default()
    });
    let out = hashing.redact_str("to bob@example.com");
    assert!(
        out.starts_with("to [email:hmac:") && out.ends_with(']'),
        "{out}"
    );
    assert_eq!(hashing.redact_str(&out), out);
    assert_eq!(marker.redact_str("4111111111111111"), MARK_CARD);
}

#[test]
fn tally_api_keys_in_free_text_are_redacted_and_names_like_tally_api_stay() {
    let r = redactor(RedactConfig::default());
    let key = format!("tally_{}_{}", "0123456789abcdef", "a1".repeat(32));
    let text = format!("retrying with {key} for role tally_api");
    let redacted = r.redact_str(&text);
    assert!(!redacted.contains(&key), "{redacted}");
    assert!(redacted.contains(MARK_API_KEY), "{redacted}");
    assert!(redacted.ends_with("for role tally_api"), "{redacted}");
    // The lookup prefix alone (as in an audit subject) is not a secret.
    assert_eq!(
        r.redact_str("apikey/0123456789abcdef"),
        "apikey/0123456789abcdef"
    );
}

#[test]
fn allowlist_keeps_the_span_kind_markers_the_token_ledger_reads() {
    let r = redactor(RedactConfig {
        allowlist: AllowlistConfig {
            enabled: true,
            keys: vec!["http.route".into()],
        },
        ..RedactConfig::default()
    });
    let markers = tally_processors::tokens::ROLE_MARKERS;
    let (attrs, counts) = span_attrs(
        &r,
        markers
            .iter()
            .map(|key| s(key, "CHAIN"))
            .chain([s("app.drop", "x")])
            .collect(),
    );
    for key in markers {
        assert_eq!(text_of(&attrs, key).as_deref(), Some("CHAIN"), "{key}");
    }
    assert_eq!(text_of(&attrs, "app.drop"), None);
    assert_eq!(counts.get(Rule::Allowlist), 1);
}

#[test]
fn allowlist_keeps_listed_and_needed_keys_only() {
    let r = redactor(RedactConfig {
        allowlist: AllowlistConfig {
            enabled: true,
            keys: vec!["http.route".into(), "app.keep.*".into()],
        },
        ..RedactConfig::default()
    });
    let (attrs, counts) = span_attrs(
        &r,
        vec![
            s("http.route", "/users/{id}"),
            s("app.keep.one", "1"),
            s("app.drop", "x"),
            s("user.name", "Alice Example"),
            s("tenant.id", "acme"),
            int("gen_ai.usage.input_tokens", 5),
            s("service.name", "api"),
        ],
    );
    let keys: Vec<&str> = attrs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "activity.action",
            "http.route",
            "app.keep.one",
            "tenant.id",
            "gen_ai.usage.input_tokens",
            "service.name"
        ]
    );
    assert_eq!(counts.get(Rule::Allowlist), 2);
}

#[test]
fn record_cap_drops_late_attributes_and_keeps_needed_ones() {
    let r = redactor(RedactConfig {
        max_value_bytes: 1000,
        max_record_attributes_bytes: 2500,
        ..RedactConfig::default()
    });
    let big = "x".repeat(900);
    let mut sp = base_span();
    sp.attributes.extend([
        s("a.one", &big),
        s("a.two", &big),
        s("a.three", &big),
        s("tenant.id", "acme"),
    ]);
    let mut req = traces(vec![s("res.big", &big)], vec![], vec![sp]);
    let counts = r.redact_traces(&mut req);
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
    // 905 bytes of resource leave room for one 905-byte span attribute.
    assert_eq!(keys, ["activity.action", "a.one", "tenant.id"]);
    assert_eq!(span.dropped_attributes_count, 2);
    assert_eq!(counts.get(Rule::RecordCap), 2);
}

#[test]
fn value_and_depth_caps_are_counted() {
    let r = redactor(RedactConfig {
        max_depth: 2,
        ..RedactConfig::default()
    });
    let deep = redact_common::any(&serde_json::json!({"a": {"b": {"c": {"d": 1}}}}));
    let (attrs, counts) = span_attrs(
        &r,
        vec![
            KeyValue {
                key: "app.deep".into(),
                value: Some(deep),
                ..Default::default()
            },
            s("app.long", &"word ".repeat(2000)),
        ],
    );
    assert_eq!(counts.get(Rule::DepthCap), 1);
    assert_eq!(counts.get(Rule::ValueCap), 1);
    let long = text_of(&attrs, "app.long").unwrap_or_default();
    assert!(long.len() <= 4096 && long.ends_with("[TRUNCATED]"));
}

#[test]
fn content_log_records_lose_their_body_but_keep_usage() {
    let r = redactor(RedactConfig::default());
    let record = LogRecord {
        event_name: "gen_ai.client.inference.operation.details".into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue("the whole conversation".into())),
        }),
        attributes: vec![
            s("gen_ai.request.model", "claude-sonnet-4"),
            int("gen_ai.usage.input_tokens", 10),
            s(
                "gen_ai.input.messages",
                "[{\"role\":\"user\",\"content\":\"hi\"}]",
            ),
        ],
        ..Default::default()
    };
    let mut req = logs(vec![], vec![record]);
    let counts = r.redact_logs(&mut req);
    let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert!(matches!(
        rec.body.as_ref().and_then(|b| b.value.as_ref()),
        Some(Value::StringValue(s)) if s == MARK_CONTENT
    ));
    assert_eq!(
        text_of(&rec.attributes, "gen_ai.request.model").as_deref(),
        Some("claude-sonnet-4")
    );
    assert_eq!(
        text_of(&rec.attributes, "gen_ai.usage.input_tokens").as_deref(),
        Some("10")
    );
    assert_eq!(counts.get(Rule::Content), 2);
}

#[test]
fn extra_keys_from_config() {
    let r = redactor(RedactConfig {
        keys: RedactKeys {
            content: vec!["my.prompt".into()],
            ip: vec!["edge.viewer".into()],
            files: vec!["doc.*".into()],
            secrets: vec!["x.pin".into()],
            personal: Vec::new(),
        },
        ..RedactConfig::default()
    });
    let (attrs, counts) = span_attrs(
        &r,
        vec![
            s("my.prompt", "hello"),
            s("edge.viewer", "viewer-host-1"),
            s("doc.title", "Layoffs.docx"),
            s("x.pin", "1234"),
        ],
    );
    assert_eq!(text_of(&attrs, "my.prompt").as_deref(), Some(MARK_CONTENT));
    assert!(text_of(&attrs, "edge.viewer").is_some_and(|v| v.starts_with("ip:hmac:")));
    assert!(text_of(&attrs, "doc.title")
        .is_some_and(|v| v.starts_with("file:hmac:") && v.ends_with(".docx")));
    assert_eq!(
        text_of(&attrs, "x.pin").as_deref(),
        Some("[REDACTED:secret]")
    );
    assert_eq!(counts.total(), 4);
}

#[test]
fn redact_str_for_tally_messages() {
    let r = redactor(RedactConfig::default());
    let msg = "export from 198.51.100.4 failed: password=hunter2 for carol@example.com";
    let out = r.redact_str(msg);
    assert!(!out.contains("198.51.100.4") && !out.contains("hunter2") && !out.contains("carol@"));
    assert!(out.starts_with("export from [ip:hmac:"), "{out}");
    assert_eq!(r.redact_str("nothing to see"), "nothing to see");
    assert!(matches!(
        r.redact_str("nothing to see"),
        std::borrow::Cow::Borrowed(_)
    ));
}

#[test]
fn keys_and_errors() {
    assert!(matches!(
        Redactor::new(&RedactConfig::default(), b"too-short"),
        Err(RedactError::KeyTooShort(9))
    ));
    assert!(matches!(
        Redactor::new(
            &RedactConfig {
                max_depth: 0,
                ..RedactConfig::default()
            },
            KEY
        ),
        Err(RedactError::Config {
            key: "max_depth",
            ..
        })
    ));
    assert!(Redactor::new(
        &RedactConfig {
            enabled: false,
            ..RedactConfig::default()
        },
        b""
    )
    .is_ok_and(|r| !r.enabled()));
    let key = match generate_key() {
        Ok(key) => key,
        Err(e) => panic!("{e}"),
    };
    assert!(Redactor::new(&RedactConfig::default(), &key).is_ok());
    let r = redactor(RedactConfig::default());
    let shared = std::sync::Arc::new(r);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let r = shared.clone();
            std::thread::spawn(move || r.redact_str("a@b.io").into_owned())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap_or_default(), MARK_EMAIL);
    }
}

#[test]
fn counts_reach_the_metrics_registry() {
    tally_processors::redact::init_metric_series();
    let r = redactor(RedactConfig::default());
    let (_, counts) = span_attrs(&r, vec![s("app.mail", "zed@example.com")]);
    counts.record_metrics();
    let family = &tally_processors::metrics::metrics().redactions;
    let email = family
        .get_or_create(&tally_processors::metrics::RuleLabels {
            rule: "email".into(),
        })
        .get();
    assert!(email >= 1);
}

#[test]
fn keep_keys_survive_allowlist_and_content_rules() {
    let r = redactor(RedactConfig {
        allowlist: AllowlistConfig {
            enabled: true,
            keys: vec![],
        },
        ..RedactConfig::default()
    })
    .keep_keys(&["myapp.tokens.*".into(), "input.value".into()]);
    let (attrs, _) = span_attrs(
        &r,
        vec![
            int("myapp.tokens.in", 7),
            s("input.value", "kept on purpose"),
            s("app.other", "dropped"),
        ],
    );
    assert_eq!(text_of(&attrs, "myapp.tokens.in").as_deref(), Some("7"));
    assert_eq!(
        text_of(&attrs, "input.value").as_deref(),
        Some("kept on purpose")
    );
    assert_eq!(text_of(&attrs, "app.other"), None);
}
