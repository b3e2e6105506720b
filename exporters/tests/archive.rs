//! Retention archives and per-tenant retention against a real PostgreSQL: a
//! dropped day is in its archive with the right count and links digest, the
//! archive verifies (and an altered one does not), retention waits while the
//! archive directory cannot be written, and a tenant with a shorter retention
//! loses its rows from a partition kept for another, the chain still intact. A
//! Parquet archive round-trips (read back by the `parquet` crate's reader),
//! verifies, and catches a flipped byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, Utc};
use sha2::{Digest, Sha256};
use tally_config::{ArchiveConfig, ArchiveFormat, RetentionConfig, TenantRetentionConfig};
use tally_exporters::postgres::archive::{
    verify_archive, verify_archive_dir, write_archive, Manifest,
};
use tally_exporters::postgres::chain::{self, ChainJob, SigningKey};
use tally_exporters::postgres::{RetentionJob, RetentionReport, RollupJob};
use tally_exporters::testing::TestDatabase;
use tokio_postgres::Client;

const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");
const TOKEN_LOCK: i64 = i64::from_be_bytes(*b"tallytok");

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tally-{name}-{}", uuid::Uuid::new_v4().simple()))
}

async fn partition(client: &Client, table: &str, day: NaiveDate) {
    let next = day.succ_opt().expect("next");
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table}_p{} PARTITION OF {table} \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
            day.format("%Y%m%d")
        ))
        .await
        .expect("partition");
}

/// Inserts `n` activity rows and `n` token rows of `tenant` on `day` (partitions
/// created), under the writers' lock protocol; the activity rows carry awkward
/// attributes (quotes, commas, newlines, unicode, decimals) and details.
async fn rows_on(client: &mut Client, day: NaiveDate, tenant: &str, n: i32) {
    partition(client, "activity_events", day).await;
    partition(client, "token_usage", day).await;
    let ts = day.and_hms_opt(6, 0, 0).expect("time").and_utc();
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, \
             attributes, duration_ms, name, taxonomy_valid) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), \
             $1::timestamptz + i * interval '0.250123 second', $3, 'u' || (i % 7), 'doc.read', \
             'success', jsonb_build_object('n', i, 'text', E'say \"hi\", then\\nleave — é 漢字 🙂', \
                 'price', 1.50, 'big', 1e20::numeric, 'nested', jsonb_build_array(1, 'x', null, true)), \
             CASE WHEN i % 2 = 0 THEN i * 0.1 END, CASE WHEN i % 3 = 0 THEN 'span ' || i END, \
             CASE WHEN i % 5 = 0 THEN false END \
         FROM generate_series(1, $2) AS i",
        &[&ts, &n, &tenant],
    )
    .await
    .expect("activity rows");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, model, input_tokens, \
             output_tokens, total_tokens, cost_usd) \
         SELECT gen_random_uuid(), nextval('token_usage_seq'), $1::timestamptz + i * interval '0.25 second', \
             $3, 'u1', 'gpt-4o', 10, 5, 15, 0.000125 FROM generate_series(1, $2) AS i",
        &[&ts, &n, &tenant],
    )
    .await
    .expect("token rows");
    tx.commit().await.expect("commit");
}

/// Chains and rolls up everything committed so far.
async fn chain_and_roll_up(db: &TestDatabase) {
    let mut runner = db.client().await;
    let chainer = ChainJob::new(Some(key()), Duration::ZERO).with_max_rows_per_run(50_000);
    while chainer.run_once(&mut runner).await.expect("chain").rows > 0 {}
    RollupJob::new(Duration::ZERO)
        .with_max_rows_per_run(1_000_000)
        .run_once(&mut runner)
        .await
        .expect("rollup");
}

fn job(raw_days: u32, tenants: &[(&str, u32)], dir: Option<&Path>) -> RetentionJob {
    job_in(ArchiveFormat::Ndjson, raw_days, tenants, dir)
}

fn job_in(
    format: ArchiveFormat,
    raw_days: u32,
    tenants: &[(&str, u32)],
    dir: Option<&Path>,
) -> RetentionJob {
    RetentionJob::new(RetentionConfig {
        raw_days,
        aggregate_days: 0,
        archive: dir.map(|dir| ArchiveConfig {
            dir: dir.to_owned(),
            format,
        }),
        tenants: tenants
            .iter()
            .map(|(t, d)| (t.to_string(), TenantRetentionConfig { raw_days: *d }))
            .collect(),
    })
    .with_signer(Some(key()))
}

