//! The in-memory tail of the live answers over every tenant (issue 18,
//! `admin-api/src/tailcache/`): `/stats` for a caller naming no tenant, and
//! the aggregates of a platform caller (grouped by provider and model from the
//! tenant-less rollups; grouped by user, page by page, from the per-user
//! rollups and the tail's per-user groups), equal an independent SQL
//! computation over the raw tables after each change between two requests —
//! rows arriving (the cache is extended), a fold (the watermark moves), late
//! attribution of a tail row and of a folded row, a tail row's user rewritten
//! (as erasure does), a tail row deleted.

mod common;

use std::time::Duration;

use chrono::{Datelike, Days, NaiveDate, Utc};
use common::{export_service_spans, get_json, kv, kv_int, now_nanos, Tally, TestDatabase};
use serde_json::Value as Json;
use tally_exporters::postgres::RollupJob;
use tally_model::otlp::trace::v1::{Span, Status};

const DAY_NANOS: u64 = 86_400_000_000_000;

fn trace_of(n: u64) -> [u8; 16] {
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&n.to_be_bytes());
    trace[15] = 0xcc;
    trace
}

/// The request span of call `n` (an activity event of its user).
fn request_span(n: u64, start: u64, tenant: &str, user: &str, action: &str) -> Span {
    Span {
        trace_id: trace_of(n).to_vec(),
        span_id: vec![1; 8],
        name: "POST /ask".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 900_000_000,
        attributes: vec![
            kv("activity.action", action),
            kv("enduser.id", user),
            kv("tenant.id", tenant),
        ],
        ..Default::default()
    }
}

/// Call `n`'s chat span (no identity: attributed from its request span).
fn chat_span(n: u64, start: u64, model: &str) -> Span {
    let mut span = Span {
        trace_id: trace_of(n).to_vec(),
        span_id: vec![2; 8],
        parent_span_id: vec![1; 8],
        name: format!("chat {model}"),
        kind: 3,
        start_time_unix_nano: start + 1_000_000,
        end_time_unix_nano: start + (5 + n * 373 % 3000) * 1_000_000,
        attributes: vec![
            kv("gen_ai.operation.name", "chat"),
            kv(
                "gen_ai.provider.name",
                if n % 2 == 0 { "openai" } else { "anthropic" },
            ),
            kv("gen_ai.request.model", model),
            kv_int("gen_ai.usage.input_tokens", 10 + n as i64),
            kv_int("gen_ai.usage.output_tokens", 1 + n as i64 % 7),
        ],
        ..Default::default()
    };
    // Three calls in four report a time to first token (2 ms to ~1 s).
    if n % 4 != 0 {
        let seconds = (2 + n * 131 % 1000) as f64 / 1000.0;
        span.attributes.push(kv(
            "gen_ai.server.time_to_first_token",
            &seconds.to_string(),
        ));
    }
    if n % 5 == 0 {
        span.status = Some(Status {
            code: 2,
            ..Default::default()
        });
    }
    span
}

/// Calls `first..first + count` over the last 3 days: each a chat span and,
/// unless `late(n)`, its request span.
fn batch(first: u64, count: u64, now: u64, late: impl Fn(u64) -> bool) -> Vec<Span> {
    let tenants = ["acme", "globex"];
    let users = ["alice", "bob", "carol", "dave", "erin"];
    let actions = ["doc.read", "doc.write", "auth.login.success"];
    let models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"];
    let mut spans = Vec::new();
    for n in first..first + count {
        let start = start_of(n, now);
        spans.push(chat_span(n, start, models[(n % 3) as usize]));
        if !late(n) {
            spans.push(request_span(
                n,
                start,
                tenants[(n % 2) as usize],
                users[(n % 5) as usize],
                actions[(n % 3) as usize],
            ));
        }
    }
    spans
}

fn start_of(n: u64, now: u64) -> u64 {
    now - (n % 3) * DAY_NANOS - n * 1_000_000
}

