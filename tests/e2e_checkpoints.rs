//! Checkpoints outside the database, end to end: `tally` (checkpoint_dir set)
//! appends its signed checkpoints to files, and `tally verify --checkpoints DIR`
//! catches what a database writer without the signing key can do that the
//! database alone cannot show: a cut tail, a rewritten head, and deleted rows
//! excused by a forged truncation record.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, Tally, TallyOptions, TestDatabase};
use serde_json::{json, Value};
use tally_exporters::postgres::chain::ChainJob;
use tokio_postgres::Client;

const TENANT: &str = "t-checkpoints";
const EVENTS: usize = 12;

fn logs_body(batch: usize) -> Value {
    let records: Vec<Value> = (0..EVENTS / 2)
        .map(|i| {
            let n = batch * EVENTS / 2 + i;
            json!({
                "timeUnixNano": format!("{}", 1_700_000_000_000_000_000u64 + n as u64 * 1_000_000),
                "attributes": [
                    { "key": "event.name", "value": { "stringValue": "doc.read" } },
                    { "key": "enduser.id", "value": { "stringValue": format!("u-{n}") } },
                    { "key": "tenant.id", "value": { "stringValue": TENANT } }
                ]
            })
        })
        .collect();
    json!({ "resourceLogs": [{
        "resource": { "attributes": [
            { "key": "service.name", "value": { "stringValue": "checkpoint-test" } } ] },
        "scopeLogs": [{ "logRecords": records }] }] })
}

/// `tally verify --tenant TENANT [--checkpoints DIR]`: (exit code, output).
fn cli_verify(database: &TestDatabase, dir: Option<&Path>) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .args(["verify", "--tenant", TENANT])
        .env("TALLY_DATABASE_URL", &database.url);
    if let Some(dir) = dir {
        command.arg("--checkpoints").arg(dir);
    }
    let output = command.output().expect("run tally verify");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The seqs the checkpoint files of `dir` name for TENANT, ascending.
fn file_seqs(dir: &Path) -> Vec<i64> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if value["tenant"] == TENANT {
                seqs.extend(value["seq"].as_i64());
            }
        }
    }
    seqs.sort_unstable();
    seqs
}

const TABLES: [&str; 6] = [
    "activity_events",
    "activity_chain",
    "activity_chain_runs",
    "chain_heads",
    "chain_checkpoints",
    "chain_truncations",
];

/// Copies the tenant's chain state aside (to put it back between two attacks).
async fn snapshot(client: &Client) {
    for table in TABLES {
        client
            .batch_execute(&format!(
                "CREATE TABLE saved_{table} AS SELECT * FROM {table} WHERE tenant_id = '{TENANT}'"
            ))
            .await
            .expect("snapshot");
    }
}

