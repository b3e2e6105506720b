use super::*;

fn row(model: &str, bucket: i16, requests: i64, failed: i64) -> HistogramRow {
    HistogramRow {
        model: model.to_owned(),
        kind: Histogram::Duration,
        bucket,
        requests,
        failed,
        rate_output_tokens: 0,
        rate_duration_ms: 0.0,
    }
}

/// Each section reads its raw table's unfolded tail once per request,
/// whoever asks (every tenant, one tenant, one user).
#[test]
fn each_section_reads_its_tail_once() {
    let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    for (tenant, user) in [(None, None), (Some("t"), None), (Some("t"), Some("u"))] {
        let (w, params) = window(tenant, user, day, day);
        let activity = activity_sql(tenant, user, w, false);
        let tokens = tokens_sql(tenant, user, w, false, true, SpeedRows::RollupsAndTail);
        if std::env::var_os("TALLY_PRINT_SQL").is_some() {
            println!(
                "-- {tenant:?} {user:?} ({} parameters)\n{activity};\n{tokens};",
                params.len()
            );
        }
        assert_eq!(
            activity.matches("FROM activity_events WHERE seq >").count(),
            1,
            "{activity}"
        );
        assert_eq!(activity.matches("token_usage").count(), 0, "{activity}");
        assert_eq!(
            tokens.matches("FROM token_usage WHERE seq >").count(),
            1,
            "{tokens}"
        );
        assert_eq!(
            tokens.contains("token_usage_latency"),
            user.is_none(),
            "{tokens}"
        );
        assert_eq!(
            tokens.contains("token_usage_ttft_daily"),
            user.is_none(),
            "{tokens}"
        );
        assert_eq!(
            tokens.contains("token_usage_speed_daily"),
            user.is_none(),
            "{tokens}"
        );
        // Every placeholder is bound, and no other.
        for (i, _) in params.iter().enumerate() {
            let placeholder = format!("${}", i + 1);
            assert!(activity.contains(&placeholder) && tokens.contains(&placeholder));
        }
        let next = format!("${}", params.len() + 1);
        assert!(!activity.contains(&next) && !tokens.contains(&next));
    }
}

/// With the in-memory tail, no statement reads a raw table, and the
/// parameters are exactly the window's and the view's.
#[test]
fn cached_sections_read_no_raw_table() {
    let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let (w, params) = window(None, None, day, day);
    let activity = activity_sql(None, None, w, true);
    let tokens = tokens_sql(None, None, w, true, true, SpeedRows::RollupsAndTail);
    for sql in [&activity, &tokens] {
        assert!(!sql.contains("FROM activity_events"), "{sql}");
        assert!(!sql.contains("FROM token_usage "), "{sql}");
        assert!(!sql.contains("rollup_watermarks"), "{sql}");
    }
    let activity_last = params.len() + 6;
    assert!(
        activity.contains(&format!("${activity_last}")),
        "{activity}"
    );
    assert!(!activity.contains(&format!("${}", activity_last + 1)));
    let tokens_last = params.len() + crate::tailcache::TokenView::PARAMETERS;
    assert!(tokens.contains(&format!("${tokens_last}:")), "{tokens}");
    assert!(!tokens.contains(&format!("${}", tokens_last + 1)));
    // One tenant or one user: never the cached form.
    assert_eq!(
        activity_sql(Some("t"), None, w, true),
        activity_sql(Some("t"), None, w, false)
    );
    assert_eq!(
        tokens_sql(
            Some("t"),
            Some("u"),
            w,
            true,
            true,
            SpeedRows::RollupsAndTail
        ),
        tokens_sql(
            Some("t"),
            Some("u"),
            w,
            false,
            true,
            SpeedRows::RollupsAndTail
        )
    );
}

#[test]
fn percentiles_are_nearest_rank_over_the_buckets() {
    // 100 ms is bucket floor(8 * log2(100)) + 1 = 54.
    let (overall, per_model) = speeds(&[
        row("a", 54, 90, 0),
        row("a", 80, 10, 5),
        row("a", -1, 20, 5),
        row("b", 0, 1, 0),
    ]);
    let a = &per_model["a"];
    let p50 = a.percentile(0.5).unwrap();
    assert!((p50 - 100.0).abs() / 100.0 < 0.045, "{p50}");
    // The 95th of 100 timed calls is in the slow bucket.
    let p95 = a.percentile(0.95).unwrap();
    assert!((p95 - 2f64.powf(79.5 / 8.0)).abs() < 0.01, "{p95}");
    assert_eq!(per_model["b"].percentile(0.5), Some(0.5));
    assert_eq!(Speed::default().percentile(0.5), None);
    assert_eq!(overall.requests, 121);
    let mut item = Map::new();
    a.insert_into(&mut item);
    assert_eq!(item["failed_requests"], 10);
    assert_eq!(item["success_rate"].as_f64(), Some(110.0 / 120.0));
    assert_eq!(item["output_tokens_per_second"], Value::Null);
}

