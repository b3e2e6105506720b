//! Estimates of the memory a request takes once decoded, from a cheap pass over its
//! wire format, made before decoding so that the in-flight budget can be charged for
//! it ([`crate::budget::Charge::ensure_decoded`]).
//!
//! Decoded OTLP can be many times larger than its wire form: an empty attribute is 2
//! bytes of protobuf (3 of JSON) but a 64-byte `KeyValue` in a `Vec` whose capacity
//! doubles as it grows, so 20 MiB of empty attributes decode to about 1 GiB. The pass
//! walks the message without allocating: it counts the elements of every repeated
//! message field (per parent, so each `Vec`'s capacity is known as prost will grow it)
//! and the bytes of every non-empty string and bytes field, and multiplies by the
//! in-memory sizes of the prost structs. It recurses only into the fields that decode
//! to heap memory; everything else is skipped as prost skips unknown fields.
//!
//! The estimate covers the decoded request, not the wire bytes (charged separately) and
//! not what the pipeline derives from it later. For ordinary spans (15 string
//! attributes) it comes to about 2–3 times the wire size; for malformed input it covers
//! what was scanned before the error (the decoder then refuses the request).

use std::mem::size_of;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, SummaryDataPoint,
};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// Deeper than this, prost refuses the message (its recursion limit); the scan stops.
const MAX_DEPTH: u32 = 100;

/// The decoded size of an OTLP protobuf `ExportTraceServiceRequest`, in bytes.
pub(crate) fn traces_protobuf(wire: &[u8]) -> usize {
    protobuf(wire, Msg::TracesRequest) + size_of::<ExportTraceServiceRequest>()
}

/// The decoded size of an OTLP protobuf `ExportLogsServiceRequest`, in bytes.
pub(crate) fn logs_protobuf(wire: &[u8]) -> usize {
    protobuf(wire, Msg::LogsRequest) + size_of::<ExportLogsServiceRequest>()
}

/// The decoded size of an OTLP protobuf `ExportMetricsServiceRequest`, in bytes.
pub(crate) fn metrics_protobuf(wire: &[u8]) -> usize {
    protobuf(wire, Msg::MetricsRequest) + size_of::<ExportMetricsServiceRequest>()
}

fn protobuf(wire: &[u8], root: Msg) -> usize {
    let mut cost = 0usize;
    // An error ends the scan: the estimate covers what came before it.
    let _ = scan(wire, root, 0, &mut cost);
    cost
}

/// The message types whose decoded form holds heap memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    TracesRequest,
    ResourceSpans,
    ScopeSpans,
    Span,
    Event,
    Link,
    /// `Span.status`: only its message string matters.
    Status,
    LogsRequest,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
    Resource,
    Scope,
    EntityRef,
    KeyValue,
    AnyValue,
    /// `ArrayValue` (of `AnyValue`s).
    Array,
    /// `KeyValueList` (of `KeyValue`s).
    KvList,
    MetricsRequest,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    /// `Gauge`, `Sum`, `Histogram`, `ExponentialHistogram`, `Summary`: a `Vec` of
    /// data points of the given type.
    Points(PointType),
    NumberPoint,
    HistogramPoint,
    ExpHistogramPoint,
    /// `ExponentialHistogramDataPoint.Buckets`.
    Buckets,
    SummaryPoint,
    Quantile,
    Exemplar,
}

/// The data point type of a metric's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PointType {
    Number,
    Histogram,
    ExpHistogram,
    Summary,
}

/// What a length-delimited field decodes to.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// A repeated message field: a `Vec` element of the type's size; `slot` tells the
    /// parent's `Vec`s apart.
    Repeated(Msg, usize),
    /// A singular message field, held inline in its parent.
    Single(Msg),
    /// A string or bytes field: a heap buffer of its length.
    Buffer,
    /// A repeated string field: a `String` in a `Vec` plus its buffer.
    RepeatedBuffer(usize),
    /// Packed varints (`uint64` bucket counts): up to 8 bytes per wire byte.
    PackedVarints,
    /// Anything else (unknown fields, packed scalars): no heap memory.
    Skip,
}