async fn count(client: &Client, sql: &str, tenant: &str) -> i64 {
    client.query_one(sql, &[&tenant]).await.expect(sql).get(0)
}

fn manifest(path: &Path) -> Manifest {
    serde_json::from_str(&std::fs::read_to_string(path).expect("manifest")).expect("manifest json")
}

/// SHA-256 over `seq ‖ row_hash` of the chain's links of `day`, in seq order.
async fn links_digest(client: &Client, day: NaiveDate) -> String {
    let mut digest = Sha256::new();
    for row in client
        .query(
            "SELECT seq, row_hash FROM activity_chain WHERE day = $1 ORDER BY seq",
            &[&day],
        )
        .await
        .expect("links")
    {
        digest.update(row.get::<_, i64>(0).to_be_bytes());
        digest.update(row.get::<_, Vec<u8>>(1));
    }
    chain::hex(&digest.finalize())
}

async fn chain_intact(client: &mut Client, tenant: &str) -> chain::VerifyReport {
    let report = chain::verify(client, tenant, &[key().verifying_key()])
        .await
        .expect("verify");
    assert!(report.is_intact(), "{tenant}: {}", report.summary());
    report
}

fn archived_rows(report: &RetentionReport) -> BTreeMap<String, i64> {
    report
        .archives
        .iter()
        .map(|path| {
            let m = manifest(path);
            (m.data_file, m.rows)
        })
        .collect()
}

#[tokio::test]
async fn a_dropped_day_is_in_its_archive_which_verifies_and_catches_a_flipped_byte() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let old = today - Days::new(100);
    rows_on(&mut client, old, "acme", 40).await;
    rows_on(&mut client, old, "", 3).await;
    rows_on(&mut client, today - Days::new(10), "acme", 5).await;
    chain_and_roll_up(&db).await;
    let digest = links_digest(&client, old).await;
    let dir = temp_dir("archive");

    let report = job(90, &[], Some(&dir))
        .run_once_at(&client, today)
        .await
        .expect("retention");
    let day = old.format("%Y%m%d");
    let mut dropped = report.dropped_partitions.clone();
    dropped.sort();
    assert_eq!(
        dropped,
        vec![
            format!("activity_events_p{day}"),
            format!("token_usage_p{day}")
        ]
    );
    assert_eq!(
        archived_rows(&report),
        BTreeMap::from([
            (format!("activity_events_p{day}.ndjson"), 43),
            (format!("token_usage_p{day}.ndjson"), 43),
        ])
    );
    let activity = manifest(
        &dir.join("activity_events")
            .join(format!("activity_events_p{day}.manifest.json")),
    );
    assert_eq!(activity.rows, 43);
    assert_eq!(activity.chained_rows, 43);
    assert_eq!(activity.links_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(activity.scope, "partition");
    let tenants: Vec<(String, i64)> = activity
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.rows))
        .collect();
    assert_eq!(tenants, vec![(String::new(), 3), ("acme".to_owned(), 40)]);
    let data = std::fs::read(dir.join("activity_events").join(&activity.data_file)).expect("data");
    assert_eq!(chain::hex(&Sha256::digest(&data)), activity.sha256);
    assert_eq!(data.iter().filter(|b| **b == b'\n').count(), 43);
    // No temporary file is left behind.
    for entry in std::fs::read_dir(dir.join("activity_events")).expect("dir") {
        let name = entry.expect("entry").file_name();
        assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
    }
    // The rows are gone, the chain still verifies across the drop.
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM activity_events WHERE tenant_id = $1",
            "acme"
        )
        .await,
        5
    );
    chain_intact(&mut client, "acme").await;
    chain_intact(&mut client, "").await;

    // The archives verify: every row rehashed and matched with the chain.
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
        .await
        .expect("verify archives");
    assert_eq!(checks.len(), 2);
    for check in &checks {
        assert!(check.is_intact(), "{check:?}");
        assert_eq!(check.rows, 43);
    }
    let activity_check = checks
        .iter()
        .find(|c| c.manifest.to_string_lossy().contains("activity_events_p"))
        .expect("activity archive");
    assert_eq!(activity_check.rows_rehashed, 43);
    assert_eq!(activity_check.links_matched_in_database, 43);
    // Another key is not trusted.
    let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let checks = verify_archive_dir(&dir, &[other], None)
        .await
        .expect("verify");
    assert!(checks.iter().all(|c| !c.is_intact()));

    // A byte changed inside one row's text: the hash, and the row's link, disagree.
    let path = dir.join("activity_events").join(&activity.data_file);
    let text = String::from_utf8(data.clone()).expect("utf-8");
    let altered = text.replacen("\"user_id\":\"u3\"", "\"user_id\":\"u4\"", 1);
    assert_ne!(altered, text);
    std::fs::write(&path, altered.as_bytes()).expect("write");
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
        .await
        .expect("verify");
    let bad = checks
        .iter()
        .find(|c| !c.is_intact())
        .expect("tampering caught");
    let problems = bad.problems.join("; ");
    assert!(problems.contains("SHA-256"), "{problems}");
    assert!(
        problems.contains("does not hash to its chain link"),
        "{problems}"
    );
    // Rewriting the manifest's SHA-256 to match does not help: its signature breaks.
    let mut forged = activity.clone();
    forged.sha256 = chain::hex(&Sha256::digest(altered.as_bytes()));
    std::fs::write(
        dir.join("activity_events")
            .join(format!("activity_events_p{day}.manifest.json")),
        serde_json::to_vec(&forged).expect("json"),
    )
    .expect("write");
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], None)
        .await
        .expect("verify");
    let problems = checks
        .iter()
        .flat_map(|c| c.problems.clone())
        .collect::<Vec<_>>()
        .join("; ");
    assert!(problems.contains("signature does not verify"), "{problems}");
    assert!(
        problems.contains("does not hash to its chain link"),
        "{problems}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A column of every row of a Parquet file, by name, through the `parquet`
/// crate's record reader (not Tally's verifier).
fn parquet_column(path: &Path, name: &str) -> Vec<parquet::record::Field> {
    use parquet::file::reader::FileReader;
    let file = std::fs::File::open(path).expect("open");
    let reader =
        parquet::file::serialized_reader::SerializedFileReader::new(file).expect("parquet");
    reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| {
            row.expect("row")
                .get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, f)| f.clone())
                .expect("column")
        })
        .collect()
}

