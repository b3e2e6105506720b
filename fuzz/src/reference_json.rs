//! The OTLP/JSON path as a check on the protobuf one: a request that decoded from protobuf
//! (so valid OTLP) is written as OTLP/JSON by a reference encoder (opentelemetry-proto's
//! serde types, with the proto3 JSON spellings of non-finite doubles they lack) and must
//! decode through the receiver's JSON path to the same request. A refusal of that valid
//! input, or any difference, panics: the fuzzer reports it like a crash.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use prost::Message;
use serde_json::Value as Json;

/// AnyValue nesting beyond which the JSON form would pass serde_json's recursion limit
/// (128 containers; each level of a list takes three): such a request is valid protobuf
/// but not decodable JSON, a documented limit, so it is not compared.
const MAX_JSON_DEPTH: usize = 30;

/// Stand-ins for non-finite doubles while serde_json writes the tree (it writes them as
/// `null`); replaced by `"NaN"`, `"Infinity"`, `"-Infinity"` afterwards.
const STANDINS: [(f64, &str); 3] = [
    (3.141_592_653_589_793e-300, "NaN"),
    (2.718_281_828_459_045e-300, "Infinity"),
    (-2.718_281_828_459_045e-300, "-Infinity"),
];

/// Walks every `AnyValue` of a list of attributes.
fn each_value(attributes: &mut [KeyValue], f: &mut dyn FnMut(&mut AnyValue, usize)) {
    for kv in attributes {
        if let Some(value) = kv.value.as_mut() {
            walk(value, 1, f);
        }
    }
}

fn walk(value: &mut AnyValue, depth: usize, f: &mut dyn FnMut(&mut AnyValue, usize)) {
    f(value, depth);
    match value.value.as_mut() {
        Some(Value::ArrayValue(a)) => {
            for v in &mut a.values {
                walk(v, depth + 1, f);
            }
        }
        Some(Value::KvlistValue(l)) => {
            for kv in &mut l.values {
                if let Some(v) = kv.value.as_mut() {
                    walk(v, depth + 1, f);
                }
            }
        }
        _ => {}
    }
}

/// Every `AnyValue` of a trace request.
fn traces_values(request: &mut ExportTraceServiceRequest, f: &mut dyn FnMut(&mut AnyValue, usize)) {
    for rs in &mut request.resource_spans {
        if let Some(r) = rs.resource.as_mut() {
            each_value(&mut r.attributes, f);
        }
        for ss in &mut rs.scope_spans {
            if let Some(s) = ss.scope.as_mut() {
                each_value(&mut s.attributes, f);
            }
            for span in &mut ss.spans {
                each_value(&mut span.attributes, f);
                for event in &mut span.events {
                    each_value(&mut event.attributes, f);
                }
                for link in &mut span.links {
                    each_value(&mut link.attributes, f);
                }
            }
        }
    }
}

/// Every `AnyValue` of a logs request (bodies included).
fn logs_values(request: &mut ExportLogsServiceRequest, f: &mut dyn FnMut(&mut AnyValue, usize)) {
    for rl in &mut request.resource_logs {
        if let Some(r) = rl.resource.as_mut() {
            each_value(&mut r.attributes, f);
        }
        for sl in &mut rl.scope_logs {
            if let Some(s) = sl.scope.as_mut() {
                each_value(&mut s.attributes, f);
            }
            for record in &mut sl.log_records {
                each_value(&mut record.attributes, f);
                if let Some(body) = record.body.as_mut() {
                    walk(body, 1, f);
                }
            }
        }
    }
}

/// What both paths must agree on: NaNs made one NaN, and the profiles-only string-table
/// reference (which OTLP/JSON of traces and logs does not carry) made absent.
fn canonical(value: &mut AnyValue, _depth: usize) {
    match value.value {
        Some(Value::DoubleValue(d)) if d.is_nan() => {
            value.value = Some(Value::DoubleValue(f64::NAN))
        }
        Some(Value::StringValueStrindex(_)) => value.value = None,
        _ => {}
    }
}

fn stand_in(value: &mut AnyValue, _depth: usize) {
    if let Some(Value::DoubleValue(d)) = value.value.as_mut() {
        if d.is_nan() {
            *d = STANDINS[0].0;
        } else if *d == f64::INFINITY {
            *d = STANDINS[1].0;
        } else if *d == f64::NEG_INFINITY {
            *d = STANDINS[2].0;
        }
    }
}

fn restore(json: &mut Json) {
    match json {
        Json::Object(map) => {
            for (key, value) in map.iter_mut() {
                if let (true, Json::Number(n)) = (key == "doubleValue", &*value) {
                    if let Some((_, text)) = STANDINS.iter().find(|(d, _)| n.as_f64() == Some(*d)) {
                        *value = Json::String((*text).to_owned());
                    }
                } else {
                    restore(value);
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(restore),
        _ => {}
    }
}

/// The reference OTLP/JSON from serde_json's tree of a message whose non-finite doubles
/// were stood in.
fn to_json(tree: Result<Json, serde_json::Error>) -> Vec<u8> {
    let mut json = match tree {
        Ok(json) => json,
        Err(e) => panic!("the reference encoder failed: {e}"),
    };
    restore(&mut json);
    match serde_json::to_vec(&json) {
        Ok(bytes) => bytes,
        Err(e) => panic!("JSON text: {e}"),
    }
}

/// Checks a protobuf-decoded trace request against its OTLP/JSON form (see the module).
pub fn check_traces(request: &ExportTraceServiceRequest) {
    let mut canonical_request = request.clone();
    let mut deepest = 0;
    traces_values(&mut canonical_request, &mut |v, depth| {
        deepest = deepest.max(depth);
        canonical(v, depth);
    });
    if deepest > MAX_JSON_DEPTH {
        return;
    }
    let mut standing_in = canonical_request.clone();
    traces_values(&mut standing_in, &mut stand_in);
    let json = to_json(serde_json::to_value(&standing_in));
    let mut decoded = match tally_receiver::fuzzing::traces(&json, true) {
        Ok(decoded) => decoded,
        Err(e) => panic!("valid OTLP refused over JSON: {e}"),
    };
    traces_values(&mut decoded, &mut canonical);
    assert!(
        decoded.encode_to_vec() == canonical_request.encode_to_vec(),
        "OTLP/JSON decoded to another request:\nprotobuf: {canonical_request:?}\njson: {decoded:?}"
    );
}

/// [`check_traces`] for a logs request.
pub fn check_logs(request: &ExportLogsServiceRequest) {
    let mut canonical_request = request.clone();
    let mut deepest = 0;
    logs_values(&mut canonical_request, &mut |v, depth| {
        deepest = deepest.max(depth);
        canonical(v, depth);
    });
    if deepest > MAX_JSON_DEPTH {
        return;
    }
    let mut standing_in = canonical_request.clone();
    logs_values(&mut standing_in, &mut stand_in);
    let json = to_json(serde_json::to_value(&standing_in));
    let mut decoded = match tally_receiver::fuzzing::logs(&json, true) {
        Ok(decoded) => decoded,
        Err(e) => panic!("valid OTLP refused over JSON: {e}"),
    };
    logs_values(&mut decoded, &mut canonical);
    assert!(
        decoded.encode_to_vec() == canonical_request.encode_to_vec(),
        "OTLP/JSON decoded to another request:\nprotobuf: {canonical_request:?}\njson: {decoded:?}"
    );
}
