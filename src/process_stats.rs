//! CPU time and resident memory of this process, read from `/proc/self` at
//! each scrape (Linux; elsewhere the figures stay 0): a collector in the
//! process-wide registry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// `tally_process_cpu_seconds_total` and `tally_process_resident_memory_bytes`.
/// A figure that cannot be read keeps the last one read (0 before any).
#[derive(Debug, Default)]
pub struct ProcessStats {
    /// CPU seconds last read, as f64 bits.
    cpu_seconds: AtomicU64,
    /// Resident bytes last read.
    resident_bytes: AtomicI64,
}

impl Collector for ProcessStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = cpu_seconds() {
            // A counter never goes down: keep the larger of the two readings.
            let _ = self
                .cpu_seconds
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |before| {
                    (cpu > f64::from_bits(before)).then_some(cpu.to_bits())
                });
        }
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.store(rss, Ordering::Relaxed);
        }
        let cpu = ConstCounter::new(f64::from_bits(self.cpu_seconds.load(Ordering::Relaxed)));
        cpu.encode(encoder.encode_descriptor(
            "tally_process_cpu",
            "CPU time used by the Tally process.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(self.resident_bytes.load(Ordering::Relaxed));
        rss.encode(encoder.encode_descriptor(
            "tally_process_resident_memory",
            "Resident memory of the Tally process.",
            Some(&Unit::Bytes),
            rss.metric_type(),
        )?)?;
        Ok(())
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
