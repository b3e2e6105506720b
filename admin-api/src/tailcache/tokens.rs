//! The token tail in memory: the unfolded `token_usage` rows grouped per day, provider,
//! model and outcome with their counts, cost and speed histograms, for the answers over
//! every tenant.

use super::*;

/// Scale of `cost_usd` (`numeric(20, 10)`): costs are kept as integers of
/// 1e-10 USD, so sums are exact like PostgreSQL's.
pub(super) const COST_SCALE: u32 = 10;

/// Parses a `numeric` rendered as text (`-12.5`, `3`, `0.0000000001`) into
/// units of 1e-10; `None` with more than 10 decimals or out of range.
pub(super) fn parse_cost(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (digits, ""),
    };
    if whole.is_empty()
        || fraction.len() > COST_SCALE as usize
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = whole.parse().ok()?;
    let mut units = whole.checked_mul(10i128.pow(COST_SCALE))?;
    if !fraction.is_empty() {
        let value: i128 = fraction.parse().ok()?;
        let padding = COST_SCALE - fraction.len() as u32;
        units = units.checked_add(value.checked_mul(10i128.pow(padding))?)?;
    }
    Some(if negative { -units } else { units })
}

/// Units of 1e-10 as a `numeric` literal's text.
pub(super) fn format_cost(units: i128) -> String {
    let scale = 10i128.pow(COST_SCALE);
    let sign = if units < 0 { "-" } else { "" };
    let magnitude = units.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!("{sign}{}.{:010}", magnitude / scale, magnitude % scale)
}

/// The counted measures of the token rows, in `aggregates::TOKENS` order
/// (requests … total_tokens).
pub(super) const TOKEN_COUNTS: usize = 9;

#[derive(Debug, Clone, Default)]
pub(super) struct TokenSums {
    pub(super) counts: [i64; TOKEN_COUNTS],
    pub(super) cost: i128,
    pub(super) rate_output_tokens: i64,
    pub(super) rate_duration_ms: f64,
}

pub(super) type SumKey = (NaiveDate, String, String, Option<String>, i16);
pub(super) type HistogramKey = (NaiveDate, String, i16);

/// The token tail: the sums per (day, provider, model, outcome, duration
/// bucket), and the calls per (day, model, time-to-first-token bucket) and
/// per (day, model, output speed bucket).
pub(super) struct TokenTail {
    pub(super) version: Version,
    pub(super) sums: HashMap<SumKey, TokenSums>,
    pub(super) ttft: HashMap<HistogramKey, i64>,
    pub(super) speed: HashMap<HistogramKey, i64>,
    /// The sums per (day, tenant, user, provider, model), as
    /// `token_usage_daily` keeps them.
    pub(super) keyed: Keyed,
}

/// `GROUPING(bucket, ttft_bucket, speed_bucket)` of the tail's rows per
/// (day, tenant, user, provider, model) (the cache's own fourth set).
pub(super) const GS_KEYED: i32 = 7;

/// `GROUPING(bucket, ttft_bucket, speed_bucket)` of the three grouping sets
/// (the values `/stats` gives its tail's `gs`).
pub(crate) const GS_SUMS: i32 = 3;
pub(crate) const GS_TTFT: i32 = 5;
pub(crate) const GS_SPEED: i32 = 6;
/// The in-memory tail's rows of durations per (model, outcome, bucket), for
/// the latency part of `/stats` (the raw tail's `GS_SUMS` rows serve both).
pub(crate) const GS_LATENCY: i32 = 4;

/// The calls that count for output speed (as the rollup folds them).
pub(super) const TIMED: &str = "duration_ms > 0 AND output_tokens IS NOT NULL";

impl Tail for TokenTail {
    const TABLE: &'static str = "token_usage";
    const WATERMARK: &'static str = "token_usage_daily";

    fn empty(version: Version) -> TokenTail {
        TokenTail {
            version,
            sums: HashMap::new(),
            ttft: HashMap::new(),
            speed: HashMap::new(),
            keyed: Keyed::default(),
        }
    }

    fn version(&self) -> Version {
        self.version
    }

