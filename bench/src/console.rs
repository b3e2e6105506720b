//! `tally-bench console`: the console's weight and speed in headless Chromium
//! (Debian's `chromium` through `chromedriver`, the `tally-browser` client the
//! browser tests use).
//!
//! - **load** (against `tally-bench queries`' data set, 10M + 10M rows by
//!   default, with its 100k-row unfolded tail; the admin API in-process as in
//!   `queries`): `--loads` times, a fresh browser profile (empty cache) opens
//!   `/console#access_token=…` (an `admin`, `*` JWT) on the Live view; then,
//!   with the cache cleared, `/console#usage`; then both again with the cache
//!   warm. *Interactive* is the page's own signal, a `performance.mark` whose
//!   time is counted from navigation start: `tally:live-ready` when the first
//!   activity page (50 rows) is in the live table, `tally:usage-ready` when the
//!   Usage view is drawn and usable and its reads are sent, `tally:usage-cards` when
//!   every stat card holds the window's figure (7 days), `tally:usage-complete`
//!   when the charts and top lists are drawn too.
//! - **weight**: from each cold load's Resource Timing entries, the HTML and
//!   every file it fetched (not the API calls): bytes as transferred
//!   (`encodedBodySize`, compressed as the browser negotiated) and decoded;
//!   each file is fetched again with Chromium's `Accept-Encoding` to show the
//!   encoding served and that the sizes agree.
//! - **live**: a release `tally` on a fresh database, the Live view open, and
//!   OTLP/gRPC load paced to `--rate` activity events/s for `--live-secs`;
//!   every `--sample-secs` the tab's JS heap (DevTools `Runtime.getHeapUsage`),
//!   its DOM counters (`Memory.getDOMCounters`), the rows in the live table and
//!   the page's counts (received, drawn, not drawn) are sampled with the newest
//!   committed `seq`; before and after the minute the heap is measured after a
//!   forced garbage collection. Repeated `--live-runs` times.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};
use tally_browser::Browser;
use tally_exporters::testing::TestDatabase;

use crate::collector::{Collector, CollectorOptions};
use crate::load::{self, LoadPlan, Transport};
use crate::queries::{self, QueriesArgs};
use crate::{median, median_by};

/// Share of the load generator's records that become activity rows: every
/// fourth request carries log records (all activity), the others spans of
/// which every fifth is a GenAI call (a token row only): (3 × 4/5 + 1) / 4.
const ACTIVITY_SHARE: f64 = 0.85;

/// Chromium's `Accept-Encoding` on a page load.
const BROWSER_ACCEPT_ENCODING: &str = "gzip, deflate, br, zstd";

/// The page-weight target of the console (compressed bytes of the first load).
const WEIGHT_TARGET_BYTES: f64 = 300.0 * 1024.0;

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Page weight and time to interactive against the large data set.
    Load,
    /// The live view under paced load.
    Live,
}

/// `tally-bench console` options.
#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// The collector binary (a release build), for the live part.
    #[arg(long, default_value = "target/release/tally")]
    pub tally: PathBuf,
    /// Activity rows (and as many token rows) of the data set the page loads
    /// against (`tally-bench queries`' generator and database).
    #[arg(long, default_value_t = 10_000_000)]
    pub size: u64,
    /// Days of the data set (ending today, UTC).
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// The data set's database (shared with `tally-bench queries`).
    #[arg(long, default_value = "tally_bench_queries")]
    pub database: String,
    /// Unfolded rows above the rollup watermarks (as `tally-bench queries --tail`).
    #[arg(long, default_value_t = 100_000)]
    pub tail: i64,
    /// Page loads of each kind (cold and warm, Live and Usage); figures are medians.
    #[arg(long, default_value_t = 5)]
    pub loads: usize,
    /// Activity events per second committed during the live part.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Seconds of load per live run.
    #[arg(long, default_value_t = 60)]
    pub live_secs: u64,
    /// Live runs; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub live_runs: usize,
    /// Seconds between two samples of the tab during a live run.
    #[arg(long, default_value_t = 2)]
    pub sample_secs: u64,
    /// Parts to run.
    #[arg(long, value_delimiter = ',', default_value = "load,live")]
    pub parts: Vec<Part>,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-console.json")]
    pub json: PathBuf,
}

