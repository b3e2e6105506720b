//! Token usage from OTLP metrics end to end, and `/api/v1/tokens/coverage`.
//!
//! * The sampled deployment: 1,000 simulated LLM calls record
//!   `gen_ai.client.token.usage` (input and output) and
//!   `gen_ai.client.operation.duration` on the real Rust SDK's meter, exported
//!   over OTLP gRPC with cumulative temporality (three exports: after 500 calls,
//!   after 1,000, and once more without new calls); every 10th call also sends
//!   its GenAI span with usage (a 10% trace sample). The metric totals must equal
//!   what the test generated exactly, and the span coverage be the sampled share.
//! * OTLP/HTTP JSON written by hand: cumulative points over three requests
//!   (growth, a resend, a restart with a new start time), other metrics refused
//!   in `partialSuccess`, and a key bound to a tenant.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{create_api_key, get_json, Tally, TestDatabase};
use serde_json::{json, Value};

const MODELS: [&str; 2] = ["gpt-4o-mini", "claude-3-5-haiku"];

/// Call `i`: its model and its input and output tokens.
fn call(i: u64) -> (&'static str, u64, u64) {
    let model = MODELS[usize::from(i % 3 == 0)];
    (model, 50 + (i * 7919) % 1000, 10 + (i * 104_729) % 300)
}

/// Per model: (calls, input, output) of the calls `sampled` selects.
fn sums(calls: u64, sampled: impl Fn(u64) -> bool) -> BTreeMap<&'static str, (i64, i64, i64)> {
    let mut out = BTreeMap::new();
    for i in (0..calls).filter(|i| sampled(*i)) {
        let (model, input, output) = call(i);
        let entry = out.entry(model).or_insert((0, 0, 0));
        entry.0 += 1;
        entry.1 += input as i64;
        entry.2 += output as i64;
    }
    out
}

/// `/tokens/coverage` items summed per model over the window's days: (metric
/// calls, input, output, span calls, input, output).
fn per_model(body: &Value) -> BTreeMap<String, [i64; 6]> {
    let mut out: BTreeMap<String, [i64; 6]> = BTreeMap::new();
    for item in body["items"].as_array().expect("items") {
        let model = item["model"].as_str().expect("model").to_owned();
        let entry = out.entry(model).or_default();
        for (slot, key) in [
            "metric_calls",
            "metric_input_tokens",
            "metric_output_tokens",
            "span_calls",
            "span_input_tokens",
            "span_output_tokens",
        ]
        .iter()
        .enumerate()
        {
            entry[slot] += item[*key]
                .as_i64()
                .unwrap_or_else(|| panic!("{key}: {item}"));
        }
    }
    out
}