    async fn extend(
        &mut self,
        client: &impl GenericClient,
        from: i64,
        to: i64,
    ) -> Result<(), ApiError> {
        if to <= from {
            return Ok(());
        }
        let range = seq_range(client, "token_usage", from, to).await?;
        let bucket = "tally_duration_bucket(duration_ms)";
        let ttft = "tally_duration_bucket(time_to_first_token_ms)";
        let speed = "tally_speed_bucket(output_tokens, duration_ms)";
        let sql = format!(
            "SELECT (ts AT TIME ZONE 'UTC')::date AS day, coalesce(provider, '') AS provider, \
                 coalesce(model, '') AS model, outcome, {bucket} AS bucket, {ttft} AS ttft_bucket, \
                 {speed} AS speed_bucket, \
                 count(*)::int8, \
                 sum(CASE WHEN usage_known THEN 0 ELSE 1 END)::int8, \
                 sum(CASE WHEN usage_known AND cost_usd IS NULL THEN 1 ELSE 0 END)::int8, \
                 sum(coalesce(input_tokens, 0))::int8, sum(coalesce(output_tokens, 0))::int8, \
                 sum(coalesce(cache_read_tokens, 0))::int8, \
                 sum(coalesce(cache_write_tokens, 0))::int8, \
                 sum(coalesce(reasoning_tokens, 0))::int8, sum(coalesce(total_tokens, 0))::int8, \
                 sum(coalesce(cost_usd, 0))::text, \
                 sum(CASE WHEN {TIMED} THEN output_tokens ELSE 0 END)::int8, \
                 sum(CASE WHEN {TIMED} THEN duration_ms ELSE 0 END)::float8, \
                 GROUPING({bucket}, {ttft}, {speed})::int4 AS gs, \
                 tenant_id, coalesce(user_id, '') AS user_id \
             FROM token_usage WHERE {range} \
             GROUP BY GROUPING SETS ((1, 2, 3, 4, 5), (1, 3, 6), (1, 3, 7), (1, 2, 3, 21, 22))"
        );
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .map_err(ApiError::from_db)?;
        let bad_cost = || ApiError::Internal("a token tail cost is not a numeric(20, 10)".into());
        for row in &rows {
            let day: NaiveDate = row.try_get(0).map_err(ApiError::from_db)?;
            let model: String = row.try_get(2).map_err(ApiError::from_db)?;
            let requests: i64 = row.try_get(7).map_err(ApiError::from_db)?;
            let gs: i32 = row.try_get(19).map_err(ApiError::from_db)?;
            match gs {
                GS_KEYED => {
                    let provider: String = row.try_get(1).map_err(ApiError::from_db)?;
                    let tenant: String = row.try_get(20).map_err(ApiError::from_db)?;
                    let user: String = row.try_get(21).map_err(ApiError::from_db)?;
                    let mut counts = [0i64; TOKEN_COUNTS];
                    for (i, count) in counts.iter_mut().enumerate() {
                        *count = row.try_get(7 + i).map_err(ApiError::from_db)?;
                    }
                    let cost: String = row.try_get(16).map_err(ApiError::from_db)?;
                    let cost = parse_cost(&cost).ok_or_else(bad_cost)?;
                    self.keyed
                        .add(day, [tenant, user, provider, model], &counts, cost);
                }
                GS_TTFT => {
                    let b: i16 = row.try_get(5).map_err(ApiError::from_db)?;
                    *self.ttft.entry((day, model, b)).or_insert(0) += requests;
                }
                GS_SPEED => {
                    let b: i16 = row.try_get(6).map_err(ApiError::from_db)?;
                    *self.speed.entry((day, model, b)).or_insert(0) += requests;
                }
                _ => {
                    let provider: String = row.try_get(1).map_err(ApiError::from_db)?;
                    let outcome: Option<String> = row.try_get(3).map_err(ApiError::from_db)?;
                    let b: i16 = row.try_get(4).map_err(ApiError::from_db)?;
                    let sums = self
                        .sums
                        .entry((day, provider, model, outcome, b))
                        .or_default();
                    for (i, count) in sums.counts.iter_mut().enumerate() {
                        let value: i64 = row.try_get(7 + i).map_err(ApiError::from_db)?;
                        *count += value;
                    }
                    let cost: String = row.try_get(16).map_err(ApiError::from_db)?;
                    sums.cost += parse_cost(&cost).ok_or_else(bad_cost)?;
                    let rate_output: i64 = row.try_get(17).map_err(ApiError::from_db)?;
                    let rate_duration: f64 = row.try_get(18).map_err(ApiError::from_db)?;
                    sums.rate_output_tokens += rate_output;
                    sums.rate_duration_ms += rate_duration;
                }
            }
        }
        self.version.high = to;
        Ok(())
    }
}

