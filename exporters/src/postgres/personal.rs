//! The personal attribute keys of an activity row named when it is written
//! (`activity_events.personal_keys`, migration 24; see docs/privacy.md,
//! "Erasure").
//!
//! Beyond the fixed set of the SQL function `tally_is_personal_key` (migration
//! 19), a row's personal keys are
//!
//! * the keys the writing instance's redaction config declares personal
//!   (`processors.redact.keys.personal`, `.ip`, `.files`: exact, or a prefix
//!   ending in `*`), and
//! * every key whose value is the row's user id (the id repeated under
//!   `user_id`, `actor.id`, `doc.owner`, …).
//!
//! A v3 row hashes them into its salted personal digest instead of its public
//! attributes, so an erasure can remove them and the row still verifies.

use std::collections::HashSet;

use serde_json::Value;
use tally_model::ActivityEvent;

/// The keys of the fixed set (`tally_is_personal_key`, migration 19): they are
/// personal for every row, so a row does not list them. Kept equal to the SQL
/// function (`exporters/tests/erasure_personal.rs` checks it).
pub const FIXED_PERSONAL_KEYS: &[&str] = &[
    "user.id",
    "user.email",
    "user.name",
    "user.full_name",
    "user.hash",
    "client.address",
    "client.ip",
    "source.address",
    "source.ip",
    "network.peer.address",
    "net.peer.ip",
    "net.sock.peer.addr",
    "http.client_ip",
    "session.id",
    "session.previous_id",
];
/// The prefix of the fixed set (`LIKE 'enduser.%'`).
pub const FIXED_PERSONAL_PREFIX: &str = "enduser.";

/// Whether `key` is in the fixed personal set.
pub fn is_fixed_personal_key(key: &str) -> bool {
    key.starts_with(FIXED_PERSONAL_PREFIX) || FIXED_PERSONAL_KEYS.contains(&key)
}

/// The configured personal-key patterns. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonalKeys {
    exact: HashSet<String>,
    prefixes: Vec<String>,
    patterns: Vec<String>,
}

impl PersonalKeys {
    /// From patterns: exact keys, or prefixes ending in `*` (as
    /// `processors.redact.keys` declares keys). A lone `*` or an empty pattern
    /// is ignored.
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> PersonalKeys {
        let mut keys = PersonalKeys::default();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            if pattern.is_empty() || pattern == "*" {
                continue;
            }
            match pattern.strip_suffix('*') {
                Some(prefix) => keys.prefixes.push(prefix.to_owned()),
                None => {
                    keys.exact.insert(pattern.to_owned());
                }
            }
            keys.patterns.push(pattern.to_owned());
        }
        keys.patterns.sort();
        keys.patterns.dedup();
        keys
    }

    /// The patterns, sorted (for SQL: `tally_key_matches`).
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `key` matches a configured pattern.
    pub fn matches(&self, key: &str) -> bool {
        self.exact.contains(key) || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The keys of `event`'s attributes that are personal for this row beyond
    /// the fixed set: those matching a pattern and those whose value is the
    /// row's user id (a string equal to it). Sorted; empty for most rows.
    pub fn of<'e>(&self, event: &'e ActivityEvent) -> Vec<&'e str> {
        let user = event.user_id.as_deref().filter(|u| !u.is_empty());
        let mut keys: Vec<&str> = event
            .attributes
            .iter()
            .filter(|(key, value)| {
                !is_fixed_personal_key(key)
                    && (self.matches(key)
                        || user.is_some_and(|u| matches!(value, Value::String(s) if s == u)))
            })
            .map(|(key, _)| key.as_str())
            .collect();
        keys.sort_unstable();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: Option<&str>, attributes: serde_json::Value) -> ActivityEvent {
        let Value::Object(attributes) = attributes else {
            panic!("attributes must be an object");
        };
        ActivityEvent {
            id: uuid::Uuid::nil(),
            ts: chrono::Utc::now(),
            tenant_id: None,
            user_id: user.map(str::to_owned),
            session_id: None,
            action: "doc.read".into(),
            outcome: tally_model::Outcome::Success,
            resource_type: None,
            resource_id: None,
            service: None,
            trace_id: None,
            span_id: None,
            attributes,
            duration_ms: None,
            name: None,
            error_type: None,
            error_message: None,
            taxonomy_valid: None,
            taxonomy_reason: None,
        }
    }

    #[test]
    fn configured_keys_and_the_user_id_under_other_keys_are_personal() {
        let keys = PersonalKeys::new(["doc.owner", "edge.*", "*", ""]);
        assert_eq!(keys.patterns(), ["doc.owner", "edge.*"]);
        let e = event(
            Some("alice"),
            serde_json::json!({
                "doc.owner": "bob",
                "edge.viewer": "ip:hmac:01",
                "edge": "x",
                "user_id": "alice",
                "actor": "alice",
                "enduser.id": "alice",
                "count": 3,
                "note": "alice and bob",
            }),
        );
        assert_eq!(
            keys.of(&e),
            ["actor", "doc.owner", "edge.viewer", "user_id"]
        );
        // No user: only the configured keys.
        assert_eq!(
            keys.of(&event(
                None,
                serde_json::json!({"actor": "alice", "doc.owner": "b"})
            )),
            ["doc.owner"]
        );
        assert!(PersonalKeys::default()
            .of(&event(Some("u"), serde_json::json!({"k": "v"})))
            .is_empty());
    }
}
