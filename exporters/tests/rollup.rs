//! The rollup job against a real PostgreSQL: exactly once under concurrent
//! ingestion and killed runs; the attribution delay of token rows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use tally_exporters::postgres::{
    create_partitions, insert_activity_batch, unfold_token_rows, RollupJob, ACTIVITY_WATERMARK,
    TOKEN_WATERMARK,
};
use tally_exporters::testing::TestDatabase;
use tally_model::{ActivityEvent, Outcome};
use tokio_postgres::Client;
use uuid::Uuid;

/// The token writers' lock key (the bytes `tallytok`), as documented in the schema.
const TOKEN_LOCK: i64 = i64::from_be_bytes(*b"tallytok");

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn first_day() -> NaiveDate {
    Utc::now().date_naive() - Days::new(3)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

async fn token_partitions(client: &Client, from: NaiveDate, through: NaiveDate) {
    let mut day = from;
    while day <= through {
        let next = day.succ_opt().expect("next day");
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS token_usage_p{} PARTITION OF token_usage \
                 FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
                day.format("%Y%m%d")
            ))
            .await
            .expect("token partition");
        day = next;
    }
}

fn activity_events(rng: &mut Rng, n: usize) -> Vec<ActivityEvent> {
    (0..n)
        .map(|_| ActivityEvent {
            id: Uuid::new_v4(),
            ts: midnight(first_day())
                + TimeDelta::microseconds(rng.below(3 * 86_400_000_000) as i64),
            tenant_id: ["acme", "globex", ""]
                .get(rng.below(3) as usize)
                .filter(|t| !t.is_empty())
                .map(|t| t.to_string()),
            user_id: (rng.below(5) != 0).then(|| format!("u{}", rng.below(6))),
            session_id: None,
            action: ["auth.login", "doc.read", "doc.write"][rng.below(3) as usize].to_owned(),
            outcome: [Outcome::Success, Outcome::Failure, Outcome::Unknown][rng.below(3) as usize],
            resource_type: None,
            resource_id: None,
            service: Some("svc".to_owned()),
            trace_id: None,
            span_id: None,
            attributes: serde_json::Map::new(),
            taxonomy_valid: None,
            taxonomy_reason: None,
            duration_ms: None,
            name: None,
            error_type: None,
            error_message: None,
        })
        .collect()
}

/// Inserts `n` random token rows in one transaction under the writers' lock protocol.
async fn insert_tokens(client: &mut Client, rng: &mut Rng, n: usize) -> u64 {
    let mut ids = Vec::new();
    let mut ts = Vec::new();
    let mut tenants = Vec::new();
    let mut users: Vec<Option<String>> = Vec::new();
    let mut providers: Vec<Option<String>> = Vec::new();
    let mut models: Vec<Option<String>> = Vec::new();
    let mut known = Vec::new();
    let mut input: Vec<Option<i64>> = Vec::new();
    let mut output: Vec<Option<i64>> = Vec::new();
    let mut cost: Vec<Option<String>> = Vec::new();
    let mut ttft: Vec<Option<f64>> = Vec::new();
    let mut duration: Vec<Option<f64>> = Vec::new();
    for _ in 0..n {
        ids.push(Uuid::new_v4());
        ts.push(
            midnight(first_day()) + TimeDelta::microseconds(rng.below(3 * 86_400_000_000) as i64),
        );
        tenants.push(["acme", "globex", ""][rng.below(3) as usize].to_owned());
        users.push((rng.below(4) != 0).then(|| format!("u{}", rng.below(5))));
        providers.push(
            (rng.below(6) != 0).then(|| ["openai", "anthropic"][rng.below(2) as usize].to_owned()),
        );
        models.push(Some(
            ["gpt-4o", "claude", "mystery"][rng.below(3) as usize].to_owned(),
        ));
        let usage = rng.below(8) != 0;
        known.push(usage);
        input.push(usage.then(|| rng.below(5000) as i64));
        output.push(usage.then(|| rng.below(900) as i64));
        cost.push(
            (usage && rng.below(4) != 0).then(|| format!("0.{:010}", rng.below(10_000_000_000))),
        );
        // Half the calls report a time to first token (0 to 5 s).
        ttft.push((rng.below(2) == 0).then(|| rng.below(5_000_000) as f64 / 1000.0));
        // Three calls in four report a duration (0 to 60 s: 0 counts for no speed).
        duration.push((rng.below(4) != 0).then(|| rng.below(60_000_000) as f64 / 1000.0));
    }
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
        .await
        .expect("lock");
    let inserted = tx
        .execute(
            "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, provider, model, usage_known, \
             input_tokens, output_tokens, total_tokens, cache_read_tokens, cost_usd, \
             time_to_first_token_ms, duration_ms) \
             SELECT id, nextval('token_usage_seq'), ts, t, u, p, m, k, i, o, i + o, i / 10, c::numeric, \
                 f, d \
             FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::bool[], $8::int8[], $9::int8[], $10::text[], $11::float8[], \
                 $12::float8[]) \
                 AS x(id, ts, t, u, p, m, k, i, o, c, f, d)",
            &[
                &ids, &ts, &tenants, &users, &providers, &models, &known, &input, &output, &cost,
                &ttft, &duration,
            ],
        )
        .await
        .expect("insert tokens");
    tx.commit().await.expect("commit");
    inserted
}

