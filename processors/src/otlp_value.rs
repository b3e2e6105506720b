//! Conversions of OTLP `AnyValue`s to text and JSON.

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue};
use serde_json::Value as Json;

/// Text form of a scalar value, for identity columns (`user_id`, …).
/// Returns `None` for empty strings, lists and maps.
pub(crate) fn as_text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Value::StringValue(s) if !s.is_empty() => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) if d.is_finite() => Some(d.to_string()),
        _ => None,
    }
}

/// Integer form of a value that may arrive as int, double or string.
pub(crate) fn as_i64(value: Option<&AnyValue>) -> Option<i64> {
    match value?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.is_finite() && d.fract() == 0.0 => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Largest double magnitude stored as a JSON number. PostgreSQL prints a `jsonb` number
/// in plain decimal (`1.7976931348623157e308` comes back as 309 digits) and common JSON
/// readers (serde_json without its `float_roundtrip` feature, which Tally's build now
/// enables, among them) read a long integer by an inexact multiplication that overflows
/// to infinity near `f64::MAX` ("number out of range"): such a row could no longer be
/// read back by them. Below 1e308 the error of that multiplication cannot reach infinity.
const MAX_JSON_DOUBLE: f64 = 1e308;

/// Lowercase hex of `bytes`, written through a table (the `hex` crate's
/// `encode` pushes one `char` at a time, which shows in the hot path).
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// JSON form of any value. Bytes become lowercase hex; non-finite doubles, and finite
/// ones of magnitude 1e308 or more (see [`MAX_JSON_DOUBLE`]), become strings.
pub(crate) fn to_json(value: Option<&AnyValue>) -> Json {
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return Json::Null;
    };
    match value {
        Value::StringValue(s) => Json::String(s.clone()),
        Value::BoolValue(b) => Json::Bool(*b),
        Value::IntValue(i) => Json::from(*i),
        Value::DoubleValue(d) => serde_json::Number::from_f64(*d)
            .filter(|_| d.abs() < MAX_JSON_DOUBLE)
            .map(Json::Number)
            // `NaN`, `inf`, `-inf`, `1.7976931348623157e308`.
            .unwrap_or_else(|| Json::String(format!("{d:e}"))),
        Value::BytesValue(bytes) => Json::String(hex_lower(bytes)),
        Value::ArrayValue(array) => {
            Json::Array(array.values.iter().map(|v| to_json(Some(v))).collect())
        }
        Value::KvlistValue(list) => Json::Object(
            list.values
                .iter()
                .map(|kv| (kv.key.clone(), to_json(kv.value.as_ref())))
                .collect(),
        ),
        #[allow(unreachable_patterns)]
        _ => Json::Null,
    }
}

/// [`to_json`] of an owned value: strings (and strings nested in lists and
/// maps) are moved, not copied.
pub(crate) fn into_json(value: Option<AnyValue>) -> Json {
    let Some(value) = value.and_then(|v| v.value) else {
        return Json::Null;
    };
    match value {
        Value::StringValue(s) => Json::String(s),
        Value::ArrayValue(array) => Json::Array(
            array
                .values
                .into_iter()
                .map(|v| into_json(Some(v)))
                .collect(),
        ),
        Value::KvlistValue(list) => Json::Object(
            list.values
                .into_iter()
                .map(|kv| (kv.key, into_json(kv.value)))
                .collect(),
        ),
        other => to_json(Some(&AnyValue { value: Some(other) })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
        assert_eq!(hex_lower(&[]), "");
    }

    #[test]
    fn into_json_equals_to_json() {
        use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValue, KeyValueList};
        let s = |v: &str| AnyValue {
            value: Some(Value::StringValue(v.into())),
        };
        let value = AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![
                    KeyValue {
                        key: "a".into(),
                        value: Some(s("x")),
                        ..Default::default()
                    },
                    KeyValue {
                        key: "b".into(),
                        value: Some(AnyValue {
                            value: Some(Value::ArrayValue(ArrayValue {
                                values: vec![
                                    s("y"),
                                    AnyValue {
                                        value: Some(Value::DoubleValue(f64::NAN)),
                                    },
                                    AnyValue {
                                        value: Some(Value::BytesValue(vec![1, 2])),
                                    },
                                ],
                            })),
                        }),
                        ..Default::default()
                    },
                    KeyValue {
                        key: "c".into(),
                        value: None,
                        ..Default::default()
                    },
                ],
            })),
        };
        assert_eq!(into_json(Some(value.clone())), to_json(Some(&value)));
        assert_eq!(into_json(None), Json::Null);
    }

    fn double(d: f64) -> Json {
        to_json(Some(&AnyValue {
            value: Some(Value::DoubleValue(d)),
        }))
    }

    #[test]
    fn non_finite_and_huge_doubles_are_strings() {
        assert_eq!(double(f64::NAN), Json::String("NaN".into()));
        assert_eq!(double(f64::INFINITY), Json::String("inf".into()));
        assert_eq!(double(f64::NEG_INFINITY), Json::String("-inf".into()));
        assert_eq!(
            double(f64::MAX),
            Json::String("1.7976931348623157e308".into())
        );
        assert_eq!(double(-1e308), Json::String("-1e308".into()));
        assert_eq!(double(9.9e307), Json::from(9.9e307));
        assert_eq!(double(-2.5), Json::from(-2.5));
        assert_eq!(double(f64::MIN_POSITIVE), Json::from(f64::MIN_POSITIVE));
    }

    /// How PostgreSQL prints a large jsonb number: its shortest digits, then zeros.
    fn postgres_plain(d: f64) -> String {
        let sci = format!("{d:e}");
        let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
        let exponent: usize = exponent.parse().unwrap_or(0);
        let (sign, mantissa) = match mantissa.strip_prefix('-') {
            Some(rest) => ("-", rest),
            None => ("", mantissa),
        };
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        let zeros = (exponent + 1).saturating_sub(digits.len());
        format!("{sign}{digits}{}", "0".repeat(zeros))
    }

    #[test]
    fn stored_doubles_read_back_as_postgresql_prints_them() {
        // PostgreSQL prints a jsonb number without exponent: all its digits.
        for d in [9.99e307, -9.99e307, 1e300, 4.5e200] {
            let Json::Number(n) = double(d) else {
                panic!("{d} is not a number")
            };
            let plain = postgres_plain(n.as_f64().unwrap_or_default());
            assert!(
                serde_json::from_str::<Json>(&plain).is_ok(),
                "{d} printed as {plain} reads back"
            );
        }
        // The value the cap guards against: 309 plain digits, which a reader parsing
        // integers by inexact multiplication (serde_json without its `float_roundtrip`
        // feature, which Tally's own build enables) overflows to infinity.
        let plain = postgres_plain(f64::MAX);
        assert_eq!(plain.len(), 309);
    }
}
