//! The token section of `/stats`: totals, per day, provider and model, and the per-call speed rows.

use super::*;
use chrono::Datelike;

/// `GROUPING(day, provider, model)` of the rows of [`tokens_sql`]: the
/// window's totals, per day, per provider, per model; and the speed rows.
pub(super) const TOKENS_TOTAL: i32 = 7;
pub(super) const TOKENS_DAY: i32 = 3;
pub(super) const TOKENS_PROVIDER: i32 = 5;
pub(super) const TOKENS_MODEL: i32 = 6;
pub(super) const TOKENS_SPEED: i32 = 8;
/// The time-to-first-token histogram rows (migration 0025).
pub(super) const TOKENS_TTFT: i32 = 9;
/// The output speed histogram rows (migration 0026).
pub(super) const TOKENS_RATE: i32 = 10;
/// Most models and providers listed (the largest by total tokens).
pub(super) const MAX_KEYED: i64 = 1000;

/// `gs` of the tail's grouping sets in [`tokens_sql`]: by day, provider,
/// model, outcome and duration bucket; by model and time-to-first-token
/// bucket; by model and output speed bucket.
pub(super) const TAIL_SUMS: i32 = crate::tailcache::GS_SUMS;
pub(super) const TAIL_TTFT: i32 = crate::tailcache::GS_TTFT;
pub(super) const TAIL_RATE: i32 = crate::tailcache::GS_SPEED;

/// Which speed rows (parts [`TOKENS_SPEED`], [`TOKENS_TTFT`],
/// [`TOKENS_RATE`]) [`tokens_sql`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SpeedRows {
    /// From the histogram rollups and the tail.
    RollupsAndTail,
    /// From the tail alone: the rollups' part is memoized
    /// ([`rollup_histograms`]).
    TailOnly,
    /// None: the caller has them (one user's from `own_speed_sql`; over every
    /// tenant with the cached tail, the memoized rollup part and the cached
    /// tail's histogram groups).
    None,
}

/// The calls that count for output speed.
pub(super) const TIMED: &str = "duration_ms > 0 AND output_tokens IS NOT NULL";