const CALLS: u64 = 1_000;
const SAMPLE_EVERY: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sampled_deployment_sees_its_true_totals_and_its_span_coverage() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
    use opentelemetry::KeyValue;
    use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let resource = || {
        Resource::builder()
            .with_service_name("llm-app")
            .with_attribute(KeyValue::new("tenant.id", "acme"))
            .build()
    };
    // The tonic exporter is built inside the runtime; the SDK work runs on a
    // blocking thread (its flushes block until Tally has answered).
    let metric_exporter = MetricExporter::builder()
        .with_tonic()
        .with_endpoint(tally.grpc_url())
        .with_timeout(Duration::from_secs(30))
        .build()
        .expect("metric exporter");
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(metric_exporter)
                // Exports only when flushed.
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .with_resource(resource())
        .build();
    let span_url = tally.http_url("/v1/traces");
    tokio::task::spawn_blocking(move || {
        let span_exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(span_url)
            .build()
            .expect("span exporter");
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(span_exporter)
            .with_resource(resource())
            .build();
        let tracer = tracer_provider.tracer("opentelemetry.instrumentation.openai_v2");
        let meter = meter_provider.meter("opentelemetry.instrumentation.openai_v2");
        let tokens = meter
            .u64_histogram("gen_ai.client.token.usage")
            .with_unit("{token}")
            .build();
        let durations = meter
            .f64_histogram("gen_ai.client.operation.duration")
            .with_unit("s")
            .build();
        for i in 0..CALLS {
            let (model, input, output) = call(i);
            let common = [
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.provider.name", "openai"),
                KeyValue::new("gen_ai.request.model", model),
                KeyValue::new("gen_ai.response.model", model),
            ];
            let with_type = |kind: &'static str| {
                let mut attrs = common.to_vec();
                attrs.push(KeyValue::new("gen_ai.token.type", kind));
                attrs
            };
            tokens.record(input, &with_type("input"));
            tokens.record(output, &with_type("output"));
            durations.record(0.25 + (i % 7) as f64 * 0.1, &common);
            if i % SAMPLE_EVERY == 0 {
                let mut span = tracer
                    .span_builder(format!("chat {model}"))
                    .with_kind(SpanKind::Client)
                    .with_attributes(
                        [
                            common.to_vec(),
                            vec![
                                KeyValue::new("gen_ai.usage.input_tokens", input as i64),
                                KeyValue::new("gen_ai.usage.output_tokens", output as i64),
                            ],
                        ]
                        .concat(),
                    )
                    .start(&tracer);
                span.end();
            }
            if i + 1 == CALLS / 2 {
                meter_provider.force_flush().expect("first metric export");
            }
        }
        meter_provider.force_flush().expect("second metric export");
        // Cumulative points again, nothing new: they must add nothing.
        meter_provider.force_flush().expect("third metric export");
        tracer_provider.force_flush().expect("span export");
        let _ = meter_provider.shutdown();
        let _ = tracer_provider.shutdown();
    })
    .await
    .expect("sdk thread");

    let all = sums(CALLS, |_| true);
    let sampled = sums(CALLS, |i| i % SAMPLE_EVERY == 0);
    let url = tally.api_url("/api/v1/tokens/coverage?tenant=acme");
    // Every export was acknowledged after its commit: the answer is complete now.
    let (status, body) = get_json(&url, None).await;
    assert_eq!(status, 200, "{body}");
    let got = per_model(&body);
    for model in MODELS {
        let (calls, input, output) = all[model];
        let (s_calls, s_input, s_output) = sampled[model];
        let row = got
            .get(model)
            .unwrap_or_else(|| panic!("no coverage for {model}: {body}"));
        assert_eq!(
            *row,
            [calls, input, output, s_calls, s_input, s_output],
            "{model}: metric totals must be exactly the generated sums, span totals the sampled calls'"
        );
    }
    assert_eq!(got.len(), MODELS.len(), "{body}");
    let totals = &body["totals"];
    let total_calls: i64 = all.values().map(|v| v.0).sum();
    let total_input: i64 = all.values().map(|v| v.1).sum();
    assert_eq!(totals["metric_calls"], json!(CALLS));
    assert_eq!(totals["metric_input_tokens"], json!(total_input));
    assert_eq!(totals["span_calls"], json!(CALLS / SAMPLE_EVERY));
    let coverage = totals["calls_coverage"].as_f64().expect("calls_coverage");
    assert!((coverage - 0.1).abs() < 1e-9, "{coverage}");
    let input_coverage = totals["input_coverage"].as_f64().expect("input_coverage");
    let expected: i64 = sampled.values().map(|v| v.1).sum();
    assert!(
        (input_coverage - expected as f64 / total_input as f64).abs() < 1e-9
            && (0.05..0.15).contains(&input_coverage),
        "{input_coverage}"
    );
    assert_eq!(total_calls, CALLS as i64);

    // Durations: one observation per call, stored next to the tokens.
    let client = database.client().await;
    let row = client
        .query_one(
            "SELECT sum(calls_count)::int8, sum(duration_sum_s) FROM token_metric_minutes \
             WHERE token_type = '' AND tenant_id = 'acme'",
            &[],
        )
        .await
        .expect("durations");
    let expected_seconds: f64 = (0..CALLS).map(|i| 0.25 + (i % 7) as f64 * 0.1).sum();
    assert_eq!(row.get::<_, i64>(0), CALLS as i64);
    assert!((row.get::<_, f64>(1) - expected_seconds).abs() < 1e-6);

    // The receiver counted the points it accepted over gRPC.
    {
        let text = reqwest::get(tally.metrics_url())
            .await
            .expect("scrape")
            .text()
            .await
            .expect("scrape body");
        let accepted = text
            .lines()
            .find(|l| {
                l.starts_with("tally_receiver_accepted_metric_points_total{transport=\"grpc\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no accepted metric points counter:\n{text}"));
        assert!(accepted >= 3.0 * 6.0, "{accepted}");
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn attr(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

/// A `gen_ai.client.token.usage` histogram point as OTLP/JSON writes it (64-bit
/// integers as strings).
fn token_point(kind: &str, start: u64, time: u64, count: u64, sum: f64) -> Value {
    json!({
        "attributes": [
            attr("gen_ai.token.type", kind),
            attr("gen_ai.request.model", "gpt-4o"),
            attr("gen_ai.system", "openai"),
            attr("gen_ai.operation.name", "chat"),
        ],
        "startTimeUnixNano": start.to_string(),
        "timeUnixNano": time.to_string(),
        "count": count.to_string(),
        "sum": sum,
        "bucketCounts": [count.to_string()],
        "explicitBounds": []
    })
}

fn body(tenant: Option<&str>, metrics: Vec<Value>) -> Value {
    let resource: Vec<Value> = [
        Some(attr("service.name", "json-app")),
        tenant.map(|t| attr("tenant.id", t)),
    ]
    .into_iter()
    .flatten()
    .collect();
    json!({
        "resourceMetrics": [{
            "resource": { "attributes": resource },
            "scopeMetrics": [{ "scope": { "name": "hand-written" }, "metrics": metrics }]
        }]
    })
}

fn usage(temporality: Value, points: Vec<Value>) -> Value {
    json!({
        "name": "gen_ai.client.token.usage",
        "unit": "{token}",
        "histogram": { "aggregationTemporality": temporality, "dataPoints": points }
    })
}

async fn post(tally: &Tally, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(tally.http_url("/v1/metrics"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("POST /v1/metrics");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn coverage(tally: &Tally, tenant: &str) -> Value {
    let (status, body) = get_json(
        &tally.api_url(&format!(
            "/api/v1/tokens/coverage?tenant={tenant}&model=gpt-4o"
        )),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["totals"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_json_points_count_once_and_other_metrics_are_refused() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let t0 = now_nanos() - 600_000_000_000;
    let minute = 60_000_000_000;

    // First export: 3 calls so far; plus a metric Tally does not store and the
    // token metric sent as a sum (both refused, politely).
    let first = body(
        Some("acme"),
        vec![
            // The enum by name: accepted like its number.
            usage(
                json!("AGGREGATION_TEMPORALITY_CUMULATIVE"),
                vec![
                    token_point("input", t0, t0 + minute, 3, 300.0),
                    token_point("output", t0, t0 + minute, 3, 60.0),
                ],
            ),
            json!({
                "name": "http.server.request.duration",
                "histogram": { "aggregationTemporality": 2, "dataPoints": [
                    { "timeUnixNano": (t0 + minute).to_string(), "count": "1", "sum": 0.1 },
                    { "timeUnixNano": (t0 + minute).to_string(), "count": "2", "sum": 0.3 }
                ]}
            }),
            json!({
                "name": "gen_ai.client.token.usage",
                "sum": { "aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [
                    { "timeUnixNano": (t0 + minute).to_string(), "asInt": "5" }
                ]}
            }),
        ],
    );
    let (status, answer) = post(&tally, None, &first).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["partialSuccess"]["rejectedDataPoints"],
        json!(3),
        "{answer}"
    );
    let message = answer["partialSuccess"]["errorMessage"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("http.server.request.duration"),
        "{message}"
    );
    assert!(message.contains("not histograms"), "{message}");
    let totals = coverage(&tally, "acme").await;
    assert_eq!(totals["metric_input_tokens"], json!(300), "{totals}");
    assert_eq!(totals["metric_calls"], json!(3), "{totals}");

    // Second export: 5 calls so far (2 new), and the first export's input point
    // resent; both token points of this request add only their growth.
    let second = body(
        Some("acme"),
        vec![usage(
            json!(2),
            vec![
                token_point("input", t0, t0 + minute, 3, 300.0),
                token_point("input", t0, t0 + 2 * minute, 5, 520.0),
                token_point("output", t0, t0 + 2 * minute, 5, 100.0),
            ],
        )],
    );
    let (status, answer) = post(&tally, None, &second).await;
    assert_eq!(status, 200, "{answer}");
    // A resent point is no error for the client.
    assert_eq!(answer, json!({}), "{answer}");

    // The application restarted: a new start time, counting from zero again.
    let third = body(
        Some("acme"),
        vec![usage(
            json!(2),
            vec![
                token_point("input", t0 + 3 * minute, t0 + 4 * minute, 1, 40.0),
                token_point("output", t0 + 3 * minute, t0 + 4 * minute, 1, 8.0),
            ],
        )],
    );
    let (status, answer) = post(&tally, None, &third).await;
    assert_eq!(status, 200, "{answer}");

    let totals = coverage(&tally, "acme").await;
    assert_eq!(
        totals["metric_input_tokens"],
        json!(300 + 220 + 40),
        "{totals}"
    );
    assert_eq!(
        totals["metric_output_tokens"],
        json!(60 + 40 + 8),
        "{totals}"
    );
    assert_eq!(totals["metric_calls"], json!(6), "{totals}");
    assert_eq!(totals["span_calls"], json!(0), "{totals}");
    assert_eq!(totals["calls_coverage"], json!(0.0), "{totals}");

    // A malformed body is 400, as for traces and logs.
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/metrics"))
        .header("content-type", "application/json")
        .body(r#"{"resourceMetrics": [{"scope_metrics": []}]}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 400);

    // A key bound to tenant "beta" stamps its tenant on points naming none and
    // refuses the points naming another.
    let (key, _) = create_api_key(&database.url, "beta", "ingest");
    let bound = body(
        None,
        vec![usage(
            json!(1),
            vec![
                token_point("input", t0, t0 + minute, 2, 30.0),
                json!({
                    "attributes": [
                        attr("gen_ai.token.type", "output"),
                        attr("gen_ai.request.model", "gpt-4o"),
                        attr("tenant.id", "acme")
                    ],
                    "startTimeUnixNano": t0.to_string(),
                    "timeUnixNano": (t0 + minute).to_string(),
                    "count": "2",
                    "sum": 999.0
                }),
            ],
        )],
    );
    let (status, answer) = post(&tally, Some(&key), &bound).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["partialSuccess"]["rejectedDataPoints"],
        json!(1),
        "{answer}"
    );
    let beta = coverage(&tally, "beta").await;
    assert_eq!(beta["metric_input_tokens"], json!(30), "{beta}");
    assert_eq!(beta["metric_output_tokens"], json!(0), "{beta}");
    // acme's totals did not move.
    assert_eq!(
        coverage(&tally, "acme").await["metric_output_tokens"],
        json!(108)
    );
}
