//! PostgreSQL's `jsonb::text` of the attribute objects the writer sends, printed in
//! Rust, so the writer can hash a row's canonical form without reading it back.
//!
//! The writer's `COPY` encoder (`copy.rs`) sends an attribute map as JSON text
//! (NUL scrubbed to U+FFFD, numbers as `serde_json` prints them). PostgreSQL parses
//! that text into a `jsonb` value and prints it back as:
//!
//! * objects `{"k": v, "k2": v2}` (`", "` and `": "` separators, `{}` when empty),
//!   keys in jsonb order: shorter (in bytes) first, then bytewise; a key given
//!   twice keeps one value;
//! * arrays `[a, b]` (`[]` when empty);
//! * strings with `"`, `\`, `\b`, `\f`, `\n`, `\r`, `\t` escaped as such and every
//!   other byte below 0x20 as `\u00xx` (lowercase hex), everything else as is;
//! * numbers as `numeric` prints the value it parsed: no exponent, the input's
//!   scale kept (`1.50` → `1.50`, `1e-7` → `0.0000001`, `1e20` →
//!   `100000000000000000000`, `1.5e1` → `15`), no negative zero (`-0.0` → `0.0`).
//!
//! [`jsonb_text`] answers `None` for anything it cannot be sure of (two keys
//! equal once NUL is scrubbed, an exponent `numeric` refuses); the writer then
//! leaves the batch to the chainer, which reads the stored text back.
//! `exporters/tests/jsonb_text.rs` compares the printer with the server's
//! `jsonb::text` on thousands of generated objects.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// The largest exponent `numeric` accepts in its input (`NUMERIC_MAX_PRECISION`).
const MAX_EXPONENT: i64 = 1000;

/// Objects of at most this many keys are sorted on the stack.
const STACK_KEYS: usize = 32;

/// PostgreSQL's `jsonb::text` of the object the `COPY` encoder sends for `map`,
/// or `None` where the printer cannot be sure it matches (see the module doc).
pub fn jsonb_text(map: &Map<String, Value>) -> Option<String> {
    let mut out = String::with_capacity(64 + 32 * map.len());
    let mut unused = String::new();
    jsonb_text_split(map, |_| false, &mut out, &mut unused)?;
    Some(out)
}

/// [`jsonb_text`] of `map` written into `public` (cleared first), except the
/// top-level pairs whose key (as stored: NUL scrubbed) `is_personal` names,
/// which go to `personal` (cleared first) instead: the texts of
/// `(attributes - personal keys)::text` and of the object of the personal pairs
/// (`personal::split_attributes` of the whole text, without printing it twice).
/// Answers whether any pair was personal (`personal` is left empty when none);
/// `None` as [`jsonb_text`].
pub(crate) fn jsonb_text_split(
    map: &Map<String, Value>,
    is_personal: impl Fn(&str) -> bool,
    public: &mut String,
    personal: &mut String,
) -> Option<bool> {
    public.clear();
    personal.clear();
    public.push('{');
    personal.push('{');
    let mut any = false;
    sorted_pairs(map, |pairs| {
        for (key, value) in pairs {
            let out = if is_personal(key) {
                any = true;
                &mut *personal
            } else {
                &mut *public
            };
            // Each buffer holds only its own object: `{` alone before the first pair.
            let first = out.len() == 1;
            pair(out, first, key, value)?;
        }
        Some(())
    })?;
    public.push('}');
    if any {
        personal.push('}');
    } else {
        personal.clear();
    }
    Some(any)
}

