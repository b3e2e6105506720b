//! Links computed by the writer (issue 21) against a real PostgreSQL: rows linked
//! in their batch's transaction verify, hash exactly as the chainer hashes them,
//! are left to the chainer while the chain is behind, stay exactly-once with two
//! instances and a chainer running, and tampering afterwards is still detected.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde_json::{json, Map};
use tally_exporters::postgres::chain::{
    self, ChainJob, ProblemKind, VerifyReport, VerifyStatus, VerifyingKey,
};
use tally_exporters::postgres::personal::PersonalKeys;
use tally_exporters::postgres::PgExporter;
use tally_exporters::testing::TestDatabase;
use tally_model::{ActivityEvent, Readiness};
use tokio_postgres::Client;

const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");

fn key() -> SigningKey {
    SigningKey::from_bytes(&[21; 32])
}

fn trusted() -> Vec<VerifyingKey> {
    vec![key().verifying_key()]
}

fn job() -> ChainJob {
    ChainJob::new(Some(key()), Duration::ZERO)
}

async fn linking_exporter(db: &TestDatabase) -> PgExporter {
    let exporter = PgExporter::start(&db.url, &common::config(), Arc::new(Readiness::new()))
        .await
        .expect("exporter starts");
    exporter.set_personal_keys(PersonalKeys::new(["customer.*", "doc.owner"]));
    exporter.set_chain_linking(true);
    exporter
}

/// Events whose values exercise every part of the canonical form: NUL in text,
/// nested and unicode attributes, floats the `numeric` text rewrites, personal keys
/// (fixed, configured, the user id repeated), NULL and non-finite details.
fn rich_events(n: usize) -> Vec<ActivityEvent> {
    (0..n)
        .map(|i| {
            let mut e = common::event(i);
            let mut attributes = Map::new();
            attributes.insert("i".into(), json!(i));
            attributes.insert("f".into(), json!(1e-7 * i as f64));
            attributes.insert("big".into(), json!(1e20));
            attributes.insert("neg".into(), json!(-0.0));
            attributes.insert(
                "nested".into(),
                json!({"zz": [1, 2.5, null, true], "a": {"é": "ü\u{1}\u{8}\"\\"}}),
            );
            attributes.insert("nul\u{0}key".into(), json!("v\u{0}w"));
            attributes.insert("user.email".into(), json!(format!("u{i}@example.com")));
            attributes.insert("customer.name".into(), json!("Ada"));
            attributes.insert("doc.owner".into(), json!(e.user_id.clone()));
            attributes.insert("mirror".into(), json!(e.user_id.clone()));
            attributes.insert("😀".into(), json!("\u{2028}"));
            e.attributes = attributes;
            if i % 4 == 1 {
                e.tenant_id = None;
                e.duration_ms = Some(f64::NAN);
                e.session_id = None;
            }
            if i % 5 == 2 {
                e.error_message = Some("bad\u{0}byte".into());
                e.taxonomy_valid = Some(false);
                e.taxonomy_reason = Some("unknown action".into());
            }
            e
        })
        .collect()
}

async fn watermark(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT last_seq FROM chain_watermark WHERE name = 'activity_events'",
            &[],
        )
        .await
        .expect("watermark")
        .get(0)
}

async fn max_seq(client: &Client) -> i64 {
    client
        .query_one("SELECT coalesce(max(seq), 0) FROM activity_events", &[])
        .await
        .expect("max seq")
        .get(0)
}

/// Rows linked by a writer: their link was written in the row's own transaction,
/// so `chained_at` (that transaction's `now()`) equals the row's `received_at`.
async fn writer_linked(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM activity_events e JOIN activity_chain_links c \
                 ON c.tenant_id = e.tenant_id AND c.seq = e.seq \
             WHERE c.chained_at = e.received_at",
            &[],
        )
        .await
        .expect("writer-linked rows")
        .get(0)
}

/// Rows without exactly one link, and links without a row.
async fn unmatched(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM activity_events e WHERE (SELECT count(*) \
                 FROM activity_chain_links c WHERE c.tenant_id = e.tenant_id AND c.seq = e.seq) <> 1), \
             (SELECT count(*) FROM activity_chain_links c WHERE NOT EXISTS (SELECT 1 \
                 FROM activity_events e WHERE e.tenant_id = c.tenant_id AND e.seq = c.seq))",
            &[],
        )
        .await
        .expect("unmatched");
    (row.get(0), row.get(1))
}

