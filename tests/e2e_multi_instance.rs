//! Two Tally instances on one database behind a "round-robin load balancer":
//! the real Rust OpenTelemetry SDK sends each request span to one instance and
//! its LLM child span to the other (alternating per trace), in both arrival
//! orders. Every model call must be attributed to its request's user, exactly
//! once, with exact totals — as with one instance. Then tenant binding across
//! instances: an identity sent with tenant A's key for a trace id of tenant B
//! never attributes B's rows.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{create_api_key, eventually, http_span_provider, Tally, TallyOptions, TestDatabase};
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};

/// Traces sent: trace `i`'s request span goes to instance `i % 2`, its chat
/// span to the other; the chat span ends (is exported) first when `(i / 2) % 2`
/// is 0, else the request span does.
const TRACES: usize = 8;

/// What the test expects of trace `i`: (user, input tokens, output tokens).
fn expected(i: usize) -> (String, i64, i64) {
    (format!("user-{i}"), 1000 + i as i64, 100 + i as i64)
}

/// Sends the traces with the SDK; returns trace id → trace index.
fn send_traces(urls: [String; 2]) -> BTreeMap<String, usize> {
    let providers = [
        http_span_provider(urls[0].clone()),
        http_span_provider(urls[1].clone()),
    ];
    let tracers = [
        providers[0].tracer("web-app"),
        providers[1].tracer("web-app"),
    ];
    let mut traces = BTreeMap::new();
    for i in 0..TRACES {
        let (user, input, output) = expected(i);
        let front = &tracers[i % 2];
        let back = &tracers[(i + 1) % 2];
        let request = front
            .span_builder("POST /chat")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("enduser.id", user),
                KeyValue::new("tenant.id", "acme"),
                KeyValue::new("session.id", format!("session-{i}")),
            ])
            .start(front);
        traces.insert(request.span_context().trace_id().to_string(), i);
        let cx = Context::current_with_span(request);
        let mut chat = back
            .span_builder("chat gpt-4o")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.provider.name", "openai"),
                KeyValue::new("gen_ai.request.model", "gpt-4o"),
                KeyValue::new("gen_ai.usage.input_tokens", input),
                KeyValue::new("gen_ai.usage.output_tokens", output),
            ])
            .start_with_context(back, &cx);
        if (i / 2) % 2 == 0 {
            chat.end();
            cx.span().end();
        } else {
            cx.span().end();
            chat.end();
        }
    }
    for provider in &providers {
        provider.force_flush().expect("flush");
    }
    for provider in providers {
        let _ = provider.shutdown();
    }
    traces
}

