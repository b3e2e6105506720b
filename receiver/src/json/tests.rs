use super::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

fn span_json(span: &str) -> String {
    format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}"#)
}

#[test]
fn standard_request_decodes() {
    let body = span_json(
        r#"{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
                "name":"op","kind":2,"startTimeUnixNano":"1544712660000000000",
                "endTimeUnixNano":1544712661000000000,
                "attributes":[{"key":"n","value":{"intValue":"42"}},
                              {"key":"m","value":{"intValue":43}}],
                "status":{"code":2}}"#,
    );
    let request = decode_traces(body.as_bytes()).unwrap();
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.span_id, hex::decode("eee19b7ec3c1b174").unwrap());
    assert_eq!(span.kind, 2);
    assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(
        span.attributes[0].value.as_ref().unwrap().value,
        Some(Value::IntValue(42))
    );
    assert_eq!(
        span.attributes[1].value.as_ref().unwrap().value,
        Some(Value::IntValue(43))
    );
    assert_eq!(span.status.as_ref().unwrap().code, 2);
}

#[test]
fn empty_array_and_kvlist_values_are_empty_lists() {
    let body = span_json(
        r#"{"attributes":[
                {"key":"a","value":{"arrayValue":{}}},
                {"key":"k","value":{"kvlistValue":{}}},
                {"key":"nested","value":{"arrayValue":{"values":[{"arrayValue":{}},{"kvlistValue":{"values":[
                    {"key":"inner","value":{"kvlistValue":{}}}]}}]}}}]}"#,
    );
    let request = decode_traces(body.as_bytes()).unwrap();
    let attributes = &request.resource_spans[0].scope_spans[0].spans[0].attributes;
    let value = |i: usize| attributes[i].value.as_ref().unwrap().value.clone().unwrap();
    let Value::ArrayValue(a) = value(0) else {
        panic!("{:?}", value(0))
    };
    assert!(a.values.is_empty());
    let Value::KvlistValue(k) = value(1) else {
        panic!("{:?}", value(1))
    };
    assert!(k.values.is_empty());
    let Value::ArrayValue(nested) = value(2) else {
        panic!("{:?}", value(2))
    };
    assert_eq!(nested.values.len(), 2);
    let Some(Value::KvlistValue(inner)) = &nested.values[1].value else {
        panic!("{nested:?}")
    };
    assert_eq!(
        inner.values[0].value.as_ref().unwrap().value,
        Some(Value::KvlistValue(Default::default()))
    );
}

#[test]
fn enum_names_are_their_numbers() {
    let body = span_json(r#"{"kind":"SPAN_KIND_SERVER","status":{"code":"STATUS_CODE_ERROR"}}"#);
    let request = decode_traces(body.as_bytes()).unwrap();
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(span.status.as_ref().unwrap().code, StatusCode::Error as i32);

    let logs = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[
            {"severityNumber":"SEVERITY_NUMBER_INFO","body":{"stringValue":"hi"}}]}]}]}"#;
    let request = decode_logs(logs.as_bytes()).unwrap();
    let record = &request.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_number, SeverityNumber::Info as i32);

    let err = decode_traces(span_json(r#"{"kind":"SPAN_KIND_NOPE"}"#).as_bytes())
        .unwrap_err()
        .0;
    assert!(err.contains("SPAN_KIND_NOPE"), "{err}");
    assert!(
        err.contains("resourceSpans[0].scopeSpans[0].spans[0].kind"),
        "{err}"
    );
}

#[test]
fn sixty_four_bit_integers_as_strings_and_numbers() {
    let body = span_json(
        r#"{"startTimeUnixNano":"18446744073709551615","endTimeUnixNano":18446744073709551615,
                "attributes":[{"key":"min","value":{"intValue":"-9223372036854775808"}},
                              {"key":"max","value":{"intValue":9223372036854775807}}]}"#,
    );
    let request = decode_traces(body.as_bytes()).unwrap();
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.start_time_unix_nano, u64::MAX);
    assert_eq!(span.end_time_unix_nano, u64::MAX);
    assert_eq!(
        span.attributes[0].value.as_ref().unwrap().value,
        Some(Value::IntValue(i64::MIN))
    );
    assert_eq!(
        span.attributes[1].value.as_ref().unwrap().value,
        Some(Value::IntValue(i64::MAX))
    );
}

