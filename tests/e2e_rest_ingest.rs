//! REST ingest (`POST /api/v1/events`) end to end, against the real binary and a
//! real PostgreSQL: the body formats, per-item rejection, idempotent resends,
//! token rows with cost, the limits (413, 429), ingest-key tenant binding and
//! the browser side (CORS preflights, origins, action allow-list,
//! client-asserted users).

mod common;

use common::{Tally, TallyOptions, TestDatabase};
use serde_json::{json, Value};
use std::process::Command;

/// POSTs `body` to REST ingest with a Content-Type and extra headers; (status,
/// headers, JSON body or Null).
async fn post(
    tally: &Tally,
    path_and_query: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut call = reqwest::Client::new()
        .post(tally.http_url(path_and_query))
        .header("content-type", content_type)
        .body(body);
    for (name, value) in headers {
        call = call.header(*name, *value);
    }
    let response = call.send().await.expect("POST /api/v1/events");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn post_json(tally: &Tally, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, answer) = post(
        tally,
        "/api/v1/events",
        "application/json",
        body.to_string(),
        headers,
    )
    .await;
    (status, answer)
}

/// The number of activity rows whose action is `action`.
async fn count(db: &TestDatabase, action: &str) -> i64 {
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE action = $1",
            &[&action],
        )
        .await
        .expect("count");
    row.get(0)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_rejection_by_index_idempotency_and_tokens() {
    let db = TestDatabase::migrated().await;
    let tally = Tally::on(&db).await;
    let ts = now_rfc3339();

    // One object.
    let (status, answer) = post_json(
        &tally,
        &json!({"action": "rest.single", "user_id": "u1", "tenant_id": "t1", "ts": ts,
                "resource_type": "doc", "resource_id": "d1", "outcome": "success",
                "session_id": "s1", "attributes": {"plan": "pro", "seats": 3}}),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"accepted": 1, "rejected": []}));
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT user_id, tenant_id, session_id, outcome, resource_type, resource_id, \
                    attributes FROM activity_events WHERE action = 'rest.single'",
            &[],
        )
        .await
        .expect("the single event is committed when 202 is answered");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("u1"));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("t1"));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("s1"));
    assert_eq!(row.get::<_, String>(3), "success");
    assert_eq!(row.get::<_, Option<String>>(4).as_deref(), Some("doc"));
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some("d1"));
    let attributes: Value = row.get(6);
    assert_eq!(attributes["plan"], "pro");
    assert_eq!(attributes["seats"], 3);
    assert!(attributes.get("tally.event.id").is_none(), "{attributes}");
    assert!(
        attributes.get("tally.user_id.asserted_by").is_none(),
        "a server request is not client-asserted: {attributes}"
    );

    // An array with bad items: rejected by index, the rest stored.
    let (status, answer) = post_json(
        &tally,
        &json!([
            {"action": "rest.array", "ts": ts, "attributes": {"n": 0}},
            {"user_id": "no action"},
            {"action": "rest.array", "ts": ts, "attributes": {"n": 2}},
            5,
            {"action": "rest.array", "ts": "yesterday"}
        ]),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    let rejected = answer["rejected"].as_array().expect("rejected list");
    let indexes: Vec<u64> = rejected
        .iter()
        .filter_map(|r| r["index"].as_u64())
        .collect();
    assert_eq!(indexes, [1, 3, 4], "{answer}");
    assert!(rejected[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("action")));
    assert_eq!(count(&db, "rest.array").await, 2);

    // NDJSON, a bad line among good ones.
    let ndjson = format!(
        "{}\n{{not json\n\n{}\n",
        json!({"action": "rest.ndjson", "ts": ts, "attributes": {"line": 1}}),
        json!({"action": "rest.ndjson", "ts": ts, "attributes": {"line": 3}})
    );
    let (status, _, answer) = post(
        &tally,
        "/api/v1/events",
        "application/x-ndjson",
        ndjson,
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    assert_eq!(count(&db, "rest.ndjson").await, 2);

    // What sendBeacon sends: text/plain holding JSON.
    let (status, _, answer) = post(
        &tally,
        "/api/v1/events",
        "text/plain;charset=UTF-8",
        json!({"action": "rest.beacon", "ts": ts}).to_string(),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(count(&db, "rest.beacon").await, 1);

    // Resends are stored once: with a given id, and with content + ts alone.
    let given = "0190a5c8-7f3e-7a1b-9c2d-1234567890ab";
    let with_id = json!({"action": "rest.resend", "id": given, "ts": ts});
    let without_id = json!({"action": "rest.resend", "ts": ts, "attributes": {"k": "v"}});
    for _ in 0..2 {
        let (status, answer) = post_json(&tally, &json!([with_id, without_id]), &[]).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["accepted"], 2, "{answer}");
    }
    assert_eq!(count(&db, "rest.resend").await, 2);
    let stored_id = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE id = $1::text::uuid",
            &[&given],
        )
        .await
        .expect("by id");
    assert_eq!(
        stored_id.get::<_, i64>(0),
        1,
        "the given id is the row's id"
    );

    // A tokens object makes a priced token_usage row too (once, resent or not).
    let chat = json!({"action": "chat.message.sent", "user_id": "u9", "tenant_id": "t9", "ts": ts,
                      "tokens": {"provider": "openai", "model": "gpt-4o",
                                 "input_tokens": 1000, "output_tokens": 100,
                                 "cache_read_tokens": 200}});
    for _ in 0..2 {
        let (status, answer) = post_json(&tally, &chat, &[]).await;
        assert_eq!(status, 202, "{answer}");
    }
    let token_rows = client
        .query_one("SELECT count(*) FROM token_usage WHERE user_id = 'u9'", &[])
        .await
        .expect("count");
    assert_eq!(
        token_rows.get::<_, i64>(0),
        1,
        "a resent token row is stored once"
    );
    let row = client
        .query_one(
            "SELECT user_id, tenant_id, provider, model, input_tokens, output_tokens, \
                    cache_read_tokens, cost_usd::float8 FROM token_usage WHERE user_id = 'u9'",
            &[],
        )
        .await
        .expect("the token row is committed with the 202");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("t9"));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("openai"));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("gpt-4o"));
    assert_eq!(row.get::<_, Option<i64>>(4), Some(1000));
    assert_eq!(row.get::<_, Option<i64>>(5), Some(100));
    assert_eq!(row.get::<_, Option<i64>>(6), Some(200));
    let cost: Option<f64> = row.get(7);
    assert!(cost.is_some_and(|c| c > 0.0), "priced: {cost:?}");
    assert_eq!(count(&db, "chat.message.sent").await, 1);

    // A body that is not JSON at all, and an unknown media type.
    let (status, _, answer) =
        post(&tally, "/api/v1/events", "application/json", "{oops", &[]).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_request");
    let (status, _, _) = post(&tally, "/api/v1/events", "image/png", "x", &[]).await;
    assert_eq!(status, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_and_rate_limits() {
    let db = TestDatabase::migrated().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(db.url.clone()),
        max_body_mib: Some(1),
        events_rate_limit: Some("{ per_second: 0.01, burst: 3 }".into()),
        ..Default::default()
    })
    .await;
    let big = json!({"action": "rest.big", "attributes": {"blob": "x".repeat(2 * 1024 * 1024)}});
    let (status, answer) = post_json(&tally, &big, &[]).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(count(&db, "rest.big").await, 0);

    // A burst of 3 events, then the bucket is empty for ~100 s per event.
    let three = json!([{"action": "rest.rate"}, {"action": "rest.rate"}, {"action": "rest.rate"}]);
    let (status, answer) = post_json(&tally, &three, &[]).await;
    assert_eq!(status, 202, "{answer}");
    let (status, headers, answer) = post(
        &tally,
        "/api/v1/events",
        "application/json",
        json!({"action": "rest.rate.refused"}).to_string(),
        &[],
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited");
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry >= 1, "{retry}");
    assert_eq!(count(&db, "rest.rate.refused").await, 0);
}