/// `tally_llm_tokens_total{kind}` summed over one instance's series.
async fn tokens_counted(tally: &Tally, kind: &str) -> f64 {
    let text = reqwest::get(tally.metrics_url())
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let label = format!("kind=\"{kind}\"");
    text.lines()
        .filter(|l| l.starts_with("tally_llm_tokens_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

type Row = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    i64,
);

async fn token_rows(database: &TestDatabase) -> Vec<Row> {
    database
        .client()
        .await
        .query(
            "SELECT trace_id, tenant_id, user_id, session_id, attribution_source, \
                 input_tokens, output_tokens FROM token_usage ORDER BY trace_id",
            &[],
        )
        .await
        .expect("token rows")
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_attribute_every_call_once() {
    let database = TestDatabase::create().await;
    let first = Tally::on(&database).await;
    let second = Tally::on(&database).await;
    let urls = [first.http_url("/v1/traces"), second.http_url("/v1/traces")];
    let traces = tokio::task::spawn_blocking(move || send_traces(urls))
        .await
        .expect("sdk thread");
    assert_eq!(traces.len(), TRACES);

    let rows = eventually(
        Duration::from_secs(30),
        "every token row attributed",
        || async {
            let rows = token_rows(&database).await;
            (rows.len() >= TRACES && rows.iter().all(|r| r.4 == "trace")).then_some(rows)
        },
    )
    .await;
    assert_eq!(rows.len(), TRACES, "one row per call: {rows:?}");
    for (trace, tenant, user, session, _, input, output) in &rows {
        let i = traces[trace];
        let (want_user, want_input, want_output) = expected(i);
        assert_eq!(tenant, "acme", "trace {i}");
        assert_eq!(user.as_deref(), Some(want_user.as_str()), "trace {i}");
        assert_eq!(session.clone(), Some(format!("session-{i}")), "trace {i}");
        assert_eq!((*input, *output), (want_input, want_output), "trace {i}");
    }

    // Counted once across the two instances: the Prometheus counters of both
    // add up to the exact totals.
    let want_input: i64 = (0..TRACES).map(|i| expected(i).1).sum();
    let want_output: i64 = (0..TRACES).map(|i| expected(i).2).sum();
    let input = tokens_counted(&first, "input").await + tokens_counted(&second, "input").await;
    let output = tokens_counted(&first, "output").await + tokens_counted(&second, "output").await;
    assert_eq!(input as i64, want_input);
    assert_eq!(output as i64, want_output);

    // Each instance wrote each identity it learned once, keyed by the unbound
    // scope; the pending marks met them.
    let client = database.client().await;
    let shared: i64 = client
        .query_one(
            "SELECT count(*) FROM trace_identities \
             WHERE tenant_id = '' AND user_id IS NOT NULL AND pending_since IS NOT NULL",
            &[],
        )
        .await
        .expect("trace identities")
        .get(0);
    assert_eq!(shared, TRACES as i64);
}

/// `len` bytes of `byte`: a trace or span id the test chooses.
fn hex(byte: u8, len: usize) -> Vec<u8> {
    vec![byte; len]
}

fn span(
    trace: &[u8],
    span_id: u8,
    parent: Option<u8>,
    attributes: &[(&str, i64, &str)],
) -> Vec<u8> {
    use prost::Message as _;
    use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use tally_model::otlp::common::v1::{any_value::Value, AnyValue, KeyValue as Kv};
    use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let attributes = attributes
        .iter()
        .map(|(key, int, text)| Kv {
            key: (*key).into(),
            value: Some(AnyValue {
                value: Some(if text.is_empty() {
                    Value::IntValue(*int)
                } else {
                    Value::StringValue((*text).into())
                }),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: trace.to_vec(),
                    span_id: hex(span_id, 8),
                    parent_span_id: parent.map(|p| hex(p, 8)).unwrap_or_default(),
                    name: "span".into(),
                    start_time_unix_nano: now - 1_000_000,
                    end_time_unix_nano: now,
                    attributes,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Posts one OTLP/HTTP request with an ingest key; asserts the 200 (the rows
/// are committed, and attributed where they can be, when it comes).
async fn post(tally: &Tally, key: &str, body: Vec<u8>) {
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .bearer_auth(key)
        .body(body)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status().as_u16(), 200);
}

async fn attribution(
    database: &TestDatabase,
    trace: &[u8],
) -> Vec<(String, Option<String>, String)> {
    let hex: String = trace.iter().map(|b| format!("{b:02x}")).collect();
    database
        .client()
        .await
        .query(
            "SELECT tenant_id, user_id, attribution_source FROM token_usage WHERE trace_id = $1",
            &[&hex],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_tenants_identity_never_attributes_across_instances() {
    let database = TestDatabase::create().await;
    let options = TallyOptions {
        database_url: Some(database.url.clone()),
        ingest_auth_required: true,
        ..Default::default()
    };
    let first = Tally::launch(options.clone()).await;
    let second = Tally::launch(options).await;
    let (key_a, _) = create_api_key(&database.url, "tenant-a", "ingest");
    let (key_b, _) = create_api_key(&database.url, "tenant-b", "ingest");
    let chat: &[(&str, i64, &str)] = &[
        ("gen_ai.operation.name", 0, "chat"),
        ("gen_ai.request.model", 0, "gpt-4o"),
        ("gen_ai.usage.input_tokens", 40, ""),
        ("gen_ai.usage.output_tokens", 4, ""),
    ];
    let mallory: &[(&str, i64, &str)] = &[("enduser.id", 0, "mallory")];
    let bob: &[(&str, i64, &str)] = &[("enduser.id", 0, "bob")];

    // B's call first (instance 1), then A's key claims the trace (instance 2):
    // B's row waits for B's own identity, which comes next (instance 2).
    let trace = hex(0xb1, 16);
    post(&first, &key_b, span(&trace, 2, Some(1), chat)).await;
    post(&second, &key_a, span(&trace, 1, None, mallory)).await;
    assert_eq!(
        attribution(&database, &trace).await,
        vec![("tenant-b".into(), None, "none".into())]
    );
    post(&second, &key_b, span(&trace, 1, None, bob)).await;
    assert_eq!(
        attribution(&database, &trace).await,
        vec![("tenant-b".into(), Some("bob".into()), "trace".into())]
    );

    // A's key first (instance 1), then B's call (instance 2): not attributed by A.
    let trace = hex(0xb2, 16);
    post(&first, &key_a, span(&trace, 1, None, mallory)).await;
    post(&second, &key_b, span(&trace, 2, Some(1), chat)).await;
    assert_eq!(
        attribution(&database, &trace).await,
        vec![("tenant-b".into(), None, "none".into())]
    );
    // Within one tenant the same order attributes across instances.
    let trace = hex(0xb3, 16);
    post(&first, &key_b, span(&trace, 1, None, bob)).await;
    post(&second, &key_b, span(&trace, 2, Some(1), chat)).await;
    assert_eq!(
        attribution(&database, &trace).await,
        vec![("tenant-b".into(), Some("bob".into()), "trace".into())]
    );
}
