//! Bad input of every kind gets its documented status and a message naming the
//! problem, and the process keeps serving good requests afterwards.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{get_json, token, Tally, TallyOptions, TestDatabase};
use prost::Message;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

const SECRET: &str = "bad-input-test-secret-0123456789";

fn request(trace_id: Vec<u8>, tenant: &str, action: &str) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let attr = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id,
                    span_id: vec![7; 8],
                    name: "op".into(),
                    start_time_unix_nano: now,
                    end_time_unix_nano: now,
                    attributes: vec![attr("activity.action", action), attr("tenant.id", tenant)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn post(url: &str, content_type: &str, encoding: Option<&str>, body: Vec<u8>) -> Reply {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("post");
    Reply {
        status: response.status().as_u16(),
        body: response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default(),
    }
}

/// The `message` of a google.rpc.Status in protobuf.
fn status_message(body: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    RpcStatus::decode(body)
        .map(|s| s.message)
        .unwrap_or_default()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_errors_and_tally_keeps_serving() {
    let database = TestDatabase::create().await;
    let mut tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        jwt_secret: Some(SECRET.into()),
        max_body_mib: Some(1),
        ..Default::default()
    })
    .await;
    let traces = tally.http_url("/v1/traces");
    let proto = "application/x-protobuf";
    let good = request(vec![1; 16], "t-bad", "auth.login").encode_to_vec();

    // Truncated protobuf → 400 with a google.rpc.Status naming the problem.
    let reply = post(&traces, proto, None, good[..good.len() - 3].to_vec()).await;
    assert_eq!(reply.status, 400);
    assert!(
        !status_message(&reply.body).is_empty(),
        "a Status message is given"
    );

    // Invalid JSON → 400 with a JSON Status.
    let reply = post(
        &traces,
        "application/json",
        None,
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let status: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON status body");
    assert_eq!(status["code"], 3);
    assert!(status["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Wrong content type → 415.
    let reply = post(&traces, "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(reply.status, 415, "{}", reply.text());

    // Oversize body (limit 1 MiB) → 413.
    let reply = post(&traces, proto, None, vec![0u8; 2 * 1024 * 1024]).await;
    assert_eq!(reply.status, 413);

    // Decompression bomb: 64 MiB of zeros in ~64 KiB of gzip → 413, not decoded.
    let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
    assert!(bomb.len() < 1024 * 1024);
    let reply = post(&traces, proto, Some("gzip"), bomb).await;
    assert_eq!(reply.status, 413);

    // A 15-byte trace id → 400 naming the field.
    let reply = post(
        &traces,
        proto,
        None,
        request(vec![1; 15], "t-bad", "x.y").encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 400);
    let message = status_message(&reply.body);
    assert!(
        message.contains("traceId") || message.contains("trace_id"),
        "{message}"
    );

    // Unknown path → 404; wrong method → 405.
    assert_eq!(
        post(&tally.http_url("/v1/nothing"), proto, None, good.clone())
            .await
            .status,
        404
    );
    let get = reqwest::get(&traces).await.expect("get").status().as_u16();
    assert_eq!(get, 405);

    // The receiver still serves good data.
    let reply = post(&traces, proto, None, good).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Admin API: authentication and authorisation.
    let reader = token(SECRET, "activity:read", "*");
    let activity = tally.api_url("/api/v1/activity?tenant=t-bad");
    let (status, body) = get_json(&activity, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );

    let expired = {
        let claims = serde_json::json!({"sub": "x", "exp": chrono::Utc::now().timestamp() - 3600,
            "scope": "activity:read", "tenant": "*"});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())
                .expect("non-empty HS256 secret"),
        )
        .expect("token")
    };
    assert_eq!(
        get_json(&activity, Some(&expired)).await.0,
        401,
        "expired token"
    );
    let forged = token("some-other-secret-0123456789abcdef", "activity:read", "*");
    assert_eq!(
        get_json(&activity, Some(&forged)).await.0,
        401,
        "wrong signature"
    );
    assert_eq!(
        get_json(&activity, Some("not.a.jwt")).await.0,
        401,
        "garbage token"
    );
    let wrong_scope = token(SECRET, "tokens:read", "*");
    assert_eq!(
        get_json(&activity, Some(&wrong_scope)).await.0,
        403,
        "missing scope"
    );

    // Cross-tenant: a token for tenant A asking for tenant B → 403; without a filter it sees only A.
    let tenant_a = token(SECRET, "activity:read", "t-a");
    let (status, body) = get_json(&activity, Some(&tenant_a)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get_json(&tally.api_url("/api/v1/activity"), Some(&tenant_a)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        common::without_audit(&body).len(),
        0,
        "t-a has no events but its reads: {body}"
    );

    // The good event is visible to a platform reader.
    let items = common::eventually(Duration::from_secs(10), "the good event", || async {
        let (status, body) = get_json(&activity, Some(&reader)).await;
        let items = common::without_audit(&body);
        (status == 200 && items.len() == 1).then_some(items)
    })
    .await;
    assert_eq!(items[0]["action"], "auth.login");

    // Bad filter values → 400 naming the parameter.
    for (query, name) in [
        ("from=yesterday", "from"),
        ("to=2026-13-45T00:00:00Z", "to"),
        ("outcome=maybe", "outcome"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("trace_id=xyz", "trace_id"),
        ("cursor=!!!", "cursor"),
        ("usr=alice", "usr"),
    ] {
        let (status, body) = get_json(
            &tally.api_url(&format!("/api/v1/activity?{query}")),
            Some(&reader),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(name),
            "{query}: message {message:?} names {name}"
        );
    }

    // healthz/readyz need no token.
    assert_eq!(get_json(&tally.api_url("/healthz"), None).await.0, 200);
    assert_eq!(get_json(&tally.api_url("/readyz"), None).await.0, 200);
    assert!(tally.is_running());
    let status = tally.terminate();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        tally.log_text()
    );
}
