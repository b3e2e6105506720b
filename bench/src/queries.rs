//! `tally-bench queries`: admin API latency on a large, generated data set.
//!
//! The data set lives in its own database (`--database`, default
//! `tally_bench_queries`) on the server at `TALLY_TEST_DATABASE_URL`: Tally's
//! migrations, the daily partitions of `--days` days ending today, `--size`
//! activity rows and as many token rows (see [`crate::gen`]) written with binary
//! COPY, the daily rollups filled with the rollup job's SQL (watermarks at the
//! newest `seq`, so the next rollup run has nothing to fold), then `ANALYZE`.
//! It is reused by later runs when its recorded shape matches
//! (`tally_bench_meta`); `--regenerate` drops and rebuilds it.
//!
//! The admin API runs in-process (`AdminApi::bind` on port 0, HS256 JWTs): a
//! `*` caller and a tenant-scoped caller (the RLS path) call each query shape
//! `--requests` times one after the other after `--warmup` calls; per shape the
//! report gives p50/p95/p99 latency (client side, full response read) and the
//! rows returned, as medians over `--runs` runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{Days, Utc};
use serde_json::{json, Value};
use tally_exporters::postgres::{connect, create_partitions, migrate};

use crate::budgets::percentile;
use crate::gen::{self, Population, Shape};
use crate::median;

/// Arguments of `tally-bench queries`.
#[derive(clap::Args)]
pub struct QueriesArgs {
    /// Activity rows (and as many token rows) in the data set.
    #[arg(long, default_value_t = 10_000_000)]
    pub size: u64,
    /// Days the rows are spread over (ending today, UTC).
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// Tenants (Zipf-like sizes).
    #[arg(long, default_value_t = 1_000)]
    pub tenants: usize,
    /// Users over all tenants.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// The bench database (kept between runs).
    #[arg(long, default_value = "tally_bench_queries")]
    pub database: String,
    /// Drop and regenerate the data set even when it matches.
    #[arg(long)]
    pub regenerate: bool,
    /// Only generate (or check) the data set.
    #[arg(long)]
    pub generate_only: bool,
    /// Timed requests per query shape and run.
    #[arg(long, default_value_t = 40)]
    pub requests: usize,
    /// Untimed requests per shape before the timed ones.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Longest time spent on one shape per run (fewer requests when slower).
    #[arg(long, default_value_t = 20)]
    pub shape_budget_secs: u64,
    /// Runs; figures are medians of the per-run percentiles.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Only the shapes whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-queries.json")]
    pub json: PathBuf,
    /// Raw rows per table above the rollup watermarks (the live aggregates'
    /// tail): copies of the newest rows (same days, new ids and seqs, received
    /// a minute ago) are added until the tail holds this many. The API reads
    /// them live; nothing folds them during the run. The default is the
    /// issue's target (a 1-minute-old unfolded tail of 100k rows); 0: no tail
    /// is added (one added by an earlier run stays).
    #[arg(long, default_value_t = 100_000)]
    pub tail: i64,
}

/// Tops the unfolded rows of `table` (above the `watermark` rollup watermark)
/// up to `rows`, copying its newest rows with new ids and seqs.
async fn add_tail(
    client: &tokio_postgres::Client,
    table: &str,
    sequence: &str,
    watermark: &str,
    rows: i64,
) -> anyhow::Result<i64> {
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
               AND attname NOT IN ('id', 'seq', 'received_at') ORDER BY attnum",
            &[&table],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let have: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {table} WHERE seq > \
                 (SELECT last_seq FROM rollup_watermarks WHERE name = $1)"
            ),
            &[&watermark],
        )
        .await?
        .get(0);
    let missing = rows - have;
    if missing > 0 {
        let list = columns.join(", ");
        client
            .execute(
                &format!(
                    "INSERT INTO {table} (id, seq, received_at, {list}) \
                     SELECT gen_random_uuid(), nextval('{sequence}'), \
                         now() - interval '1 minute', {list} \
                     FROM (SELECT * FROM {table} ORDER BY seq DESC LIMIT $1) AS newest \
                     ORDER BY seq"
                ),
                &[&missing],
            )
            .await
            .with_context(|| format!("adding the {table} tail"))?;
    }
    Ok(have.max(rows))
}

