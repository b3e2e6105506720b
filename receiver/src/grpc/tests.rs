use super::*;

/// The response tonic sends for `status` before any handler runs, rewritten.
fn rewritten(status: Status) -> (String, String) {
    let response = refusal_codes(status.into_http::<()>());
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    (header("grpc-status"), header("grpc-message"))
}

#[test]
fn undecodable_messages_are_invalid_argument_with_their_reason() {
    // What tonic-prost answers for a message prost cannot decode.
    let decode_error = ExportTraceServiceRequest::decode(&b"\x0a\x05ab"[..])
        .expect_err("truncated message decoded");
    let (code, message) = rewritten(Status::internal(decode_error.to_string()));
    assert_eq!(code, "3");
    assert!(message.contains("failed%20to%20decode"), "{message}");
    // A value nested past prost's limit: the reason survives the cut.
    let long = format!(
        "failed to decode Protobuf message: {}recursion limit reached",
        "AnyValue.value: KeyValueList.values: KeyValue.value: ".repeat(100)
    );
    let (code, message) = rewritten(Status::internal(long));
    assert_eq!(code, "3");
    assert!(message.len() < 600, "{message}");
    assert!(message.starts_with("failed%20to%20decode"), "{message}");
    assert!(
        message.ends_with("recursion%20limit%20reached"),
        "{message}"
    );
    assert!(message.contains("%20%E2%80%A6%20"), "{message}");
    let (code, _) = rewritten(Status::internal(
        "Error decompressing: invalid gzip header, while sending request",
    ));
    assert_eq!(code, "3");
}

#[test]
fn other_codes_are_kept_and_oversize_is_resource_exhausted() {
    assert_eq!(rewritten(Status::internal("something else")).0, "13");
    assert_eq!(
            rewritten(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified"
            ))
            .0,
            "13"
        );
    assert_eq!(rewritten(Status::out_of_range("too large")).0, "8");
    assert_eq!(rewritten(Status::unavailable("later")).0, "14");
    let ok = refusal_codes(axum::http::Response::new(()));
    assert!(ok.headers().get("grpc-status").is_none());
}
