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

/// The text of a v3 row's attributes split into its public and personal parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitAttributes {
    /// The attributes without their personal keys: the text of
    /// `(attributes - tally_personal_keys(attributes, personal_keys))`.
    pub public: String,
    /// The personal keys and their values: the text of
    /// `tally_personal_attributes(attributes, personal_keys)` (`None` when there
    /// are none, or the attributes are not an object).
    pub personal: Option<String>,
}

/// An attributes text that is not the text PostgreSQL prints for a jsonb object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attributes text is not PostgreSQL's jsonb output (at byte {at})")]
pub struct SplitError {
    /// Where the scanner stopped.
    pub at: usize,
}

/// Splits `text`, the `attributes::text` of a v3 row, into the public and the
/// personal part exactly as the SQL functions of migration 24 print them.
///
/// PostgreSQL prints a jsonb object canonically (`{"k": v, "k2": v2}`, keys in
/// jsonb order, no duplicates), and removing keys or aggregating a subset of the
/// pairs keeps the order of the rest: so the top-level pairs are scanned as
/// spans and rejoined. A key is personal when it is in the fixed set
/// ([`is_fixed_personal_key`]) or in `extra` (the row's `personal_keys`),
/// compared unescaped. A text that is not an object is public unchanged; an
/// object without a personal key keeps its text (no allocation).
pub fn split_attributes(
    text: String,
    extra: &[Option<String>],
) -> Result<SplitAttributes, SplitError> {
    let is_personal =
        |key: &str| is_fixed_personal_key(key) || extra.iter().any(|e| e.as_deref() == Some(key));
    if !text.starts_with('{') {
        return Ok(SplitAttributes {
            public: text,
            personal: None,
        });
    }
    let mut any = false;
    for pair in Pairs::new(&text) {
        let (key, _) = pair?;
        if is_personal(&key) {
            any = true;
            break;
        }
    }
    if !any {
        return Ok(SplitAttributes {
            public: text,
            personal: None,
        });
    }
    let mut public = String::with_capacity(text.len());
    let mut personal = String::with_capacity(64);
    public.push('{');
    personal.push('{');
    for pair in Pairs::new(&text) {
        let (key, span) = pair?;
        let out = if is_personal(&key) {
            &mut personal
        } else {
            &mut public
        };
        if out.len() > 1 {
            out.push_str(", ");
        }
        out.push_str(span);
    }
    public.push('}');
    personal.push('}');
    Ok(SplitAttributes {
        public,
        personal: Some(personal),
    })
}

/// The top-level pairs of a jsonb object's text: the unescaped key and the
/// pair's text (`"key": value`).
struct Pairs<'t> {
    text: &'t str,
    at: usize,
    done: bool,
}

impl<'t> Pairs<'t> {
    fn new(text: &'t str) -> Pairs<'t> {
        // An empty object has no pairs.
        Pairs {
            text,
            at: 1,
            done: text == "{}",
        }
    }

    fn byte(&self, at: usize) -> Result<u8, SplitError> {
        self.text
            .as_bytes()
            .get(at)
            .copied()
            .ok_or(SplitError { at })
    }

    /// The end (after the closing quote) of the string starting at `at`.
    fn string_end(&self, at: usize) -> Result<usize, SplitError> {
        if self.byte(at)? != b'"' {
            return Err(SplitError { at });
        }
        let mut i = at + 1;
        loop {
            match self.byte(i)? {
                b'"' => return Ok(i + 1),
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
    }

    /// The end of the value starting at `at`.
    fn value_end(&self, at: usize) -> Result<usize, SplitError> {
        match self.byte(at)? {
            b'"' => self.string_end(at),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut i = at;
                loop {
                    match self.byte(i)? {
                        b'"' => {
                            i = self.string_end(i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                let mut i = at;
                while !matches!(self.byte(i)?, b',' | b'}') {
                    i += 1;
                }
                Ok(i)
            }
        }
    }

    fn pair(&mut self) -> Result<(std::borrow::Cow<'t, str>, &'t str), SplitError> {
        let start = self.at;
        let key_end = self.string_end(start)?;
        if self.text.as_bytes().get(key_end..key_end + 2) != Some(b": ") {
            return Err(SplitError { at: key_end });
        }
        let end = self.value_end(key_end + 2)?;
        match self.text.as_bytes().get(end..end + 2) {
            Some(b", ") => self.at = end + 2,
            _ if end + 1 == self.text.len() && self.byte(end)? == b'}' => self.done = true,
            _ => return Err(SplitError { at: end }),
        }
        let raw = self
            .text
            .get(start + 1..key_end - 1)
            .ok_or(SplitError { at: start })?;
        let key = if raw.contains('\\') {
            std::borrow::Cow::Owned(unescape(raw).ok_or(SplitError { at: start })?)
        } else {
            std::borrow::Cow::Borrowed(raw)
        };
        let span = self.text.get(start..end).ok_or(SplitError { at: start })?;
        Ok((key, span))
    }
}

impl<'t> Iterator for Pairs<'t> {
    type Item = Result<(std::borrow::Cow<'t, str>, &'t str), SplitError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let pair = self.pair();
        if pair.is_err() {
            self.done = true;
        }
        Some(pair)
    }
}

/// The string a JSON string's content (without its quotes) denotes.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let unit = hex4(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&unit) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let low = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    unit
                };
                out.push(char::from_u32(code)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut value = 0;
    for _ in 0..4 {
        value = value * 16 + chars.next()?.to_digit(16)?;
    }
    Some(value)
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
        (!self.exact.is_empty() && self.exact.contains(key))
            || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
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
            ts: chrono::Utc::now(),
            user_id: user.map(str::to_owned),
            attributes,
            ..super::super::test_rows::event(0)
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
