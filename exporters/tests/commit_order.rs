//! `seq` is safe to tail: commit order equals `seq` order, so a reader that
//! remembers the last `seq` it saw never skips a row committed later.
//!
//! The failure this guards against: with `seq` taken at insert time and no
//! lock, a slow transaction holding a low `seq` commits after a fast one with a
//! higher `seq` was already read, and the tailer (now past it) never sees it.
//! `without_the_lock_a_slow_committer_is_skipped` shows that failure
//! deterministically with exactly the tail query used below, so the stress test
//! is able to fail; `with_the_lock_the_slow_committer_is_seen` shows the
//! writer's lock prevents it. (Checked by hand as well: with the
//! `pg_advisory_xact_lock` taken out of the write path, the stress test fails on
//! every run with hundreds of skipped rows.)

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{event, events, wait_until};
use tally_exporters::postgres::insert_activity_batch;
use tally_exporters::testing::TestDatabase;
use tokio_postgres::Client;
use uuid::Uuid;

const TAIL: &str = "SELECT seq, id FROM activity_events WHERE seq > $1 ORDER BY seq LIMIT 500";

/// One tail step: new rows after `last`, advancing `last`.
async fn tail(client: &Client, last: &mut i64) -> Vec<Uuid> {
    let rows = client.query(TAIL, &[&*last]).await.expect("tail query");
    rows.iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            assert!(seq > *last, "seq goes forward");
            *last = seq;
            r.get(1)
        })
        .collect()
}

/// A tiny deterministic PRNG (xorshift), seeded per writer.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tailer_sees_every_committed_row_exactly_once() {
    let db = TestDatabase::migrated().await;
    let done = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..4u64 {
        let mut client = db.client().await;
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut committed = Vec::new();
            for round in 0..30 {
                let batch = events(1 + rng.below(40) as usize);
                let tx = client.transaction().await.unwrap();
                insert_activity_batch(&tx, &batch).await.unwrap();
                if rng.below(3) == 0 {
                    // A slow committer: holds its rows uncommitted for a while.
                    tokio::time::sleep(Duration::from_millis(50 + rng.below(150))).await;
                }
                if round % 9 == 4 {
                    tx.rollback().await.unwrap(); // seq gaps: never seen
                } else {
                    tx.commit().await.unwrap();
                    committed.extend(batch.iter().map(|e| e.id));
                }
            }
            committed
        }));
    }

    let tailer = tokio::spawn({
        let client = db.client().await;
        let done = done.clone();
        async move {
            let mut last = 0i64;
            let mut seen = Vec::new();
            let mut polls = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                let new = tail(&client, &mut last).await;
                polls += 1;
                if new.is_empty() {
                    if finished {
                        break; // a full pass after every writer committed
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen.extend(new);
            }
            (seen, polls)
        }
    });

    let mut committed = HashSet::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    done.store(true, Ordering::Release);
    let (seen, polls) = tailer.await.unwrap();

    let seen_set: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), seen_set.len(), "no row seen twice");
    let stored: HashSet<Uuid> = db
        .client()
        .await
        .query("SELECT id FROM activity_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, committed, "exactly the committed rows are stored");
    let missed = stored.difference(&seen_set).count();
    assert_eq!(missed, 0, "the tailer skipped {missed} committed rows");
    assert_eq!(seen_set, stored);
    assert!(
        polls > 20,
        "the tailer ran alongside the writers ({polls} polls)"
    );
}

