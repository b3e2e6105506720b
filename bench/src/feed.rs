//! `tally-bench feed`: live-feed latency, from commit to SSE client.
//!
//! On a fresh database, the admin API runs in-process (HS256 auth) and
//! `--clients` SSE clients (each count in turn: 1, 100, 1,000 by default) follow
//! `GET /api/v1/activity/stream` as a `*` caller without filters, i.e. every
//! client receives every event. A writer commits activity rows at `--rate`
//! events/s through Tally's write path ([`insert_activity_batch`]: the `seq`
//! lock, a reserved `seq` range, `COPY` into the table, the NOTIFY trigger), one transaction of
//! `--batch` rows every `batch / rate` seconds, and records the instant each
//! commit returned for the batch's `seq` range (read under the lock inside the
//! transaction). Each client timestamps every `id:` line it reads; latency =
//! receive instant − the commit instant of that `seq` (an event can arrive a
//! little before the writer sees its commit acknowledged: such latencies count
//! as 0). Reported per client count, median of `--runs` runs: p50/p99/max
//! latency, events/s delivered over all clients, events missed and resets.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::json;
use tally_exporters::postgres::{connect, insert_activity_batch};
use tally_exporters::testing::TestDatabase;
use tally_model::{ActivityEvent, Outcome};

use crate::median;
use crate::queries::{start_api, token};

/// Arguments of `tally-bench feed`.
#[derive(clap::Args)]
pub struct FeedArgs {
    /// Client counts to measure, in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub clients: Vec<usize>,
    /// Events committed per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Rows per committed transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds of writing per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Runs; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-feed.json")]
    pub json: PathBuf,
}

/// Latency histogram: 100 µs buckets up to 30 s, shared by every client.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

