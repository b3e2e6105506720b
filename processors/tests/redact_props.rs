//! Property tests: redaction never panics, is idempotent, and its output never
//! exceeds the caps (value length, record attribute bytes, nesting depth).

mod redact_common;

use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::span;
use proptest::prelude::*;
use redact_common::{base_span, kv, logs, traces, KEY};
use tally_config::RedactConfig;
use tally_processors::redact::{attribute_size, Redactor};

/// Pieces that trigger (or almost trigger) the detectors.
const FRAGMENTS: &[&str] = &[
    "alice@example.com",
    "@",
    "=",
    ":",
    "://",
    "user:pw@host.io",
    "password=",
    "secret: ",
    "\"api_key\": \"",
    "sk-",
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_1234567890abcdefghijABCDEFGHIJ123456",
    "xoxb-1234567890-abc",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "Bearer ",
    "-----BEGIN PRIVATE KEY-----\n",
    "-----END PRIVATE KEY-----",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "378282246310005",
    "192.168.1.1",
    "1.2.3.4-beta",
    "::1",
    "2001:db8::5",
    "fe80::",
    "12:30:45",
    "[REDACTED:",
    "[ip:hmac:",
    "]",
    "[TRUNCATED]",
    "ip:hmac:0123456789abcdef",
    " ",
    "\n",
    ".",
    "-",
    "é",
    "日本",
    "🦓",
    "0",
    "42",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(FRAGMENTS).prop_map(str::to_string),
                "[a-zA-Z0-9_.@:=/ -]{0,12}",
            ],
            0..24
        )
        .prop_map(|parts| parts.concat()),
        // Long values, to hit the value cap.
        ("[a-z ]{1,8}", 100usize..1200).prop_map(|(s, n)| s.repeat(n)),
    ]
}

const KEYS: &[&str] = &[
    "app.note",
    "client.address",
    "http.request.header.authorization",
    "db.password",
    "file.path",
    "upload.filename",
    "gen_ai.prompt.0.content",
    "input.value",
    "content",
    "message",
    "service.version",
    "url.full",
    "ip",
    "email",
    "nested",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => text(),
    ]
}

fn scalar() -> impl Strategy<Value = AnyValue> {
    prop_oneof![
        6 => text().prop_map(Value::StringValue),
        1 => any::<i64>().prop_map(Value::IntValue),
        1 => any::<bool>().prop_map(Value::BoolValue),
        1 => any::<f64>().prop_map(Value::DoubleValue),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::BytesValue),
    ]
    .prop_map(|v| AnyValue { value: Some(v) })
}

fn value() -> impl Strategy<Value = AnyValue> {
    scalar().prop_recursive(12, 96, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|values| AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values })),
            }),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kvs| AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: kvs.into_iter().map(|(k, v)| kv(&k, v)).collect(),
                })),
            }),
        ]
    })
}

fn attrs() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec((key(), value()).prop_map(|(k, v)| kv(&k, v)), 0..10)
}

fn config() -> impl Strategy<Value = RedactConfig> {
    (64usize..600, 0usize..3000, 1usize..5, any::<bool>()).prop_map(
        |(max_value, extra, depth, hash_emails)| RedactConfig {
            max_value_bytes: max_value,
            max_record_attributes_bytes: max_value + extra,
            max_depth: depth,
            hash_emails,
            ..RedactConfig::default()
        },
    )
}

