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
