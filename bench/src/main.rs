//! `tally-bench`: Tally's benchmarks, printed as a table and written as JSON.
//!
//! ```sh
//! cargo build --release -p tally -p tally-bench
//! target/release/tally-bench ingest --runs 3
//! ```
//!
//! `soak` runs a collector at a paced 10,000 records/s and samples its RSS
//! (see `soak.rs`).
//!
//! `pipeline` measures the collector's CPU per record apart from the database
//! (see `pipeline.rs`).
//!
//! `budgets` measures `/budgets/check` answered from the budget job's memory
//! (see `budgets.rs`).
//!
//! `hostile` measures what 50 hostile admin-API callers cost 5 well-behaved ones
//! and ingest (see `hostile.rs`).
//!
//! `lifecycle` measures erasure and archives on a generated data set (see
//! `lifecycle.rs`).
//!
//! `queries` measures the admin API's query latency on a generated data set
//! (see `queries.rs`); `feed` measures the live feed's commit-to-client latency
//! (see `feed.rs`).
//!
//! `console` measures the web console in headless Chromium: first-load weight,
//! time to interactive on the `queries` data set, and the live view under
//! 1,000 events/s (see `console.rs`).
//!
//! `ingest` runs, for each transport, a release `tally` on a fresh database and
//! offers it OTLP load at full speed (accepted records/s, collector CPU per 100k
//! records, peak RSS) and then paced at 50% and 90% of that maximum (ack latency
//! p50/p99); then, in the same run, the PostgreSQL ceiling: the same rows written
//! straight into `activity_events` with binary COPY. Figures are medians over
//! `--runs`.

mod budgets;
mod ceiling;
mod collector;
mod console;
mod cpu;
mod feed;
mod gen;
mod hostile;
mod lifecycle;
mod load;
mod pipeline;
mod queries;
mod soak;
mod workload;

/// The collector's allocator, so `pipeline` measures what `tally` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tally_exporters::testing::TestDatabase;

use collector::{Collector, CollectorOptions};
use cpu::{own_cpu_seconds, BackendCpu, MachineCpu};
use load::{LoadPlan, Transport};

#[derive(Parser)]
#[command(name = "tally-bench", about = "Tally's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// OTLP ingest against a running release build, and the PostgreSQL ceiling.
    Ingest(IngestArgs),
    /// Admin API query latency on a generated data set (10M + 10M rows by default).
    Queries(queries::QueriesArgs),
    /// Live-feed latency: commit to SSE client, with 1, 100 and 1,000 clients.
    Feed(feed::FeedArgs),
    /// The collector's CPU per record apart from the database: decode, redact,
    /// classify, tokens, validate and COPY encoding on one thread.
    Pipeline(pipeline::PipelineArgs),
    /// RSS over a long paced run (10,000 records/s for 10 minutes by default).
    Soak(soak::SoakArgs),
    /// `GET /api/v1/budgets/check` latency while the budget job refreshes, and
    /// the cost of one refresh.
    Budgets(budgets::BudgetsArgs),
    /// 50 hostile admin-API callers (wide windows, unread live feeds, random keys)
    /// against 5 well-behaved ones while ingest runs: the well-behaved p99 and the
    /// ingest rate, quiet vs hostile.
    Hostile(hostile::HostileArgs),
    /// The web console in headless Chromium: first-load weight, time to
    /// interactive on the `queries` data set, and the live view's memory and
    /// rows under 1,000 events/s.
    Console(console::ConsoleArgs),
    /// Issue 22's lifecycle figures: erasing 1M rows of one user in a 10M-row
    /// table, and writing + verifying the archive of a 1M-row day.
    Lifecycle(lifecycle::LifecycleArgs),
}

