//! PostgreSQL stopped and restarted twice under load from concurrent clients:
//! clients get only retryable errors (429/503 + Retry-After) meanwhile, `/readyz`
//! turns 503, Tally recovers by itself, and every acknowledged event is in the
//! table exactly once. Runs against a private PostgreSQL of its own so that
//! stopping it disturbs no other test.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, get_json, Tally, TallyOptions};
use prost::Message;
use tally_exporters::postgres::embedded::PrivatePostgres;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio::sync::watch;

fn span_request(n: u64) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut trace_id = vec![0xee; 16];
    trace_id[8..].copy_from_slice(&n.to_be_bytes());
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id,
                    span_id: n.to_be_bytes().to_vec(),
                    name: "op".into(),
                    start_time_unix_nano: now,
                    end_time_unix_nano: now,
                    attributes: vec![KeyValue {
                        key: "activity.action".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("doc.edit".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Outcome of one export attempt.
#[derive(Debug, PartialEq)]
enum Sent {
    Acknowledged,
    Retryable,
}

async fn send(client: &reqwest::Client, url: &str, n: u64) -> Sent {
    let response = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(span_request(n).encode_to_vec())
        .send()
        .await
        .expect("the receiver answers even while the database is down");
    match response.status().as_u16() {
        200 => Sent::Acknowledged,
        429 | 503 => {
            assert!(
                response.headers().contains_key("retry-after"),
                "retryable errors carry Retry-After"
            );
            Sent::Retryable
        }
        other => panic!(
            "span {n}: non-retryable status {other}: {:?}",
            response.text().await
        ),
    }
}

/// Concurrent clients sending until told to stop; each records its answers.
const CLIENTS: u64 = 4;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    acknowledged: HashSet<u64>,
    retryable: u64,
}

type Shared = Arc<Mutex<Seen>>;

/// One client: sends spans `first, first + CLIENTS, …` until `stop`, recording the answers.
async fn client_loop(url: String, first: u64, stop: watch::Receiver<bool>, seen: Shared) {
    let client = reqwest::Client::new();
    let mut n = first;
    while !*stop.borrow() {
        let sent = send(&client, &url, n).await;
        if let Ok(mut seen) = seen.lock() {
            match sent {
                Sent::Acknowledged => {
                    seen.acknowledged.insert(n);
                }
                Sent::Retryable => seen.retryable += 1,
            }
        }
        n += CLIENTS;
    }
}

/// (acknowledged, retryable) so far.
fn counts(seen: &Shared) -> (usize, u64) {
    let seen = seen.lock().expect("lock");
    (seen.acknowledged.len(), seen.retryable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarted_twice_under_load_loses_nothing_acknowledged() {
    let scratch = common::reachable_tempdir();
    let data_dir = scratch.path().join("pg");
    let mut server = PrivatePostgres::start(&data_dir)
        .await
        .expect("private postgres");
    let url = server.url();
    let tally = Tally::launch(TallyOptions {
        database_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let readyz = tally.api_url("/readyz");
    let seen: Shared = Arc::default();
    let (stop, stopped) = watch::channel(false);
    // An all-zero span id is invalid in OpenTelemetry: ids start at 1.
    let clients: Vec<_> = (1..=CLIENTS)
        .map(|first| {
            tokio::spawn(client_loop(
                tally.http_url("/v1/traces"),
                first,
                stopped.clone(),
                seen.clone(),
            ))
        })
        .collect();

    for round in 1..=2 {
        // Load flows: wait for more acknowledgements.
        let before = counts(&seen).0;
        eventually(Duration::from_secs(60), "acknowledgements", || async {
            (counts(&seen).0 >= before + 50).then_some(())
        })
        .await;

        // Stop the database under load: retryable answers and /readyz 503.
        let retryable_before = counts(&seen).1;
        server.stop().await.expect("stop postgres");
        eventually(
            Duration::from_secs(60),
            "retryable errors and readyz 503",
            || async {
                let not_ready = get_json(&readyz, None).await.0 == 503;
                (not_ready && counts(&seen).1 >= retryable_before + 5).then_some(())
            },
        )
        .await;

        // Restart it: Tally recovers by itself.
        server = PrivatePostgres::start(&data_dir)
            .await
            .expect("restart postgres");
        assert_eq!(server.url(), url, "the private server keeps its port");
        eventually(
            Duration::from_secs(60),
            "readyz 200 after the restart",
            || async { (get_json(&readyz, None).await.0 == 200).then_some(()) },
        )
        .await;
        let after = counts(&seen).0;
        eventually(
            Duration::from_secs(60),
            "acknowledgements after the restart",
            || async { (counts(&seen).0 >= after + 50).then_some(()) },
        )
        .await;
        eprintln!(
            "round {round}: (acknowledged, retryable) = {:?}",
            counts(&seen)
        );
    }
    let _ = stop.send(true);
    for client in clients {
        client.await.expect("client task");
    }
    assert!(tally.log_text().contains("tally is ready"));
    let (acknowledged, retryable) = {
        let seen = seen.lock().expect("lock");
        (seen.acknowledged.clone(), seen.retryable)
    };

    // Every acknowledged span is stored exactly once.
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let rows = db
        .query(
            "SELECT span_id, count(*) FROM activity_events \
             WHERE span_id IS NOT NULL GROUP BY span_id",
            &[],
        )
        .await
        .expect("query");
    let stored: HashMap<u64, i64> = rows
        .iter()
        .filter_map(|row| {
            let span_id: Option<String> = row.get(0);
            let n = u64::from_str_radix(&span_id?, 16).ok()?;
            Some((n, row.get::<_, i64>(1)))
        })
        .collect();
    assert!(acknowledged.len() >= 200, "{}", acknowledged.len());
    for n in &acknowledged {
        assert_eq!(
            stored.get(n),
            Some(&1),
            "acknowledged span {n} stored exactly once"
        );
    }
    assert!(
        stored.values().all(|count| *count == 1),
        "no duplicates at all"
    );
    assert!(retryable >= 10, "{retryable}");
    drop(db);
    drop(tally);
    server.stop().await.expect("stop postgres");
}