/// The PostgreSQL server the benchmarks use (as its superuser).
pub fn server_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `database` (URL form only).
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .context("TALLY_TEST_DATABASE_URL must be a postgres:// URL")?
        + 3;
    let rest = &url[scheme_end..];
    let query_start = rest.find('?').unwrap_or(rest.len());
    let authority_end = rest[..query_start].find('/').unwrap_or(query_start);
    Ok(format!(
        "{}{}/{}{}",
        &url[..scheme_end],
        &rest[..authority_end],
        database,
        &rest[query_start..]
    ))
}

/// The HS256 secret of the in-process admin API.
pub const SECRET: &str = "tally-bench-secret-tally-bench-secret";

/// A JWT for an hour with `scope` and `tenant`.
pub fn token(scope: &str, tenant: &str) -> anyhow::Result<String> {
    token_as("tally-bench", scope, tenant)
}

/// A JWT for an hour for caller `sub` with `scope` and `tenant`.
pub fn token_as(sub: &str, scope: &str, tenant: &str) -> anyhow::Result<String> {
    let claims = json!({
        "sub": sub,
        "exp": Utc::now().timestamp() + 3600 * 4,
        "scope": scope,
        "tenant": tenant,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())?,
    )?)
}

/// Starts the admin API in-process on a free port with HS256 auth; answers its
/// base URL (`http://127.0.0.1:port`).
pub async fn start_api(
    database_url: &str,
    configure: impl FnOnce(&mut tally_config::AdminApiConfig),
) -> anyhow::Result<String> {
    let mut config = tally_config::AdminApiConfig {
        endpoint: tally_config::Endpoint::localhost(0),
        ..tally_config::AdminApiConfig::default()
    };
    config.auth.jwt = Some(tally_config::JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        ..tally_config::JwtConfig::default()
    });
    configure(&mut config);
    let readiness = Arc::new(tally_model::Readiness::new());
    readiness.set_database_up(true);
    let api = tally_admin_api::AdminApi::bind(&config, database_url, readiness)
        .await
        .context("binding the admin API")?;
    let base = format!("http://{}", api.local_addr());
    tokio::spawn(api.serve(std::future::pending()));
    Ok(base)
}

/// Tops both raw tables' unfolded tails up to `rows` (see `--tail`); 0: nothing added.
pub(crate) async fn add_tails(url: &str, rows: i64) -> anyhow::Result<()> {
    if rows <= 0 {
        return Ok(());
    }
    let (client, _) = connect(url).await?;
    for (table, sequence, watermark) in [
        ("activity_events", "activity_events_seq", "activity_daily"),
        ("token_usage", "token_usage_seq", "token_usage_daily"),
    ] {
        let tail = add_tail(&client, table, sequence, watermark, rows).await?;
        eprintln!("{table}: {tail} rows above the rollup watermark");
    }
    Ok(())
}

/// The data set of `args` (generated, or reused when its recorded shape matches):
/// its URL and shape.
pub(crate) async fn ensure_database(args: &QueriesArgs) -> anyhow::Result<(String, Shape)> {
    anyhow::ensure!(
        args.database
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "--database must be lowercase letters, digits and _"
    );
    let server = server_url();
    let url = with_database(&server, &args.database)?;
    let (admin, _) = connect(&server).await.context("connecting to PostgreSQL")?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&args.database],
        )
        .await?
        .is_some();
    if exists && !args.regenerate {
        let (client, _) = connect(&url).await?;
        let meta = client
            .query_opt(
                "SELECT activity_rows, token_rows, days, tenants, users, last_day \
                 FROM tally_bench_meta WHERE complete",
                &[],
            )
            .await
            .ok()
            .flatten();
        if let Some(row) = meta {
            let shape = Shape {
                activity_rows: row.get::<_, i64>(0) as u64,
                token_rows: row.get::<_, i64>(1) as u64,
                days: row.get::<_, i32>(2) as u32,
                tenants: row.get::<_, i32>(3) as usize,
                users: row.get::<_, i64>(4) as u64,
                last_day: row.get(5),
            };
            if shape.activity_rows == args.size
                && shape.days == args.days
                && shape.tenants == args.tenants
                && shape.users == args.users
            {
                eprintln!(
                    "reusing {} ({} + {} rows, last day {})",
                    args.database, shape.activity_rows, shape.token_rows, shape.last_day
                );
                // Migrations added since (e.g. new indexes) are applied to it.
                migrate(&client).await?;
                return Ok((url, shape));
            }
        }
        eprintln!(
            "{} exists with another shape (or incomplete): regenerating",
            args.database
        );
    }
    if exists {
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                args.database
            ))
            .await?;
    }
    admin
        .batch_execute(&format!("CREATE DATABASE {}", args.database))
        .await?;
    let shape = Shape {
        activity_rows: args.size,
        token_rows: args.size,
        days: args.days,
        tenants: args.tenants,
        users: args.users,
        last_day: Utc::now().date_naive(),
    };
    generate(&url, shape).await?;
    Ok((url, shape))
}