#[derive(clap::Args)]
struct IngestArgs {
    /// The collector binary (a release build).
    #[arg(long, default_value = "target/release/tally")]
    tally: PathBuf,
    /// Seconds of full-speed load per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of paced load at 50% and 90% of the maximum.
    #[arg(long, default_value_t = 5)]
    paced_duration: u64,
    /// Start every paced client at once, as before 2026-12-07 (each period then
    /// opens with one request per connection in a burst); by default their
    /// phases are spread evenly over the period.
    #[arg(long)]
    aligned_pacing: bool,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Records per export request.
    #[arg(long, default_value_t = 100)]
    records_per_request: usize,
    /// Writer connections for Tally and for the ceiling writer.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// `exporters.postgres.batch_max_rows` of the collector.
    #[arg(long, default_value_t = 5_000)]
    batch_max_rows: usize,
    /// Run the collector without the tamper-evidence chainer (to measure its cost).
    #[arg(long)]
    no_chain: bool,
    /// Require ingest keys (`receivers.otlp.auth.required: true`); every client
    /// request carries a `*` key, as a gateway would (to measure what authentication costs).
    #[arg(long)]
    auth: bool,
    /// Rows written by the ceiling writer per run.
    #[arg(long, default_value_t = 200_000)]
    ceiling_rows: usize,
    /// Tenants the records spread over (record n belongs to tenant n mod this).
    #[arg(long, default_value_t = 1_000)]
    tenants: u64,
    /// Runs; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Transports to measure (`rest`: REST ingest, JSON arrays on the HTTP port).
    #[arg(long, value_delimiter = ',', default_value = "grpc,http")]
    transports: Vec<Transport>,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-ingest.json")]
    json: PathBuf,
}

/// One transport's figures from one run.
#[derive(Debug, Default, Clone)]
struct Figures {
    records_per_second: f64,
    refused_requests: u64,
    cpu_seconds_per_100k: f64,
    /// CPU seconds of the collector's PostgreSQL backends per 100k records.
    db_cpu_seconds_per_100k: f64,
    /// CPU seconds of the load generator (this process) per 100k records.
    load_cpu_seconds_per_100k: f64,
    /// Busy CPU seconds of the whole machine per 100k records.
    machine_cpu_seconds_per_100k: f64,
    /// Busy cores of the whole machine on average at full speed.
    busy_cores: f64,
    peak_rss_mib: f64,
    p50_at_50_ms: f64,
    p99_at_50_ms: f64,
    p50_at_90_ms: f64,
    p99_at_90_ms: f64,
    /// Mean rows per committed batch at full speed.
    batch_rows: f64,
    /// Mean time per committed batch at full speed (ms).
    batch_ms: f64,
}

/// The median of the finite values (of an even count, the upper middle one);
/// NaN when there are none. The benchmarks' one median.
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of one figure over runs.
fn median_by<T>(runs: &[T], figure: impl Fn(&T) -> f64) -> f64 {
    median(runs.iter().map(figure).collect())
}

