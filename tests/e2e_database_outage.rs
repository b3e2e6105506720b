//! PostgreSQL stopped mid-stream: clients get retryable errors (503 + Retry-After),
//! `/readyz` turns 503, and after the restart every acknowledged event is in the
//! table exactly once. Runs against a private PostgreSQL of its own so that
//! stopping it disturbs no other test.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{eventually, get_json, Tally, TallyOptions};
use prost::Message;
use tally_exporters::postgres::embedded::PrivatePostgres;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_retryable_errors_and_loses_nothing_acknowledged() {
    let scratch = common::reachable_tempdir();
    let data_dir = scratch.path().join("pg");
    let server = PrivatePostgres::start(&data_dir)
        .await
        .expect("private postgres");
    let url = server.url();
    let tally = Tally::launch(TallyOptions {
        database_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let traces = tally.http_url("/v1/traces");
    let readyz = tally.api_url("/readyz");
    let client = reqwest::Client::new();
    let mut acknowledged: HashSet<u64> = HashSet::new();
    let mut retryable = 0u64;
    let mut next = 1u64; // an all-zero span id is invalid in OpenTelemetry

    // Before: everything is acknowledged.
    for _ in 0..50 {
        assert_eq!(send(&client, &traces, next).await, Sent::Acknowledged);
        acknowledged.insert(next);
        next += 1;
    }

    // Stop the database while a client keeps sending.
    let stopper = tokio::spawn(async move { server.stop().await });
    let mut saw_not_ready = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while retryable < 5 || !saw_not_ready {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for retryable errors ({retryable}) and readyz 503 ({saw_not_ready})"
        );
        match send(&client, &traces, next).await {
            Sent::Acknowledged => {
                acknowledged.insert(next);
            }
            Sent::Retryable => retryable += 1,
        }
        next += 1;
        if get_json(&readyz, None).await.0 == 503 {
            saw_not_ready = true;
        }
    }
    stopper.await.expect("join").expect("stop postgres");

    // Restart it: readiness comes back without restarting Tally.
    let server = PrivatePostgres::start(&data_dir)
        .await
        .expect("restart postgres");
    assert_eq!(server.url(), url, "the private server keeps its port");
    eventually(
        Duration::from_secs(60),
        "readyz 200 after restart",
        || async { (get_json(&readyz, None).await.0 == 200).then_some(()) },
    )
    .await;
    for _ in 0..50 {
        let n = next;
        next += 1;
        if send(&client, &traces, n).await == Sent::Acknowledged {
            acknowledged.insert(n);
        }
    }
    assert!(tally.log_text().contains("tally is ready"));

    // Every acknowledged span is stored exactly once.
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let rows = db
        .query(
            "SELECT span_id, count(*) FROM activity_events GROUP BY span_id",
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
    assert!(retryable >= 5);
    drop(db);
    drop(tally);
    server.stop().await.expect("stop postgres");
}
