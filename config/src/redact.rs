//! `processors.redact`: PII scrubbing (see `docs/privacy.md`).
//!
//! ```yaml
//! processors:
//!   redact:
//!     enabled: true                 # default true
//!     hmac_key: ${env:TALLY_HMAC_KEY}
//!     rules: { ip: true, content: true, secrets: true, cards: true, emails: true, files: true }
//!     hash_emails: false            # true: emails become a keyed hash instead of a marker
//!     max_value_bytes: 4096
//!     max_record_attributes_bytes: 16384
//!     max_depth: 8
//!     keys: { content: [], ip: [], files: [], secrets: [], personal: [] }   # extra keys per rule (`prefix.*` allowed)
//!     allowlist: { enabled: false, keys: [] }
//! ```

use serde::{Deserialize, Serialize};

use crate::KeyError;

/// `processors.redact` (PII scrubbing). On by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactConfig {
    /// `false`: records pass unredacted (the default is `true`).
    pub enabled: bool,
    /// Key for the keyed hashes (HMAC-SHA256) of IP addresses, file names and
    /// identity emails; its UTF-8 bytes are the key (at least 16 bytes). Unset:
    /// Tally generates one and keeps it in the database.
    pub hmac_key: Option<String>,
    /// Each rule can be turned off.
    pub rules: RedactRules,
    /// Emails outside identity keys become `[email:hmac:…]` instead of `[REDACTED:email]`.
    pub hash_emails: bool,
    /// String values are cut to this many bytes, marker included (default 4096).
    pub max_value_bytes: usize,
    /// Attribute bytes (keys and values) per record, resource and scope included (default 16384).
    pub max_record_attributes_bytes: usize,
    /// Nesting depth of arrays and maps inside an attribute value (default 8).
    pub max_depth: usize,
    /// Extra attribute keys per rule.
    pub keys: RedactKeys,
    /// Keep only the listed attribute keys (and the ones Tally needs).
    pub allowlist: AllowlistConfig,
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            enabled: true,
            hmac_key: None,
            rules: RedactRules::default(),
            hash_emails: false,
            max_value_bytes: 4096,
            max_record_attributes_bytes: 16 * 1024,
            max_depth: 8,
            keys: RedactKeys::default(),
            allowlist: AllowlistConfig::default(),
        }
    }
}

impl RedactConfig {
    /// Smallest accepted `max_value_bytes` (room for a marker).
    pub const MIN_VALUE_BYTES: usize = 64;

    /// Checks the values serde cannot; returns the offending key (relative to
    /// `processors.redact`) and why.
    pub fn check(&self) -> Result<(), KeyError<&'static str>> {
        if self.max_value_bytes < Self::MIN_VALUE_BYTES {
            return Err(KeyError::new(
                "max_value_bytes",
                format!("must be at least {}", Self::MIN_VALUE_BYTES),
            ));
        }
        if self.max_record_attributes_bytes < self.max_value_bytes {
            return Err(KeyError::new(
                "max_record_attributes_bytes",
                "must be at least max_value_bytes".into(),
            ));
        }
        if self.max_depth == 0 {
            return Err(KeyError::new("max_depth", "must be at least 1".into()));
        }
        if let Some(key) = &self.hmac_key {
            if !key.is_empty() && key.len() < 16 {
                return Err(KeyError::new(
                    "hmac_key",
                    "must be at least 16 bytes".into(),
                ));
            }
        }
        Ok(())
    }

    /// The configured key, if any (an empty string counts as none).
    pub fn hmac_key_bytes(&self) -> Option<&[u8]> {
        self.hmac_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(str::as_bytes)
    }
}

/// `processors.redact.rules`: every rule is on by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactRules {
    /// `ip`: IP addresses → keyed hash.
    pub ip: bool,
    /// `content`: prompt/completion/message content → dropped.
    pub content: bool,
    /// `secret`: API keys, tokens, JWTs, private keys, passwords, URL credentials.
    pub secrets: bool,
    /// `card`: Luhn-valid payment card numbers.
    pub cards: bool,
    /// `email`: email addresses.
    pub emails: bool,
    /// `file`: file names and paths → keyed hash, extension kept.
    pub files: bool,
}

