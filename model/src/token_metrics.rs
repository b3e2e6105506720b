//! Token usage reported as OpenTelemetry metrics (`gen_ai.client.token.usage`,
//! `gen_ai.client.operation.duration`): the data points the pipeline stores as
//! per-minute totals (`token_metric_minutes`), and the rule that turns a
//! series' points into increments whatever their temporality ([`advance`]).
//!
//! A *series* is one metric stream: the metric name with its resource, scope
//! and point attributes. Each stored series keeps its last point
//! ([`SeriesState`], table `token_metric_series`), so that a cumulative point
//! adds only what grew since the previous one, and a point sent twice (an SDK
//! retry) adds nothing the second time.

/// What a data point measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricKind {
    /// `gen_ai.client.token.usage` with `gen_ai.token.type` = `input`.
    Input,
    /// … `output`.
    Output,
    /// … cached input read (`cache_read`, `cached_input`, …).
    CacheRead,
    /// … cache creation (`cache_write`, `cache_creation`, …).
    CacheWrite,
    /// … reasoning / thinking tokens.
    Reasoning,
    /// `gen_ai.client.operation.duration` (seconds).
    Duration,
}

impl MetricKind {
    /// The `token_metric_minutes.token_type` value (`''` for durations).
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Input => "input",
            MetricKind::Output => "output",
            MetricKind::CacheRead => "cache_read",
            MetricKind::CacheWrite => "cache_write",
            MetricKind::Reasoning => "reasoning",
            MetricKind::Duration => "",
        }
    }

    /// The kind of a `gen_ai.token.type` value, with the spellings
    /// instrumentations use for the cached and reasoning variants
    /// (case-insensitive); `None` for anything else.
    pub fn from_token_type(value: &str) -> Option<MetricKind> {
        let lower = value.trim().to_ascii_lowercase();
        Some(match lower.as_str() {
            "input" | "prompt" => MetricKind::Input,
            "output" | "completion" => MetricKind::Output,
            "cache_read" | "cached_input" | "input_cached" | "cached" | "cache_read_input"
            | "cached_read" => MetricKind::CacheRead,
            "cache_write" | "cache_creation" | "cache_creation_input" | "cached_write" => {
                MetricKind::CacheWrite
            }
            "reasoning" | "thinking" | "reasoning_output" => MetricKind::Reasoning,
            _ => return None,
        })
    }
}

/// How a point's count and sum relate to the previous point of its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Totals of `start..time` only.
    Delta,
    /// Totals since `start`.
    Cumulative,
}

/// One histogram data point of a token metric, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMetricPoint {
    /// The tenant (`''` when none).
    pub tenant_id: String,
    /// The series: a hash of the metric name, resource, scope and point
    /// attributes (hex), the same on every instance.
    pub series: String,
    /// Cumulative or delta.
    pub temporality: Temporality,
    /// `start_time_unix_nano` (0 when unknown).
    pub start_ns: u64,
    /// `time_unix_nano` (never 0).
    pub time_ns: u64,
    /// Observations (calls) in the point.
    pub count: u64,
    /// Sum of the observations: tokens, or seconds for [`MetricKind::Duration`].
    pub sum: f64,
    /// Which histogram the point is of.
    pub kind: MetricKind,
    /// `gen_ai.provider.name` / `gen_ai.system` (`''` when none).
    pub provider: String,
    /// Response model, else request model (`''` when none).
    pub model: String,
    /// `gen_ai.operation.name` (`''` when none).
    pub operation: String,
}

/// The last point stored of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesState {
    /// The start of the point's interval (ns since the Unix epoch).
    pub start_ns: u64,
    /// The end of the point's interval (ns since the Unix epoch).
    pub time_ns: u64,
    /// Observations in the point.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
}

/// What a point adds to the totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Add `count` observations summing to `sum`; the series' state becomes the point.
    Add {
        /// Observations added.
        count: u64,
        /// Their sum.
        sum: f64,
    },
    /// Nothing: the point is already counted (resent, or older than the last
    /// point seen); the state stays.
    Duplicate,
}

/// The increment `point` brings to its series, given the series' last stored
/// point `previous`:
///
/// * **delta**: the point itself, unless it ends at or before the last point
///   seen (a resent export: already counted);
/// * **cumulative**, first point of the series: everything since its start;
/// * **cumulative**, same start as before: the growth since the previous
///   point; a point not later than the previous one is a resend (nothing); a
///   count that went down is a reset without a new start time (the whole point);
/// * **cumulative**, new start time after the previous point's: a restart of
///   the process or of its SDK (the whole point); a start before the stored
///   one is a point of an older incarnation (nothing: its growth was counted).
pub fn advance(previous: Option<&SeriesState>, point: &TokenMetricPoint) -> Step {
    let whole = Step::Add {
        count: point.count,
        sum: point.sum,
    };
    let Some(prev) = previous else {
        return whole;
    };
    if point.time_ns <= prev.time_ns {
        return Step::Duplicate;
    }
    match point.temporality {
        Temporality::Delta => whole,
        Temporality::Cumulative => {
            if point.start_ns != prev.start_ns {
                if point.start_ns < prev.start_ns {
                    Step::Duplicate
                } else {
                    whole
                }
            } else if point.count < prev.count || point.sum < prev.sum {
                whole
            } else {
                Step::Add {
                    count: point.count - prev.count,
                    sum: point.sum - prev.sum,
                }
            }
        }
    }
}

