//! Write-rate measurement (ignored by default; run in release):
//! `cargo test -p tally-exporters --release --test throughput -- --ignored --nocapture`

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{config, count, events};
use tally_exporters::postgres::{insert_activity_batch, PgExporter};
use tally_exporters::testing::TestDatabase;
use tally_model::Readiness;

const TOTAL: usize = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn exporter_write_rate() {
    for (writers, per_submit) in [(1, 1000), (2, 1000), (2, 100)] {
        let db = TestDatabase::migrated().await;
        let cfg = tally_config::PostgresConfig {
            writers,
            batch_max_rows: 5_000,
            batch_linger_ms: 5,
            queue_capacity_records: 100_000,
            ..config()
        };
        let exporter = PgExporter::start(&db.url, &cfg, Arc::new(Readiness::new()))
            .await
            .unwrap();
        let clients = 16;
        let total = clients * (TOTAL / clients / per_submit) * per_submit;
        let submissions: Vec<Vec<_>> = (0..clients)
            .map(|_| {
                (0..TOTAL / clients / per_submit)
                    .map(|_| events(per_submit))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let tasks: Vec<_> = submissions
            .into_iter()
            .map(|subs| {
                let exporter = exporter.clone();
                tokio::spawn(async move {
                    for batch in subs {
                        // Retry on Overloaded like a client would.
                        loop {
                            match exporter.submit(batch.clone()).await {
                                Ok(()) => break,
                                Err(tally_model::ConsumeError::Overloaded { .. }) => {
                                    tokio::task::yield_now().await
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed();
        exporter.shutdown().await;
        let stored = count(&db.client().await).await;
        assert_eq!(stored as usize, total);
        println!(
            "PgExporter: {writers} writer(s), {clients} clients x {per_submit}-event submits: \
             {total} rows in {:.2}s = {:.0} rows/s",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64()
        );
    }
}

#[tokio::test]
#[ignore = "measurement, not a check"]
async fn write_path_rate_one_connection() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let batches: Vec<_> = (0..TOTAL / 10_000).map(|_| events(10_000)).collect();
    let started = Instant::now();
    for batch in &batches {
        let tx = client.transaction().await.unwrap();
        insert_activity_batch(&tx, batch).await.unwrap();
        tx.commit().await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "insert_activity_batch, 10k-row batches, 1 connection: {:.0} rows/s",
        TOTAL as f64 / elapsed.as_secs_f64()
    );
}
