//! OTLP/JSON as the spec writes it — hex ids, lowerCamelCase keys, 64-bit integers
//! as strings and as numbers, integer enums — compressed with gzip and zstd, is
//! accepted; sending the same body twice stores one set of rows.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{all_activity, eventually, Tally, TestDatabase};
use serde_json::{json, Value};

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// Two spans (one with times as strings, one as numbers) and one log record.
fn body(tenant: &str) -> Value {
    let t = now_nanos();
    json!({
      "resourceSpans": [{
        "resource": { "attributes": [
          { "key": "service.name", "value": { "stringValue": "json-svc" } }
        ]},
        "scopeSpans": [{
          "scope": { "name": "hand-written" },
          "spans": [
            {
              "traceId": "5b8efff798038103d269b633813fc60c",
              "spanId": "eee19b7ec3c1b174",
              "name": "export",
              "kind": 2,
              "startTimeUnixNano": (t - 2_000_000).to_string(),
              "endTimeUnixNano": t.to_string(),
              "attributes": [
                { "key": "activity.action", "value": { "stringValue": "report.export" } },
                { "key": "tenant.id", "value": { "stringValue": tenant } },
                { "key": "enduser.id", "value": { "stringValue": "carol" } },
                { "key": "rows", "value": { "intValue": "9007199254740993" } },
                { "key": "tags", "value": { "arrayValue": {} } }
              ],
              "status": { "code": 1 }
            },
            {
              "traceId": "5b8efff798038103d269b633813fc60c",
              "spanId": "eee19b7ec3c1b175",
              "name": "delete",
              "kind": 2,
              "startTimeUnixNano": t - 1_000_000,
              "endTimeUnixNano": t,
              "attributes": [
                { "key": "activity.action", "value": { "stringValue": "report.delete" } },
                { "key": "tenant.id", "value": { "stringValue": tenant } },
                { "key": "count", "value": { "intValue": 7 } }
              ],
              "status": { "code": 2, "message": "denied" }
            }
          ]
        }]
      }]
    })
}

fn logs_body(tenant: &str) -> Value {
    let t = now_nanos();
    json!({
      "resourceLogs": [{
        "resource": { "attributes": [
          { "key": "service.name", "value": { "stringValue": "json-svc" } }
        ]},
        "scopeLogs": [{
          "logRecords": [{
            "timeUnixNano": t.to_string(),
            "observedTimeUnixNano": t,
            "severityNumber": 9,
            "eventName": "settings.update",
            "body": { "stringValue": "changed" },
            "attributes": [
              { "key": "tenant.id", "value": { "stringValue": tenant } },
              { "key": "user.id", "value": { "stringValue": "dave" } }
            ],
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174"
          }]
        }]
      }]
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

async fn post(url: &str, body: Vec<u8>, encoding: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_gzip_and_zstd_with_int64_strings_and_numbers_is_stored_once() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;

    let traces = serde_json::to_vec(&body("t-json")).expect("json");
    let logs = serde_json::to_vec(&logs_body("t-json")).expect("json");
    let traces_url = tally.http_url("/v1/traces");
    let logs_url = tally.http_url("/v1/logs");

    for _ in 0..2 {
        let (status, response) = post(&traces_url, gzip(&traces), "gzip").await;
        assert_eq!(status, 200, "{response}");
        assert!(
            response
                .get("partialSuccess")
                .is_none_or(|p| p.get("rejectedSpans").is_none_or(|r| r == 0 || r == "0")),
            "{response}"
        );
        let compressed = zstd::encode_all(&logs[..], 3).expect("zstd");
        let (status, response) = post(&logs_url, compressed, "zstd").await;
        assert_eq!(status, 200, "{response}");
    }

    let items = eventually(Duration::from_secs(10), "three rows", || async {
        let items = all_activity(&tally, "tenant=t-json", None).await;
        (items.len() >= 3).then_some(items)
    })
    .await;
    assert_eq!(
        items.len(),
        3,
        "the second send of the same bodies stored nothing new: {items:#?}"
    );

    let by_action = |action: &str| {
        items
            .iter()
            .find(|i| i["action"] == action)
            .unwrap_or_else(|| panic!("{action} missing"))
            .clone()
    };
    let export = by_action("report.export");
    assert_eq!(export["outcome"], "success");
    assert_eq!(export["user_id"], "carol");
    assert_eq!(export["service"], "json-svc");
    assert_eq!(export["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(export["span_id"], "eee19b7ec3c1b174");
    assert_eq!(
        export["attributes"]["rows"],
        json!(9007199254740993_i64),
        "int64 string kept exactly"
    );
    assert_eq!(export["attributes"]["tags"], json!([]));
    let delete = by_action("report.delete");
    assert_eq!(delete["outcome"], "failure");
    assert_eq!(delete["attributes"]["count"], 7);
    let update = by_action("settings.update");
    assert_eq!(update["user_id"], "dave");
    assert_eq!(update["span_id"], "eee19b7ec3c1b174");
}