/// What `/stats` must say, computed over the raw tables up to each section's
/// `as_of_seq` and the window `[from, to)`.
async fn expected(db: &TestDatabase, body: &Json, from: &str, to: &str) -> Json {
    let client = db.client().await;
    let activity_seq = body["activity"]["as_of_seq"].as_i64().expect("as_of_seq");
    let tokens_seq = body["tokens"]["as_of_seq"].as_i64().expect("as_of_seq");
    let window = "ts >= $2::text::date::timestamp AT TIME ZONE 'UTC' \
                  AND ts < $3::text::date::timestamp AT TIME ZONE 'UTC'";
    let days = client
        .query(
            &format!(
                "SELECT (ts AT TIME ZONE 'UTC')::date::text, count(*)::int8, \
                     count(DISTINCT user_id) FILTER (WHERE user_id <> '')::int8 \
                 FROM activity_events WHERE seq <= $1 AND {window} GROUP BY 1 ORDER BY 1"
            ),
            &[&activity_seq, &from, &to],
        )
        .await
        .expect("days");
    let totals = client
        .query_one(
            &format!(
                "SELECT count(*)::int8, \
                     count(DISTINCT user_id) FILTER (WHERE user_id <> '')::int8 \
                 FROM activity_events WHERE seq <= $1 AND {window}"
            ),
            &[&activity_seq, &from, &to],
        )
        .await
        .expect("totals");
    let actions = client
        .query(
            &format!(
                "SELECT action, count(*)::int8 FROM activity_events \
                 WHERE seq <= $1 AND {window} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"
            ),
            &[&activity_seq, &from, &to],
        )
        .await
        .expect("actions");
    let token_totals = client
        .query_one(
            &format!(
                "SELECT count(*)::int8, coalesce(sum(input_tokens), 0)::int8, \
                     coalesce(sum(output_tokens), 0)::int8, coalesce(sum(total_tokens), 0)::int8, \
                     count(*) FILTER (WHERE outcome = 'failure')::int8 \
                 FROM token_usage WHERE seq <= $1 AND {window}"
            ),
            &[&tokens_seq, &from, &to],
        )
        .await
        .expect("token totals");
    let keyed = |column: &'static str| {
        format!(
            "SELECT coalesce({column}, ''), count(*)::int8, coalesce(sum(input_tokens), 0)::int8 \
             FROM token_usage WHERE seq <= $1 AND {window} GROUP BY 1 ORDER BY 1"
        )
    };
    let mut tokens = serde_json::Map::new();
    for (name, column) in [("by_model", "model"), ("by_provider", "provider")] {
        let rows = client
            .query(&keyed(column), &[&tokens_seq, &from, &to])
            .await
            .expect("keyed");
        let items: Vec<Json> = rows
            .iter()
            .map(|r| {
                serde_json::json!([
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2)
                ])
            })
            .collect();
        tokens.insert(name.to_owned(), Json::Array(items));
    }
    // The speed figures: nearest-rank percentiles over the same buckets the
    // rollups keep (each read as its bucket's middle), success rate, output
    // tokens per second over the timed calls.
    let percentile = |bucket: &'static str, p: f64| {
        format!(
            "WITH h AS (SELECT {bucket} AS b, count(*) AS n FROM token_usage \
                 WHERE seq <= $1 AND {window} AND {bucket} >= 0 GROUP BY 1), \
             c AS (SELECT b, sum(n) OVER (ORDER BY b) AS cum, sum(n) OVER () AS total FROM h) \
             SELECT min(b)::int2 FROM c WHERE cum >= greatest(ceil({p} * total), 1)"
        )
    };
    let mut speed = serde_json::Map::new();
    for (name, bucket, p) in [
        ("duration_p50_ms", "tally_duration_bucket(duration_ms)", 0.5),
        (
            "duration_p95_ms",
            "tally_duration_bucket(duration_ms)",
            0.95,
        ),
        (
            "time_to_first_token_p50_ms",
            "tally_duration_bucket(time_to_first_token_ms)",
            0.5,
        ),
        (
            "output_tokens_per_second_p95",
            "tally_speed_bucket(output_tokens, duration_ms)",
            0.95,
        ),
    ] {
        let row = client
            .query_one(&percentile(bucket, p), &[&tokens_seq, &from, &to])
            .await
            .expect("percentile");
        let value = row.get::<_, Option<i16>>(0).map(|b| {
            let ms = if b <= 0 {
                0.5
            } else {
                2f64.powf((f64::from(b) - 0.5) / 8.0)
            };
            (ms * 1000.0).round() / 1000.0
        });
        speed.insert(name.to_owned(), serde_json::json!(value));
    }
    let rate = client
        .query_one(
            &format!(
                "SELECT coalesce(sum(output_tokens) FILTER (WHERE duration_ms > 0 \
                         AND output_tokens IS NOT NULL), 0)::float8, \
                     coalesce(sum(duration_ms) FILTER (WHERE duration_ms > 0 \
                         AND output_tokens IS NOT NULL), 0)::float8 \
                 FROM token_usage WHERE seq <= $1 AND {window}"
            ),
            &[&tokens_seq, &from, &to],
        )
        .await
        .expect("rate");
    let (tokens_out, duration) = (rate.get::<_, f64>(0), rate.get::<_, f64>(1));
    let per_second =
        (duration > 0.0).then(|| (tokens_out / (duration / 1000.0) * 1000.0).round() / 1000.0);
    speed.insert(
        "output_tokens_per_second".to_owned(),
        serde_json::json!(per_second),
    );
    let token_days = client
        .query(
            &format!(
                "SELECT (ts AT TIME ZONE 'UTC')::date::text, count(*)::int8 \
                 FROM token_usage WHERE seq <= $1 AND {window} GROUP BY 1 ORDER BY 1"
            ),
            &[&tokens_seq, &from, &to],
        )
        .await
        .expect("token days");
    serde_json::json!({
        "events": totals.get::<_, i64>(0),
        "active_users": totals.get::<_, i64>(1),
        "daily": days.iter().map(|r| serde_json::json!(
            [r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)])).collect::<Vec<_>>(),
        "top_actions": actions.iter().map(|r| serde_json::json!(
            [r.get::<_, String>(0), r.get::<_, i64>(1)])).collect::<Vec<_>>(),
        "requests": token_totals.get::<_, i64>(0),
        "input_tokens": token_totals.get::<_, i64>(1),
        "output_tokens": token_totals.get::<_, i64>(2),
        "total_tokens": token_totals.get::<_, i64>(3),
        "failed_requests": token_totals.get::<_, i64>(4),
        "by_model": tokens["by_model"],
        "by_provider": tokens["by_provider"],
        "token_daily": token_days.iter().map(|r| serde_json::json!(
            [r.get::<_, String>(0), r.get::<_, i64>(1)])).collect::<Vec<_>>(),
        "speed": speed,
    })
}

