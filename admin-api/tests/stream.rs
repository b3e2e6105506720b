//! Live feeds over real HTTP against a real PostgreSQL: replay + live without
//! gap or duplicate across reconnects, slow-client reset, fan-out between two
//! instances (NOTIFY) and the polling fallback, client limit, `access_token`,
//! tenant scoping, the tokens feed and the stats stream.

mod common;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{config, config_with_jwt, error_of, token, TestDb, SECRET};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_resumed_twice_arrive_exactly_once_in_order() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config(), &db.url).await;
    let url = server.url("/api/v1/activity/stream?after_seq=0");
    // A filtered client alongside, for the whole run.
    let acme_url = server.url("/api/v1/activity/stream?after_seq=0&tenant=acme&action=auth.*");
    let mut acme = SseReader::open(&acme_url, None, None).await;
    assert_eq!(acme.status, 200);
    assert_eq!(
        acme.headers["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // Per batch of 100 (g = 1..=100): acme is even g, auth.* is g % 3 != 1,
    // so 33 rows per batch. Read them as they come (a reader that stops
    // reading would be reset).
    let acme_reading = tokio::spawn(async move {
        let end = deadline(120);
        let mut got = Vec::new();
        while got.len() < 3_300 {
            let event = acme.next(end).await.expect("filtered stream goes on");
            assert_eq!(event.json()["tenant_id"], "acme");
            assert!(event.json()["action"]
                .as_str()
                .unwrap()
                .starts_with("auth."));
            got.push(event.seq());
        }
        got
    });

    let mut writer = db_client(&db).await;
    let writing = tokio::spawn(async move {
        for _ in 0..100 {
            insert_activity(
                &mut writer,
                100,
                &["acme", "globex"],
                &["auth.login", "doc.read", "auth.logout"],
                0,
                0,
            )
            .await;
        }
    });

    let mut received: Vec<i64> = Vec::new();
    let end = deadline(120);
    let mut last: Option<i64> = None;
    for stop_after in [3_000usize, 6_500, 10_000] {
        let mut reader = match last {
            None => SseReader::open(&url, None, None).await,
            Some(id) => {
                // The header wins over the URL's after_seq=0.
                SseReader::open(&url, None, Some(id)).await
            }
        };
        assert_eq!(reader.status, 200);
        while received.len() < stop_after {
            let event = reader.next(end).await.expect("stream goes on");
            assert_eq!(event.event.as_deref(), Some("activity"), "{event:?}");
            let item = event.json();
            assert_eq!(item["seq"].as_i64(), Some(event.seq()), "id: is the seq");
            received.push(event.seq());
            last = Some(event.seq());
        }
        // Disconnect (drop) and resume from the last id seen.
        drop(reader);
    }
    writing.await.expect("writer");

    let table = all_seqs(&db.client, "activity_events").await;
    assert_eq!(table.len(), 10_000);
    assert_eq!(received, table, "every seq exactly once, in order");

    // The filtered client got exactly its rows, in order.
    let expected: Vec<i64> = db
        .client
        .query(
            "SELECT seq FROM activity_events WHERE tenant_id = 'acme' AND action LIKE 'auth.%' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(expected.len(), 3_300);
    let got = acme_reading.await.expect("filtered reader");
    assert_eq!(got, expected);
}

async fn db_client(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_client_is_reset_while_another_keeps_up_and_inserts_go_on() {
    let db = TestDb::migrated().await;
    let mut cfg = config();
    cfg.sse_client_buffer = 16;
    cfg.sse_max_clients = 2;
    let server = Server::start(&cfg, &db.url).await;
    let path = "/api/v1/activity/stream?after_seq=0";

    // The stalled client: a raw socket with a tiny receive buffer that sends
    // its request and then reads nothing until the end of the test.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();

    let mut reader = SseReader::open(&server.url(path), None, None).await;
    assert_eq!(reader.status, 200);

    // 5,000 rows of ~4 KiB each (20 MiB): far beyond the socket buffers.
    const ROWS: usize = 5_000;
    let mut writer = db_client(&db).await;
    let writing = tokio::spawn(async move {
        let started = Instant::now();
        for _ in 0..50 {
            insert_activity(&mut writer, 100, &["acme"], &["doc.read"], 4096, 0).await;
        }
        started.elapsed()
    });
    let end = deadline(120);
    let mut seqs = Vec::new();
    while seqs.len() < ROWS {
        let event = reader
            .next(end)
            .await
            .expect("the fast client keeps receiving");
        assert_eq!(event.event.as_deref(), Some("activity"));
        seqs.push(event.seq());
    }
    let write_time = writing.await.expect("writer");
    assert!(
        write_time < Duration::from_secs(60),
        "inserts took {write_time:?}"
    );
    assert_eq!(seqs, all_seqs(&db.client, "activity_events").await);

    // The reset client no longer holds a slot (max 2: the fast one and a new one),
    // although its connection is still open.
    let url = server.url(path);
    wait_for("the reset client's slot to be free", 30, || {
        let url = url.clone();
        async move { http().get(&url).send().await.unwrap().status() == 200 }
    })
    .await;

    // Now read what the stalled client was sent: some events, then `event:
    // reset`, then the end of the response (the server closes).
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stalled.read_to_end(&mut raw))
        .await
        .expect("the stalled client's response ends")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let delivered = text.matches("event: activity").count();
    assert!(
        delivered < ROWS,
        "the stalled client was cut short ({delivered} events)"
    );
    let reset_at = text.find("event: reset").expect("a reset event was sent");
    assert!(
        !text[reset_at..].contains("event: activity"),
        "nothing after the reset"
    );
    assert!(text[reset_at..].contains("Last-Event-ID"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_fan_out_by_notify_and_poll_while_the_listener_is_down() {
    let db = TestDb::migrated().await;
    let a = Server::start(&config(), &db.url).await;
    let b = Server::start(&config(), &db.url).await;
    let path = "/api/v1/activity/stream?after_seq=0";
    let mut on_a = SseReader::open(&a.url(path), None, None).await;
    let mut on_b = SseReader::open(&b.url(path), None, None).await;
    assert_eq!((on_a.status.as_u16(), on_b.status.as_u16()), (200, 200));

    // Both instances are listening (one LISTEN connection each).
    let admin = db_client(&db).await;
    let name = db.name.clone();
    wait_for("two LISTEN connections", 30, || {
        let (admin, name) = (&admin, &name);
        async move { listener_pids(admin, name).await.len() == 2 }
    })
    .await;
    let before = listener_pids(&admin, &name).await;

    // Rows written through another connection reach both instances' clients;
    // with the listeners up nothing polls, so this is the NOTIFY path.
    let mut writer = db_client(&db).await;
    insert_activity(&mut writer, 10, &["acme"], &["doc.read"], 0, 0).await;
    let end = deadline(30);
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..10 {
        got_a.push(on_a.next(end).await.unwrap().seq());
        got_b.push(on_b.next(end).await.unwrap().seq());
    }

    // Kill both listen connections; rows committed meanwhile still arrive
    // (polling fallback, then the reconnect's catch-up), then live again.
    for pid in &before {
        admin
            .execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .unwrap();
    }
    insert_activity(&mut writer, 10, &["acme"], &["doc.read"], 0, 0).await;
    for _ in 0..10 {
        got_a.push(on_a.next(end).await.unwrap().seq());
        got_b.push(on_b.next(end).await.unwrap().seq());
    }
    wait_for("the listeners to reconnect", 30, || {
        let (admin, name, before) = (&admin, &name, &before);
        async move {
            let now = listener_pids(admin, name).await;
            now.len() == 2 && now.iter().all(|pid| !before.contains(pid))
        }
    })
    .await;
    insert_activity(&mut writer, 10, &["acme"], &["doc.read"], 0, 0).await;
    for _ in 0..10 {
        got_a.push(on_a.next(end).await.unwrap().seq());
        got_b.push(on_b.next(end).await.unwrap().seq());
    }
    let table = all_seqs(&db.client, "activity_events").await;
    assert_eq!(got_a, table);
    assert_eq!(got_b, table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_answers_503_and_frees_slots() {
    let db = TestDb::migrated().await;
    let mut cfg = config();
    cfg.sse_max_clients = 2;
    cfg.sse_heartbeat_secs = 1;
    let server = Server::start(&cfg, &db.url).await;
    let url = server.url("/api/v1/activity/stream");
    let first = SseReader::open(&url, None, None).await;
    let mut second = SseReader::open(&server.url("/api/v1/stats/stream"), None, None).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));

    let refused = http().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    // A heartbeat arrives on an idle stream.
    let end = deadline(10);
    let stats = second.next(end).await.expect("a stats event");
    assert_eq!(stats.event.as_deref(), Some("stats"));
    assert!(second.comments >= 1);

    // Dropping a client frees its slot (noticed at the next heartbeat write).
    drop(first);
    wait_for("a freed slot", 20, || {
        let url = url.clone();
        async move { http().get(&url).send().await.unwrap().status() == 200 }
    })
    .await;
}

#[tokio::test]
async fn access_token_only_on_stream_routes_and_tenant_scoping() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config_with_jwt(), &db.url).await;
    let acme = token("activity:read tokens:read", Some("acme"));

    // Accepted on the stream routes.
    for path in ["activity", "tokens", "stats"] {
        let url = server.url(&format!("/api/v1/{path}/stream?access_token={acme}"));
        let reader = SseReader::open(&url, None, None).await;
        assert_eq!(reader.status, 200, "{path}");
    }
    // Refused on the list route, even valid.
    let reply = http()
        .get(server.url(&format!("/api/v1/activity?access_token={acme}")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    // Verified like the header: a bad signature is 401.
    let forged = common::token_with(
        "another-secret-another-secret-another",
        &serde_json::json!({"sub": "x", "exp": common::now_secs() + 60, "scope": "admin", "tenant": "*"}),
    );
    assert_ne!(SECRET, "another-secret-another-secret-another");
    let reply = http()
        .get(server.url(&format!("/api/v1/activity/stream?access_token={forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    let reply = http()
        .get(server.url("/api/v1/activity/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    // Another tenant: 403; unknown parameter and list-only parameters: 400.
    for (query, status) in [
        ("tenant=globex", 403u16),
        ("limit=5", 400),
        ("cursor=x", 400),
        ("bogus=1", 400),
        ("after_seq=-1", 400),
    ] {
        let reply = http()
            .get(server.url(&format!("/api/v1/activity/stream?{query}")))
            .bearer_auth(&acme)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), status, "{query}");
        let body: serde_json::Value = reply.json().await.unwrap();
        let reply = common::Reply {
            status: axum::http::StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body,
        };
        error_of(&reply);
    }
    // Scope: a tokens-only token cannot stream activity.
    let tokens_only = token("tokens:read", Some("acme"));
    let reply = http()
        .get(server.url("/api/v1/activity/stream"))
        .bearer_auth(&tokens_only)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);

    // A tenant token streams only its tenant.
    let mut reader = SseReader::open(
        &server.url(&format!(
            "/api/v1/activity/stream?after_seq=0&access_token={acme}"
        )),
        None,
        None,
    )
    .await;
    let mut writer = db_client(&db).await;
    insert_activity(
        &mut writer,
        30,
        &["acme", "globex", ""],
        &["doc.read"],
        0,
        0,
    )
    .await;
    let end = deadline(30);
    let mut got = Vec::new();
    for _ in 0..10 {
        let event = reader.next(end).await.unwrap();
        assert_eq!(event.json()["tenant_id"], "acme");
        got.push(event.seq());
    }
    let expected: Vec<i64> = db
        .client
        .query(
            "SELECT seq FROM activity_events WHERE tenant_id = 'acme' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_feed_and_stats_stream_count_every_row_once() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config(), &db.url).await;
    let mut stats = SseReader::open(&server.url("/api/v1/stats/stream"), None, None).await;
    let mut tokens = SseReader::open(
        &server.url("/api/v1/tokens/stream?model=gpt-4o"),
        None,
        None,
    )
    .await;
    assert_eq!((stats.status.as_u16(), tokens.status.as_u16()), (200, 200));
    let end = deadline(60);
    // The first summary fixes nothing: wait for it so the inserts below are
    // counted by the following ones (either way each row counts once).
    let first = stats.next(end).await.unwrap();
    assert_eq!(first.event.as_deref(), Some("stats"));

    let mut writer = db_client(&db).await;
    insert_activity(
        &mut writer,
        60,
        &["acme"],
        &["auth.login", "doc.read", "doc.write"],
        0,
        0,
    )
    .await;
    insert_tokens(&mut writer, 8, "acme", &["gpt-4o", "claude"]).await;
    insert_activity(&mut writer, 30, &["acme"], &["billing.pay"], 0, 0).await;

    // Token feed: only gpt-4o rows, each exactly the item /tokens lists.
    let listed: serde_json::Value = http()
        .get(server.url("/api/v1/tokens?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["items"].as_array().expect("items").clone();
    assert_eq!(listed.len(), 8);
    for _ in 0..4 {
        let event = tokens.next(end).await.unwrap();
        assert_eq!(event.event.as_deref(), Some("token"));
        let item = event.json();
        assert_eq!(item["model"], "gpt-4o");
        assert_eq!(item["input_tokens"], 10);
        assert_eq!(item["seq"].as_i64(), Some(event.seq()));
        let same = listed
            .iter()
            .find(|l| l["id"] == item["id"])
            .expect("listed");
        assert_eq!(&item, same, "same JSON as /tokens");
    }
    // Activity feed items are exactly the /activity items.
    let mut feed = SseReader::open(
        &server.url("/api/v1/activity/stream?after_seq=0"),
        None,
        None,
    )
    .await;
    let listed: serde_json::Value = http()
        .get(server.url("/api/v1/activity?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["items"].as_array().expect("items").clone();
    assert_eq!(listed.len(), 90);
    for _ in 0..90 {
        let item = feed.next(end).await.unwrap().json();
        let same = listed
            .iter()
            .find(|l| l["id"] == item["id"])
            .expect("listed");
        assert_eq!(&item, same, "same JSON as /activity");
    }

    let mut events = 0i64;
    let mut by_class: BTreeMap<String, i64> = BTreeMap::new();
    let mut requests = 0i64;
    let mut token_total = 0i64;
    let mut by_model: BTreeMap<String, i64> = BTreeMap::new();
    while events < 90 || requests < 8 {
        let summary = stats.next(end).await.unwrap();
        assert_eq!(summary.event.as_deref(), Some("stats"));
        let s = summary.json();
        events += s["activity"]["events"].as_i64().unwrap();
        for (class, n) in s["activity"]["by_class"].as_object().unwrap() {
            *by_class.entry(class.clone()).or_default() += n.as_i64().unwrap();
        }
        requests += s["tokens"]["requests"].as_i64().unwrap();
        token_total += s["tokens"]["tokens"].as_i64().unwrap();
        for (model, g) in s["tokens"]["by_model"].as_object().unwrap() {
            *by_model.entry(model.clone()).or_default() += g["requests"].as_i64().unwrap();
        }
        assert!(s["activity"]["events_per_second"].is_number());
    }
    // One more summary: nothing is counted twice.
    let last = stats.next(end).await.unwrap().json();
    events += last["activity"]["events"].as_i64().unwrap();
    requests += last["tokens"]["requests"].as_i64().unwrap();
    assert_eq!(events, 90);
    assert_eq!(
        by_class,
        BTreeMap::from([
            ("auth".to_owned(), 20),
            ("billing".to_owned(), 30),
            ("doc".to_owned(), 40)
        ])
    );
    assert_eq!(requests, 8);
    assert_eq!(token_total, 8 * 15);
    assert_eq!(
        by_model,
        BTreeMap::from([("claude".to_owned(), 4), ("gpt-4o".to_owned(), 4)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config(), &db.url).await;
    let mut activity = SseReader::open(&server.url("/api/v1/activity/stream"), None, None).await;
    let mut stats = SseReader::open(&server.url("/api/v1/stats/stream"), None, None).await;
    assert_eq!(
        (activity.status.as_u16(), stats.status.as_u16()),
        (200, 200)
    );
    assert!(
        server.stop(10).await,
        "graceful shutdown does not wait for live feeds"
    );
    let end = deadline(10);
    let next = activity.next(end).await;
    assert!(next.is_none(), "the feed ended without events: {next:?}");
    while let Some(event) = stats.next(end).await {
        assert_eq!(event.event.as_deref(), Some("stats"));
    }
}

#[test]
fn openapi_documents_the_parameters_the_stream_and_export_routes_accept() {
    let document = tally_admin_api::openapi::openapi();
    let query_params = |path: &str| -> Vec<String> {
        document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} documented"))
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let owned = |v: &[&str]| sorted(v.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        sorted(query_params("/api/v1/activity/stream")),
        owned(tally_admin_api::stream::ACTIVITY_STREAM_PARAMETERS)
    );
    assert_eq!(
        sorted(query_params("/api/v1/tokens/stream")),
        owned(tally_admin_api::stream::TOKEN_STREAM_PARAMETERS)
    );
    assert_eq!(
        sorted(query_params("/api/v1/stats/stream")),
        owned(tally_admin_api::stream::stats::PARAMETERS)
    );
    assert_eq!(
        sorted(query_params("/api/v1/export")),
        owned(tally_admin_api::export::PARAMETERS)
    );
}

/// Inserts activity rows with the given `(name, duration_ms)` details (the way
/// the writers do: lock, nextval, commit) and answers their seqs.
async fn insert_details(
    client: &mut tokio_postgres::Client,
    rows: &[(Option<&str>, Option<f64>)],
) -> Vec<i64> {
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    let mut seqs = Vec::new();
    for (name, duration) in rows {
        let seq: i64 = tx
            .query_one(
                "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, \
                 attributes, name, duration_ms, error_type, error_message) \
                 VALUES (gen_random_uuid(), nextval('activity_events_seq'), now(), 'acme', 'u', \
                 'doc.read', 'failure', '{}', $1, $2, 'timeout', 'took too long') RETURNING seq",
                &[name, duration],
            )
            .await
            .expect("insert")
            .get(0);
        seqs.push(seq);
    }
    tx.commit().await.expect("commit");
    seqs
}

/// `name` and `min_duration_ms` on `/activity/stream`, live (the shared tail's
/// filters in Rust) and replayed (the SQL filters), give the same rows; the
/// events carry the details columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activity_feed_filters_by_name_and_duration_and_carries_the_details() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config(), &db.url).await;
    let mut writer = db_client(&db).await;
    let filter = "name=GET%20%2Fslow&min_duration_ms=100";
    // Live from now: the rows arrive through the shared tail.
    let mut live = SseReader::open(
        &server.url(&format!("/api/v1/activity/stream?{filter}")),
        None,
        None,
    )
    .await;
    assert_eq!(live.status, 200);
    // The feed's start (the newest row) is fixed before its response.
    let end = deadline(30);
    let rows = [
        (Some("GET /slow"), Some(150.0)),
        (Some("GET /slow"), Some(50.0)),
        (Some("GET /fast"), Some(500.0)),
        (Some("GET /slow"), None),
        (Some("GET /slow"), Some(100.0)),
        (None, Some(300.0)),
        (Some("GET /slow"), Some(1000.25)),
    ];
    let matching: Vec<i64> = insert_details(&mut writer, &rows)
        .await
        .into_iter()
        .zip(&rows)
        .filter(|(_, (name, duration))| {
            *name == Some("GET /slow") && duration.is_some_and(|d| d >= 100.0)
        })
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(matching.len(), 3);
    let mut got = Vec::new();
    while got.len() < matching.len() {
        let event = live.next(end).await.expect("live event");
        let item = event.json();
        assert_eq!(item["name"], "GET /slow");
        assert!(
            item["duration_ms"].as_f64().is_some_and(|d| d >= 100.0),
            "{item}"
        );
        assert_eq!(item["error_type"], "timeout");
        assert_eq!(item["error_message"], "took too long");
        got.push(event.seq());
    }
    // In seq order, the last row matching: a row let through wrongly would show.
    assert_eq!(got, matching);

    // Replayed from the start: exactly the matching rows, in order.
    let mut replay = SseReader::open(
        &server.url(&format!("/api/v1/activity/stream?{filter}&after_seq=0")),
        None,
        None,
    )
    .await;
    let mut got = Vec::new();
    while got.len() < matching.len() {
        got.push(replay.next(end).await.expect("replayed event").seq());
    }
    assert_eq!(got, matching);
}
