//! `tally-bench hostile`: what hostile admin-API callers cost the well-behaved ones
//! and ingest (issue 16's load test).
//!
//! A release `tally` runs with JWT auth on the admin API (each caller its own `sub`, so
//! `admin_api.limits` sees them apart). A paced OTLP load (`--ingest-rate` records/s,
//! gRPC) runs for the whole measurement. Each run has two phases of `--duration`
//! seconds on the same instance:
//!
//! 1. **quiet**: `--good` well-behaved callers, each a tenant reader, loop over three
//!    ordinary requests (a page of `/activity`, a 7-day `/tokens/usage` by day, `/stats`)
//!    one at a time;
//! 2. **hostile**: the same, plus `--hostile` callers as fast as they can, in three
//!    kinds, a third each: *wide windows* (the widest `/tokens/usage` by user the caps
//!    allow, alternating with a far wider one that must be refused), *slow SSE readers*
//!    (open live feeds, more than `max_streams_per_caller`, and never read them), and
//!    *random API keys* (each request a new unknown `tally_…` key).
//!
//! `--kinds wide,sse,keys` runs only the hostile callers of the kinds named (each caller
//! keeps its kind, so `--kinds wide` is the same third of `--hostile` as in the mixed
//! run): what each kind costs alone.
//!
//! Printed: the well-behaved callers' latency p50/p99 in each phase and the p99 ratio
//! (the target: within 2×), ingest's accepted rate in each phase, and what the
//! hostile callers got (answers by status). Medians over `--runs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{Duration as Days, Utc};
use serde_json::json;
use tally_exporters::testing::TestDatabase;
use tokio::sync::Mutex;

use crate::budgets::percentile;
use crate::collector::{Collector, CollectorOptions};
use crate::load::{self, LoadPlan, Transport};
use crate::median;
use crate::queries::{token_as as token, SECRET};

#[derive(clap::Args)]
pub struct HostileArgs {
    /// The collector binary (a release build).
    #[arg(long, default_value = "target/release/tally")]
    tally: std::path::PathBuf,
    /// Well-behaved callers.
    #[arg(long, default_value_t = 5)]
    good: usize,
    /// Hostile callers.
    #[arg(long, default_value_t = 50)]
    hostile: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Paced ingest during both phases, records per second (gRPC).
    #[arg(long, default_value_t = 2_000.0)]
    ingest_rate: f64,
    /// Seconds of ingest before the first phase, so the queries read real rows.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Runs; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The hostile kinds that run (`wide`, `sse`, `keys`, comma-separated); the callers
    /// of the other kinds stay idle.
    #[arg(long, value_delimiter = ',', default_values = ["wide", "sse", "keys"])]
    kinds: Vec<Kind>,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-hostile.json")]
    json: std::path::PathBuf,
    /// `admin_api.limits` entries for the collector, e.g.
    /// `db_time_per_caller_percent: 25` (default: none, the collector's defaults).
    #[arg(long)]
    admin_limits: Option<String>,
}

/// The three kinds of hostile callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// The widest allowed by-user `/tokens/usage`, alternating with a refused wider one.
    Wide,
    /// Live feeds opened and never read.
    Sse,
    /// A new random, well-formed API key per request.
    Keys,
}

impl Kind {
    /// The kind of hostile caller `index` (a third each).
    fn of(index: usize) -> Kind {
        match index % 3 {
            0 => Kind::Wide,
            1 => Kind::Sse,
            _ => Kind::Keys,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Wide => "wide",
            Kind::Sse => "sse",
            Kind::Keys => "keys",
        }
    }
}

/// One phase's figures.
#[derive(Debug, Default, Clone)]
struct Phase {
    good_requests: usize,
    good_errors: usize,
    good_p50_ms: f64,
    good_p99_ms: f64,
    ingest_records_per_second: f64,
    ingest_refused: u64,
    /// Hostile answers by kind and status.
    hostile: BTreeMap<String, usize>,
}

/// The well-behaved callers' loop until `until`: latencies in ms and errors.
async fn good_caller(
    admin: String,
    index: usize,
    until: Instant,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let tenant = format!("tenant-{}", index + 1);
    let bearer = token(
        &format!("good-{index}"),
        "activity:read tokens:read",
        &tenant,
    )?;
    let client = reqwest::Client::new();
    let today = Utc::now().date_naive();
    let week_ago = today - Days::days(7);
    let urls = [
        format!("{admin}/api/v1/activity?tenant={tenant}&limit=50"),
        format!("{admin}/api/v1/tokens/usage?tenant={tenant}&grain=day&from={week_ago}&to={today}"),
        format!("{admin}/api/v1/stats?tenant={tenant}"),
    ];
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut i = index;
    while Instant::now() < until {
        let url = &urls[i % urls.len()];
        i += 1;
        let started = Instant::now();
        let ok = match client.get(url).bearer_auth(&bearer).send().await {
            Ok(response) => {
                let ok = response.status().is_success();
                ok && response.bytes().await.is_ok()
            }
            Err(_) => false,
        };
        if ok {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        } else {
            errors += 1;
        }
    }
    Ok((latencies, errors))
}