async fn generate(url: &str, shape: Shape) -> anyhow::Result<()> {
    let started = Instant::now();
    let (client, _) = connect(url).await?;
    migrate(&client).await.context("migrating")?;
    let first = shape.last_day - Days::new(u64::from(shape.days.saturating_sub(1)));
    create_partitions(&client, first, shape.last_day + Days::new(7)).await?;
    client
        .batch_execute(
            "CREATE TABLE tally_bench_meta (activity_rows int8, token_rows int8, days int4, \
             tenants int4, users int8, last_day date, complete bool NOT NULL DEFAULT false, \
             generated_at timestamptz NOT NULL DEFAULT now(), seconds float8)",
        )
        .await?;
    client
        .execute(
            "INSERT INTO tally_bench_meta (activity_rows, token_rows, days, tenants, users, last_day) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &(shape.activity_rows as i64),
                &(shape.token_rows as i64),
                &(shape.days as i32),
                &(shape.tenants as i32),
                &(shape.users as i64),
                &shape.last_day,
            ],
        )
        .await?;
    let population = Arc::new(Population::new(shape));
    // Two writers (2 cores): PostgreSQL is the bottleneck, not the generator.
    let writers = 2u32;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = url.to_owned();
        let population = population.clone();
        tasks.push(tokio::spawn(async move {
            let (mut client, _) = connect(&url).await?;
            // No insert triggers for the fill (NOTIFY, migration 0020's tail
            // days): every generated row ends below the rollup watermarks.
            client
                .batch_execute(
                    "SET synchronous_commit = off; SET session_replication_role = replica",
                )
                .await?;
            for day in (w..shape.days).step_by(writers as usize) {
                gen::copy_activity_day(&mut client, &population, day).await?;
                gen::copy_token_day(&mut client, &population, day).await?;
                if day % 10 < writers {
                    eprintln!(
                        "  generated day {}/{} ({:.0} s)",
                        day + 1,
                        shape.days,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("generator task")??;
    }
    eprintln!(
        "rows written in {:.0} s; filling the rollups",
        started.elapsed().as_secs_f64()
    );
    client
        .batch_execute(&format!(
            "SELECT setval('activity_events_seq', {a}); SELECT setval('token_usage_seq', {t});",
            a = shape.activity_rows.max(1),
            t = shape.token_rows.max(1),
        ))
        .await?;
    fill_rollups(&client).await?;
    eprintln!("rollups filled; ANALYZE");
    client.batch_execute("VACUUM ANALYZE").await?;
    client
        .execute(
            "UPDATE tally_bench_meta SET complete = true, seconds = $1",
            &[&started.elapsed().as_secs_f64()],
        )
        .await?;
    eprintln!("data set ready in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every rollup table: their indexes are dropped for the fill and rebuilt after.
const ROLLUP_TABLES: &[&str] = &[
    "activity_daily",
    "token_usage_daily",
    "activity_daily_tenant",
    "activity_daily_all",
    "activity_users_daily",
    "activity_users_daily_all",
    "activity_user_last_seen",
    "activity_user_last_seen_all",
    "token_usage_daily_tenant",
    "token_usage_daily_all",
    "token_usage_latency_daily",
    "token_usage_latency_daily_all",
    "token_usage_ttft_daily",
    "token_usage_ttft_daily_all",
    "token_usage_speed_daily",
    "token_usage_speed_daily_all",
    "token_usage_latency_weekly_all",
    "token_usage_speed_weekly_all",
    "token_usage_user_weekly",
    "activity_user_weekly",
];

/// The rollup job's folds (exporters/src/postgres/rollup.rs) over every row at
/// once, and the watermarks at the newest `seq`: exactly the state after the
/// job has caught up. The derived rollups (user-less, tenant-less, active
/// users) are rebuilt from the daily ones by migration 0008's
/// `tally_rebuild_coarse_rollups()`. The rollups' indexes and primary keys are
/// dropped for the fill and built again after it: millions of rows inserted
/// in hash order into B-trees larger than `shared_buffers` crawl, one sorted
/// build per index does not.
async fn fill_rollups(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let tables: Vec<String> = ROLLUP_TABLES.iter().map(|t| t.to_string()).collect();
    let indexes = client
        .query(
            "SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid) \
             FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
             WHERE t.relname = ANY($1) AND t.relnamespace = 'public'::regnamespace \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) \
             UNION ALL \
             SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname), \
               format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname, \
                 pg_get_constraintdef(c.oid)) \
             FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
             WHERE t.relname = ANY($1) AND t.relnamespace = 'public'::regnamespace \
               AND c.contype IN ('p', 'u')",
            &[&tables],
        )
        .await
        .context("listing the rollups' indexes")?;
    let drop: Vec<String> = indexes.iter().map(|row| row.get::<_, String>(0)).collect();
    let create: Vec<String> = indexes.iter().map(|row| row.get::<_, String>(1)).collect();
    eprintln!(
        "  dropping {} rollup indexes for the fill, rebuilding them after",
        drop.len()
    );
    client
        .batch_execute(&format!(
            "SET work_mem = '256MB'; SET maintenance_work_mem = '1GB'; BEGIN; {};",
            drop.join("; ")
        ))
        .await
        .context("dropping the rollups' indexes")?;
    client
        .batch_execute(
            "\
             INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
               SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(user_id, ''), action, \
                 outcome, count(*) FROM activity_events GROUP BY 1, 2, 3, 4, 5; \
             UPDATE rollup_watermarks SET last_seq = (SELECT coalesce(max(seq), 0) FROM activity_events), \
               updated_at = now() WHERE name = 'activity_daily'; \
             INSERT INTO token_usage_daily (day, tenant_id, user_id, provider, model, requests, \
                 unknown_usage_requests, unpriced_requests, input_tokens, output_tokens, \
                 cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd) \
               SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(user_id, ''), \
                 coalesce(provider, ''), coalesce(model, ''), count(*), \
                 count(*) FILTER (WHERE NOT usage_known), count(*) FILTER (WHERE usage_known AND cost_usd IS NULL), \
                 coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), \
                 coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0), \
                 coalesce(sum(reasoning_tokens), 0), coalesce(sum(total_tokens), 0), \
                 coalesce(sum(cost_usd), 0) \
               FROM token_usage GROUP BY 1, 2, 3, 4, 5; \
             INSERT INTO token_usage_latency_daily (day, tenant_id, provider, model, outcome, \
                 bucket, requests, rate_output_tokens, rate_duration_ms) \
               SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''), \
                 coalesce(model, ''), outcome, tally_duration_bucket(duration_ms), count(*), \
                 coalesce(sum(output_tokens) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), 0), \
                 coalesce(sum(duration_ms) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), 0) \
               FROM token_usage GROUP BY 1, 2, 3, 4, 5, 6; \
             INSERT INTO token_usage_latency_daily_all (day, provider, model, outcome, bucket, \
                 requests, rate_output_tokens, rate_duration_ms) \
               SELECT day, provider, model, outcome, bucket, sum(requests), \
                 sum(rate_output_tokens), sum(rate_duration_ms) \
               FROM token_usage_latency_daily GROUP BY 1, 2, 3, 4, 5; \
             INSERT INTO token_usage_ttft_daily (day, tenant_id, provider, model, ttft_bucket, \
                 requests) \
               SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''), \
                 coalesce(model, ''), tally_duration_bucket(time_to_first_token_ms), count(*) \
               FROM token_usage GROUP BY 1, 2, 3, 4, 5; \
             INSERT INTO token_usage_ttft_daily_all (day, provider, model, ttft_bucket, requests) \
               SELECT day, provider, model, ttft_bucket, sum(requests) \
               FROM token_usage_ttft_daily GROUP BY 1, 2, 3, 4; \
             INSERT INTO token_usage_speed_daily (day, tenant_id, provider, model, speed_bucket, \
                 requests) \
               SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''), \
                 coalesce(model, ''), tally_speed_bucket(output_tokens, duration_ms), count(*) \
               FROM token_usage GROUP BY 1, 2, 3, 4, 5; \
             INSERT INTO token_usage_speed_daily_all (day, provider, model, speed_bucket, \
                 requests) \
               SELECT day, provider, model, speed_bucket, sum(requests) \
               FROM token_usage_speed_daily GROUP BY 1, 2, 3, 4; \
             UPDATE rollup_watermarks SET last_seq = (SELECT coalesce(max(seq), 0) FROM token_usage), \
               updated_at = now() WHERE name = 'token_usage_daily'; \
             SELECT tally_rebuild_coarse_rollups(); \
             SELECT tally_rebuild_weekly_histograms(); \
             SELECT tally_rebuild_user_weekly();",
        )
        .await
        .context("filling the rollups")?;
    client
        .batch_execute(&format!(
            "{}; COMMIT; RESET work_mem; RESET maintenance_work_mem;",
            create.join("; ")
        ))
        .await
        .context("building the rollups' indexes")?;
    Ok(())
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum As {
    /// `tenant: "*"`.
    All,
    /// The tenant-scoped caller (RLS path).
    Tenant,
}

