//! CPU time read from `/proc`: one database's PostgreSQL backends (the server
//! runs on this machine), one process, and the whole machine. Unlike
//! throughput, CPU seconds per row barely move when other work shares the
//! cores, so they compare write paths on a busy machine; the machine's busy
//! cores tell whether a run was bound by the CPU.

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

/// CPU seconds this process (the benchmark: load generator or ceiling writer)
/// has used so far.
pub fn own_cpu_seconds() -> f64 {
    i32::try_from(std::process::id())
        .ok()
        .and_then(process_cpu_seconds)
        .unwrap_or(f64::NAN)
}

/// Busy and total CPU seconds of the whole machine so far, summed over its
/// cores (`/proc/stat`; idle and I/O wait count as not busy).
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: f64,
}

impl MachineCpu {
    /// Reads the machine's CPU counters now.
    pub fn sample() -> MachineCpu {
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?.strip_prefix("cpu ")?.to_owned();
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal (guest time
                // is already inside user and nice).
                let all: f64 = ticks.iter().take(8).sum();
                let idle = ticks.get(3)? + ticks.get(4)?;
                Some((all - idle) / 100.0)
            })
            .unwrap_or(f64::NAN);
        MachineCpu { busy }
    }

    /// Busy cores on average between `earlier` and now, over `wall` seconds.
    pub fn busy_cores_since(&self, earlier: &MachineCpu, wall: f64) -> f64 {
        (self.busy - earlier.busy) / wall.max(1e-9)
    }

    /// Busy CPU seconds between `earlier` and now.
    pub fn busy_seconds_since(&self, earlier: &MachineCpu) -> f64 {
        self.busy - earlier.busy
    }
}
