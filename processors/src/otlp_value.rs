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

/// JSON form of any value. Bytes become lowercase hex; non-finite doubles become strings.
pub(crate) fn to_json(value: Option<&AnyValue>) -> Json {
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return Json::Null;
    };
    match value {
        Value::StringValue(s) => Json::String(s.clone()),
        Value::BoolValue(b) => Json::Bool(*b),
        Value::IntValue(i) => Json::from(*i),
        Value::DoubleValue(d) => serde_json::Number::from_f64(*d)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(d.to_string())),
        Value::BytesValue(bytes) => Json::String(hex::encode(bytes)),
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