/// One query shape.
struct QueryShape {
    name: String,
    caller: As,
    path: String,
}

/// Values picked from the data for the filters.
struct Picks {
    big_tenant: String,
    mid_tenant: String,
    small_tenant: String,
    heavy_user: String,
    user: String,
    rare_action: String,
    resource_type: String,
    resource_id: String,
    trace_id: String,
    token_trace_id: String,
    model: String,
    last_seq_activity: i64,
    last_seq_tokens: i64,
}

async fn picks(url: &str, shape: &Shape) -> anyhow::Result<Picks> {
    let (client, _) = connect(url).await?;
    let population = Population::new(*shape);
    let mid_rank = (shape.tenants / 10).min(shape.tenants.saturating_sub(1));
    let small_rank = shape.tenants.saturating_sub(1);
    let day = shape.last_day - Days::new(1);
    let from = day.and_hms_opt(12, 0, 0).context("date")?.and_utc();
    let row = client
        .query_one(
            "SELECT user_id, resource_type, resource_id, trace_id FROM activity_events \
             WHERE ts >= $1 AND tenant_id = $2 ORDER BY ts LIMIT 1",
            &[&from, &gen::tenant_id(mid_rank)],
        )
        .await
        .context("picking an activity row")?;
    let token = client
        .query_one(
            "SELECT trace_id FROM token_usage WHERE ts >= $1 ORDER BY ts LIMIT 1",
            &[&from],
        )
        .await
        .context("picking a token row")?;
    let max_a: i64 = client
        .query_one("SELECT coalesce(max(seq), 0) FROM activity_events", &[])
        .await?
        .get(0);
    let max_t: i64 = client
        .query_one("SELECT coalesce(max(seq), 0) FROM token_usage", &[])
        .await?
        .get(0);
    Ok(Picks {
        big_tenant: gen::tenant_id(0),
        mid_tenant: gen::tenant_id(mid_rank),
        small_tenant: gen::tenant_id(small_rank),
        heavy_user: population.first_user(0),
        user: row.get(0),
        rare_action: gen::ACTIONS[gen::ACTIONS.len() - 1].0.to_owned(),
        resource_type: row.get(1),
        resource_id: row.get(2),
        trace_id: row.get(3),
        token_trace_id: token.get(0),
        model: "claude-sonnet-4-20250514".to_owned(),
        last_seq_activity: max_a,
        last_seq_tokens: max_t,
    })
}