const BUCKET_US: u64 = 100;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..300_000).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }

    fn bucket(&self, us: u64) -> usize {
        ((us / BUCKET_US) as usize).min(self.buckets.len() - 1)
    }

    fn add(&self, bucket: usize, n: u64) {
        self.buckets[bucket].fetch_add(n, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `p` quantile in milliseconds (bucket upper bound).
    fn quantile_ms(&self, p: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((p * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        f64::NAN
    }
}

/// Commit instants by `seq` (offset from the first seq of the measurement),
/// in µs since `origin` (0 = not committed yet).
struct Commits {
    origin: Instant,
    first_seq: i64,
    at_us: Vec<AtomicU64>,
}

impl Commits {
    fn get(&self, seq: i64) -> Option<u64> {
        let i = usize::try_from(seq - self.first_seq).ok()?;
        let v = self.at_us.get(i)?.load(Ordering::Acquire);
        (v != 0).then_some(v)
    }
}

/// Figures of one client count in one run.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    delivered_per_second: f64,
    written_per_second: f64,
    missed: u64,
    resets: u64,
}

fn event(i: u64, now: chrono::DateTime<Utc>) -> ActivityEvent {
    let mut attributes = serde_json::Map::new();
    attributes.insert("http.request.method".into(), json!("GET"));
    attributes.insert("http.route".into(), json!("/api/v2/documents/{id}"));
    attributes.insert("http.response.status_code".into(), json!(200));
    attributes.insert("request.id".into(), json!(format!("{i:016x}")));
    ActivityEvent {
        id: uuid::Uuid::new_v4(),
        ts: now,
        tenant_id: Some(format!("tenant-{:04}", 1 + i % 50)),
        user_id: Some(format!("user-{:06}", i % 5_000)),
        session_id: Some(format!("sess-{:08x}", i / 10)),
        action: "document.view".into(),
        outcome: Outcome::Success,
        resource_type: Some("document".into()),
        resource_id: Some(format!("document-{}", i % 10_000)),
        service: Some("documents".into()),
        trace_id: Some(format!("{:032x}", u128::from(i) * 7919)),
        span_id: Some(format!("{:016x}", i)),
        attributes,
        taxonomy_valid: None,
        taxonomy_reason: None,
        duration_ms: None,
        name: None,
        error_type: None,
        error_message: None,
    }
}

/// What the clients of one measurement share.
struct Shared {
    commits: Arc<Commits>,
    histogram: Histogram,
    connected: AtomicUsize,
    received: AtomicU64,
    resets: AtomicU64,
}

/// Where the first `\n` of `haystack` is (the C library's vectorised
/// `memchr`: several times faster than a byte or word loop on long lines).
fn find_newline(haystack: &[u8]) -> Option<usize> {
    // SAFETY: memchr reads at most `haystack.len()` bytes from its start, and
    // a non-null answer points into `haystack`.
    let found = unsafe { libc::memchr(haystack.as_ptr().cast(), i32::from(b'\n'), haystack.len()) };
    (!found.is_null()).then(|| found as usize - haystack.as_ptr() as usize)
}

/// The decimal `seq` of an `id: <seq>` line.
fn parse_seq(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    digits.iter().try_fold(0i64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
    })
}

/// The lines of an SSE stream that matter here, found with `memchr` over
/// each chunk as it arrives, with no allocation per event: only the start of
/// a line cut by a chunk boundary is kept (an `id:` line is short; a long
/// line cannot be one).
#[derive(Default)]
struct LineScanner {
    /// The start of the line the previous chunk ended in.
    partial: Vec<u8>,
    /// The cut line was longer than what `partial` keeps.
    partial_long: bool,
}

/// Bytes of a cut line worth keeping (`id: ` + a seq, `event: reset`).
const KEPT_PREFIX: usize = 32;

enum Line {
    Id(i64),
    Reset,
}

impl LineScanner {
    /// Calls `on_line` for every `id:` and `event: reset` line completed by `chunk`.
    fn scan(&mut self, chunk: &[u8], mut on_line: impl FnMut(Line)) {
        let mut classify = |line: &[u8]| {
            if let Some(digits) = line.strip_prefix(b"id: ") {
                if let Some(seq) = parse_seq(digits.strip_suffix(b"\r").unwrap_or(digits)) {
                    on_line(Line::Id(seq));
                }
            } else if line.starts_with(b"event: reset") {
                on_line(Line::Reset);
            }
        };
        let mut rest = chunk;
        while let Some(end) = find_newline(rest) {
            if self.partial.is_empty() && !self.partial_long {
                classify(&rest[..end]);
            } else {
                if !self.partial_long {
                    let room = KEPT_PREFIX.saturating_sub(self.partial.len());
                    self.partial.extend_from_slice(&rest[..end.min(room)]);
                    if !self.partial_long && end <= room {
                        classify(&self.partial);
                    }
                }
                self.partial.clear();
                self.partial_long = false;
            }
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() && !self.partial_long {
            let room = KEPT_PREFIX.saturating_sub(self.partial.len());
            if rest.len() > room {
                self.partial.clear();
                self.partial_long = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
    }
}

/// One SSE client: reads events until `stop`, recording latencies. The
/// latency of an event is taken when the chunk holding its `id:` line is read.
async fn client(
    http: reqwest::Client,
    url: String,
    token: String,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Shared {
        commits,
        histogram,
        connected,
        received,
        resets,
    } = &*shared;
    let mut response = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .context("opening the stream")?;
    anyhow::ensure!(
        response.status().is_success(),
        "stream answered {}",
        response.status()
    );
    connected.fetch_add(1, Ordering::Relaxed);
    let mut scanner = LineScanner::default();
    let mut stop = stop;
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let Some(chunk) = chunk else {
            return Ok(());
        };
        let now_us = commits.origin.elapsed().as_micros() as u64;
        // Counted locally, added to the shared figures once per chunk
        // (events of one commit share their latency bucket).
        let mut tally = LocalTally::default();
        scanner.scan(&chunk, |line| match line {
            Line::Id(seq) => {
                // Events that arrived before the writer saw their commit
                // acknowledged count as 0.
                let at = commits.get(seq).unwrap_or(now_us);
                tally.record(histogram, now_us.saturating_sub(at));
            }
            Line::Reset => {
                resets.fetch_add(1, Ordering::Relaxed);
            }
        });
        tally.flush(histogram, received);
    }
}

/// Latencies of one chunk, as runs of equal buckets.
#[derive(Default)]
struct LocalTally {
    bucket: usize,
    run: u64,
    count: u64,
    max_us: u64,
}

impl LocalTally {
    fn record(&mut self, histogram: &Histogram, us: u64) {
        let bucket = histogram.bucket(us);
        if self.run > 0 && bucket != self.bucket {
            histogram.add(self.bucket, self.run);
            self.run = 0;
        }
        self.bucket = bucket;
        self.run += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    fn flush(self, histogram: &Histogram, received: &AtomicU64) {
        if self.count == 0 {
            return;
        }
        histogram.add(self.bucket, self.run);
        histogram.max_us.fetch_max(self.max_us, Ordering::Relaxed);
        received.fetch_add(self.count, Ordering::Relaxed);
    }
}

/// Commits `planned` rows, `batch` per transaction, `rate` rows per second,
/// through Tally's write path, recording each commit's instant for its `seq`s.
async fn write(
    url: &str,
    rate: u64,
    batch: usize,
    planned: u64,
    commits: &Commits,
) -> anyhow::Result<u64> {
    let (mut writer, _) = connect(url).await?;
    let period = Duration::from_secs_f64(batch as f64 / rate as f64);
    let batches = planned.div_ceil(batch as u64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut written = 0u64;
    for b in 0..batches {
        ticker.tick().await;
        let now = Utc::now();
        let events: Vec<ActivityEvent> = (0..batch as u64)
            .map(|i| event(b * batch as u64 + i, now))
            .collect();
        let tx = writer.transaction().await?;
        let n = insert_activity_batch(&tx, &events).await?;
        // Under the seq lock: the newest seq is this batch's last.
        let high: i64 = tx
            .query_one("SELECT max(seq) FROM activity_events", &[])
            .await?
            .get(0);
        tx.commit().await?;
        let at = commits.origin.elapsed().as_micros() as u64;
        for seq in high - n as i64 + 1..=high {
            if let Ok(i) = usize::try_from(seq - commits.first_seq) {
                if let Some(slot) = commits.at_us.get(i) {
                    slot.store(at.max(1), Ordering::Release);
                }
            }
        }
        written += n;
    }
    Ok(written)
}

async fn measure(
    args: &FeedArgs,
    db_url: &str,
    base: &str,
    clients: usize,
) -> anyhow::Result<Figures> {
    let (writer, _) = connect(db_url).await?;
    let start_seq: i64 = writer
        .query_one("SELECT coalesce(max(seq), 0) FROM activity_events", &[])
        .await?
        .get(0);
    let planned = args.rate * args.duration;
    let commits = Arc::new(Commits {
        origin: Instant::now(),
        first_seq: start_seq + 1,
        at_us: (0..planned + args.batch as u64 * 2)
            .map(|_| AtomicU64::new(0))
            .collect(),
    });
    let shared = Arc::new(Shared {
        commits: commits.clone(),
        histogram: Histogram::new(),
        connected: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        resets: AtomicU64::new(0),
    });
    let (histogram, connected, received, resets) = (
        &shared.histogram,
        &shared.connected,
        &shared.received,
        &shared.resets,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let token = token("activity:read", "*")?;
    let url = format!("{base}/api/v1/activity/stream?after_seq={start_seq}");
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        // One connection per client, as separate browsers or tailers would have.
        let http = reqwest::Client::builder().build()?;
        tasks.push(tokio::spawn(client(
            http,
            url.clone(),
            token.clone(),
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < clients {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {clients} clients connected",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The writer runs on a thread and runtime of its own, so that the load of
    // the clients and the server cannot slow the commit rate down.
    let started = Instant::now();
    let writer_commits = commits.clone();
    let (rate, batch, url) = (args.rate, args.batch, db_url.to_owned());
    drop(writer);
    let written = std::thread::spawn(move || -> anyhow::Result<u64> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(write(&url, rate, batch, planned, &writer_commits))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    let write_secs = started.elapsed().as_secs_f64();
    // Let the clients drain (up to 10 s), then stop them.
    let expected = written * clients as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for task in tasks {
        if let Ok(Err(error)) = task.await {
            eprintln!("client: {error:#}");
        }
    }
    Ok(Figures {
        p50_ms: histogram.quantile_ms(0.5),
        p99_ms: histogram.quantile_ms(0.99),
        max_ms: histogram.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        delivered_per_second: got as f64 / delivered_secs,
        written_per_second: written as f64 / write_secs,
        missed: expected.saturating_sub(got),
        resets: resets.load(Ordering::Relaxed),
    })
}

/// `tally-bench feed`.
pub async fn run(args: FeedArgs) -> anyhow::Result<()> {
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let mut results: Vec<(usize, Vec<Figures>)> =
        args.clients.iter().map(|c| (*c, Vec::new())).collect();
    for run in 1..=args.runs {
        let database = TestDatabase::migrated().await;
        let base = start_api(&database.url, |config| {
            config.sse_max_clients = max_clients + 10;
            // Every bench client is one caller (one IP, no credential).
            config.limits.max_streams_per_caller = max_clients + 10;
        })
        .await?;
        for (clients, figures) in results.iter_mut() {
            let f = measure(&args, &database.url, &base, *clients)
                .await
                .with_context(|| format!("run {run}, {clients} clients"))?;
            eprintln!("run {run} {clients} clients: {f:?}");
            figures.push(f);
        }
    }
    println!(
        "\nLive feed (/activity/stream, unfiltered * clients), {} events/s in {}-row commits, \
         {} s per measurement, median of {} runs\n",
        args.rate, args.batch, args.duration, args.runs
    );
    println!("| clients | p50 ms | p99 ms | max ms | delivered events/s (all clients) | written events/s | missed | resets |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut items = Vec::new();
    for (clients, figures) in &results {
        let m = |f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
        let missed = median(figures.iter().map(|f| f.missed as f64).collect());
        let resets = median(figures.iter().map(|f| f.resets as f64).collect());
        println!(
            "| {clients} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {missed:.0} | {resets:.0} |",
            m(|f| f.p50_ms),
            m(|f| f.p99_ms),
            m(|f| f.max_ms),
            m(|f| f.delivered_per_second),
            m(|f| f.written_per_second),
        );
        items.push(json!({
            "clients": clients,
            "p50_ms": m(|f| f.p50_ms),
            "p99_ms": m(|f| f.p99_ms),
            "max_ms": m(|f| f.max_ms),
            "delivered_events_per_second": m(|f| f.delivered_per_second),
            "written_events_per_second": m(|f| f.written_per_second),
            "missed": missed,
            "resets": resets,
            "runs": figures.iter().map(|f| json!({
                "p50_ms": f.p50_ms, "p99_ms": f.p99_ms, "max_ms": f.max_ms,
                "delivered_events_per_second": f.delivered_per_second,
                "missed": f.missed, "resets": f.resets,
            })).collect::<Vec<_>>(),
        }));
    }
    let report = json!({
        "benchmark": "feed",
        "rate": args.rate,
        "batch": args.batch,
        "duration_secs": args.duration,
        "runs": args.runs,
        "results": items,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> (Vec<i64>, usize) {
        let mut scanner = LineScanner::default();
        let (mut ids, mut resets) = (Vec::new(), 0);
        for chunk in chunks {
            scanner.scan(chunk, |line| match line {
                Line::Id(seq) => ids.push(seq),
                Line::Reset => resets += 1,
            });
        }
        (ids, resets)
    }

    #[test]
    fn the_scanner_finds_every_id_wherever_the_chunks_are_cut() {
        let long = "x".repeat(300);
        let stream = format!(
            ": tally live feed after_seq=0\n\nid: 1\nevent: activity\ndata: {{\"a\":\"{long}\"}}\n\n\
             : heartbeat\n\nid: 22\nevent: activity\ndata: {{\"id: 5\":1}}\n\n\
             id: 333\nevent: activity\ndata: {long}\n\nevent: reset\ndata: {{}}\n\n"
        );
        let bytes = stream.as_bytes();
        assert_eq!(scan_all(&[bytes]), (vec![1, 22, 333], 1));
        for cut in 0..bytes.len() {
            assert_eq!(
                scan_all(&[&bytes[..cut], &bytes[cut..]]),
                (vec![1, 22, 333], 1),
                "cut at {cut}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan_all(&singles), (vec![1, 22, 333], 1));
    }
}