impl TokenTail {
    /// The window's tail in as few rows as `/stats` needs: the sums per
    /// (day, provider, model) ([`GS_SUMS`]), the durations per (model,
    /// outcome, duration bucket) ([`GS_LATENCY`]) and the two histograms per
    /// (model, bucket) ([`GS_TTFT`], [`GS_SPEED`]); the last three without a
    /// day (the window is applied here).
    pub(super) fn view(&self, from: NaiveDate, to: NaiveDate) -> TokenView {
        let within = |day: &NaiveDate| *day >= from && *day < to;
        let mut view = TokenView {
            high: self.version.high,
            watermark: self.version.watermark,
            generation: self.version.generation,
            ..TokenView::default()
        };
        let mut sums: BTreeMap<(NaiveDate, &str, &str), TokenSums> = BTreeMap::new();
        let mut latency: BTreeMap<(&str, Option<&str>, i16), TokenSums> = BTreeMap::new();
        for ((day, provider, model, outcome, bucket), group) in &self.sums {
            if !within(day) {
                continue;
            }
            let total = sums
                .entry((*day, provider.as_str(), model.as_str()))
                .or_default();
            for (t, n) in total.counts.iter_mut().zip(group.counts) {
                *t += n;
            }
            total.cost += group.cost;
            let timed = latency
                .entry((model.as_str(), outcome.as_deref(), *bucket))
                .or_default();
            timed.counts[0] += group.counts[0];
            timed.rate_output_tokens += group.rate_output_tokens;
            timed.rate_duration_ms += group.rate_duration_ms;
        }
        for ((day, provider, model), total) in &sums {
            view.push(
                GS_SUMS,
                Some(*day),
                Some((*provider).to_owned()),
                (*model).to_owned(),
                None,
                (None, None, None),
                total,
            );
        }
        for ((model, outcome, bucket), timed) in &latency {
            view.push(
                GS_LATENCY,
                None,
                None,
                (*model).to_owned(),
                outcome.map(str::to_owned),
                (Some(*bucket), None, None),
                timed,
            );
        }
        for (set, histogram) in [(GS_TTFT, &self.ttft), (GS_SPEED, &self.speed)] {
            let mut calls: BTreeMap<(&str, i16), i64> = BTreeMap::new();
            for ((day, model, bucket), requests) in histogram {
                if within(day) {
                    *calls.entry((model.as_str(), *bucket)).or_insert(0) += requests;
                }
            }
            for ((model, bucket), requests) in calls {
                let buckets = match set {
                    GS_TTFT => (None, Some(bucket), None),
                    _ => (None, None, Some(bucket)),
                };
                let sums = TokenSums {
                    counts: [requests, 0, 0, 0, 0, 0, 0, 0, 0],
                    ..TokenSums::default()
                };
                view.push(set, None, None, model.to_owned(), None, buckets, &sums);
            }
        }
        view
    }
}

/// The token tail of a window, as columns (one element per group), in the
/// shape of `/stats`' grouped tail (see `stats::tokens_sql`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TokenView {
    /// The newest `seq` it holds (the answer's `as_of_seq`).
    pub high: i64,
    /// The token rollup watermark of the snapshot it was made for.
    pub watermark: i64,
    /// The `token_usage` change generation of that snapshot.
    pub generation: i64,
    day: Vec<Option<NaiveDate>>,
    provider: Vec<Option<String>>,
    model: Vec<String>,
    outcome: Vec<Option<String>>,
    bucket: Vec<Option<i16>>,
    ttft_bucket: Vec<Option<i16>>,
    speed_bucket: Vec<Option<i16>>,
    counts: [Vec<i64>; TOKEN_COUNTS],
    cost: Vec<String>,
    rate_output_tokens: Vec<i64>,
    rate_duration_ms: Vec<f64>,
    gs: Vec<i32>,
}

