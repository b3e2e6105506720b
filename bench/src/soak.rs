//! `tally-bench soak`: a release `tally` under paced OTLP load (10,000 records/s
//! by default) for `--minutes`, its resident memory sampled every
//! `--sample-secs`, to show that RSS stays bounded and flat.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tally_exporters::testing::TestDatabase;

use crate::collector::{Collector, CollectorOptions};
use crate::load::{self, LoadPlan, Transport};

/// `tally-bench soak` options.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// The collector binary (a release build).
    #[arg(long, default_value = "target/release/tally")]
    pub tally: std::path::PathBuf,
    /// Minutes of load.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Records per second offered (paced).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds between two RSS samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Transport of the clients.
    #[arg(long, default_value = "grpc")]
    pub transport: Transport,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Records per export request.
    #[arg(long, default_value_t = 100)]
    pub records_per_request: usize,
    /// Writer connections of the collector.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-soak.json")]
    pub json: std::path::PathBuf,
}

/// Runs the soak and prints the RSS series.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tally.exists(),
        "{} not found: build it with `cargo build --release -p tally`",
        args.tally.display()
    );
    let database = TestDatabase::migrated().await;
    let collector = Collector::start(
        &args.tally,
        &database.url,
        &CollectorOptions {
            writers: args.writers,
            ..CollectorOptions::default()
        },
    )?;
    let (_, idle_rss) = collector.rss_mib();
    let plan = LoadPlan {
        transport: args.transport,
        connections: args.connections,
        records_per_request: args.records_per_request,
        duration: Duration::from_secs(args.minutes * 60),
        target_rate: Some(args.rate),
        api_key: None,
        stagger: false,
    };
    let (grpc, http) = (collector.grpc.clone(), collector.http.clone());
    let started = Instant::now();
    let cpu_before = collector.cpu_seconds();
    let load = tokio::spawn(async move { load::run(&plan, &grpc, &http).await });
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let period = Duration::from_secs(args.sample_secs.max(1));
    while !load.is_finished() {
        tokio::time::sleep(period).await;
        let (rss, _) = collector.rss_mib();
        let at = started.elapsed().as_secs();
        eprintln!("t={at:>4}s RSS {rss:.1} MiB");
        samples.push((at, rss));
    }
    let mut result = load.await.context("load task")??;
    let cpu = collector.cpu_seconds() - cpu_before;
    let (_, peak) = collector.rss_mib();
    collector.stop();
    let rss: Vec<f64> = samples.iter().map(|(_, r)| *r).collect();
    // Flatness: the last third of the run against the first third after warm-up.
    let third = (rss.len() / 3).max(1);
    let early = crate::median(rss.iter().skip(1).take(third).copied().collect());
    let late = crate::median(rss.iter().rev().take(third).copied().collect());
    let min = rss.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rss.iter().copied().fold(0.0, f64::max);
    println!(
        "\nSoak: {} min at {:.0} records/s offered ({:?}), accepted {:.0} records/s, {} refused requests",
        args.minutes,
        args.rate,
        args.transport,
        result.records_per_second(),
        result.refused_requests
    );
    println!(
        "RSS MiB: idle {idle_rss:.1}, min {min:.1}, max {max:.1}, peak (VmHWM) {peak:.1}; median of first third {early:.1}, last third {late:.1}"
    );
    println!(
        "ack latency p50 / p99: {:.1} / {:.1} ms; collector CPU {:.2} s per 100k records",
        result.latency_ms(0.5),
        result.latency_ms(0.99),
        cpu / result.accepted_records.max(1) as f64 * 100_000.0
    );
    let report = json!({
        "benchmark": "soak",
        "minutes": args.minutes,
        "offered_records_per_second": args.rate,
        "accepted_records_per_second": result.records_per_second(),
        "refused_requests": result.refused_requests,
        "rss_mib": { "idle": idle_rss, "min": min, "max": max, "peak_hwm": peak,
                     "first_third_median": early, "last_third_median": late },
        "rss_samples": samples,
        "ack_latency_ms": { "p50": result.latency_ms(0.5), "p99": result.latency_ms(0.99) },
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("JSON: {}", args.json.display());
    Ok(())
}
