//! Requests whose work the API bounds before it starts: aggregate windows
//! capped per grain (400 `window_too_large`), years outside 1..=9999, and NUL
//! bytes, which PostgreSQL text cannot hold (400, never a 500).

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn a_window_wider_than_its_grain_allows_is_refused_fast_and_flat() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    // Warm up the router, the pool and the allocator with a small query.
    let warm = get(
        &router,
        "/api/v1/tokens/usage?grain=day&group_by=user&from=2026-11-01&to=2026-11-08",
        None,
    )
    .await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.body);

    let before = peak_rss_kib();
    for uri in [
        "/api/v1/tokens/usage?grain=day&group_by=user&from=0001-01-01&to=9999-12-31",
        "/api/v1/activity/aggregates?grain=day&group_by=user&from=0001-01-01&to=9999-12-31",
        "/api/v1/tokens/usage?grain=week&group_by=user&from=1900-01-01&to=2100-01-01",
        "/api/v1/tokens/usage?grain=month&group_by=user,model&from=1000-01-01&to=9999-12-31",
        "/api/v1/tokens/usage?grain=day&group_by=user&from=2025-01-01&to=2026-03-01",
    ] {
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(10), get(&router, uri, None))
            .await
            .unwrap_or_else(|_| panic!("{uri}: no answer within 10 s"));
        let took = started.elapsed();
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            reply.body
        );
        let (code, message) = error_of(&reply);
        assert_eq!(code, "window_too_large", "{uri}: {message}");
        assert!(message.contains("at most"), "{message}");
        // Refused before any SQL runs: far under a second even on a loaded machine.
        assert!(took < Duration::from_secs(1), "{uri}: took {took:?}");
    }
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 8 * 1024, "peak RSS grew by {grown} KiB");

    // At the cap itself the window is served.
    for uri in [
        "/api/v1/tokens/usage?grain=day&group_by=user&from=2025-01-01&to=2026-02-05",
        "/api/v1/tokens/usage?grain=week&group_by=user&from=2021-01-01&to=2025-12-31",
        "/api/v1/tokens/usage?grain=month&group_by=model&from=2016-12-01&to=2026-12-01",
    ] {
        let reply = get(&router, uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
    }
}

#[tokio::test]
async fn years_outside_1_to_9999_are_refused() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    for uri in [
        "/api/v1/tokens/usage?from=%2B262142-01-01",
        "/api/v1/tokens/usage?to=-0001-01-01",
        "/api/v1/activity/aggregates?from=0000-01-01&to=0000-02-01",
        "/api/v1/activity?from=0000-01-01T00:00:00Z",
        "/api/v1/tokens?to=0000-12-31T23:00:00Z",
    ] {
        let reply = get(&router, uri, None).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            reply.body
        );
        let (code, message) = error_of(&reply);
        assert_eq!(code, "invalid_parameter", "{uri}: {message}");
    }
}

#[tokio::test]
async fn a_nul_byte_anywhere_in_the_query_is_400_not_500() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    for uri in [
        "/api/v1/export?tenant=a%00b",
        "/api/v1/activity?user=%00",
        "/api/v1/tokens?model=x%00",
        "/api/v1/tokens/usage?group_by=model&provider=p%00",
        "/api/v1/activity/aggregates?action=a%00",
        "/api/v1/stats?tenant=%00t",
        "/api/v1/rejected?reason=r%00",
        "/api/v1/verify?tenant=t%00",
    ] {
        let reply = get(&router, uri, None).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            reply.body
        );
        let (code, message) = error_of(&reply);
        assert_eq!(code, "invalid_parameter", "{uri}: {message}");
        assert!(message.contains("NUL"), "{uri}: {message}");
    }
}

#[tokio::test]
async fn the_served_document_states_the_bounds_the_handlers_enforce() {
    let db = TestDb::migrated().await;
    let mut config = config();
    config.max_page_size = 77;
    let router = api(&config, &db.url).await.router();
    let doc = get(&router, "/api/v1/openapi.json", None).await.body;
    let parameter = |path: &str, method: &str, name: &str| -> serde_json::Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name && p["in"] == "query"))
            .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
            .clone()
    };
    // The instance's page size on the list routes, and what the handler does at it.
    for path in ["/api/v1/activity", "/api/v1/tokens", "/api/v1/rejected"] {
        assert_eq!(
            parameter(path, "get", "limit")["schema"]["maximum"],
            77,
            "{path}"
        );
        let at = get(&router, &format!("{path}?limit=77"), None).await;
        assert_eq!(at.status, StatusCode::OK, "{path}: {}", at.body);
        let over = get(&router, &format!("{path}?limit=78"), None).await;
        assert_eq!(over.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(
        parameter("/api/v1/tokens/usage", "get", "limit")["schema"]["maximum"],
        10_000
    );
    let replay = &doc["paths"]["/api/v1/rejected/replay"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["limit"];
    assert_eq!(replay["maximum"], 10_000);
    // Text parameters: 1..=1024 characters, no NUL; the handler agrees at the edge.
    let user = parameter("/api/v1/activity", "get", "user");
    assert_eq!(user["schema"]["maxLength"], 1024);
    assert_eq!(user["schema"]["minLength"], 1);
    assert!(user["schema"]["pattern"].as_str().is_some());
    let wide = "é".repeat(1024);
    let reply = get(
        &router,
        &format!("/api/v1/activity?user={}", enc(&wide)),
        None,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "1024 characters: {}",
        reply.body
    );
    let reply = get(
        &router,
        &format!("/api/v1/activity?user={}é", enc(&wide)),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "1025 characters");
    // Every data route may answer 429; all but the live feeds 504.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json" {
            continue;
        }
        for (method, operation) in item.as_object().expect("item") {
            let responses = &operation["responses"];
            assert!(responses.get("429").is_some(), "{method} {path}: no 429");
            assert_eq!(
                responses.get("504").is_some(),
                !path.ends_with("/stream"),
                "{method} {path}: 504"
            );
        }
    }
    let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .expect("codes")
        .clone();
    for code in ["window_too_large", "too_many_requests", "timeout"] {
        assert!(codes.iter().any(|c| c == code), "{code}");
    }
    // /verify: a `*` caller naming no tenant gets {status, items}, which the
    // document lists as one of the answers.
    let verify = &doc["paths"]["/api/v1/verify"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["oneOf"];
    assert!(verify.as_array().is_some_and(|answers| answers
        .iter()
        .any(|a| a["required"] == serde_json::json!(["status", "items"]))));
    let reply = get(&router, "/api/v1/verify", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let keys: Vec<&String> = reply.body.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["items", "status"]);
}

#[tokio::test]
async fn the_replay_body_is_checked_as_the_document_states() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    let post = |body: &'static str| {
        let router = router.clone();
        async move {
            let request = Request::post("/api/v1/rejected/replay")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request");
            router.oneshot(request).await.expect("infallible").status()
        }
    };
    // Refused as bodies: not an object, a fractional limit, NUL, over-long text.
    for body in [
        "[null, null]",
        "null",
        r#"{"limit": 36.5}"#,
        r#"{"limit": 0}"#,
        r#"{"tenant": "a\u0000b"}"#,
        r#"{"reason": ""}"#,
    ] {
        assert_eq!(post(body).await, StatusCode::BAD_REQUEST, "{body}");
    }
    // Valid bodies reach the replayer, which this router has none of (404).
    for body in [
        r#"{"limit": 36.0}"#,
        r#"{"limit": null, "tenant": "t"}"#,
        "{}",
    ] {
        assert_eq!(post(body).await, StatusCode::NOT_FOUND, "{body}");
    }
}