#[test]
fn snake_case_keys_are_refused_by_name() {
    let err = decode_traces(br#"{"resource_spans":[]}"#).unwrap_err().0;
    assert!(err.contains("\"resource_spans\""), "{err}");
    assert!(err.contains("resourceSpans"), "{err}");

    let err = decode_traces(span_json(r#"{"trace_id":"00"}"#).as_bytes())
        .unwrap_err()
        .0;
    assert!(
            err.starts_with(
                "invalid OTLP/JSON at resourceSpans[0].scopeSpans[0].spans[0]: key \"trace_id\" is snake_case"
            ),
            "{err}"
        );

    let err = decode_traces(
        span_json(r#"{"attributes":[{"key":"a","value":{"string_value":"x"}}]}"#).as_bytes(),
    )
    .unwrap_err()
    .0;
    assert!(err.contains("\"string_value\""), "{err}");

    // Unknown camelCase keys stay ignored, as the spec requires.
    let request =
        decode_traces(span_json(r#"{"futureField":{"x":1},"name":"a"}"#).as_bytes()).unwrap();
    assert_eq!(request.resource_spans[0].scope_spans[0].spans[0].name, "a");
}

#[test]
fn malformed_json_is_an_error_with_position() {
    let err = decode_traces(b"{\"resourceSpans\":[").unwrap_err().0;
    assert!(err.contains("line 1"), "{err}");
    let err = decode_traces(b"{} trailing").unwrap_err().0;
    assert!(err.contains("trailing"), "{err}");
    let err = decode_traces(span_json(r#"{"traceId":"zz"}"#).as_bytes())
        .unwrap_err()
        .0;
    assert!(err.contains("traceId"), "{err}");
    assert!(decode_traces(b"{}").unwrap().resource_spans.is_empty());
    let err = decode_traces(b"[]").unwrap_err().0;
    assert!(err.contains("expected a JSON object"), "{err}");
    let err = decode_traces(span_json("[]").as_bytes()).unwrap_err().0;
    assert!(err.contains("spans[0]"), "{err}");
}

#[test]
fn thirty_two_bit_integers_as_strings() {
    let body =
        span_json(r#"{"kind":"3","flags":"257","droppedAttributesCount":"4","status":{"code":1}}"#);
    let request = decode_traces(body.as_bytes()).unwrap();
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(
        (span.kind, span.flags, span.dropped_attributes_count),
        (3, 257, 4)
    );
    let err = decode_traces(span_json(r#"{"flags":"-1"}"#).as_bytes())
        .unwrap_err()
        .0;
    assert!(err.contains("flags"), "{err}");
    let err = decode_traces(span_json(r#"{"flags":"SPAN_KIND_SERVER"}"#).as_bytes())
        .unwrap_err()
        .0;
    assert!(err.contains("flags"), "{err}");
}

fn double_attribute(json: &str) -> Result<f64, String> {
    let body = span_json(&format!(
        r#"{{"attributes":[{{"key":"d","value":{{"doubleValue":{json}}}}}]}}"#
    ));
    let request = decode_traces(body.as_bytes()).map_err(|e| e.0)?;
    match &request.resource_spans[0].scope_spans[0].spans[0].attributes[0]
        .value
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::DoubleValue(d)) => Ok(*d),
        other => Err(format!("not a double: {other:?}")),
    }
}

#[test]
fn doubles_in_proto3_json_spellings() {
    assert!(double_attribute(r#""NaN""#).unwrap().is_nan());
    assert_eq!(double_attribute(r#""Infinity""#).unwrap(), f64::INFINITY);
    assert_eq!(
        double_attribute(r#""-Infinity""#).unwrap(),
        f64::NEG_INFINITY
    );
    assert_eq!(double_attribute(r#""1.5""#).unwrap(), 1.5);
    assert_eq!(double_attribute(r#""-2e3""#).unwrap(), -2000.0);
    assert_eq!(double_attribute("2.5").unwrap(), 2.5);
    assert_eq!(double_attribute("7").unwrap(), 7.0);
    assert_eq!(double_attribute("-7").unwrap(), -7.0);
    assert_eq!(
        double_attribute("1.7976931348623157e308").unwrap(),
        f64::MAX
    );
    // Exact, as protobuf carries it (serde_json's default parser is one ulp off here).
    let d = 1.849_124_029_252_872e76_f64;
    assert_eq!(
        double_attribute(&d.to_string()).unwrap().to_bits(),
        d.to_bits()
    );
    assert_eq!(
        double_attribute(&format!("{d:e}")).unwrap().to_bits(),
        d.to_bits()
    );
    // Rust's spellings and out-of-range literals are not proto3 JSON.
    for bad in [
        r#""inf""#,
        r#""nan""#,
        r#""infinity""#,
        r#""1e400""#,
        r#""x""#,
        "true",
    ] {
        let err = double_attribute(bad).unwrap_err();
        assert!(err.contains("doubleValue"), "{bad}: {err}");
    }
}

#[test]
fn camel_case_of_snake() {
    assert_eq!(camel_case("parent_span_id"), "parentSpanId");
    assert_eq!(camel_case("name"), "name");
}