/// Links stored one per row (`activity_chain`) and runs (`activity_chain_runs`).
async fn stored_links(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM activity_chain), \
                 (SELECT count(*) FROM activity_chain_runs)",
            &[],
        )
        .await
        .expect("stored links");
    (row.get(0), row.get(1))
}

async fn tenants(client: &Client) -> Vec<String> {
    client
        .query("SELECT DISTINCT tenant_id FROM activity_events", &[])
        .await
        .expect("tenants")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn verify_all(db: &TestDatabase) -> Vec<VerifyReport> {
    let mut client = db.client().await;
    let mut reports = Vec::new();
    for tenant in tenants(&client).await {
        reports.push(
            chain::verify(&mut client, &tenant, &trusted())
                .await
                .expect("verify"),
        );
    }
    reports
}

fn assert_intact(reports: &[VerifyReport]) {
    assert!(!reports.is_empty());
    for report in reports {
        assert_eq!(report.status, VerifyStatus::Intact, "{report:#?}");
        assert_eq!(report.unchained_rows, 0, "{report:#?}");
    }
}

/// Every link as (tenant, seq, prev_seq, prev_hash, row_hash).
type Link = (String, i64, Option<i64>, Vec<u8>, Vec<u8>);

async fn links(client: &Client) -> Vec<Link> {
    client
        .query(
            "SELECT tenant_id, seq, prev_seq, prev_hash, row_hash FROM activity_chain_links \
             ORDER BY tenant_id, seq",
            &[],
        )
        .await
        .expect("links")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test]
async fn writer_links_verify_and_equal_the_chainers() {
    let db = TestDatabase::migrated().await;
    let exporter = linking_exporter(&db).await;
    let events = rich_events(60);
    exporter
        .submit(events[..25].to_vec())
        .await
        .expect("batch 1");
    exporter
        .submit(events[25..].to_vec())
        .await
        .expect("batch 2");
    let mut client = db.client().await;
    // Linked at commit, without a chainer run.
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(writer_linked(&client).await, 60);
    assert_eq!(unmatched(&client).await, (0, 0));
    // Stored as one run per batch and tenant, no link row per event.
    let tenants_of = |events: &[ActivityEvent]| {
        let set: std::collections::HashSet<String> = events
            .iter()
            .map(|e| e.tenant_id.clone().unwrap_or_default())
            .collect();
        set.len() as i64
    };
    let stored = stored_links(&client).await;
    assert_eq!(
        stored,
        (0, tenants_of(&events[..25]) + tenants_of(&events[25..]))
    );
    // Checkpoints over the writer's heads, then verify.
    let report = job().run_once(&mut client).await.expect("chainer run");
    assert_eq!(report.rows, 0);
    assert!(report.checkpoints >= 3);
    assert_intact(&verify_all(&db).await);

    // The chainer, reading the stored rows back, computes the same links.
    let by_writer = links(&client).await;
    client
        .batch_execute(
            "DELETE FROM chain_checkpoints; DELETE FROM activity_chain_runs; \
             DELETE FROM chain_heads; UPDATE chain_watermark SET last_seq = 0",
        )
        .await
        .expect("reset chain");
    let report = job().run_once(&mut client).await.expect("chainer run");
    assert_eq!(report.rows, 60);
    assert_eq!(links(&client).await, by_writer);
    exporter.shutdown().await;
}

/// Writes `n` rows the way older versions do (lock, `nextval`, no link).
async fn old_style_rows(client: &mut Client, n: i32) {
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, action, outcome, attributes) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), now(), 'tenant-' || (i % 4), \
             'doc.read', 'success', jsonb_build_object('b', i, 'a', 1.50) \
         FROM generate_series(1, $1) AS i ORDER BY i",
        &[&n],
    )
    .await
    .expect("old-style insert");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_batch_meeting_a_behind_chain_links_a_short_backlog_and_leaves_a_long_one() {
    let db = TestDatabase::migrated().await;
    let exporter = linking_exporter(&db).await;
    let mut client = db.client().await;
    exporter.submit(rich_events(5)).await.expect("batch 1");
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(writer_linked(&client).await, 5);

    // A row of an older version (no link): the next batch reads it back and
    // links it before its own rows.
    old_style_rows(&mut client, 1).await;
    exporter.submit(rich_events(7)).await.expect("batch 2");
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(writer_linked(&client).await, 12);
    assert_eq!(unmatched(&client).await, (0, 0));

    // A backlog longer than a writer links: the batch is left to the chainer.
    old_style_rows(&mut client, 2_001).await;
    let before = watermark(&client).await;
    exporter.submit(rich_events(4)).await.expect("batch 3");
    assert_eq!(watermark(&client).await, before, "left to the chainer");
    assert_eq!(writer_linked(&client).await, 12);
    let mut chained = 0;
    loop {
        let report = job().run_once(&mut client).await.expect("chainer run");
        if report.rows == 0 {
            break;
        }
        chained += report.rows;
    }
    assert_eq!(chained, 2_005);
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    // Caught up again: the next batch is linked by its writer.
    exporter.submit(rich_events(3)).await.expect("batch 4");
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(writer_linked(&client).await, 15);

    // A rolled-back reservation leaves a gap without rows: still linked.
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT nextval('activity_events_seq')", &[])
        .await
        .expect("nextval");
    tx.rollback().await.expect("rollback");
    exporter.submit(rich_events(3)).await.expect("batch 5");
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(writer_linked(&client).await, 18);

    // A resend of a stored row goes through staging and is not linked by its
    // writer; the next batch links it.
    let mut resend = rich_events(2);
    let stored = client
        .query_one(
            "SELECT id, ts, tenant_id FROM activity_events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .expect("a stored row");
    resend[0].id = stored.get(0);
    resend[0].ts = stored.get(1);
    resend[0].tenant_id = Some(stored.get(2));
    let before = watermark(&client).await;
    exporter.submit(resend).await.expect("staged batch");
    assert_eq!(watermark(&client).await, before);
    assert!(max_seq(&client).await > before);
    exporter.submit(rich_events(2)).await.expect("batch 6");
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(writer_linked(&client).await, 20);
    assert_eq!(unmatched(&client).await, (0, 0));
    job().run_once(&mut client).await.expect("checkpoints");
    assert_intact(&verify_all(&db).await);
    exporter.shutdown().await;
}

#[tokio::test]
async fn two_instances_and_a_chainer_link_every_row_once() {
    let db = TestDatabase::migrated().await;
    let a = linking_exporter(&db).await;
    let b = linking_exporter(&db).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let chainer = job().spawn(db.url.clone(), Duration::from_millis(5), stopped);
    let mut tasks = Vec::new();
    for (w, exporter) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for round in 0..30 {
                let mut batch = rich_events(1 + (round * 7 + w) % 40);
                for e in &mut batch {
                    e.id = uuid::Uuid::new_v4();
                }
                exporter.submit(batch).await.expect("batch");
            }
        }));
    }
    // Older-version writes now and then, so the chainer (and the writers'
    // backlog reads) have work too.
    let mut client = db.client().await;
    for _ in 0..10 {
        old_style_rows(&mut client, 3).await;
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let _ = stop.send(true);
    chainer.await.expect("chainer stops");
    job().run_once(&mut client).await.expect("last chainer run");
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(unmatched(&client).await, (0, 0));
    let linked = writer_linked(&client).await;
    let written: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE action <> 'doc.read'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    eprintln!("writer-linked {linked} of {written} exporter rows");
    assert!(linked > 0, "the writers linked rows");
    assert_intact(&verify_all(&db).await);
    a.shutdown().await;
    b.shutdown().await;
}