async fn measure_transport(args: &IngestArgs, transport: Transport) -> anyhow::Result<Figures> {
    let database = TestDatabase::migrated().await;
    let collector = Collector::start(
        &args.tally,
        &database.url,
        &CollectorOptions {
            writers: args.writers,
            batch_max_rows: args.batch_max_rows,
            chain: !args.no_chain,
            auth_required: args.auth,
            ..CollectorOptions::default()
        },
    )?;
    let (observer, _) = tally_exporters::postgres::connect(&database.url).await?;
    let api_key = if args.auth {
        let scopes = [tally_exporters::apikeys::SCOPE_INGEST.to_owned()];
        let created =
            tally_exporters::apikeys::create(&observer, "*", &scopes, Some("tally-bench")).await?;
        Some(created.key)
    } else {
        None
    };
    let plan = LoadPlan {
        transport,
        connections: args.connections,
        records_per_request: args.records_per_request,
        duration: Duration::from_secs(args.duration),
        target_rate: None,
        api_key,
        stagger: !args.aligned_pacing,
    };
    let cpu_before = collector.cpu_seconds();
    let db_cpu_before = BackendCpu::sample(&observer).await?;
    let batches_before = collector.batch_totals().await;
    let load_cpu_before = own_cpu_seconds();
    let machine_before = MachineCpu::sample();
    let full = load::run(&plan, &collector.grpc, &collector.http).await?;
    let machine_after = MachineCpu::sample();
    let load_cpu = own_cpu_seconds() - load_cpu_before;
    let cpu_after = collector.cpu_seconds();
    let db_cpu = BackendCpu::sample(&observer).await?.since(&db_cpu_before);
    let (batch_rows, batch_ms) = match (batches_before, collector.batch_totals().await) {
        (Some((n0, r0, s0)), Some((n1, r1, s1))) if n1 > n0 => {
            ((r1 - r0) / (n1 - n0), (s1 - s0) / (n1 - n0) * 1000.0)
        }
        _ => (f64::NAN, f64::NAN),
    };
    let max_rate = full.records_per_second();
    let mut paced = Vec::new();
    for share in [0.5, 0.9] {
        let plan = LoadPlan {
            duration: Duration::from_secs(args.paced_duration),
            target_rate: Some(max_rate * share),
            ..plan.clone()
        };
        paced.push(load::run(&plan, &collector.grpc, &collector.http).await?);
    }
    let (_, peak_rss) = collector.rss_mib();
    collector.stop();
    let per_100k = |seconds: f64| seconds / full.accepted_records.max(1) as f64 * 100_000.0;
    Ok(Figures {
        records_per_second: max_rate,
        refused_requests: full.refused_requests,
        cpu_seconds_per_100k: per_100k(cpu_after - cpu_before),
        db_cpu_seconds_per_100k: per_100k(db_cpu),
        load_cpu_seconds_per_100k: per_100k(load_cpu),
        machine_cpu_seconds_per_100k: per_100k(machine_after.busy_seconds_since(&machine_before)),
        busy_cores: machine_after.busy_cores_since(&machine_before, full.elapsed.as_secs_f64()),
        peak_rss_mib: peak_rss,
        batch_rows,
        batch_ms,
        p50_at_50_ms: paced[0].latency_ms(0.5),
        p99_at_50_ms: paced[0].latency_ms(0.99),
        p50_at_90_ms: paced[1].latency_ms(0.5),
        p99_at_90_ms: paced[1].latency_ms(0.99),
    })
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    workload::set_tenants(args.tenants);
    anyhow::ensure!(
        args.tally.exists(),
        "{} not found: build it with `cargo build --release -p tally`",
        args.tally.display()
    );
    let mut per_transport: Vec<(Transport, Vec<Figures>)> =
        args.transports.iter().map(|t| (*t, Vec::new())).collect();
    let mut ceilings = Vec::new();
    for run in 1..=args.runs {
        for (transport, figures) in per_transport.iter_mut() {
            let measured = measure_transport(&args, *transport)
                .await
                .with_context(|| format!("run {run}, {transport:?}"))?;
            eprintln!("run {run} {transport:?}: {measured:?}");
            figures.push(measured);
        }
        let database = TestDatabase::migrated().await;
        let rows = ceiling::rows(args.ceiling_rows);
        let ceiling = ceiling::measure(&database.url, rows, args.writers, 10_000).await?;
        eprintln!("run {run} ceiling: {ceiling:?}");
        ceilings.push(ceiling);
    }
    let ceiling_db_cpu = median_by(&ceilings, |c| c.db_cpu_seconds_per_100k);
    let ceiling_writer_cpu = median_by(&ceilings, |c| c.writer_cpu_seconds_per_100k);
    let ceiling_machine_cpu = median_by(&ceilings, |c| c.machine_cpu_seconds_per_100k);
    let ceiling_busy_cores = median_by(&ceilings, |c| c.busy_cores);
    let ceilings: Vec<f64> = ceilings.iter().map(|c| c.rows_per_second).collect();
    let ceiling = median(ceilings.clone());
    println!(
        "\nTally ingest, median of {} runs ({} connections x {} records/request, {} writers, {} tenants)\n",
        args.runs, args.connections, args.records_per_request, args.writers, args.tenants
    );
    println!(
        "| transport | accepted rec/s | / ceiling | CPU s per 100k rec | DB CPU s per 100k rec (/ ceiling) | peak RSS MiB | p50/p99 ms @50% | p50/p99 ms @90% |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json_transports = serde_json::Map::new();
    for (transport, figures) in &per_transport {
        let m = |f: fn(&Figures) -> f64| median_by(figures, f);
        let rate = m(|f| f.records_per_second);
        println!(
            "| {transport:?} | {rate:.0} | {:.2} | {:.3} | {:.3} ({:.2}) | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
            rate / ceiling,
            m(|f| f.cpu_seconds_per_100k),
            m(|f| f.db_cpu_seconds_per_100k),
            m(|f| f.db_cpu_seconds_per_100k) / ceiling_db_cpu,
            m(|f| f.peak_rss_mib),
            m(|f| f.p50_at_50_ms),
            m(|f| f.p99_at_50_ms),
            m(|f| f.p50_at_90_ms),
            m(|f| f.p99_at_90_ms),
        );
        json_transports.insert(
            format!("{transport:?}").to_lowercase(),
            json!({
                "records_per_second": rate,
                "ratio_to_ceiling": rate / ceiling,
                "cpu_seconds_per_100k_records": m(|f| f.cpu_seconds_per_100k),
                "db_cpu_seconds_per_100k_records": m(|f| f.db_cpu_seconds_per_100k),
                "db_cpu_ratio_to_ceiling": m(|f| f.db_cpu_seconds_per_100k) / ceiling_db_cpu,
                "load_generator_cpu_seconds_per_100k_records": m(|f| f.load_cpu_seconds_per_100k),
                "machine_cpu_seconds_per_100k_records": m(|f| f.machine_cpu_seconds_per_100k),
                "machine_busy_cores": m(|f| f.busy_cores),
                "cpu_bound_ratio_estimate": ceiling_machine_cpu / m(|f| f.machine_cpu_seconds_per_100k),
                "peak_rss_mib": m(|f| f.peak_rss_mib),
                "ack_latency_ms": {
                    "at_50_percent": { "p50": m(|f| f.p50_at_50_ms), "p99": m(|f| f.p99_at_50_ms) },
                    "at_90_percent": { "p50": m(|f| f.p50_at_90_ms), "p99": m(|f| f.p99_at_90_ms) },
                },
                "batch_rows_mean": m(|f| f.batch_rows),
                "batch_ms_mean": m(|f| f.batch_ms),
                "refused_requests_at_full_speed": figures.iter().map(|f| f.refused_requests).collect::<Vec<_>>(),
                "runs": figures.iter().map(|f| f.records_per_second).collect::<Vec<_>>(),
            }),
        );
    }
    println!(
        "| ceiling (binary COPY, {} connections) | {ceiling:.0} | 1.00 | | {ceiling_db_cpu:.3} (1.00) | | | |",
        args.writers
    );
    println!(
        "\nCPU seconds per 100k records at full speed (machine: every process on it; \
         if both runs keep the cores busy, tally / ceiling ~ ceiling's machine CPU / Tally's)\n"
    );
    println!(
        "| run | load generator / ceiling writer | collector | DB backends | machine | busy cores | CPU-bound ratio estimate |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (transport, figures) in &per_transport {
        let m = |f: fn(&Figures) -> f64| median_by(figures, f);
        println!(
            "| {transport:?} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            m(|f| f.load_cpu_seconds_per_100k),
            m(|f| f.cpu_seconds_per_100k),
            m(|f| f.db_cpu_seconds_per_100k),
            m(|f| f.machine_cpu_seconds_per_100k),
            m(|f| f.busy_cores),
            ceiling_machine_cpu / m(|f| f.machine_cpu_seconds_per_100k),
        );
    }
    println!(
        "| ceiling | {ceiling_writer_cpu:.3} | | {ceiling_db_cpu:.3} | {ceiling_machine_cpu:.3} | {ceiling_busy_cores:.2} | 1.00 |\n"
    );
    for (transport, figures) in &per_transport {
        let m = |f: fn(&Figures) -> f64| median_by(figures, f);
        println!(
            "{transport:?}: mean batch at full speed {:.0} rows, {:.1} ms to write and commit",
            m(|f| f.batch_rows),
            m(|f| f.batch_ms)
        );
    }
    let report = json!({
        "benchmark": "ingest",
        "runs": args.runs,
        "connections": args.connections,
        "records_per_request": args.records_per_request,
        "auth_required": args.auth,
        "paced_clients": if args.aligned_pacing { "aligned" } else { "staggered" },
        "writers": args.writers,
        "tenants": args.tenants,
        "ceiling_rows_per_second": ceiling,
        "ceiling_runs": ceilings,
        "ceiling_db_cpu_seconds_per_100k_rows": ceiling_db_cpu,
        "ceiling_writer_cpu_seconds_per_100k_rows": ceiling_writer_cpu,
        "ceiling_machine_cpu_seconds_per_100k_rows": ceiling_machine_cpu,
        "ceiling_machine_busy_cores": ceiling_busy_cores,
        "transports": json_transports,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(args) => ingest(args).await,
        Command::Queries(args) => queries::run(args).await,
        Command::Feed(args) => feed::run(args).await,
        Command::Pipeline(args) => pipeline::run(args),
        Command::Soak(args) => soak::run(args).await,
        Command::Budgets(args) => budgets::run(args).await,
        Command::Hostile(args) => hostile::run(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Lifecycle(args) => lifecycle::run(args).await,
    }
}