/// Calls `f` with the pairs of `map`, keys as PostgreSQL stores them (NUL
/// scrubbed) in jsonb order: shorter (in bytes) first, then bytewise. `None`
/// when two keys are equal once scrubbed.
fn sorted_pairs<'m>(
    map: &'m Map<String, Value>,
    f: impl FnOnce(&[(&str, &'m Value)]) -> Option<()>,
) -> Option<()> {
    static NULL: Value = Value::Null;
    fn order(a: &(&str, &Value), b: &(&str, &Value)) -> std::cmp::Ordering {
        a.0.len()
            .cmp(&b.0.len())
            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    }
    let n = map.len();
    if n <= STACK_KEYS && !map.keys().any(|k| k.as_bytes().contains(&0)) {
        // Keys without NUL are stored as they are, and are distinct.
        let mut pairs: [(&str, &Value); STACK_KEYS] = [("", &NULL); STACK_KEYS];
        for (slot, (k, v)) in pairs.iter_mut().zip(map) {
            *slot = (k.as_str(), v);
        }
        let pairs = &mut pairs[..n];
        pairs.sort_unstable_by(order);
        return f(pairs);
    }
    let scrubbed: Vec<(Cow<'_, str>, &Value)> = map.iter().map(|(k, v)| (scrub(k), v)).collect();
    let mut pairs: Vec<(&str, &Value)> = scrubbed.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
    pairs.sort_unstable_by(order);
    if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
        // Two keys that differ only by NUL vs U+FFFD: jsonb keeps one of them.
        return None;
    }
    f(&pairs)
}

fn object(out: &mut String, map: &Map<String, Value>) -> Option<()> {
    out.push('{');
    sorted_pairs(map, |pairs| {
        for (i, (key, value)) in pairs.iter().enumerate() {
            pair(out, i == 0, key, value)?;
        }
        Some(())
    })?;
    out.push('}');
    Some(())
}

/// Appends one `"key": value` pair of an object to `out`, after `, ` unless
/// it is the object's `first` pair.
fn pair(out: &mut String, first: bool, key: &str, value: &Value) -> Option<()> {
    if !first {
        out.push_str(", ");
    }
    string(out, key);
    out.push_str(": ");
    self::value(out, value)
}

fn value(out: &mut String, value: &Value) -> Option<()> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => number(out, n)?,
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                self::value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => object(out, map)?,
    }
    Some(())
}