fn shapes(p: &Picks, shape: &Shape) -> Vec<QueryShape> {
    let last = shape.last_day;
    let from30 = last - Days::new(29);
    let to = last + Days::new(1);
    let day_from = (last - Days::new(6))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc());
    let day_to = (last - Days::new(5))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc());
    let range = match (day_from, day_to) {
        (Some(a), Some(b)) => format!(
            "from={}&to={}",
            a.format("%Y-%m-%dT%H:%M:%SZ"),
            b.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        _ => String::new(),
    };
    let old_range = {
        let a = last - Days::new(u64::from(shape.days.saturating_sub(2)));
        format!("from={a}T00:00:00Z&to={a}T06:00:00Z")
    };
    let mut list = vec![
        (
            "activity first page",
            As::All,
            "/api/v1/activity".to_owned(),
        ),
        (
            "activity tenant=big",
            As::All,
            format!("/api/v1/activity?tenant={}", p.big_tenant),
        ),
        (
            "activity tenant=small",
            As::All,
            format!("/api/v1/activity?tenant={}", p.small_tenant),
        ),
        (
            "activity user=heavy",
            As::All,
            format!("/api/v1/activity?user={}", p.heavy_user),
        ),
        (
            "activity user=typical",
            As::All,
            format!("/api/v1/activity?user={}", p.user),
        ),
        (
            "activity action=exact (common)",
            As::All,
            "/api/v1/activity?action=auth.login".to_owned(),
        ),
        (
            "activity action=exact (rarest)",
            As::All,
            format!("/api/v1/activity?action={}", p.rare_action),
        ),
        (
            "activity action=prefix billing.*",
            As::All,
            "/api/v1/activity?action=billing.*".to_owned(),
        ),
        (
            "activity outcome=failure",
            As::All,
            "/api/v1/activity?outcome=failure".to_owned(),
        ),
        (
            "activity resource_type+resource_id",
            As::All,
            format!(
                "/api/v1/activity?resource_type={}&resource_id={}",
                p.resource_type, p.resource_id
            ),
        ),
        (
            "activity trace_id",
            As::All,
            format!("/api/v1/activity?trace_id={}", p.trace_id),
        ),
        (
            "activity time range (1 day, 6 days ago)",
            As::All,
            format!("/api/v1/activity?{range}"),
        ),
        (
            "activity time range (6 h, oldest day)",
            As::All,
            format!("/api/v1/activity?{old_range}"),
        ),
        (
            "activity tenant=mid+action+outcome",
            As::All,
            format!(
                "/api/v1/activity?tenant={}&action=auth.*&outcome=failure",
                p.mid_tenant
            ),
        ),
        ("tokens first page", As::All, "/api/v1/tokens".to_owned()),
        (
            "tokens tenant=big",
            As::All,
            format!("/api/v1/tokens?tenant={}", p.big_tenant),
        ),
        (
            "tokens user=heavy",
            As::All,
            format!("/api/v1/tokens?user={}", p.heavy_user),
        ),
        (
            "tokens model",
            As::All,
            format!("/api/v1/tokens?model={}", p.model),
        ),
        (
            "tokens provider=meta",
            As::All,
            "/api/v1/tokens?provider=meta".to_owned(),
        ),
        (
            "tokens trace_id",
            As::All,
            format!("/api/v1/tokens?trace_id={}", p.token_trace_id),
        ),
    ];
    list.extend([
        (
            "activity/aggregates 30d group_by=action",
            As::All,
            format!("/api/v1/activity/aggregates?from={from30}&to={to}&group_by=action"),
        ),
        (
            "activity/aggregates 30d tenant=big group_by=user grain=month",
            As::All,
            format!(
                "/api/v1/activity/aggregates?from={from30}&to={to}&tenant={}&group_by=user&grain=month",
                p.big_tenant
            ),
        ),
        (
            "stats 7d",
            As::All,
            format!("/api/v1/stats?from={}&to={to}", last - Days::new(6)),
        ),
        (
            "stats 30d",
            As::All,
            format!("/api/v1/stats?from={from30}&to={to}"),
        ),
        (
            "export activity near head",
            As::All,
            format!(
                "/api/v1/export?after_seq={}",
                (p.last_seq_activity - 5_000).max(0)
            ),
        ),
        (
            "export activity from middle",
            As::All,
            format!("/api/v1/export?after_seq={}", p.last_seq_activity / 2),
        ),
        (
            "export tokens near head",
            As::All,
            format!(
                "/api/v1/export?table=token_usage&after_seq={}",
                (p.last_seq_tokens - 5_000).max(0)
            ),
        ),
        // The tenant-scoped caller (mid-size tenant): RLS path.
        ("[tenant] activity first page", As::Tenant, "/api/v1/activity".to_owned()),
        (
            "[tenant] activity user",
            As::Tenant,
            format!("/api/v1/activity?user={}", p.user),
        ),
        (
            "[tenant] activity action=prefix auth.*",
            As::Tenant,
            "/api/v1/activity?action=auth.*".to_owned(),
        ),
        (
            "[tenant] activity outcome=failure",
            As::Tenant,
            "/api/v1/activity?outcome=failure".to_owned(),
        ),
        (
            "[tenant] activity resource",
            As::Tenant,
            format!(
                "/api/v1/activity?resource_type={}&resource_id={}",
                p.resource_type, p.resource_id
            ),
        ),
        (
            "[tenant] activity trace_id",
            As::Tenant,
            format!("/api/v1/activity?trace_id={}", p.trace_id),
        ),
        ("[tenant] tokens first page", As::Tenant, "/api/v1/tokens".to_owned()),
        (
            "[tenant] tokens/usage 30d group_by=user",
            As::Tenant,
            format!("/api/v1/tokens/usage?from={from30}&to={to}&group_by=user"),
        ),
        (
            "[tenant] tokens/usage 30d group_by=model grain=month",
            As::Tenant,
            format!("/api/v1/tokens/usage?from={from30}&to={to}&group_by=model&grain=month"),
        ),
        (
            "[tenant] stats 30d",
            As::Tenant,
            format!("/api/v1/stats?from={from30}&to={to}"),
        ),
        (
            "[tenant] export activity from middle",
            As::Tenant,
            format!("/api/v1/export?after_seq={}", p.last_seq_activity / 2),
        ),
    ]);
    let mut shapes: Vec<QueryShape> = list
        .into_iter()
        .map(|(name, caller, path)| QueryShape {
            name: name.to_owned(),
            caller,
            path,
        })
        .collect();
    for grain in ["day", "week", "month"] {
        for group in ["user", "model"] {
            shapes.push(QueryShape {
                name: format!("tokens/usage 30d group_by={group} grain={grain}"),
                caller: As::All,
                path: format!(
                    "/api/v1/tokens/usage?from={from30}&to={to}&group_by={group}&grain={grain}"
                ),
            });
        }
    }
    shapes
}