/// The tokens section in one statement: the token rows not folded yet are
/// read once (`tail`, grouped per day, provider, model, outcome and duration
/// bucket, and per model and time-to-first-token or output speed bucket: three
/// grouping sets, see `TAIL_SUMS`) and summed with
/// the rollup for the totals, the days, the providers and the models
/// (`GROUPING SETS`), with the latency rollup for the speed (migration 0017),
/// with the time-to-first-token rollup for its percentiles (migration 0025)
/// and with the output speed rollup for the per-call speed percentiles
/// (migration 0026; none of them for one user, whose speed `own_speed_sql`
/// reads). Rows: `part` (see the constants above), `day`, `key` (provider or
/// model), `bucket` (the duration bucket, or the TTFT bucket of the TTFT rows,
/// or the speed bucket of the speed rows), the measures, `failed`,
/// `rate_output_tokens`, `rate_duration_ms`, in part, day and rank order.
///
/// `weeks`: the window holds a whole ISO week ([`whole_weeks`]): over every
/// tenant, the latency and output speed histograms read those weeks from
/// their weekly copies (migration 0028, [`by_weeks`]).
///
/// `cached`: the tail comes from the in-memory tail (`crate::tailcache`, only
/// for every tenant and no user) as parameters `$3`–`$22` (see
/// `TokenView::parameters`) instead of being read from `token_usage`.
///
/// `speed_rows`: which of the speed rows the statement computes (none for
/// one user).
pub(super) fn tokens_sql(
    tenant: Option<&str>,
    user: Option<&str>,
    w: &str,
    cached: bool,
    weeks: bool,
    speed_rows: SpeedRows,
) -> String {
    let cached = cached && tenant.is_none() && user.is_none();
    let mut of_tail = String::new();
    if tenant.is_some() {
        of_tail.push_str(" AND tenant_id = $3");
    }
    if user.is_some() {
        of_tail.push_str(" AND coalesce(user_id, '') = $4");
    }
    let rate_output =
        format!("sum(CASE WHEN {TIMED} THEN output_tokens ELSE 0 END) AS rate_output_tokens");
    let rate_duration =
        format!("sum(CASE WHEN {TIMED} THEN duration_ms ELSE 0 END) AS rate_duration_ms");
    // Three grouping sets, told apart by `gs` (TAIL_*): the sums and
    // durations per (day, provider, model, outcome, duration bucket), the
    // time-to-first-token histogram per model and the output speed histogram
    // per model. One set of every key would multiply the histograms' buckets
    // together (a group for nearly every tail row).
    let gs = "GROUPING(tally_duration_bucket(duration_ms), \
        tally_duration_bucket(time_to_first_token_ms), \
        tally_speed_bucket(output_tokens, duration_ms)) AS gs";
    let tail = match cached {
        true => cached_token_tail(),
        false => TOKENS.tail_grouping_sets(
            &["provider", "model"],
            &[
                "outcome",
                "tally_duration_bucket(duration_ms) AS bucket",
                "tally_duration_bucket(time_to_first_token_ms) AS ttft_bucket",
                "tally_speed_bucket(output_tokens, duration_ms) AS speed_bucket",
            ],
            &[&rate_output, &rate_duration, gs],
            (Some("$1"), Some("$2")),
            &of_tail,
            // 1 day, 2 provider, 3 model, 4 outcome, 5 bucket, 6 ttft, 7 speed.
            &[&[1, 2, 3, 4, 5], &[3, 6], &[3, 7]],
        ),
    };
    let measures = TOKENS.measure_columns();
    let sums = TOKENS.measure_sums();
    let latency_set = if cached {
        crate::tailcache::GS_LATENCY
    } else {
        TAIL_SUMS
    };
    let speed = match (user, speed_rows) {
        (Some(_), _) | (None, SpeedRows::None) => String::new(),
        (None, SpeedRows::RollupsAndTail) => format!(
            " UNION ALL {}",
            histogram_sql(tenant, w, weeks, true, Some(latency_set))
        ),
        (None, SpeedRows::TailOnly) => format!(
            " UNION ALL {}",
            histogram_sql(tenant, w, weeks, false, Some(latency_set))
        ),
    };
    format!(
        "WITH tail AS MATERIALIZED ({tail}), \
         sums AS (SELECT GROUPING(day, provider, model) AS g, day, provider, model, {sums}, \
             row_number() OVER (PARTITION BY GROUPING(day, provider, model) \
                 ORDER BY sum(total_tokens) DESC, provider, model) AS rank \
             FROM (SELECT day, provider, model, {measures} FROM {rollup}{w} \
                   UNION ALL SELECT day, provider, model, {measures} FROM tail \
                       WHERE gs = {TAIL_SUMS}) AS live \
             GROUP BY GROUPING SETS ((), (day), (provider), (model))) \
         SELECT g AS part, day, CASE g WHEN {TOKENS_PROVIDER} THEN provider \
                 WHEN {TOKENS_MODEL} THEN model END AS key, NULL::int2 AS bucket, rank, \
             {measures}, NULL::int8 AS failed, NULL::int8 AS rate_output_tokens, \
             NULL::float8 AS rate_duration_ms \
         FROM sums WHERE g IN ({TOKENS_TOTAL}, {TOKENS_DAY}) OR rank <= {MAX_KEYED}{speed} \
         ORDER BY part, day, rank",
        rollup = tables(tenant, user).tokens
    )
}

