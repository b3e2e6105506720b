//! Zero set-up: with no database URL, `tally` runs a private PostgreSQL in its
//! data folder (dropping root privileges for the server process when run as
//! root), stores an event, shuts down cleanly on SIGTERM stopping the server, and
//! reuses the data folder on the next start.

mod common;

use std::time::Duration;

use common::{all_activity, eventually, Tally, TallyOptions};
use serde_json::json;

fn event(tenant: &str) -> Vec<u8> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    serde_json::to_vec(&json!({
      "resourceLogs": [{ "scopeLogs": [{ "logRecords": [{
        "timeUnixNano": t.to_string(),
        "eventName": "auth.login",
        "attributes": [
          { "key": "tenant.id", "value": { "stringValue": tenant } },
          { "key": "enduser.id", "value": { "stringValue": "root-test" } }
        ]
      }]}]}]
    }))
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_setup_runs_a_private_postgres_and_shuts_down_cleanly() {
    let scratch = common::reachable_tempdir();
    let data_dir = scratch.path().join("tally-data");
    let options = TallyOptions {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    };

    let mut tally = Tally::launch(options.clone()).await;
    assert!(
        tally.log_text().contains("private PostgreSQL"),
        "{}",
        tally.log_text()
    );
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/logs"))
        .header("content-type", "application/json")
        .body(event("t-zero"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 200);
    let items = all_activity(&tally, "tenant=t-zero", None).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["user_id"], "root-test");

    let status = tokio::task::spawn_blocking(move || {
        let status = tally.terminate();
        (status, tally.log_text())
    })
    .await
    .expect("terminate");
    assert!(
        status.0.success(),
        "exit 0 after SIGTERM: {:?}\n{}",
        status.0,
        status.1
    );
    assert!(status.1.contains("stopped cleanly"), "{}", status.1);
    assert!(
        data_dir.join("pgdata").join("PG_VERSION").exists(),
        "the cluster lives in the data folder"
    );
    assert!(
        !data_dir.join("pgdata").join("postmaster.pid").exists(),
        "the private PostgreSQL was stopped with Tally"
    );

    // Second start reuses the data folder: the event is still there.
    let mut again = Tally::launch(options).await;
    let items = eventually(Duration::from_secs(10), "the stored event", || async {
        let items = all_activity(&again, "tenant=t-zero", None).await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(items.len(), 1);
    let status = tokio::task::spawn_blocking(move || again.terminate())
        .await
        .expect("terminate");
    assert!(status.success());
}
