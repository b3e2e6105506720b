//! `admin_api.limits` on a served API: a caller over its concurrency gets 429
//! (with `Retry-After`) while another caller is served, a request longer than
//! the timeout gets 504, and live feeds are counted per caller.
//!
//! Requests are held in progress by an `ACCESS EXCLUSIVE` lock on
//! `activity_events` taken by the test: their queries wait in PostgreSQL
//! (seen in `pg_stat_activity`), not on a timer.

mod common;
mod support;

use std::time::Duration;

use common::{config_with_jwt, now_secs, token_with, TestDb, SECRET};
use serde_json::{json, Value};
use support::*;

fn token_of(sub: &str) -> String {
    token_with(
        SECRET,
        &json!({ "sub": sub, "exp": now_secs() + 3600, "scope": "admin", "tenant": "*" }),
    )
}

/// Admin API queries of database `name` waiting for a lock.
async fn waiting_on_locks(client: &tokio_postgres::Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'tally-admin-api' AND wait_event_type = 'Lock'",
            &[&name],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

async fn error_code(response: reqwest::Response) -> (reqwest::StatusCode, String, Value) {
    let status = response.status();
    let body: Value = response.json().await.expect("JSON body");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code, body)
}

#[tokio::test]
async fn a_caller_over_its_concurrency_gets_429_while_another_is_served() {
    let db = TestDb::migrated().await;
    let mut config = config_with_jwt();
    config.limits.max_concurrent_per_caller = 2;
    let server = Server::start(&config, &db.url).await;
    let (a, b) = (token_of("caller-a"), token_of("caller-b"));

    let mut locker = connect(&db.url).await;
    let lock = locker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE activity_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let url = server.url("/api/v1/activity");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let request = http().get(&url).bearer_auth(&a).send();
            tokio::spawn(request)
        })
        .collect();
    wait_for(
        "caller A's two requests to wait on the lock",
        20,
        || async { waiting_on_locks(&db.client, &db.name).await == 2 },
    )
    .await;

    // A third request of A: refused at once, with Retry-After.
    let response = http().get(&url).bearer_auth(&a).send().await.expect("send");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, code, body) = error_code(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(code, "too_many_requests", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_concurrent_per_caller")),
        "{body}"
    );
    // Another caller is served meanwhile.
    let response = http()
        .get(server.url("/api/v1/tokens"))
        .bearer_auth(&b)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);

    lock.rollback().await.expect("release");
    for request in held {
        let response = request.await.expect("join").expect("send");
        assert_eq!(response.status(), 200);
    }
    // A's slots were given back.
    let response = http().get(&url).bearer_auth(&a).send().await.expect("send");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_request_longer_than_the_timeout_is_504() {
    let db = TestDb::migrated().await;
    let mut config = config_with_jwt();
    config.limits.request_timeout_ms = 300;
    let server = Server::start(&config, &db.url).await;
    let mut locker = connect(&db.url).await;
    let lock = locker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE activity_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        http()
            .get(server.url("/api/v1/activity"))
            .bearer_auth(token_of("slow"))
            .send(),
    )
    .await
    .expect("answered within 10 s")
    .expect("send");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, code, body) = error_code(response).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(code, "timeout", "{body}");
    assert_eq!(
        retry_after.as_deref(),
        Some("5"),
        "a 504 says when to retry"
    );
    // The 504 ended its SQL too (the checkout's statement timeout is what is left of
    // the request's deadline): nothing of the API still waits on the lock held here.
    wait_for("the timed-out request's query to end", 10, || async {
        waiting_on_locks(&db.client, &db.name).await == 0
    })
    .await;
    lock.rollback().await.expect("release");
    // Live feeds are exempt from the timeout: one still runs after it.
    let mut feed = SseReader::open(
        &server.url("/api/v1/activity/stream"),
        Some(&token_of("slow")),
        None,
    )
    .await;
    assert_eq!(feed.status, 200);
    // Past the timeout, a row committed now still reaches the feed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let today = chrono::Utc::now().date_naive();
    db.partitions(today, today).await;
    let mut writer = connect(&db.url).await;
    insert_activity(&mut writer, 1, &["t"], &["doc.read"], 0, 0).await;
    let event = feed
        .next(deadline(10))
        .await
        .expect("an event, not the end");
    assert_eq!(event.event.as_deref(), Some("activity"));
}

