//! The real `opentelemetry-otlp` Rust SDK exports spans and log records over gRPC
//! and over HTTP/protobuf to a running Tally; the events are read back through
//! `GET /api/v1/activity` with every filter and checked field by field.

mod common;

use std::time::{Duration, SystemTime};

use common::{all_activity, eventually, Tally, TestDatabase};
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::Value;

/// What one transport sent, to compare with what the API returns.
struct Sent {
    login_trace_id: String,
    login_span_id: String,
    view_trace_id: String,
}

fn resource(service: &str) -> Resource {
    Resource::builder()
        .with_service_name(service.to_string())
        .build()
}

/// Emits the same scenario through any tracer/logger provider pair:
/// a failed login (HTTP 401), a successful document view, a span without an
/// action (not stored), and a `doc.download` log event linked to the view span.
fn emit_scenario(
    tracer_provider: &SdkTracerProvider,
    logger_provider: &SdkLoggerProvider,
    tenant: &str,
) -> Sent {
    let tracer = tracer_provider.tracer("e2e");
    let mut login = tracer
        .span_builder("POST /login")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("activity.action", "auth.login"),
            KeyValue::new("enduser.id", "alice"),
            KeyValue::new("tenant.id", tenant.to_string()),
            KeyValue::new("session.id", "sess-1"),
            KeyValue::new("http.response.status_code", 401),
            KeyValue::new("app.attempt", 3),
        ])
        .start(&tracer);
    let login_ctx = login.span_context().clone();
    login.end();

    let mut view = tracer
        .span_builder("GET /documents/doc-42")
        .with_attributes([
            KeyValue::new("activity.action", "document.view"),
            KeyValue::new("user.id", "bob"),
            KeyValue::new("tenant.id", tenant.to_string()),
            KeyValue::new("activity.resource.type", "document"),
            KeyValue::new("activity.resource.id", "doc-42"),
        ])
        .start(&tracer);
    view.set_status(Status::Ok);
    let view_ctx = view.span_context().clone();

    let logger = logger_provider.logger("e2e");
    let mut record = logger.create_log_record();
    record.set_event_name("doc.download");
    record.set_timestamp(SystemTime::now());
    record.set_severity_number(Severity::Info);
    record.add_attribute("enduser.id", "bob");
    record.add_attribute("tenant.id", tenant.to_string());
    record.add_attribute("activity.resource.type", "document");
    record.add_attribute("activity.resource.id", "doc-42");
    record.set_trace_context(view_ctx.trace_id(), view_ctx.span_id(), None);
    logger.emit(record);
    view.end();

    let mut plain = tracer.start("no action here");
    plain.end();

    tracer_provider.force_flush().expect("flush spans");
    logger_provider.force_flush().expect("flush logs");
    Sent {
        login_trace_id: login_ctx.trace_id().to_string(),
        login_span_id: login_ctx.span_id().to_string(),
        view_trace_id: view_ctx.trace_id().to_string(),
    }
}

fn grpc_providers(endpoint: &str) -> (SdkTracerProvider, SdkLoggerProvider) {
    let spans = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("grpc span exporter");
    let logs = LogExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .expect("grpc log exporter");
    (
        SdkTracerProvider::builder()
            .with_resource(resource("shop-grpc"))
            .with_batch_exporter(spans)
            .build(),
        SdkLoggerProvider::builder()
            .with_resource(resource("shop-grpc"))
            .with_batch_exporter(logs)
            .build(),
    )
}

fn http_providers(traces_url: &str, logs_url: &str) -> (SdkTracerProvider, SdkLoggerProvider) {
    let spans = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url)
        .build()
        .expect("http span exporter");
    let logs = LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(logs_url)
        .build()
        .expect("http log exporter");
    (
        SdkTracerProvider::builder()
            .with_resource(resource("shop-http"))
            .with_simple_exporter(spans)
            .build(),
        SdkLoggerProvider::builder()
            .with_resource(resource("shop-http"))
            .with_simple_exporter(logs)
            .build(),
    )
}

fn one<'a>(items: &'a [Value], action: &str) -> &'a Value {
    let matching: Vec<&Value> = items.iter().filter(|i| i["action"] == action).collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one {action} expected in {items:#?}"
    );
    matching[0]
}

