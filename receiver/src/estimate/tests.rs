use super::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An ordinary span: ids, a name, 15 string attributes.
fn ordinary_span(i: usize) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        parent_span_id: vec![3; 8],
        name: format!("GET /api/v1/items/{i}"),
        kind: 2,
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: (0..15)
            .map(|k| string_attr(&format!("app.attribute.{k}"), &format!("value-{i}-{k}")))
            .collect(),
        ..Default::default()
    }
}

fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attr("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The heap bytes prost actually allocates for a decoded value, measured by
/// summing capacities the way the estimate models them (an independent walk of
/// the decoded structs).
fn actual_traces(request: &ExportTraceServiceRequest) -> usize {
    fn kv(kvs: &Vec<KeyValue>) -> usize {
        vec_cap(kvs)
            + kvs
                .iter()
                .map(|k| buffer_bytes(k.key.capacity()) + any(k.value.as_ref()))
                .sum::<usize>()
    }
    fn any(value: Option<&AnyValue>) -> usize {
        match value.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => buffer_bytes(s.capacity()),
            Some(Value::BytesValue(b)) => buffer_bytes(b.len()),
            Some(Value::ArrayValue(a)) => {
                vec_cap(&a.values) + a.values.iter().map(|v| any(Some(v))).sum::<usize>()
            }
            Some(Value::KvlistValue(l)) => kv(&l.values),
            _ => 0,
        }
    }
    fn vec_cap<T>(v: &Vec<T>) -> usize {
        v.capacity() * size_of::<T>()
    }
    let mut total = size_of::<ExportTraceServiceRequest>() + vec_cap(&request.resource_spans);
    for rs in &request.resource_spans {
        total += rs.resource.as_ref().map_or(0, |r| kv(&r.attributes));
        total += buffer_bytes(rs.schema_url.capacity());
        total += vec_cap(&rs.scope_spans);
        for ss in &rs.scope_spans {
            total += vec_cap(&ss.spans);
            for s in &ss.spans {
                total += buffer_bytes(s.trace_id.capacity())
                    + buffer_bytes(s.span_id.capacity())
                    + buffer_bytes(s.parent_span_id.capacity())
                    + buffer_bytes(s.name.capacity())
                    + kv(&s.attributes);
            }
        }
    }
    total
}

#[test]
fn the_estimate_matches_what_prost_allocates() {
    for n in [1, 3, 100, 1000] {
        let wire = traces((0..n).map(ordinary_span).collect()).encode_to_vec();
        let decoded = ExportTraceServiceRequest::decode(&wire[..]).unwrap();
        assert_eq!(traces_protobuf(&wire), actual_traces(&decoded), "{n} spans");
    }
}

#[test]
fn ordinary_spans_decode_to_a_few_times_their_wire_size() {
    let wire = traces((0..1000).map(ordinary_span).collect()).encode_to_vec();
    let ratio = traces_protobuf(&wire) as f64 / wire.len() as f64;
    assert!((1.0..4.0).contains(&ratio), "ratio {ratio:.2}");
}

#[test]
fn empty_attributes_are_charged_their_structs() {
    let n = 100_000;
    let span = Span {
        attributes: vec![KeyValue::default(); n],
        ..Default::default()
    };
    let wire = traces(vec![span]).encode_to_vec();
    let estimate = traces_protobuf(&wire);
    assert!(estimate >= n * size_of::<KeyValue>(), "{estimate}");
    assert!(
        estimate as f64 / wire.len() as f64 > 20.0,
        "{estimate} for {}",
        wire.len()
    );
    let decoded = ExportTraceServiceRequest::decode(&wire[..]).unwrap();
    assert_eq!(estimate, actual_traces(&decoded));
}

#[test]
fn nested_values_and_logs_are_counted() {
    let nested = AnyValue {
        value: Some(Value::KvlistValue(KeyValueList {
            values: vec![KeyValue {
                key: "k".into(),
                value: Some(AnyValue {
                    value: Some(Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue::default(); 10],
                    })),
                }),
                ..Default::default()
            }],
        })),
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    body: Some(nested),
                    attributes: vec![string_attr("a", "b")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let wire = request.encode_to_vec();
    let estimate = logs_protobuf(&wire);
    let at_least =
        size_of::<LogRecord>() * 4 + size_of::<KeyValue>() * 4 * 2 + size_of::<AnyValue>() * 16;
    assert!(estimate >= at_least, "{estimate} < {at_least}");
}

