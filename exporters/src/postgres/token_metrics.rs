//! The write path of token usage reported as OTLP metrics: per-minute totals in
//! `token_metric_minutes`, from data points whose series state lives in
//! `token_metric_series` (migration 0018).
//!
//! One transaction per request: lock the request's series
//! (`pg_advisory_xact_lock` on the first 8 bytes of each key, in key order, so
//! two writers never wait for each other in a cycle), read their last points,
//! turn each point into its increment with
//! [`advance`](tally_model::token_metrics::advance) (cumulative → delta, resets,
//! resends), then upsert the new series states and add the increments to the
//! minutes (in key order too), and commit. Every instance reads and writes the
//! same state under the same locks, so several instances behind a load balancer
//! and a restarted one agree on what each point adds.

use std::collections::{BTreeMap, HashMap};

use chrono::DateTime;
use tally_model::token_metrics::{advance, MetricKind, SeriesState, Step, TokenMetricPoint};
use tokio_postgres::Client;

use super::PgError;

/// What one write stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricWrite {
    /// Points whose increment was added (possibly 0, for a series that did not grow).
    pub stored: u64,
    /// Points already counted (resent or older than their series' last point).
    pub duplicates: u64,
    /// `token_metric_minutes` rows inserted or updated.
    pub minute_rows: u64,
}

/// A minute row's key: tenant, minute (Unix seconds), provider, model,
/// operation, token type.
type MinuteKey<'a> = (&'a str, i64, &'a str, &'a str, &'a str, &'static str);

/// Increments of one minute row: tokens, calls, seconds.
#[derive(Debug, Default, Clone, Copy)]
struct Increment {
    tokens: i64,
    calls: i64,
    seconds: f64,
}

const LOCK_SQL: &str = "SELECT count(*) FROM (SELECT pg_advisory_xact_lock(k) \
     FROM (SELECT DISTINCT k FROM unnest($1::int8[]) AS k ORDER BY k) AS ordered) AS locked";

const READ_SQL: &str = "SELECT s.tenant_id, s.series_key, s.start_ns, s.time_ns, s.count, s.sum \
     FROM token_metric_series AS s \
     JOIN unnest($1::text[], $2::text[]) AS w (tenant_id, series_key) \
       ON s.tenant_id = w.tenant_id AND s.series_key = w.series_key";

const SERIES_SQL: &str = "INSERT INTO token_metric_series \
         (tenant_id, series_key, start_ns, time_ns, count, sum, seen_at) \
     SELECT t, k, s, e, c, v, now() \
     FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::float8[]) \
         AS u (t, k, s, e, c, v) \
     ON CONFLICT (tenant_id, series_key) DO UPDATE SET start_ns = excluded.start_ns, \
         time_ns = excluded.time_ns, count = excluded.count, sum = excluded.sum, \
         seen_at = excluded.seen_at";

const MINUTES_SQL: &str = "INSERT INTO token_metric_minutes AS m \
         (tenant_id, minute, provider, model, operation, token_type, tokens_sum, calls_count, \
          duration_sum_s, updated_at) \
     SELECT t, to_timestamp(mi), p, mo, o, ty, tk, c, d, now() \
     FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::int8[], $8::int8[], $9::float8[]) AS u (t, mi, p, mo, o, ty, tk, c, d) \
     ORDER BY t, mi, p, mo, o, ty \
     ON CONFLICT (tenant_id, minute, provider, model, operation, token_type) DO UPDATE SET \
         tokens_sum = m.tokens_sum + excluded.tokens_sum, \
         calls_count = m.calls_count + excluded.calls_count, \
         duration_sum_s = m.duration_sum_s + excluded.duration_sum_s, \
         updated_at = excluded.updated_at";