impl Default for RedactRules {
    fn default() -> Self {
        RedactRules {
            ip: true,
            content: true,
            secrets: true,
            cards: true,
            emails: true,
            files: true,
        }
    }
}

/// `processors.redact.keys`: attribute keys added to the built-in lists.
/// An entry ending in `*` matches every key with that prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactKeys {
    /// Keys whose values are content (dropped).
    pub content: Vec<String>,
    /// Keys whose values are IP addresses (hashed).
    pub ip: Vec<String>,
    /// Keys whose values are file names (hashed).
    pub files: Vec<String>,
    /// Keys whose values are secrets (dropped).
    pub secrets: Vec<String>,
    /// Keys whose values are kept as they are but identify a person: hashed
    /// into a row's personal digest and removed by an erasure (see
    /// docs/privacy.md, "Erasure").
    pub personal: Vec<String>,
}

impl RedactKeys {
    /// The keys this config declares personal, as patterns (`prefix*` allowed):
    /// `personal`, and `ip` and `files` (their values are keyed hashes of
    /// personal data, still personal data). Sorted, without duplicates.
    pub fn personal_patterns(&self) -> Vec<String> {
        let mut patterns: Vec<String> = self
            .personal
            .iter()
            .chain(&self.ip)
            .chain(&self.files)
            .filter(|p| !p.is_empty() && p.as_str() != "*")
            .cloned()
            .collect();
        patterns.sort();
        patterns.dedup();
        patterns
    }
}

/// `processors.redact.allowlist`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowlistConfig {
    /// Whether the allowlist applies.
    pub enabled: bool,
    /// Kept keys (`prefix.*` allowed), besides the ones Tally needs.
    pub keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError};

    #[test]
    fn defaults_are_on() {
        let config = Config::from_yaml_str("").unwrap_or_default();
        let redact = &config.processors.redact;
        assert!(redact.enabled);
        assert!(redact.rules.ip && redact.rules.content && redact.rules.secrets);
        assert!(redact.rules.cards && redact.rules.emails && redact.rules.files);
        assert_eq!(redact.max_value_bytes, 4096);
        assert_eq!(redact.max_record_attributes_bytes, 16384);
        assert_eq!(redact.max_depth, 8);
        assert!(!redact.allowlist.enabled);
        assert_eq!(redact.hmac_key_bytes(), None);
    }

    #[test]
    fn full_section_parses() {
        let text = r#"
processors:
  redact:
    enabled: true
    hmac_key: "0123456789abcdef0123"
    rules: { ip: false, content: true, secrets: true, cards: false, emails: true, files: true }
    hash_emails: true
    max_value_bytes: 1024
    max_record_attributes_bytes: 8192
    max_depth: 4
    keys: { content: ["my.prompt"], ip: ["x.addr"], files: ["doc.*"], secrets: ["x.pin"], personal: ["doc.owner"] }
    allowlist: { enabled: true, keys: ["http.route", "app.*"] }
"#;
        let config = match Config::from_yaml_str(text) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        let redact = &config.processors.redact;
        assert!(!redact.rules.ip && !redact.rules.cards && redact.rules.content);
        assert!(redact.hash_emails);
        assert_eq!(redact.max_depth, 4);
        assert_eq!(redact.keys.files, vec!["doc.*".to_string()]);
        assert_eq!(
            redact.keys.personal_patterns(),
            ["doc.*", "doc.owner", "x.addr"]
        );
        assert_eq!(redact.allowlist.keys.len(), 2);
        assert_eq!(redact.hmac_key_bytes(), Some(&b"0123456789abcdef0123"[..]));
    }

    fn invalid_path(text: &str) -> String {
        match Config::from_yaml_str(text) {
            Err(ConfigError::Invalid { path, .. }) => path,
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_and_bad_keys_name_their_path() {
        assert_eq!(
            invalid_path("processors: { redact: { rules: { phone: true } } }"),
            "processors.redact.rules.phone"
        );
        assert_eq!(
            invalid_path("processors: { redact: { max_value_bytes: 10 } }"),
            "processors.redact.max_value_bytes"
        );
        assert_eq!(
            invalid_path("processors: { redact: { max_depth: 0 } }"),
            "processors.redact.max_depth"
        );
        assert_eq!(
            invalid_path("processors: { redact: { hmac_key: short } }"),
            "processors.redact.hmac_key"
        );
    }
}
