//! CPU time and resident memory of this process, read from `/proc/self` at
//! scrape time (Linux; elsewhere the figures stay 0).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Metrics;

/// CPU seconds already added to the counter, as f64 bits.
static REPORTED_CPU: AtomicU64 = AtomicU64::new(0);

/// Updates the process CPU counter and RSS gauge.
pub(crate) fn refresh(metrics: &Metrics) {
    if let Some(cpu) = cpu_seconds() {
        let before = f64::from_bits(REPORTED_CPU.swap(cpu.to_bits(), Ordering::Relaxed));
        if cpu > before {
            metrics.process_cpu_seconds.inc_by(cpu - before);
        }
    }
    if let Some(rss) = resident_bytes() {
        metrics.process_resident_memory_bytes.set(rss);
    }
}

/// Clock ticks per second for `/proc/self/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_SIZE: i64 = 4096;

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 overall: 11 and 12 after the state field.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE_SIZE)
}
