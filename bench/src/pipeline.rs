//! The collector's CPU work apart from the database: `tally-bench pipeline`.
//!
//! Takes encoded OTLP protobuf export requests of the ingest workload (the same
//! [`workload`] the load generator sends: 4 of 5 spans activity spans with 15
//! attributes and PII, 1 of 5 GenAI chat spans with prompt content, every fourth
//! request activity log records) and runs, on one thread, what Tally does between
//! the receiver and the database: protobuf decode, redaction, classification,
//! token extraction, taxonomy validation (the default registry, lenient) and the
//! binary `COPY` encoding of the activity and token rows. Nothing is sent
//! anywhere. Reports records per second per core (records over the thread's CPU
//! time) as the median over `--runs`, and how the time splits between the stages.
//!
//! The stages are the ones `src/pipeline.rs` runs per request, called through
//! the same public functions (the pipeline's own type lives in the binary crate).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;
use tally_config::{Config, TaxonomyHandle};
use tally_exporters::postgres::copy;
use tally_processors::attribution::TraceCache;
use tally_processors::redact::Redactor;
use tally_processors::tokens::TokenProcessor;
use tally_processors::validate::Validator;

use crate::workload;

/// `tally-bench pipeline` options.
#[derive(clap::Args)]
pub struct PipelineArgs {
    /// Distinct export requests per run (each is decoded and processed once per run).
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
    /// Records per export request.
    #[arg(long, default_value_t = 100)]
    pub records_per_request: usize,
    /// Runs; the figure is the median.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Passes over the requests per run.
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-pipeline.json")]
    pub json: std::path::PathBuf,
}

/// An encoded request as it arrives on the wire.
enum Encoded {
    Traces(Bytes),
    Logs(Bytes),
}

/// The processors, built from the default config the way `tally` builds them.
struct Stages {
    redactor: Redactor,
    tokens: TokenProcessor,
    validator: Validator,
    traces: TraceCache,
}

impl Stages {
    fn new() -> anyhow::Result<Stages> {
        let config = Config::default();
        let tokens = &config.processors.tokens;
        let redactor = Redactor::new(&config.processors.redact, &[7u8; 32])
            .context("redactor")?
            .keep_keys(&tokens.mapping_keys());
        let taxonomy =
            TaxonomyHandle::load(&config.processors.validate).context("default taxonomy")?;
        Ok(Stages {
            redactor,
            tokens: TokenProcessor::new(tokens, &config.pricing),
            validator: Validator::new(taxonomy),
            traces: TraceCache::new(
                Duration::from_secs(tokens.attribution_window_secs),
                tokens.max_traces,
            ),
        })
    }
}

