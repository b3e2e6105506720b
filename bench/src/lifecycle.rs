//! `tally-bench lifecycle`: the data-lifecycle release figures of issue 22.
//!
//! A fresh database gets `--rows` activity rows from the shared generator
//! (`gen::copy_activity_day`, the `queries` data set's rows: `--days` daily
//! partitions, `--tenants` tenants, `--users` users), the first day chained as
//! the chainer would. Then, per run:
//!
//! * **erasure**: `--user-rows` more activity rows of one new user of the
//!   largest tenant (spread over the same days, canonical form v3, ~250-byte
//!   attributes with an email, an IP and the id repeated under `actor`, named in
//!   `personal_keys` as the writer does), then `Eraser::erase` with the default
//!   batch (5,000 rows per transaction) timed to its end (rollups re-keyed, the
//!   `admin.user.erase` event written). The user also has `--user-token-rows`
//!   `token_usage` rows (a tenth of them trace-attributed), in a table that
//!   starts with `--token-rows` generated rows. Each run erases a new user, so
//!   the tables grow by the user's rows per run.
//! * **archive**: the first day's partition written as an archive (`--format`
//!   ndjson or parquet) with a signed manifest (`archive::write_archive`), then checked with
//!   `archive::verify_archive` against the manifest and the chain in the database
//!   (every chained row re-hashed), each timed; the data file's size reported.
//!
//! Figures are medians over `--runs`, with the load average of the machine at
//! each run (it is shared: read them with that in mind). The database is
//! dropped at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{Days, Utc};
use serde_json::json;
use tally_config::ArchiveFormat;
use tally_exporters::postgres::archive::{verify_archive, write_archive};
use tally_exporters::postgres::chain::{signing_key_from_seed, ChainJob};
use tally_exporters::postgres::erasure::{Eraser, ErasureRequest};
use tally_exporters::postgres::{connect, create_partitions, partition_name};
use tally_exporters::testing::TestDatabase;

use crate::gen::{self, Population, Shape};

