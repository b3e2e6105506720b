//! Retention archives checked by the built binary: retention archives and drops
//! an expired day, `tally verify --archive DIR` says intact (exit 0), and after a
//! byte of an archive is changed it says TAMPERED (exit 1), in both formats
//! (NDJSON and Parquet); a directory without archives cannot be checked (exit 2).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use tally_config::{ArchiveConfig, ArchiveFormat, RetentionConfig};
use tally_exporters::postgres::chain::{ChainJob, SigningKey, SIGNING_KEY_SECRET};
use tally_exporters::postgres::{get_or_create_secret, RetentionJob, RollupJob};
use tally_exporters::testing::TestDatabase;

const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");
const TOKEN_LOCK: i64 = i64::from_be_bytes(*b"tallytok");
const SEED: [u8; 32] = [5; 32];

/// `tally verify --archive DIR`: (exit code, stdout + stderr).
fn cli_verify_archive(database: &TestDatabase, dir: &Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("verify")
        .arg("--archive")
        .arg(dir)
        .env("TALLY_DATABASE_URL", &database.url)
        .output()
        .expect("run tally verify --archive");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A database whose expired day (25 activity rows, chained, and 7 token rows)
/// retention archived in `format` and dropped: (database, archive directory, day).
async fn archived_day(format: ArchiveFormat) -> (TestDatabase, tempfile::TempDir, NaiveDate) {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    // The signing key the running collector would use, where `tally verify` finds it.
    get_or_create_secret(&client, SIGNING_KEY_SECRET, &SEED)
        .await
        .expect("signing key");
    let key = SigningKey::from_bytes(&SEED);
    let today = Utc::now().date_naive();
    let day = today - Days::new(120);
    let next = day.succ_opt().expect("next day");
    for table in ["activity_events", "token_usage"] {
        client
            .batch_execute(&format!(
                "CREATE TABLE {table}_p{} PARTITION OF {table} \
                 FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
                day.format("%Y%m%d")
            ))
            .await
            .expect("partition");
    }
    let ts = day.and_hms_opt(9, 30, 0).expect("time").and_utc();
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, attributes) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), $1::timestamptz + i * interval '1 minute', \
             'acme', 'user-' || i, 'doc.read', 'success', \
             jsonb_build_object('note', E'a \"quoted\", multi\\nline — ü', 'i', i) \
         FROM generate_series(1, 25) AS i",
        &[&ts],
    )
    .await
    .expect("activity");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, model, input_tokens, output_tokens, total_tokens) \
         SELECT gen_random_uuid(), nextval('token_usage_seq'), $1::timestamptz + i * interval '1 minute', \
             'acme', 'user-' || i, 'gpt-4o', 100 + i, 5, 105 + i FROM generate_series(1, 7) AS i",
        &[&ts],
    )
    .await
    .expect("tokens");
    tx.commit().await.expect("commit");
    let chainer = ChainJob::new(Some(key.clone()), Duration::ZERO);
    while chainer.run_once(&mut client).await.expect("chain").rows > 0 {}
    RollupJob::new(Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("rollup");
    let dir = tempfile::tempdir().expect("temp dir");
    let report = RetentionJob::new(RetentionConfig {
        raw_days: 90,
        archive: Some(ArchiveConfig {
            dir: dir.path().to_owned(),
            format,
        }),
        ..RetentionConfig::default()
    })
    .with_signer(Some(key))
    .run_once_at(&client, today)
    .await
    .expect("retention");
    assert_eq!(report.dropped_partitions.len(), 2, "{report:?}");
    assert_eq!(report.archives.len(), 2);
    (db, dir, day)
}

/// `tally verify --archive` says the archived day (both tables) is intact.
fn assert_the_day_verifies(db: &TestDatabase, dir: &Path) {
    let (code, output) = cli_verify_archive(db, dir);
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("2 of 2 archives intact (32 rows)"),
        "{output}"
    );
    assert!(
        output.contains("25 rows rehashed against their chain links, 25 links match"),
        "{output}"
    );
}

#[tokio::test]
async fn tally_verify_archive_catches_a_changed_byte() {
    let (db, dir, day) = archived_day(ArchiveFormat::Ndjson).await;
    assert_the_day_verifies(&db, dir.path());

    // One byte of one archived row changes: user-12 becomes user-13.
    let data = dir
        .path()
        .join("activity_events")
        .join(format!("activity_events_p{}.ndjson", day.format("%Y%m%d")));
    let original = std::fs::read(&data).expect("archive");
    let at = original
        .windows(8)
        .position(|w| w == b"user-12\"")
        .expect("user-12 in the archive")
        + 6;
    let mut flipped = original.clone();
    flipped[at] = b'3';
    std::fs::write(&data, &flipped).expect("write");
    let (code, output) = cli_verify_archive(&db, dir.path());
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("TAMPERED"), "{output}");
    assert!(
        output.contains("does not hash to its chain link"),
        "{output}"
    );
    assert!(output.contains("1 of 2 archives intact"), "{output}");

    // Restored, it verifies again; a changed token count is caught too.
    std::fs::write(&data, &original).expect("restore");
    let tokens = dir
        .path()
        .join("token_usage")
        .join(format!("token_usage_p{}.ndjson", day.format("%Y%m%d")));
    let text = std::fs::read_to_string(&tokens).expect("token archive");
    std::fs::write(
        &tokens,
        text.replacen("\"input_tokens\":101", "\"input_tokens\":901", 1),
    )
    .expect("write");
    let (code, output) = cli_verify_archive(&db, dir.path());
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("token_usage"), "{output}");
    assert!(output.contains("SHA-256"), "{output}");

    // Nothing to check: exit 2 with the reason.
    let empty = tempfile::tempdir().expect("temp dir");
    let (code, output) = cli_verify_archive(&db, empty.path());
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("no archive"), "{output}");
}

#[tokio::test]
async fn tally_verify_archive_checks_parquet_archives() {
    let (db, dir, day) = archived_day(ArchiveFormat::Parquet).await;
    assert_the_day_verifies(&db, dir.path());
    // One flipped byte in the middle of the activity archive.
    let data = dir
        .path()
        .join("activity_events")
        .join(format!("activity_events_p{}.parquet", day.format("%Y%m%d")));
    let mut bytes = std::fs::read(&data).expect("archive");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&data, &bytes).expect("write");
    let (code, output) = cli_verify_archive(&db, dir.path());
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("TAMPERED"), "{output}");
    assert!(output.contains("SHA-256"), "{output}");
    assert!(output.contains("1 of 2 archives intact"), "{output}");
}