const ACTIVITY_ROLLUP: &str = "SELECT day::text, tenant_id, user_id, action, outcome, events \
    FROM activity_daily ORDER BY 1, 2, 3, 4, 5";
const ACTIVITY_RAW: &str = "SELECT (ts AT TIME ZONE 'UTC')::date::text, tenant_id, \
    coalesce(user_id, ''), action, outcome, count(*) FROM activity_events \
    GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5";
const TOKEN_ROLLUP: &str = "SELECT day::text, tenant_id, user_id, provider, model, requests, \
    unknown_usage_requests, unpriced_requests, input_tokens, output_tokens, cache_read_tokens, \
    cache_write_tokens, reasoning_tokens, total_tokens, cost_usd::text \
    FROM token_usage_daily ORDER BY 1, 2, 3, 4, 5";
const TOKEN_RAW: &str = "SELECT (ts AT TIME ZONE 'UTC')::date::text, tenant_id, \
    coalesce(user_id, ''), coalesce(provider, ''), coalesce(model, ''), count(*), \
    count(*) FILTER (WHERE NOT usage_known), \
    count(*) FILTER (WHERE usage_known AND cost_usd IS NULL), \
    coalesce(sum(input_tokens), 0)::int8, coalesce(sum(output_tokens), 0)::int8, \
    coalesce(sum(cache_read_tokens), 0)::int8, coalesce(sum(cache_write_tokens), 0)::int8, \
    coalesce(sum(reasoning_tokens), 0)::int8, coalesce(sum(total_tokens), 0)::int8, \
    coalesce(sum(cost_usd), 0)::numeric(24, 10)::text \
    FROM token_usage GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5";