/// One timed request: latency (ms), rows returned and the next cursor.
async fn call(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<(f64, usize, Option<String>)> {
    let started = Instant::now();
    let response = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.bytes().await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!(
            "GET {url}: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    if url.contains("/export") {
        let rows = body.iter().filter(|b| **b == b'\n').count();
        return Ok((elapsed, rows, None));
    }
    let value: Value = serde_json::from_slice(&body)?;
    let rows = match value.get("items") {
        Some(Value::Array(items)) => items.len(),
        _ => 1,
    };
    let cursor = value
        .get("next_cursor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((elapsed, rows, cursor))
}

/// Percentiles of one shape in one run.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    p50: f64,
    p95: f64,
    p99: f64,
    rows: usize,
    requests: usize,
    /// The first failed request (e.g. the server's 30 s statement timeout).
    error: Option<&'static str>,
}

async fn measure(
    args: &QueriesArgs,
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<Timing> {
    let mut rows = 0;
    let budget = Duration::from_secs(args.shape_budget_secs);
    let warming = Instant::now();
    for _ in 0..args.warmup {
        if warming.elapsed() > budget {
            break;
        }
        match call(http, url, token).await {
            Ok((_, n, _)) => rows = n,
            Err(error) => {
                eprintln!("  {error:#}");
                return Ok(Timing {
                    p50: f64::NAN,
                    p95: f64::NAN,
                    p99: f64::NAN,
                    error: Some("fails (statement timeout or error)"),
                    ..Timing::default()
                });
            }
        }
    }
    // Slow shapes (seconds per request) get fewer samples: at least one.
    let started = Instant::now();
    let mut samples = Vec::with_capacity(args.requests);
    while samples.len() < args.requests && (samples.is_empty() || started.elapsed() < budget) {
        let (ms, n, _) = call(http, url, token).await?;
        samples.push(ms);
        rows = n;
    }
    samples.sort_by(f64::total_cmp);
    Ok(Timing {
        p50: percentile(&samples, 0.5),
        p95: percentile(&samples, 0.95),
        p99: percentile(&samples, 0.99),
        rows,
        requests: samples.len(),
        error: None,
    })
}

/// The URL of page `page` (1-based) of `path`, following cursors.
async fn deep_page(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    page: usize,
) -> anyhow::Result<String> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{path}");
    for _ in 1..page {
        let (_, _, cursor) = call(http, &url, token).await?;
        // A small data set may have fewer pages: the last one is as deep as it gets.
        let Some(cursor) = cursor else {
            break;
        };
        url = format!("{base}{path}{separator}cursor={cursor}");
    }
    Ok(url)
}

/// `tally-bench queries`.
pub async fn run(args: QueriesArgs) -> anyhow::Result<()> {
    let (url, shape) = ensure_database(&args).await?;
    if args.generate_only {
        return Ok(());
    }
    add_tails(&url, args.tail).await?;
    let picks = picks(&url, &shape).await?;
    let base = start_api(&url, |_| {}).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()?;
    let all = token("activity:read tokens:read", "*")?;
    let tenant = token("activity:read tokens:read", &picks.mid_tenant)?;
    let token_of = |caller: As| if caller == As::All { &all } else { &tenant };

    let mut list = shapes(&picks, &shape);
    // Deep pages: page 50 of 50-row pages, following the cursors once.
    for (name, caller, path) in [
        (
            "activity page 50 (cursor)",
            As::All,
            "/api/v1/activity?limit=50",
        ),
        (
            "activity tenant=big page 50 (cursor)",
            As::All,
            "/api/v1/activity?limit=50&tenant=tenant-0001",
        ),
        (
            "tokens page 50 (cursor)",
            As::All,
            "/api/v1/tokens?limit=50",
        ),
        (
            "[tenant] activity page 50 (cursor)",
            As::Tenant,
            "/api/v1/activity?limit=50",
        ),
    ] {
        if !args.only.is_empty() && !args.only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let url = deep_page(&http, &base, path, token_of(caller), 50).await?;
        list.push(QueryShape {
            name: name.to_owned(),
            caller,
            path: url.trim_start_matches(base.as_str()).to_owned(),
        });
    }
    if !args.only.is_empty() {
        list.retain(|s| args.only.iter().any(|o| s.name.contains(o.as_str())));
    }

    let mut per_shape: Vec<Vec<Timing>> = vec![Vec::new(); list.len()];
    for run in 1..=args.runs {
        for (i, s) in list.iter().enumerate() {
            let timing = measure(
                &args,
                &http,
                &format!("{base}{}", s.path),
                token_of(s.caller),
            )
            .await
            .with_context(|| format!("run {run}, {}", s.name))?;
            eprintln!(
                "run {run} {:<55} p50 {:>8.1} p95 {:>8.1} ms ({} rows)",
                s.name, timing.p50, timing.p95, timing.rows
            );
            per_shape[i].push(timing);
        }
    }

    println!(
        "\nAdmin API queries at {} activity + {} token rows ({} days, {} tenants, {} users), \
         {} requests per shape and run, median of {} runs\n",
        shape.activity_rows,
        shape.token_rows,
        shape.days,
        shape.tenants,
        shape.users,
        args.requests,
        args.runs
    );
    println!("| query | p50 ms | p95 ms | p99 ms | rows | timed requests per run | p95 ≤ 50 ms |");
    println!("|---|---|---|---|---|---|---|");
    let mut items = Vec::new();
    for (s, timings) in list.iter().zip(&per_shape) {
        let m = |f: fn(&Timing) -> f64| median(timings.iter().map(f).collect());
        let (p50, p95, p99) = (m(|t| t.p50), m(|t| t.p95), m(|t| t.p99));
        let rows = timings.last().map_or(0, |t| t.rows);
        let error = timings.iter().find_map(|t| t.error);
        println!(
            "| {} | {p50:.1} | {p95:.1} | {p99:.1} | {rows} | {} | {} |",
            s.name,
            timings.iter().map(|t| t.requests).min().unwrap_or(0),
            match error {
                Some(error) => error,
                None if p95 <= 50.0 => "yes",
                None => "**no**",
            }
        );
        items.push(json!({
            "query": s.name,
            "caller": if s.caller == As::All { "*" } else { "tenant" },
            "path": s.path,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "rows": rows,
            "error": error,
            "runs": timings.iter().map(|t| json!({"p50_ms": t.p50, "p95_ms": t.p95, "p99_ms": t.p99, "requests": t.requests})).collect::<Vec<_>>(),
        }));
    }
    let report = json!({
        "benchmark": "queries",
        "activity_rows": shape.activity_rows,
        "token_rows": shape.token_rows,
        "days": shape.days,
        "tenants": shape.tenants,
        "users": shape.users,
        "last_day": shape.last_day.to_string(),
        "tenant_caller": picks.mid_tenant,
        "requests_per_shape": args.requests,
        "runs": args.runs,
        "queries": items,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    Ok(())
}