/// The same figures as [`expected`], read from a `/stats` answer.
fn answered(body: &Json) -> Json {
    let a = &body["activity"];
    let t = &body["tokens"];
    let list = |value: &Json, f: &dyn Fn(&Json) -> Json| -> Vec<Json> {
        value.as_array().into_iter().flatten().map(f).collect()
    };
    let mut daily = list(&a["daily"], &|d| {
        serde_json::json!([d["day"], d["events"], d["active_users"]])
    });
    // Days with no event are not rows of the SQL.
    daily.retain(|d| d[1] != 0);
    let keyed = |name: &str, key: &str| {
        let mut items = list(&t[name], &|m| {
            serde_json::json!([
                m[key].as_str().unwrap_or_default(),
                m["requests"],
                m["input_tokens"]
            ])
        });
        items.sort_by_key(|m| m[0].as_str().unwrap_or_default().to_owned());
        items
    };
    let mut token_daily = list(&t["daily"], &|d| {
        serde_json::json!([d["day"], d["requests"]])
    });
    token_daily.retain(|d| d[1] != 0);
    serde_json::json!({
        "events": a["events"],
        "active_users": a["active_users"],
        "daily": daily,
        "top_actions": list(&a["top_actions"], &|x| serde_json::json!([x["action"], x["events"]])),
        "requests": t["requests"],
        "input_tokens": t["input_tokens"],
        "output_tokens": t["output_tokens"],
        "total_tokens": t["total_tokens"],
        "failed_requests": t["failed_requests"],
        "by_model": keyed("by_model", "model"),
        "by_provider": keyed("by_provider", "provider"),
        "token_daily": token_daily,
        "speed": {
            "duration_p50_ms": t["duration_p50_ms"],
            "duration_p95_ms": t["duration_p95_ms"],
            "time_to_first_token_p50_ms": t["time_to_first_token_p50_ms"],
            "output_tokens_per_second_p95": t["output_tokens_per_second_p95"],
            "output_tokens_per_second": t["output_tokens_per_second"],
        },
    })
}

