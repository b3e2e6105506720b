//! Reads through the admin API are recorded as `audit.log.view` activity events,
//! without credentials, under the right tenant, and kept out of the live feed
//! unless asked for.

mod common;

use std::time::Duration;

use common::{eventually, get_json, token, Tally, TallyOptions, TestDatabase};
use serde_json::{json, Value};

const SECRET: &str = "audit-test-secret-0123456789abcdef0123";

/// The stored `audit.log.view` rows, oldest first: (tenant_id, user_id, outcome, attributes).
async fn audit_rows(database: &TestDatabase) -> Vec<(String, String, String, Value)> {
    let client = database.client().await;
    client
        .query(
            "SELECT tenant_id, coalesce(user_id, ''), outcome, attributes FROM activity_events \
             WHERE action = 'audit.log.view' ORDER BY seq",
            &[],
        )
        .await
        .expect("audit rows")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

/// Waits for an audit row whose query attribute contains `marker`.
async fn audit_row_with(database: &TestDatabase, marker: &str) -> (String, String, String, Value) {
    eventually(Duration::from_secs(15), marker, || async {
        audit_rows(database)
            .await
            .into_iter()
            .find(|(_, _, _, attributes)| {
                attributes["audit.query"]
                    .as_str()
                    .is_some_and(|q| q.contains(marker))
            })
    })
    .await
}

/// Reads SSE events (`event:` name, `data:` JSON) from a streaming response until
/// `done` says stop or the deadline passes; returns what was read.
async fn read_events(
    response: &mut reqwest::Response,
    deadline: Duration,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let until = tokio::time::Instant::now() + deadline;
    let mut buffer = String::new();
    let mut events = Vec::new();
    while !done(&events) {
        let chunk = match tokio::time::timeout_at(until, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            _ => break,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim());
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    events
}

async fn open_stream(url: &str) -> reqwest::Response {
    let response = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("stream request");
    assert_eq!(response.status(), 200, "{url}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_are_recorded_without_credentials_and_not_streamed_unasked() {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        jwt_secret: Some(SECRET.to_owned()),
        ..TallyOptions::default()
    })
    .await;
    let platform = token(SECRET, "admin", "*");
    let tenant_x = token(SECRET, "activity:read", "t-x");

    // A platform admin's read of one tenant is recorded under that tenant.
    let (status, body) = get_json(
        &tally.api_url("/api/v1/activity?tenant=t-audit&user=marker-one"),
        Some(&platform),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (tenant, user, outcome, attributes) = audit_row_with(&database, "marker-one").await;
    assert_eq!(
        (tenant.as_str(), user.as_str(), outcome.as_str()),
        ("t-audit", "tester", "success")
    );
    assert_eq!(attributes["audit.route"], "/api/v1/activity");
    assert_eq!(attributes["audit.method"], "GET");
    assert_eq!(attributes["audit.query"], "tenant=t-audit&user=marker-one");

    // A refused read by a tenant-scoped caller is recorded under its own tenant, as a failure.
    let (status, _) = get_json(
        &tally.api_url("/api/v1/activity?tenant=t-other&user=marker-two"),
        Some(&tenant_x),
    )
    .await;
    assert_eq!(status, 403);
    let (tenant, _, outcome, attributes) = audit_row_with(&database, "marker-two").await;
    assert_eq!((tenant.as_str(), outcome.as_str()), ("t-x", "failure"));
    assert_eq!(attributes["http.response.status_code"], json!(403));

    // Unauthenticated requests are not recorded (there is nobody to record).
    let (status, _) = get_json(&tally.api_url("/api/v1/activity?user=marker-anon"), None).await;
    assert_eq!(status, 401);

    // Two live feeds: one unfiltered, one asking for audit events.
    let mut everything = open_stream(&tally.api_url(&format!(
        "/api/v1/activity/stream?after_seq=0&access_token={platform}"
    )))
    .await;
    let mut audits = open_stream(&tally.api_url(&format!(
        "/api/v1/activity/stream?action=audit.log.view&after_seq=0&access_token={platform}"
    )))
    .await;
    // A read after both feeds are open…
    let (status, _) = get_json(
        &tally.api_url("/api/v1/tokens?user=marker-three"),
        Some(&platform),
    )
    .await;
    assert_eq!(status, 200);
    // …reaches the feed that asked for audit events.
    let seen = read_events(&mut audits, Duration::from_secs(15), |events| {
        events.iter().any(|(_, item)| {
            item["attributes"]["audit.query"]
                .as_str()
                .is_some_and(|q| q.contains("marker-three"))
        })
    })
    .await;
    let three = seen
        .iter()
        .find(|(_, item)| {
            item["attributes"]["audit.query"]
                .as_str()
                .is_some_and(|q| q.contains("marker-three"))
        })
        .unwrap_or_else(|| panic!("the audit feed never showed the read: {seen:?}"));
    let three_seq = three.1["seq"].as_i64().expect("seq");
    // The stream's own access token is never recorded.
    for (_, item) in &seen {
        let query = item["attributes"]["audit.query"].as_str().unwrap_or("");
        assert!(!query.contains("access_token"), "{query}");
        assert!(!query.contains(&platform), "{query}");
    }

    // An ordinary event committed after that read reaches the unfiltered feed,
    // which has skipped every audit event before it.
    let event = json!({ "resourceLogs": [{
        "resource": { "attributes": [
            { "key": "service.name", "value": { "stringValue": "audit-test" } } ] },
        "scopeLogs": [{ "logRecords": [{
            "timeUnixNano": "1700000000000000000",
            "attributes": [
                { "key": "event.name", "value": { "stringValue": "auth.login" } },
                { "key": "enduser.id", "value": { "stringValue": "u-after" } },
                { "key": "tenant.id", "value": { "stringValue": "t-audit" } } ] }] }] }] });
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/logs"))
        .json(&event)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let seen = read_events(&mut everything, Duration::from_secs(15), |events| {
        events.iter().any(|(_, item)| item["user_id"] == "u-after")
    })
    .await;
    let after = seen
        .iter()
        .find(|(_, item)| item["user_id"] == "u-after")
        .unwrap_or_else(|| panic!("the unfiltered feed never showed the event: {seen:?}"));
    assert!(after.1["seq"].as_i64().expect("seq") > three_seq);
    let leaked: Vec<&Value> = seen
        .iter()
        .map(|(_, item)| item)
        .filter(|item| item["action"] == "audit.log.view")
        .collect();
    assert!(
        leaked.is_empty(),
        "audit events in the unfiltered feed: {leaked:?}"
    );

    // And the audit trail is queryable like any other action.
    let (status, body) = get_json(
        &tally.api_url("/api/v1/activity?action=audit.log.view&tenant=t-audit"),
        Some(&platform),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["items"].as_array().is_some_and(|items| items
            .iter()
            .any(|i| i["attributes"]["audit.query"]
                .as_str()
                .is_some_and(|q| q.contains("marker-one")))),
        "{body}"
    );
    assert!(
        audit_rows(&database)
            .await
            .iter()
            .all(|(_, _, _, a)| !a["audit.query"]
                .as_str()
                .unwrap_or("")
                .contains("marker-anon")),
        "an unauthenticated request was recorded"
    );
}
