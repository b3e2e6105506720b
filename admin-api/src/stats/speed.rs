//! Per-call speed histograms and their percentiles (output tokens per second, time to first token, duration).

use super::*;

/// Which histogram a [`HistogramRow`] is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Histogram {
    /// Call durations (with the calls, failures and speed sums).
    Duration,
    /// Times to first token (only `requests` and `bucket` count).
    FirstToken,
    /// Each call's output tokens per second (only `requests` and `bucket`
    /// count).
    OutputSpeed,
}

/// One row of [`tokens_sql`]'s or [`own_speed_sql`]'s histograms.
#[derive(Debug, Clone)]
pub(crate) struct HistogramRow {
    pub(super) model: String,
    pub(super) kind: Histogram,
    /// -1: no duration (or no time to first token); see [`bucket_ms`].
    pub(super) bucket: i16,
    pub(super) requests: i64,
    pub(super) failed: i64,
    pub(super) rate_output_tokens: i64,
    pub(super) rate_duration_ms: f64,
}

/// Success rate, duration percentiles and output speed of a set of calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Speed {
    pub(super) requests: i64,
    pub(super) failed: i64,
    /// (bucket, calls) of the calls that reported a duration.
    pub(super) histogram: Vec<(i16, i64)>,
    /// (bucket, calls) of the calls that reported a time to first token.
    pub(super) ttft_histogram: Vec<(i16, i64)>,
    /// (bucket, calls) of the calls' output speeds (tokens per second).
    pub(super) rate_histogram: Vec<(i16, i64)>,
    pub(super) rate_output_tokens: i64,
    pub(super) rate_duration_ms: f64,
}

/// The duration a bucket stands for, in ms: the geometric middle of
/// `[2^((b-1)/8), 2^(b/8))` (within 4.5% of any duration in it); 0.5 for
/// bucket 0 (`[0, 1)`).
pub(super) fn bucket_ms(bucket: i16) -> f64 {
    if bucket <= 0 {
        0.5
    } else {
        2f64.powf((f64::from(bucket) - 0.5) / 8.0)
    }
}

impl Speed {
    pub(super) fn add(&mut self, row: &HistogramRow) {
        match row.kind {
            Histogram::FirstToken | Histogram::OutputSpeed => {
                if row.bucket >= 0 {
                    let histogram = if row.kind == Histogram::FirstToken {
                        &mut self.ttft_histogram
                    } else {
                        &mut self.rate_histogram
                    };
                    add_to(histogram, row.bucket, row.requests);
                }
                return;
            }
            Histogram::Duration => {}
        }
        self.requests += row.requests;
        self.failed += row.failed;
        self.rate_output_tokens += row.rate_output_tokens;
        self.rate_duration_ms += row.rate_duration_ms;
        if row.bucket >= 0 {
            add_to(&mut self.histogram, row.bucket, row.requests);
        }
    }

    /// The `p` quantile of the durations (nearest rank: the smallest duration
    /// at or under which at least `p` of the timed calls fall), as its bucket's
    /// middle; `None` without timed calls.
    pub(super) fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.histogram, p)
    }

    /// The `p` quantile of the times to first token, as [`Speed::percentile`].
    pub(super) fn ttft_percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.ttft_histogram, p)
    }

    /// The `p` quantile of the calls' output tokens per second (the buckets
    /// read in tokens per second), as [`Speed::percentile`].
    pub(super) fn rate_percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.rate_histogram, p)
    }
}

pub(super) fn add_to(histogram: &mut Vec<(i16, i64)>, bucket: i16, calls: i64) {
    match histogram.iter_mut().find(|(b, _)| *b == bucket) {
        Some((_, n)) => *n += calls,
        None => histogram.push((bucket, calls)),
    }
}

/// The `p` quantile (nearest rank) of a histogram of (bucket, calls), as its
/// bucket's middle; `None` when it holds no call.
pub(super) fn percentile(histogram: &[(i16, i64)], p: f64) -> Option<f64> {
    let mut histogram = histogram.to_vec();
    histogram.sort_unstable();
    let timed: i64 = histogram.iter().map(|(_, n)| n).sum();
    if timed <= 0 {
        return None;
    }
    let rank = (p * timed as f64).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (bucket, n) in histogram {
        seen += n;
        if seen >= rank {
            return Some(round3(bucket_ms(bucket)));
        }
    }
    None
}

impl Speed {
    pub(super) fn insert_into(&self, into: &mut Map<String, Value>) {
        let number = |v: Option<f64>| {
            v.and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number)
        };
        into.insert("failed_requests".to_owned(), Value::from(self.failed));
        into.insert(
            "success_rate".to_owned(),
            number(
                (self.requests > 0)
                    .then(|| (self.requests - self.failed) as f64 / self.requests as f64),
            ),
        );
        into.insert("duration_p50_ms".to_owned(), number(self.percentile(0.5)));
        into.insert("duration_p95_ms".to_owned(), number(self.percentile(0.95)));
        into.insert(
            "time_to_first_token_p50_ms".to_owned(),
            number(self.ttft_percentile(0.5)),
        );
        into.insert(
            "time_to_first_token_p95_ms".to_owned(),
            number(self.ttft_percentile(0.95)),
        );
        into.insert(
            "output_tokens_per_second".to_owned(),
            number((self.rate_duration_ms > 0.0).then(|| {
                round3(self.rate_output_tokens as f64 / (self.rate_duration_ms / 1000.0))
            })),
        );
        into.insert(
            "output_tokens_per_second_p50".to_owned(),
            number(self.rate_percentile(0.5)),
        );
        into.insert(
            "output_tokens_per_second_p95".to_owned(),
            number(self.rate_percentile(0.95)),
        );
    }
}

pub(super) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The speed of every call, and per model ('' = none).
pub(super) fn speeds(rows: &[HistogramRow]) -> (Speed, std::collections::HashMap<String, Speed>) {
    let mut overall = Speed::default();
    let mut per_model: std::collections::HashMap<String, Speed> = Default::default();
    for row in rows {
        overall.add(row);
        per_model.entry(row.model.clone()).or_default().add(row);
    }
    (overall, per_model)
}