/// `tally-bench console`.
pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let (chromium, driver) = tally_browser::locate()?;
    let mut report = serde_json::Map::new();
    report.insert("benchmark".into(), json!("console"));
    if args.parts.contains(&Part::Load) {
        report.insert("load".into(), load_part(&args, &chromium, &driver).await?);
    }
    if args.parts.contains(&Part::Live) {
        report.insert("live".into(), live_part(&args, &chromium, &driver).await?);
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&Value::Object(report))?,
    )
    .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    Ok(())
}

/// The time of the page's mark `name` (ms from navigation start), waiting up to `deadline`.
async fn mark(browser: &Browser, name: &str, deadline: Duration) -> anyhow::Result<f64> {
    let value = browser
        .wait_js(
            &format!("the page's mark {name}"),
            deadline,
            "const e = performance.getEntriesByName(arguments[0], 'mark')[0]; return e ? e.startTime : null;",
            json!([name]),
        )
        .await?;
    value
        .as_f64()
        .with_context(|| format!("mark {name} is not a number: {value}"))
}

/// One file of the first load, from Resource Timing.
#[derive(Debug, Clone)]
struct File {
    url: String,
    kind: String,
    encoded: f64,
    decoded: f64,
    transfer: f64,
}

/// The HTML and every file it fetched (the API calls apart), and the API calls
/// (path, duration ms, end ms from navigation start).
async fn first_load(browser: &Browser) -> anyhow::Result<(Vec<File>, Vec<(String, f64, f64)>)> {
    let entries = browser
        .js(
            "const strip = (u) => u.split('#')[0];\
             const nav = performance.getEntriesByType('navigation')[0];\
             const all = [nav, ...performance.getEntriesByType('resource')];\
             return all.map((e) => ({url: strip(e.name), kind: e.initiatorType || 'navigation',\
               encoded: e.encodedBodySize, decoded: e.decodedBodySize, transfer: e.transferSize,\
               duration: e.duration, end: e.responseEnd}));",
            json!([]),
        )
        .await?;
    let entries = entries.as_array().context("no Resource Timing entries")?;
    let mut files = Vec::new();
    let mut api = Vec::new();
    for entry in entries {
        let url = entry["url"].as_str().unwrap_or_default().to_owned();
        let kind = entry["kind"].as_str().unwrap_or_default().to_owned();
        let number = |key: &str| entry[key].as_f64().unwrap_or(f64::NAN);
        if kind == "fetch" || kind == "xmlhttprequest" {
            let path = url
                .split_once("/api/")
                .map_or(url.clone(), |(_, p)| format!("/api/{p}"));
            api.push((path, number("duration"), number("end")));
        } else {
            files.push(File {
                url,
                kind,
                encoded: number("encoded"),
                decoded: number("decoded"),
                transfer: number("transfer"),
            });
        }
    }
    Ok((files, api))
}

/// Fetches `url` as Chromium asks for it: the `Content-Encoding` served and the body's bytes.
async fn served(http: &reqwest::Client, url: &str) -> anyhow::Result<(String, usize)> {
    let response = http
        .get(url)
        .header("accept-encoding", BROWSER_ACCEPT_ENCODING)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let encoding = response
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_owned();
    let body = response.bytes().await?;
    Ok((encoding, body.len()))
}

/// Figures of one round of page loads.
#[derive(Debug, Default, Clone)]
struct Loads {
    live_cold: f64,
    live_warm: f64,
    ready_cold: f64,
    ready_warm: f64,
    cards_cold: f64,
    complete_cold: f64,
    cards_warm: f64,
    complete_warm: f64,
    weight_encoded: f64,
    weight_decoded: f64,
    weight_transfer: f64,
    files: usize,
    /// Bytes transferred (headers included) by the cold Usage load's page and files.
    usage_cold_transfer: f64,
}