/// Rows of tenant `acme` written by a linking exporter in batches of `sizes`
/// rows, one after the other, then a chainer run (checkpoints): the exporter,
/// a client and the rows' seqs in order.
async fn acme_batches(db: &TestDatabase, sizes: &[usize]) -> (PgExporter, Client, Vec<i64>) {
    let exporter = linking_exporter(db).await;
    let mut events = rich_events(sizes.iter().sum());
    for e in &mut events {
        e.tenant_id = Some("acme".into());
    }
    let mut rest = &events[..];
    for &size in sizes {
        let (batch, after) = rest.split_at(size);
        exporter.submit(batch.to_vec()).await.expect("batch");
        rest = after;
    }
    let mut client = db.client().await;
    job().run_once(&mut client).await.expect("checkpoint");
    let seqs: Vec<i64> = client
        .query("SELECT seq FROM activity_events ORDER BY seq", &[])
        .await
        .expect("seqs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (exporter, client, seqs)
}

#[tokio::test]
async fn tampering_with_writer_linked_rows_is_detected() {
    let db = TestDatabase::migrated().await;
    let (exporter, mut client, seqs) = acme_batches(&db, &[9]).await;
    assert_eq!(writer_linked(&client).await, 9);
    assert_intact(&verify_all(&db).await);

    // Public attribute changed.
    client
        .execute(
            "UPDATE activity_events SET attributes = attributes || '{\"i\": 999}' WHERE seq = $1",
            &[&seqs[3]],
        )
        .await
        .expect("tamper attributes");
    let r = chain::verify(&mut client, "acme", &trusted())
        .await
        .expect("verify");
    assert_problem(&r, seqs[3], ProblemKind::Altered);
    // A personal field changed (enters through the salted digest).
    client
        .execute(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = $1",
            &[&seqs[1]],
        )
        .await
        .expect("tamper user");
    let r = chain::verify(&mut client, "acme", &trusted())
        .await
        .expect("verify");
    assert_problem(&r, seqs[1], ProblemKind::Altered);
    // A row deleted.
    client
        .execute("DELETE FROM activity_events WHERE seq = $1", &[&seqs[0]])
        .await
        .expect("delete");
    let r = chain::verify(&mut client, "acme", &trusted())
        .await
        .expect("verify");
    assert_problem(&r, seqs[0], ProblemKind::Deleted);
    exporter.shutdown().await;
}

/// `tally_chain_link` and `tally_chain_links` answer, for links stored alone
/// (by the chainer) and in runs (by a writer), what the `activity_chain_links`
/// view lists.
#[tokio::test]
async fn the_link_functions_read_single_links_and_runs_alike() {
    let db = TestDatabase::migrated().await;
    let exporter = linking_exporter(&db).await;
    let mut events = rich_events(30);
    // A tenant with one row in its batch: the writer stores its link alone.
    events[20].tenant_id = Some("solo".into());
    exporter
        .submit(events[..12].to_vec())
        .await
        .expect("batch 1");
    let mut client = db.client().await;
    old_style_rows(&mut client, 7).await;
    job().run_once(&mut client).await.expect("chainer run");
    exporter
        .submit(events[12..].to_vec())
        .await
        .expect("batch 2");
    let solo: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_chain WHERE tenant_id = 'solo'",
            &[],
        )
        .await
        .expect("solo link")
        .get(0);
    assert_eq!(solo, 1);
    let (singles, runs) = stored_links(&client).await;
    assert!(
        singles >= 8 && runs >= 2,
        "{singles} single links, {runs} runs"
    );
    let all = links(&client).await;
    assert_eq!(all.len(), 37);
    for (tenant, seq, prev_seq, prev_hash, row_hash) in &all {
        let found: Vec<Link> = client
            .query(
                "SELECT tenant_id, seq, prev_seq, prev_hash, row_hash \
                 FROM tally_chain_link($1, $2)",
                &[tenant, seq],
            )
            .await
            .expect("tally_chain_link")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        let want = (
            tenant.clone(),
            *seq,
            *prev_seq,
            prev_hash.clone(),
            row_hash.clone(),
        );
        assert_eq!(found, vec![want]);
        let none = client
            .query(
                "SELECT 1 FROM tally_chain_link($1, $2)",
                &[tenant, &(seq + 1_000_000)],
            )
            .await
            .expect("no link");
        assert!(none.is_empty());
    }
    // Every range of every tenant, cut at each seq.
    let seqs: Vec<i64> = all.iter().map(|l| l.1).collect();
    for tenant in tenants(&client).await {
        for (after, upto) in [
            (i64::MIN, i64::MAX),
            (seqs[3], seqs[20]),
            (seqs[9], seqs[10]),
        ] {
            let want: Vec<&Link> = all
                .iter()
                .filter(|l| l.0 == tenant && l.1 > after && l.1 <= upto)
                .collect();
            let got: Vec<Link> = client
                .query(
                    "SELECT tenant_id, seq, prev_seq, prev_hash, row_hash \
                     FROM tally_chain_links($1, $2, $3) ORDER BY seq",
                    &[&tenant, &after, &upto],
                )
                .await
                .expect("tally_chain_links")
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect();
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want,
                "{tenant} ({after}, {upto}]"
            );
        }
    }
    assert_intact(&verify_all(&db).await);
    exporter.shutdown().await;
}

