//! `GET /api/v1/tokens`, `/tokens/usage`, `/activity/aggregates` and `/stats`
//! against a real PostgreSQL whose rollups are built by the real rollup job.
//! Expected values are computed here, from the generated rows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use common::*;
use serde_json::Value;
use tally_exporters::postgres::RollupJob;
use uuid::Uuid;

type KeepTok = Box<dyn Fn(&Tok) -> bool>;

const TOKEN_LOCK: i64 = i64::from_be_bytes(*b"tallytok");

/// One generated `token_usage` row.
#[derive(Debug, Clone)]
struct Tok {
    id: Uuid,
    ts: DateTime<Utc>,
    tenant: String,
    user: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    trace_id: Option<String>,
    /// input, output, cache read, cache write, reasoning; `None`: usage unknown.
    usage: Option<[i64; 5]>,
    /// Cost in micro-dollars; `None`: unpriced.
    cost_micros: Option<i64>,
}

impl Tok {
    fn total(&self) -> Option<i64> {
        self.usage.map(|u| u[0] + u[1] + u[4])
    }
}

fn token_first_day() -> NaiveDate {
    // Crosses a week boundary (Mon 2026-10-26, Mon 2026-11-02) and a month boundary.
    NaiveDate::from_ymd_opt(2026, 10, 27).expect("date")
}
const TOKEN_DAYS: i64 = 9;

fn generate_tokens(n: usize, seed: u64) -> Vec<Tok> {
    let mut rng = Rng::new(seed);
    let start = day_start(token_first_day());
    (0..n)
        .map(|_| {
            let usage = (rng.below(7) != 0).then(|| {
                [
                    rng.below(4000) as i64,
                    rng.below(800) as i64,
                    rng.below(300) as i64,
                    rng.below(50) as i64,
                    rng.below(100) as i64,
                ]
            });
            Tok {
                id: Uuid::new_v4(),
                ts: start
                    + TimeDelta::microseconds(
                        rng.below((TOKEN_DAYS * 86_400_000_000) as u64) as i64
                    ),
                tenant: rng.pick(TENANTS).to_string(),
                user: (rng.below(6) != 0).then(|| format!("u{}", rng.below(5))),
                provider: (rng.below(8) != 0)
                    .then(|| rng.pick(&["openai", "anthropic"]).to_string()),
                model: (rng.below(9) != 0).then(|| {
                    rng.pick(&["gpt-4o", "claude-sonnet", "mistral"])
                        .to_string()
                }),
                trace_id: (rng.below(3) == 0).then(|| rng.hex(16)),
                cost_micros: (usage.is_some() && rng.below(5) != 0)
                    .then(|| rng.below(2_000_000) as i64),
                usage,
            }
        })
        .collect()
}

async fn insert_tokens(db: &TestDb, rows: &[Tok]) {
    let mut day = token_first_day();
    for _ in 0..=TOKEN_DAYS {
        let next = day.succ_opt().expect("next");
        db.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS token_usage_p{} PARTITION OF token_usage \
                 FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
                day.format("%Y%m%d")
            ))
            .await
            .expect("token partition");
        day = next;
    }
    for chunk in rows.chunks(500) {
        let ids: Vec<Uuid> = chunk.iter().map(|t| t.id).collect();
        let ts: Vec<DateTime<Utc>> = chunk.iter().map(|t| t.ts).collect();
        let tenants: Vec<String> = chunk.iter().map(|t| t.tenant.clone()).collect();
        let users: Vec<Option<String>> = chunk.iter().map(|t| t.user.clone()).collect();
        let providers: Vec<Option<String>> = chunk.iter().map(|t| t.provider.clone()).collect();
        let models: Vec<Option<String>> = chunk.iter().map(|t| t.model.clone()).collect();
        let traces: Vec<Option<String>> = chunk.iter().map(|t| t.trace_id.clone()).collect();
        let col = |i: usize| -> Vec<Option<i64>> {
            chunk.iter().map(|t| t.usage.map(|u| u[i])).collect()
        };
        let (input, output, cache_read, cache_write, reasoning) =
            (col(0), col(1), col(2), col(3), col(4));
        let totals: Vec<Option<i64>> = chunk.iter().map(Tok::total).collect();
        let known: Vec<bool> = chunk.iter().map(|t| t.usage.is_some()).collect();
        let costs: Vec<Option<i64>> = chunk.iter().map(|t| t.cost_micros).collect();
        db.client.batch_execute("BEGIN").await.expect("begin");
        db.client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
            .await
            .expect("lock");
        db.client
            .execute(
                "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, provider, model, \
                 request_model, trace_id, input_tokens, output_tokens, cache_read_tokens, \
                 cache_write_tokens, reasoning_tokens, total_tokens, usage_known, cost_usd, \
                 attribution_source) \
                 SELECT id, nextval('token_usage_seq'), ts, t, u, p, m, m, tr, i, o, cr, cw, r, tt, k, \
                     c::numeric / 1000000, CASE WHEN u IS NULL THEN 'none' ELSE 'record' END \
                 FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], \
                     $12::int8[], $13::int8[], $14::bool[], $15::int8[]) WITH ORDINALITY \
                     AS x(id, ts, t, u, p, m, tr, i, o, cr, cw, r, tt, k, c, n) ORDER BY n",
                &[
                    &ids, &ts, &tenants, &users, &providers, &models, &traces, &input, &output,
                    &cache_read, &cache_write, &reasoning, &totals, &known, &costs,
                ],
            )
            .await
            .expect("insert tokens");
        db.client.batch_execute("COMMIT").await.expect("commit");
    }
}