/// `/stats` over every tenant, for windows of the last 30 and 7 days and for today
/// only (tail users seen in the rollups before the window count as new), equals
/// the raw tables; each answer is asked twice (the second from the cache as
/// left by the first).
async fn check(tally: &Tally, db: &TestDatabase, step: &str) {
    // The pages grouped by user first: their own failure shows when their
    // cache is wrong (the other answers share the copy's version).
    check_by_user(tally, db, step).await;
    let today = Utc::now().date_naive();
    let tomorrow = today.checked_add_days(Days::new(1)).expect("tomorrow");
    // 30 days: the histograms' whole weeks from the weekly copies (migration
    // 0028), the days around them from the daily ones. Whether the data's days
    // (the last 3) fall in one of those whole weeks depends on the weekday, so
    // a fourth window holds them in whole weeks on any day: from the Monday a
    // week before the oldest data day's week to the Monday two weeks after
    // today's.
    let weeks_around = {
        let oldest = today.checked_sub_days(Days::new(2)).expect("oldest day");
        let monday = |day: NaiveDate| {
            day.checked_sub_days(Days::new(u64::from(day.weekday().num_days_from_monday())))
                .expect("monday")
        };
        let from = monday(oldest)
            .checked_sub_days(Days::new(7))
            .expect("week before");
        let to = monday(today)
            .checked_add_days(Days::new(14))
            .expect("weeks after");
        (from, to)
    };
    for (from, to) in [
        (
            today.checked_sub_days(Days::new(30)).expect("month"),
            tomorrow,
        ),
        (
            today.checked_sub_days(Days::new(7)).expect("week"),
            tomorrow,
        ),
        (today, tomorrow),
        weeks_around,
    ] {
        for round in 0..2 {
            let path = format!("/api/v1/stats?from={from}&to={to}");
            let (status, body) = get_json(&tally.api_url(&path), None).await;
            assert_eq!(status, 200, "{path}: {body}");
            let want = expected(db, &body, &from.to_string(), &to.to_string()).await;
            // The speed figures are compared, not both absent.
            assert!(
                want["speed"]["time_to_first_token_p50_ms"].is_number()
                    && want["speed"]["duration_p95_ms"].is_number()
                    && want["speed"]["output_tokens_per_second"].is_number(),
                "{want}"
            );
            assert_eq!(
                answered(&body),
                want,
                "{step}, from {from}, round {round}: {body}"
            );
        }
    }
    check_aggregates(tally, db, step).await;
}

