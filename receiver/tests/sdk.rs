//! The real OpenTelemetry Rust SDK as client: OTLP gRPC (tonic) and OTLP/HTTP (protobuf).

mod common;

use common::*;
use opentelemetry::logs::{LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry::trace::{Span, SpanKind, Tracer, TracerProvider};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

fn emit_span(exporter: SpanExporter, name: &str) {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    let tracer = provider.tracer("tally-receiver-test");
    let mut span = tracer
        .span_builder(name.to_owned())
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("user.id", "u-42")])
        .start(&tracer);
    span.end();
    provider.shutdown().expect("tracer provider shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_over_grpc_and_http() {
    let running = start().await;
    let grpc = running.grpc_url();
    let http = running.url("/v1/traces");
    // The SDK's simple processor and the blocking HTTP client block: keep them off the
    // async workers.
    tokio::task::spawn_blocking(move || {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(grpc)
            .build()
            .expect("gRPC exporter");
        emit_span(exporter, "over-grpc");
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http)
            .build()
            .expect("HTTP exporter");
        emit_span(exporter, "over-http");
    })
    .await
    .unwrap();

    let got = running.recorder.traces();
    assert_eq!(got.len(), 2);
    for (request, name) in got.iter().zip(["over-grpc", "over-http"]) {
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, name);
        assert_eq!(span.kind, 2);
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.span_id.len(), 8);
        assert_eq!(span.attributes[0].key, "user.id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_logs_over_http() {
    let running = start().await;
    let http = running.url("/v1/logs");
    tokio::task::spawn_blocking(move || {
        let exporter = LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http)
            .build()
            .expect("HTTP log exporter");
        let provider = SdkLoggerProvider::builder()
            .with_simple_exporter(exporter)
            .build();
        let logger = provider.logger("tally-receiver-test");
        let mut record = logger.create_log_record();
        record.set_body("user logged in".into());
        record.set_severity_number(Severity::Info);
        record.add_attribute("enduser.id", "u-42");
        logger.emit(record);
        provider.shutdown().expect("logger provider shutdown");
    })
    .await
    .unwrap();

    let got = running.recorder.logs();
    assert_eq!(got.len(), 1);
    let record = &got[0].resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_number, 9);
    assert_eq!(
        record.body.as_ref().and_then(|b| b.value.clone()),
        Some(Value::StringValue("user logged in".into()))
    );
}
