//! Tamper evidence end to end: the chainer started by `tally` chains what the
//! pipeline commits, and both `GET /api/v1/verify` and `tally verify` find an
//! out-of-band `UPDATE` at its seq.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, get_json, Tally, TestDatabase};
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