/// The aggregates grouped by user over every tenant (a platform caller; the
/// per-user rollups plus the tail's first groups of each period from memory),
/// at every grain, with and without a tenant filter, read page by page with
/// small pages (the cursor inside a period and across periods) and in one
/// page, equal the raw tables up to their `as_of_seq`.
async fn check_by_user(tally: &Tally, db: &TestDatabase, step: &str) {
    let client = db.client().await;
    let today = Utc::now().date_naive();
    let window = format!(
        "from={}&to={}",
        today.checked_sub_days(Days::new(40)).expect("from"),
        today.checked_add_days(Days::new(1)).expect("to")
    );
    for grain in ["day", "week", "month"] {
        for (query, raw, keys, filter) in [
            ("group_by=user", "token_usage", vec!["user_id"], ""),
            (
                "group_by=user,model&tenant=globex",
                "token_usage",
                vec!["user_id", "model"],
                "tenant_id = 'globex'",
            ),
            ("group_by=user", "activity_events", vec!["user_id"], ""),
            (
                "group_by=tenant,user,action",
                "activity_events",
                vec!["tenant_id", "user_id", "action"],
                "",
            ),
            (
                "group_by=user&tenant=acme",
                "activity_events",
                vec!["user_id"],
                "tenant_id = 'acme'",
            ),
        ] {
            let route = match raw {
                "token_usage" => "tokens/usage",
                _ => "activity/aggregates",
            };
            for (limit, range) in [(3, window.as_str()), (1000, "")] {
                // Each page is compared with the raw rows up to its own
                // `as_of_seq` (the admin API's own audit events may arrive
                // between two pages): the rows after the previous page's last
                // item, `limit` of them.
                let mut last: Option<Vec<Json>> = None;
                let mut cursor: Option<String> = None;
                let mut pages = 0;
                loop {
                    let mut path =
                        format!("/api/v1/{route}?grain={grain}&{query}&limit={limit}&{range}");
                    if let Some(cursor) = &cursor {
                        path.push_str(&format!("&cursor={cursor}"));
                    }
                    let (status, body) = get_json(&tally.api_url(&path), None).await;
                    assert_eq!(status, 200, "{path}: {body}");
                    let as_of = body["as_of_seq"].as_i64().expect("as_of_seq");
                    let mut got = Vec::new();
                    for item in body["items"].as_array().into_iter().flatten() {
                        let mut row = vec![Json::from(item["period"].as_str().unwrap_or(""))];
                        for key in &keys {
                            row.push(Json::from(item[*key].as_str().unwrap_or_default()));
                        }
                        match raw {
                            "token_usage" => {
                                for m in ["requests", "input_tokens", "total_tokens"] {
                                    row.push(Json::from(item[m].as_i64().unwrap_or(-1)));
                                }
                                row.push(Json::from(item["cost_usd"].as_f64().unwrap_or(-1.0)));
                            }
                            _ => row.push(Json::from(item["events"].as_i64().unwrap_or(-1))),
                        }
                        got.push(row);
                    }
                    let want = by_user_sums(&client, raw, &keys, filter, grain, as_of).await;
                    assert!(!want.is_empty(), "{step}: {route}?{query}: rows to compare");
                    let start = match &last {
                        None => 0,
                        Some(last) => {
                            let at = want
                                .iter()
                                .position(|row| row[..=keys.len()] == last[..=keys.len()])
                                .expect("the previous page's last group is still there");
                            at + 1
                        }
                    };
                    let more = body["next_cursor"].as_str();
                    let end = match more {
                        Some(_) => start + limit,
                        None => want.len(),
                    };
                    assert_eq!(
                        got,
                        want[start.min(want.len())..end.min(want.len())].to_vec(),
                        "{step}: {path}"
                    );
                    pages += 1;
                    match more {
                        Some(next) => {
                            cursor = Some(next.to_owned());
                            last = got.last().cloned();
                        }
                        None => break,
                    }
                }
                assert!(
                    limit > 3 || pages > 1,
                    "{step}: {route}?{query}: several pages"
                );
            }
        }
    }
}