/// Checks every stored field for one tenant's scenario, and every filter.
async fn check_tenant(tally: &Tally, tenant: &str, service: &str, sent: &Sent) {
    let items = eventually(Duration::from_secs(30), "three events", || async {
        let items = all_activity(tally, &format!("tenant={tenant}"), None).await;
        (items.len() >= 3).then_some(items)
    })
    .await;
    assert_eq!(
        items.len(),
        3,
        "the span without an action is not stored: {items:#?}"
    );

    let login = one(&items, "auth.login");
    assert_eq!(login["tenant_id"], tenant);
    assert_eq!(login["user_id"], "alice");
    assert_eq!(login["session_id"], "sess-1");
    assert_eq!(login["outcome"], "failure", "HTTP 401 is a failure");
    assert_eq!(login["service"], service);
    assert_eq!(login["trace_id"], sent.login_trace_id);
    assert_eq!(login["span_id"], sent.login_span_id);
    assert_eq!(login["resource_type"], Value::Null);
    assert_eq!(login["attributes"]["app.attempt"], 3);
    assert_eq!(login["attributes"]["http.response.status_code"], 401);
    assert!(login["attributes"].get("activity.action").is_none());
    assert!(login["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(login["seq"].as_i64().is_some());
    assert!(login["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
    assert!(login["received_at"].as_str().is_some());

    let view = one(&items, "document.view");
    assert_eq!(view["user_id"], "bob", "user.id is the user too");
    assert_eq!(view["outcome"], "success");
    assert_eq!(view["resource_type"], "document");
    assert_eq!(view["resource_id"], "doc-42");
    assert_eq!(view["session_id"], Value::Null);

    let download = one(&items, "doc.download");
    assert_eq!(download["user_id"], "bob");
    assert_eq!(download["service"], service);
    assert_eq!(
        download["trace_id"], sent.view_trace_id,
        "log record keeps its trace context"
    );
    assert_eq!(download["outcome"], "unknown");

    // Every filter, alone, against what we know was sent.
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("user=alice".into(), vec!["auth.login"]),
        ("user=bob".into(), vec!["doc.download", "document.view"]),
        ("action=auth.login".into(), vec!["auth.login"]),
        ("action=doc.*".into(), vec!["doc.download"]),
        ("action=document.*".into(), vec!["document.view"]),
        ("outcome=failure".into(), vec!["auth.login"]),
        ("outcome=success".into(), vec!["document.view"]),
        ("outcome=unknown".into(), vec!["doc.download"]),
        (
            "resource_type=document".into(),
            vec!["doc.download", "document.view"],
        ),
        (
            "resource_id=doc-42".into(),
            vec!["doc.download", "document.view"],
        ),
        (
            format!("trace_id={}", sent.login_trace_id),
            vec!["auth.login"],
        ),
        (
            format!("trace_id={}", sent.view_trace_id),
            vec!["doc.download", "document.view"],
        ),
        (
            "resource_type=document&user=bob&outcome=success".into(),
            vec!["document.view"],
        ),
    ];
    for (filter, expected) in cases {
        let items = all_activity(tally, &format!("tenant={tenant}&{filter}"), None).await;
        let mut actions: Vec<&str> = items.iter().filter_map(|i| i["action"].as_str()).collect();
        actions.sort_unstable();
        assert_eq!(actions, expected, "filter {filter}");
    }

    // Time window filters: from is inclusive, to exclusive.
    let ts = login["ts"].as_str().unwrap_or_default().to_string();
    let from = all_activity(
        tally,
        &format!("tenant={tenant}&action=auth.login&from={ts}"),
        None,
    )
    .await;
    assert_eq!(from.len(), 1, "from is inclusive");
    let to = all_activity(
        tally,
        &format!("tenant={tenant}&action=auth.login&to={ts}"),
        None,
    )
    .await;
    assert_eq!(to.len(), 0, "to is exclusive");
    let future = all_activity(
        tally,
        &format!("tenant={tenant}&from=2999-01-01T00:00:00Z"),
        None,
    )
    .await;
    assert!(future.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_spans_and_logs_over_grpc_and_http_are_queryable_with_every_filter() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;

    // gRPC: tonic needs the runtime; flush blocks, so run it on a blocking thread.
    let grpc_endpoint = tally.grpc_url();
    let (tracer_provider, logger_provider) = grpc_providers(&grpc_endpoint);
    let grpc_sent = tokio::task::spawn_blocking(move || {
        let sent = emit_scenario(&tracer_provider, &logger_provider, "tenant-grpc");
        let _ = tracer_provider.shutdown();
        let _ = logger_provider.shutdown();
        sent
    })
    .await
    .expect("grpc scenario");

    // HTTP/protobuf with the SDK's blocking reqwest client: its own thread.
    let traces_url = tally.http_url("/v1/traces");
    let logs_url = tally.http_url("/v1/logs");
    let http_sent = std::thread::spawn(move || {
        let (tracer_provider, logger_provider) = http_providers(&traces_url, &logs_url);
        let sent = emit_scenario(&tracer_provider, &logger_provider, "tenant-http");
        let _ = tracer_provider.shutdown();
        let _ = logger_provider.shutdown();
        sent
    })
    .join()
    .expect("http scenario");

    check_tenant(&tally, "tenant-grpc", "shop-grpc", &grpc_sent).await;
    check_tenant(&tally, "tenant-http", "shop-http", &http_sent).await;

    // Newest first across everything.
    let all = all_activity(&tally, "", None).await;
    assert_eq!(all.len(), 6);
    let times: Vec<&str> = all.iter().filter_map(|i| i["ts"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
}

/// Emits, through the SDK, a failed span with a known duration, an `error.type`,
/// an `exception` event and a status message holding an email address; a span
/// whose error comes from its `exception` event alone; and a log event with
/// `exception.*` attributes holding a card number.
fn emit_details(tracer_provider: &SdkTracerProvider, logger_provider: &SdkLoggerProvider) {
    let tracer = tracer_provider.tracer("e2e");
    let start = SystemTime::now();
    let mut export = tracer
        .span_builder("POST /exports")
        .with_start_time(start)
        .with_attributes([
            KeyValue::new("activity.action", "doc.export"),
            KeyValue::new("enduser.id", "alice"),
            KeyValue::new("tenant.id", "tenant-details"),
            KeyValue::new("error.type", "timeout"),
        ])
        .start(&tracer);
    export.add_event(
        "exception",
        vec![
            KeyValue::new("exception.type", "TimeoutError"),
            KeyValue::new("exception.message", "the event's message"),
        ],
    );
    export.set_status(Status::error("export for alice@example.com timed out"));
    export.end_with_timestamp(start + Duration::from_millis(250));

    let start = SystemTime::now();
    let mut view = tracer
        .span_builder("GET /documents/{id}")
        .with_start_time(start)
        .with_attributes([
            KeyValue::new("activity.action", "document.view"),
            KeyValue::new("enduser.id", "bob"),
            KeyValue::new("tenant.id", "tenant-details"),
        ])
        .start(&tracer);
    view.add_event(
        "exception",
        vec![
            KeyValue::new("exception.type", "KeyError"),
            KeyValue::new("exception.message", "no page 7"),
        ],
    );
    view.end_with_timestamp(start + Duration::from_micros(12_345));

    let logger = logger_provider.logger("e2e");
    let mut record = logger.create_log_record();
    record.set_event_name("payment.capture");
    record.set_timestamp(SystemTime::now());
    record.set_severity_number(Severity::Error);
    record.add_attribute("enduser.id", "carol");
    record.add_attribute("tenant.id", "tenant-details");
    record.add_attribute("exception.type", "CardDeclined");
    record.add_attribute("exception.message", "card 4111 1111 1111 1111 declined");
    logger.emit(record);

    tracer_provider.force_flush().expect("flush spans");
    logger_provider.force_flush().expect("flush logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_spans_and_logs_fill_duration_name_and_error_columns() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let (tracer_provider, logger_provider) = grpc_providers(&tally.grpc_url());
    tokio::task::spawn_blocking(move || {
        emit_details(&tracer_provider, &logger_provider);
        let _ = tracer_provider.shutdown();
        let _ = logger_provider.shutdown();
    })
    .await
    .expect("details scenario");

    let items = eventually(Duration::from_secs(30), "three events", || async {
        let items = all_activity(&tally, "tenant=tenant-details", None).await;
        (items.len() >= 3).then_some(items)
    })
    .await;
    assert_eq!(items.len(), 3, "{items:#?}");

    let export = one(&items, "doc.export");
    assert_eq!(export["name"], "POST /exports");
    assert_eq!(export["duration_ms"], 250.0);
    assert_eq!(export["error_type"], "timeout", "error.type wins");
    let message = export["error_message"].as_str().expect("error_message");
    assert!(message.starts_with("export for "), "{message}");
    assert!(
        !message.contains("alice@example.com") && message.contains("[REDACTED:email]"),
        "the status message is redacted like an attribute: {message}"
    );
    assert_eq!(export["outcome"], "failure");

    let view = one(&items, "document.view");
    assert_eq!(view["name"], "GET /documents/{id}");
    assert_eq!(view["duration_ms"], 12.345);
    assert_eq!(view["error_type"], "KeyError");
    assert_eq!(view["error_message"], "no page 7");

    let capture = one(&items, "payment.capture");
    assert_eq!(capture["name"], "payment.capture");
    assert_eq!(capture["duration_ms"], Value::Null);
    assert_eq!(capture["error_type"], "CardDeclined");
    let message = capture["error_message"].as_str().expect("error_message");
    assert!(
        !message.contains("4111") && message.contains("[REDACTED:card]"),
        "exception.message is redacted: {message}"
    );

    // The filters, against what was sent.
    let slow = all_activity(&tally, "tenant=tenant-details&min_duration_ms=100", None).await;
    let slow: Vec<&Value> = slow.iter().map(|i| &i["action"]).collect();
    assert_eq!(slow, ["doc.export"]);
    let timed = all_activity(&tally, "tenant=tenant-details&min_duration_ms=12.345", None).await;
    assert_eq!(timed.len(), 2, "both spans, not the log record");
    let named = all_activity(
        &tally,
        "tenant=tenant-details&name=GET%20%2Fdocuments%2F%7Bid%7D",
        None,
    )
    .await;
    let named: Vec<&Value> = named.iter().map(|i| &i["action"]).collect();
    assert_eq!(named, ["document.view"]);
}