#[test]
fn malformed_input_is_estimated_up_to_the_error() {
    assert_eq!(traces_protobuf(b""), size_of::<ExportTraceServiceRequest>());
    // A length running past the end; a varint that never ends; a group.
    for wire in [&b"\x0a\xff\x01ab"[..], &[0xff; 12][..], &b"\x0b\x0c"[..]] {
        assert!(traces_protobuf(wire) < 1024);
    }
    // Nested past prost's limit (AnyValue → ArrayValue → AnyValue …): stops, no
    // stack overflow.
    let mut wire = Vec::new();
    for level in 0..10_000 {
        let mut outer = vec![if level % 2 == 0 { 0x0a } else { 0x2a }];
        prost::encoding::encode_varint(wire.len() as u64, &mut outer);
        outer.extend_from_slice(&wire);
        wire = outer;
    }
    assert!(protobuf(&wire, Msg::AnyValue) < 100 * 1024);
}

#[test]
fn json_lists_are_counted_by_their_keys() {
    let empty =
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{},{},{},{},{}]}]}]}]}"#;
    let estimate = json(empty);
    let at_least = size_of::<ResourceSpans>() * 4
        + size_of::<ScopeSpans>() * 4
        + size_of::<Span>() * 4
        + size_of::<KeyValue>() * 8;
    assert!(estimate >= at_least, "{estimate} < {at_least}");
    // Strings count at their length; values of an arrayValue are AnyValues.
    let values = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"arrayValue":{"values":[{"stringValue":"0123456789abcdef"}, {"intValue": 5}]}}}]}]}]}"#;
    let base = json(br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{}]}]}]}"#);
    assert_eq!(json(values) - base, 4 * size_of::<AnyValue>() + 16);
    // Escaped quotes do not end a string; keys are not values.
    let escaped = br#"{"resourceLogs":[{"x":"a\"b\\"}]}"#;
    assert_eq!(
        json(escaped),
        json(br#"{"resourceLogs":[{}]}"#) + buffer_bytes(6)
    );
}

#[test]
fn json_of_ordinary_spans_is_not_inflated() {
    let request = traces((0..1000).map(ordinary_span).collect());
    let body = serde_json::to_vec(&request).unwrap();
    let ratio = json(&body) as f64 / body.len() as f64;
    assert!((0.5..3.0).contains(&ratio), "ratio {ratio:.2}");
}

#[test]
fn deep_or_broken_json_is_scanned_safely() {
    assert!(json(&vec![b'['; 1_000_000]) < 1024 * 1024);
    assert!(json(b"{\"a\":\"unterminated") < 1024);
    assert!(json(b"]]]}}}") < 1024);
}

#[test]
fn metric_points_and_their_attributes_are_charged() {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::{
        exponential_histogram_data_point::Buckets, ExponentialHistogram, Histogram,
    };
    let request = |points: usize| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "gen_ai.client.token.usage".into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points: (0..points)
                                .map(|_| HistogramDataPoint {
                                    attributes: vec![KeyValue::default(); 10],
                                    bucket_counts: vec![1; 16],
                                    explicit_bounds: vec![1.0; 15],
                                    ..Default::default()
                                })
                                .collect(),
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "e".into(),
                        data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![ExponentialHistogramDataPoint {
                                positive: Some(Buckets {
                                    offset: 0,
                                    bucket_counts: vec![1; 1000],
                                }),
                                ..Default::default()
                            }],
                            aggregation_temporality: 1,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    for n in [1, 100] {
        let wire = request(n).encode_to_vec();
        let estimate = metrics_protobuf(&wire);
        // At least the points, their attribute structs, counts and bounds,
        // and the exponential buckets (1 wire byte each, 8 decoded).
        let floor =
            n * (size_of::<HistogramDataPoint>() + 10 * size_of::<KeyValue>() + 31 * 8) + 1000 * 8;
        assert!(estimate >= floor, "{n} points: {estimate} < {floor}");
        assert!(
            estimate <= 3 * floor,
            "{n} points: {estimate} > 3 × {floor}"
        );
    }
}

#[test]
fn vec_capacities_double_from_four() {
    assert_eq!(vec_bytes(0, 64), 0);
    assert_eq!(vec_bytes(1, 64), 4 * 64);
    assert_eq!(vec_bytes(5, 64), 8 * 64);
    assert_eq!(vec_bytes(1 << 20, 1), 1 << 20);
    assert_eq!(vec_bytes((1 << 20) + 1, 1), 1 << 21);
    assert_eq!(vec_bytes(1, 2000), 2000);
    assert_eq!(vec_bytes(usize::MAX, 64), usize::MAX);
}
