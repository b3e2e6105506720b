//! Security of the write path, one test per hole: ingest keys required when
//! configured (gRPC and HTTP), tenant-bound keys (gRPC, HTTP/protobuf and
//! HTTP/JSON), no cross-tenant trace attribution, the negative key cache, safe
//! defaults at start, and API keys in the database closing the admin API. All
//! against the real binary and a real PostgreSQL.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{create_api_key, Tally, TallyOptions, TestDatabase};
use prost::Message;
use serde_json::{json, Value};
use tally_model::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use tally_model::otlp::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1_700_000_000_000_000_000)
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// An activity span; `tenant: None` names no tenant.
fn action_span(trace: u8, span: u8, action: &str, tenant: Option<&str>) -> Span {
    let mut attributes = vec![text("activity.action", action), text("user.id", "alice")];
    if let Some(tenant) = tenant {
        attributes.push(text("tenant.id", tenant));
    }
    let start = now_nanos();
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        name: action.into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(tally_model::otlp::resource::v1::Resource {
                attributes: vec![text("service.name", "security-e2e")],
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

/// POSTs an OTLP/HTTP protobuf body with an optional header; (status, body).
async fn post_protobuf(
    tally: &Tally,
    request: &ExportTraceServiceRequest,
    header: Option<(&str, &str)>,
) -> (u16, Vec<u8>) {
    let mut call = reqwest::Client::new()
        .post(tally.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec());
    if let Some((name, value)) = header {
        call = call.header(name, value);
    }
    let response = call.send().await.expect("POST /v1/traces");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

async fn post_json(tally: &Tally, body: &Value, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("POST /v1/traces");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A gRPC `TraceService/Export` with an optional `authorization` metadata value.
async fn export_grpc(
    tally: &Tally,
    request: ExportTraceServiceRequest,
    authorization: Option<&str>,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut client = TraceServiceClient::connect(tally.grpc_url())
        .await
        .expect("connect gRPC");
    let mut call = tonic::Request::new(request);
    if let Some(value) = authorization {
        call.metadata_mut()
            .insert("authorization", value.parse().expect("metadata value"));
    }
    client.export(call).await.map(tonic::Response::into_inner)
}

fn rpc_message(body: &[u8]) -> String {
    tonic_types::Status::decode(body)
        .map(|status| status.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

async fn launch(database: &TestDatabase, required: bool) -> Tally {
    Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        ingest_auth_required: required,
        ..Default::default()
    })
    .await
}

async fn activity(database: &TestDatabase, action: &str) -> Vec<(String, String)> {
    database
        .client()
        .await
        .query(
            "SELECT tenant_id, span_id FROM activity_events WHERE action = $1 ORDER BY span_id",
            &[&action],
        )
        .await
        .expect("query activity_events")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn rejected(database: &TestDatabase) -> Vec<(String, String, Value)> {
    database
        .client()
        .await
        .query(
            "SELECT tenant_id, reason, record FROM rejected_events ORDER BY received_at, id",
            &[],
        )
        .await
        .expect("query rejected_events")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// A well-formed key that was never created.
fn random_key(n: u64) -> String {
    format!(
        "tally_{:016x}_{}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        "ab".repeat(32)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_otlp_is_refused_when_required() {
    let database = TestDatabase::create().await;
    let tally = launch(&database, true).await;
    let (key, _) = create_api_key(&database.url, "acme", "ingest");
    let (admin_key, _) = create_api_key(&database.url, "acme", "admin");
    let one = || request(vec![action_span(1, 1, "auth.login", None)]);

    // HTTP: no key, a wrong secret for a real prefix, a key without the scope.
    let (status, body) = post_protobuf(&tally, &one(), None).await;
    assert_eq!(status, 401, "{}", rpc_message(&body));
    assert!(
        rpc_message(&body).contains("required"),
        "{}",
        rpc_message(&body)
    );
    let wrong_secret = format!("{}{}", &key[..key.len() - 64], "cd".repeat(32));
    let bearer = format!("Bearer {wrong_secret}");
    let (status, body) = post_protobuf(&tally, &one(), Some(("authorization", &bearer))).await;
    assert_eq!(status, 401);
    let message = rpc_message(&body);
    assert!(message.contains("unknown API key"), "{message}");
    assert!(!message.contains("malformed"), "{message}");
    let (status, body) = post_protobuf(&tally, &one(), Some(("x-api-key", &admin_key))).await;
    assert_eq!(status, 401);
    assert!(
        rpc_message(&body).contains("ingest scope"),
        "{}",
        rpc_message(&body)
    );

    // gRPC: no key, then a wrong one.
    let status = export_grpc(&tally, one(), None).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = export_grpc(&tally, one(), Some(&bearer))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        activity(&database, "auth.login").await.is_empty(),
        "nothing stored"
    );

    // The valid key is accepted on both transports and stamps its tenant.
    let bearer = format!("Bearer {key}");
    let (status, _) = post_protobuf(&tally, &one(), Some(("authorization", &bearer))).await;
    assert_eq!(status, 200);
    let other = request(vec![action_span(1, 2, "auth.login", None)]);
    export_grpc(&tally, other, Some(&bearer))
        .await
        .expect("accepted over gRPC");
    let stored = activity(&database, "auth.login").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(
        stored.iter().all(|(tenant, _)| tenant == "acme"),
        "{stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_cannot_write_another_tenant() {
    let database = TestDatabase::create().await;
    // Keys are optional here: a valid one still binds its tenant.
    let tally = launch(&database, false).await;
    let (key, key_id) = create_api_key(&database.url, "tenant-a", "ingest");
    let bearer = format!("Bearer {key}");
    // Each request: one span naming tenant B, one naming tenant A, one naming none.
    let spans = |action: &str, trace: u8| {
        vec![
            action_span(trace, 1, action, Some("tenant-b")),
            action_span(trace, 2, action, Some("tenant-a")),
            action_span(trace, 3, action, None),
        ]
    };

    // gRPC.
    let answer = export_grpc(&tally, request(spans("grpc.write", 1)), Some(&bearer))
        .await
        .expect("accepted");
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("tenant_mismatch"),
        "{partial:?}"
    );

    // HTTP/protobuf.
    let (status, body) = post_protobuf(
        &tally,
        &request(spans("protobuf.write", 2)),
        Some(("authorization", &bearer)),
    )
    .await;
    assert_eq!(status, 200);
    let partial = ExportTraceServiceResponse::decode(body.as_slice())
        .expect("response")
        .partial_success
        .expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("tenant_mismatch"),
        "{partial:?}"
    );

    // HTTP/JSON.
    let json_span = |span: u8, tenant: Option<&str>| {
        let mut attributes = vec![
            json!({"key": "activity.action", "value": {"stringValue": "json.write"}}),
            json!({"key": "user.id", "value": {"stringValue": "alice"}}),
        ];
        if let Some(tenant) = tenant {
            attributes.push(json!({"key": "tenant.id", "value": {"stringValue": tenant}}));
        }
        json!({
            "traceId": "03".repeat(16), "spanId": format!("{span:02x}").repeat(8),
            "name": "write", "startTimeUnixNano": now_nanos().to_string(),
            "endTimeUnixNano": (now_nanos() + 1).to_string(), "attributes": attributes
        })
    };
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        json_span(1, Some("tenant-b")), json_span(2, Some("tenant-a")), json_span(3, None)
    ]}]}]});
    let (status, answer) = post_json(&tally, &body, &key).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1, "{answer}");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("tenant_mismatch")),
        "{answer}"
    );

    // Stored: only tenant A's and the unnamed records, all as tenant A.
    for action in ["grpc.write", "protobuf.write", "json.write"] {
        let stored = activity(&database, action).await;
        assert_eq!(stored.len(), 2, "{action}: {stored:?}");
        assert!(
            stored.iter().all(|(t, _)| t == "tenant-a"),
            "{action}: {stored:?}"
        );
    }
    let none_for_b: i64 = database
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM activity_events WHERE tenant_id = 'tenant-b'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(none_for_b, 0);
    // Every row says which key wrote it (its id, never the secret).
    let keys: Vec<Option<String>> = database
        .client()
        .await
        .query(
            "SELECT ingest_key_id::text FROM activity_events UNION ALL \
             SELECT ingest_key_id::text FROM rejected_events",
            &[],
        )
        .await
        .expect("query ingest_key_id")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(keys.len(), 9);
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(key_id.as_str())),
        "{keys:?}"
    );
    // Without a key, no key id.
    let (status, _) = post_protobuf(&tally, &request(spans("anonymous.write", 4)), None).await;
    assert_eq!(status, 200);
    let anonymous: Vec<Option<String>> = database
        .client()
        .await
        .query(
            "SELECT ingest_key_id::text FROM activity_events WHERE action = 'anonymous.write'",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(anonymous, vec![None::<String>; 3]);
    // Quarantined under the key's tenant, with the reason.
    let quarantined = rejected(&database).await;
    assert_eq!(quarantined.len(), 3, "{quarantined:?}");
    for (tenant, reason, record) in &quarantined {
        assert_eq!(tenant, "tenant-a");
        assert_eq!(reason, "tenant_mismatch");
        assert_eq!(record["row"]["tenant_id"], "tenant-b", "{record}");
    }
}

