//! `tally-bench budgets`: how fast `GET /api/v1/budgets/check` answers while the
//! budget job refreshes every second, and what one refresh costs.
//!
//! A fresh database gets `--rows` token rows spread over the current month
//! (folded into the rollups) plus `--tail-rows` recent rows above the rollup
//! watermark (what the job reads raw), and `--budgets` budgets of every scope
//! (tenant, tenant + user, user, everyone) and period. The admin API runs
//! in-process with the job (interval 1 s); `--clients` concurrent clients send
//! `--requests` checks in all, half as a caller for every tenant and half as a
//! tenant-bound one, each for a random tenant and user. Latency is client side,
//! full response read, over loopback HTTP/1.1 with keep-alive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{Datelike, NaiveDate, Utc};
use serde_json::{json, Value};
use tally_config::{BudgetConfig, BudgetPeriod};
use tally_exporters::postgres::budgets::{BudgetBook, BudgetJob, DEFAULT_BUDGET_INTERVAL};
use tally_exporters::postgres::{create_partitions, RollupJob};
use tally_exporters::testing::TestDatabase;

use crate::queries::{token, SECRET};

#[derive(clap::Args)]
pub struct BudgetsArgs {
    /// Token rows over the current month, folded into the rollups.
    #[arg(long, default_value_t = 500_000)]
    rows: u64,
    /// Recent token rows left above the rollup watermark (the issue's
    /// target: a 1-minute-old tail of 100k rows).
    #[arg(long, default_value_t = 100_000)]
    tail_rows: u64,
    /// Tenants the rows belong to.
    #[arg(long, default_value_t = 50)]
    tenants: u64,
    /// Users per tenant.
    #[arg(long, default_value_t = 200)]
    users_per_tenant: u64,
    /// Configured budgets.
    #[arg(long, default_value_t = 100)]
    budgets: usize,
    /// Timed `/budgets/check` requests in all.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-budgets.json")]
    json: std::path::PathBuf,
}

/// The nearest-rank `p` quantile of `sorted` (ascending); NaN when empty. The
/// benchmarks' one percentile (at 0.5 of an even count it takes the lower
/// middle value, where [`crate::median`] takes the upper one).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Inserts `rows` token rows with `ts` spread over `[from, to)` seconds ago.
async fn insert_rows(
    client: &tokio_postgres::Client,
    args: &BudgetsArgs,
    rows: u64,
    from_secs_ago: f64,
    to_secs_ago: f64,
) -> anyhow::Result<()> {
    let chunk = 100_000u64;
    let mut done = 0u64;
    while done < rows {
        let n = chunk.min(rows - done);
        client
            .execute(
                "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, provider, model, \
                    input_tokens, output_tokens, total_tokens, cost_usd, outcome, attribution_source) \
                 SELECT gen_random_uuid(), nextval('token_usage_seq'), \
                    now() - make_interval(secs => $1::float8 + random() * ($2::float8 - $1::float8)), \
                    'tenant-' || (i % $3::bigint), 'user-' || ((i / $3::bigint) % $4::bigint), \
                    'openai', 'gpt-4o-mini', \
                    100, 20, 120, 0.0001, 'success', 'record' \
                 FROM generate_series(1, $5::bigint) AS i",
                &[
                    &to_secs_ago,
                    &from_secs_ago,
                    &(args.tenants as i64),
                    &(args.users_per_tenant as i64),
                    &(n as i64),
                ],
            )
            .await
            .context("inserting token rows")?;
        done += n;
    }
    Ok(())
}

fn budget_configs(args: &BudgetsArgs) -> Vec<BudgetConfig> {
    let periods = [BudgetPeriod::Day, BudgetPeriod::Week, BudgetPeriod::Month];
    (0..args.budgets)
        .map(|i| {
            let tenant = format!("tenant-{}", i as u64 % args.tenants);
            let user = format!("user-{}", i as u64 % args.users_per_tenant);
            let (tenant, user) = match i % 10 {
                0 => (None, None),
                1 => (None, Some(user)),
                2..=5 => (Some(tenant), None),
                _ => (Some(tenant), Some(user)),
            };
            BudgetConfig {
                name: format!("budget-{i}"),
                tenant,
                user,
                period: periods[i % 3],
                limit_usd: (i % 2 == 0).then_some(5.0),
                limit_tokens: (i % 2 == 1).then_some(1_000_000),
                thresholds: vec![0.5, 0.8, 1.0],
            }
        })
        .collect()
}

async fn start_api(database_url: &str, book: Arc<BudgetBook>) -> anyhow::Result<String> {
    let mut config = tally_config::AdminApiConfig {
        endpoint: tally_config::Endpoint::localhost(0),
        ..tally_config::AdminApiConfig::default()
    };
    config.auth.jwt = Some(tally_config::JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        ..tally_config::JwtConfig::default()
    });
    // The clients share one address: let each run as many requests as it sends.
    config.limits.max_concurrent_per_caller = 1024;
    let readiness = Arc::new(tally_model::Readiness::new());
    readiness.set_database_up(true);
    let api = tally_admin_api::AdminApi::bind(&config, database_url, readiness)
        .await
        .context("binding the admin API")?
        .with_budgets(book);
    let base = format!("http://{}", api.local_addr());
    tokio::spawn(api.serve(std::future::pending()));
    Ok(base)
}

