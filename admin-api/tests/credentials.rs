//! A live feed authenticates once, but its credential still ends: the feed
//! closes with `event: auth_expired` at the JWT's `exp`, and within the API
//! key cache TTL of a key's revocation.

mod common;
mod support;

use std::time::Duration;

use common::{config_with_jwt, now_secs, token_with, TestDb, SECRET};
use serde_json::json;
use support::*;
use tokio::time::Instant;

/// Reads `feed` until `event: auth_expired` (skipping data events); panics at
/// `end`. Asserts the stream ends right after it.
async fn until_auth_expired(feed: &mut SseReader, end: Instant) -> SseEvent {
    loop {
        let event = feed
            .next(end)
            .await
            .expect("auth_expired before the stream ends");
        if event.event.as_deref() == Some("auth_expired") {
            assert!(
                feed.next(end).await.is_none(),
                "the stream ends after auth_expired"
            );
            return event;
        }
    }
}

#[tokio::test]
async fn a_feed_ends_with_auth_expired_at_the_tokens_exp() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config_with_jwt(), &db.url).await;
    for path in [
        "/api/v1/activity/stream",
        "/api/v1/tokens/stream",
        "/api/v1/stats/stream",
    ] {
        // Valid for 3 more seconds (the configured leeway is 30 s: the feed
        // still ends at `exp` itself).
        let exp = now_secs() + 3;
        let token = token_with(
            SECRET,
            &json!({ "sub": "short", "exp": exp, "scope": "admin", "tenant": "*" }),
        );
        let mut feed = SseReader::open(&server.url(path), Some(&token), None).await;
        assert_eq!(feed.status, 200, "{path}");
        let event = until_auth_expired(&mut feed, deadline(20)).await;
        assert!(
            now_secs() >= exp,
            "{path}: ended at {} before exp {exp}",
            now_secs()
        );
        assert!(
            event.data.contains("token expired"),
            "{path}: {}",
            event.data
        );
    }
}

#[tokio::test]
async fn a_feed_ends_within_the_key_cache_ttl_after_revocation() {
    let db = TestDb::migrated().await;
    let mut config = config_with_jwt();
    config.auth.api_keys.cache_ttl_secs = 2;
    let server = Server::start(&config, &db.url).await;
    for path in ["/api/v1/activity/stream", "/api/v1/stats/stream"] {
        let key = tally_admin_api::apikeys::create(&db.client, "*", &["admin".into()], None)
            .await
            .expect("create key");
        let mut feed = SseReader::open(&server.url(path), Some(&key.key), None).await;
        assert_eq!(feed.status, 200, "{path}");
        assert!(tally_admin_api::apikeys::revoke(&db.client, &key.prefix)
            .await
            .expect("revoke"));
        let revoked = Instant::now();
        let event = until_auth_expired(&mut feed, deadline(20)).await;
        let took = revoked.elapsed();
        // The TTL, plus a second of slack for a loaded machine.
        assert!(
            took <= Duration::from_secs(3),
            "{path}: ended {took:?} after revocation"
        );
        assert!(event.data.contains("API key revoked"), "{}", event.data);
    }
    // A key that is not revoked keeps its feed past several TTLs.
    let key = tally_admin_api::apikeys::create(&db.client, "*", &["admin".into()], None)
        .await
        .expect("create key");
    let mut feed = SseReader::open(&server.url("/api/v1/stats/stream"), Some(&key.key), None).await;
    let end = deadline(20);
    let mut stats = 0;
    while stats < 5 {
        let event = feed.next(end).await.expect("the feed goes on");
        assert_eq!(event.event.as_deref(), Some("stats"), "{}", event.data);
        stats += 1;
    }
}