/// A chat span carrying token usage but no user (as auto-instrumentation writes it).
fn chat_span(trace: u8, span: u8) -> Span {
    let start = now_nanos();
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        name: "chat gpt-4o-mini".into(),
        kind: 3,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: vec![
            text("gen_ai.operation.name", "chat"),
            text("gen_ai.provider.name", "openai"),
            text("gen_ai.request.model", "gpt-4o-mini"),
            int("gen_ai.usage.input_tokens", 40),
            int("gen_ai.usage.output_tokens", 4),
        ],
        ..Default::default()
    }
}

/// A request span with a user, on the same trace.
fn user_span(trace: u8, span: u8, user: &str) -> Span {
    let start = now_nanos();
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        name: "POST /ask".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: vec![text("enduser.id", user), text("session.id", "s-1")],
        ..Default::default()
    }
}

async fn token_rows(database: &TestDatabase, trace: u8) -> Vec<(String, Option<String>, String)> {
    let trace_hex = format!("{trace:02x}").repeat(16);
    database
        .client()
        .await
        .query(
            "SELECT tenant_id, user_id, attribution_source FROM token_usage \
             WHERE trace_id = $1 ORDER BY span_id",
            &[&trace_hex],
        )
        .await
        .expect("query token_usage")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_trace_attribution_is_impossible() {
    let database = TestDatabase::create().await;
    let tally = launch(&database, true).await;
    let (key_a, _) = create_api_key(&database.url, "tenant-a", "ingest");
    let (key_b, key_b_id) = create_api_key(&database.url, "tenant-b", "ingest");
    let (bearer_a, bearer_b) = (format!("Bearer {key_a}"), format!("Bearer {key_b}"));

    // Tenant B's model call waits for its trace's user.
    export_grpc(&tally, request(vec![chat_span(7, 2)]), Some(&bearer_b))
        .await
        .expect("B's chat span");
    assert_eq!(
        token_rows(&database, 7).await,
        vec![("tenant-b".into(), None, "none".into())]
    );
    // Tenant A sends a user on the same trace id: acknowledged only after any
    // attribution it causes is committed, and it causes none.
    export_grpc(
        &tally,
        request(vec![user_span(7, 1, "mallory")]),
        Some(&bearer_a),
    )
    .await
    .expect("A's span");
    assert_eq!(
        token_rows(&database, 7).await,
        vec![("tenant-b".into(), None, "none".into())],
        "tenant A's identity attributed tenant B's row"
    );
    // A's identity first, then B's row on that trace: not attributed at ingest either.
    export_grpc(
        &tally,
        request(vec![user_span(8, 1, "mallory")]),
        Some(&bearer_a),
    )
    .await
    .expect("A's span");
    export_grpc(&tally, request(vec![chat_span(8, 2)]), Some(&bearer_b))
        .await
        .expect("B's chat span");
    assert_eq!(
        token_rows(&database, 8).await,
        vec![("tenant-b".into(), None, "none".into())]
    );

    // Within tenant B, attribution through the trace still works.
    export_grpc(
        &tally,
        request(vec![user_span(7, 1, "bob")]),
        Some(&bearer_b),
    )
    .await
    .expect("B's span");
    assert_eq!(
        token_rows(&database, 7).await,
        vec![("tenant-b".into(), Some("bob".into()), "trace".into())]
    );
    let writers: Vec<Option<String>> = database
        .client()
        .await
        .query("SELECT ingest_key_id::text FROM token_usage", &[])
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(writers, vec![Some(key_b_id); 2]);
}

fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match label {
                None => rest.strip_prefix(' ')?,
                Some((key, value)) => rest.strip_prefix(&format!("{{{key}=\"{value}\"}} "))?,
            };
            value.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} {label:?} in the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_keys_costs_no_database_lookup_each() {
    let database = TestDatabase::create().await;
    let tally = launch(&database, true).await;
    let (key, _) = create_api_key(&database.url, "acme", "ingest");
    let scrape = || async {
        reqwest::get(tally.metrics_url())
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    };
    let before = scrape().await;
    let lookups_before = metric(&before, "tally_api_key_lookups_total", None);
    let unknown_before = metric(
        &before,
        "tally_ingest_auth_failures_total",
        Some(("reason", "unknown")),
    );
    const FLOOD: u64 = 300;
    let started = Instant::now();
    let client = reqwest::Client::new();
    let body = request(vec![action_span(9, 1, "flood.write", None)]).encode_to_vec();
    // All at once, as a flood comes.
    let answers = futures::future::join_all((0..FLOOD).map(|n| {
        client
            .post(tally.http_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("authorization", format!("Bearer {}", random_key(n + 1)))
            .body(body.clone())
            .send()
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.expect("POST").status().as_u16(), 401);
    }
    let elapsed = started.elapsed();
    let after = scrape().await;
    let lookups = metric(&after, "tally_api_key_lookups_total", None) - lookups_before;
    let unknown = metric(
        &after,
        "tally_ingest_auth_failures_total",
        Some(("reason", "unknown")),
    ) - unknown_before;
    assert_eq!(unknown, FLOOD as f64);
    // One reload of the known prefixes per second at most (plus the first).
    let bound = 1.0 + elapsed.as_secs_f64().ceil();
    assert!(
        lookups <= bound,
        "{lookups} database lookups for {FLOOD} random keys in {elapsed:?} (bound {bound})"
    );
    // The real key still works, and its row lookup is cached afterwards.
    let bearer = format!("Bearer {key}");
    for _ in 0..3 {
        let (status, _) = post_protobuf(
            &tally,
            &request(vec![action_span(9, 2, "flood.write", None)]),
            Some(("authorization", &bearer)),
        )
        .await;
        assert_eq!(status, 200);
    }
    let settled = metric(&scrape().await, "tally_api_key_lookups_total", None);
    assert!(settled - lookups_before <= bound + 2.0, "{settled}");
}

/// Runs `tally` with `config` (YAML) and `args`; the exit status and stderr.
fn run_tally(config: &str, args: &[&str], database_url: Option<&str>) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tally.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .args(args)
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .env_remove("TALLY_DATABASE_URL")
        .env("RUST_LOG", "info");
    if let Some(url) = database_url {
        command.env("TALLY_DATABASE_URL", url);
    }
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tally");
    // It must exit by itself: a refusal, not a start.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tally started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("tally output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_without_auth_refuses_to_start() {
    let database = TestDatabase::create().await;
    let url = database.url.clone();
    let common = "exporters: { prometheus: { enabled: false } }\n";
    tokio::task::spawn_blocking(move || {
        // A receiver on every interface, ingest keys not required.
        for (listener, path) in [
            ("grpc", "receivers.otlp.grpc.endpoint"),
            ("http", "receivers.otlp.http.endpoint"),
        ] {
            let config = format!(
                "receivers: {{ otlp: {{ {listener}: {{ endpoint: 0.0.0.0:0 }} }} }}\n\
                 admin_api: {{ endpoint: 127.0.0.1:0 }}\n{common}"
            );
            let (ok, stderr) = run_tally(&config, &[], Some(&url));
            assert!(!ok, "{stderr}");
            assert!(stderr.contains(path), "{stderr}");
            assert!(stderr.contains("allow_unauthenticated"), "{stderr}");
            // `tally validate` says the same.
            let (ok, stderr) = run_tally(&config, &["validate"], None);
            assert!(!ok, "{stderr}");
            assert!(stderr.contains(path), "{stderr}");
        }
        // The admin API on every interface with no JWT and no keys in the database.
        let config = "receivers: { otlp: { grpc: { endpoint: 127.0.0.1:0 }, http: { endpoint: 127.0.0.1:0 } } }\n\
             admin_api: { endpoint: 0.0.0.0:0 }\n"
            .to_owned()
            + common;
        let (ok, stderr) = run_tally(&config, &[], Some(&url));
        assert!(!ok, "{stderr}");
        assert!(stderr.contains("admin_api.endpoint"), "{stderr}");
        // `*` CORS on an open admin API, even on loopback.
        let config = "receivers: { otlp: { grpc: { endpoint: 127.0.0.1:0 }, http: { endpoint: 127.0.0.1:0 } } }\n\
             admin_api: { endpoint: 127.0.0.1:0, cors: { allowed_origins: ['*'] } }\n"
            .to_owned()
            + common;
        let (ok, stderr) = run_tally(&config, &[], Some(&url));
        assert!(!ok, "{stderr}");
        assert!(stderr.contains("admin_api.cors.allowed_origins"), "{stderr}");
    })
    .await
    .expect("refusals");

    // With the explicit opt-out, the same exposed receiver starts.
    let mut tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        http_endpoint: Some("0.0.0.0:0".parse().expect("addr")),
        allow_unauthenticated: true,
        ..Default::default()
    })
    .await;
    assert!(tally.http.ip().is_unspecified(), "{}", tally.http);
    let local = format!("http://127.0.0.1:{}/v1/traces", tally.http.port());
    let answer = reqwest::Client::new()
        .post(local)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("POST to the exposed receiver");
    assert_eq!(answer.status().as_u16(), 200);
    assert!(tally.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_in_the_database_close_the_admin_api() {
    let database = TestDatabase::create().await;
    let (key, _) = create_api_key(&database.url, "*", "admin");
    // No auth configured at all: the key in the database turns key auth on.
    let tally = Tally::on(&database).await;
    let url = tally.api_url("/api/v1/activity");
    let (status, body) = common::get_json(&url, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = common::get_json(&url, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    // An ingest-only key reads nothing.
    let (ingest, _) = create_api_key(&database.url, "*", "ingest");
    let (status, _) = common::get_json(&url, Some(&ingest)).await;
    assert_eq!(status, 403);
}