async fn restore(client: &Client) {
    for table in TABLES {
        client
            .batch_execute(&format!(
                "DELETE FROM {table} WHERE tenant_id = '{TENANT}'; \
                 INSERT INTO {table} SELECT * FROM saved_{table};"
            ))
            .await
            .expect("restore");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_with_checkpoints_catches_a_cut_tail_a_rewritten_head_and_a_forged_truncation() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cp_dir = dir.path().join("checkpoints");
    let mut tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        tamper_evidence: Some(format!(
            "{{ checkpoint_interval_secs: 0, interval_ms: 100, checkpoint_dir: \"{}\" }}",
            cp_dir.display()
        )),
        ..Default::default()
    })
    .await;
    // Two exports, so that the files hold checkpoints at several seqs.
    let client = database.client().await;
    for batch in 0..2 {
        let response = reqwest::Client::new()
            .post(tally.http_url("/v1/logs"))
            .json(&logs_body(batch))
            .send()
            .await
            .expect("export");
        assert_eq!(response.status(), 200);
        let want = (batch + 1) * EVENTS / 2;
        eventually(
            Duration::from_secs(20),
            "the batch chained and checkpointed",
            || async {
                let last: Option<i64> = client
                    .query_one(
                        "SELECT max(seq) FROM activity_chain_links WHERE tenant_id = $1 \
                         HAVING count(*) = $2",
                        &[&TENANT, &(want as i64)],
                    )
                    .await
                    .ok()
                    .and_then(|row| row.get(0));
                last.filter(|last| file_seqs(&cp_dir).contains(last))
            },
        )
        .await;
    }
    assert!(tally.terminate().success(), "{}", tally.log_text());
    let seqs: Vec<i64> = client
        .query(
            "SELECT seq FROM activity_events WHERE tenant_id = $1 ORDER BY seq",
            &[&TENANT],
        )
        .await
        .expect("seqs")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(seqs.len(), EVENTS);
    let checkpointed = file_seqs(&cp_dir);
    assert!(checkpointed.len() >= 2, "{checkpointed:?}");
    let last = *seqs.last().expect("rows");
    assert_eq!(checkpointed.last(), Some(&last));

    // Untouched: intact, and the external checkpoints match.
    let (code, text) = cli_verify(&database, Some(&cp_dir));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("intact up to seq {last}")), "{text}");
    assert!(
        text.contains("checkpoints outside the database match"),
        "{text}"
    );
    snapshot(&client).await;

    // 1. The first half of the rows deleted, excused by a forged truncation record.
    let half = &seqs[..EVENTS / 2];
    client
        .execute(
            "DELETE FROM activity_events WHERE tenant_id = $1 AND seq = ANY($2)",
            &[&TENANT, &half],
        )
        .await
        .expect("delete");
    client
        .execute(
            "INSERT INTO chain_truncations (table_name, partition_name, day, tenant_id, rows, \
                 min_seq, max_seq, chained_rows, last_chained_seq, last_chained_hash) \
             SELECT 'activity_events', 'activity_events_p20231114', day, tenant_id, $3, $4, $5, \
                 $3, $5, row_hash FROM tally_chain_link($1, $2)",
            &[
                &TENANT,
                &half[half.len() - 1],
                &(half.len() as i64),
                &half[0],
                &half[half.len() - 1],
            ],
        )
        .await
        .expect("forged truncation");
    let (code, text) = cli_verify(&database, Some(&cp_dir));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("TAMPERED: truncation at seq {}", half[0])),
        "{text}"
    );
    restore(&client).await;
    let (code, text) = cli_verify(&database, Some(&cp_dir));
    assert_eq!(code, Some(0), "restored: {text}");

    // 2. The newest row rewritten and the tenant's chain recomputed without the key.
    client
        .batch_execute(&format!(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = {last}; \
             DELETE FROM activity_chain WHERE tenant_id = '{TENANT}'; \
             DELETE FROM activity_chain_runs WHERE tenant_id = '{TENANT}'; \
             DELETE FROM chain_heads WHERE tenant_id = '{TENANT}'; \
             DELETE FROM chain_checkpoints WHERE tenant_id = '{TENANT}'; \
             UPDATE chain_watermark SET last_seq = 0;"
        ))
        .await
        .expect("rewrite");
    let mut attacker = database.client().await;
    ChainJob::new(None, Duration::ZERO)
        .run_once(&mut attacker)
        .await
        .expect("re-chain");
    let (code, text) = cli_verify(&database, None);
    assert_eq!(code, Some(0), "the database alone cannot tell: {text}");
    let (code, text) = cli_verify(&database, Some(&cp_dir));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("TAMPERED: checkpoint at seq {last}")),
        "{text}"
    );
    restore(&client).await;
    let (code, text) = cli_verify(&database, Some(&cp_dir));
    assert_eq!(code, Some(0), "restored: {text}");

    // A line added to the files without the key.
    let forged = cp_dir.join("checkpoints-2000-01-01.ndjson");
    std::fs::write(
        &forged,
        format!(
            "{{\"tenant\":\"{TENANT}\",\"seq\":{last},\"head_hash\":\"{}\",\
             \"signed_at\":\"2000-01-01T00:00:00.000000Z\",\"key_id\":\"0000000000000000\",\
             \"signature\":\"{}\"}}\n",
            "00".repeat(32),
            "00".repeat(64)
        ),
    )
    .expect("forged line");
    let (code, text) = cli_verify(&database, Some(&cp_dir));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("checkpoint file: TAMPERED"), "{text}");
    std::fs::remove_file(&forged).expect("remove the forged file");

    // 3. The tail cut: the last rows deleted with their links and checkpoints, the
    // head moved back to the row before them.
    let keep = seqs[EVENTS - 4];
    client
        .batch_execute(&format!(
            "DELETE FROM activity_events WHERE tenant_id = '{TENANT}' AND seq > {keep}; \
             DELETE FROM activity_chain WHERE tenant_id = '{TENANT}' AND seq > {keep}; \
             DELETE FROM activity_chain_runs WHERE tenant_id = '{TENANT}' AND first_seq > {keep}; \
             UPDATE activity_chain_runs SET last_seq = {keep}, \
                 seqs = seqs[1:array_position(seqs, {keep}::int8)], \
                 days = days[1:array_position(seqs, {keep}::int8)], \
                 row_hashes = substring(row_hashes FROM 1 FOR 32 * array_position(seqs, {keep}::int8)) \
                 WHERE tenant_id = '{TENANT}' AND first_seq <= {keep} AND last_seq > {keep}; \
             DELETE FROM chain_checkpoints WHERE tenant_id = '{TENANT}' AND seq > {keep}; \
             UPDATE chain_heads h SET seq = c.seq, row_hash = c.row_hash FROM activity_chain_links c \
                 WHERE h.tenant_id = '{TENANT}' AND c.tenant_id = h.tenant_id AND c.seq = {keep};"
        ))
        .await
        .expect("cut the tail");
    let (code, text) = cli_verify(&database, None);
    assert_eq!(code, Some(0), "the database alone cannot tell: {text}");
    let (code, text) = cli_verify(&database, Some(&cp_dir));
    assert_eq!(code, Some(1), "{text}");
    let first_cut = checkpointed
        .iter()
        .find(|&&seq| seq > keep)
        .expect("a checkpoint after the cut");
    assert!(
        text.contains(&format!("TAMPERED: deleted at seq {first_cut}")),
        "{text}"
    );
    assert!(text.contains("tail was cut"), "{text}");

    // A directory without checkpoint files cannot be compared with: exit 2.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let (code, text) = cli_verify(&database, Some(&empty));
    assert_eq!(code, Some(2), "{text}");
}