#[tokio::test]
async fn live_feeds_are_counted_per_caller() {
    let db = TestDb::migrated().await;
    let mut config = config_with_jwt();
    config.limits.max_streams_per_caller = 1;
    let server = Server::start(&config, &db.url).await;
    let (a, b) = (token_of("feeds-a"), token_of("feeds-b"));
    let url = server.url("/api/v1/activity/stream");
    let first = SseReader::open(&url, Some(&a), None).await;
    assert_eq!(first.status, 200);
    let refused = http().get(&url).bearer_auth(&a).send().await.expect("send");
    assert!(refused.headers().contains_key("retry-after"));
    let (status, code, body) = error_code(refused).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (429, "too_many_requests"),
        "{body}"
    );
    // Through ?access_token= too (browsers), and on the stats feed.
    let refused = http()
        .get(format!(
            "{}?access_token={a}",
            server.url("/api/v1/stats/stream")
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 429);
    let other = SseReader::open(&url, Some(&b), None).await;
    assert_eq!(other.status, 200);
    // Closing A's feed gives its slot back.
    drop(first);
    let end = deadline(20);
    loop {
        let again = SseReader::open(&url, Some(&a), None).await;
        if again.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "A's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_feed_whose_reads_keep_failing_ends_with_unavailable() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config_with_jwt(), &db.url).await;
    // Every read of the feed's table fails from now on.
    db.client
        .batch_execute("ALTER TABLE token_usage RENAME TO token_usage_away")
        .await
        .expect("rename");
    let mut feed = SseReader::open(
        &format!("{}?after_seq=0", server.url("/api/v1/tokens/stream")),
        Some(&token_of("patient")),
        None,
    )
    .await;
    assert_eq!(feed.status, 200);
    // Retries back off (1, 2, 4, 8, 8 s), then the client is told and the stream ends.
    let end = deadline(60);
    let event = feed.next(end).await.expect("an event before the end");
    assert_eq!(
        event.event.as_deref(),
        Some("unavailable"),
        "{}",
        event.data
    );
    assert!(event.data.contains("reconnect"), "{}", event.data);
    assert!(feed.next(end).await.is_none(), "the stream ends after it");
}

#[tokio::test]
async fn stats_streams_with_the_same_filter_share_one_poll() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config_with_jwt(), &db.url).await;
    let token = token_of("dashboard");
    let url = server.url("/api/v1/stats/stream");
    let mut feeds = Vec::new();
    for _ in 0..10 {
        let feed = SseReader::open(&url, Some(&token), None).await;
        assert_eq!(feed.status, 200);
        feeds.push(feed);
    }
    let today = chrono::Utc::now().date_naive();
    db.partitions(today, today).await;
    let mut writer = connect(&db.url).await;
    insert_activity(&mut writer, 3, &["t"], &["doc.read"], 0, 0).await;
    // Every client sees the 3 rows, in summaries of the one shared poll.
    for feed in &mut feeds {
        let end = deadline(20);
        let mut seen = 0;
        while seen < 3 {
            let event = feed.next(end).await.expect("a stats event");
            assert_eq!(event.event.as_deref(), Some("stats"));
            seen += event.json()["activity"]["events"].as_i64().unwrap_or(0);
        }
        assert_eq!(seen, 3);
    }
    // One poll a second needs one connection at a time: the pool never grew
    // to one connection per client.
    let connections: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'tally-admin-api'",
            &[&db.name],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert!(
        connections <= 2,
        "{connections} pool connections for 10 clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_reset_for_not_reading_keeps_its_callers_slot_for_a_while() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::migrated().await;
    let mut config = config_with_jwt();
    config.limits.max_streams_per_caller = 1;
    config.sse_client_buffer = 16;
    config.sse_max_clients = 1;
    let server = Server::start(&config, &db.url).await;
    // ~2 MiB of rows, far beyond the socket buffers, for the feed to replay.
    let (mut writer, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    for _ in 0..5 {
        insert_activity(&mut writer, 100, &["acme"], &["doc.read"], 4096, 0).await;
    }
    // A client with a tiny receive buffer that asks for the feed and reads nothing.
    let stalled = token_of("stalled");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let addr: std::net::SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut raw = socket.connect(addr).await.expect("connect");
    raw.write_all(
        format!(
            "GET /api/v1/activity/stream?after_seq=0 HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {stalled}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    // Its feed takes the instance's only live-feed slot (another caller gets 503)…
    let url = server.url("/api/v1/activity/stream");
    let other = token_of("reader");
    let other_status = || {
        let (url, other) = (url.clone(), other.clone());
        async move {
            http()
                .get(&url)
                .bearer_auth(&other)
                .send()
                .await
                .map_or(0, |response| response.status().as_u16())
        }
    };
    wait_for("the stalled feed to be open", 30, || async {
        other_status().await == 503
    })
    .await;
    // …until it fills, is reset after 1 s without room, and its reader ends.
    wait_for("the stalled feed to be reset", 60, || async {
        other_status().await == 200
    })
    .await;
    // Now read what it was sent: the response ends, so the feed is gone.
    let mut sent = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), raw.read_to_end(&mut sent))
        .await
        .expect("the stalled feed's response ends")
        .expect("read");
    let text = String::from_utf8_lossy(&sent);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("event: reset"), "the feed was reset");
    // It still counts against its caller for a while…
    let again = http()
        .get(&url)
        .bearer_auth(&stalled)
        .send()
        .await
        .expect("send");
    // (Checked before the body is read: a feed's body does not end.)
    assert_eq!(
        again.status(),
        429,
        "a caller whose feed was just reset for not reading is refused a new one"
    );
    let (_, code, body) = error_code(again).await;
    assert_eq!(code, "too_many_requests", "{body}");
    // …not against anyone else (503 at most while the instance's one slot is taken)…
    assert_ne!(other_status().await, 429);
    // …and comes back when the hold ends.
    wait_for("the reset feed's slot to come back", 30, || {
        let (url, stalled) = (url.clone(), stalled.clone());
        async move {
            http()
                .get(&url)
                .bearer_auth(&stalled)
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        }
    })
    .await;
}