/// The sums of `raw` per period of `grain` and `keys` (absent keys as ''),
/// over the rows with `seq <= as_of` passing `filter`, in the API's order;
/// each row: period, keys, then the measures the check compares.
async fn by_user_sums(
    client: &tokio_postgres::Client,
    raw: &str,
    keys: &[&str],
    filter: &str,
    grain: &str,
    as_of: i64,
) -> Vec<Vec<Json>> {
    let keys_sql: Vec<String> = keys.iter().map(|k| format!("coalesce({k}, '')")).collect();
    let measures = match raw {
        "token_usage" => {
            "count(*)::int8, coalesce(sum(input_tokens), 0)::int8, \
             coalesce(sum(total_tokens), 0)::int8, coalesce(sum(cost_usd), 0)::float8"
        }
        _ => "count(*)::int8",
    };
    let filter = match filter {
        "" => String::new(),
        f => format!(" AND {f}"),
    };
    let order: Vec<String> = (1..=keys.len() + 1).map(|i| i.to_string()).collect();
    let rows = client
        .query(
            &format!(
                "SELECT date_trunc($1, ts AT TIME ZONE 'UTC')::date::text, {}, {measures} \
                 FROM {raw} WHERE seq <= $2{filter} GROUP BY {o} ORDER BY {o}",
                keys_sql.join(", "),
                o = order.join(", "),
            ),
            &[&grain, &as_of],
        )
        .await
        .expect("independent sums by user");
    rows.iter()
        .map(|r| {
            let mut row = Vec::new();
            for i in 0..=keys.len() {
                row.push(Json::from(r.get::<_, String>(i)));
            }
            let at = keys.len() + 1;
            match raw {
                "token_usage" => {
                    for i in at..at + 3 {
                        row.push(Json::from(r.get::<_, i64>(i)));
                    }
                    row.push(Json::from(r.get::<_, f64>(at + 3)));
                }
                _ => row.push(Json::from(r.get::<_, i64>(at))),
            }
            row
        })
        .collect()
}

/// `/tokens/usage` by provider and model and `/activity/aggregates` by action
/// and outcome over every tenant (the tenant-less rollups plus the in-memory
/// tail), at every grain, equal the raw tables up to their `as_of_seq`.
async fn check_aggregates(tally: &Tally, db: &TestDatabase, step: &str) {
    let client = db.client().await;
    for grain in ["day", "week", "month"] {
        for (path, raw, keys, measures) in [
            (
                format!("/api/v1/tokens/usage?grain={grain}&group_by=provider,model&limit=1000"),
                "token_usage",
                ["provider", "model"],
                "count(*)::int8, coalesce(sum(input_tokens), 0)::int8, \
                 coalesce(sum(total_tokens), 0)::int8",
            ),
            (
                format!(
                    "/api/v1/activity/aggregates?grain={grain}&group_by=action,outcome&limit=1000"
                ),
                "activity_events",
                ["action", "outcome"],
                "count(*)::int8, 0::int8, 0::int8",
            ),
        ] {
            let (status, body) = get_json(&tally.api_url(&path), None).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert!(body["next_cursor"].is_null(), "one page: {body}");
            let as_of = body["as_of_seq"].as_i64().expect("as_of_seq");
            let rows = client
                .query(
                    &format!(
                        "SELECT date_trunc($1, ts AT TIME ZONE 'UTC')::date::text, \
                             coalesce({k0}::text, ''), coalesce({k1}::text, ''), {measures} \
                         FROM {raw} WHERE seq <= $2 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                        k0 = keys[0],
                        k1 = keys[1],
                    ),
                    &[&grain, &as_of],
                )
                .await
                .expect("independent sums");
            let want: Vec<Json> = rows
                .iter()
                .map(|r| {
                    let measures: Vec<i64> = (3..6).map(|i| r.get::<_, i64>(i)).collect();
                    serde_json::json!([
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        measures[0],
                        measures[1],
                        measures[2]
                    ])
                })
                .collect();
            let got: Vec<Json> = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| {
                    let text = |k: &str| item[k].as_str().unwrap_or_default().to_owned();
                    let n = |k: &str| item[k].as_i64().unwrap_or(0);
                    match raw {
                        "token_usage" => serde_json::json!([
                            text("period"),
                            text("provider"),
                            text("model"),
                            n("requests"),
                            n("input_tokens"),
                            n("total_tokens")
                        ]),
                        _ => serde_json::json!([
                            text("period"),
                            text("action"),
                            text("outcome"),
                            n("events"),
                            0,
                            0
                        ]),
                    }
                })
                .collect();
            assert_eq!(got, want, "{step}: {path}");
        }
    }
}