fn field(msg: Msg, tag: u64) -> Field {
    use Field::*;
    match (msg, tag) {
        (Msg::TracesRequest, 1) => Repeated(Msg::ResourceSpans, 0),
        (Msg::ResourceSpans, 1) => Single(Msg::Resource),
        (Msg::ResourceSpans, 2) => Repeated(Msg::ScopeSpans, 0),
        (Msg::ResourceSpans, 3) => Buffer,
        (Msg::ScopeSpans, 1) => Single(Msg::Scope),
        (Msg::ScopeSpans, 2) => Repeated(Msg::Span, 0),
        (Msg::ScopeSpans, 3) => Buffer,
        (Msg::Span, 1..=5) => Buffer,
        (Msg::Span, 9) => Repeated(Msg::KeyValue, 0),
        (Msg::Span, 11) => Repeated(Msg::Event, 1),
        (Msg::Span, 13) => Repeated(Msg::Link, 2),
        (Msg::Span, 15) => Single(Msg::Status),
        (Msg::Event, 2) => Buffer,
        (Msg::Event, 3) => Repeated(Msg::KeyValue, 0),
        (Msg::Link, 1..=3) => Buffer,
        (Msg::Link, 4) => Repeated(Msg::KeyValue, 0),
        (Msg::Status, 2) => Buffer,
        (Msg::LogsRequest, 1) => Repeated(Msg::ResourceLogs, 0),
        (Msg::ResourceLogs, 1) => Single(Msg::Resource),
        (Msg::ResourceLogs, 2) => Repeated(Msg::ScopeLogs, 0),
        (Msg::ResourceLogs, 3) => Buffer,
        (Msg::ScopeLogs, 1) => Single(Msg::Scope),
        (Msg::ScopeLogs, 2) => Repeated(Msg::LogRecord, 0),
        (Msg::ScopeLogs, 3) => Buffer,
        (Msg::LogRecord, 3 | 9 | 10 | 12) => Buffer,
        (Msg::LogRecord, 5) => Single(Msg::AnyValue),
        (Msg::LogRecord, 6) => Repeated(Msg::KeyValue, 0),
        (Msg::Resource, 1) => Repeated(Msg::KeyValue, 0),
        (Msg::Resource, 3) => Repeated(Msg::EntityRef, 1),
        (Msg::Scope, 1 | 2) => Buffer,
        (Msg::Scope, 3) => Repeated(Msg::KeyValue, 0),
        (Msg::EntityRef, 1 | 2) => Buffer,
        (Msg::EntityRef, 3) => RepeatedBuffer(0),
        (Msg::EntityRef, 4) => RepeatedBuffer(1),
        (Msg::KeyValue, 1) => Buffer,
        (Msg::KeyValue, 2) => Single(Msg::AnyValue),
        (Msg::AnyValue, 1 | 7) => Buffer,
        (Msg::AnyValue, 5) => Single(Msg::Array),
        (Msg::AnyValue, 6) => Single(Msg::KvList),
        (Msg::Array, 1) => Repeated(Msg::AnyValue, 0),
        (Msg::KvList, 1) => Repeated(Msg::KeyValue, 0),
        (Msg::MetricsRequest, 1) => Repeated(Msg::ResourceMetrics, 0),
        (Msg::ResourceMetrics, 1) => Single(Msg::Resource),
        (Msg::ResourceMetrics, 2) => Repeated(Msg::ScopeMetrics, 0),
        (Msg::ResourceMetrics, 3) => Buffer,
        (Msg::ScopeMetrics, 1) => Single(Msg::Scope),
        (Msg::ScopeMetrics, 2) => Repeated(Msg::Metric, 0),
        (Msg::ScopeMetrics, 3) => Buffer,
        (Msg::Metric, 1..=3) => Buffer,
        (Msg::Metric, 5 | 7) => Single(Msg::Points(PointType::Number)),
        (Msg::Metric, 9) => Single(Msg::Points(PointType::Histogram)),
        (Msg::Metric, 10) => Single(Msg::Points(PointType::ExpHistogram)),
        (Msg::Metric, 11) => Single(Msg::Points(PointType::Summary)),
        (Msg::Metric, 12) => Repeated(Msg::KeyValue, 0),
        (Msg::Points(PointType::Number), 1) => Repeated(Msg::NumberPoint, 0),
        (Msg::Points(PointType::Histogram), 1) => Repeated(Msg::HistogramPoint, 0),
        (Msg::Points(PointType::ExpHistogram), 1) => Repeated(Msg::ExpHistogramPoint, 0),
        (Msg::Points(PointType::Summary), 1) => Repeated(Msg::SummaryPoint, 0),
        (Msg::NumberPoint, 7) => Repeated(Msg::KeyValue, 0),
        (Msg::NumberPoint, 5) => Repeated(Msg::Exemplar, 1),
        (Msg::HistogramPoint, 9) => Repeated(Msg::KeyValue, 0),
        (Msg::HistogramPoint, 6 | 7) => Buffer,
        (Msg::HistogramPoint, 8) => Repeated(Msg::Exemplar, 1),
        (Msg::ExpHistogramPoint, 1) => Repeated(Msg::KeyValue, 0),
        (Msg::ExpHistogramPoint, 8 | 9) => Single(Msg::Buckets),
        (Msg::ExpHistogramPoint, 11) => Repeated(Msg::Exemplar, 1),
        (Msg::Buckets, 2) => PackedVarints,
        (Msg::SummaryPoint, 7) => Repeated(Msg::KeyValue, 0),
        (Msg::SummaryPoint, 6) => Repeated(Msg::Quantile, 1),
        (Msg::Exemplar, 7) => Repeated(Msg::KeyValue, 0),
        (Msg::Exemplar, 4 | 5) => Buffer,
        _ => Skip,
    }
}