/// What one hostile caller does until `until`; answers counted in `tally`.
async fn hostile_caller(
    admin: String,
    index: usize,
    until: Instant,
    tally: Arc<Mutex<BTreeMap<String, usize>>>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let sub = format!("hostile-{index}");
    let bearer = token(&sub, "activity:read tokens:read", "*")?;
    let count = |kind: &str, status: String| {
        let tally = tally.clone();
        let key = format!("{kind} {status}");
        async move {
            *tally.lock().await.entry(key).or_default() += 1;
        }
    };
    match Kind::of(index) {
        // Wide windows: the widest allowed by-user aggregate, then a refused one.
        Kind::Wide => {
            let today = Utc::now().date_naive();
            let widest = today - Days::days(399);
            let allowed = format!(
                "{admin}/api/v1/tokens/usage?grain=day&group_by=user&from={widest}&to={today}"
            );
            let refused = format!(
                "{admin}/api/v1/tokens/usage?grain=day&group_by=user&from=0001-01-01&to=9999-12-31"
            );
            let mut n = 0u64;
            while Instant::now() < until {
                let url = if n.is_multiple_of(2) {
                    &allowed
                } else {
                    &refused
                };
                n += 1;
                let status = match client.get(url).bearer_auth(&bearer).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16().to_string();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => "error".to_owned(),
                };
                count("wide-window", status).await;
            }
        }
        // Slow readers: open feeds and never read them; keep opening.
        Kind::Sse => {
            let url = format!("{admin}/api/v1/activity/stream");
            let mut open = Vec::new();
            while Instant::now() < until {
                match client.get(&url).bearer_auth(&bearer).send().await {
                    Ok(response) => {
                        count("slow-sse", response.status().as_u16().to_string()).await;
                        if response.status().is_success() {
                            // Held, unread, until the phase ends.
                            open.push(response);
                        } else {
                            let _ = response.bytes().await;
                        }
                    }
                    Err(_) => count("slow-sse", "error".to_owned()).await,
                }
                if open.len() >= 64 {
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            drop(open);
        }
        // Random keys: every request a new unknown key of the right shape
        // (`tally_<16 hex>_<64 hex>`), so the server must look it up.
        Kind::Keys => {
            let url = format!("{admin}/api/v1/activity?limit=1");
            while Instant::now() < until {
                let (a, b, c) = (
                    uuid::Uuid::new_v4().simple().to_string(),
                    uuid::Uuid::new_v4().simple().to_string(),
                    uuid::Uuid::new_v4().simple().to_string(),
                );
                let key = format!("tally_{}_{b}{c}", &a[..16]);
                let status = match client.get(&url).bearer_auth(&key).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16().to_string();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => "error".to_owned(),
                };
                count("random-key", status).await;
            }
        }
    }
    Ok(())
}