async fn watermark(db: &TestDatabase, name: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT last_seq FROM rollup_watermarks WHERE name = $1",
            &[&name],
        )
        .await
        .expect("watermark")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_over_every_tenant_stay_exact_across_changes_between_requests() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let now = now_nanos();
    // Every fourth call's request span comes later.
    let late = |n: u64| n % 4 == 0;
    export_service_spans(&tally, "web", batch(0, 60, now, late)).await;
    check(&tally, &database, "first answers (cache built)").await;

    export_service_spans(&tally, "web", batch(60, 30, now, late)).await;
    check(&tally, &database, "rows arrived (cache extended)").await;

    // A fold of part of the tail: the watermark moves.
    let mut client = database.client().await;
    let before = watermark(&database, "activity_daily").await;
    RollupJob::new(Duration::ZERO)
        .with_max_rows_per_run(50)
        .run_once(&mut client)
        .await
        .expect("rollup");
    assert!(watermark(&database, "activity_daily").await > before);
    check(&tally, &database, "after a fold").await;

    // Late request spans: of folded calls and of calls still in the tail.
    // They attribute token rows (and add activity events of a new user).
    let mut spans = Vec::new();
    for n in (0..90u64).filter(|n| late(*n)) {
        spans.push(request_span(
            n,
            start_of(n, now),
            "acme",
            "frank",
            "doc.read",
        ));
    }
    export_service_spans(&tally, "web", spans).await;
    check(&tally, &database, "after late attribution").await;

    // More rows, then a tail row's user rewritten the way erasure rewrites it
    // (`UPDATE` through the parent table): its (day, user) pair is new.
    export_service_spans(&tally, "web", batch(90, 30, now, late)).await;
    check(&tally, &database, "rows arrived after the attribution").await;
    let watermark_now = watermark(&database, "activity_daily").await;
    let updated = client
        .execute(
            "UPDATE activity_events SET user_id = 'erased-0001' \
             WHERE seq = (SELECT max(seq) FROM activity_events WHERE seq > $1 \
                          AND user_id = 'alice')",
            &[&watermark_now],
        )
        .await
        .expect("rewrite a tail row's user");
    assert_eq!(updated, 1);
    check(&tally, &database, "after a user rewrite").await;

    // A tail token row deleted (as the ingest's de-duplication deletes); not
    // the newest, so the newest seq does not move.
    let token_watermark = watermark(&database, "token_usage_daily").await;
    let deleted = client
        .execute(
            "DELETE FROM token_usage WHERE seq = (SELECT min(seq) FROM token_usage \
             WHERE seq > $1)",
            &[&token_watermark],
        )
        .await
        .expect("delete a tail token row");
    assert_eq!(deleted, 1);
    check(&tally, &database, "after a delete").await;

    // Everything folded: the tail is empty.
    RollupJob::new(Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("rollup");
    check(&tally, &database, "after the last fold").await;

    // The speed histograms' rollup part is kept per rollup version: a write to
    // those rollups that moves no watermark (retention, a repair) is seen by
    // the next answer. Emptied, they leave no call to take a duration from.
    // Over every tenant and for one tenant (kept per tenant).
    let today = Utc::now().date_naive();
    let window = format!(
        "from={}&to={}",
        today.checked_sub_days(Days::new(30)).expect("month"),
        today.checked_add_days(Days::new(1)).expect("tomorrow")
    );
    let paths = [
        format!("/api/v1/stats?{window}"),
        format!("/api/v1/stats?{window}&tenant=acme"),
    ];
    for path in &paths {
        let (status, body) = get_json(&tally.api_url(path), None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["tokens"]["duration_p95_ms"].is_number(),
            "{path}: {body}"
        );
    }
    // The tenant's histograms emptied first (the answer over every tenant
    // keeps its speed), then the ones over every tenant.
    let before = watermark(&database, "token_usage_daily").await;
    let emptied = [
        "DELETE FROM token_usage_latency_daily; DELETE FROM token_usage_ttft_daily; \
         DELETE FROM token_usage_speed_daily",
        "DELETE FROM token_usage_latency_daily_all; DELETE FROM token_usage_latency_weekly_all; \
         DELETE FROM token_usage_ttft_daily_all; DELETE FROM token_usage_speed_daily_all; \
         DELETE FROM token_usage_speed_weekly_all",
    ];
    for (step, statements) in emptied.iter().enumerate() {
        client
            .batch_execute(statements)
            .await
            .expect("empty histogram rollups");
        assert_eq!(watermark(&database, "token_usage_daily").await, before);
        for (which, path) in paths.iter().enumerate() {
            let (status, body) = get_json(&tally.api_url(path), None).await;
            assert_eq!(status, 200, "{body}");
            // The tenant's answer (path 1) has no speed from step 0 on, the
            // one over every tenant (path 0) from step 1 on.
            let no_speed = step + which >= 1;
            for field in [
                "duration_p95_ms",
                "time_to_first_token_p50_ms",
                "output_tokens_per_second",
            ] {
                assert_eq!(
                    body["tokens"][field].is_null(),
                    no_speed,
                    "step {step}, {path}: {field}: {body}"
                );
            }
            assert!(
                body["tokens"]["requests"].as_i64() > Some(0),
                "{path}: {body}"
            );
        }
    }
}