impl TokenView {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        gs: i32,
        day: Option<NaiveDate>,
        provider: Option<String>,
        model: String,
        outcome: Option<String>,
        (bucket, ttft, speed): (Option<i16>, Option<i16>, Option<i16>),
        sums: &TokenSums,
    ) {
        self.gs.push(gs);
        self.day.push(day);
        self.provider.push(provider);
        self.model.push(model);
        self.outcome.push(outcome);
        self.bucket.push(bucket);
        self.ttft_bucket.push(ttft);
        self.speed_bucket.push(speed);
        for (column, value) in self.counts.iter_mut().zip(sums.counts) {
            column.push(value);
        }
        self.cost.push(format_cost(sums.cost));
        self.rate_output_tokens.push(sums.rate_output_tokens);
        self.rate_duration_ms.push(sums.rate_duration_ms);
    }

    /// The same view with only the groups of grouping set `gs` (one of
    /// `GS_*`).
    pub(crate) fn only(&self, gs: i32) -> TokenView {
        let mut view = TokenView {
            high: self.high,
            watermark: self.watermark,
            generation: self.generation,
            ..TokenView::default()
        };
        for (i, _) in self.gs.iter().enumerate().filter(|(_, g)| **g == gs) {
            view.gs.push(gs);
            view.day.push(self.day[i]);
            view.provider.push(self.provider[i].clone());
            view.model.push(self.model[i].clone());
            view.outcome.push(self.outcome[i].clone());
            view.bucket.push(self.bucket[i]);
            view.ttft_bucket.push(self.ttft_bucket[i]);
            view.speed_bucket.push(self.speed_bucket[i]);
            for (column, all) in view.counts.iter_mut().zip(&self.counts) {
                column.push(all[i]);
            }
            view.cost.push(self.cost[i].clone());
            view.rate_output_tokens.push(self.rate_output_tokens[i]);
            view.rate_duration_ms.push(self.rate_duration_ms[i]);
        }
        view
    }

    /// The histogram groups (grouping sets [`GS_LATENCY`], [`GS_TTFT`],
    /// [`GS_SPEED`]), each with its set, model, outcome, the bucket of its
    /// set, calls, and the output tokens and duration of its calls that count
    /// for speed.
    pub(crate) fn histogram_groups(&self) -> impl Iterator<Item = HistogramGroup<'_>> {
        (0..self.gs.len()).filter_map(move |i| {
            let bucket = match self.gs[i] {
                GS_LATENCY => self.bucket[i],
                GS_TTFT => self.ttft_bucket[i],
                GS_SPEED => self.speed_bucket[i],
                _ => return None,
            };
            Some(HistogramGroup {
                gs: self.gs[i],
                model: &self.model[i],
                outcome: self.outcome[i].as_deref(),
                bucket: bucket.unwrap_or(-1),
                requests: self.counts[0][i],
                rate_output_tokens: self.rate_output_tokens[i],
                rate_duration_ms: self.rate_duration_ms[i],
            })
        })
    }

    /// The number of statement parameters [`TokenView::parameters`] gives.
    #[cfg(test)]
    pub(crate) const PARAMETERS: usize = 11 + TOKEN_COUNTS;

    /// The columns as statement parameters: day, provider, model, outcome,
    /// bucket, ttft_bucket, speed_bucket, the nine counts, cost (text),
    /// rate_output_tokens, rate_duration_ms, gs.
    pub(crate) fn parameters(&self) -> Vec<Box<dyn ToSql + Sync + Send>> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(self.day.clone()),
            Box::new(self.provider.clone()),
            Box::new(self.model.clone()),
            Box::new(self.outcome.clone()),
            Box::new(self.bucket.clone()),
            Box::new(self.ttft_bucket.clone()),
            Box::new(self.speed_bucket.clone()),
        ];
        for column in &self.counts {
            params.push(Box::new(column.clone()));
        }
        params.push(Box::new(self.cost.clone()));
        params.push(Box::new(self.rate_output_tokens.clone()));
        params.push(Box::new(self.rate_duration_ms.clone()));
        params.push(Box::new(self.gs.clone()));
        params
    }
}

/// One histogram group of a [`TokenView`] (see
/// [`TokenView::histogram_groups`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramGroup<'a> {
    /// [`GS_LATENCY`], [`GS_TTFT`] or [`GS_SPEED`].
    pub gs: i32,
    pub model: &'a str,
    pub outcome: Option<&'a str>,
    pub bucket: i16,
    pub requests: i64,
    pub rate_output_tokens: i64,
    pub rate_duration_ms: f64,
}

