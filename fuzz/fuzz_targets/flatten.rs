//! Attribute flattening: resource, scope and record attributes (arbitrary trees) of spans
//! and log records through classification (identity fields, the attribute map) and token
//! usage extraction; every event's and token row's attributes encode as `jsonb`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use tally_fuzz::{attributes, Attr, Value};

#[derive(Debug, Arbitrary)]
struct Record {
    attributes: Vec<Attr>,
    time: u64,
    error: bool,
    event_name: String,
    body: Value,
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
    parent: Option<[u8; 8]>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    resource: Vec<Attr>,
    scope: Vec<Attr>,
    records: Vec<Record>,
}

fuzz_target!(|input: Input| {
    let resource = Some(Resource {
        attributes: attributes(&input.resource, 0),
        ..Default::default()
    });
    let scope = Some(InstrumentationScope {
        attributes: attributes(&input.scope, 0),
        ..Default::default()
    });
    let spans: Vec<Span> = input
        .records
        .iter()
        .map(|r| Span {
            trace_id: r.trace_id.map(Vec::from).unwrap_or_default(),
            span_id: r.span_id.map(Vec::from).unwrap_or_default(),
            parent_span_id: r.parent.map(Vec::from).unwrap_or_default(),
            start_time_unix_nano: r.time,
            end_time_unix_nano: r.time.wrapping_add(1_000_000),
            attributes: attributes(&r.attributes, 0),
            kind: span::SpanKind::Client as i32,
            status: Some(Status {
                code: if r.error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Ok
                } as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let log_records: Vec<LogRecord> = input
        .records
        .iter()
        .map(|r| LogRecord {
            time_unix_nano: r.time,
            severity_number: if r.error { 17 } else { 9 },
            event_name: r.event_name.clone(),
            body: r.body.to_otlp(0),
            attributes: attributes(&r.attributes, 0),
            trace_id: r.trace_id.map(Vec::from).unwrap_or_default(),
            span_id: r.span_id.map(Vec::from).unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    let traces = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource.clone(),
            scope_spans: vec![ScopeSpans {
                scope: scope.clone(),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource,
            scope_logs: vec![ScopeLogs {
                scope,
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    // Flattening alone (no redaction first), as classification sees a request …
    let now = chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default();
    for event in tally_processors::classify_traces(&traces, now)
        .events
        .iter()
        .chain(tally_processors::classify_logs(&logs, now).events.iter())
    {
        let mut out = bytes::BytesMut::new();
        if let Err(e) = tally_exporters::postgres::copy::activity_row(&mut out, event) {
            panic!("unredacted event not encodable: {e}");
        }
        assert!(!event.action.trim().is_empty() || event.action.is_empty());
    }
    // … and the whole chain.
    tally_fuzz::CHAIN.traces(traces);
    tally_fuzz::CHAIN.logs(logs);
});