/// One phase on `collector`: good callers (and hostile ones if `hostile > 0`) against
/// the admin API while the paced ingest runs.
async fn phase(collector: &Collector, args: &HostileArgs, hostile: usize) -> anyhow::Result<Phase> {
    let admin = collector.admin.clone().context("no admin API address")?;
    let until = Instant::now() + Duration::from_secs(args.duration);
    let plan = LoadPlan {
        transport: Transport::Grpc,
        connections: 4,
        records_per_request: 50,
        duration: Duration::from_secs(args.duration),
        target_rate: Some(args.ingest_rate),
        api_key: None,
        stagger: false,
    };
    let (grpc, http) = (collector.grpc.clone(), collector.http.clone());
    let ingest = tokio::spawn(async move { load::run(&plan, &grpc, &http).await });
    let tally = Arc::new(Mutex::new(BTreeMap::new()));
    let mut hostile_tasks = Vec::new();
    for index in (0..hostile).filter(|i| args.kinds.contains(&Kind::of(*i))) {
        hostile_tasks.push(tokio::spawn(hostile_caller(
            admin.clone(),
            index,
            until,
            tally.clone(),
        )));
    }
    let mut good_tasks = Vec::new();
    for index in 0..args.good {
        good_tasks.push(tokio::spawn(good_caller(admin.clone(), index, until)));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in good_tasks {
        let (part, failed) = task.await.context("good caller")??;
        latencies.extend(part);
        errors += failed;
    }
    for task in hostile_tasks {
        task.await.context("hostile caller")??;
    }
    let ingest = ingest.await.context("ingest")??;
    latencies.sort_by(f64::total_cmp);
    let hostile = Arc::try_unwrap(tally)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    Ok(Phase {
        good_requests: latencies.len(),
        good_errors: errors,
        good_p50_ms: percentile(&latencies, 0.5),
        good_p99_ms: percentile(&latencies, 0.99),
        ingest_records_per_second: ingest.records_per_second(),
        ingest_refused: ingest.refused_requests,
        hostile,
    })
}

/// The 1-minute load average (`/proc/loadavg`; 0 where it cannot be read).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Runs the benchmark and prints its table.
pub async fn run(args: HostileArgs) -> anyhow::Result<()> {
    if !args.tally.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p tally`",
            args.tally.display()
        );
    }
    let mut runs: Vec<(Phase, Phase)> = Vec::new();
    // The 1-minute load average at the end of each run (the machine may be shared).
    let mut loads: Vec<f64> = Vec::new();
    for run in 1..=args.runs {
        let database = TestDatabase::migrated().await;
        let collector = Collector::start(
            &args.tally,
            &database.url,
            &CollectorOptions {
                admin_jwt_secret: Some(SECRET.to_owned()),
                admin_limits: args.admin_limits.clone(),
                ..CollectorOptions::default()
            },
        )?;
        let warmup = LoadPlan {
            transport: Transport::Grpc,
            connections: 4,
            records_per_request: 50,
            duration: Duration::from_secs(args.warmup),
            target_rate: Some(args.ingest_rate),
            api_key: None,
            stagger: false,
        };
        load::run(&warmup, &collector.grpc, &collector.http).await?;
        let quiet = phase(&collector, &args, 0).await?;
        let loaded = phase(&collector, &args, args.hostile).await?;
        collector.stop();
        let load = load_average();
        eprintln!("run {run}: quiet {quiet:?}\nrun {run}: hostile {loaded:?}\nrun {run}: load average {load:.2}");
        loads.push(load);
        runs.push((quiet, loaded));
    }
    let med = |f: &dyn Fn(&(Phase, Phase)) -> f64| median(runs.iter().map(f).collect());
    let quiet_p50 = med(&|r| r.0.good_p50_ms);
    let quiet_p99 = med(&|r| r.0.good_p99_ms);
    let loaded_p50 = med(&|r| r.1.good_p50_ms);
    let loaded_p99 = med(&|r| r.1.good_p99_ms);
    let ratio = med(&|r| r.1.good_p99_ms / r.0.good_p99_ms);
    let quiet_ingest = med(&|r| r.0.ingest_records_per_second);
    let loaded_ingest = med(&|r| r.1.ingest_records_per_second);
    let kinds: Vec<&str> = args.kinds.iter().map(|k| k.name()).collect();
    let active = (0..args.hostile)
        .filter(|i| args.kinds.contains(&Kind::of(*i)))
        .count();
    println!(
        "{} well-behaved vs {active} hostile callers (kinds {}, of {}), {} s per phase, ingest paced at {:.0} rec/s, {} runs (medians)\n",
        args.good, kinds.join(","), args.hostile, args.duration, args.ingest_rate, args.runs
    );
    println!(
        "| phase | good requests | good errors | good p50 ms | good p99 ms | ingest rec/s | ingest refused requests |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| quiet | {:.0} | {:.0} | {quiet_p50:.1} | {quiet_p99:.1} | {quiet_ingest:.0} | {:.0} |",
        med(&|r| r.0.good_requests as f64),
        med(&|r| r.0.good_errors as f64),
        med(&|r| r.0.ingest_refused as f64),
    );
    println!(
        "| hostile | {:.0} | {:.0} | {loaded_p50:.1} | {loaded_p99:.1} | {loaded_ingest:.0} | {:.0} |",
        med(&|r| r.1.good_requests as f64),
        med(&|r| r.1.good_errors as f64),
        med(&|r| r.1.ingest_refused as f64),
    );
    let ratios: Vec<f64> = runs
        .iter()
        .map(|r| r.1.good_p99_ms / r.0.good_p99_ms)
        .collect();
    println!("\nwell-behaved p99, hostile / quiet (median of per-run ratios): {ratio:.2}");
    println!("per-run ratios: {ratios:.2?}");
    println!("1-minute load average at the end of each run: {loads:.2?}");
    let last = runs.last().map(|r| r.1.hostile.clone()).unwrap_or_default();
    println!("hostile answers in the last run (kind status: count): {last:?}");
    let json = json!({
        "good": args.good,
        "hostile": active,
        "kinds": kinds,
        "duration_secs": args.duration,
        "ingest_rate": args.ingest_rate,
        "runs": args.runs,
        "quiet": { "p50_ms": quiet_p50, "p99_ms": quiet_p99, "ingest_records_per_second": quiet_ingest },
        "hostile_phase": { "p50_ms": loaded_p50, "p99_ms": loaded_p99, "ingest_records_per_second": loaded_ingest },
        "p99_ratio": ratio,
        "per_run": runs.iter().zip(&loads).map(|((quiet, loaded), load)| json!({
            "quiet": { "requests": quiet.good_requests, "errors": quiet.good_errors, "p50_ms": quiet.good_p50_ms, "p99_ms": quiet.good_p99_ms, "ingest_records_per_second": quiet.ingest_records_per_second },
            "hostile_phase": { "requests": loaded.good_requests, "errors": loaded.good_errors, "p50_ms": loaded.good_p50_ms, "p99_ms": loaded.good_p99_ms, "ingest_records_per_second": loaded.ingest_records_per_second },
            "p99_ratio": loaded.good_p99_ms / quiet.good_p99_ms,
            "load_average": load,
        })).collect::<Vec<_>>(),
        "load_average_per_run": loads,
        "hostile_answers_last_run": last,
    });
    std::fs::write(&args.json, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    Ok(())
}