/// `tally apikey create` with extra arguments; returns the key.
fn create_key(database_url: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apikey", "create"])
        .args(args)
        .env("TALLY_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tally apikey create");
    assert!(
        output.status.success(),
        "tally apikey create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .expect("the key")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_keys_tenants_origins_and_actions() {
    let db = TestDatabase::migrated().await;
    let server_key = create_key(&db.url, &["--tenant", "acme", "--scope", "ingest"]);
    let browser_key = create_key(
        &db.url,
        &[
            "--tenant",
            "acme",
            "--scope",
            "ingest",
            "--origin",
            "https://app.example",
            "--action",
            "ui.*",
        ],
    );
    // An origin needs scope ingest and one tenant.
    let refused = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apikey", "create", "--tenant", "*", "--scope", "ingest"])
        .args(["--origin", "https://app.example"])
        .env("TALLY_DATABASE_URL", &db.url)
        .output()
        .expect("run tally apikey create");
    assert!(!refused.status.success());
    let listed = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apikey", "list"])
        .env("TALLY_DATABASE_URL", &db.url)
        .output()
        .expect("run tally apikey list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|line| line.contains("\thttps://app.example\tui.*\t")),
        "{listed}"
    );
    let tally = Tally::launch(TallyOptions {
        database_url: Some(db.url.clone()),
        ingest_auth_required: true,
        ..Default::default()
    })
    .await;
    let ts = now_rfc3339();

    // No key: refused.
    let (status, answer) = post_json(&tally, &json!({"action": "rest.nokey"}), &[]).await;
    assert_eq!(status, 401, "{answer}");

    // A tenant-bound key: its tenant is stamped; another tenant is rejected by index.
    let auth = format!("Bearer {server_key}");
    let (status, answer) = post_json(
        &tally,
        &json!([
            {"action": "rest.bound", "ts": ts, "attributes": {"n": 0}},
            {"action": "rest.bound", "ts": ts, "tenant_id": "globex"},
            {"action": "rest.bound", "ts": ts, "tenant_id": "acme", "attributes": {"n": 2}}
        ]),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 2, "rejected": [{"index": 1, "reason": "tenant_mismatch"}]})
    );
    let client = db.client().await;
    let tenants: Vec<String> = client
        .query(
            "SELECT tenant_id FROM activity_events WHERE action = 'rest.bound'",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(tenants, ["acme", "acme"]);
    let quarantined = client
        .query_one(
            "SELECT count(*) FROM rejected_events WHERE reason = 'tenant_mismatch'",
            &[],
        )
        .await
        .expect("rejected");
    assert_eq!(quarantined.get::<_, i64>(0), 1, "kept in rejected_events");

    // CORS preflights: the configured origin is answered, another refused.
    let preflight = |origin: &'static str| {
        let url = tally.http_url("/api/v1/events");
        async move {
            reqwest::Client::new()
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type, x-api-key")
                .send()
                .await
                .expect("OPTIONS")
        }
    };
    let allowed = preflight("https://app.example").await;
    assert_eq!(allowed.status().as_u16(), 204);
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    assert!(allowed
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| h.contains("x-api-key")));
    let other = preflight("https://evil.example").await;
    assert_eq!(other.status().as_u16(), 403);
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A beacon from the page: key in the query, text/plain; the action
    // allow-list rejects by index; the user is marked client-asserted.
    let path = format!("/api/v1/events?api_key={browser_key}");
    let (status, headers, answer) = post(
        &tally,
        &path,
        "text/plain;charset=UTF-8",
        json!([
            {"action": "ui.click", "user_id": "u-browser", "ts": ts},
            {"action": "admin.delete", "ts": ts}
        ])
        .to_string(),
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    assert!(answer["rejected"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("action_not_allowed")));
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    assert_eq!(
        headers
            .get("access-control-expose-headers")
            .and_then(|v| v.to_str().ok()),
        Some("retry-after")
    );
    let row = client
        .query_one(
            "SELECT tenant_id, user_id, attributes FROM activity_events \
             WHERE action = 'ui.click'",
            &[],
        )
        .await
        .expect("the click");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("acme"));
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("u-browser")
    );
    let attributes: Value = row.get(2);
    assert_eq!(attributes["tally.user_id.asserted_by"], "client");
    assert_eq!(count(&db, "admin.delete").await, 0);

    // The browser key from a page of another origin, and the server key from a page.
    for (key, origin) in [
        (browser_key.as_str(), "https://evil.example"),
        (server_key.as_str(), "https://app.example"),
    ] {
        let (status, _, answer) = post(
            &tally,
            "/api/v1/events",
            "application/json",
            json!({"action": "ui.click.elsewhere"}).to_string(),
            &[("origin", origin), ("x-api-key", key)],
        )
        .await;
        assert_eq!(status, 403, "{origin}: {answer}");
        assert_eq!(answer["error"]["code"], "origin_not_allowed");
    }
    assert_eq!(count(&db, "ui.click.elsewhere").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_taxonomy_quarantine_is_reported_by_index() {
    let db = TestDatabase::migrated().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(db.url.clone()),
        validate_mode: Some("strict"),
        ..Default::default()
    })
    .await;
    let ts = now_rfc3339();
    let (status, answer) = post_json(
        &tally,
        &json!([
            {"action": "no.such.action", "ts": ts},
            {"action": "auth.login.success", "user_id": "u1", "ts": ts},
            {"action": "auth.login.success", "ts": ts}
        ]),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 1, "rejected": [
            {"index": 0, "reason": "unknown_action"},
            {"index": 2, "reason": "missing_field"}
        ]})
    );
    assert_eq!(count(&db, "auth.login.success").await, 1);
    let client = db.client().await;
    let quarantined = client
        .query_one("SELECT count(*) FROM rejected_events", &[])
        .await
        .expect("rejected");
    assert_eq!(
        quarantined.get::<_, i64>(0),
        2,
        "both kept in rejected_events"
    );
}
