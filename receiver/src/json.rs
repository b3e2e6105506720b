//! OTLP/JSON decoding through opentelemetry-proto's serde support, with fix-ups applied
//! while deserializing (no intermediate `serde_json::Value` tree):
//!
//! - `"arrayValue": {}` and `"kvlistValue": {}` (empty lists omitted, as standard
//!   protobuf-JSON writers do) are read as empty lists; the library alone rejects them;
//! - enum names (`"SPAN_KIND_SERVER"`, `"STATUS_CODE_ERROR"`, `"SEVERITY_NUMBER_INFO"`) are
//!   read as their integers;
//! - snake_case keys of OTLP fields (`resource_spans`, `trace_id`, …), which the library
//!   would silently ignore, are refused with an error naming the key.
//!
//! Errors carry the JSON path of the problem (`resourceSpans[0].scopeSpans[0].spans[2].kind`).
//! The fix-ups are a [`Deserializer`] adapter ([`Fixup`]) wrapped around `serde_json`'s.
//!
//! Over 600 lines: one serde Deserializer adapter, whose trait needs every method forwarded.

use std::fmt;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    Visitor,
};

use crate::error::Malformed;

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub(crate) fn decode_traces(body: &[u8]) -> Result<ExportTraceServiceRequest, Malformed> {
    decode(body)
}

/// Decodes an OTLP/JSON `ExportLogsServiceRequest`.
pub(crate) fn decode_logs(body: &[u8]) -> Result<ExportLogsServiceRequest, Malformed> {
    decode(body)
}

/// Decodes an OTLP/JSON `ExportMetricsServiceRequest`.
pub(crate) fn decode_metrics(body: &[u8]) -> Result<ExportMetricsServiceRequest, Malformed> {
    decode(body)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Malformed> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(Fixup::new(&mut json)).map_err(|e| {
        // A failing key shows as a trailing `?` segment: the message names the key.
        let path = e.path().to_string();
        let path = path
            .strip_suffix('?')
            .unwrap_or(&path)
            .trim_end_matches('.');
        if path.is_empty() {
            format!("invalid OTLP/JSON: {}", e.inner())
        } else {
            format!("invalid OTLP/JSON at {path}: {}", e.inner())
        }
    })?;
    json.end().map_err(|e| format!("invalid OTLP/JSON: {e}"))?;
    Ok(value)
}

/// OTLP field names whose snake_case spelling the library would silently ignore.
const SNAKE_CASE_FIELDS: &[&str] = &[
    "resource_spans",
    "resource_logs",
    "scope_spans",
    "scope_logs",
    "log_records",
    "schema_url",
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "time_unix_nano",
    "observed_time_unix_nano",
    "severity_number",
    "severity_text",
    "event_name",
    "dropped_attributes_count",
    "dropped_events_count",
    "dropped_links_count",
    "entity_refs",
    "id_keys",
    "description_keys",
    "key_strindex",
    "string_value",
    "bool_value",
    "int_value",
    "double_value",
    "array_value",
    "kvlist_value",
    "bytes_value",
    "string_value_strindex",
    "resource_metrics",
    "scope_metrics",
    "data_points",
    "aggregation_temporality",
    "is_monotonic",
    "exponential_histogram",
    "bucket_counts",
    "explicit_bounds",
    "quantile_values",
    "as_double",
    "as_int",
    "filtered_attributes",
    "zero_count",
    "zero_threshold",
];

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The integer of an OTLP enum value name, if it is one.
fn enum_number(name: &str) -> Option<i32> {
    SpanKind::from_str_name(name)
        .map(|v| v as i32)
        .or_else(|| StatusCode::from_str_name(name).map(|v| v as i32))
        .or_else(|| SeverityNumber::from_str_name(name).map(|v| v as i32))
        .or_else(|| AggregationTemporality::from_str_name(name).map(|v| v as i32))
}

/// What the value being deserialized needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// The value of `arrayValue` / `kvlistValue`: an object without `values` gets `"values": []`.
    EnsureValues,
    /// The value of `doubleValue`: its proto3 JSON string forms are read as the double. The
    /// library reads `AnyValue` through a buffered (flattened) map, so the conversion has to
    /// happen while the value is buffered, not when the `f64` is finally asked for.
    Double,
    /// The value of `aggregationTemporality`: a metric's data is read through a buffered
    /// (flattened) map too, so its enum names are turned into numbers while buffered.
    Enum,
}