/// The advisory lock key of a series: the first 8 bytes of its (hex) key.
fn lock_key(series: &str) -> i64 {
    series
        .get(..16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0) as i64
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Stores `points` (see the module doc) in one transaction on `client`.
pub async fn write_token_metrics(
    client: &mut Client,
    points: &[TokenMetricPoint],
) -> Result<MetricWrite, PgError> {
    let mut report = MetricWrite::default();
    if points.is_empty() {
        return Ok(report);
    }
    // Points of a series in time order, whatever order the request lists them in.
    let mut order: Vec<&TokenMetricPoint> = points.iter().collect();
    order.sort_by(|a, b| {
        (&a.tenant_id, &a.series, a.time_ns).cmp(&(&b.tenant_id, &b.series, b.time_ns))
    });
    let mut tenants: Vec<&str> = Vec::new();
    let mut keys: Vec<&str> = Vec::new();
    for p in &order {
        if tenants.last() != Some(&p.tenant_id.as_str()) || keys.last() != Some(&p.series.as_str())
        {
            tenants.push(&p.tenant_id);
            keys.push(&p.series);
        }
    }
    let locks: Vec<i64> = keys.iter().map(|k| lock_key(k)).collect();

    let tx = client.transaction().await?;
    tx.query_one(LOCK_SQL, &[&locks]).await?;
    let mut states: HashMap<(&str, &str), SeriesState> = HashMap::with_capacity(keys.len());
    let rows = tx.query(READ_SQL, &[&tenants, &keys]).await?;
    // The stored rows, matched back to the request's own strings.
    let mut stored: HashMap<(String, String), SeriesState> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let state = SeriesState {
            start_ns: row.try_get::<_, i64>(2)?.max(0) as u64,
            time_ns: row.try_get::<_, i64>(3)?.max(0) as u64,
            count: row.try_get::<_, i64>(4)?.max(0) as u64,
            sum: row.try_get(5)?,
        };
        stored.insert((row.try_get(0)?, row.try_get(1)?), state);
    }
    for (tenant, key) in tenants.iter().zip(&keys) {
        if let Some(state) = stored.remove(&((*tenant).to_owned(), (*key).to_owned())) {
            states.insert((tenant, key), state);
        }
    }

    let mut minutes: BTreeMap<MinuteKey<'_>, Increment> = BTreeMap::new();
    let mut changed: BTreeMap<(&str, &str), SeriesState> = BTreeMap::new();
    for p in &order {
        let series = (p.tenant_id.as_str(), p.series.as_str());
        match advance(states.get(&series), p) {
            Step::Duplicate => report.duplicates += 1,
            Step::Add { count, sum } => {
                report.stored += 1;
                let state = SeriesState::of(p);
                states.insert(series, state);
                changed.insert(series, state);
                let minute = (p.time_ns / 1_000_000_000) as i64 / 60 * 60;
                let key = (
                    p.tenant_id.as_str(),
                    minute,
                    p.provider.as_str(),
                    p.model.as_str(),
                    p.operation.as_str(),
                    p.kind.as_str(),
                );
                let inc = minutes.entry(key).or_default();
                inc.calls = inc.calls.saturating_add(clamp(count));
                if p.kind == MetricKind::Duration {
                    inc.seconds += sum;
                } else {
                    // Token sums are whole numbers; a cumulative difference of
                    // doubles may be off by a rounding error.
                    inc.tokens = inc.tokens.saturating_add(sum.round() as i64);
                }
            }
        }
    }

    if !changed.is_empty() {
        let mut t = Vec::with_capacity(changed.len());
        let mut k = Vec::with_capacity(changed.len());
        let (mut s, mut e, mut c, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((tenant, key), state) in &changed {
            t.push(*tenant);
            k.push(*key);
            s.push(clamp(state.start_ns));
            e.push(clamp(state.time_ns));
            c.push(clamp(state.count));
            v.push(state.sum);
        }
        tx.execute(SERIES_SQL, &[&t, &k, &s, &e, &c, &v]).await?;
    }
    if !minutes.is_empty() {
        let n = minutes.len();
        let (mut t, mut mi, mut p, mut mo, mut o, mut ty) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut tk, mut c, mut d) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((tenant, minute, provider, model, operation, token_type), inc) in &minutes {
            if DateTime::from_timestamp(*minute, 0).is_none() {
                continue;
            }
            t.push(*tenant);
            mi.push(*minute);
            p.push(*provider);
            mo.push(*model);
            o.push(*operation);
            ty.push(*token_type);
            tk.push(inc.tokens);
            c.push(inc.calls);
            d.push(inc.seconds);
        }
        report.minute_rows = tx
            .execute(MINUTES_SQL, &[&t, &mi, &p, &mo, &o, &ty, &tk, &c, &d])
            .await?;
    }
    tx.commit().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;
    use tally_model::token_metrics::Temporality;

    fn point(
        series: &str,
        kind: MetricKind,
        temporality: Temporality,
        (start, time): (u64, u64),
        count: u64,
        sum: f64,
    ) -> TokenMetricPoint {
        TokenMetricPoint {
            tenant_id: "acme".into(),
            series: series.into(),
            temporality,
            start_ns: start,
            time_ns: time,
            count,
            sum,
            kind,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            operation: "chat".into(),
        }
    }

    const MIN: u64 = 60_000_000_000;
    const T0: u64 = 1_764_979_200 * 1_000_000_000; // 2025-12-06T00:00:00Z

    async fn totals(client: &Client) -> Vec<(String, i64, i64, f64)> {
        client
            .query(
                "SELECT token_type, sum(tokens_sum)::int8, sum(calls_count)::int8, \
                 sum(duration_sum_s) FROM token_metric_minutes GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .expect("totals")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    #[tokio::test]
    async fn cumulative_series_add_their_growth_once_across_writes() {
        let db = TestDatabase::migrated().await;
        let mut client = db.client().await;
        let a = "00000000000000aa00000000000000aa";
        let b = "00000000000000bb00000000000000bb";
        use MetricKind::*;
        use Temporality::*;
        let first = [
            point(a, Input, Cumulative, (T0, T0 + MIN), 2, 200.0),
            point(b, Duration, Delta, (T0, T0 + MIN), 2, 1.5),
        ];
        let report = write_token_metrics(&mut client, &first)
            .await
            .expect("write");
        assert_eq!((report.stored, report.duplicates), (2, 0));
        // The same export again (an SDK retry), then the next cumulative point
        // in a later minute, listed before an older one of the same request.
        let report = write_token_metrics(&mut client, &first)
            .await
            .expect("resend");
        assert_eq!((report.stored, report.duplicates), (0, 2));
        let next = [
            point(a, Input, Cumulative, (T0, T0 + 3 * MIN), 5, 530.0),
            point(a, Input, Cumulative, (T0, T0 + 2 * MIN), 3, 300.0),
            point(b, Duration, Delta, (T0 + MIN, T0 + 2 * MIN), 1, 0.5),
        ];
        let report = write_token_metrics(&mut client, &next).await.expect("next");
        assert_eq!((report.stored, report.duplicates), (3, 0));
        // A restart of the application: a new start time, counting from zero.
        let restarted = [point(
            a,
            Input,
            Cumulative,
            (T0 + 4 * MIN, T0 + 5 * MIN),
            1,
            40.0,
        )];
        write_token_metrics(&mut client, &restarted)
            .await
            .expect("restart");
        assert_eq!(
            totals(&client).await,
            [
                ("".to_owned(), 0, 3, 2.0),
                ("input".to_owned(), 570, 6, 0.0)
            ]
        );
        // Per minute: 200 at +1, 100 at +2, 230 at +3, 40 at +5.
        let per_minute: Vec<i64> = client
            .query(
                "SELECT tokens_sum FROM token_metric_minutes WHERE token_type = 'input' \
                 ORDER BY minute",
                &[],
            )
            .await
            .expect("minutes")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(per_minute, [200, 100, 230, 40]);
    }

    /// Two writers (two instances behind a load balancer) get the same
    /// cumulative exports in different orders, each resending some: the
    /// series lock makes the total exactly the last cumulative value.
    #[tokio::test]
    async fn concurrent_writers_of_one_series_count_its_growth_once() {
        let db = TestDatabase::migrated().await;
        let series = "00000000000000cc00000000000000cc";
        let exports: Vec<TokenMetricPoint> = (1..=40u64)
            .map(|i| {
                point(
                    series,
                    MetricKind::Output,
                    Temporality::Cumulative,
                    (T0, T0 + i * MIN),
                    i,
                    i as f64 * 10.0,
                )
            })
            .collect();
        let mut tasks = Vec::new();
        for order in [false, true] {
            let mut client = db.client().await;
            let mut mine: Vec<TokenMetricPoint> = exports.clone();
            if order {
                mine.reverse();
            }
            tasks.push(tokio::spawn(async move {
                for p in mine {
                    write_token_metrics(&mut client, std::slice::from_ref(&p))
                        .await
                        .expect("write");
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
        let client = db.client().await;
        assert_eq!(totals(&client).await, [("output".to_owned(), 400, 40, 0.0)]);
    }

    /// A smoke figure, not a benchmark: `cargo test -p tally-exporters --lib
    /// token_metrics::tests::write_rate -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn write_rate() {
        let db = TestDatabase::migrated().await;
        let mut client = db.client().await;
        let series: Vec<String> = (0..500).map(|i| format!("{i:032x}")).collect();
        let requests = 100u64;
        let started = std::time::Instant::now();
        for r in 0..requests {
            let points: Vec<TokenMetricPoint> = series
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut p = point(
                        s,
                        MetricKind::Input,
                        Temporality::Cumulative,
                        (T0, T0 + (r + 1) * MIN),
                        r + 1,
                        (r + 1) as f64 * 100.0,
                    );
                    p.model = format!("model-{}", i % 20);
                    p
                })
                .collect();
            write_token_metrics(&mut client, &points)
                .await
                .expect("write");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let points = requests * series.len() as u64;
        println!(
            "{points} points in {requests} requests of {}: {elapsed:.2} s, {:.0} points/s",
            series.len(),
            points as f64 / elapsed
        );
        assert_eq!(totals(&client).await[0].2, points as i64);
    }
}