/// The time-to-first-token rollups (migration 0025) as the job keeps them, and
/// as computed from the raw rows (call only when every row is folded).
const TTFT_ROLLUPS: [(&str, &str); 2] = [
    (
        "SELECT day, tenant_id, provider, model, ttft_bucket, requests FROM token_usage_ttft_daily \
         WHERE requests > 0 ORDER BY 1, 2, 3, 4, 5",
        "SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''), \
         coalesce(model, ''), tally_duration_bucket(time_to_first_token_ms), count(*) \
         FROM token_usage GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
    ),
    (
        "SELECT day, provider, model, ttft_bucket, requests FROM token_usage_ttft_daily_all \
         WHERE requests > 0 ORDER BY 1, 2, 3, 4",
        "SELECT (ts AT TIME ZONE 'UTC')::date, coalesce(provider, ''), coalesce(model, ''), \
         tally_duration_bucket(time_to_first_token_ms), count(*) \
         FROM token_usage GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    ),
];

/// The weekly latency and output speed histograms over every tenant
/// (migration 0028) hold exactly the raw rows' histograms per ISO week, and no
/// emptied group (call only when every row is folded).
async fn assert_weekly_histograms_agree(client: &Client) {
    let pairs = [
        (
            "SELECT week, provider, model, outcome, bucket, requests, rate_output_tokens, \
                 round(rate_duration_ms::numeric, 3) \
             FROM token_usage_latency_weekly_all WHERE requests > 0 ORDER BY 1, 2, 3, 4, 5"
                .to_owned(),
            "SELECT date_trunc('week', ts AT TIME ZONE 'UTC')::date, coalesce(provider, ''), \
                 coalesce(model, ''), outcome, tally_duration_bucket(duration_ms), count(*), \
                 coalesce(sum(output_tokens) FILTER (WHERE duration_ms > 0 \
                     AND output_tokens IS NOT NULL), 0)::int8, \
                 round(coalesce(sum(duration_ms) FILTER (WHERE duration_ms > 0 \
                     AND output_tokens IS NOT NULL), 0)::numeric, 3) \
             FROM token_usage GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
                .to_owned(),
        ),
        (
            "SELECT week, provider, model, speed_bucket, requests \
             FROM token_usage_speed_weekly_all WHERE requests > 0 ORDER BY 1, 2, 3, 4"
                .to_owned(),
            format!(
                "SELECT date_trunc('week', ts AT TIME ZONE 'UTC')::date, coalesce(provider, ''), \
                 coalesce(model, ''), ({RAW_SPEED_BUCKET})::int2, count(*) \
                 FROM token_usage GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            ),
        ),
    ];
    for (kept, raw) in &pairs {
        let kept_rows = rows_text(client, kept).await;
        assert_eq!(kept_rows, rows_text(client, raw).await, "{kept}");
        assert!(kept_rows.len() > 10, "{kept_rows:?}");
    }
    assert_eq!(
        count(
            client,
            "SELECT (SELECT count(*) FROM token_usage_latency_weekly_all WHERE requests = 0) \
             + (SELECT count(*) FROM token_usage_speed_weekly_all WHERE requests = 0)"
        )
        .await,
        0
    );
}

/// The per-user weekly rollups (migration 0029) hold exactly the raw rows
/// grouped by tenant, ISO week and user, and no emptied group (call only when
/// every row is folded). Also checks that `tally_rebuild_user_weekly()`, run
/// on the folded rows, writes the same rows.
async fn assert_user_weekly_agree(client: &Client) {
    let pairs = [
        (
            "SELECT tenant_id, week, user_id, events FROM activity_user_weekly \
             ORDER BY 1, 2, 3",
            "SELECT tenant_id, date_trunc('week', ts AT TIME ZONE 'UTC')::date, \
                 coalesce(user_id, ''), count(*) \
             FROM activity_events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
        (
            "SELECT tenant_id, week, user_id, requests, unknown_usage_requests, \
                 unpriced_requests, input_tokens, output_tokens, cache_read_tokens, \
                 cache_write_tokens, reasoning_tokens, total_tokens, cost_usd::text \
             FROM token_usage_user_weekly WHERE requests > 0 ORDER BY 1, 2, 3",
            "SELECT tenant_id, date_trunc('week', ts AT TIME ZONE 'UTC')::date, \
                 coalesce(user_id, ''), count(*), count(*) FILTER (WHERE NOT usage_known), \
                 count(*) FILTER (WHERE usage_known AND cost_usd IS NULL), \
                 coalesce(sum(input_tokens), 0)::int8, coalesce(sum(output_tokens), 0)::int8, \
                 coalesce(sum(cache_read_tokens), 0)::int8, \
                 coalesce(sum(cache_write_tokens), 0)::int8, \
                 coalesce(sum(reasoning_tokens), 0)::int8, coalesce(sum(total_tokens), 0)::int8, \
                 coalesce(sum(cost_usd), 0)::numeric(24, 10)::text \
             FROM token_usage GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
    ];
    let mut kept = Vec::new();
    for (weekly, raw) in pairs {
        let rows = rows_text(client, weekly).await;
        assert_eq!(rows, rows_text(client, raw).await, "{weekly}");
        kept.push(rows);
    }
    // Some callers fold token rows only.
    assert!(kept[1].len() > 10, "{:?}", kept[1]);
    assert_eq!(
        count(
            client,
            "SELECT count(*) FROM token_usage_user_weekly WHERE requests = 0"
        )
        .await,
        0
    );
    client
        .execute("SELECT tally_rebuild_user_weekly()", &[])
        .await
        .expect("rebuild");
    assert_eq!(
        rows_text(client, pairs[0].0).await,
        kept[0],
        "rebuilt activity"
    );
    assert_eq!(
        rows_text(client, pairs[1].0).await,
        kept[1],
        "rebuilt tokens"
    );
}

/// The time-to-first-token rollups hold exactly the raw rows' histograms, and
/// no emptied group.
async fn assert_ttft_rollups_agree(client: &Client) {
    for (kept, raw) in TTFT_ROLLUPS {
        assert_eq!(
            rows_text(client, kept).await,
            rows_text(client, raw).await,
            "{kept}"
        );
    }
    assert_eq!(
        count(
            client,
            "SELECT (SELECT count(*) FROM token_usage_ttft_daily WHERE requests = 0) \
             + (SELECT count(*) FROM token_usage_ttft_daily_all WHERE requests = 0)"
        )
        .await,
        0
    );
}

/// Each call's output speed bucket computed from the raw row, independently of
/// `tally_speed_bucket`: the log buckets of its tokens per second, -1 for the
/// calls that do not count for speed.
const RAW_SPEED_BUCKET: &str = "CASE WHEN output_tokens IS NULL OR duration_ms IS NULL \
    OR duration_ms <= 0 THEN -1 \
    ELSE tally_duration_bucket(output_tokens * 1000.0::float8 / duration_ms) END";

/// The output speed rollups (migration 0026) hold exactly the raw rows'
/// histograms, and no emptied group (call only when every row is folded).
async fn assert_speed_rollups_agree(client: &Client) {
    let pairs = [
        (
            "SELECT day, tenant_id, provider, model, speed_bucket, requests \
             FROM token_usage_speed_daily WHERE requests > 0 ORDER BY 1, 2, 3, 4, 5"
                .to_owned(),
            format!(
                "SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''), \
                 coalesce(model, ''), ({RAW_SPEED_BUCKET})::int2, count(*) \
                 FROM token_usage GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
            ),
        ),
        (
            "SELECT day, provider, model, speed_bucket, requests \
             FROM token_usage_speed_daily_all WHERE requests > 0 ORDER BY 1, 2, 3, 4"
                .to_owned(),
            format!(
                "SELECT (ts AT TIME ZONE 'UTC')::date, coalesce(provider, ''), \
                 coalesce(model, ''), ({RAW_SPEED_BUCKET})::int2, count(*) \
                 FROM token_usage GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            ),
        ),
    ];
    for (kept, raw) in &pairs {
        let kept_rows = rows_text(client, kept).await;
        assert_eq!(kept_rows, rows_text(client, raw).await, "{kept}");
        // The generated calls spread over several speed buckets.
        assert!(kept_rows.len() > 10, "{kept_rows:?}");
    }
    assert_eq!(
        count(
            client,
            "SELECT (SELECT count(*) FROM token_usage_speed_daily WHERE requests = 0) \
             + (SELECT count(*) FROM token_usage_speed_daily_all WHERE requests = 0)"
        )
        .await,
        0
    );
}

/// Token measures, summed, as text (for the derived-rollup comparisons).
const TOKEN_SUMS_TEXT: &str = "sum(requests)::int8, sum(unknown_usage_requests)::int8, \
    sum(unpriced_requests)::int8, sum(input_tokens)::int8, sum(output_tokens)::int8, \
    sum(cache_read_tokens)::int8, sum(cache_write_tokens)::int8, sum(reasoning_tokens)::int8, \
    sum(total_tokens)::int8, sum(cost_usd)::numeric(24, 10)::text";

/// Each rollup derived by the job (migration 0008) as the job keeps it, and as
/// computed from `activity_daily` / `token_usage_daily` (the reference).
const DERIVED_ROLLUPS: [(&str, &str); 8] = [
    (
        "SELECT day, tenant_id, action, outcome, events FROM activity_daily_tenant ORDER BY 1, 2, 3, 4",
        "SELECT day, tenant_id, action, outcome, sum(events)::int8 FROM activity_daily \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    ),
    (
        "SELECT day, action, outcome, events FROM activity_daily_all ORDER BY 1, 2, 3",
        "SELECT day, action, outcome, sum(events)::int8 FROM activity_daily \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    ),
    (
        "SELECT day, tenant_id, users FROM activity_users_daily ORDER BY 1, 2",
        "SELECT day, tenant_id, count(DISTINCT user_id) FROM activity_daily WHERE user_id <> '' \
         GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "SELECT day, users FROM activity_users_daily_all ORDER BY 1",
        "SELECT day, count(DISTINCT user_id) FROM activity_daily WHERE user_id <> '' \
         GROUP BY 1 ORDER BY 1",
    ),
    (
        "SELECT tenant_id, user_id, last_seen FROM activity_user_last_seen ORDER BY 1, 2",
        "SELECT tenant_id, user_id, max(day) FROM activity_daily WHERE user_id <> '' \
         GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "SELECT user_id, last_seen FROM activity_user_last_seen_all ORDER BY 1",
        "SELECT user_id, max(day) FROM activity_daily WHERE user_id <> '' GROUP BY 1 ORDER BY 1",
    ),
    (
        "SELECT day, tenant_id, provider, model, requests, unknown_usage_requests, \
         unpriced_requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
         reasoning_tokens, total_tokens, cost_usd::text FROM token_usage_daily_tenant \
         WHERE requests > 0 ORDER BY 1, 2, 3, 4",
        "SELECT day, tenant_id, provider, model, {SUMS} FROM token_usage_daily \
         GROUP BY 1, 2, 3, 4 HAVING sum(requests) > 0 ORDER BY 1, 2, 3, 4",
    ),
    (
        "SELECT day, provider, model, requests, unknown_usage_requests, \
         unpriced_requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
         reasoning_tokens, total_tokens, cost_usd::text FROM token_usage_daily_all \
         WHERE requests > 0 ORDER BY 1, 2, 3",
        "SELECT day, provider, model, {SUMS} FROM token_usage_daily \
         GROUP BY 1, 2, 3 HAVING sum(requests) > 0 ORDER BY 1, 2, 3",
    ),
];

/// The derived rollups give exactly the answers of the fine ones, both as the
/// job maintained them and as `tally_rebuild_coarse_rollups()` rebuilds them.
async fn assert_derived_rollups_agree(client: &Client) {
    let check = |what: &'static str| async move {
        for (kept, reference) in DERIVED_ROLLUPS {
            let reference = reference.replace("{SUMS}", TOKEN_SUMS_TEXT);
            let kept_rows = rows_text(client, kept).await;
            assert_eq!(
                kept_rows,
                rows_text(client, &reference).await,
                "{what}: {kept}"
            );
        }
        assert_eq!(
            count(
                client,
                "SELECT count(*) FROM token_usage_daily_tenant WHERE requests = 0"
            )
            .await,
            0,
            "{what}: emptied groups are deleted"
        );
    };
    check("kept by the job").await;
    client
        .batch_execute("SELECT tally_rebuild_coarse_rollups()")
        .await
        .expect("rebuild");
    check("rebuilt").await;
}

/// Every row of `sql`, as text (simple protocol).
async fn rows_text(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .expect(sql)
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn watermark(client: &Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT last_seq FROM rollup_watermarks WHERE name = $1",
            &[&name],
        )
        .await
        .expect("watermark")
        .get(0)
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Waits (polling the server) until `pid` is blocked on a lock.
/// In one snapshot: how many raw rows lie above their rollup's watermark, and
/// how many of them migration 0020's `tally_tail_days` does not cover (no entry
/// for the row's table and day with `max_seq >= seq`). The admin API bounds the
/// tail's `ts` by the oldest covered day, so an uncovered row would be missing
/// from the live answers.
async fn tail_coverage(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "WITH tail AS ( \
                 SELECT 'activity_events' AS raw_table, seq, ts FROM activity_events \
                 WHERE seq > (SELECT last_seq FROM rollup_watermarks WHERE name = 'activity_daily') \
                 UNION ALL SELECT 'token_usage', seq, ts FROM token_usage \
                 WHERE seq > (SELECT last_seq FROM rollup_watermarks WHERE name = 'token_usage_daily')) \
             SELECT count(*), count(*) FILTER (WHERE NOT EXISTS ( \
                 SELECT 1 FROM tally_tail_days d WHERE d.raw_table = tail.raw_table \
                   AND d.day = (tail.ts AT TIME ZONE 'UTC')::date AND d.max_seq >= tail.seq)) \
             FROM tail",
            &[],
        )
        .await
        .expect("tail coverage");
    (row.get(0), row.get(1))
}

async fn wait_until_blocked(observer: &Client, pid: i32) {
    for _ in 0..10_000 {
        let waiting: bool = observer
            .query_one(
                "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("backend {pid} never blocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_under_concurrent_ingestion_and_killed_runs() {
    let db = TestDatabase::migrated().await;
    let admin = db.client().await;
    let through = first_day() + Days::new(3);
    create_partitions(&admin, first_day(), through)
        .await
        .expect("partitions");
    token_partitions(&admin, first_day(), through).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let url = db.url.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut client = tally_exporters::postgres::connect(&url)
                .await
                .expect("connect")
                .0;
            let mut rng = Rng(w * 7919 + 1);
            let (mut activity, mut tokens, mut batches) = (0u64, 0u64, 0u32);
            // At least 30 batches each, then until the rollup side is done.
            while batches < 30 || !stop.load(Ordering::Relaxed) {
                let n = 1 + rng.below(200) as usize;
                let events = activity_events(&mut rng, n);
                let tx = client.transaction().await.expect("begin");
                activity += insert_activity_batch(&tx, &events).await.expect("insert");
                tx.commit().await.expect("commit");
                let n = 1 + rng.below(100) as usize;
                tokens += insert_tokens(&mut client, &mut rng, n).await;
                batches += 1;
            }
            (activity, tokens)
        }));
    }

    let job = RollupJob::new(Duration::ZERO).with_max_rows_per_run(300);
    let mut rng = Rng(99);
    let (mut completed, mut killed_errors, mut aborted, mut blocked_kills) = (0, 0, 0, 0);
    let mut max_tail = 0;
    for round in 0..60 {
        let mut client = db.client().await;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let job = job.clone();
        match round % 4 {
            // Killed for sure in the middle: the activity fold is done, the run
            // waits for the token watermark we hold; then its backend dies.
            0 => {
                let mut holder = db.client().await;
                let before = watermark(&admin, ACTIVITY_WATERMARK).await;
                let hold = holder.transaction().await.expect("begin");
                hold.execute(
                    "SELECT 1 FROM rollup_watermarks WHERE name = $1 FOR UPDATE",
                    &[&TOKEN_WATERMARK],
                )
                .await
                .expect("hold");
                let run = tokio::spawn(async move { job.run_once(&mut client).await });
                wait_until_blocked(&admin, pid).await;
                admin
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .expect("terminate");
                let result = run.await.expect("join");
                assert!(result.is_err(), "a killed run must fail: {result:?}");
                hold.rollback().await.expect("release");
                assert_eq!(
                    watermark(&admin, ACTIVITY_WATERMARK).await,
                    before,
                    "the killed run's activity fold must be rolled back"
                );
                blocked_kills += 1;
            }
            // Terminated after a random moment.
            1 => {
                let run = tokio::spawn(async move { job.run_once(&mut client).await });
                tokio::time::sleep(Duration::from_micros(rng.below(20_000))).await;
                admin
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .expect("terminate");
                match run.await.expect("join") {
                    Ok(_) => completed += 1,
                    Err(_) => killed_errors += 1,
                }
            }
            // The future is dropped at a random moment (its transaction never commits).
            2 => {
                let run = tokio::spawn(async move { job.run_once(&mut client).await });
                tokio::time::sleep(Duration::from_micros(rng.below(20_000))).await;
                run.abort();
                match run.await {
                    Ok(Ok(_)) => completed += 1,
                    Ok(Err(_)) => killed_errors += 1,
                    Err(_) => aborted += 1,
                }
            }
            _ => {
                job.run_once(&mut client).await.expect("run");
                completed += 1;
            }
        }
        // While the writers run: every row above a watermark has its day.
        let (tail, uncovered) = tail_coverage(&admin).await;
        assert_eq!(
            uncovered, 0,
            "round {round}: {uncovered} of {tail} tail rows"
        );
        max_tail = max_tail.max(tail);
    }
    assert!(
        max_tail > 0,
        "the writers must have left rows above the watermarks"
    );
    stop.store(true, Ordering::Relaxed);
    let (mut activity_written, mut tokens_written) = (0u64, 0u64);
    for writer in writers {
        let (a, t) = writer.await.expect("writer");
        activity_written += a;
        tokens_written += t;
    }
    // Catch up: a second instance's job runs concurrently with this one.
    let mut a = db.client().await;
    let mut b = db.client().await;
    loop {
        let (ra, rb) = tokio::join!(job.run_once(&mut a), job.run_once(&mut b));
        let (ra, rb) = (ra.expect("run a"), rb.expect("run b"));
        if !ra.folded_anything() && !rb.folded_anything() {
            break;
        }
    }
    eprintln!(
        "runs: {completed} completed, {killed_errors} terminated, {aborted} aborted, {blocked_kills} killed mid-run"
    );
    assert_eq!(blocked_kills, 15);

    assert_eq!(
        count(&admin, "SELECT count(*) FROM activity_events").await as u64,
        activity_written
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM token_usage").await as u64,
        tokens_written
    );
    let rollup = rows_text(&admin, ACTIVITY_ROLLUP).await;
    assert!(rollup.len() > 20, "{} activity groups", rollup.len());
    assert_eq!(rollup, rows_text(&admin, ACTIVITY_RAW).await);
    assert_eq!(
        count(&admin, "SELECT sum(events)::int8 FROM activity_daily").await as u64,
        activity_written
    );
    let rollup = rows_text(&admin, TOKEN_ROLLUP).await;
    assert!(rollup.len() > 20, "{} token groups", rollup.len());
    assert_eq!(rollup, rows_text(&admin, TOKEN_RAW).await);
    assert_eq!(
        count(&admin, "SELECT sum(requests)::int8 FROM token_usage_daily").await as u64,
        tokens_written
    );
    assert_eq!(
        watermark(&admin, ACTIVITY_WATERMARK).await,
        count(&admin, "SELECT max(seq) FROM activity_events").await
    );
    assert_eq!(
        watermark(&admin, TOKEN_WATERMARK).await,
        count(&admin, "SELECT max(seq) FROM token_usage").await
    );
    assert_ttft_rollups_agree(&admin).await;
    assert_speed_rollups_agree(&admin).await;
    assert_weekly_histograms_agree(&admin).await;
    assert_user_weekly_agree(&admin).await;
    assert_derived_rollups_agree(&admin).await;
}

/// Inserts one token row (under the lock protocol) and answers its seq.
async fn insert_one(
    client: &mut Client,
    id: Uuid,
    ts: DateTime<Utc>,
    usage: Option<(i64, i64)>,
    cost: Option<&str>,
) -> i64 {
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
        .await
        .expect("lock");
    let (input, output) = (usage.map(|u| u.0), usage.map(|u| u.1));
    let seq: i64 = tx
        .query_one(
            "INSERT INTO token_usage (id, seq, ts, provider, model, usage_known, input_tokens, \
             output_tokens, total_tokens, cost_usd) \
             VALUES ($1, nextval('token_usage_seq'), $2, 'openai', 'gpt-4o', $3, $4::int8, $5::int8, $4::int8 + $5::int8, $6::text::numeric) \
             RETURNING seq",
            &[&id, &ts, &usage.is_some(), &input, &output, &cost],
        )
        .await
        .expect("insert")
        .get(0);
    tx.commit().await.expect("commit");
    seq
}

async fn attribute(client: &Client, id: Uuid, tenant: &str, user: &str) {
    let n = client
        .execute(
            "UPDATE token_usage SET tenant_id = $2, user_id = $3, attribution_source = 'trace' WHERE id = $1",
            &[&id, &tenant, &user],
        )
        .await
        .expect("attribute");
    assert_eq!(n, 1);
}

/// Waits (polling the server's clock) until the row `id` is older than `age`.
async fn wait_aged(client: &Client, id: Uuid, age: Duration) {
    let secs = age.as_secs_f64();
    for _ in 0..10_000 {
        let aged: bool = client
            .query_one(
                "SELECT received_at < now() - make_interval(secs => $2) FROM token_usage WHERE id = $1",
                &[&id, &secs],
            )
            .await
            .expect("age")
            .get(0);
        if aged {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("row never aged");
}

#[tokio::test]
async fn token_rows_wait_for_the_attribution_delay() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    token_partitions(&client, today, today).await;
    let ts = midnight(today) + TimeDelta::hours(1);
    let delay = Duration::from_secs(1);
    let job = RollupJob::new(delay);
    let mut runner = db.client().await;

    // A: arrives unattributed, is attributed before it is folded.
    let a = Uuid::new_v4();
    insert_one(&mut client, a, ts, Some((100, 20)), Some("0.5")).await;
    let report = job.run_once(&mut runner).await.expect("run");
    assert_eq!(report.token_rows, 0, "a row inside the delay is not folded");
    assert_eq!(
        count(&client, "SELECT count(*) FROM token_usage_daily").await,
        0
    );
    attribute(&client, a, "acme", "alice").await;
    // Unknown usage (so no cost), attributed too: counted in unknown_usage_requests,
    // not in unpriced_requests (the metric's meaning).
    let u = Uuid::new_v4();
    insert_one(&mut client, u, ts, None, None).await;
    attribute(&client, u, "acme", "alice").await;
    wait_aged(&client, u, delay).await;

    // B: young when the job runs: A and U folded, B held back.
    let b = Uuid::new_v4();
    let b_seq = insert_one(&mut client, b, ts, Some((7, 3)), None).await;
    let report = job.run_once(&mut runner).await.expect("run");
    assert_eq!(report.token_rows, 2, "{report:?}");
    assert_eq!(report.tokens_to_seq, b_seq - 1);
    let rows = rows_text(&client, TOKEN_ROLLUP).await;
    let expected_day = today.to_string();
    assert_eq!(
        rows,
        vec![vec![
            Some(expected_day.clone()),
            Some("acme".into()),
            Some("alice".into()),
            Some("openai".into()),
            Some("gpt-4o".into()),
            Some("2".into()), // requests
            Some("1".into()), // unknown usage
            Some("0".into()), // unpriced: only calls with usage and no price
            Some("100".into()),
            Some("20".into()),
            Some("0".into()),
            Some("0".into()),
            Some("0".into()),
            Some("120".into()),
            Some("0.5000000000".into()),
        ]]
    );
    // Running again changes nothing while B is young.
    assert_eq!(job.run_once(&mut runner).await.expect("run").token_rows, 0);
    assert_eq!(rows_text(&client, TOKEN_ROLLUP).await, rows);

    // B attributed late (but inside the delay), then folded once aged.
    attribute(&client, b, "globex", "bob").await;
    wait_aged(&client, b, delay).await;
    let report = job.run_once(&mut runner).await.expect("run");
    assert_eq!(report.token_rows, 1);
    assert_eq!(job.run_once(&mut runner).await.expect("run").token_rows, 0);
    assert_eq!(
        rows_text(&client, TOKEN_ROLLUP).await,
        rows_text(&client, TOKEN_RAW).await
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM token_usage_daily WHERE tenant_id = '' OR user_id = ''"
        )
        .await,
        0,
        "nothing counted under the unattributed key"
    );
    assert_eq!(
        count(&client, "SELECT sum(requests)::int8 FROM token_usage_daily").await,
        3
    );
}

/// Rows whose attribution is settled (from the record, or already from the
/// trace) are folded at once; a young row still waiting for its attribution
/// holds back itself and every later row until it ages.
#[tokio::test]
async fn settled_token_rows_are_folded_without_waiting() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    token_partitions(&client, today, today).await;
    let ts = midnight(today) + TimeDelta::hours(1);
    // A delay no test waits for: only settled rows can be folded.
    let job = RollupJob::new(Duration::from_secs(3600));
    let mut runner = db.client().await;

    let settled = Uuid::new_v4();
    let settled_seq = insert_one(&mut client, settled, ts, Some((10, 5)), Some("0.1")).await;
    client
        .execute(
            "UPDATE token_usage SET tenant_id = 'acme', user_id = 'alice', \
             attribution_source = 'record' WHERE id = $1",
            &[&settled],
        )
        .await
        .expect("settle");
    let report = job.run_once(&mut runner).await.expect("run");
    assert_eq!(report.token_rows, 1, "{report:?}");
    assert_eq!(report.tokens_to_seq, settled_seq);

    // Unattributed and young: held, and so is the settled row after it.
    let waiting = Uuid::new_v4();
    let waiting_seq = insert_one(&mut client, waiting, ts, Some((7, 3)), None).await;
    let after = Uuid::new_v4();
    insert_one(&mut client, after, ts, Some((1, 1)), None).await;
    attribute(&client, after, "acme", "bob").await;
    let report = job.run_once(&mut runner).await.expect("run");
    assert_eq!(report.token_rows, 0, "{report:?}");
    assert_eq!(watermark(&client, TOKEN_WATERMARK).await, waiting_seq - 1);

    // Once it is attributed, both are settled and folded, each once.
    attribute(&client, waiting, "globex", "carol").await;
    let report = job.run_once(&mut runner).await.expect("run");
    assert_eq!(report.token_rows, 2, "{report:?}");
    assert_eq!(
        rows_text(&client, TOKEN_ROLLUP).await,
        rows_text(&client, TOKEN_RAW).await
    );
    assert_eq!(
        count(&client, "SELECT sum(requests)::int8 FROM token_usage_daily").await,
        3
    );
    assert_derived_rollups_agree(&client).await;
}

/// Re-attributes `rows` the way the ingest side should once they may be folded:
/// unfold, UPDATE, refold, in one transaction.
async fn reattribute(
    client: &mut Client,
    rows: &[(DateTime<Utc>, Uuid)],
    tenant: &str,
    user: &str,
) {
    let tx = client.transaction().await.expect("begin");
    let refold = unfold_token_rows(&tx, rows).await.expect("unfold");
    let ts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.0).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    tx.execute(
        "UPDATE token_usage SET tenant_id = $3, user_id = $4, attribution_source = 'trace' \
         WHERE (ts, id) IN (SELECT * FROM unnest($1::timestamptz[], $2::uuid[]))",
        &[&ts, &ids, &tenant, &user],
    )
    .await
    .expect("update");
    refold.refold(&tx).await.expect("refold");
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attribution_after_folding_moves_the_counts_exactly_once() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let through = first_day() + Days::new(3);
    token_partitions(&client, first_day(), through).await;
    let mut rng = Rng(5);
    for _ in 0..10 {
        insert_tokens(&mut client, &mut rng, 100).await;
    }
    let job = RollupJob::new(Duration::ZERO);
    let mut runner = db.client().await;
    assert_eq!(
        job.run_once(&mut runner).await.expect("run").token_rows,
        1000
    );

    // Sequential: a late parent after the rollup ran.
    let rows: Vec<(DateTime<Utc>, Uuid)> = client
        .query("SELECT ts, id FROM token_usage ORDER BY seq LIMIT 50", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    reattribute(&mut client, &rows, "late-tenant", "late-user").await;
    assert_eq!(
        rows_text(&client, TOKEN_ROLLUP).await,
        rows_text(&client, TOKEN_RAW).await
    );
    assert_eq!(
        count(
            &client,
            "SELECT sum(requests)::int8 FROM token_usage_daily WHERE tenant_id = 'late-tenant'"
        )
        .await,
        50
    );
    assert_eq!(
        count(&client, "SELECT sum(requests)::int8 FROM token_usage_daily").await,
        1000
    );
    // No group is left with zero requests.
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM token_usage_daily WHERE requests = 0"
        )
        .await,
        0
    );

    // Concurrent: writers, re-attributions (of folded and unfolded rows) and rollup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let url = db.url.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = tally_exporters::postgres::connect(&url).await.expect("connect").0;
            let mut rng = Rng(100 + w);
            let mut rounds = 0;
            while rounds < 40 || !stop.load(Ordering::Relaxed) {
                insert_tokens(&mut client, &mut rng, 20).await;
                let rows: Vec<(DateTime<Utc>, Uuid)> = client
                    .query(
                        "SELECT ts, id FROM token_usage WHERE seq % 7 = $1 ORDER BY random() LIMIT 10",
                        &[&(rng.below(7) as i64)],
                    )
                    .await
                    .expect("rows")
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let tenant = format!("t{}", rng.below(4));
                let user = format!("u{}", rng.below(4));
                reattribute(&mut client, &rows, &tenant, &user).await;
                rounds += 1;
            }
        }));
    }
    for _ in 0..30 {
        job.run_once(&mut runner).await.expect("run");
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task");
    }
    while job
        .run_once(&mut runner)
        .await
        .expect("run")
        .folded_anything()
    {}
    assert_eq!(
        rows_text(&client, TOKEN_ROLLUP).await,
        rows_text(&client, TOKEN_RAW).await
    );
    assert_eq!(
        count(&client, "SELECT sum(requests)::int8 FROM token_usage_daily").await,
        count(&client, "SELECT count(*) FROM token_usage").await
    );
    assert_ttft_rollups_agree(&client).await;
    assert_weekly_histograms_agree(&client).await;
    assert_user_weekly_agree(&client).await;
    // Migration 0025 on a database whose rows are already folded fills the
    // histograms from them.
    client
        .batch_execute("DELETE FROM token_usage_ttft_daily; DELETE FROM token_usage_ttft_daily_all")
        .await
        .expect("empty the histograms");
    let (_, _, sql) = tally_exporters::postgres::MIGRATIONS
        .iter()
        .find(|(version, _, _)| *version == 25)
        .expect("migration 25");
    client.batch_execute(sql).await.expect("migration 25 again");
    assert_ttft_rollups_agree(&client).await;
    assert_speed_rollups_agree(&client).await;
    // The same for migration 0026 and the output speed histograms.
    client
        .batch_execute(
            "DELETE FROM token_usage_speed_daily; DELETE FROM token_usage_speed_daily_all",
        )
        .await
        .expect("empty the speed histograms");
    let (_, _, sql) = tally_exporters::postgres::MIGRATIONS
        .iter()
        .find(|(version, _, _)| *version == 26)
        .expect("migration 26");
    client.batch_execute(sql).await.expect("migration 26 again");
    assert_speed_rollups_agree(&client).await;
    assert_derived_rollups_agree(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_jobs_run_periodically_and_stop_on_shutdown() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let through = first_day() + Days::new(3);
    create_partitions(&client, first_day(), through)
        .await
        .expect("partitions");
    token_partitions(&client, first_day(), through).await;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let rollup = RollupJob::new(Duration::ZERO).spawn(
        db.url.clone(),
        Duration::from_millis(50),
        shutdown.clone(),
    );
    let retention = tally_exporters::postgres::RetentionJob::new(Default::default()).spawn(
        db.url.clone(),
        Duration::from_millis(50),
        shutdown,
    );
    let mut rng = Rng(77);
    let events = activity_events(&mut rng, 300);
    let tx = client.transaction().await.expect("begin");
    insert_activity_batch(&tx, &events).await.expect("insert");
    tx.commit().await.expect("commit");
    insert_tokens(&mut client, &mut rng, 200).await;
    // Wait for the condition: both rollups caught up with the raw rows.
    let mut caught_up = false;
    for _ in 0..1_000 {
        if rows_text(&client, ACTIVITY_ROLLUP).await == rows_text(&client, ACTIVITY_RAW).await
            && rows_text(&client, TOKEN_ROLLUP).await == rows_text(&client, TOKEN_RAW).await
            && count(&client, "SELECT count(*) FROM token_usage_daily").await > 0
        {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up, "the spawned rollup job never caught up");
    stop.send(true).expect("send");
    tokio::time::timeout(Duration::from_secs(10), rollup)
        .await
        .expect("rollup job stops")
        .expect("join");
    tokio::time::timeout(Duration::from_secs(10), retention)
        .await
        .expect("retention job stops")
        .expect("join");
}