#[test]
fn output_speed_is_tokens_over_the_timed_seconds() {
    let mut speed = Speed::default();
    speed.add(&HistogramRow {
        model: String::new(),
        kind: Histogram::Duration,
        bucket: 70,
        requests: 2,
        failed: 0,
        rate_output_tokens: 300,
        rate_duration_ms: 1500.0,
    });
    let mut item = Map::new();
    speed.insert_into(&mut item);
    assert_eq!(item["output_tokens_per_second"].as_f64(), Some(200.0));
    assert_eq!(item["success_rate"].as_f64(), Some(1.0));
    // No speed histogram row: no per-call percentiles.
    assert_eq!(item["output_tokens_per_second_p50"], Value::Null);
}

/// The per-call speed percentiles come from the speed histogram only, and
/// its rows change neither the calls nor the durations.
#[test]
fn per_call_speed_percentiles_read_the_speed_buckets() {
    let speed_row = |model: &str, bucket: i16, requests: i64| HistogramRow {
        model: model.to_owned(),
        kind: Histogram::OutputSpeed,
        bucket,
        requests,
        failed: 0,
        rate_output_tokens: 0,
        rate_duration_ms: 0.0,
    };
    // 50 tokens/s is bucket floor(8 * log2(50)) + 1 = 46; 200 tokens/s 62.
    let (overall, per_model) = speeds(&[
        row("a", 54, 10, 1),
        speed_row("a", 46, 6),
        speed_row("a", 62, 4),
        speed_row("b", 62, 10),
        speed_row("b", -1, 3),
    ]);
    assert_eq!(overall.requests, 10);
    assert_eq!(overall.failed, 1);
    let p50 = per_model["a"].rate_percentile(0.5).expect("p50");
    assert!((p50 - 50.0).abs() / 50.0 < 0.045, "{p50}");
    let p95 = per_model["a"].rate_percentile(0.95).expect("p95");
    assert!((p95 - 200.0).abs() / 200.0 < 0.045, "{p95}");
    // Overall: 14 of 20 calls at ~200 tokens/s.
    let mut item = Map::new();
    overall.insert_into(&mut item);
    let p50 = item["output_tokens_per_second_p50"].as_f64().expect("p50");
    assert!((p50 - 200.0).abs() / 200.0 < 0.045, "{item:?}");
    assert_eq!(per_model["b"].requests, 0);
    assert_eq!(per_model["a"].percentile(0.5), overall.percentile(0.5));
}

#[test]
fn whole_weeks_come_from_the_weekly_histograms() {
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 11, d).expect("day");
    // 2026-11-09 and 2026-11-16 are Mondays.
    assert!(whole_weeks(day(9), day(16)));
    assert!(whole_weeks(day(8), day(17)));
    assert!(!whole_weeks(day(10), day(17)));
    assert!(!whole_weeks(day(9), day(15)));
    assert!(!whole_weeks(day(9), day(9)));
    let w = " WHERE day >= $1 AND day < $2";
    let weekly = tokens_sql(None, None, w, false, true, SpeedRows::RollupsAndTail);
    assert!(weekly.contains("token_usage_latency_weekly_all"));
    assert!(weekly.contains("token_usage_speed_weekly_all"));
    for sql in [
        tokens_sql(None, None, w, false, false, SpeedRows::RollupsAndTail),
        tokens_sql(
            Some("t"),
            None,
            " WHERE day >= $1 AND day < $2 AND tenant_id = $3",
            false,
            true,
            SpeedRows::RollupsAndTail,
        ),
    ] {
        assert!(!sql.contains("weekly"), "{sql}");
    }
}

/// Over every tenant with the cached tail, the statement leaves the speed
/// rows to the memoized rollup part: it reads no histogram rollup, and the
/// rollup part reads no tail, with the columns the section reads by name.
#[test]
fn the_memoized_histograms_are_the_rollups_alone() {
    let w = " WHERE day >= $1 AND day < $2";
    let sums_only = tokens_sql(None, None, w, true, true, SpeedRows::None);
    let full = tokens_sql(None, None, w, true, true, SpeedRows::RollupsAndTail);
    for table in ["latency", "ttft", "speed"] {
        assert!(
            !sums_only.contains(&format!("token_usage_{table}_")),
            "{sums_only}"
        );
        assert!(
            full.contains(&format!("token_usage_{table}_daily_all")),
            "{full}"
        );
    }
    let tenant_w = " WHERE day >= $1 AND day < $2 AND tenant_id = $3";
    let tail_only = tokens_sql(Some("t"), None, tenant_w, false, true, SpeedRows::TailOnly);
    assert!(!tail_only.contains("token_usage_latency_"), "{tail_only}");
    assert!(tail_only.contains("FROM tail WHERE gs = "), "{tail_only}");
    let tenant_rollup = rollup_histograms_sql(true, true);
    assert!(
        tenant_rollup.contains("token_usage_latency_daily WHERE"),
        "{tenant_rollup}"
    );
    assert!(tenant_rollup.contains("tenant_id = $3"), "{tenant_rollup}");
    assert!(!tenant_rollup.contains("_all"), "{tenant_rollup}");
    for weeks in [true, false] {
        let rollup = rollup_histograms_sql(false, weeks);
        assert!(!rollup.contains("FROM tail"), "{rollup}");
        assert_eq!(rollup.contains("weekly_all"), weeks, "{rollup}");
        for column in [
            "part",
            "key",
            "bucket",
            "requests",
            "failed",
            "rate_output_tokens",
        ] {
            assert!(rollup.starts_with("SELECT part, key, bucket, requests, failed"));
            assert!(rollup.contains(column), "{rollup}");
        }
    }
}