async fn load_part(args: &ConsoleArgs, chromium: &Path, driver: &Path) -> anyhow::Result<Value> {
    /// `tally-bench queries`' options, parsed so that its defaults apply.
    #[derive(Parser)]
    struct DataSet {
        #[command(flatten)]
        queries: QueriesArgs,
    }
    let data_set = DataSet::try_parse_from([
        "queries".to_owned(),
        format!("--size={}", args.size),
        format!("--days={}", args.days),
        format!("--database={}", args.database),
    ])?;
    let (url, shape) = queries::ensure_database(&data_set.queries).await?;
    queries::add_tails(&url, args.tail).await?;
    let base = queries::start_api(&url, |_| {}).await?;
    let jwt = queries::token("admin", "*")?;
    let http = reqwest::Client::new();
    let wait = Duration::from_secs(60);
    let mut rounds = Vec::new();
    let mut last_files = Vec::new();
    let mut last_api = Vec::new();
    let mut last_usage_api = Vec::new();
    for round in 1..=args.loads {
        let browser = Browser::start(chromium, driver).await?;
        let result: anyhow::Result<Loads> = async {
            // Cold: a fresh profile, signing in through the fragment.
            browser
                .goto(&format!("{base}/console#access_token={jwt}"))
                .await?;
            let live_cold = mark(&browser, "tally:live-ready", wait).await?;
            let (files, api) = first_load(&browser).await?;
            browser.cdp("Network.clearBrowserCache", json!({})).await?;
            browser.goto("about:blank").await?;
            browser.goto(&format!("{base}/console#usage")).await?;
            let ready_cold = mark(&browser, "tally:usage-ready", wait).await?;
            let cards_cold = mark(&browser, "tally:usage-cards", wait).await?;
            let complete_cold = mark(&browser, "tally:usage-complete", wait).await?;
            // What that load took from the network: the cleared cache made it cold.
            let (usage_files, usage_api) = first_load(&browser).await?;
            let usage_cold_transfer = usage_files.iter().map(|f| f.transfer).sum::<f64>();
            // Warm: the hashed files from the cache, the page revalidated (304).
            browser.goto("about:blank").await?;
            browser.goto(&format!("{base}/console")).await?;
            let live_warm = mark(&browser, "tally:live-ready", wait).await?;
            browser.goto("about:blank").await?;
            browser.goto(&format!("{base}/console#usage")).await?;
            let ready_warm = mark(&browser, "tally:usage-ready", wait).await?;
            let cards_warm = mark(&browser, "tally:usage-cards", wait).await?;
            let complete_warm = mark(&browser, "tally:usage-complete", wait).await?;
            let sum = |f: fn(&File) -> f64| files.iter().map(f).sum::<f64>();
            let loads = Loads {
                live_cold,
                live_warm,
                ready_cold,
                ready_warm,
                cards_cold,
                complete_cold,
                cards_warm,
                complete_warm,
                weight_encoded: sum(|f| f.encoded),
                weight_decoded: sum(|f| f.decoded),
                weight_transfer: sum(|f| f.transfer),
                files: files.len(),
                usage_cold_transfer,
            };
            last_files = files;
            last_api = api;
            last_usage_api = usage_api;
            Ok(loads)
        }
        .await;
        browser.quit().await;
        let loads = result.with_context(|| format!("page loads, round {round}"))?;
        eprintln!("round {round}: {loads:?}");
        rounds.push(loads);
    }

    println!(
        "\nConsole first load ({} files, fresh profile; Resource Timing of the last round)\n",
        last_files.len()
    );
    println!("| file | type | transferred body (bytes) | decoded (bytes) | served to Chromium's Accept-Encoding |");
    println!("|---|---|---|---|---|");
    let mut files_json = Vec::new();
    for file in &last_files {
        let (encoding, bytes) = served(&http, &file.url).await?;
        let path = file.url.strip_prefix(&base).unwrap_or(&file.url).to_owned();
        let agrees = (bytes as f64 - file.encoded).abs() < 1.0;
        println!(
            "| `{path}` | {} | {:.0} | {:.0} | {encoding}, {bytes} bytes{} |",
            file.kind,
            file.encoded,
            file.decoded,
            if agrees { "" } else { " (differs)" }
        );
        files_json.push(json!({
            "path": path, "type": file.kind, "encoded_bytes": file.encoded,
            "decoded_bytes": file.decoded, "transfer_bytes": file.transfer,
            "served_encoding": encoding, "served_bytes": bytes,
        }));
    }
    let m = |f: fn(&Loads) -> f64| median_by(&rounds, f);
    let encoded = m(|l| l.weight_encoded);
    println!(
        "\nFirst load: {:.0} bytes compressed ({:.1} KiB; target {:.0} KiB: {}), {:.0} decoded, {:.0} with headers\n",
        encoded,
        encoded / 1024.0,
        WEIGHT_TARGET_BYTES / 1024.0,
        if encoded < WEIGHT_TARGET_BYTES { "met" } else { "missed" },
        m(|l| l.weight_decoded),
        m(|l| l.weight_transfer),
    );
    println!(
        "The cold Usage load (cache cleared) transferred {:.0} bytes with headers.\n",
        m(|l| l.usage_cold_transfer)
    );
    println!(
        "Time to interactive against {} + {} rows ({} days, {} tenants, {} users; tail {}), ms from navigation start, median of {} (min–max)\n",
        shape.activity_rows, shape.token_rows, shape.days, shape.tenants, shape.users, args.tail, rounds.len()
    );
    println!("| view and signal | cold cache | warm cache |");
    println!("|---|---|---|");
    let spread = |f: fn(&Loads) -> f64| {
        let values: Vec<f64> = rounds.iter().map(f).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.0} ({min:.0}–{max:.0})", median(values))
    };
    println!(
        "| Live: first activity page drawn (`tally:live-ready`) | {} | {} |",
        spread(|l| l.live_cold),
        spread(|l| l.live_warm)
    );
    println!(
        "| Usage: view drawn and usable, reads sent (`tally:usage-ready`) | {} | {} |",
        spread(|l| l.ready_cold),
        spread(|l| l.ready_warm)
    );
    println!(
        "| Usage: stat cards filled (`tally:usage-cards`) | {} | {} |",
        spread(|l| l.cards_cold),
        spread(|l| l.cards_warm)
    );
    println!(
        "| Usage: charts and top lists too (`tally:usage-complete`) | {} | {} |",
        spread(|l| l.complete_cold),
        spread(|l| l.complete_warm)
    );
    println!("\nAPI calls of the last cold Live load (duration, end from navigation start, ms):");
    for (path, duration, end) in &last_api {
        println!("  {path}: {duration:.1} ms, ended at {end:.1} ms");
    }
    println!("\nAPI calls of the last cold Usage load:");
    for (path, duration, end) in &last_usage_api {
        println!("  {path}: {duration:.1} ms, ended at {end:.1} ms");
    }
    let series = |f: fn(&Loads) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
    Ok(json!({
        "data_set": {
            "activity_rows": shape.activity_rows, "token_rows": shape.token_rows,
            "days": shape.days, "tenants": shape.tenants, "users": shape.users, "tail": args.tail,
        },
        "weight": {
            "encoded_bytes": encoded,
            "decoded_bytes": m(|l| l.weight_decoded),
            "transfer_bytes_with_headers": m(|l| l.weight_transfer),
            "usage_cold_load_transfer_bytes": m(|l| l.usage_cold_transfer),
            "target_bytes": WEIGHT_TARGET_BYTES,
            "file_count": m(|l| l.files as f64),
            "files": files_json,
        },
        "interactive_ms": {
            "live_ready": { "cold": m(|l| l.live_cold), "warm": m(|l| l.live_warm),
                "cold_runs": series(|l| l.live_cold), "warm_runs": series(|l| l.live_warm) },
            "usage_ready": { "cold": m(|l| l.ready_cold), "warm": m(|l| l.ready_warm),
                "cold_runs": series(|l| l.ready_cold), "warm_runs": series(|l| l.ready_warm) },
            "usage_cards": { "cold": m(|l| l.cards_cold), "warm": m(|l| l.cards_warm),
                "cold_runs": series(|l| l.cards_cold), "warm_runs": series(|l| l.cards_warm) },
            "usage_complete": { "cold": m(|l| l.complete_cold), "warm": m(|l| l.complete_warm),
                "cold_runs": series(|l| l.complete_cold), "warm_runs": series(|l| l.complete_warm) },
        },
        "api_calls_last_cold_live_load": api_json(&last_api),
        "api_calls_last_cold_usage_load": api_json(&last_usage_api),
    }))
}