/// Time spent per stage (wall clock on the measuring thread) and what came out.
#[derive(Debug, Default, Clone)]
struct Split {
    decode: Duration,
    redact: Duration,
    classify: Duration,
    tokens: Duration,
    validate: Duration,
    encode: Duration,
    records: u64,
    activity_rows: u64,
    token_rows: u64,
    copy_bytes: u64,
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Processes one encoded request through every stage, timing each.
fn process(
    stages: &Stages,
    request: &Encoded,
    copy_buf: &mut BytesMut,
    split: &mut Split,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let t0 = Instant::now();
    let (classified, token_batch, records) = match request {
        Encoded::Traces(body) => {
            let mut req = ExportTraceServiceRequest::decode(body.clone())?;
            let t1 = Instant::now();
            split.decode += t1 - t0;
            let _redactions = stages.redactor.redact_traces(&mut req);
            let t2 = Instant::now();
            split.redact += t2 - t1;
            // As `src/pipeline.rs`: tokens first, then classification moves
            // the spans' attributes out of the request.
            let tokens = stages.tokens.traces(&req, now, &stages.traces, None);
            let t3 = Instant::now();
            split.tokens += t3 - t2;
            let classified = tally_processors::classify::classify_traces_taking(&mut req, now);
            split.classify += t3.elapsed();
            let records: usize = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            (classified, tokens, records)
        }
        Encoded::Logs(body) => {
            let mut req = ExportLogsServiceRequest::decode(body.clone())?;
            let t1 = Instant::now();
            split.decode += t1 - t0;
            let _redactions = stages.redactor.redact_logs(&mut req);
            let t2 = Instant::now();
            split.redact += t2 - t1;
            let classified = tally_processors::classify_logs(&req, now);
            let t3 = Instant::now();
            split.classify += t3 - t2;
            let tokens = stages.tokens.logs(&req, now, &stages.traces, None);
            split.tokens += t3.elapsed();
            let records: usize = req
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum();
            (classified, tokens, records)
        }
    };
    let t4 = Instant::now();
    let validated = stages.validator.validate_batch(classified.events);
    let _message = validated.partial_success_message();
    let events: Vec<_> = validated
        .stored
        .into_iter()
        .map(|checked| {
            let mut event = checked.event;
            event.taxonomy_valid = checked.taxonomy_valid;
            event.taxonomy_reason = checked.reason.map(|r| r.code.as_str().to_string());
            event
        })
        .collect();
    let quarantined: Vec<_> = validated
        .quarantined
        .iter()
        .map(|q| q.record_json())
        .collect();
    let t5 = Instant::now();
    split.validate += t5 - t4;
    copy_buf.clear();
    copy::begin(copy_buf);
    // As the writers do: each row with its personal keys (none configured here).
    let personal = tally_exporters::postgres::personal::PersonalKeys::default();
    for event in &events {
        let row = copy::ActivityRow {
            event,
            personal_keys: personal.of(event),
        };
        copy::activity_row(copy_buf, &row, None)?;
    }
    copy::finish(copy_buf);
    let mut bytes = copy_buf.len();
    copy_buf.clear();
    copy::begin(copy_buf);
    for row in &token_batch.rows {
        copy::token_row(copy_buf, row, None)?;
    }
    copy::finish(copy_buf);
    bytes += copy_buf.len();
    split.encode += t5.elapsed();
    split.records += records as u64;
    split.activity_rows += events.len() as u64;
    split.token_rows += token_batch.rows.len() as u64;
    split.copy_bytes += bytes as u64 + quarantined.len() as u64;
    Ok(())
}

/// Runs the CPU benchmark and prints (and writes as JSON) its figures.
pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let requests: Vec<Encoded> = (0..args.requests)
        .map(|n| {
            if n % 4 == 3 {
                Encoded::Logs(
                    workload::logs(args.records_per_request)
                        .encode_to_vec()
                        .into(),
                )
            } else {
                Encoded::Traces(
                    workload::traces(args.records_per_request)
                        .encode_to_vec()
                        .into(),
                )
            }
        })
        .collect();
    let wire_bytes: usize = requests
        .iter()
        .map(|r| match r {
            Encoded::Traces(b) | Encoded::Logs(b) => b.len(),
        })
        .sum();
    let mut rates = Vec::new();
    let mut splits = Vec::new();
    let mut copy_buf = BytesMut::with_capacity(256 * 1024);
    // A warm-up pass (allocator, caches), not counted.
    {
        let stages = Stages::new()?;
        let mut split = Split::default();
        for request in &requests {
            process(&stages, request, &mut copy_buf, &mut split)?;
        }
    }
    for run in 1..=args.runs {
        // Fresh processors per run: the trace cache starts empty each time.
        let stages = Stages::new()?;
        let mut split = Split::default();
        let cpu_before = thread_cpu();
        for _ in 0..args.passes {
            for request in &requests {
                process(&stages, request, &mut copy_buf, &mut split)?;
            }
        }
        let cpu = (thread_cpu() - cpu_before).as_secs_f64().max(1e-9);
        let rate = split.records as f64 / cpu;
        eprintln!(
            "run {run}: {rate:.0} records/s per core ({} records, {cpu:.3} CPU s)",
            split.records
        );
        rates.push(rate);
        splits.push(split);
    }
    let rate = crate::median(rates.clone());
    let split = splits.get(splits.len() / 2).cloned().unwrap_or_default();
    let total = (split.decode
        + split.redact
        + split.classify
        + split.tokens
        + split.validate
        + split.encode)
        .as_secs_f64()
        .max(1e-9);
    let share = |d: Duration| d.as_secs_f64() / total * 100.0;
    // Stage times are wall clock (the thread may be descheduled on a busy
    // machine): their shares, applied to the thread's CPU time per record.
    let cpu_per_record_us = 1e6 / rate;
    let per_record_us = |d: Duration| share(d) / 100.0 * cpu_per_record_us;
    println!(
        "\nTally pipeline CPU (decode + redact + classify + tokens + validate + COPY encode), one thread, median of {} runs\n",
        args.runs
    );
    println!("records/s per core: {rate:.0}");
    println!(
        "wire bytes per record: {:.0}; COPY bytes per record: {:.0}; activity rows {}, token rows {} per pass set",
        wire_bytes as f64 / (args.requests * args.records_per_request).max(1) as f64,
        split.copy_bytes as f64 / split.records.max(1) as f64,
        split.activity_rows,
        split.token_rows
    );
    println!("\n| stage | share | CPU µs per record |\n|---|---|---|");
    let stages = [
        ("decode", split.decode),
        ("redact", split.redact),
        ("classify", split.classify),
        ("tokens", split.tokens),
        ("validate", split.validate),
        ("COPY encode", split.encode),
    ];
    for (name, d) in stages {
        println!("| {name} | {:.1}% | {:.2} |", share(d), per_record_us(d));
    }
    let report = json!({
        "benchmark": "pipeline",
        "runs": args.runs,
        "records_per_second_per_core": rate,
        "run_rates": rates,
        "stages_us_per_record": stages
            .iter()
            .map(|(name, d)| (name.to_string(), json!(per_record_us(*d))))
            .collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    Ok(())
}
