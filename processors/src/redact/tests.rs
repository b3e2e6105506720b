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