fn api_json(calls: &[(String, f64, f64)]) -> Vec<Value> {
    calls
        .iter()
        .map(|(path, duration, end)| json!({"path": path, "duration_ms": duration, "end_ms": end}))
        .collect()
}

/// One sample of the tab during a live run.
#[derive(Debug, Clone, Default)]
struct Sample {
    secs: f64,
    heap_used: f64,
    /// Blink's heap (DOM nodes).
    embedder_used: f64,
    rows: f64,
    nodes: f64,
    listeners: f64,
    received: f64,
    drawn: f64,
    dropped: f64,
    newest_seq: f64,
    committed_seq: f64,
}

impl Sample {
    /// Events committed but not yet in the table.
    fn lag(&self) -> f64 {
        (self.committed_seq - self.newest_seq).max(0.0)
    }
}

/// The newest activity `seq` that the live view shows (the page's own audit rows apart).
async fn committed_seq(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one(
            "SELECT coalesce(max(seq), 0) FROM activity_events WHERE action <> 'audit.log.view'",
            &[],
        )
        .await?
        .get(0))
}

/// The heap in use (bytes), after a forced garbage collection when `gc`: V8's
/// JS heap and the embedder's (Blink's C++ heap, where the DOM nodes live).
async fn heap(browser: &Browser, gc: bool) -> anyhow::Result<(f64, f64)> {
    if gc {
        browser
            .cdp("HeapProfiler.collectGarbage", json!({}))
            .await?;
    }
    let usage = browser.cdp("Runtime.getHeapUsage", json!({})).await?;
    Ok((
        usage["usedSize"].as_f64().unwrap_or(f64::NAN),
        usage["embedderHeapUsedSize"].as_f64().unwrap_or(0.0),
    ))
}