/// Activity and token rows, partly rolled up by the real rollup job: one run
/// folds the first 800 rows of each table, the others stay above the
/// watermarks (the live tail every answer adds to the rollups).
async fn fixture() -> (TestDb, Vec<Event>, Vec<Tok>) {
    fixture_folding(Some(800)).await
}

/// Activity and token rows, rolled up by the real rollup job: the first
/// `rows` of each table (`None`: every row).
async fn fixture_folding(rows: Option<i64>) -> (TestDb, Vec<Event>, Vec<Tok>) {
    let (db, events) = seeded(1_500, 7).await;
    let tokens = generate_tokens(1_200, 11);
    insert_tokens(&db, &tokens).await;
    let mut client = tally_exporters::postgres::connect(&db.url)
        .await
        .expect("connect")
        .0;
    match rows {
        Some(rows) => {
            let report = RollupJob::new(Duration::ZERO)
                .with_max_rows_per_run(rows)
                .run_once(&mut client)
                .await
                .expect("rollup");
            assert_eq!(report.activity_rows, rows as u64);
            assert_eq!(report.token_rows, rows as u64);
        }
        None => {
            let job = RollupJob::new(Duration::ZERO);
            while job
                .run_once(&mut client)
                .await
                .expect("rollup")
                .folded_anything()
            {}
        }
    }
    (db, events, tokens)
}

fn period(day: NaiveDate, grain: &str) -> NaiveDate {
    match grain {
        "week" => day - TimeDelta::days(day.weekday().num_days_from_monday().into()),
        "month" => day.with_day(1).expect("first"),
        _ => day,
    }
}

/// Sums per (period, keys): the 10 token measures, cost in micro-dollars.
type TokenSums = BTreeMap<(String, Vec<String>), ([i64; 9], i64)>;

fn token_key(t: &Tok, key: &str) -> String {
    match key {
        "tenant" => t.tenant.clone(),
        "user" => t.user.clone().unwrap_or_default(),
        "provider" => t.provider.clone().unwrap_or_default(),
        "model" => t.model.clone().unwrap_or_default(),
        _ => unreachable!(),
    }
}

fn expected_tokens(
    rows: &[Tok],
    grain: &str,
    keys: &[&str],
    keep: impl Fn(&Tok) -> bool,
) -> TokenSums {
    let mut out = TokenSums::new();
    for t in rows.iter().filter(|t| keep(t)) {
        let p = period(t.ts.date_naive(), grain).to_string();
        let k = keys.iter().map(|k| token_key(t, k)).collect();
        let entry = out.entry((p, k)).or_default();
        let u = t.usage.unwrap_or_default();
        let m = &mut entry.0;
        m[0] += 1;
        m[1] += i64::from(t.usage.is_none());
        // Unpriced: usage reported, no price (a call without usage is only unknown).
        m[2] += i64::from(t.usage.is_some() && t.cost_micros.is_none());
        for i in 0..5 {
            m[3 + i] += u[i];
        }
        m[8] += t.total().unwrap_or(0);
        entry.1 += t.cost_micros.unwrap_or(0);
    }
    out
}

use tally_model::tokens::TOKEN_COUNT_MEASURES as TOKEN_MEASURES;

/// JSON name of a group key.
fn column(key: &str) -> &str {
    match key {
        "tenant" => "tenant_id",
        "user" => "user_id",
        other => other,
    }
}

/// Follows `next_cursor` from `first_uri` (with a `?`) and answers every item.
async fn all_items(router: &Router, first_uri: &str, token: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut uri = first_uri.to_owned();
    for _ in 0..10_000 {
        let reply = get(router, &uri, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        out.extend(
            reply.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .cloned(),
        );
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("{first_uri}&cursor={cursor}"),
            None => return out,
        }
    }
    panic!("too many pages");
}