/// The speed rows of [`tokens_sql`] (parts [`TOKENS_SPEED`], [`TOKENS_TTFT`],
/// [`TOKENS_RATE`], in its columns) for the window `w` of a tenant's or
/// every tenant's rollups: the latency rollup per model and duration bucket,
/// the time-to-first-token and output speed rollups per model and bucket.
/// `rollups`: the rollups are read (else only the tail: their part is
/// memoized). `tail`: the statement's `tail` is added, its latency rows being
/// those of that grouping set (`None`: the rollups alone, see
/// [`rollup_histograms_sql`]). `weeks` as for [`tokens_sql`].
pub(super) fn histogram_sql(
    tenant: Option<&str>,
    w: &str,
    weeks: bool,
    rollups: bool,
    tail: Option<i32>,
) -> String {
    // The speed rows hold `requests` and leave the other measures NULL.
    let nulls: Vec<&str> = TOKEN_MEASURES
        .iter()
        .skip(1)
        .map(|_| "NULL::int8")
        .collect();
    let nulls = nulls.join(", ");
    // The rows of one histogram: the rollup's and/or the tail's set.
    let sources = |rollup: String, columns: &str, set: i32| {
        let mut parts = Vec::new();
        if rollups {
            parts.push(rollup);
        }
        if tail.is_some() {
            parts.push(format!("SELECT {columns} FROM tail WHERE gs = {set}"));
        }
        parts.join(" UNION ALL ")
    };
    // One histogram section per model (calls per bucket, `-1`: not reported,
    // left out) from a bucket rollup and the tail's grouping set `tail_set`.
    let histogram = |section: i32, bucket: &str, rollup: String, tail_set: i32| {
        format!(
            "UNION ALL SELECT {section}, NULL::date, model, {bucket}, NULL::int8, \
                 sum(requests)::int8, {nulls}, NULL::float8, NULL::int8, NULL::int8, \
                 NULL::float8 \
             FROM ({}) AS h \
             WHERE {bucket} >= 0 \
             GROUP BY model, {bucket}",
            sources(rollup, &format!("model, {bucket}, requests"), tail_set)
        )
    };
    let latency_columns = "model, outcome, bucket, requests, rate_output_tokens, \
        rate_duration_ms";
    // A tenant's histograms per day; over every tenant the `_all` copies, and
    // for the latency and speed ones the whole weeks from their weekly copies
    // when the window holds one.
    let suffix = if tenant.is_some() { "" } else { "_all" };
    let daily = |columns: &str, name: &str| {
        format!("SELECT {columns} FROM token_usage_{name}_daily{suffix}{w}")
    };
    let by_day_or_week = |columns: &str, name: &str| {
        if tenant.is_none() && weeks {
            by_weeks(
                columns,
                &format!("token_usage_{name}_daily_all"),
                &format!("token_usage_{name}_weekly_all"),
                w,
            )
        } else {
            daily(columns, name)
        }
    };
    let latency = by_day_or_week(latency_columns, "latency");
    let ttft = daily("model, ttft_bucket, requests", "ttft");
    let rate = by_day_or_week("model, speed_bucket, requests", "speed");
    format!(
        "SELECT {TOKENS_SPEED}, NULL::date, model, bucket, NULL::int8, \
             sum(requests)::int8, {nulls}, NULL::float8, \
             coalesce(sum(requests) FILTER (WHERE outcome = 'failure'), 0)::int8, \
             sum(rate_output_tokens)::int8, sum(rate_duration_ms)::float8 \
         FROM ({latency}) AS l \
         GROUP BY model, bucket \
         {ttft_histogram} {rate_histogram}",
        latency = sources(latency, latency_columns, tail.unwrap_or(TAIL_SUMS)),
        ttft_histogram = histogram(TOKENS_TTFT, "ttft_bucket", ttft, TAIL_TTFT),
        rate_histogram = histogram(TOKENS_RATE, "speed_bucket", rate, TAIL_RATE),
    )
}