impl SeriesState {
    /// The state after storing `point`.
    pub fn of(point: &TokenMetricPoint) -> SeriesState {
        SeriesState {
            start_ns: point.start_ns,
            time_ns: point.time_ns,
            count: point.count,
            sum: point.sum,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(
        temporality: Temporality,
        start: u64,
        time: u64,
        count: u64,
        sum: f64,
    ) -> TokenMetricPoint {
        TokenMetricPoint {
            tenant_id: String::new(),
            series: "s".into(),
            temporality,
            start_ns: start,
            time_ns: time,
            count,
            sum,
            kind: MetricKind::Input,
            provider: String::new(),
            model: "m".into(),
            operation: String::new(),
        }
    }

    /// Runs points through [`advance`] like the writer does and sums what they add.
    fn total(points: &[TokenMetricPoint]) -> (u64, f64, usize) {
        let mut state: Option<SeriesState> = None;
        let (mut count, mut sum, mut duplicates) = (0, 0.0, 0);
        for p in points {
            match advance(state.as_ref(), p) {
                Step::Add { count: c, sum: s } => {
                    count += c;
                    sum += s;
                    state = Some(SeriesState::of(p));
                }
                Step::Duplicate => duplicates += 1,
            }
        }
        (count, sum, duplicates)
    }

    #[test]
    fn cumulative_points_become_deltas() {
        use Temporality::Cumulative as C;
        let points = [
            point(C, 100, 200, 3, 30.0),
            point(C, 100, 300, 5, 55.0),
            point(C, 100, 400, 5, 55.0),
            point(C, 100, 500, 9, 100.0),
        ];
        assert_eq!(total(&points), (9, 100.0, 0));
        let mut state = None;
        let steps: Vec<Step> = points
            .iter()
            .map(|p| {
                let step = advance(state.as_ref(), p);
                state = Some(SeriesState::of(p));
                step
            })
            .collect();
        assert_eq!(
            steps,
            [
                Step::Add {
                    count: 3,
                    sum: 30.0
                },
                Step::Add {
                    count: 2,
                    sum: 25.0
                },
                Step::Add { count: 0, sum: 0.0 },
                Step::Add {
                    count: 4,
                    sum: 45.0
                },
            ]
        );
    }

    #[test]
    fn a_resent_cumulative_point_adds_nothing() {
        use Temporality::Cumulative as C;
        let points = [
            point(C, 100, 200, 3, 30.0),
            point(C, 100, 200, 3, 30.0),
            point(C, 100, 300, 4, 41.0),
            // An older point arriving late: its growth is in the newer one.
            point(C, 100, 250, 3, 35.0),
        ];
        assert_eq!(total(&points), (4, 41.0, 2));
    }

    #[test]
    fn a_new_start_time_or_a_smaller_count_is_a_reset() {
        use Temporality::Cumulative as C;
        // Process restarted: new start, counting from zero again.
        let restarted = [
            point(C, 100, 200, 10, 100.0),
            point(C, 900, 1000, 2, 20.0),
            point(C, 900, 1100, 3, 26.0),
        ];
        assert_eq!(total(&restarted), (13, 126.0, 0));
        // Same start, but the count went down (an SDK that lost its state).
        let went_down = [point(C, 100, 200, 10, 100.0), point(C, 100, 300, 4, 40.0)];
        assert_eq!(total(&went_down), (14, 140.0, 0));
        // A point of the older incarnation after the restart: already counted.
        let late_old = [
            point(C, 100, 200, 10, 100.0),
            point(C, 900, 1000, 2, 20.0),
            point(C, 100, 1050, 12, 120.0),
        ];
        assert_eq!(total(&late_old), (12, 120.0, 1));
    }

    #[test]
    fn delta_points_add_up_and_resends_are_dropped() {
        use Temporality::Delta as D;
        let points = [
            point(D, 100, 200, 3, 30.0),
            point(D, 200, 300, 2, 25.0),
            point(D, 200, 300, 2, 25.0),
            point(D, 300, 400, 1, 7.0),
        ];
        assert_eq!(total(&points), (6, 62.0, 1));
    }

    #[test]
    fn token_types_and_their_variants() {
        assert_eq!(
            MetricKind::from_token_type("input"),
            Some(MetricKind::Input)
        );
        assert_eq!(
            MetricKind::from_token_type("Output"),
            Some(MetricKind::Output)
        );
        assert_eq!(
            MetricKind::from_token_type("cached_input"),
            Some(MetricKind::CacheRead)
        );
        assert_eq!(
            MetricKind::from_token_type("cache_creation"),
            Some(MetricKind::CacheWrite)
        );
        assert_eq!(
            MetricKind::from_token_type("reasoning"),
            Some(MetricKind::Reasoning)
        );
        assert_eq!(MetricKind::from_token_type("bananas"), None);
        assert_eq!(MetricKind::Duration.as_str(), "");
    }
}