/// The in-memory size of one element of a `Vec` of `msg`.
fn element_size(msg: Msg) -> usize {
    match msg {
        Msg::ResourceSpans => size_of::<ResourceSpans>(),
        Msg::ScopeSpans => size_of::<ScopeSpans>(),
        Msg::Span => size_of::<Span>(),
        Msg::Event => size_of::<Event>(),
        Msg::Link => size_of::<Link>(),
        Msg::ResourceLogs => size_of::<ResourceLogs>(),
        Msg::ScopeLogs => size_of::<ScopeLogs>(),
        Msg::LogRecord => size_of::<LogRecord>(),
        Msg::EntityRef => size_of::<EntityRef>(),
        Msg::KeyValue => size_of::<KeyValue>(),
        Msg::AnyValue => size_of::<AnyValue>(),
        Msg::Scope => size_of::<InstrumentationScope>(),
        Msg::ResourceMetrics => size_of::<ResourceMetrics>(),
        Msg::ScopeMetrics => size_of::<ScopeMetrics>(),
        Msg::Metric => size_of::<Metric>(),
        Msg::NumberPoint => size_of::<NumberDataPoint>(),
        Msg::HistogramPoint => size_of::<HistogramDataPoint>(),
        Msg::ExpHistogramPoint => size_of::<ExponentialHistogramDataPoint>(),
        Msg::SummaryPoint => size_of::<SummaryDataPoint>(),
        Msg::Quantile => size_of::<ValueAtQuantile>(),
        Msg::Exemplar => size_of::<Exemplar>(),
        // Never elements of a `Vec`.
        Msg::TracesRequest
        | Msg::LogsRequest
        | Msg::Status
        | Msg::Resource
        | Msg::Array
        | Msg::KvList
        | Msg::MetricsRequest
        | Msg::Points(_)
        | Msg::Buckets => 0,
    }
}

/// Bytes of a `Vec` of `len` elements of `size` bytes grown by pushes: its capacity
/// doubles from Rust's smallest non-zero capacity.
pub(crate) fn vec_bytes(len: usize, size: usize) -> usize {
    if len == 0 || size == 0 {
        return 0;
    }
    let min_capacity = match size {
        1 => 8,
        2..=1024 => 4,
        _ => 1,
    };
    let capacity = len
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX / 2)
        .max(min_capacity);
    capacity.saturating_mul(size)
}