/// The speed rows of the rollups alone for the window `$1 <= day < $2`, over
/// every tenant or (`one_tenant`) of the tenant `$3` (see
/// [`histogram_sql`]), named like [`tokens_sql`]'s columns: `part`, `key`
/// (the model), `bucket`, `requests`, `failed`, `rate_output_tokens`,
/// `rate_duration_ms`.
pub(super) fn rollup_histograms_sql(one_tenant: bool, weeks: bool) -> String {
    let (w, tenant) = match one_tenant {
        true => (" WHERE day >= $1 AND day < $2 AND tenant_id = $3", Some("")),
        false => (" WHERE day >= $1 AND day < $2", None),
    };
    format!(
        "SELECT part, key, bucket, requests, failed, rate_output_tokens, rate_duration_ms \
         FROM ({}) AS h (part, day, key, bucket, rank, {}, failed, rate_output_tokens, \
             rate_duration_ms)",
        histogram_sql(tenant, w, weeks, true, None),
        TOKENS.measure_columns()
    )
}

/// Whether `from..to` (exclusive end) holds a whole ISO week (Monday to
/// Sunday).
pub(super) fn whole_weeks(from: NaiveDate, to: NaiveDate) -> bool {
    let first = from + Days::new(u64::from((7 - from.weekday().num_days_from_monday()) % 7));
    let last = to - Days::new(u64::from(to.weekday().num_days_from_monday()));
    first < last
}

/// The rows of a histogram over every tenant for the window `w` (`WHERE day
/// >= $1 AND day < $2`): the window's whole ISO weeks (Monday to Sunday) from
/// the weekly copy (migration 0028), the days before the first and after the
/// last whole week from the daily rollup. `columns` are in both.
pub(super) fn by_weeks(columns: &str, daily: &str, weekly: &str, w: &str) -> String {
    // The first Monday on or after `from`, and the last Monday on or before
    // `to` (exclusive end): the whole weeks are [first, last). When last <=
    // first there is none, and every day of the window comes from `daily`.
    let first = "date_trunc('week', ($1::date + 6)::timestamp)::date";
    let last = "date_trunc('week', $2::date::timestamp)::date";
    // The days before the first whole week and after the last one, as two
    // index ranges (a filter would read every day of the window): [from,
    // min(first, to)) and [max(last, min(first, to)), to), which cover the
    // window once when it holds no whole week.
    let head_end = format!("least({first}, $2::date)");
    format!(
        "SELECT {columns} FROM {daily}{w} AND day < {head_end} \
         UNION ALL SELECT {columns} FROM {daily}{w} AND day >= greatest({last}, {head_end}) \
         UNION ALL SELECT {columns} FROM {weekly} WHERE week >= {first} AND week < {last}"
    )
}

/// The grouped tail of [`tokens_sql`] from the in-memory tail's columns
/// (parameters `$3`–`$22`, see `TokenView::parameters`).
pub(super) fn cached_token_tail() -> String {
    let counts: Vec<String> = TOKEN_MEASURES
        .iter()
        .enumerate()
        .map(|(i, _)| format!("${}::int8[]", 10 + i))
        .collect();
    let next = 10 + TOKEN_MEASURES.len();
    format!(
        "SELECT day, provider, model, outcome, bucket, ttft_bucket, speed_bucket, {measures}, \
             cost::numeric AS cost_usd, rate_output_tokens, rate_duration_ms, gs \
         FROM unnest($3::date[], $4::text[], $5::text[], $6::text[], $7::int2[], $8::int2[], \
             $9::int2[], {counts}, ${c}::text[], ${o}::int8[], ${d}::float8[], ${g}::int4[]) \
             AS t (day, provider, model, outcome, bucket, ttft_bucket, speed_bucket, {measures}, \
                 cost, rate_output_tokens, rate_duration_ms, gs)",
        measures = TOKEN_MEASURES.join(", "),
        counts = counts.join(", "),
        c = next,
        o = next + 1,
        d = next + 2,
        g = next + 3,
    )
}

