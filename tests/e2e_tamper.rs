//! Tamper evidence end to end: the chainer started by `tally` chains what the
//! pipeline commits, and both `GET /api/v1/verify` and `tally verify` find an
//! out-of-band `UPDATE` at its seq.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, get_json, Tally, TallyOptions, TestDatabase};
use serde_json::{json, Value};

const TENANT: &str = "t-chain";
const EVENTS: usize = 20;

fn logs_body() -> Value {
    let records: Vec<Value> = (0..EVENTS)
        .map(|i| {
            json!({
                "timeUnixNano": format!("{}", 1_700_000_000_000_000_000u64 + i as u64 * 1_000_000),
                "attributes": [
                    { "key": "event.name", "value": { "stringValue": "auth.login" } },
                    { "key": "enduser.id", "value": { "stringValue": format!("u-{i}") } },
                    { "key": "tenant.id", "value": { "stringValue": TENANT } }
                ]
            })
        })
        .collect();
    json!({ "resourceLogs": [{
        "resource": { "attributes": [
            { "key": "service.name", "value": { "stringValue": "tamper-test" } } ] },
        "scopeLogs": [{ "logRecords": records }] }] })
}

/// Runs `tally verify --tenant TENANT` on the database: (exit code, stdout).
fn cli_verify(database: &TestDatabase) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["verify", "--tenant", TENANT])
        .env("TALLY_DATABASE_URL", &database.url)
        .output()
        .expect("run tally verify");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_chainer_and_both_verifiers_catch_an_out_of_band_update() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/logs"))
        .json(&logs_body())
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);

    let client = database.client().await;
    let seqs: Vec<i64> = eventually(Duration::from_secs(15), "the events stored", || async {
        let rows = client
            .query(
                "SELECT seq FROM activity_events WHERE tenant_id = $1 \
                 AND action <> 'audit.log.view' ORDER BY seq",
                &[&TENANT],
            )
            .await
            .expect("seqs");
        (rows.len() == EVENTS).then(|| rows.iter().map(|r| r.get(0)).collect())
    })
    .await;

    // The chainer runs inside tally: wait until it has chained every row of the tenant.
    let verify_url = tally.api_url(&format!("/api/v1/verify?tenant={TENANT}"));
    let report = eventually(Duration::from_secs(20), "the tenant chained", || async {
        let (status, body) = get_json(&verify_url, None).await;
        (status == 200
            && body["unchained_rows"] == 0
            && body["rows_checked"].as_u64() >= Some(EVENTS as u64))
        .then_some(body)
    })
    .await;
    assert_eq!(report["status"], "intact", "{report}");
    assert!(
        report["verified_up_to_seq"].as_i64() >= seqs.last().copied(),
        "{report}"
    );

    let (code, text) = cli_verify(&database);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("intact up to seq"), "{text}");

    // Someone with database access rewrites one row.
    let target = seqs[7];
    let changed = client
        .execute(
            "UPDATE activity_events SET user_id = 'mallory' WHERE tenant_id = $1 AND seq = $2",
            &[&TENANT, &target],
        )
        .await
        .expect("tamper");
    assert_eq!(changed, 1);

    let (status, body) = get_json(&verify_url, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "tampered", "{body}");
    assert_eq!(body["first_problem"]["seq"], json!(target), "{body}");
    assert_eq!(body["first_problem"]["kind"], "altered", "{body}");
    assert_eq!(body["verified_up_to_seq"], json!(seqs[6]), "{body}");

    let (code, text) = cli_verify(&database);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("TAMPERED"), "{text}");
    assert!(text.contains(&format!("at seq {target}")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_resumes_from_the_last_verified_checkpoint_and_full_true_walks_everything() {
    let database = TestDatabase::create().await;
    // Keys made before the start turn the admin API's authentication on.
    let (admin, _) = common::create_api_key(&database.url, "*", "admin");
    let (reader, _) = common::create_api_key(&database.url, TENANT, "activity:read");
    let admin = Some(admin.as_str());
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        tamper_evidence: Some("{ checkpoint_interval_secs: 0, interval_ms: 100 }".into()),
        ..Default::default()
    })
    .await;
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/logs"))
        .json(&logs_body())
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let client = database.client().await;
    // Every event chained, and a checkpoint signed at the last of them.
    let seqs: Vec<i64> = eventually(Duration::from_secs(20), "a checkpoint", || async {
        let seqs: Vec<i64> = client
            .query(
                "SELECT seq FROM activity_events WHERE tenant_id = $1 ORDER BY seq",
                &[&TENANT],
            )
            .await
            .expect("seqs")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let last = *seqs.last()?;
        let signed = client
            .query_opt(
                "SELECT 1 FROM chain_checkpoints WHERE tenant_id = $1 AND seq = $2",
                &[&TENANT, &last],
            )
            .await
            .expect("checkpoint");
        (seqs.len() == EVENTS && signed.is_some()).then_some(seqs)
    })
    .await;

    let url = tally.api_url(&format!("/api/v1/verify?tenant={TENANT}"));
    let (status, first) = get_json(&url, admin).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "intact", "{first}");
    assert_eq!(first["verified_from_seq"], Value::Null, "{first}");
    let checkpoint = first["checkpoint"]["seq"].as_i64().expect("a checkpoint");
    assert!(checkpoint >= seqs[EVENTS - 1], "{first}");

    let (status, second) = get_json(&url, admin).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["status"], "intact", "{second}");
    assert_eq!(second["verified_from_seq"], json!(checkpoint), "{second}");

    // A row below the verified checkpoint is rewritten: only a whole walk sees it.
    client
        .execute(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = $1",
            &[&seqs[2]],
        )
        .await
        .expect("tamper");
    let (_, resumed) = get_json(&url, admin).await;
    assert_eq!(resumed["status"], "intact", "{resumed}");
    assert!(resumed["verified_from_seq"].as_i64().is_some(), "{resumed}");
    let (status, full) = get_json(&format!("{url}&full=true"), admin).await;
    assert_eq!(status, 200, "{full}");
    assert_eq!(full["status"], "tampered", "{full}");
    assert_eq!(full["first_problem"]["seq"], json!(seqs[2]), "{full}");
    assert_eq!(full["verified_from_seq"], Value::Null, "{full}");

    let (status, body) = get_json(&format!("{url}&full=yes"), admin).await;
    assert_eq!(status, 400, "{body}");
    // A tenant reader verifies incrementally, but may not ask for a whole walk.
    let (status, body) = get_json(&format!("{url}&full=true"), Some(&reader)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get_json(&url, Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
}