impl TailCache {
    /// The token rollups' version `(watermark, generation)` in `client`'s
    /// snapshot (any caller: it reads no tenant's rows), the key of what
    /// [`RollupMemo`] keeps from them.
    pub(crate) async fn token_rollup_version(
        &self,
        client: &impl GenericClient,
    ) -> Result<(i64, i64), ApiError> {
        let now = version(client, TokenTail::TABLE, TokenTail::WATERMARK).await?;
        Ok((now.watermark, now.generation))
    }

    /// The token tail of the window `[from, to)` in `client`'s snapshot (which
    /// must see every tenant), or `None` when the caller must read the raw
    /// tail with SQL (see the module's documentation).
    pub(crate) async fn tokens(
        &self,
        client: &impl GenericClient,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<TokenView>, ApiError> {
        with_tail(&self.tokens, client, |tail| tail.view(from, to)).await
    }

    /// Whether Rust's `str` order is the database's order of the rollups'
    /// text keys (see [`BYTE_ORDER_SQL`]); asked once.
    pub(crate) async fn byte_order(&self, client: &impl GenericClient) -> Result<bool, ApiError> {
        self.byte_order
            .get_or_try_init(|| async {
                let row = client
                    .query_one(BYTE_ORDER_SQL, &[])
                    .await
                    .map_err(ApiError::from_db)?;
                let byte_order: bool = row.try_get(0).map_err(ApiError::from_db)?;
                if !byte_order {
                    tracing::info!(
                        "the database does not sort text by code point: aggregates grouped by \
                         user over every tenant read the raw tail"
                    );
                }
                Ok::<bool, ApiError>(byte_order)
            })
            .await
            .copied()
    }

    /// The first groups per period of the tail of `table` in `client`'s
    /// snapshot (which must see every tenant; see [`keyed`]), with the newest
    /// `seq` they include; `None` as for [`TailCache::tokens`].
    pub(crate) async fn pages(
        &self,
        client: &impl GenericClient,
        table: Grouped,
        query: &PagesQuery<'_>,
    ) -> Result<Option<(i64, Pages)>, ApiError> {
        match table {
            Grouped::Activity => {
                with_tail(&self.activity, client, |tail| {
                    (tail.version.high, tail.keyed.pages(query))
                })
                .await
            }
            Grouped::Tokens => {
                with_tail(&self.tokens, client, |tail| {
                    (tail.version.high, tail.keyed.pages(query))
                })
                .await
            }
        }
    }

    /// The token tail grouped like `token_usage_daily_all` (day, provider,
    /// model, the nine counts, cost as text) for the days in `from..to`
    /// (either end open), as statement parameters (13 arrays), with the newest
    /// `seq` they include; `None` as for [`TailCache::tokens`].
    pub(crate) async fn tokens_all(
        &self,
        client: &impl GenericClient,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Option<(i64, Vec<Box<dyn ToSql + Sync + Send>>)>, ApiError> {
        with_tail(&self.tokens, client, |tail| {
            let mut groups: BTreeMap<(NaiveDate, &str, &str), TokenSums> = BTreeMap::new();
            for ((day, provider, model, _, _), sums) in &tail.sums {
                if from.is_some_and(|f| *day < f) || to.is_some_and(|t| *day >= t) {
                    continue;
                }
                let group = groups
                    .entry((*day, provider.as_str(), model.as_str()))
                    .or_default();
                for (total, n) in group.counts.iter_mut().zip(sums.counts) {
                    *total += n;
                }
                group.cost += sums.cost;
            }
            let mut days = Vec::new();
            let mut providers = Vec::new();
            let mut models = Vec::new();
            let mut counts: [Vec<i64>; TOKEN_COUNTS] = Default::default();
            let mut costs = Vec::new();
            for ((day, provider, model), sums) in groups {
                days.push(day);
                providers.push(provider.to_owned());
                models.push(model.to_owned());
                for (column, n) in counts.iter_mut().zip(sums.counts) {
                    column.push(n);
                }
                costs.push(format_cost(sums.cost));
            }
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
                vec![Box::new(days), Box::new(providers), Box::new(models)];
            for column in counts {
                params.push(Box::new(column));
            }
            params.push(Box::new(costs));
            (tail.version.high, params)
        })
        .await
    }
}