/// The generation a cached tail is valid for moves in the transaction of an
/// update or delete of a raw row (migration 0027), once per statement, for
/// that raw table only; a write to the rollups the activity cache probes
/// moves the activity one, and one to the speed histograms the token one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_deletes_bump_the_tail_generation() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    export_service_spans(&tally, "web", batch(0, 6, now_nanos(), |_| false)).await;
    let mut client = database.client().await;
    let read = "SELECT (SELECT coalesce(sum(n), 0) FROM tally_tail_generations \
                    WHERE raw_table = 'activity_events')::int8, \
                (SELECT coalesce(sum(n), 0) FROM tally_tail_generations \
                    WHERE raw_table = 'token_usage')::int8";
    for (statement, activity, tokens) in [
        (
            "UPDATE activity_events SET user_id = user_id WHERE false",
            1,
            0,
        ),
        ("DELETE FROM activity_events WHERE false", 1, 0),
        ("UPDATE token_usage SET user_id = user_id WHERE false", 0, 1),
        ("DELETE FROM token_usage WHERE false", 0, 1),
        ("DELETE FROM activity_daily WHERE false", 1, 0),
        ("DELETE FROM activity_user_last_seen_all WHERE false", 1, 0),
        ("DELETE FROM token_usage_daily WHERE false", 0, 0),
        // The speed histograms over every tenant (migration 0031).
        (
            "DELETE FROM token_usage_latency_daily_all WHERE false",
            0,
            1,
        ),
        (
            "DELETE FROM token_usage_latency_weekly_all WHERE false",
            0,
            1,
        ),
        ("DELETE FROM token_usage_ttft_daily_all WHERE false", 0, 1),
        ("DELETE FROM token_usage_speed_daily_all WHERE false", 0, 1),
        (
            "INSERT INTO token_usage_speed_weekly_all (week, speed_bucket) \
             SELECT '2026-11-02', 1 WHERE false",
            0,
            1,
        ),
    ] {
        // One snapshot: other sessions' bumps (retention at start-up) are not
        // seen, the transaction's own are.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .expect("begin");
        let before = tx.query_one(read, &[]).await.expect("before");
        tx.execute(statement, &[]).await.expect(statement);
        let after = tx.query_one(read, &[]).await.expect("after");
        tx.rollback().await.expect("rollback");
        assert_eq!(
            (
                after.get::<_, i64>(0) - before.get::<_, i64>(0),
                after.get::<_, i64>(1) - before.get::<_, i64>(1)
            ),
            (activity, tokens),
            "{statement}"
        );
    }
}