/// Tampering with the writer's runs themselves is found as with single links:
/// a hash changed inside a run, a link taken out of a run (its row kept), the
/// last link cut with its row, a forged run overlapping the stored ones, a
/// link taken out with its row (found at the run's next link).
#[tokio::test]
async fn tampering_with_a_run_of_links_is_detected() {
    let db = TestDatabase::migrated().await;
    let (exporter, mut client, seqs) = acme_batches(&db, &[5, 4]).await;
    let runs: i64 = client
        .query_one("SELECT count(*) FROM activity_chain_runs", &[])
        .await
        .expect("runs")
        .get(0);
    assert_eq!((seqs.len(), runs), (9, 2));
    assert_intact(&verify_all(&db).await);
    client
        .batch_execute("CREATE TABLE runs_kept AS SELECT * FROM activity_chain_runs")
        .await
        .expect("keep the runs");
    let first_run = "tenant_id = 'acme' AND first_seq = (SELECT min(first_seq) FROM runs_kept)";
    let cases = [
        (
            format!(
                "UPDATE activity_chain_runs SET row_hashes = set_byte(row_hashes, 32, \
                 get_byte(row_hashes, 32) # 1) WHERE {first_run}"
            ),
            seqs[1],
            ProblemKind::Altered,
        ),
        (
            format!(
                "UPDATE activity_chain_runs SET seqs = seqs[1:1] || seqs[3:], \
                 days = days[1:1] || days[3:], row_hashes = substring(row_hashes FROM 1 FOR 32) \
                 || substring(row_hashes FROM 65) WHERE {first_run}"
            ),
            seqs[1],
            ProblemKind::Inserted,
        ),
        (
            format!(
                "DELETE FROM activity_events WHERE seq = {last}; \
                 UPDATE activity_chain_runs SET last_seq = seqs[3], seqs = seqs[1:3], \
                 days = days[1:3], row_hashes = substring(row_hashes FROM 1 FOR 96) \
                 WHERE tenant_id = 'acme' AND last_seq = {last}; \
                 UPDATE chain_heads SET seq = {before}",
                last = seqs[8],
                before = seqs[7]
            ),
            seqs[8],
            ProblemKind::Deleted,
        ),
        (
            format!(
                "INSERT INTO activity_chain_runs (tenant_id, first_seq, last_seq, prev_seq, \
                 prev_hash, seqs, days, row_hashes) SELECT tenant_id, first_seq, {far}, NULL, \
                 prev_hash, ARRAY[first_seq, {far}], days[1:2], \
                 substring(row_hashes FROM 1 FOR 64) FROM runs_kept WHERE {first_run}",
                far = seqs[8] + 1_000
            ),
            seqs[0],
            ProblemKind::Inserted,
        ),
        (
            // A row deleted with its link: the run's next link no longer follows.
            format!(
                "DELETE FROM activity_events WHERE seq = {gone}; \
                 UPDATE activity_chain_runs SET seqs = seqs[1:2] || seqs[4:], \
                 days = days[1:2] || days[4:], row_hashes = substring(row_hashes FROM 1 FOR 64) \
                 || substring(row_hashes FROM 97) WHERE {first_run}",
                gone = seqs[2]
            ),
            seqs[3],
            ProblemKind::Altered,
        ),
    ];
    for (tamper, seq, kind) in cases {
        client.batch_execute(&tamper).await.expect("tamper");
        let r = chain::verify(&mut client, "acme", &trusted())
            .await
            .expect("verify");
        assert_problem(&r, seq, kind);
        // Back to the stored runs. Deleted rows stay deleted: each lies above
        // the problems of the cases after it.
        client
            .batch_execute(
                "DELETE FROM activity_chain_runs; \
                 INSERT INTO activity_chain_runs SELECT * FROM runs_kept",
            )
            .await
            .expect("restore");
    }
    exporter.shutdown().await;
}

