//! CPU time spent by one database's PostgreSQL backends, read from `/proc`
//! (the server runs on this machine). Unlike throughput, CPU seconds per row
//! barely move when other work shares the cores, so they compare write paths
//! on a busy machine.

use std::collections::HashMap;

use tokio_postgres::Client;

/// CPU seconds (user + system) of each backend connected to the client's
/// database, except the client's own.
#[derive(Debug, Clone, Default)]
pub struct BackendCpu(HashMap<i32, f64>);

impl BackendCpu {
    /// Reads the backends' CPU times now.
    pub async fn sample(client: &Client) -> anyhow::Result<BackendCpu> {
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(BackendCpu(
            rows.iter()
                .filter_map(|row| {
                    let pid: i32 = row.get(0);
                    process_cpu_seconds(pid).map(|cpu| (pid, cpu))
                })
                .collect(),
        ))
    }

    /// CPU seconds spent since `earlier` by the backends alive now (a backend
    /// that started meanwhile counts whole; one that ended meanwhile is lost).
    pub fn since(&self, earlier: &BackendCpu) -> f64 {
        self.0
            .iter()
            .map(|(pid, cpu)| cpu - earlier.0.get(pid).copied().unwrap_or(0.0))
            .sum()
    }
}

/// User + system CPU seconds of process `pid` (clock ticks of 1/100 s).
pub fn process_cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}