async fn insert_without_lock(client: &Client, id: Uuid, days_ahead: i32) {
    client
        .execute(
            "INSERT INTO activity_events (id, seq, ts, action, outcome) \
             VALUES ($1, nextval('activity_events_seq'), now() + make_interval(days => $2), 'x', 'unknown')",
            &[&id, &days_ahead],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn without_the_lock_a_slow_committer_is_skipped() {
    let db = TestDatabase::migrated().await;
    let (slow, fast, reader) = (db.client().await, db.client().await, db.client().await);
    let (slow_id, fast_id) = (Uuid::new_v4(), Uuid::new_v4());

    slow.batch_execute("BEGIN").await.unwrap();
    insert_without_lock(&slow, slow_id, 0).await; // lower seq, not committed yet
    fast.batch_execute("BEGIN").await.unwrap();
    // Another day: the insert trigger of `tally_tail_days` (migration 20) locks
    // one row per table and day until commit, which would make this insert wait
    // for the slow one; on different days nothing orders the two commits.
    insert_without_lock(&fast, fast_id, 1).await;
    fast.batch_execute("COMMIT").await.unwrap();

    let mut last = 0;
    assert_eq!(tail(&reader, &mut last).await, [fast_id]);
    slow.batch_execute("COMMIT").await.unwrap();
    assert_eq!(tail(&reader, &mut last).await, Vec::<Uuid>::new());
    // The row is committed, but behind the tailer: skipped for good.
    let stored: i64 = reader
        .query_one("SELECT count(*) FROM activity_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lock_the_slow_committer_is_seen() {
    let db = TestDatabase::migrated().await;
    let (mut slow, reader, observer) = (db.client().await, db.client().await, db.client().await);
    let (first, second) = (vec![event(1)], vec![event(2)]);

    let slow_tx = slow.transaction().await.unwrap();
    insert_activity_batch(&slow_tx, &first).await.unwrap();

    // A second writer copies its rows, then waits for the lock the first holds.
    let fast = tokio::spawn({
        let mut client = db.client().await;
        let second = second.clone();
        async move {
            let tx = client.transaction().await.unwrap();
            insert_activity_batch(&tx, &second).await.unwrap();
            tx.commit().await.unwrap();
        }
    });
    let name = db.name.clone();
    wait_until(
        "second writer waits for the advisory lock",
        Duration::from_secs(20),
        || {
            let (observer, name) = (&observer, &name);
            async move {
                let n: i64 = observer
                    .query_one(
                        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = $1",
                        &[name],
                    )
                    .await
                    .unwrap()
                    .get(0);
                n == 1
            }
        },
    )
    .await;

    let mut last = 0;
    assert!(
        tail(&reader, &mut last).await.is_empty(),
        "nothing committed yet"
    );
    slow_tx.commit().await.unwrap();
    fast.await.unwrap();
    assert_eq!(tail(&reader, &mut last).await, [first[0].id, second[0].id]);
}

/// What a waiting writer's backend runs, as `pg_stat_activity` shows it.
async fn waiting_query(client: &Client, pid: i32) -> Option<String> {
    client
        .query_opt(
            "SELECT query FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .map(|row| row.get(0))
}

/// Two batches copy side by side and still commit in `seq` order: the second
/// writer's `COPY` is done while the first batch is open (it waited for the
/// first's whole transaction before it could reserve, when the lock was held
/// from the reservation to the commit), and it then waits for the first batch
/// to end before its turn. Rolled back, the first leaves a gap and lets it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_batch_copies_while_an_earlier_is_open_and_commits_after_it() {
    let db = TestDatabase::migrated().await;
    let observer = db.client().await;
    for end_first in ["commit", "rollback"] {
        let mut first_client = db.client().await;
        let first_tx = first_client.transaction().await.expect("begin");
        let first = events(5);
        insert_activity_batch(&first_tx, &first)
            .await
            .expect("first batch");
        let mut second_client = db.client().await;
        let second_pid: i32 = second_client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let second = events(7);
        let second_ids: Vec<Uuid> = second.iter().map(|e| e.id).collect();
        let writer = tokio::spawn(async move {
            let tx = second_client.transaction().await.expect("begin");
            insert_activity_batch(&tx, &second).await?;
            tx.commit().await.map_err(Into::into)
        });
        wait_until(
            "the second writer waits for the first batch's ticket",
            Duration::from_secs(20),
            || {
                let observer = &observer;
                async move {
                    waiting_query(observer, second_pid)
                        .await
                        .is_some_and(|q| q.contains("pg_advisory_xact_lock_shared"))
                }
            },
        )
        .await;
        // Past its `COPY`: its partition is written to, its rows not visible.
        let written: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE l.pid = $1 AND l.granted AND l.mode = 'RowExclusiveLock' \
                   AND c.relname LIKE 'activity_events_%'",
                &[&second_pid],
            )
            .await
            .expect("locks")
            .get(0);
        assert!(written >= 1, "the second batch has copied its rows");
        let visible: i64 = observer
            .query_one(
                "SELECT count(*) FROM activity_events WHERE id = ANY($1)",
                &[&second_ids],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(visible, 0, "not committed before the first batch ends");
        assert!(!writer.is_finished());
        let first_max: i64 = first_tx
            .query_one("SELECT max(seq) FROM activity_events", &[])
            .await
            .expect("max seq")
            .get(0);
        if end_first == "commit" {
            first_tx.commit().await.expect("commit the first");
        } else {
            first_tx.rollback().await.expect("roll the first back");
        }
        let result: Result<(), tally_exporters::postgres::PgError> =
            writer.await.expect("writer task");
        result.expect("the second batch commits once the first has ended");
        let seqs: Vec<i64> = observer
            .query(
                "SELECT seq FROM activity_events WHERE id = ANY($1) ORDER BY seq",
                &[&second_ids],
            )
            .await
            .expect("seqs")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(seqs.len(), 7, "{end_first}: the second batch is stored");
        assert!(
            seqs.iter().all(|s| *s > first_max),
            "{end_first}: the later batch's seq follows the earlier one's"
        );
    }
}