fn item_key(item: &Value, keys: &[&str]) -> (String, Vec<String>) {
    (
        item["period"].as_str().expect("period").to_owned(),
        keys.iter()
            .map(|k| item[column(k)].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

fn token_sums_of(items: &[Value], keys: &[&str]) -> TokenSums {
    let mut out = TokenSums::new();
    for item in items {
        let mut m = [0i64; 9];
        for (i, name) in TOKEN_MEASURES.iter().enumerate() {
            m[i] = item[name]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: {item}"));
        }
        let cost = item["cost_usd"].as_f64().expect("cost_usd");
        let micros = (cost * 1e6).round() as i64;
        assert!((cost - micros as f64 / 1e6).abs() < 1e-9, "{cost}");
        let previous = out.insert(item_key(item, keys), (m, micros));
        assert!(previous.is_none(), "duplicate group {item}");
    }
    out
}

#[tokio::test]
async fn token_usage_matches_an_independent_computation() {
    let (db, _events, tokens) = fixture().await;
    let router = api(&config(), &db.url).await.router();
    let key_sets: [&[&str]; 5] = [
        &[],
        &["user"],
        &["tenant", "model"],
        &["provider"],
        &["tenant", "user", "provider", "model"],
    ];
    for grain in ["day", "week", "month"] {
        for keys in key_sets {
            // Repeated and comma-separated group_by both work.
            let group: String = match keys.len() {
                0 => String::new(),
                1 => format!("&group_by={}", keys[0]),
                _ => format!(
                    "&group_by={}&group_by={}",
                    keys[..2].join(","),
                    keys[2..].join(",")
                ),
            }
            .replace("&group_by=&", "&")
            .trim_end_matches("&group_by=")
            .to_owned();
            let uri = format!("/api/v1/tokens/usage?grain={grain}{group}&limit=7");
            let items = all_items(&router, &uri, None).await;
            // Ordered by period, then keys (canonical order: tenant, user, provider, model).
            let order: Vec<(String, Vec<String>)> =
                items.iter().map(|i| item_key(i, keys)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "{uri}");
            let got = token_sums_of(&items, keys);
            assert_eq!(
                got,
                expected_tokens(&tokens, grain, keys, |_| true),
                "{uri}"
            );
        }
    }
    assert_eq!(
        expected_tokens(&tokens, "week", &[], |_| true).len(),
        2,
        "the data spans two ISO weeks"
    );
    assert_eq!(expected_tokens(&tokens, "month", &[], |_| true).len(), 2);

    // Filters and day-aligned windows.
    let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("day");
    let cases: Vec<(&str, KeepTok)> = vec![
        ("tenant=acme", Box::new(|t| t.tenant == "acme")),
        ("user=u2", Box::new(|t| t.user.as_deref() == Some("u2"))),
        (
            "model=gpt-4o",
            Box::new(|t| t.model.as_deref() == Some("gpt-4o")),
        ),
        (
            "provider=anthropic&model=mistral",
            Box::new(|t| {
                t.provider.as_deref() == Some("anthropic") && t.model.as_deref() == Some("mistral")
            }),
        ),
        (
            "from=2026-10-29&to=2026-11-02",
            Box::new(move |t| {
                let d = t.ts.date_naive();
                d >= day("2026-10-29") && d < day("2026-11-02")
            }),
        ),
        (
            // A timestamp counts its whole day; a `to` after midnight includes its day.
            "from=2026-10-29T13:00:00Z&to=2026-11-02T00:00:01Z",
            Box::new(move |t| {
                let d = t.ts.date_naive();
                d >= day("2026-10-29") && d <= day("2026-11-02")
            }),
        ),
    ];
    for (filter, keep) in &cases {
        for grain in ["day", "month"] {
            let keys: &[&str] = &["tenant", "model"];
            let uri = format!("/api/v1/tokens/usage?grain={grain}&group_by=tenant,model&{filter}");
            let items = all_items(&router, &uri, None).await;
            assert_eq!(
                token_sums_of(&items, keys),
                expected_tokens(&tokens, grain, keys, keep),
                "{uri}"
            );
        }
    }
    // By user over windows much wider than the data (many empty periods): the
    // same sums, paged.
    for (grain, window) in [
        ("day", "from=2026-03-01&to=2027-03-01"),
        ("week", "from=2025-01-06&to=2027-12-27"),
        ("month", "from=2020-01-01&to=2029-01-01"),
    ] {
        for (filter, keep) in [
            ("", Box::new(|_: &Tok| true) as KeepTok),
            (
                "&user=u2",
                Box::new(|t: &Tok| t.user.as_deref() == Some("u2")),
            ),
        ] {
            let keys: &[&str] = &["user"];
            let uri = format!(
                "/api/v1/tokens/usage?grain={grain}&group_by=user&limit=3&{window}{filter}"
            );
            let items = all_items(&router, &uri, None).await;
            assert_eq!(
                token_sums_of(&items, keys),
                expected_tokens(&tokens, grain, keys, keep),
                "{uri}"
            );
        }
    }
    // The answer says which rows it includes: every one, up to the newest.
    let newest: i64 = db
        .client
        .query_one("SELECT max(seq) FROM token_usage", &[])
        .await
        .expect("newest")
        .get(0);
    for uri in [
        "/api/v1/tokens/usage?group_by=model",
        "/api/v1/tokens/usage?group_by=user&grain=week",
    ] {
        let reply = get(&router, uri, None).await;
        assert_eq!(reply.body["as_of_seq"].as_i64(), Some(newest), "{uri}");
    }
    // '' keys are null.
    let items = all_items(&router, "/api/v1/tokens/usage?group_by=tenant,user", None).await;
    assert!(items.iter().any(|i| i["tenant_id"].is_null()));
    assert!(items.iter().any(|i| i["user_id"].is_null()));
    assert!(items.iter().all(|i| i["tenant_id"] != ""));
}

#[tokio::test]
async fn activity_aggregates_match_an_independent_computation() {
    let (db, events, _tokens) = fixture().await;
    let router = api(&config(), &db.url).await.router();
    let key_of = |e: &Event, k: &str| -> String {
        match k {
            "tenant" => e.tenant_id.clone(),
            "user" => e.user_id.clone().unwrap_or_default(),
            "action" => e.action.clone(),
            "outcome" => e.outcome.clone(),
            _ => unreachable!(),
        }
    };
    let key_sets: [&[&str]; 4] = [
        &[],
        &["outcome"],
        &["user", "action"],
        &["tenant", "user", "action", "outcome"],
    ];
    for grain in ["day", "week", "month"] {
        for keys in key_sets {
            for filter in ["", "&tenant=globex", "&action=auth.login&outcome=failure"] {
                let uri = format!(
                    "/api/v1/activity/aggregates?grain={grain}&group_by={}&limit=5{filter}",
                    keys.join(",")
                )
                .replace("group_by=&", "");
                let items = all_items(&router, &uri, None).await;
                let mut got = BTreeMap::new();
                for item in &items {
                    let events = item["events"].as_i64().expect("events");
                    assert!(got.insert(item_key(item, keys), events).is_none());
                }
                let keep = |e: &&Event| match filter {
                    "&tenant=globex" => e.tenant_id == "globex",
                    "" => true,
                    _ => e.action == "auth.login" && e.outcome == "failure",
                };
                let mut expected = BTreeMap::new();
                for e in events.iter().filter(keep) {
                    let p = period(e.ts.date_naive(), grain).to_string();
                    let k: Vec<String> = keys.iter().map(|k| key_of(e, k)).collect();
                    *expected.entry((p, k)).or_insert(0i64) += 1;
                }
                assert_eq!(got, expected, "{uri}");
            }
        }
    }
}

#[tokio::test]
async fn token_ledger_filters_and_pages() {
    let (db, _events, tokens) = fixture().await;
    let router = api(&config(), &db.url).await.router();
    let newest_first = |keep: &dyn Fn(&Tok) -> bool| -> Vec<Uuid> {
        let mut rows: Vec<&Tok> = tokens.iter().filter(|t| keep(t)).collect();
        rows.sort_by_key(|t| std::cmp::Reverse((t.ts, t.id)));
        rows.iter().map(|t| t.id).collect()
    };
    let trace = tokens
        .iter()
        .find_map(|t| t.trace_id.clone())
        .expect("a trace");
    let from = day_start(token_first_day()) + TimeDelta::hours(30);
    let to = from + TimeDelta::days(3);
    let rfc = |ts: DateTime<Utc>| enc(&ts.to_rfc3339());
    let cases: Vec<(String, KeepTok)> = vec![
        (String::new(), Box::new(|_| true)),
        ("tenant=initech".into(), Box::new(|t| t.tenant == "initech")),
        (
            "user=u1".into(),
            Box::new(|t| t.user.as_deref() == Some("u1")),
        ),
        (
            "model=claude-sonnet".into(),
            Box::new(|t| t.model.as_deref() == Some("claude-sonnet")),
        ),
        (
            "provider=openai".into(),
            Box::new(|t| t.provider.as_deref() == Some("openai")),
        ),
        ({
            let tr = trace.clone();
            (
                format!("trace_id={}", trace.to_uppercase()),
                Box::new(move |t: &Tok| t.trace_id.as_deref() == Some(tr.as_str())),
            )
        }),
        (
            format!("from={}&to={}&tenant=acme", rfc(from), rfc(to)),
            Box::new(move |t| t.ts >= from && t.ts < to && t.tenant == "acme"),
        ),
    ];
    for (filter, keep) in &cases {
        let uri = format!("/api/v1/tokens?limit=97&{filter}");
        let got = all_pages(&router, &uri, None).await;
        assert_eq!(got, newest_first(keep.as_ref()), "{uri}");
    }

    // Item shape.
    let reply = get(&router, "/api/v1/tokens?limit=1000", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let items = reply.body["items"].as_array().expect("items");
    let by_id: BTreeMap<Uuid, &Tok> = tokens.iter().map(|t| (t.id, t)).collect();
    let mut saw_unknown = false;
    for item in items {
        let id: Uuid = item["id"].as_str().expect("id").parse().expect("uuid");
        let t = by_id[&id];
        assert_eq!(
            item["tenant_id"].as_str(),
            (!t.tenant.is_empty()).then_some(t.tenant.as_str())
        );
        assert_eq!(item["usage_known"], Value::Bool(t.usage.is_some()));
        assert_eq!(item["input_tokens"].as_i64(), t.usage.map(|u| u[0]));
        assert_eq!(item["total_tokens"].as_i64(), t.total());
        match t.cost_micros {
            None => assert!(item["cost_usd"].is_null(), "{item}"),
            Some(c) => {
                assert!((item["cost_usd"].as_f64().expect("cost") - c as f64 / 1e6).abs() < 1e-9)
            }
        }
        let source = if t.user.is_some() { "record" } else { "none" };
        assert_eq!(item["attribution_source"], source);
        assert_eq!(item["request_model"].as_str(), t.model.as_deref());
        saw_unknown |= t.usage.is_none();
        for field in [
            "seq",
            "ts",
            "received_at",
            "session_id",
            "service",
            "span_id",
            "operation",
            "response_model",
            "outcome",
            "duration_ms",
            "attributes",
        ] {
            assert!(item.get(field).is_some(), "{field} missing: {item}");
        }
    }
    assert!(saw_unknown);
}

#[tokio::test]
async fn stats_match_an_independent_computation() {
    let (db, events, tokens) = fixture().await;
    let router = api(&config(), &db.url).await.router();

    for (tenant, query) in [(None, ""), (Some("acme"), "&tenant=acme")] {
        // Activity window: 2026-11-21 .. 2026-11-23 (exclusive).
        let uri = format!("/api/v1/stats?from=2026-11-21&to=2026-11-23{query}");
        let reply = get(&router, &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let body = &reply.body;
        assert_eq!(body["from"], "2026-11-21");
        assert_eq!(body["to"], "2026-11-23");
        let lo = NaiveDate::from_ymd_opt(2026, 11, 21).expect("day");
        let hi = NaiveDate::from_ymd_opt(2026, 11, 23).expect("day");
        let in_window: Vec<&Event> = events
            .iter()
            .filter(|e| {
                let d = e.ts.date_naive();
                d >= lo && d < hi && tenant.is_none_or(|t| e.tenant_id == t)
            })
            .collect();
        let activity = &body["activity"];
        assert_eq!(activity["events"].as_i64(), Some(in_window.len() as i64));
        // Every row is in the answer: as_of_seq is the newest of each table.
        for (section, table) in [("activity", "activity_events"), ("tokens", "token_usage")] {
            let newest: i64 = db
                .client
                .query_one(&format!("SELECT max(seq) FROM {table}"), &[])
                .await
                .expect("newest")
                .get(0);
            assert_eq!(
                body[section]["as_of_seq"].as_i64(),
                Some(newest),
                "{section}"
            );
        }
        let users: BTreeSet<&str> = in_window
            .iter()
            .filter_map(|e| e.user_id.as_deref())
            .collect();
        assert_eq!(activity["active_users"].as_i64(), Some(users.len() as i64));
        let mut per_action: BTreeMap<&str, i64> = BTreeMap::new();
        for e in &in_window {
            *per_action.entry(e.action.as_str()).or_default() += 1;
        }
        let mut top: Vec<(i64, &str)> = per_action.iter().map(|(a, n)| (-n, *a)).collect();
        top.sort();
        let top: Vec<(String, i64)> = top
            .iter()
            .take(10)
            .map(|(n, a)| (a.to_string(), -n))
            .collect();
        let got: Vec<(String, i64)> = activity["top_actions"]
            .as_array()
            .expect("top")
            .iter()
            .map(|t| {
                (
                    t["action"].as_str().expect("action").to_owned(),
                    t["events"].as_i64().expect("events"),
                )
            })
            .collect();
        assert_eq!(got, top);
        let daily: Vec<(String, i64)> = activity["daily"]
            .as_array()
            .expect("daily")
            .iter()
            .map(|d| {
                (
                    d["day"].as_str().expect("day").to_owned(),
                    d["events"].as_i64().expect("n"),
                )
            })
            .collect();
        let mut expected_daily: BTreeMap<String, i64> = BTreeMap::new();
        for e in &in_window {
            *expected_daily
                .entry(e.ts.date_naive().to_string())
                .or_default() += 1;
        }
        assert_eq!(daily, expected_daily.into_iter().collect::<Vec<_>>());

        // Token window: 2026-10-30 .. 2026-11-03.
        let uri = format!("/api/v1/stats?from=2026-10-30&to=2026-11-02T12:00:00Z{query}");
        let reply = get(&router, &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let section = &reply.body["tokens"];
        let lo = NaiveDate::from_ymd_opt(2026, 10, 30).expect("day");
        let hi = NaiveDate::from_ymd_opt(2026, 11, 3).expect("day");
        let keep = |t: &Tok| {
            let d = t.ts.date_naive();
            d >= lo && d < hi && tenant.is_none_or(|x| t.tenant == x)
        };
        let totals = expected_tokens(&tokens, "month", &[], |t| keep(t));
        let (mut m, mut cost) = ([0i64; 9], 0i64);
        for (sums, c) in totals.values() {
            for i in 0..9 {
                m[i] += sums[i];
            }
            cost += c;
        }
        for (i, name) in TOKEN_MEASURES.iter().enumerate() {
            assert_eq!(section[name].as_i64(), Some(m[i]), "{name}");
        }
        assert!((section["cost_usd"].as_f64().expect("cost") - cost as f64 / 1e6).abs() < 1e-6);
        for (list, key) in [("by_model", "model"), ("by_provider", "provider")] {
            let expected = expected_tokens(&tokens, "month", &[key], |t| keep(t));
            let mut want: BTreeMap<String, i64> = BTreeMap::new();
            for ((_, k), (sums, _)) in expected {
                *want.entry(k[0].clone()).or_default() += sums[0];
            }
            let got: BTreeMap<String, i64> = section[list]
                .as_array()
                .expect("list")
                .iter()
                .map(|i| {
                    (
                        i[key].as_str().unwrap_or_default().to_owned(),
                        i["requests"].as_i64().expect("requests"),
                    )
                })
                .collect();
            assert_eq!(got, want, "{list}");
        }
        let days: Vec<&str> = section["daily"]
            .as_array()
            .expect("daily")
            .iter()
            .map(|d| d["day"].as_str().expect("day"))
            .collect();
        assert_eq!(
            days,
            ["2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02"]
        );
    }

    // Default window: the last 7 days, today included.
    let reply = get(&router, "/api/v1/stats", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let today = Utc::now().date_naive();
    let first = today - TimeDelta::days(6);
    assert_eq!(reply.body["to"], (today + TimeDelta::days(1)).to_string());
    assert_eq!(reply.body["from"], first.to_string());
    let in_default = |d: NaiveDate| d >= first && d <= today;
    assert_eq!(
        reply.body["activity"]["events"].as_i64(),
        Some(
            events
                .iter()
                .filter(|e| in_default(e.ts.date_naive()))
                .count() as i64
        )
    );
    assert_eq!(
        reply.body["tokens"]["requests"].as_i64(),
        Some(
            tokens
                .iter()
                .filter(|t| in_default(t.ts.date_naive()))
                .count() as i64
        )
    );
}

#[tokio::test]
async fn scopes_and_tenants_are_enforced() {
    let (db, _events, tokens) = fixture().await;
    let router = api(&config_with_jwt(), &db.url).await.router();
    let activity_only = token("activity:read", Some("*"));
    let tokens_only = token("tokens:read", Some("*"));
    let admin = token("admin", Some("*"));
    let nothing = token("", Some("*"));

    for (uri, allowed, denied) in [
        ("/api/v1/tokens", &tokens_only, &activity_only),
        ("/api/v1/tokens/usage", &tokens_only, &activity_only),
        ("/api/v1/activity/aggregates", &activity_only, &tokens_only),
    ] {
        assert_eq!(
            get(&router, uri, None).await.status,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        assert_eq!(
            get(&router, uri, Some(allowed)).await.status,
            StatusCode::OK,
            "{uri}"
        );
        assert_eq!(
            get(&router, uri, Some(&admin)).await.status,
            StatusCode::OK,
            "{uri}"
        );
        let reply = get(&router, uri, Some(denied)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(error_of(&reply).0, "forbidden");
    }
    // Stats: sections follow the scopes.
    let reply = get(&router, "/api/v1/stats", Some(&activity_only)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body["activity"].is_object() && reply.body["tokens"].is_null());
    let reply = get(&router, "/api/v1/stats", Some(&tokens_only)).await;
    assert!(reply.body["activity"].is_null() && reply.body["tokens"].is_object());
    let reply = get(&router, "/api/v1/stats", Some(&admin)).await;
    assert!(reply.body["activity"].is_object() && reply.body["tokens"].is_object());
    assert_eq!(
        get(&router, "/api/v1/stats", Some(&nothing)).await.status,
        StatusCode::FORBIDDEN
    );

    // A tenant token sees only its tenant, whatever it asks.
    let acme = token("admin", Some("acme"));
    let items = all_items(
        &router,
        "/api/v1/tokens/usage?group_by=tenant&grain=month",
        Some(&acme),
    )
    .await;
    let seen: BTreeSet<&str> = items
        .iter()
        .map(|i| i["tenant_id"].as_str().expect("tenant"))
        .collect();
    assert_eq!(seen, BTreeSet::from(["acme"]));
    let got = token_sums_of(&items, &["tenant"]);
    assert_eq!(
        got,
        expected_tokens(&tokens, "month", &["tenant"], |t| t.tenant == "acme")
    );
    let items = all_items(
        &router,
        "/api/v1/activity/aggregates?group_by=tenant",
        Some(&acme),
    )
    .await;
    assert!(!items.is_empty());
    assert!(items.iter().all(|i| i["tenant_id"] == "acme"));
    let ledger = all_pages(&router, "/api/v1/tokens?limit=500", Some(&acme)).await;
    assert_eq!(
        ledger.len(),
        tokens.iter().filter(|t| t.tenant == "acme").count()
    );
    let reply = get(
        &router,
        "/api/v1/stats?from=2026-10-01&to=2026-12-01",
        Some(&acme),
    )
    .await;
    assert_eq!(reply.body["tenant_id"], "acme");
    assert_eq!(
        reply.body["tokens"]["requests"].as_i64(),
        Some(tokens.iter().filter(|t| t.tenant == "acme").count() as i64)
    );
    for uri in [
        "/api/v1/tokens?tenant=globex",
        "/api/v1/tokens/usage?tenant=globex",
        "/api/v1/activity/aggregates?tenant=globex",
        "/api/v1/stats?tenant=globex",
    ] {
        assert_eq!(
            get(&router, uri, Some(&acme)).await.status,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
    }
    let no_tenant = token("admin", None);
    assert_eq!(
        get(&router, "/api/v1/tokens/usage", Some(&no_tenant))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&router, "/api/v1/stats", Some(&no_tenant)).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn bad_parameters_are_400_naming_them() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    for (uri, parameter) in [
        ("/api/v1/tokens?modle=x", "modle"),
        ("/api/v1/tokens?limit=0", "limit"),
        ("/api/v1/tokens?trace_id=xyz", "trace_id"),
        ("/api/v1/tokens?from=2026-11-01", "from"),
        ("/api/v1/tokens?user=a&user=b", "user"),
        ("/api/v1/tokens/usage?grain=year", "grain"),
        ("/api/v1/tokens/usage?group_by=action", "group_by"),
        ("/api/v1/tokens/usage?group_by=user,,model", "group_by"),
        ("/api/v1/tokens/usage?from=2026-11-05&to=2026-11-01", "from"),
        ("/api/v1/tokens/usage?to=tomorrow", "to"),
        ("/api/v1/tokens/usage?limit=10001", "limit"),
        ("/api/v1/tokens/usage?action=x", "action"),
        ("/api/v1/activity/aggregates?group_by=model", "group_by"),
        ("/api/v1/activity/aggregates?outcome=maybe", "outcome"),
        ("/api/v1/activity/aggregates?grain=", "grain"),
        ("/api/v1/stats?grain=day", "grain"),
        ("/api/v1/stats?from=2020-01-01&to=2026-01-01", "from"),
        ("/api/v1/stats?to=x", "to"),
    ] {
        let reply = get(&router, uri, None).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            reply.body
        );
        let (code, message) = error_of(&reply);
        assert_eq!(code, "invalid_parameter", "{uri}");
        assert!(
            message.starts_with(&format!("{parameter}:")),
            "{uri}: {message}"
        );
    }
    for uri in [
        "/api/v1/tokens?cursor=nope",
        "/api/v1/tokens/usage?cursor=nope",
        // A cursor made for other group_by keys.
        "/api/v1/tokens/usage?group_by=user&cursor=eyJ2IjoxLCJwIjoiMjAyNi0xMS0wMSIsImsiOltdfQ",
    ] {
        let reply = get(&router, uri, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(error_of(&reply).0, "invalid_cursor", "{uri}");
    }
    // The same cursor is fine without group_by, and the route answers an empty list.
    let reply = get(
        &router,
        "/api/v1/tokens/usage?cursor=eyJ2IjoxLCJwIjoiMjAyNi0xMS0wMSIsImsiOltdfQ",
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["items"], Value::Array(vec![]));
    assert!(reply.body["next_cursor"].is_null());
}

#[tokio::test]
async fn openapi_documents_the_routes_and_their_parameters() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    let doc = get(&router, "/api/v1/openapi.json", None).await.body;
    for (path, accepted) in [
        ("/api/v1/tokens", tally_admin_api::tokens::PARAMETERS),
        (
            "/api/v1/tokens/usage",
            tally_admin_api::aggregates::TOKEN_USAGE_PARAMETERS,
        ),
        (
            "/api/v1/activity/aggregates",
            tally_admin_api::aggregates::ACTIVITY_AGGREGATE_PARAMETERS,
        ),
        ("/api/v1/stats", tally_admin_api::stats::PARAMETERS),
    ] {
        let documented: Vec<&str> = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} undocumented"))
            .iter()
            .map(|p| p["name"].as_str().expect("name"))
            .collect();
        assert_eq!(documented, accepted, "{path}");
        for reference in doc["paths"][path]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["$ref"]
            .as_str()
            .into_iter()
        {
            let name = reference.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{reference}"
            );
        }
    }
    assert!(
        doc["components"]["schemas"]["TokenUsageAggregate"]["properties"]["cost_usd"].is_object()
    );
}

/// `active_users` of the window and of each day, for every window shape: a
/// window that ends after every user's last day is counted from the users'
/// last days (migration 0008), any other from the daily rollup; both exact.
#[tokio::test]
async fn active_users_are_exact_whichever_way_they_are_counted() {
    for folded in [Some(800), None] {
        active_users_are_exact(folded).await;
    }
}

async fn active_users_are_exact(folded: Option<i64>) {
    let (db, events, _tokens) = fixture_folding(folded).await;
    let router = api(&config(), &db.url).await.router();
    let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("day");
    let windows = [
        ("2026-11-20", "2026-11-26"), // all the data (last-seen path)
        ("2026-11-22", "2026-12-31"), // ends after the data (last-seen path)
        ("2026-11-21", "2026-11-23"), // ends inside the data (fallback)
        ("2026-11-24", "2026-11-25"), // one day
        ("2026-12-01", "2026-12-02"), // no data
    ];
    for (tenant, query) in [(None, ""), (Some("acme"), "&tenant=acme")] {
        for (from, to) in windows {
            let uri = format!("/api/v1/stats?from={from}&to={to}{query}");
            let reply = get(&router, &uri, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            let (lo, hi) = (day(from), day(to));
            let in_window: Vec<&Event> = events
                .iter()
                .filter(|e| {
                    let d = e.ts.date_naive();
                    d >= lo && d < hi && tenant.is_none_or(|t| e.tenant_id == t)
                })
                .collect();
            let users: BTreeSet<&str> = in_window
                .iter()
                .filter_map(|e| e.user_id.as_deref())
                .collect();
            let activity = &reply.body["activity"];
            assert_eq!(
                activity["active_users"].as_i64(),
                Some(users.len() as i64),
                "{uri}"
            );
            let mut per_day: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
            for e in &in_window {
                let users = per_day.entry(e.ts.date_naive().to_string()).or_default();
                if let Some(user) = e.user_id.as_deref() {
                    users.insert(user);
                }
            }
            let expected: Vec<(String, i64)> = per_day
                .into_iter()
                .map(|(d, u)| (d, u.len() as i64))
                .collect();
            let got: Vec<(String, i64)> = activity["daily"]
                .as_array()
                .expect("daily")
                .iter()
                .map(|d| {
                    (
                        d["day"].as_str().expect("day").to_owned(),
                        d["active_users"].as_i64().expect("active_users"),
                    )
                })
                .collect();
            assert_eq!(got, expected, "{uri}");
        }
    }
}

/// Pages grouped by user alone by week and month (migration 0029: a period's
/// whole ISO weeks come from the per-user weekly rollups, its edge days from
/// the daily ones) equal the sums of the raw rows, over every tenant, for one
/// tenant (by filter and as a tenant-scoped caller) and one user; windows with
/// and without whole weeks, with edges mid-week, paged two groups at a time
/// so that cursors fall inside periods; the tail partly folded and all folded.
#[tokio::test]
async fn by_user_week_and_month_pages_match_the_raw_rows() {
    for folded in [Some(700), None] {
        let (db, events, tokens) = fixture_folding(folded).await;
        let router = api(&config_with_jwt(), &db.url).await.router();
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("day");
        let all = token("admin", Some("*"));
        let acme = token("admin", Some("acme"));
        // Tokens: Tue 2026-10-27 .. Wed 11-04; activity: Fri 11-20 .. Tue 11-24.
        let windows = [
            ("2026-10-27", "2026-11-05"), // no whole week in any period
            ("2026-10-26", "2026-11-09"), // whole weeks; month Nov: 1 edge day
            ("2026-10-21", "2026-11-04"), // mid-week edges on both sides
            ("2026-10-01", "2026-12-01"), // months with edges of 4, 6 and 1 days
            ("2026-11-01", "2026-12-01"),
            ("2026-11-18", "2026-11-26"),
            ("2026-11-21", "2026-12-08"), // Nov: weeks from the 23rd, 2 edge days
        ];
        for (from, to) in windows {
            let (lo, hi) = (day(from), day(to));
            for grain in ["week", "month"] {
                for (filter, caller) in [
                    ("", &all),
                    ("&tenant=acme", &all),
                    ("", &acme),
                    ("&user=u2", &all),
                    ("&tenant=acme&user=u2", &all),
                ] {
                    let tenant_only = filter.contains("tenant=acme") || caller == &acme;
                    let user_only = filter.contains("user=u2");
                    let uri = format!(
                        "/api/v1/tokens/usage?grain={grain}&group_by=user&limit=2\
                         &from={from}&to={to}{filter}"
                    );
                    let items = all_items(&router, &uri, Some(caller)).await;
                    let keep = |t: &Tok| {
                        let d = t.ts.date_naive();
                        d >= lo
                            && d < hi
                            && (!tenant_only || t.tenant == "acme")
                            && (!user_only || t.user.as_deref() == Some("u2"))
                    };
                    let expected = expected_tokens(&tokens, grain, &["user"], keep);
                    assert_eq!(token_sums_of(&items, &["user"]), expected, "{uri}");
                    let order: Vec<_> = items.iter().map(|i| item_key(i, &["user"])).collect();
                    let mut sorted = order.clone();
                    sorted.sort();
                    assert_eq!(order, sorted, "{uri}");

                    let uri = format!(
                        "/api/v1/activity/aggregates?grain={grain}&group_by=user&limit=2\
                         &from={from}&to={to}{filter}"
                    );
                    let items = all_items(&router, &uri, Some(caller)).await;
                    let mut got = BTreeMap::new();
                    for item in &items {
                        let n = item["events"].as_i64().expect("events");
                        assert!(got.insert(item_key(item, &["user"]), n).is_none(), "{uri}");
                    }
                    let mut expected = BTreeMap::new();
                    for e in &events {
                        let d = e.ts.date_naive();
                        if d >= lo
                            && d < hi
                            && (!tenant_only || e.tenant_id == "acme")
                            && (!user_only || e.user_id.as_deref() == Some("u2"))
                        {
                            let key = (
                                period(d, grain).to_string(),
                                vec![e.user_id.clone().unwrap_or_default()],
                            );
                            *expected.entry(key).or_insert(0i64) += 1;
                        }
                    }
                    assert_eq!(got, expected, "{uri}");
                }
            }
        }
        // The data fills whole weeks of these windows: the weekly rows are read.
        let weekly: i64 = db
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM token_usage_user_weekly) \
                 + (SELECT count(*) FROM activity_user_weekly)",
                &[],
            )
            .await
            .expect("weekly rows")
            .get(0);
        assert!(weekly > 10, "{weekly}");
    }
}