/// Bytes of a heap buffer holding `len` bytes (none when empty), rounded up to the
/// allocator's 8-byte granularity.
pub(crate) fn buffer_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.saturating_add(7) & !7
    }
}

/// Most `Vec`s of one message (`Span`: attributes, events, links).
const SLOTS: usize = 3;

/// Why a scan stopped before the end of its bytes (prost's decode reports the
/// real error; the estimate keeps what it counted up to there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanStop {
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A truncated or invalid key, length or value.
    Malformed,
}

/// Adds the decoded size of the message `wire` of type `msg` to `cost`.
fn scan(mut wire: &[u8], msg: Msg, depth: u32, cost: &mut usize) -> Result<(), ScanStop> {
    if depth > MAX_DEPTH {
        return Err(ScanStop::TooDeep);
    }
    let mut counts = [(0usize, 0usize); SLOTS];
    let result = loop {
        if wire.is_empty() {
            break Ok(());
        }
        let Some(key) = varint(&mut wire) else {
            break Err(ScanStop::Malformed);
        };
        let skipped = match key & 7 {
            0 => varint(&mut wire).map(|_| ()),
            1 => advance(&mut wire, 8),
            5 => advance(&mut wire, 4),
            2 => {
                let Some(body) = varint(&mut wire)
                    .and_then(|len| usize::try_from(len).ok())
                    .and_then(|len| wire.get(..len))
                else {
                    break Err(ScanStop::Malformed);
                };
                wire = &wire[body.len()..];
                match field(msg, key >> 3) {
                    Field::Repeated(elem, slot) => {
                        counts[slot] = (counts[slot].0 + 1, element_size(elem));
                        if let Err(e) = scan(body, elem, depth + 1, cost) {
                            break Err(e);
                        }
                    }
                    Field::Single(inner) => {
                        if let Err(e) = scan(body, inner, depth + 1, cost) {
                            break Err(e);
                        }
                    }
                    Field::Buffer => *cost = cost.saturating_add(buffer_bytes(body.len())),
                    Field::RepeatedBuffer(slot) => {
                        counts[slot] = (counts[slot].0 + 1, size_of::<String>());
                        *cost = cost.saturating_add(buffer_bytes(body.len()));
                    }
                    Field::PackedVarints => {
                        *cost = cost.saturating_add(body.len().saturating_mul(8))
                    }
                    Field::Skip => {}
                }
                Some(())
            }
            // Groups (deprecated, never in OTLP) and invalid wire types: prost decides.
            _ => None,
        };
        if skipped.is_none() {
            break Err(ScanStop::Malformed);
        }
    };
    for (len, size) in counts {
        *cost = cost.saturating_add(vec_bytes(len, size));
    }
    result
}

fn varint(wire: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in wire.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *wire = &wire[i + 1..];
            return Some(value);
        }
    }
    None
}

fn advance(wire: &mut &[u8], n: usize) -> Option<()> {
    *wire = wire.get(n..)?;
    Some(())
}

/// JSON keys that decide what a container decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Other,
    ResourceSpans,
    ScopeSpans,
    Spans,
    Events,
    Links,
    ResourceLogs,
    ScopeLogs,
    LogRecords,
    Attributes,
    EntityRefs,
    StringList,
    Values,
    ArrayValue,
}

fn json_key(key: &[u8]) -> Key {
    match key {
        b"resourceSpans" => Key::ResourceSpans,
        b"scopeSpans" => Key::ScopeSpans,
        b"spans" => Key::Spans,
        b"events" => Key::Events,
        b"links" => Key::Links,
        b"resourceLogs" => Key::ResourceLogs,
        b"scopeLogs" => Key::ScopeLogs,
        b"logRecords" => Key::LogRecords,
        b"attributes" => Key::Attributes,
        b"entityRefs" => Key::EntityRefs,
        b"idKeys" | b"descriptionKeys" => Key::StringList,
        b"values" => Key::Values,
        b"arrayValue" => Key::ArrayValue,
        _ => Key::Other,
    }
}

