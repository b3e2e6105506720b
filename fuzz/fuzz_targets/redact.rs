//! The redactor on arbitrary text and attribute trees: never a panic, free text never
//! longer than `max_value_bytes`, redacted attributes stable under a second pass of
//! size caps (no value over the cap survives).
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
use tally_config::RedactConfig;
use tally_fuzz::{attributes, Attr, HMAC_KEY};
use tally_processors::redact::Redactor;

/// `max_value_bytes` of both redactors.
const MAX_VALUE: usize = 256;

#[derive(Debug, Arbitrary)]
struct Input {
    text: String,
    attributes: Vec<Attr>,
    allowlist: bool,
}

fn redactor(allowlist: bool) -> Redactor {
    let mut config = RedactConfig {
        max_value_bytes: MAX_VALUE,
        max_record_attributes_bytes: 2048,
        max_depth: 4,
        ..RedactConfig::default()
    };
    if allowlist {
        config.allowlist.enabled = true;
        config.allowlist.keys = vec!["user.*".into(), "http.request.header.*".into()];
    }
    match Redactor::new(&config, HMAC_KEY) {
        Ok(redactor) => redactor,
        Err(e) => panic!("fuzz redaction config is valid: {e}"),
    }
}

static PLAIN: LazyLock<Redactor> = LazyLock::new(|| redactor(false));
static ALLOWLIST: LazyLock<Redactor> = LazyLock::new(|| redactor(true));

fuzz_target!(|input: Input| {
    let redactor = if input.allowlist {
        &*ALLOWLIST
    } else {
        &*PLAIN
    };
    let text = redactor.redact_str(&input.text);
    assert!(
        text.len() <= MAX_VALUE,
        "free text {} bytes after redaction",
        text.len()
    );
    let mut attrs = attributes(&input.attributes, 0);
    redactor.redact_attributes(&mut attrs);
    for kv in &attrs {
        if let Some(V::StringValue(s)) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            assert!(
                s.len() <= MAX_VALUE.max(128),
                "{} bytes under {:?}",
                s.len(),
                kv.key
            );
        }
    }
});