pub async fn run(args: BudgetsArgs) -> anyhow::Result<()> {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let first = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let monday = today - chrono::Days::new(u64::from(today.weekday().num_days_from_monday()));
    create_partitions(&client, first.min(monday), today).await?;
    let seconds_into_month = (Utc::now().timestamp()
        - first
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp())) as f64;
    println!(
        "loading {} folded rows over the month and a tail of {} …",
        args.rows, args.tail_rows
    );
    insert_rows(
        &client,
        &args,
        args.rows,
        seconds_into_month.max(120.0),
        120.0,
    )
    .await?;
    let rollup = RollupJob::new(Duration::ZERO).with_max_rows_per_run(1_000_000);
    loop {
        let report = rollup.run_once(&mut client).await?;
        if report.tokens_to_seq == report.tokens_from_seq {
            break;
        }
    }
    insert_rows(&client, &args, args.tail_rows, 60.0, 1.0).await?;
    client.batch_execute("ANALYZE").await?;

    let budgets = budget_configs(&args);
    // The cost of one refresh, measured on its own first.
    let book = BudgetBook::new();
    let mut job = BudgetJob::new(budgets.clone(), book.clone(), None);
    let mut refresh = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        job.run_once(&mut client).await?;
        refresh.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    refresh.sort_by(f64::total_cmp);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = BudgetJob::new(budgets, book.clone(), None).spawn(
        db.url.clone(),
        DEFAULT_BUDGET_INTERVAL,
        stopped,
    );
    let base = start_api(&db.url, book).await?;
    let all = token("tokens:read", "*")?;
    let http = reqwest::Client::new();
    // Warm-up (connections, first refresh of the spawned job).
    for _ in 0..200 {
        let response = http
            .get(format!(
                "{base}/api/v1/budgets/check?tenant=tenant-1&user=user-1"
            ))
            .bearer_auth(&all)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("warm-up: {}", response.status());
        }
        response.bytes().await?;
    }
    let per_client = args.requests / args.clients.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let http = http.clone();
        let base = base.clone();
        let tenants = args.tenants;
        let users = args.users_per_tenant;
        let all = all.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            let mut applying = 0usize;
            for i in 0..per_client {
                let n = (c * per_client + i) as u64;
                let tenant = format!("tenant-{}", n.wrapping_mul(7919) % tenants);
                let user = format!("user-{}", n.wrapping_mul(104_729) % users);
                let (url, bearer) = if i % 2 == 0 {
                    (
                        format!("{base}/api/v1/budgets/check?tenant={tenant}&user={user}"),
                        all.clone(),
                    )
                } else {
                    (
                        format!("{base}/api/v1/budgets/check?user={user}"),
                        token("tokens:read", &tenant)?,
                    )
                };
                let t = Instant::now();
                let response = http.get(&url).bearer_auth(&bearer).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
                if !status.is_success() {
                    bail!("{url}: {status}");
                }
                let value: Value = serde_json::from_slice(&body)?;
                applying += value["budgets"].as_array().map_or(0, Vec::len);
            }
            Ok::<_, anyhow::Error>((samples, applying))
        }));
    }
    let mut samples = Vec::with_capacity(args.requests);
    let mut applying = 0;
    for task in tasks {
        let (s, a) = task.await??;
        samples.extend(s);
        applying += a;
    }
    let wall = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = handle.await;
    samples.sort_by(f64::total_cmp);
    let figures = json!({
        "rows": args.rows,
        "tail_rows": args.tail_rows,
        "budgets": args.budgets,
        "clients": args.clients,
        "requests": samples.len(),
        "budgets_per_answer": applying as f64 / samples.len().max(1) as f64,
        "check_p50_ms": percentile(&samples, 0.50),
        "check_p95_ms": percentile(&samples, 0.95),
        "check_p99_ms": percentile(&samples, 0.99),
        "check_max_ms": percentile(&samples, 1.0),
        "checks_per_second": samples.len() as f64 / wall,
        "refresh_p50_ms": percentile(&refresh, 0.50),
        "refresh_max_ms": percentile(&refresh, 1.0),
        // An answer is at most one interval plus one refresh old.
        "fresh_within_ms": DEFAULT_BUDGET_INTERVAL.as_secs_f64() * 1000.0
            + percentile(&refresh, 1.0),
        "check_p99_target_met": percentile(&samples, 0.99) <= 5.0,
    });
    println!("| figure | value |\n| --- | --- |");
    if let Value::Object(map) = &figures {
        for (key, value) in map {
            println!("| {key} | {value} |");
        }
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&figures)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    Ok(())
}