#[derive(clap::Args)]
pub struct LifecycleArgs {
    /// Activity rows generated before the runs (the "10M-row table").
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Daily partitions the rows are spread over (the archived day holds
    /// rows / days).
    #[arg(long, default_value_t = 10)]
    days: u32,
    /// Tenants.
    #[arg(long, default_value_t = 50)]
    tenants: usize,
    /// Users over all tenants.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Token rows generated before the runs.
    #[arg(long, default_value_t = 1_000_000)]
    token_rows: u64,
    /// Rows of the user erased in each run.
    #[arg(long, default_value_t = 1_000_000)]
    user_rows: u64,
    /// Token rows of the user erased in each run.
    #[arg(long, default_value_t = 100_000)]
    user_token_rows: u64,
    /// Runs (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The archive's format: `ndjson` or `parquet` (`retention.archive.format`).
    #[arg(long, default_value = "ndjson", value_parser = ["ndjson", "parquet"])]
    format: String,
    /// Where archives are written (a fresh subdirectory per run, removed after).
    #[arg(long, default_value = "target/bench-lifecycle-archive")]
    archive_dir: PathBuf,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-lifecycle.json")]
    json: PathBuf,
}

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// One activity row of the erased user per `i` of `generate_series($3)`:
/// `$1` tenant, `$2` user, times from `$4` over `$5` seconds (v3 rows, ~250-byte
/// attributes with an email, an IP and the id under `actor`, named in
/// `personal_keys` as the writer does).
const USER_ACTIVITY_INSERT: &str = "INSERT INTO activity_events (id, seq, ts, received_at, \
         tenant_id, user_id, session_id, action, outcome, resource_type, resource_id, service, \
         trace_id, span_id, attributes, taxonomy_valid, personal_keys) \
     SELECT gen_random_uuid(), nextval('activity_events_seq'), t, t, $1, $2, \
         'sess-' || (i % 997), 'document.view', 'success', 'document', \
         'document-' || (i % 20000), 'web', md5(i::text || $2), left(md5(i::text), 16), \
         jsonb_build_object('http.request.method', 'GET', \
             'http.route', '/api/v2/document/{id}', 'http.response.status_code', 200, \
             'user.email', 'email:hmac:' || left(md5($2), 16), \
             'client.address', 'ip:hmac:' || left(md5(i::text), 16), \
             'actor', $2::text, 'request.id', left(md5((i + 1)::text), 16), \
             'app.version', '4.2.1'), true, ARRAY['actor'] \
     FROM (SELECT i, $4::timestamptz + make_interval(secs => random() * $5::float8) \
         AS t FROM generate_series(1, $3::int8) AS i) AS x ORDER BY t";

/// One token row of the erased user per `i` (parameters as
/// [`USER_ACTIVITY_INSERT`]), one in ten attributed through the trace.
const USER_TOKEN_INSERT: &str =
    "INSERT INTO token_usage (id, seq, ts, received_at, tenant_id, user_id, \
         session_id, service, trace_id, span_id, provider, operation, \
         request_model, response_model, model, input_tokens, output_tokens, \
         total_tokens, cost_usd, outcome, duration_ms, attribution_source, \
         attributes) \
     SELECT gen_random_uuid(), nextval('token_usage_seq'), t, t, $1, $2, \
         'sess-' || (i % 997), 'web', md5(i::text || $2), left(md5(i::text), 16), \
         'openai', 'chat', 'gpt-4o-mini', 'gpt-4o-mini', 'gpt-4o-mini', \
         100 + i % 900, 10 + i % 300, 110 + i % 900 + i % 300, \
         (100 + i % 900) * 0.00000015 + (10 + i % 300) * 0.0000006, 'success', \
         200 + i % 5000, CASE WHEN i % 10 = 0 THEN 'trace' ELSE 'record' END, \
         jsonb_build_object('gen_ai.request.max_tokens', 1024, \
             'app.feature', 'assistant', 'enduser.id', $2::text) \
     FROM (SELECT i, $4::timestamptz + make_interval(secs => random() * $5::float8) \
         AS t FROM generate_series(1, $3::int8) AS i) AS x ORDER BY t";

/// Runs `insert` (one of the statements above) for `rows` rows of `user` in
/// `tenant`, spread over the data set's days, in chunks of 100,000 (one
/// transaction each).
async fn insert_user_rows(
    client: &tokio_postgres::Client,
    insert: &str,
    shape: &Shape,
    tenant: &str,
    user: &str,
    rows: u64,
) -> anyhow::Result<()> {
    let first = shape.last_day - Days::new(u64::from(shape.days - 1));
    let start = first.and_time(chrono::NaiveTime::MIN).and_utc();
    let span_secs = f64::from(shape.days) * 86_400.0 - 1.0;
    let chunk = 100_000u64;
    let mut done = 0u64;
    while done < rows {
        let n = chunk.min(rows - done) as i64;
        client
            .execute(insert, &[&tenant, &user, &n, &start, &span_secs])
            .await
            .context("inserting the user's rows")?;
        done += n as u64;
    }
    Ok(())
}

pub async fn run(args: LifecycleArgs) -> anyhow::Result<()> {
    let format = match args.format.as_str() {
        "parquet" => ArchiveFormat::Parquet,
        _ => ArchiveFormat::Ndjson,
    };
    anyhow::ensure!(
        args.days >= 1 && args.runs >= 1,
        "--days and --runs: at least 1"
    );
    let started = Instant::now();
    let db = TestDatabase::migrated().await;
    let shape = Shape {
        activity_rows: args.rows,
        token_rows: args.token_rows,
        days: args.days,
        tenants: args.tenants,
        users: args.users,
        last_day: Utc::now().date_naive() - Days::new(1),
    };
    let first_day = shape.last_day - Days::new(u64::from(shape.days - 1));
    {
        let (client, _) = connect(&db.url).await?;
        create_partitions(&client, first_day, shape.last_day + Days::new(2)).await?;
    }
    let population = Arc::new(Population::new(shape));
    let mut tasks = Vec::new();
    for w in 0..2u32 {
        let url = db.url.clone();
        let population = population.clone();
        tasks.push(tokio::spawn(async move {
            let (mut client, _) = connect(&url).await?;
            client.batch_execute("SET synchronous_commit = off").await?;
            for day in (w..shape.days).step_by(2) {
                gen::copy_activity_day(&mut client, &population, day).await?;
                gen::copy_token_day(&mut client, &population, day).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("generator task")??;
    }
    let (mut client, _) = connect(&db.url).await?;
    client
        .batch_execute(&format!(
            "SELECT setval('activity_events_seq', {}); SELECT setval('token_usage_seq', {})",
            shape.activity_rows.max(1),
            shape.token_rows.max(1)
        ))
        .await?;
    eprintln!(
        "{} activity and {} token rows generated in {:.0} s (load {})",
        shape.activity_rows,
        shape.token_rows,
        started.elapsed().as_secs_f64(),
        load_average()
    );
    // The archived day is chained, as a day retention drops would be.
    let signer = signing_key_from_seed(&[11; 32])?;
    let trusted = [signer.verifying_key()];
    let first_day_rows = gen::rows_on(shape.activity_rows, shape.days, 0) as i64;
    let chainer = ChainJob::new(Some(signer.clone()), std::time::Duration::ZERO)
        .with_max_rows_per_run(100_000);
    let chain_started = Instant::now();
    loop {
        let report = chainer.run_once(&mut client).await?;
        if report.rows == 0 || report.to_seq >= first_day_rows {
            break;
        }
    }
    let chain_seconds = chain_started.elapsed().as_secs_f64();
    // One statement per call: VACUUM cannot run in the implicit transaction of a
    // multi-statement simple query.
    for table in ["activity_events", "token_usage"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    eprintln!(
        "first day ({first_day_rows} rows) chained in {chain_seconds:.1} s; VACUUM ANALYZE done"
    );

    let eraser = Eraser::new(vec![5; 32], Some(signer.clone()));
    let tenant = gen::tenant_id(0);
    let partition = partition_name(first_day);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let user = format!("erase-me-{run}");
        let insert_started = Instant::now();
        insert_user_rows(
            &client,
            USER_ACTIVITY_INSERT,
            &shape,
            &tenant,
            &user,
            args.user_rows,
        )
        .await?;
        insert_user_rows(
            &client,
            USER_TOKEN_INSERT,
            &shape,
            &tenant,
            &user,
            args.user_token_rows,
        )
        .await?;
        client
            .batch_execute("ANALYZE activity_events; ANALYZE token_usage")
            .await?;
        let table_rows: i64 = client
            .query_one("SELECT count(*) FROM activity_events", &[])
            .await?
            .get(0);
        eprintln!(
            "run {run}: {} activity and {} token rows of {user} inserted in {:.0} s \
             ({table_rows} activity rows in the table)",
            args.user_rows,
            args.user_token_rows,
            insert_started.elapsed().as_secs_f64()
        );
        let load_before = load_average();
        let erase_started = Instant::now();
        let record = eraser
            .erase(
                &mut client,
                &ErasureRequest {
                    tenant: tenant.clone(),
                    user: user.clone(),
                    reason: "tally-bench lifecycle".into(),
                    requested_by: "tally-bench".into(),
                },
            )
            .await?;
        let erase_seconds = erase_started.elapsed().as_secs_f64();
        let erased = record.counts.get("activity_events").copied().unwrap_or(0);
        anyhow::ensure!(
            erased == args.user_rows as i64,
            "erased {erased} rows, not {}",
            args.user_rows
        );
        let erased_tokens = record.counts.get("token_usage").copied().unwrap_or(0);
        anyhow::ensure!(
            erased_tokens == args.user_token_rows as i64,
            "erased {erased_tokens} token rows, not {}",
            args.user_token_rows
        );

        let dir = args.archive_dir.join(format!("run-{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        let archive_started = Instant::now();
        let archived = write_archive(
            &client,
            &dir,
            format,
            "activity_events",
            &partition,
            first_day,
            None,
            Some(&signer),
        )
        .await?
        .context("the first day has no rows")?;
        let archive_seconds = archive_started.elapsed().as_secs_f64();
        let verify_started = Instant::now();
        let check = verify_archive(&archived.manifest_path, &trusted, Some(&client)).await?;
        let verify_seconds = verify_started.elapsed().as_secs_f64();
        anyhow::ensure!(
            check.is_intact(),
            "archive check failed: {:?}",
            check.problems
        );
        let _ = std::fs::remove_dir_all(&dir);
        let figures = json!({
            "run": run,
            "table_rows_before_erasure": table_rows,
            "erased_rows": erased,
            "erased_token_rows": erased_tokens,
            "erase_seconds": erase_seconds,
            "erase_rows_per_second": erased as f64 / erase_seconds,
            "archive_rows": archived.manifest.rows,
            "archive_chained_rows": archived.manifest.chained_rows,
            "archive_bytes": archived.manifest.bytes,
            "archive_write_seconds": archive_seconds,
            "archive_verify_seconds": verify_seconds,
            "archive_rows_rehashed": check.rows_rehashed,
            "load_average_before_erasure": load_before,
            "load_average_after": load_average(),
        });
        eprintln!("run {run}: {figures}");
        runs.push(figures);
    }
    let pick = |name: &str| -> f64 {
        crate::median(
            runs.iter()
                .filter_map(|r| r.get(name).and_then(|v| v.as_f64()))
                .collect(),
        )
    };
    let summary = json!({
        "rows_generated": shape.activity_rows,
        "days": shape.days,
        "token_rows_generated": shape.token_rows,
        "user_rows": args.user_rows,
        "user_token_rows": args.user_token_rows,
        "runs": args.runs,
        "first_day_chain_seconds": chain_seconds,
        "median_erase_seconds": pick("erase_seconds"),
        "median_erase_rows_per_second": pick("erase_rows_per_second"),
        "archive_format": args.format,
        "median_archive_write_seconds": pick("archive_write_seconds"),
        "median_archive_verify_seconds": pick("archive_verify_seconds"),
        "median_archive_bytes": pick("archive_bytes"),
        "archive_rows": pick("archive_rows"),
        "per_run": runs,
    });
    println!(
        "erasure of {} activity + {} token rows of one user ({}+ row table): \
         median {:.1} s, {:.0} activity rows/s",
        args.user_rows,
        args.user_token_rows,
        shape.activity_rows,
        pick("erase_seconds"),
        pick("erase_rows_per_second")
    );
    println!(
        "{} archive of one {:.0}-row day: write median {:.2} s, verify median {:.2} s, {:.1} MiB",
        args.format,
        pick("archive_rows"),
        pick("archive_write_seconds"),
        pick("archive_verify_seconds"),
        pick("archive_bytes") / 1_048_576.0
    );
    std::fs::write(&args.json, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("figures written to {}", args.json.display());
    Ok(())
}