/// The text as stored: each NUL (which the encoder sends as `\ufffd`) is U+FFFD.
fn scrub(s: &str) -> Cow<'_, str> {
    if s.as_bytes().contains(&0) {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// PostgreSQL's `escape_json` of the text as stored (a NUL, stored as U+FFFD, is
/// printed as U+FFFD).
fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    // Most strings need no escape: skip whole words of plain bytes first.
    let clean = crate::postgres::copy::clean_prefix(bytes);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00 => "\u{FFFD}",
            0x01..=0x1f => {
                out.push_str(&s[start..i]);
                let _ = write!(out, "\\u{:04x}", b);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        // Every escaped byte is ASCII, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        out.push_str(escape);
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A short text built on the stack (a float's JSON text).
struct StackText {
    bytes: [u8; 48],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The number as `numeric_out` prints what `numeric_in` parsed from the text the
/// encoder writes for it (an integer: its decimal digits).
fn number(out: &mut String, n: &Number) -> Option<()> {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
        return Some(());
    }
    if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
        return Some(());
    }
    let mut text = StackText {
        bytes: [0; 48],
        len: 0,
    };
    if write!(text, "{n}").is_ok() {
        numeric_text(out, std::str::from_utf8(&text.bytes[..text.len]).ok()?)
    } else {
        numeric_text(out, &n.to_string())
    }
}

/// `numeric_out(numeric_in(text))` for a JSON number's text:
/// `-?digits(.digits)?([eE][+-]?digits)?`. `None` for anything else.
pub(crate) fn numeric_text(out: &mut String, text: &str) -> Option<()> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => {
            let exp = &rest[at + 1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6
            {
                return None;
            }
            let exp: i64 = exp.strip_prefix('+').unwrap_or(exp).parse().ok()?;
            (&rest[..at], exp)
        }
        None => (rest, 0),
    };
    if !(-MAX_EXPONENT..=MAX_EXPONENT).contains(&exponent) {
        return None;
    }
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (mantissa.contains('.') && frac_part.is_empty())
    {
        return None;
    }
    // The value is digits × 10^(exponent - frac_len), shown with `scale` decimals,
    // where digits are those of the integer part and then the fraction's.
    let (int_digits, frac_digits) = (int_part.as_bytes(), frac_part.as_bytes());
    let digit_at = |i: usize| -> Option<u8> {
        match i.checked_sub(int_digits.len()) {
            None => int_digits.get(i).copied(),
            Some(j) => frac_digits.get(j).copied(),
        }
    };
    let frac_len = i64::try_from(frac_part.len()).ok()?;
    let scale = (frac_len - exponent).max(0);
    // Position of the decimal point within `digits` (may be outside them).
    let point = i64::try_from(int_part.len()).ok()? + exponent;
    let digit = |i: i64| -> u8 {
        if i < 0 {
            b'0'
        } else {
            usize::try_from(i).ok().and_then(digit_at).unwrap_or(b'0')
        }
    };
    if negative && int_digits.iter().chain(frac_digits).any(|d| *d != b'0') {
        out.push('-');
    }
    // Integer part without leading zeros ("0" when none is left).
    let first_nonzero = (0..point).find(|i| digit(*i) != b'0');
    match first_nonzero {
        Some(from) => {
            for i in from..point {
                out.push(char::from(digit(i)));
            }
        }
        None => out.push('0'),
    }
    if scale > 0 {
        out.push('.');
        for i in point..point + scale {
            out.push(char::from(digit(i)));
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Option<String> {
        let mut out = String::new();
        numeric_text(&mut out, text).map(|()| out)
    }

    #[test]
    fn numbers_print_as_numeric() {
        for (input, want) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("1.50", "1.50"),
            ("1e-7", "0.0000001"),
            ("1e20", "100000000000000000000"),
            ("1.5e1", "15"),
            ("1.55e1", "15.5"),
            ("100e-1", "10.0"),
            ("-2.5E+3", "-2500"),
            ("123", "123"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("0.000", "0.000"),
            ("12.5e-3", "0.0125"),
            ("5e-324", &format!("0.{}5", "0".repeat(323))),
        ] {
            assert_eq!(num(input).as_deref(), Some(want), "{input}");
        }
        for bad in ["", "-", "1.", ".5", "1e", "1e+", "abc", "1e2000", "--1"] {
            assert_eq!(num(bad), None, "{bad}");
        }
    }

    #[test]
    fn objects_sort_keys_by_length_then_bytes() {
        let value =
            serde_json::json!({"bb": 1, "a": [1.0, "x\u{8}\u{1}\"\\"], "ab": {}, "c": null});
        let Value::Object(map) = value else {
            unreachable!()
        };
        assert_eq!(
            jsonb_text(&map).as_deref(),
            Some(r#"{"a": [1.0, "x\b\u0001\"\\"], "c": null, "ab": {}, "bb": 1}"#)
        );
    }

    #[test]
    fn the_split_equals_splitting_the_printed_text() {
        let value = serde_json::json!({
            "user.email": "a@b", "n": 1.50, "customer": {"user.email": "kept"},
            "enduser.id": "u", "z\u{0}": "x\u{0}", "doc.owner": ["u"], "": null
        });
        let Value::Object(map) = value else {
            unreachable!()
        };
        let text = jsonb_text(&map).expect("printable");
        for keys in [
            vec![],
            vec!["doc.owner"],
            vec!["z\u{FFFD}", "n", ""],
            vec!["nothing"],
        ] {
            let personal = |key: &str| {
                crate::postgres::personal::is_fixed_personal_key(key) || keys.contains(&key)
            };
            let (mut public, mut private) = (String::from("stale"), String::from("stale"));
            let any = jsonb_text_split(&map, personal, &mut public, &mut private);
            let owned: Vec<Option<String>> = keys.iter().map(|k| Some(k.to_string())).collect();
            let want = crate::postgres::personal::split_attributes(text.clone(), &owned)
                .expect("splittable");
            assert_eq!(any, Some(want.personal.is_some()), "{keys:?}");
            assert_eq!(public, want.public, "{keys:?}");
            assert_eq!(
                (!private.is_empty()).then_some(private),
                want.personal,
                "{keys:?}"
            );
        }
        // Nothing personal in an empty object.
        let (mut public, mut private) = (String::new(), String::new());
        assert_eq!(
            jsonb_text_split(&Map::new(), |_| true, &mut public, &mut private),
            Some(false)
        );
        assert_eq!((public.as_str(), private.as_str()), ("{}", ""));
    }

    #[test]
    fn integers_and_floats_print_as_numeric() {
        let value = serde_json::json!({"a": [0, -1, u64::MAX, i64::MIN, 1e20, 2.5e-3, -0.0]});
        let Value::Object(map) = value else {
            unreachable!()
        };
        assert_eq!(
            jsonb_text(&map).as_deref(),
            Some(
                "{\"a\": [0, -1, 18446744073709551615, -9223372036854775808, \
                 100000000000000000000, 0.0025, 0.0]}"
            )
        );
    }

    #[test]
    fn keys_equal_once_scrubbed_are_refused() {
        let mut map = Map::new();
        map.insert("a\u{0}".into(), Value::Bool(true));
        map.insert("a\u{FFFD}".into(), Value::Bool(false));
        assert_eq!(jsonb_text(&map), None);
    }
}
