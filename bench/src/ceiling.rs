//! The physical limit in the same run: the same rows Tally would store, written
//! straight into `activity_events` with binary `COPY` by a minimal writer (no
//! receiver, no staging table, no lock, `seq` assigned client-side).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tally_exporters::postgres::{connect, create_partitions};
use tally_model::ActivityEvent;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};

use crate::cpu::{own_cpu_seconds, BackendCpu, MachineCpu};
use crate::workload;

const COPY_SQL: &str = "COPY activity_events (id, seq, ts, received_at, tenant_id, user_id, \
    session_id, action, outcome, resource_type, resource_id, service, trace_id, span_id, \
    attributes) FROM STDIN (FORMAT binary)";

const TYPES: [Type; 15] = [
    Type::UUID,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
];

/// Rows the benchmark workload turns into (classified exactly as Tally does).
pub fn rows(count: usize) -> Vec<ActivityEvent> {
    let mut rows = Vec::with_capacity(count);
    while rows.len() < count {
        let request = workload::traces(1000);
        rows.extend(tally_processors::classify_traces(&request, Utc::now()).events);
    }
    rows.truncate(count);
    rows
}

/// Writes `rows` with `connections` parallel COPY streams of `batch` rows;
/// returns rows per second.
pub async fn measure(
    database_url: &str,
    rows: Vec<ActivityEvent>,
    connections: usize,
    batch: usize,
) -> anyhow::Result<Ceiling> {
    let (admin, _) = connect(database_url).await?;
    let today = Utc::now().date_naive();
    create_partitions(
        &admin,
        today.pred_opt().unwrap_or(today),
        today.succ_opt().unwrap_or(today),
    )
    .await?;
    let chunks: Vec<Vec<ActivityEvent>> = {
        let per = rows.len().div_ceil(connections.max(1));
        let mut rows = rows;
        let mut out = Vec::new();
        while !rows.is_empty() {
            let rest = rows.split_off(per.min(rows.len()));
            out.push(rows);
            rows = rest;
        }
        out
    };
    let total: usize = chunks.iter().map(Vec::len).sum();
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in &chunks {
        clients.push(connect(database_url).await?.0);
    }
    let cpu_before = BackendCpu::sample(&admin).await?;
    let writer_cpu_before = own_cpu_seconds();
    let machine_before = MachineCpu::sample();
    let started = Instant::now();
    for (worker, (chunk, mut client)) in chunks.into_iter().zip(clients).enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut seq = (worker as i64) << 40;
            for part in chunk.chunks(batch) {
                let tx = client.transaction().await?;
                let sink = tx.copy_in(COPY_SQL).await?;
                let writer = BinaryCopyInWriter::new(sink, &TYPES);
                tokio::pin!(writer);
                let now = Utc::now();
                for e in part {
                    seq += 1;
                    let tenant = e.tenant_id.as_deref().unwrap_or("");
                    let attributes = Json(&e.attributes);
                    let row: [&(dyn ToSql + Sync); 15] = [
                        &e.id,
                        &seq,
                        &e.ts,
                        &now,
                        &tenant,
                        &e.user_id,
                        &e.session_id,
                        &e.action,
                        &e.outcome.as_str(),
                        &e.resource_type,
                        &e.resource_id,
                        &e.service,
                        &e.trace_id,
                        &e.span_id,
                        &attributes,
                    ];
                    writer.as_mut().write(&row).await?;
                }
                writer.as_mut().finish().await?;
                tx.commit().await?;
            }
            anyhow::Ok(client)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.context("ceiling writer")??);
    }
    let elapsed = started.elapsed().max(Duration::from_millis(1));
    let machine_after = MachineCpu::sample();
    let writer_cpu = own_cpu_seconds() - writer_cpu_before;
    // Sampled while the writers' backends are still connected.
    let db_cpu = BackendCpu::sample(&admin).await?.since(&cpu_before);
    drop(clients);
    let per_100k = |seconds: f64| seconds / total.max(1) as f64 * 100_000.0;
    Ok(Ceiling {
        rows_per_second: total as f64 / elapsed.as_secs_f64(),
        db_cpu_seconds_per_100k: per_100k(db_cpu),
        writer_cpu_seconds_per_100k: per_100k(writer_cpu),
        machine_cpu_seconds_per_100k: per_100k(machine_after.busy_seconds_since(&machine_before)),
        busy_cores: machine_after.busy_cores_since(&machine_before, elapsed.as_secs_f64()),
    })
}

/// What the ceiling writer measured.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub rows_per_second: f64,
    /// CPU seconds of the writers' PostgreSQL backends per 100,000 rows.
    pub db_cpu_seconds_per_100k: f64,
    /// CPU seconds of the writer itself (this process) per 100,000 rows.
    pub writer_cpu_seconds_per_100k: f64,
    /// Busy CPU seconds of the whole machine per 100,000 rows.
    pub machine_cpu_seconds_per_100k: f64,
    /// Busy cores of the whole machine on average while writing.
    pub busy_cores: f64,
}