/// A [`Deserializer`] adapter applying the OTLP/JSON fix-ups to everything below it.
struct Fixup<D> {
    inner: D,
    mode: Mode,
}

impl<D> Fixup<D> {
    fn new(inner: D) -> Self {
        Fixup {
            inner,
            mode: Mode::Normal,
        }
    }
}

macro_rules! forward_plain {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method(visitor)
            }
        )*
    };
}

macro_rules! forward_wrapped {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method(Wrap { inner: visitor, mode: self.mode, object_only: false })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Fixup<D> {
    type Error = D::Error;

    forward_plain! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_identifier
        deserialize_ignored_any
    }

    forward_wrapped! {
        deserialize_option deserialize_seq deserialize_map
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        if self.mode == Mode::Double {
            return self.inner.deserialize_any(Double { inner: visitor });
        }
        if self.mode == Mode::Enum {
            return self.inner.deserialize_any(Int32 {
                inner: visitor,
                enum_names: true,
            });
        }
        self.inner.deserialize_any(Wrap {
            inner: visitor,
            mode: self.mode,
            object_only: false,
        })
    }

    /// OTLP enums are `i32` fields: accept their names too (and, as protobuf-JSON allows,
    /// numbers written as strings).
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(Int32 {
            inner: visitor,
            enum_names: true,
        })
    }

    /// `doubleValue`: proto3 JSON writes NaN and the infinities as the strings `"NaN"`,
    /// `"Infinity"` and `"-Infinity"`, and allows any number written as a string.
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(Double { inner: visitor })
    }

    /// Counts and flags: protobuf-JSON allows numbers written as strings.
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(Int32 {
            inner: visitor,
            enum_names: false,
        })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_newtype_struct(
            name,
            Wrap {
                inner: visitor,
                mode: self.mode,
                object_only: false,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple(
            len,
            Wrap {
                inner: visitor,
                mode: self.mode,
                object_only: false,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple_struct(
            name,
            len,
            Wrap {
                inner: visitor,
                mode: self.mode,
                object_only: false,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(
            name,
            fields,
            Wrap {
                inner: visitor,
                mode: self.mode,
                object_only: true,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        // No OTLP message is a serde enum in JSON; nothing to fix below one.
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A [`Visitor`] adapter: maps, sequences and nested values it is handed get wrapped again.
struct Wrap<V> {
    inner: V,
    mode: Mode,
    /// A message: serde would also read it from an array (fields by position); JSON
    /// messages are objects.
    object_only: bool,
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Fixup {
            inner: d,
            mode: self.mode,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Fixup {
            inner: d,
            mode: self.mode,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if self.object_only {
            return Err(de::Error::invalid_type(
                de::Unexpected::Seq,
                &"a JSON object",
            ));
        }
        self.inner.visit_seq(Seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            ensure_values: self.mode == Mode::EnsureValues,
            saw_values: false,
            injected: false,
            next_mode: Mode::Normal,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// A [`DeserializeSeed`] adapter that wraps the deserializer it is given in [`Fixup`].
struct FixupSeed<S> {
    inner: S,
    mode: Mode,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for FixupSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Fixup {
            inner: d,
            mode: self.mode,
        })
    }
}

struct Seq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(FixupSeed {
            inner: seed,
            mode: Mode::Normal,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// What a key says about the value that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Other,
    /// `values`: the list of an `ArrayValue` / `KeyValueList`.
    Values,
    /// `arrayValue` / `kvlistValue`.
    ListValue,
    /// `doubleValue`.
    Double,
    /// `aggregationTemporality`.
    Enum,
}

struct Map<A> {
    inner: A,
    /// Add `"values": []` when the object ends without one.
    ensure_values: bool,
    saw_values: bool,
    injected: bool,
    /// The mode for the value of the key just read.
    next_mode: Mode,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.injected {
            return Ok(None);
        }
        let mut seed = Some(seed);
        let mut kind = KeyKind::Other;
        let key = self.inner.next_key_seed(KeySeed {
            seed: &mut seed,
            kind: &mut kind,
        })?;
        match key {
            Some(key) => {
                self.saw_values |= kind == KeyKind::Values;
                self.next_mode = match kind {
                    KeyKind::ListValue => Mode::EnsureValues,
                    KeyKind::Double => Mode::Double,
                    KeyKind::Enum => Mode::Enum,
                    KeyKind::Other | KeyKind::Values => Mode::Normal,
                };
                Ok(Some(key))
            }
            None if self.ensure_values && !self.saw_values => match seed.take() {
                Some(seed) => {
                    self.injected = true;
                    let key: de::value::BorrowedStrDeserializer<'de, A::Error> =
                        de::value::BorrowedStrDeserializer::new("values");
                    seed.deserialize(key).map(Some)
                }
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        if self.injected {
            let empty: de::value::SeqDeserializer<std::iter::Empty<()>, A::Error> =
                de::value::SeqDeserializer::new(std::iter::empty());
            return seed.deserialize(empty);
        }
        let mode = std::mem::replace(&mut self.next_mode, Mode::Normal);
        self.inner.next_value_seed(FixupSeed { inner: seed, mode })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// Deserializes a key through [`KeyVisitor`], leaving the seed in place if there is no key.
struct KeySeed<'a, K> {
    seed: &'a mut Option<K>,
    kind: &'a mut KeyKind,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        let Some(seed) = self.seed.take() else {
            return Err(de::Error::custom("internal error: key seed used twice"));
        };
        seed.deserialize(KeyDeserializer {
            inner: d,
            kind: self.kind,
        })
    }
}

/// Object keys: every request is served as the string the key is.
struct KeyDeserializer<'a, D> {
    inner: D,
    kind: &'a mut KeyKind,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for KeyDeserializer<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(KeyVisitor {
            inner: visitor,
            kind: self.kind,
        })
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct KeyVisitor<'a, V> {
    inner: V,
    kind: &'a mut KeyKind,
}

impl<V> KeyVisitor<'_, V> {
    fn classify<E: de::Error>(&mut self, key: &str) -> Result<(), E> {
        *self.kind = match key {
            "values" => KeyKind::Values,
            "arrayValue" | "kvlistValue" => KeyKind::ListValue,
            "doubleValue" => KeyKind::Double,
            "aggregationTemporality" => KeyKind::Enum,
            _ if key.contains('_') && SNAKE_CASE_FIELDS.contains(&key) => {
                return Err(E::custom(format_args!(
                    "key {key:?} is snake_case; OTLP/JSON field names are lowerCamelCase: {:?}",
                    camel_case(key)
                )));
            }
            _ => KeyKind::Other,
        };
        Ok(())
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KeyVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Self::Value, E> {
        self.classify(v)?;
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(mut self, v: &'de str) -> Result<Self::Value, E> {
        self.classify(v)?;
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(mut self, v: String) -> Result<Self::Value, E> {
        self.classify(&v)?;
        self.inner.visit_string(v)
    }
}

macro_rules! forward_int_visit {
    ($($method:ident($ty:ty))*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

/// The visitor of a 32-bit integer field: a number, a number in a string, or (for `i32`,
/// the type of OTLP enums) an enum value name.
struct Int32<V> {
    inner: V,
    enum_names: bool,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Int32<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)?;
        if self.enum_names {
            f.write_str(" or an OTLP enum value name")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if let Ok(n) = v.trim().parse::<i64>() {
            // The inner visitor checks the range.
            return self.inner.visit_i64(n);
        }
        match enum_number(v).filter(|_| self.enum_names) {
            Some(n) => self.inner.visit_i32(n),
            None if self.enum_names => Err(E::custom(format_args!("unknown enum value {v:?}"))),
            None => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }

    forward_int_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_f32(f32) visit_f64(f64)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(map)
    }
}

/// The visitor of a double field: a number, or a string holding a number, `"NaN"`,
/// `"Infinity"` or `"-Infinity"` (the proto3 JSON spellings; Rust's own `inf`, `nan`, …
/// are not JSON and are refused).
struct Double<V> {
    inner: V,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Double<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a number, or a string holding a number, \"NaN\", \"Infinity\" or \"-Infinity\"",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let d = match v {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => match v.parse::<f64>() {
                Ok(d) if d.is_finite() => d,
                // `inf`, `nan`, `infinity` parse in Rust but are not proto3 JSON; an
                // overflowing literal (`1e400`) is not a double either.
                _ => return Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            },
        };
        self.inner.visit_f64(d)
    }

    forward_int_visit! {
        visit_i64(i64) visit_u64(u64) visit_f64(f64)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }
}

#[cfg(test)]
mod tests;