/// Whether an admin API query of database `name` has waited for a lock at least `ms`.
async fn waited_on_lock_for(client: &tokio_postgres::Client, name: &str, ms: i32) -> bool {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'tally-admin-api' AND wait_event_type = 'Lock' \
             AND clock_timestamp() - query_start >= make_interval(secs => $2::int / 1000.0)",
            &[&name, &ms],
        )
        .await
        .expect("pg_stat_activity")
        .get::<_, i64>(0)
        > 0
}

/// One request of `token` that holds its database connection for at least `ms`:
/// it waits on a lock the test holds, then is answered. Its status.
async fn hold_connection(db: &TestDb, server: &Server, token: &str, ms: i32) -> u16 {
    let mut locker = connect(&db.url).await;
    let lock = locker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE activity_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let request = tokio::spawn(
        http()
            .get(server.url("/api/v1/activity"))
            .bearer_auth(token.to_owned())
            .send(),
    );
    wait_for(
        "the request to hold its connection long enough",
        60,
        || async { waited_on_lock_for(&db.client, &db.name, ms).await },
    )
    .await;
    lock.rollback().await.expect("release");
    request
        .await
        .expect("join")
        .expect("send")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_caller_over_its_database_time_gets_429_with_retry_after_while_another_is_served() {
    let db = TestDb::migrated().await;
    let mut config = config_with_jwt();
    // 1% of a connection: a bucket of 100 ms, refilled at 10 ms/s.
    config.limits.db_time_per_caller_percent = 1;
    let server = Server::start(&config, &db.url).await;
    let (a, b) = (token_of("budget-a"), token_of("budget-b"));

    // A's request holds its connection for 400 ms: 300 ms over its bucket.
    assert_eq!(hold_connection(&db, &server, &a, 400).await, 200);

    let url = server.url("/api/v1/activity");
    let response = http().get(&url).bearer_auth(&a).send().await.expect("send");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (status, code, body) = error_code(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(code, "too_many_requests", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("db_time_per_caller_percent")),
        "{body}"
    );
    // About 30 s of refill pays 300 ms of debt at 10 ms/s (capped at 60).
    assert!(
        retry_after.is_some_and(|s| (20..=60).contains(&s)),
        "Retry-After {retry_after:?}"
    );
    // Another caller is served meanwhile, and A still is not.
    let response = http().get(&url).bearer_auth(&b).send().await.expect("send");
    assert_eq!(response.status(), 200);
    let response = http()
        .get(server.url("/api/v1/tokens"))
        .bearer_auth(&a)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429, "the budget counts across routes");
}

#[tokio::test]
async fn a_caller_within_its_database_time_is_never_refused() {
    let db = TestDb::migrated().await;
    let config = config_with_jwt();
    assert_eq!(config.limits.db_time_per_caller_percent, 100, "the default");
    let server = Server::start(&config, &db.url).await;
    let a = token_of("sequential");
    // One request at a time holding its connection longer than the bucket holds
    // (10 s at 100%): the time that passed meanwhile refilled it.
    assert_eq!(hold_connection(&db, &server, &a, 11_000).await, 200);
    let today = chrono::Utc::now().date_naive();
    let week_ago = today - chrono::Duration::days(7);
    let urls = [
        server.url("/api/v1/activity?limit=50"),
        server.url(&format!(
            "/api/v1/tokens/usage?grain=day&from={week_ago}&to={today}"
        )),
        server.url("/api/v1/stats"),
    ];
    for i in 0..300 {
        let response = http()
            .get(&urls[i % urls.len()])
            .bearer_auth(&a)
            .send()
            .await
            .expect("send");
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(status, 200, "request {i}: {body}");
    }
}