async fn sample(
    browser: &Browser,
    db: &tokio_postgres::Client,
    started: Instant,
) -> anyhow::Result<Sample> {
    let committed = committed_seq(db).await?;
    let page = browser
        .js(
            "const c = document.getElementById('live-count').dataset;\
             const first = document.querySelector('#live-rows tr');\
             return {rows: document.querySelectorAll('#live-rows tr').length,\
               received: Number(c.received || 0), drawn: Number(c.drawn || 0), dropped: Number(c.dropped || 0),\
               newest: first ? Number(first.dataset.seq) : 0};",
            json!([]),
        )
        .await?;
    let (heap_used, embedder_used) = heap(browser, false).await?;
    let counters = browser.cdp("Memory.getDOMCounters", json!({})).await?;
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    Ok(Sample {
        secs: started.elapsed().as_secs_f64(),
        heap_used,
        embedder_used,
        rows: number(&page["rows"]),
        nodes: number(&counters["nodes"]),
        listeners: number(&counters["jsEventListeners"]),
        received: number(&page["received"]),
        drawn: number(&page["drawn"]),
        dropped: number(&page["dropped"]),
        newest_seq: number(&page["newest"]),
        committed_seq: committed as f64,
    })
}

/// Figures of one live run.
#[derive(Debug, Clone, Default)]
struct LiveRun {
    /// Activity events committed per second during the load.
    committed_per_second: f64,
    committed: f64,
    received: f64,
    drawn: f64,
    dropped: f64,
    max_rows: f64,
    heap_gc_before: f64,
    heap_gc_after: f64,
    embedder_gc_before: f64,
    embedder_gc_after: f64,
    heap_max: f64,
    embedder_max: f64,
    heap_first_third: f64,
    heap_last_third: f64,
    nodes_max: f64,
    /// DOM nodes after the forced collection at the end (attached and not yet collected).
    nodes_gc_after: f64,
    lag_median: f64,
    lag_max: f64,
    catch_up_ms: f64,
    samples: Vec<Sample>,
}