/// A walk over more runs than one page holds (64) checks every link and row,
/// and a forged run that reaches back into an earlier page is reported.
#[tokio::test]
async fn a_walk_over_several_pages_of_runs_checks_them_all() {
    const BATCHES: usize = 70;
    let db = TestDatabase::migrated().await;
    let (exporter, mut client, seqs) = acme_batches(&db, &[4; BATCHES]).await;
    let runs: i64 = client
        .query_one("SELECT count(*) FROM activity_chain_runs", &[])
        .await
        .expect("runs")
        .get(0);
    assert_eq!(runs, BATCHES as i64);
    let report = chain::verify(&mut client, "acme", &trusted())
        .await
        .expect("verify");
    assert_eq!(report.status, VerifyStatus::Intact, "{report:#?}");
    assert_eq!(
        (report.rows_checked, report.links_checked),
        (4 * BATCHES as u64, 4 * BATCHES as u64)
    );
    // A run from a row of the tenth batch to far above the head: read on the
    // second page, it reaches back into the first.
    let reached = seqs[38];
    client
        .execute(
            "INSERT INTO activity_chain_runs (tenant_id, first_seq, last_seq, prev_seq, \
             prev_hash, seqs, days, row_hashes) SELECT tenant_id, $1, last_seq + 1000, NULL, \
             prev_hash, ARRAY[$1, last_seq + 1000], days[1:1] || days[1:1], \
             substring(row_hashes FROM 1 FOR 32) || substring(row_hashes FROM 1 FOR 32) \
             FROM activity_chain_runs ORDER BY last_seq DESC LIMIT 1",
            &[&reached],
        )
        .await
        .expect("forge a run");
    let report = chain::verify(&mut client, "acme", &trusted())
        .await
        .expect("verify");
    assert_problem(&report, reached, ProblemKind::Inserted);
    exporter.shutdown().await;
}