pub(super) fn token_measures(row: &Row, into: &mut Map<String, Value>) -> Result<(), ApiError> {
    for m in TOKEN_MEASURES {
        into.insert((*m).to_owned(), Value::from(int(row, m)?));
    }
    into.insert("cost_usd".to_owned(), float(row, "cost_usd")?);
    Ok(())
}

/// One `by_model` / `by_provider` item.
pub(super) fn keyed_item(row: &Row, column: &str) -> Result<Map<String, Value>, ApiError> {
    let key: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
    let mut item = Map::new();
    item.insert(
        column.to_owned(),
        key.and_then(non_empty).map_or(Value::Null, Value::String),
    );
    token_measures(row, &mut item)?;
    Ok(item)
}

pub(super) async fn tokens_section(
    client: &Transaction<'_>,
    live: &Snapshot,
    cache: &TailCache,
    tenant: Option<&str>,
    user: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, user, from, to);
    let weeks = whole_weeks(from, to);
    // Over every tenant: the tail grouped in memory when it can answer, and
    // the rollups' histograms read once per rollup version.
    let cached = match (tenant, user) {
        (None, None) => cache.tokens(client, from, to).await?,
        _ => None,
    };
    // The rollups' speed rows of the window, kept per rollup version: over
    // every tenant with the cached tail (whose version is at hand), and for
    // one tenant.
    let memo_key = match (tenant, user, &cached) {
        (None, None, Some(view)) => Some(crate::tailcache::MemoKey {
            tenant: None,
            from,
            to,
            watermark: view.watermark,
            generation: view.generation,
        }),
        (Some(tenant), None, _) => {
            let (watermark, generation) = cache.token_rollup_version(client).await?;
            Some(crate::tailcache::MemoKey {
                tenant: Some(tenant.to_owned()),
                from,
                to,
                watermark,
                generation,
            })
        }
        _ => None,
    };
    let rollup_speed = match memo_key {
        Some(key) => Some(rollup_histograms(client, cache, key, weeks).await?),
        None => None,
    };
    let own_speed = user.map(|_| own_speed_sql(w));
    let (rows, as_of_seq, own_speed_rows) = futures::try_join!(
        async {
            match &cached {
                Some(view) => {
                    // Only the tail's sums: its histogram groups are added below.
                    let sql = tokens_sql(tenant, user, w, true, weeks, SpeedRows::None);
                    let mut all = window(tenant, user, from, to).1;
                    all.extend(view.only(crate::tailcache::GS_SUMS).parameters());
                    crate::params::query_on(client, &sql, &all).await
                }
                None => {
                    let speed_rows = match rollup_speed {
                        Some(_) => SpeedRows::TailOnly,
                        None => SpeedRows::RollupsAndTail,
                    };
                    let sql = tokens_sql(tenant, user, w, false, weeks, speed_rows);
                    run(client, live, &sql, &params).await
                }
            }
        },
        async {
            match &cached {
                Some(view) => Ok(view.high),
                None => crate::params::newest_seq(client, "token_usage").await,
            }
        },
        async {
            match &own_speed {
                Some(sql) => run(client, live, sql, &params).await,
                None => Ok(Vec::new()),
            }
        },
    )?;
    let mut section = Map::new();
    section.insert("as_of_seq".to_owned(), Value::from(as_of_seq));
    let mut by_model = Vec::new();
    let mut by_provider = Vec::new();
    let mut daily = Vec::new();
    let mut histograms = Vec::new();
    for row in &rows {
        let part: i32 = row.try_get("part").map_err(ApiError::from_db)?;
        match part {
            TOKENS_TOTAL => token_measures(row, &mut section)?,
            TOKENS_DAY => {
                let day: NaiveDate = row.try_get("day").map_err(ApiError::from_db)?;
                let mut item = Map::new();
                item.insert("day".to_owned(), Value::String(day.to_string()));
                token_measures(row, &mut item)?;
                daily.push(Value::Object(item));
            }
            TOKENS_PROVIDER => by_provider.push(Value::Object(keyed_item(row, "provider")?)),
            TOKENS_MODEL => by_model.push(keyed_item(row, "model")?),
            TOKENS_SPEED => {
                let model: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
                histograms.push(histogram_row(
                    row,
                    model.unwrap_or_default(),
                    Histogram::Duration,
                )?);
            }
            TOKENS_TTFT => {
                let model: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
                histograms.push(histogram_row(
                    row,
                    model.unwrap_or_default(),
                    Histogram::FirstToken,
                )?);
            }
            TOKENS_RATE => {
                let model: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
                histograms.push(histogram_row(
                    row,
                    model.unwrap_or_default(),
                    Histogram::OutputSpeed,
                )?);
            }
            _ => {}
        }
    }
    if let Some(rollup) = &rollup_speed {
        histograms.extend(rollup.iter().cloned());
    }
    if let (Some(view), Some(_)) = (&cached, &rollup_speed) {
        histograms.extend(view.histogram_groups().map(tail_histogram_row));
    }
    for row in &own_speed_rows {
        let model: String = row.try_get("model").map_err(ApiError::from_db)?;
        let kind: i32 = row.try_get("kind").map_err(ApiError::from_db)?;
        let kind = match kind {
            TOKENS_TTFT => Histogram::FirstToken,
            TOKENS_RATE => Histogram::OutputSpeed,
            _ => Histogram::Duration,
        };
        histograms.push(histogram_row(row, model, kind)?);
    }
    if !section.contains_key("requests") {
        // No row at all in the window: every total is 0.
        for m in TOKEN_MEASURES {
            section.insert((*m).to_owned(), Value::from(0));
        }
        section.insert("cost_usd".to_owned(), Value::from(0.0));
    }
    let (overall, per_model) = speeds(&histograms);
    overall.insert_into(&mut section);
    for item in &mut by_model {
        let model = item
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        per_model
            .get(model)
            .cloned()
            .unwrap_or_default()
            .insert_into(item);
    }
    section.insert(
        "by_model".to_owned(),
        Value::Array(by_model.into_iter().map(Value::Object).collect()),
    );
    section.insert("by_provider".to_owned(), Value::Array(by_provider));
    section.insert("daily".to_owned(), Value::Array(daily));
    Ok(Value::Object(section))
}