/// One open JSON object or array.
#[derive(Debug, Clone, Copy)]
struct Frame {
    array: bool,
    /// Arrays: the size of an element once decoded (0: not kept).
    element: usize,
    /// Arrays: elements so far.
    count: usize,
    /// Arrays: a value may start here; objects: a key may start here.
    expecting: bool,
    /// Objects: the last key read.
    key: Key,
    /// The key this container is the value of.
    under: Key,
}

/// serde_json refuses JSON nested deeper than this; the scan stops there.
const MAX_JSON_DEPTH: usize = 128;

/// The decoded size of an OTLP/JSON request (traces or logs), in bytes: the `Vec`s of
/// the arrays whose keys name OTLP lists, and every string value at its JSON length
/// (an upper bound of its decoded length: hex ids and base64 decode shorter).
pub(crate) fn json(body: &[u8]) -> usize {
    let mut cost =
        size_of::<ExportTraceServiceRequest>().max(size_of::<ExportLogsServiceRequest>());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let byte = body[i];
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            b'"' => {
                let start = i + 1;
                let mut end = start;
                while end < body.len() && body[end] != b'"' {
                    end += if body[end] == b'\\' { 2 } else { 1 };
                }
                let text = body.get(start..end).unwrap_or_default();
                match stack.last_mut() {
                    Some(top) if !top.array && top.expecting => {
                        top.key = json_key(text);
                        top.expecting = false;
                    }
                    _ => {
                        value_starts(&mut stack);
                        cost = cost.saturating_add(buffer_bytes(text.len()));
                    }
                }
                i = end;
            }
            b'{' | b'[' => {
                value_starts(&mut stack);
                if stack.len() >= MAX_JSON_DEPTH {
                    break;
                }
                let (under, parent_under) = match stack.last() {
                    Some(top) if !top.array => (top.key, top.under),
                    Some(top) => (Key::Other, top.under),
                    None => (Key::Other, Key::Other),
                };
                let array = byte == b'[';
                let element = if array {
                    json_element_size(under, parent_under)
                } else {
                    0
                };
                stack.push(Frame {
                    array,
                    element,
                    count: 0,
                    expecting: true,
                    key: Key::Other,
                    under,
                });
            }
            b'}' | b']' => {
                if let Some(frame) = stack.pop() {
                    cost = cost.saturating_add(vec_bytes(frame.count, frame.element));
                }
            }
            b',' => {
                if let Some(top) = stack.last_mut() {
                    top.expecting = true;
                }
            }
            // Numbers, true, false, null: one value, whatever its length.
            _ => value_starts(&mut stack),
        }
        i += 1;
    }
    for frame in stack {
        cost = cost.saturating_add(vec_bytes(frame.count, frame.element));
    }
    cost
}

/// Counts a value starting in the innermost array, if one may start there.
fn value_starts(stack: &mut [Frame]) {
    if let Some(top) = stack.last_mut() {
        if top.array && top.expecting {
            top.count += 1;
            top.expecting = false;
        }
    }
}

/// The decoded size of an element of an array under `key` (in an object under
/// `parent`).
fn json_element_size(key: Key, parent: Key) -> usize {
    match key {
        Key::ResourceSpans => size_of::<ResourceSpans>(),
        Key::ScopeSpans => size_of::<ScopeSpans>(),
        Key::Spans => size_of::<Span>(),
        Key::Events => size_of::<Event>(),
        Key::Links => size_of::<Link>(),
        Key::ResourceLogs => size_of::<ResourceLogs>(),
        Key::ScopeLogs => size_of::<ScopeLogs>(),
        Key::LogRecords => size_of::<LogRecord>(),
        Key::Attributes => size_of::<KeyValue>(),
        Key::EntityRefs => size_of::<EntityRef>(),
        Key::StringList => size_of::<String>(),
        Key::Values if parent == Key::ArrayValue => size_of::<AnyValue>(),
        Key::Values => size_of::<KeyValue>(),
        Key::Other | Key::ArrayValue => 0,
    }
}

#[cfg(test)]
mod tests;
