use super::*;

const KEY: &[u8] = b"unit-test-key-0123456789abcdef";

fn redactor() -> Redactor {
    match Redactor::new(&RedactConfig::default(), KEY) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn check(input: &str, expected: &str) {
    let r = redactor();
    let out = r.redact_str(input);
    assert_eq!(out, expected, "input: {input:?}");
    assert_eq!(r.redact_str(&out), out, "not idempotent: {input:?}");
}

#[test]
fn secrets_in_text() {
    check(
        "key sk-proj-abcdefghijklmnopqrstuvwxyz012345 here",
        "key [REDACTED:api_key] here",
    );
    check("AKIAIOSFODNN7EXAMPLE", "[REDACTED:api_key]");
    check(
        "Authorization: Bearer abcdef0123456789.xyz",
        "Authorization: Bearer [REDACTED:bearer]",
    );
    check(
        "db password=hunter2; ok",
        "db password=[REDACTED:secret]; ok",
    );
    check(
        r#"{"api_key": "abc\"def", "x": 1}"#,
        r#"{"api_key": "[REDACTED:secret]", "x": 1}"#,
    );
    check(
        "postgres://alice:s3cret@db.example.com:5432/app",
        "postgres://[REDACTED:url_credentials]@db.example.com:5432/app",
    );
    check(
        "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "t=[REDACTED:jwt]",
    );
    check(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- tail",
        "[REDACTED:private_key] tail",
    );
}

#[test]
fn cards_emails_ips() {
    check("card 4111 1111 1111 1111 exp", "card [REDACTED:card] exp");
    check("card 4111-1111-1111-1111", "card [REDACTED:card]");
    check("4111111111111112", "4111111111111112");
    check(
        "mail bob.smith+x@mail.example.co.uk!",
        "mail [REDACTED:email]!",
    );
    check("version 1.2.3.4-beta", "version 1.2.3.4-beta");
    check("v1.2.3.4", "v1.2.3.4");
    let out = redactor().redact_str("from 203.0.113.7 now");
    assert!(
        out.starts_with("from [ip:hmac:") && out.ends_with("] now"),
        "{out}"
    );
    check("1700000000000000000", "1700000000000000000");
    check(
        "123e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    );
}

#[test]
fn caps_value_length() {
    let r = redactor();
    let long = "word ".repeat(2000);
    let out = r.redact_str(&long);
    assert!(out.len() <= 4096, "{}", out.len());
    assert!(out.ends_with(MARK_TRUNCATED));
    assert_eq!(r.redact_str(&out), out);
}

#[test]
fn luhn_check() {
    assert!(scan::luhn(
        [4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1].into_iter()
    ));
    assert!(!scan::luhn(
        [4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2].into_iter()
    ));
}

#[test]
fn key_checks() {
    assert!(matches!(
        Redactor::new(&RedactConfig::default(), b"short"),
        Err(RedactError::KeyTooShort(5))
    ));
    let a = generate_key().unwrap_or_default();
    let b = generate_key().unwrap_or_default();
    assert_ne!(a, b);
}

#[test]
fn fragment_soup_is_idempotent_for_every_cap() {
    let s = "日本A__ a0 -0_::1alice@example.comip:hmac:0123456789abcdef]-----END PRIVATE KEY-----@::1 _@= _=A@a_=aaa=a_password=alice@example.com";
    for hash_emails in [false, true] {
        for max in 64..200 {
            let cfg = RedactConfig {
                max_value_bytes: max,
                hash_emails,
                ..RedactConfig::default()
            };
            let r = Redactor::new(&cfg, KEY).unwrap_or_else(|e| panic!("{e}"));
            let once = r.redact_str(s).into_owned();
            let twice = r.redact_str(&once).into_owned();
            assert_eq!(once, twice, "max {max} hash {hash_emails}");
        }
    }
}

#[test]
fn fragment_soup_regressions() {
    let inputs = [
        ("sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t@-aa_a=-a_ ==_-AA @ == 0A-----END PRIVATE KEY-----@=0_= sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t.A0AAa=A_A_user:pw@host.io[REDACTED:-a 0=user:pw@host.io://password= secret: ", 211, true),
        ("0_ =-A aAaBearer a0AA00=0A ___sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t=AAa0 0_=A_ip:hmac:0123456789abcdef_AAaa=A=_Ask-proj-Ab3dEf6hIj9kLm2nOp5qRs8txoxb-1234567890-abcip:hmac:0123456789abcdef\"api_key\": \"@", 206, false),
    ];
    for (s, max, hash_emails) in inputs {
        let cfg = RedactConfig {
            max_value_bytes: max,
            hash_emails,
            ..RedactConfig::default()
        };
        let r = Redactor::new(&cfg, KEY).unwrap_or_else(|e| panic!("{e}"));
        let once = r.redact_str(s).into_owned();
        let twice = r.redact_str(&once).into_owned();
        assert_eq!(once, twice, "\n{s}");
    }
}

#[test]
fn scanned_keys_are_idempotent() {
    let s = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t@-aa_a=-a_ ==_-AA @ == 0A-----END PRIVATE KEY-----@=0_= sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t.A0AAa=A_A_user:pw@host.io[REDACTED:-a 0=user:pw@host.io://password= secret: ";
    let cfg = RedactConfig {
        max_value_bytes: 211,
        max_record_attributes_bytes: 211,
        max_depth: 1,
        hash_emails: true,
        ..RedactConfig::default()
    };
    let r = Redactor::new(&cfg, KEY).unwrap_or_else(|e| panic!("{e}"));
    let mut attrs = vec![KeyValue {
        key: s.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(String::new())),
        }),
        ..Default::default()
    }];
    let c1 = r.redact_attributes(&mut attrs);
    let k1 = attrs[0].key.clone();
    let c2 = r.redact_attributes(&mut attrs);
    let k2 = attrs[0].key.clone();
    let direct = r.redact_str(s).into_owned();
    assert_eq!(k1, k2, "\n{c1:?}\n{c2:?}\ndirect: {direct}");
}

#[test]
fn cap_and_scan_settle() {
    let cases = [
        (
            "AKIAIOSFODNN7EXAMPLEuser:pw@host.io日本a-0aa日本password=A",
            79,
        ),
        (
            "4111 1111 1111 1111[REDACTED:AA0AA Aa-AA-=a=-  password=]password=.",
            64,
        ),
    ];
    for (s, max) in cases {
        for max in max..max + 40 {
            let cfg = RedactConfig {
                max_value_bytes: max,
                max_record_attributes_bytes: max,
                max_depth: 1,
                ..RedactConfig::default()
            };
            let r = Redactor::new(&cfg, KEY).unwrap_or_else(|e| panic!("{e}"));
            let once = r.redact_str(s).into_owned();
            assert!(once.len() <= max);
            let mut c = RedactionCounts::default();
            let twice = r.clean_text(&once, false, &mut c);
            assert_eq!(twice, None, "max {max}: {once}");
            assert!(c.is_empty(), "max {max}: {once} {c:?}");
        }
    }
}
