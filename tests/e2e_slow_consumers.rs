//! Slow consumers: 200 live-feed clients of which half never read. Ingestion
//! acknowledges everything, every reading client receives every event once and
//! in order, the stalled clients are reset and dropped, and memory stays bounded.
//! Rates and latencies are printed, not asserted (no timing asserts in tests).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{eventually, Tally, TallyOptions, TestDatabase};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const TENANT: &str = "t-slow";
const READERS: usize = 100;
const STALLED: usize = 100;
const REQUESTS: usize = 20;
const PER_REQUEST: usize = 100;
const EVENTS: usize = REQUESTS * PER_REQUEST;
/// Tally's peak resident set may not exceed this (it is ~80 MiB under full load
/// without clients; each stalled client may hold at most `sse_client_buffer` events).
const MAX_PEAK_RSS_KIB: u64 = 320 * 1024;

fn logs_body(request: usize) -> Value {
    let records: Vec<Value> = (0..PER_REQUEST)
        .map(|i| {
            let n = request * PER_REQUEST + i;
            json!({
                "timeUnixNano": format!("{}", 1_700_000_000_000_000_000u64 + n as u64),
                "attributes": [
                    { "key": "event.name", "value": { "stringValue": "doc.view" } },
                    { "key": "enduser.id", "value": { "stringValue": format!("u-{n}") } },
                    { "key": "tenant.id", "value": { "stringValue": TENANT } },
                    { "key": "bench.n", "value": { "intValue": n.to_string() } }
                ]
            })
        })
        .collect();
    json!({ "resourceLogs": [{ "scopeLogs": [{ "logRecords": records }] }] })
}

/// A client that opens the feed and never reads a byte (small receive buffer, so
/// the server meets back-pressure at once).
async fn stalled_client(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(
            format!(
                "GET /api/v1/activity/stream?tenant={TENANT}&after_seq=0 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    stream
}

/// A client that reads the feed until it has seen every event: returns the
/// seqs in arrival order and the instant each `bench.n` arrived.
async fn reading_client(url: String) -> (Vec<i64>, Vec<(usize, Instant)>) {
    let mut response = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let mut buffer = String::new();
    let mut seqs = Vec::with_capacity(EVENTS);
    let mut arrivals = Vec::with_capacity(EVENTS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seqs.len() < EVENTS {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            other => panic!("reader ended after {} events: {other:?}", seqs.len()),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let item: Value = serde_json::from_str(data.trim()).expect("event JSON");
                    seqs.push(item["seq"].as_i64().expect("seq"));
                    let n = item["attributes"]["bench.n"]
                        .as_i64()
                        .or_else(|| item["attributes"]["bench.n"].as_str()?.parse().ok())
                        .expect("bench.n");
                    arrivals.push((n as usize, Instant::now()));
                }
                assert!(
                    !line.starts_with("event: reset") && !line.starts_with("event:reset"),
                    "a reading client was reset"
                );
            }
        }
    }
    (seqs, arrivals)
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_feed_clients_are_dropped_while_readers_and_ingestion_go_on() {
    let database = TestDatabase::create().await;
    // Every client here is one caller (one IP, no credential): lift its stream limit.
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        max_streams_per_caller: Some(READERS + STALLED + 10),
        ..Default::default()
    })
    .await;
    let feed = tally.api_url(&format!(
        "/api/v1/activity/stream?tenant={TENANT}&after_seq=0"
    ));

    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        stalled.push(stalled_client(tally.admin).await);
    }
    let readers: Vec<_> = (0..READERS)
        .map(|_| tokio::spawn(reading_client(feed.clone())))
        .collect();
    let metrics = tally.metrics_url();
    eventually(
        Duration::from_secs(30),
        "200 feed clients connected",
        || async {
            let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
            (gauge(&text, "tally_sse_clients")? >= (READERS + STALLED) as f64).then_some(())
        },
    )
    .await;

    // Ingest while the feeds run: 4 concurrent senders, every request acknowledged.
    let started = Instant::now();
    let http = tally.http_url("/v1/logs");
    let mut acked_at = vec![None; REQUESTS];
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let http = http.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut acks = Vec::new();
                for request in (sender..REQUESTS).step_by(4) {
                    let response = client
                        .post(&http)
                        .json(&logs_body(request))
                        .send()
                        .await
                        .expect("export");
                    assert_eq!(response.status(), 200, "request {request}");
                    acks.push((request, Instant::now()));
                }
                acks
            })
        })
        .collect();
    for sender in senders {
        for (request, at) in sender.await.expect("sender") {
            acked_at[request] = Some(at);
        }
    }
    let ingest_secs = started.elapsed().as_secs_f64();

    // Every reader saw every event exactly once, in seq order.
    let mut latencies_ms = Vec::new();
    for reader in readers {
        let (seqs, arrivals) = reader.await.expect("reader");
        assert_eq!(seqs.len(), EVENTS);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seqs strictly increase"
        );
        let distinct: HashSet<usize> = arrivals.iter().map(|(n, _)| *n).collect();
        assert_eq!(distinct.len(), EVENTS, "every event once");
        for (n, at) in arrivals {
            if let Some(acked) = acked_at[n / PER_REQUEST] {
                latencies_ms.push(at.saturating_duration_since(acked).as_secs_f64() * 1000.0);
            }
        }
    }

    // The stalled clients were reset and dropped: only the readers remain.
    eventually(
        Duration::from_secs(30),
        "stalled clients dropped",
        || async {
            let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
            (gauge(&text, "tally_sse_clients")? <= READERS as f64).then_some(())
        },
    )
    .await;
    let peak = tally.memory_kib("VmHWM").expect("VmHWM");
    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "peak RSS {peak} KiB over {MAX_PEAK_RSS_KIB} KiB"
    );
    latencies_ms.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies_ms[((latencies_ms.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{EVENTS} events ingested in {ingest_secs:.2} s ({:.0}/s) with {READERS} reading and \
         {STALLED} stalled feed clients; ack→reader latency p50 {:.0} ms, p99 {:.0} ms \
         (negative clamped to 0: readers may see a row before its request is acknowledged); \
         peak RSS {} MiB",
        EVENTS as f64 / ingest_secs,
        pick(0.5),
        pick(0.99),
        peak / 1024
    );
    drop(stalled);
}
