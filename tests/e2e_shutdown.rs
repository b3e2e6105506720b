//! SIGTERM during load: Tally stops accepting, commits and answers what it had
//! accepted, and exits 0. Every acknowledged record is in the table.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Tally, TestDatabase};
use prost::Message;
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tokio::sync::Mutex;

/// One request of 20 log events; each event's `request.n` attribute says which.
fn batch(client: u64, request: u64) -> ExportLogsServiceRequest {
    let records = (0..20)
        .map(|i| LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000 + request * 1000 + i,
            event_name: "file.upload".into(),
            attributes: vec![KeyValue {
                key: "request.n".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!(
                        "{client}-{request}-{i}"
                    ))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_commits_everything_acknowledged_and_exits_zero() {
    let database = TestDatabase::create().await;
    let mut tally = Tally::on(&database).await;
    let logs_url = tally.http_url("/v1/logs");
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent_enough = Arc::new(tokio::sync::Semaphore::new(0));

    let mut clients = Vec::new();
    for client_id in 0..4u64 {
        let logs_url = logs_url.clone();
        let acknowledged = acknowledged.clone();
        let sent_enough = sent_enough.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for request in 0.. {
                let body = batch(client_id, request).encode_to_vec();
                let result = http
                    .post(&logs_url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().as_u16() == 200 => {
                        let mut set = acknowledged.lock().await;
                        for i in 0..20 {
                            set.insert(format!("{client_id}-{request}-{i}"));
                        }
                        if request == 10 {
                            sent_enough.add_permits(1);
                        }
                    }
                    // Refused while shutting down (retryable) or the listener is gone: stop.
                    Ok(response) => {
                        assert!(
                            [429, 503].contains(&response.status().as_u16()),
                            "unexpected status {}",
                            response.status()
                        );
                        return;
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Every client has had ten requests acknowledged: now stop Tally mid-stream.
    let _ = tokio::time::timeout(Duration::from_secs(60), sent_enough.acquire_many(4))
        .await
        .expect("clients made progress");
    let (status, log) = tokio::task::spawn_blocking(move || {
        let status = tally.terminate();
        (status, tally.log_text())
    })
    .await
    .expect("terminate");
    for client in clients {
        client.await.expect("client task");
    }
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}\n{log}");
    assert!(log.contains("stopped cleanly"), "{log}");

    let client = database.client().await;
    let stored: HashSet<String> = client
        .query("SELECT attributes->>'request.n' FROM activity_events", &[])
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let acknowledged = acknowledged.lock().await;
    assert!(acknowledged.len() >= 4 * 11 * 20);
    let missing: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}