#[tokio::test]
async fn a_parquet_archive_of_a_day_round_trips_verifies_and_catches_a_flipped_byte() {
    use parquet::record::Field;
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let old = today - Days::new(100);
    rows_on(&mut client, old, "acme", 40).await;
    rows_on(&mut client, old, "", 3).await;
    rows_on(&mut client, today - Days::new(10), "acme", 5).await;
    chain_and_roll_up(&db).await;
    let digest = links_digest(&client, old).await;
    let day = old.format("%Y%m%d");
    // The rows as PostgreSQL has them, before the drop.
    let before = client
        .query(
            &format!(
                "SELECT seq, user_id, attributes::text, \
                     (extract(epoch FROM ts) * 1000000)::int8, duration_ms \
                 FROM activity_events_p{day} ORDER BY seq"
            ),
            &[],
        )
        .await
        .expect("rows");
    let costs: Vec<String> = client
        .query(
            &format!("SELECT to_json(cost_usd)::text FROM token_usage_p{day} ORDER BY seq"),
            &[],
        )
        .await
        .expect("token rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dir = temp_dir("parquet");

    let report = job_in(ArchiveFormat::Parquet, 90, &[], Some(&dir))
        .run_once_at(&client, today)
        .await
        .expect("retention");
    assert_eq!(report.dropped_partitions.len(), 2, "{report:?}");
    assert_eq!(
        archived_rows(&report),
        BTreeMap::from([
            (format!("activity_events_p{day}.parquet"), 43),
            (format!("token_usage_p{day}.parquet"), 43),
        ])
    );
    let manifest_path = dir
        .join("activity_events")
        .join(format!("activity_events_p{day}.manifest.json"));
    let activity = manifest(&manifest_path);
    assert_eq!(activity.data_format, "parquet");
    assert_eq!(activity.rows, 43);
    assert_eq!(activity.chained_rows, 43);
    assert_eq!(activity.links_digest.as_deref(), Some(digest.as_str()));
    let path = dir.join("activity_events").join(&activity.data_file);
    let data = std::fs::read(&path).expect("data");
    assert_eq!(data.len() as u64, activity.bytes);
    assert_eq!(chain::hex(&Sha256::digest(&data)), activity.sha256);
    assert!(data.starts_with(b"PAR1") && data.ends_with(b"PAR1"));
    for entry in std::fs::read_dir(dir.join("activity_events")).expect("dir") {
        let name = entry.expect("entry").file_name();
        assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
    }

    // Read back by the parquet crate's own reader: the typed values are the rows'.
    let seqs = parquet_column(&path, "seq");
    let users = parquet_column(&path, "user_id");
    let attributes = parquet_column(&path, "attributes");
    let ts = parquet_column(&path, "ts");
    let durations = parquet_column(&path, "duration_ms");
    assert_eq!(seqs.len(), before.len());
    for (i, row) in before.iter().enumerate() {
        assert_eq!(seqs[i], Field::Long(row.get(0)));
        assert_eq!(users[i], Field::Str(row.get(1)));
        assert_eq!(attributes[i], Field::Str(row.get(2)), "byte for byte");
        assert_eq!(ts[i], Field::TimestampMicros(row.get(3)));
        match row.get::<_, Option<f64>>(4) {
            Some(d) => assert_eq!(durations[i], Field::Double(d)),
            None => assert_eq!(durations[i], Field::Null),
        }
    }
    let hashes = parquet_column(&path, "_chain_row_hash");
    assert!(hashes
        .iter()
        .all(|h| matches!(h, Field::Bytes(b) if b.len() == 32)));
    let token_path = dir
        .join("token_usage")
        .join(format!("token_usage_p{day}.parquet"));
    let archived_costs: Vec<String> = parquet_column(&token_path, "cost_usd")
        .into_iter()
        .map(|f| match f {
            Field::Str(s) => s,
            other => panic!("cost_usd is {other:?}"),
        })
        .collect();
    assert_eq!(archived_costs, costs);

    // Both archives verify: every activity row rehashed and matched with the chain.
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
        .await
        .expect("verify archives");
    assert_eq!(checks.len(), 2);
    for check in &checks {
        assert!(check.is_intact(), "{check:?}");
        assert_eq!(check.rows, 43);
    }
    let activity_check = checks
        .iter()
        .find(|c| c.manifest == manifest_path)
        .expect("activity archive");
    assert_eq!(activity_check.rows_rehashed, 43);
    assert_eq!(activity_check.links_matched_in_database, 43);

    // One flipped byte, anywhere in the file, is caught.
    for at in [data.len() / 3, data.len() / 2, data.len() - 20] {
        let mut flipped = data.clone();
        flipped[at] ^= 0x01;
        std::fs::write(&path, &flipped).expect("write");
        let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
            .await
            .expect("verify");
        let bad = checks
            .iter()
            .find(|c| c.manifest == manifest_path)
            .expect("activity archive");
        assert!(!bad.is_intact(), "byte {at}");
        assert!(
            bad.problems.join("; ").contains("SHA-256"),
            "{:?}",
            bad.problems
        );
    }
    // A truncated file, its manifest's SHA-256 and size forged to match: the
    // signature breaks and the rows are missing.
    let truncated = &data[..data.len() / 2];
    std::fs::write(&path, truncated).expect("write");
    let mut forged = activity.clone();
    forged.sha256 = chain::hex(&Sha256::digest(truncated));
    forged.bytes = truncated.len() as u64;
    std::fs::write(&manifest_path, serde_json::to_vec(&forged).expect("json")).expect("write");
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], None)
        .await
        .expect("verify");
    let problems = checks
        .iter()
        .flat_map(|c| c.problems.clone())
        .collect::<Vec<_>>()
        .join("; ");
    assert!(problems.contains("signature does not verify"), "{problems}");
    assert!(
        problems.contains("not a readable Parquet file"),
        "{problems}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A row changed in the database behind the chain's back and then archived:
/// both formats re-hash it against its link and name it, the rest intact.
#[tokio::test]
async fn a_row_altered_before_archiving_fails_its_rehash_in_both_formats() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let day = Utc::now().date_naive() - Days::new(50);
    rows_on(&mut client, day, "acme", 10).await;
    chain_and_roll_up(&db).await;
    client
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             UPDATE activity_events SET user_id = 'mallory' \
             WHERE seq = (SELECT min(seq) FROM activity_events); COMMIT",
        )
        .await
        .expect("alter a row");
    let partition = format!("activity_events_p{}", day.format("%Y%m%d"));
    for format in [ArchiveFormat::Ndjson, ArchiveFormat::Parquet] {
        let dir = temp_dir("altered");
        let archived = write_archive(
            &client,
            &dir,
            format,
            "activity_events",
            &partition,
            day,
            None,
            Some(&key()),
        )
        .await
        .expect("archive")
        .expect("rows");
        let check = verify_archive(
            &archived.manifest_path,
            &[key().verifying_key()],
            Some(&client),
        )
        .await
        .expect("verify");
        assert_eq!(check.rows, 10, "{format:?}");
        assert_eq!(check.rows_rehashed, 9, "{format:?}");
        assert_eq!(check.links_matched_in_database, 10, "{format:?}");
        assert_eq!(check.problems.len(), 1, "{format:?}: {:?}", check.problems);
        assert!(
            check.problems[0].contains("does not hash to its chain link"),
            "{format:?}: {:?}",
            check.problems
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn retention_waits_while_the_archive_cannot_be_written_then_proceeds() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let old = today - Days::new(95);
    rows_on(&mut client, old, "acme", 4).await;
    chain_and_roll_up(&db).await;
    // The archive directory's parent is a regular file: no one (not even root)
    // can create the directory.
    let base = temp_dir("unwritable");
    std::fs::create_dir_all(&base).expect("base");
    let blocker = base.join("archive");
    std::fs::write(&blocker, b"not a directory").expect("file");
    let dir = blocker.join("inner");
    let failures = || {
        let text = tally_model::metrics::encode();
        text.lines()
            .find(|l| {
                l.starts_with("tally_retention_archive_failures_total{table=\"activity_events\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let before = failures();
    assert!(before >= 0.0, "the failure counter is exported");
    let job = job(90, &[], Some(&dir));
    for _ in 0..2 {
        let report = job.run_once_at(&client, today).await.expect("retention");
        assert!(report.dropped_partitions.is_empty(), "{report:?}");
        // One partition per table, each kept with the reason.
        assert_eq!(report.kept_partitions.len(), 2, "{report:?}");
        for (_, reason) in &report.kept_partitions {
            assert!(
                reason.contains("archive could not be written"),
                "{report:?}"
            );
        }
    }
    assert!(failures() >= before + 2.0);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM activity_events WHERE tenant_id = $1",
            "acme"
        )
        .await,
        4
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM chain_truncations WHERE tenant_id = $1",
            "acme"
        )
        .await,
        0,
        "nothing recorded as dropped"
    );

    // Writable again: the next run archives and drops.
    std::fs::remove_file(&blocker).expect("remove blocker");
    let report = job.run_once_at(&client, today).await.expect("retention");
    assert_eq!(report.dropped_partitions.len(), 2, "{report:?}");
    assert_eq!(report.archives.len(), 2);
    assert!(report.kept_partitions.is_empty());
    chain_intact(&mut client, "acme").await;
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
        .await
        .expect("verify");
    assert!(checks.iter().all(|c| c.is_intact()), "{checks:?}");
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn per_tenant_retention_keeps_one_tenants_rows_and_removes_anothers() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let ago = |days: u64| today - Days::new(days);
    // "long" keeps 365 days, "short" 30, everyone else the default 90.
    rows_on(&mut client, ago(400), "long", 3).await; // past everyone's: dropped whole
    rows_on(&mut client, ago(120), "long", 6).await; // shared day: short and other go
    rows_on(&mut client, ago(120), "short", 4).await;
    rows_on(&mut client, ago(120), "other", 2).await;
    rows_on(&mut client, ago(60), "long", 1).await; // only short goes
    rows_on(&mut client, ago(60), "short", 5).await;
    rows_on(&mut client, ago(60), "other", 2).await;
    rows_on(&mut client, ago(10), "short", 2).await; // kept for all
    chain_and_roll_up(&db).await;
    let dir = temp_dir("tenants");
    let job = job(90, &[("long", 365), ("short", 30)], Some(&dir));

    let report = job.run_once_at(&client, today).await.expect("retention");
    let mut dropped = report.dropped_partitions.clone();
    dropped.sort();
    let d400 = ago(400).format("%Y%m%d");
    assert_eq!(
        dropped,
        vec![
            format!("activity_events_p{d400}"),
            format!("token_usage_p{d400}")
        ]
    );
    let mut deletions: Vec<(String, Vec<String>, u64)> = report.tenant_deletions.clone();
    deletions.sort();
    let d120 = ago(120).format("%Y%m%d");
    let d60 = ago(60).format("%Y%m%d");
    assert_eq!(
        deletions,
        vec![
            (
                format!("activity_events_p{d120}"),
                vec!["other".to_owned(), "short".to_owned()],
                6
            ),
            (
                format!("activity_events_p{d60}"),
                vec!["short".to_owned()],
                5
            ),
            (
                format!("token_usage_p{d120}"),
                vec!["other".to_owned(), "short".to_owned()],
                6
            ),
            (format!("token_usage_p{d60}"), vec!["short".to_owned()], 5),
        ]
    );
    for (table, tenant, rows) in [
        ("activity_events", "long", 7),
        ("activity_events", "short", 2),
        ("activity_events", "other", 2),
        ("token_usage", "long", 7),
        ("token_usage", "short", 2),
        ("token_usage", "other", 2),
    ] {
        let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = $1");
        assert_eq!(count(&client, &sql, tenant).await, rows, "{table} {tenant}");
    }
    // Every removed row is archived (tenant-scoped archives for the deletions).
    let archived: i64 = archived_rows(&report).values().sum();
    assert_eq!(archived, 2 * (3 + 6 + 5));
    let scoped = manifest(&dir.join("activity_events").join(format!(
            "{}",
            report
                .archives
                .iter()
                .find(|p| p
                    .to_string_lossy()
                    .contains(&format!("activity_events_p{d60}.tenants-")))
                .expect("tenant archive")
                .file_name()
                .expect("name")
                .to_string_lossy()
        )));
    assert_eq!(scoped.scope, "tenants");
    assert_eq!(scoped.rows, 5);
    assert_eq!(scoped.tenants.len(), 1);
    assert_eq!(scoped.tenants[0].tenant, "short");
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
        .await
        .expect("verify");
    assert_eq!(checks.len(), 6);
    assert!(checks.iter().all(|c| c.is_intact()), "{checks:?}");
    // Every tenant's chain verifies, the deletions accounted for.
    for tenant in ["long", "short", "other"] {
        chain_intact(&mut client, tenant).await;
    }
    let dropped_short = chain_intact(&mut client, "short").await.dropped_rows;
    assert_eq!(dropped_short, 9);

    // Idempotent: nothing more to do.
    let report = job.run_once_at(&client, today).await.expect("retention");
    assert!(
        report.dropped_partitions.is_empty()
            && report.tenant_deletions.is_empty()
            && report.kept_partitions.is_empty(),
        "{report:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Throughput figure (not a check): archiving, then verifying, one 100k-row
/// partition. `cargo test -p tally-exporters --test archive -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn archive_throughput_of_a_100k_row_partition() {
    let rows: i32 = std::env::var("TALLY_ARCHIVE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let old = today - Days::new(100);
    rows_on(&mut client, old, "acme", rows).await;
    let started = Instant::now();
    chain_and_roll_up(&db).await;
    println!(
        "chained and rolled up {rows} rows in {:?}",
        started.elapsed()
    );
    let dir = temp_dir("throughput");
    let started = Instant::now();
    let report = job(90, &[], Some(&dir))
        .run_once_at(&client, today)
        .await
        .expect("retention");
    let elapsed = started.elapsed();
    let manifest = manifest(&report.archives[0]);
    println!(
        "archived and dropped {} activity rows ({} bytes) and {rows} token rows in {elapsed:?} \
         ({:.0} rows/s over both tables)",
        manifest.rows,
        manifest.bytes,
        f64::from(rows) * 2.0 / elapsed.as_secs_f64()
    );
    let started = Instant::now();
    let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
        .await
        .expect("verify");
    assert!(checks.iter().all(|c| c.is_intact()));
    println!("verified both archives in {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
