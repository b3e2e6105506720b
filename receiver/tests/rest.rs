//! REST ingest (`POST /api/v1/events`) at the receiver: what the consumer gets
//! (one OTLP log record per good item, with its id and attributes) and how the
//! consumer's errors are answered (429 / 503 with `Retry-After`, 400).

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde_json::json;

async fn post(
    running: &Running,
    body: serde_json::Value,
) -> (u16, Option<String>, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(running.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /api/v1/events");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn good_items_reach_the_consumer_as_log_records() {
    let running = start().await;
    let (status, _, answer) = post(
        &running,
        json!([
            {"action": "a.one", "user_id": "u1", "id": "0190a5c8-7f3e-7a1b-9c2d-1234567890ab"},
            {"nope": true},
            {"action": "a.two", "ts": 1_700_000_000_000_i64}
        ]),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"][0]["index"], 1);
    let logs = running.recorder.logs();
    assert_eq!(logs.len(), 1, "one consumer call per request");
    let records = &logs[0].resource_logs[0].scope_logs[0].log_records;
    assert_eq!(records.len(), 2);
    let text = |i: usize, key: &str| {
        records[i]
            .attributes
            .iter()
            .rev()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    assert_eq!(
        text(0, "tally.event.id"),
        Some(Value::StringValue(
            "0190a5c8-7f3e-7a1b-9c2d-1234567890ab".into()
        ))
    );
    assert_eq!(
        text(0, "activity.action"),
        Some(Value::StringValue("a.one".into()))
    );
    assert_eq!(text(0, "user.id"), Some(Value::StringValue("u1".into())));
    assert_eq!(records[1].time_unix_nano, 1_700_000_000_000_000_000);
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn consumer_errors_are_the_retryable_answers() {
    let running = start().await;
    for (behaviour, status, code) in [
        (
            Behaviour::Unavailable(Duration::from_secs(3)),
            503,
            "unavailable",
        ),
        (
            Behaviour::Overloaded(Duration::from_secs(2)),
            429,
            "overloaded",
        ),
    ] {
        running.recorder.set(behaviour);
        let (got, retry_after, answer) = post(&running, json!({"action": "a.b"})).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code);
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    }
    // Nothing good in the body: the consumer is not called and nothing is retryable.
    running
        .recorder
        .set(Behaviour::Unavailable(Duration::from_secs(3)));
    let calls = running.recorder.calls();
    let (status, _, answer) = post(&running, json!([{"nope": 1}])).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 0, "rejected": [{"index": 0, "reason": "unknown field \"nope\" (put your own fields in attributes)"}]})
    );
    assert_eq!(running.recorder.calls(), calls);
    running.stop().await.expect("stop");
}