fn redactor(config: &RedactConfig) -> Redactor {
    match Redactor::new(config, KEY) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn depth(v: &AnyValue) -> usize {
    match &v.value {
        Some(Value::ArrayValue(a)) => 1 + a.values.iter().map(depth).max().unwrap_or(0),
        Some(Value::KvlistValue(l)) => {
            1 + l
                .values
                .iter()
                .filter_map(|kv| kv.value.as_ref())
                .map(depth)
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// Checks every string (keys included) and every nesting against the caps.
fn check_value(v: &AnyValue, cfg: &RedactConfig) -> Result<(), TestCaseError> {
    prop_assert!(
        depth(v) <= cfg.max_depth,
        "depth {} > {}",
        depth(v),
        cfg.max_depth
    );
    match &v.value {
        Some(Value::StringValue(s)) => {
            prop_assert!(s.len() <= cfg.max_value_bytes, "value of {} bytes", s.len())
        }
        Some(Value::BytesValue(b)) => prop_assert!(b.len() <= cfg.max_value_bytes),
        Some(Value::ArrayValue(a)) => {
            for item in &a.values {
                check_value(item, cfg)?;
            }
        }
        Some(Value::KvlistValue(l)) => check_attrs(&l.values, cfg)?,
        _ => {}
    }
    Ok(())
}

fn check_attrs(kvs: &[KeyValue], cfg: &RedactConfig) -> Result<(), TestCaseError> {
    for kv in kvs {
        prop_assert!(
            kv.key.len() <= cfg.max_value_bytes,
            "key of {} bytes",
            kv.key.len()
        );
        if let Some(v) = &kv.value {
            check_value(v, cfg)?;
        }
    }
    Ok(())
}

fn size(kvs: &[KeyValue]) -> usize {
    kvs.iter().map(attribute_size).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn redact_str_never_panics_is_idempotent_and_capped(s in text(), cfg in config()) {
        let r = redactor(&cfg);
        let once = r.redact_str(&s).into_owned();
        prop_assert!(once.len() <= cfg.max_value_bytes);
        let twice = r.redact_str(&once).into_owned();
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn traces_idempotent_and_capped(
        resource in attrs(),
        scope in attrs(),
        span_attrs in attrs(),
        event_attrs in attrs(),
        name in text(),
        event_name in prop_oneof![Just("gen_ai.user.message".to_string()), text()],
        cfg in config(),
    ) {
        let r = redactor(&cfg);
        let mut sp = base_span();
        sp.name = name;
        sp.attributes = span_attrs;
        sp.events.push(span::Event { name: event_name, attributes: event_attrs, ..Default::default() });
        let mut req = traces(resource, scope, vec![sp]);
        r.redact_traces(&mut req);
        let once = req.clone();
        let second = r.redact_traces(&mut req);
        prop_assert_eq!(&req, &once);
        prop_assert!(second.is_empty(), "second pass counted {:?}", second);

        for rs in &once.resource_spans {
            let res = rs.resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
            check_attrs(res, &cfg)?;
            for ss in &rs.scope_spans {
                let sc = ss.scope.as_ref().map(|s| &s.attributes[..]).unwrap_or(&[]);
                check_attrs(sc, &cfg)?;
                for sp in &ss.spans {
                    prop_assert!(sp.name.len() <= cfg.max_value_bytes);
                    check_attrs(&sp.attributes, &cfg)?;
                    // The span's own `activity.action` is a needed key: outside the budget.
                    let record: usize = size(res) + size(sc) + size(&sp.attributes)
                        - size(&sp.attributes[..1.min(sp.attributes.len())]);
                    prop_assert!(record <= cfg.max_record_attributes_bytes,
                        "record attributes {} > {}", record, cfg.max_record_attributes_bytes);
                    for ev in &sp.events {
                        check_attrs(&ev.attributes, &cfg)?;
                        prop_assert!(size(&ev.attributes) <= cfg.max_record_attributes_bytes);
                    }
                }
            }
        }
    }

    #[test]
    fn logs_idempotent_and_capped(
        resource in attrs(),
        record_attrs in attrs(),
        body in value(),
        event_name in prop_oneof![Just("gen_ai.choice".to_string()), Just(String::new()), text()],
        cfg in config(),
    ) {
        let r = redactor(&cfg);
        let record = LogRecord { event_name, attributes: record_attrs, body: Some(body), ..Default::default() };
        let mut req = logs(resource, vec![record]);
        r.redact_logs(&mut req);
        let once = req.clone();
        let second = r.redact_logs(&mut req);
        prop_assert_eq!(&req, &once);
        prop_assert!(second.is_empty(), "second pass counted {:?}", second);
        for rl in &once.resource_logs {
            let res = rl.resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
            check_attrs(res, &cfg)?;
            for sl in &rl.scope_logs {
                for rec in &sl.log_records {
                    check_attrs(&rec.attributes, &cfg)?;
                    prop_assert!(size(res) + size(&rec.attributes) <= cfg.max_record_attributes_bytes);
                    if let Some(b) = &rec.body {
                        check_value(b, &cfg)?;
                    }
                }
            }
        }
    }
}

#[test]
fn scope_key_soup_regression() {
    let key = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t@-aa_a=-a_ ==_-AA @ == 0A-----END PRIVATE KEY-----@=0_= sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t.A0AAa=A_A_user:pw@host.io[REDACTED:-a 0=user:pw@host.io://password= secret: ";
    let cfg = RedactConfig {
        max_value_bytes: 211,
        max_record_attributes_bytes: 211,
        max_depth: 1,
        hash_emails: true,
        ..RedactConfig::default()
    };
    let r = redactor(&cfg);
    let mut sp = base_span();
    sp.name = String::new();
    sp.events.push(span::Event {
        name: "gen_ai.user.message".into(),
        ..Default::default()
    });
    let mut req = traces(
        vec![],
        vec![kv(
            key,
            AnyValue {
                value: Some(Value::StringValue(String::new())),
            },
        )],
        vec![sp],
    );
    let c1 = r.redact_traces(&mut req);
    let once = req.clone();
    let c2 = r.redact_traces(&mut req);
    assert_eq!(req, once, "{c1:?} {c2:?}");
}