/// The rollups' speed rows of `key`'s tenant (or every tenant) and window in
/// `client`'s snapshot, whose token rollup version `key` holds: read with
/// [`rollup_histograms_sql`] once per tenant, window and version, then kept
/// in `cache` (see `crate::tailcache::RollupMemo`).
async fn rollup_histograms(
    client: &Transaction<'_>,
    cache: &TailCache,
    key: crate::tailcache::MemoKey,
    weeks: bool,
) -> Result<std::sync::Arc<Vec<HistogramRow>>, ApiError> {
    if let Some(rows) = cache.token_histograms.get(&key) {
        return Ok(rows);
    }
    let params = window(key.tenant.as_deref(), None, key.from, key.to).1;
    let sql = rollup_histograms_sql(key.tenant.is_some(), weeks);
    let rows = crate::params::query_on(client, &sql, &params).await?;
    let mut histograms = Vec::with_capacity(rows.len());
    for row in &rows {
        let part: i32 = row.try_get("part").map_err(ApiError::from_db)?;
        let kind = match part {
            TOKENS_TTFT => Histogram::FirstToken,
            TOKENS_RATE => Histogram::OutputSpeed,
            _ => Histogram::Duration,
        };
        let model: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
        histograms.push(histogram_row(row, model.unwrap_or_default(), kind)?);
    }
    let histograms = std::sync::Arc::new(histograms);
    cache
        .token_histograms
        .put(key, std::sync::Arc::clone(&histograms));
    Ok(histograms)
}