/// A writer whose role row security applies to (not a superuser, no BYPASSRLS:
/// `FORCE ROW LEVEL SECURITY` covers even the tables' owner) may not `COPY` into
/// `activity_events`, so its batches go through staging: the writer links none
/// of them, the chainer links them all, and the chain verifies intact.
#[tokio::test]
async fn a_batch_staged_under_row_security_is_linked_by_the_chainer() {
    let db = TestDatabase::create().await;
    let mut client = db.client().await;
    let role = format!("{}_rls", db.name);
    // The role migrates the database itself and so owns its tables (like the
    // private PostgreSQL's `tally`, but without BYPASSRLS). Membership in the
    // admin API's role is granted here, as its migration cannot grant it.
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE tally_api NOLOGIN; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
             DROP ROLE IF EXISTS {role}; \
             CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS; \
             GRANT tally_api TO {role}; \
             GRANT USAGE, CREATE ON SCHEMA public TO {role}"
        ))
        .await
        .expect("the role");
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20role%3D{role}", db.url);
    let events = rich_events(30);
    // Everything up to the role's removal is kept as a result, so that a failure
    // still drops the role (roles outlive the test's database).
    let outcome = async {
        let exporter = PgExporter::start(&url, &common::config(), Arc::new(Readiness::new()))
            .await
            .map_err(|e| format!("exporter as the role: {e}"))?;
        let (as_role, _) = tally_exporters::postgres::connect(&url)
            .await
            .map_err(|e| format!("connecting as the role: {e}"))?;
        let active: bool = as_role
            .query_one("SELECT row_security_active('activity_events')", &[])
            .await
            .map_err(|e| format!("row_security_active: {e}"))?
            .get(0);
        drop(as_role);
        exporter.set_personal_keys(PersonalKeys::new(["customer.*", "doc.owner"]));
        exporter.set_chain_linking(true);
        let written = async {
            exporter.submit(events[..10].to_vec()).await?;
            exporter.submit(events[10..].to_vec()).await
        }
        .await
        .map_err(|e| format!("batches as the role: {e:?}"));
        exporter.shutdown().await;
        written.map(|()| active)
    }
    .await;
    // The writers' staging tables (temporary) go when their sessions end.
    let temporary = format!(
        "SELECT count(*) FROM pg_class WHERE relpersistence = 't' \
         AND relowner = (SELECT oid FROM pg_roles WHERE rolname = '{role}')"
    );
    common::wait_until(
        "the role's sessions ended",
        Duration::from_secs(10),
        || async {
            client
                .query_one(&temporary, &[])
                .await
                .is_ok_and(|row| row.get::<_, i64>(0) == 0)
        },
    )
    .await;
    client
        .batch_execute(&format!(
            "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .await
        .expect("dropping the role");
    let active = outcome.expect("the batches are written");
    assert!(active, "row security applies to the writer's role");
    assert_eq!(common::count(&client).await, 30);
    // Not linked by the writer: the chain's watermark did not move.
    assert_eq!(watermark(&client).await, 0);
    assert_eq!(writer_linked(&client).await, 0);
    // The chainer links every row, and the chain verifies.
    let report = job().run_once(&mut client).await.expect("chainer run");
    assert_eq!(report.rows, 30);
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    assert_eq!(unmatched(&client).await, (0, 0));
    assert_eq!(writer_linked(&client).await, 0);
    assert_intact(&verify_all(&db).await);
}

/// A chainer run that is slow to store its checkpoints (here it waits for a lock
/// on `chain_checkpoints` that the test holds; in production, signing and the
/// checkpoint file's write and fsync) does not hold the watermark's row lock
/// meanwhile, so a linking writer, which moves the watermark while it holds the
/// activity lock, is not kept waiting by it.
#[tokio::test]
async fn a_writer_does_not_wait_for_a_chainer_storing_checkpoints() {
    let db = TestDatabase::migrated().await;
    let exporter = linking_exporter(&db).await;
    exporter.submit(rich_events(5)).await.expect("batch 1");
    let client = db.client().await;
    assert_eq!(writer_linked(&client).await, 5);
    let mut holder = db.client().await;
    let hold = holder.transaction().await.expect("begin");
    hold.batch_execute("LOCK TABLE chain_checkpoints IN EXCLUSIVE MODE")
        .await
        .expect("lock chain_checkpoints");
    let mut chainer_client = db.client().await;
    let chainer = tokio::spawn(async move { job().run_once(&mut chainer_client).await });
    common::wait_for_lock_wait(
        &client,
        "the chainer waits to store its checkpoints",
        "l.relation = 'chain_checkpoints'::regclass",
    )
    .await;
    // The chainer is inside its run (it cannot finish while the lock is held),
    // and a batch is written and linked meanwhile.
    tokio::time::timeout(Duration::from_secs(20), exporter.submit(rich_events(7)))
        .await
        .expect("the writer waited for the chainer's run")
        .expect("batch 2");
    assert!(
        !chainer.is_finished(),
        "the chainer still waits for the lock"
    );
    assert_eq!(writer_linked(&client).await, 12);
    assert_eq!(watermark(&client).await, max_seq(&client).await);
    hold.rollback().await.expect("release the lock");
    let report = chainer
        .await
        .expect("chainer task")
        .expect("the chainer's run");
    assert_eq!(report.rows, 0);
    assert!(report.checkpoints >= 1, "{report:?}");
    let mut client = client;
    job().run_once(&mut client).await.expect("checkpoints");
    assert_intact(&verify_all(&db).await);
    exporter.shutdown().await;
}

fn assert_problem(report: &VerifyReport, seq: i64, kind: ProblemKind) {
    assert_eq!(report.status, VerifyStatus::Tampered, "{report:#?}");
    let problem = report.first_problem.as_ref().expect("a problem");
    assert_eq!((problem.seq, problem.kind), (seq, kind), "{report:#?}");
}