async fn live_run(args: &ConsoleArgs, chromium: &Path, driver: &Path) -> anyhow::Result<LiveRun> {
    let database = TestDatabase::migrated().await;
    let collector = Collector::start(
        &args.tally,
        &database.url,
        &CollectorOptions {
            admin_jwt_secret: Some(queries::SECRET.to_owned()),
            ..CollectorOptions::default()
        },
    )?;
    let result = async {
        let admin = collector
            .admin
            .clone()
            .context("the collector reported no admin API address")?;
        let (db, _) = tally_exporters::postgres::connect(&database.url).await?;
        let jwt = queries::token("admin", "*")?;
        let browser = Browser::start(chromium, driver).await?;
        let measured = async {
            browser
                .goto(&format!("{admin}/console#access_token={jwt}"))
                .await?;
            mark(&browser, "tally:live-ready", Duration::from_secs(30)).await?;
            browser
                .wait_text("#live-state", "Live", Duration::from_secs(10))
                .await?;
            let (heap_gc_before, embedder_gc_before) = heap(&browser, true).await?;
            let seq_before = committed_seq(&db).await?;
            let plan = LoadPlan {
                transport: Transport::Grpc,
                connections: 4,
                records_per_request: 20,
                duration: Duration::from_secs(args.live_secs),
                target_rate: Some(args.rate / ACTIVITY_SHARE),
                api_key: None,
                stagger: false,
            };
            let (grpc, http) = (collector.grpc.clone(), collector.http.clone());
            let started = Instant::now();
            let load = tokio::spawn(async move { load::run(&plan, &grpc, &http).await });
            let mut samples = Vec::new();
            let period = Duration::from_secs(args.sample_secs.max(1));
            let mut next = started + period;
            while !load.is_finished() {
                tokio::time::sleep_until(next.into()).await;
                next += period;
                if !load.is_finished() {
                    samples.push(sample(&browser, &db, started).await?);
                }
            }
            let offered = load.await.context("load task")??;
            let load_secs = offered.elapsed.as_secs_f64();
            let seq_after = committed_seq(&db).await?;
            let committed: i64 = db
                .query_one(
                    "SELECT count(*) FROM activity_events WHERE seq > $1 AND seq <= $2 \
                     AND action <> 'audit.log.view'",
                    &[&seq_before, &seq_after],
                )
                .await?
                .get(0);
            // The view has caught up when its newest row is the newest committed one.
            let catch_up = Instant::now();
            browser
                .wait_js(
                    "the live view to show the newest committed row",
                    Duration::from_secs(30),
                    "const first = document.querySelector('#live-rows tr');\
                     return !!first && Number(first.dataset.seq) >= arguments[0];",
                    json!([seq_after]),
                )
                .await?;
            let catch_up_ms = catch_up.elapsed().as_secs_f64() * 1000.0;
            let last = sample(&browser, &db, started).await?;
            let (heap_gc_after, embedder_gc_after) = heap(&browser, true).await?;
            let nodes_gc_after = browser.cdp("Memory.getDOMCounters", json!({})).await?["nodes"]
                .as_f64()
                .unwrap_or(f64::NAN);
            samples.push(last.clone());
            let third = (samples.len() / 3).max(1);
            let heaps: Vec<f64> = samples.iter().map(|s| s.heap_used).collect();
            let lags: Vec<f64> = samples[..samples.len() - 1]
                .iter()
                .map(Sample::lag)
                .collect();
            let max = |f: fn(&Sample) -> f64| samples.iter().map(f).fold(f64::NAN, f64::max);
            anyhow::Ok(LiveRun {
                committed_per_second: committed as f64 / load_secs,
                committed: committed as f64,
                received: last.received,
                drawn: last.drawn,
                dropped: last.dropped,
                max_rows: max(|s| s.rows),
                heap_gc_before,
                heap_gc_after,
                embedder_gc_before,
                embedder_gc_after,
                heap_max: max(|s| s.heap_used),
                embedder_max: max(|s| s.embedder_used),
                heap_first_third: median(heaps[..third].to_vec()),
                heap_last_third: median(heaps[heaps.len() - third..].to_vec()),
                nodes_max: max(|s| s.nodes),
                nodes_gc_after,
                lag_median: median(lags.clone()),
                lag_max: lags.iter().copied().fold(f64::NAN, f64::max),
                catch_up_ms,
                samples,
            })
        }
        .await;
        browser.quit().await;
        measured
    }
    .await;
    collector.stop();
    drop(database);
    result
}