/// A speed row of a statement (columns `bucket`, `requests`, `failed`,
/// `rate_output_tokens`, `rate_duration_ms`) of `model`'s histogram `kind`.
fn histogram_row(row: &Row, model: String, kind: Histogram) -> Result<HistogramRow, ApiError> {
    Ok(HistogramRow {
        model,
        kind,
        bucket: row.try_get("bucket").map_err(ApiError::from_db)?,
        requests: int(row, "requests")?,
        failed: int(row, "failed")?,
        rate_output_tokens: int(row, "rate_output_tokens")?,
        rate_duration_ms: row
            .try_get::<_, Option<f64>>("rate_duration_ms")
            .map_err(ApiError::from_db)?
            .unwrap_or(0.0),
    })
}

/// A histogram group of the cached tail as a speed row: a duration group's
/// calls are failures when its outcome is `failure`.
fn tail_histogram_row(group: crate::tailcache::HistogramGroup<'_>) -> HistogramRow {
    let kind = match group.gs {
        crate::tailcache::GS_TTFT => Histogram::FirstToken,
        crate::tailcache::GS_SPEED => Histogram::OutputSpeed,
        _ => Histogram::Duration,
    };
    let failed = match (kind, group.outcome) {
        (Histogram::Duration, Some("failure")) => group.requests,
        _ => 0,
    };
    HistogramRow {
        model: group.model.to_owned(),
        kind,
        bucket: group.bucket,
        requests: group.requests,
        failed,
        rate_output_tokens: group.rate_output_tokens,
        rate_duration_ms: group.rate_duration_ms,
    }
}

/// The speed of one user's calls (a `self:read` caller): the latency,
/// time-to-first-token and output speed rollups keep no user, so its token
/// rows of the window are read as they are. Rows: `kind` [`TOKENS_SPEED`] (the
/// duration histogram), [`TOKENS_TTFT`] (the time-to-first-token one, of its
/// calls that reported one) or [`TOKENS_RATE`] (the output speed one, of its
/// calls that count for speed).
pub(super) fn own_speed_sql(w: &str) -> String {
    let timed = "duration_ms > 0 AND output_tokens IS NOT NULL";
    format!(
        "SELECT model, CASE WHEN GROUPING(bucket) = 0 THEN bucket \
                 WHEN GROUPING(ttft_bucket) = 0 THEN ttft_bucket ELSE speed_bucket END AS bucket, \
             CASE WHEN GROUPING(bucket) = 0 THEN {TOKENS_SPEED} \
                 WHEN GROUPING(ttft_bucket) = 0 THEN {TOKENS_TTFT} ELSE {TOKENS_RATE} END AS kind, \
             count(*)::int8 AS requests, \
             count(*) FILTER (WHERE outcome = 'failure')::int8 AS failed, \
             sum(CASE WHEN {timed} THEN output_tokens ELSE 0 END)::int8 AS rate_output_tokens, \
             sum(CASE WHEN {timed} THEN duration_ms ELSE 0 END)::float8 AS rate_duration_ms \
         FROM (SELECT (ts AT TIME ZONE 'UTC')::date AS day, tenant_id, \
                   coalesce(user_id, '') AS user_id, coalesce(model, '') AS model, outcome, \
                   tally_duration_bucket(duration_ms) AS bucket, \
                   tally_duration_bucket(time_to_first_token_ms) AS ttft_bucket, \
                   tally_speed_bucket(output_tokens, duration_ms) AS speed_bucket, \
                   output_tokens, duration_ms \
               FROM token_usage \
               WHERE ts >= $1::date::timestamp AT TIME ZONE 'UTC' \
                 AND ts < $2::date::timestamp AT TIME ZONE 'UTC') AS own{w} \
         GROUP BY GROUPING SETS ((model, bucket), (model, ttft_bucket), (model, speed_bucket)) \
         HAVING GROUPING(bucket) = 0 OR (GROUPING(ttft_bucket) = 0 AND ttft_bucket >= 0) \
             OR (GROUPING(speed_bucket) = 0 AND speed_bucket >= 0)"
    )
}