async fn live_part(args: &ConsoleArgs, chromium: &Path, driver: &Path) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.tally.exists(),
        "{} not found: build it with `cargo build --release -p tally`",
        args.tally.display()
    );
    let mut runs = Vec::new();
    for run in 1..=args.live_runs {
        let measured = live_run(args, chromium, driver)
            .await
            .with_context(|| format!("live run {run}"))?;
        eprintln!(
            "live run {run}: {:.0} events/s committed, received {}, drawn {}, not drawn {}, rows ≤ {}, \
             heap max {:.1} MiB (after GC {:.1} → {:.1} MiB), lag median {} max {}, caught up in {:.0} ms",
            measured.committed_per_second,
            measured.received,
            measured.drawn,
            measured.dropped,
            measured.max_rows,
            measured.heap_max / MIB,
            measured.heap_gc_before / MIB,
            measured.heap_gc_after / MIB,
            measured.lag_median,
            measured.lag_max,
            measured.catch_up_ms
        );
        runs.push(measured);
    }
    let m = |f: fn(&LiveRun) -> f64| median_by(&runs, f);
    println!(
        "\nLive view under {:.0} activity events/s offered for {} s (OTLP/gRPC, release `tally`), median of {} runs\n",
        args.rate,
        args.live_secs,
        runs.len()
    );
    println!("| figure | median | runs |");
    println!("|---|---|---|");
    let row = |label: &str, f: fn(&LiveRun) -> f64, scale: f64, digits: usize| {
        let values: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.*}", digits, f(r) / scale))
            .collect();
        println!(
            "| {label} | {:.*} | {} |",
            digits,
            m(f) / scale,
            values.join(" / ")
        );
    };
    row(
        "activity events committed / s",
        |r| r.committed_per_second,
        1.0,
        0,
    );
    row("events committed in the run", |r| r.committed, 1.0, 0);
    row("events the page received", |r| r.received, 1.0, 0);
    row("rows drawn", |r| r.drawn, 1.0, 0);
    row(
        "rows not drawn (over 500 between two frames)",
        |r| r.dropped,
        1.0,
        0,
    );
    row("rows in the table, most", |r| r.max_rows, 1.0, 0);
    row(
        "JS heap in use, most of any sample (MiB)",
        |r| r.heap_max,
        MIB,
        1,
    );
    row(
        "JS heap, median of the first third of samples (MiB)",
        |r| r.heap_first_third,
        MIB,
        1,
    );
    row(
        "JS heap, median of the last third of samples (MiB)",
        |r| r.heap_last_third,
        MIB,
        1,
    );
    row(
        "JS heap after GC, before the load (MiB)",
        |r| r.heap_gc_before,
        MIB,
        1,
    );
    row(
        "JS heap after GC, after the load (MiB)",
        |r| r.heap_gc_after,
        MIB,
        1,
    );
    row(
        "Blink heap (DOM) in use, most of any sample (MiB)",
        |r| r.embedder_max,
        MIB,
        1,
    );
    row(
        "Blink heap after GC, before the load (MiB)",
        |r| r.embedder_gc_before,
        MIB,
        1,
    );
    row(
        "Blink heap after GC, after the load (MiB)",
        |r| r.embedder_gc_after,
        MIB,
        1,
    );
    row(
        "DOM nodes, most (detached ones not yet collected included)",
        |r| r.nodes_max,
        1.0,
        0,
    );
    row(
        "DOM nodes after GC, after the load",
        |r| r.nodes_gc_after,
        1.0,
        0,
    );
    row(
        "lag, committed but not shown, median of samples (events)",
        |r| r.lag_median,
        1.0,
        0,
    );
    row("lag, most of any sample (events)", |r| r.lag_max, 1.0, 0);
    row(
        "catch-up after the load ends (ms)",
        |r| r.catch_up_ms,
        1.0,
        0,
    );
    let sample_json = |s: &Sample| {
        json!({
            "secs": s.secs, "heap_used_bytes": s.heap_used, "embedder_heap_used_bytes": s.embedder_used,
            "rows": s.rows, "dom_nodes": s.nodes, "js_event_listeners": s.listeners,
            "received": s.received, "drawn": s.drawn, "not_drawn": s.dropped,
            "newest_seq_shown": s.newest_seq, "newest_seq_committed": s.committed_seq,
        })
    };
    Ok(json!({
        "rate_offered_activity_per_second": args.rate,
        "seconds": args.live_secs,
        "runs": runs.iter().map(|r| json!({
            "committed_per_second": r.committed_per_second,
            "committed": r.committed,
            "received": r.received,
            "drawn": r.drawn,
            "not_drawn": r.dropped,
            "max_rows": r.max_rows,
            "heap_after_gc_before_bytes": r.heap_gc_before,
            "heap_after_gc_after_bytes": r.heap_gc_after,
            "heap_max_bytes": r.heap_max,
            "embedder_heap_after_gc_before_bytes": r.embedder_gc_before,
            "embedder_heap_after_gc_after_bytes": r.embedder_gc_after,
            "embedder_heap_max_bytes": r.embedder_max,
            "heap_first_third_median_bytes": r.heap_first_third,
            "heap_last_third_median_bytes": r.heap_last_third,
            "dom_nodes_max": r.nodes_max,
            "dom_nodes_after_gc_end": r.nodes_gc_after,
            "lag_median_events": r.lag_median,
            "lag_max_events": r.lag_max,
            "catch_up_ms": r.catch_up_ms,
            "samples": r.samples.iter().map(sample_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    }))
}

const MIB: f64 = 1024.0 * 1024.0;
