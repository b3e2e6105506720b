use super::page::periods;
use super::*;

fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (n.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn sql_binds_filters_and_orders_by_canonical_keys() {
    let caller = Caller::anonymous();
    let p = pairs(
        "grain=week&group_by=model,tenant&tenant=x'--&from=2026-11-01&to=2026-11-30T12:00:00Z",
    );
    let q = TOKENS.parse(&p, &caller).unwrap();
    assert_eq!(q.to, NaiveDate::from_ymd_opt(2026, 12, 1));
    let (sql, params) = TOKENS.to_sql(&q, true, None);
    assert!(!sql.contains("x'"), "{sql}");
    assert_eq!(params.len(), 4);
    // The rollup plus the raw rows above its watermark, in the window.
    assert!(
        sql.contains("FROM token_usage_daily_tenant UNION ALL SELECT "),
        "{sql}"
    );
    assert!(
        sql.contains(
            " FROM token_usage WHERE seq > coalesce((SELECT last_seq FROM rollup_watermarks \
             WHERE name = 'token_usage_daily'), 0) \
             AND ts >= coalesce((SELECT min(day) FROM tally_tail_days \
             WHERE raw_table = 'token_usage' AND max_seq > coalesce((SELECT last_seq \
             FROM rollup_watermarks WHERE name = 'token_usage_daily'), 0))::timestamp \
             AT TIME ZONE 'UTC', 'infinity'::timestamptz) \
             AND ts >= ($2)::date::timestamp AT TIME ZONE 'UTC' \
             AND ts < ($3)::date::timestamp AT TIME ZONE 'UTC' GROUP BY 1, 2, 3, 4) \
             AS live WHERE tenant_id = $1"
        ),
        "{sql}"
    );
    assert!(sql.contains("GROUP BY 1, 2, 3)"), "{sql}");
    // Bound to a snapshot: constants the planner prunes partitions with.
    let day = NaiveDate::from_ymd_opt(2026, 11, 28);
    let bound = crate::live::Snapshot::of((5, None), (1000, day)).bind(&sql);
    assert!(!bound.contains("rollup_watermarks"), "{bound}");
    assert!(
        bound.contains(
            " FROM token_usage WHERE seq > 1000 \
             AND ts >= '2026-11-28 00:00:00+00'::timestamptz AND ts >= ($2)"
        ),
        "{bound}"
    );
    assert!(
        sql.ends_with("ORDER BY period, tenant_id, model LIMIT $4"),
        "{sql}"
    );
    assert!(sql.contains("date_trunc('week', day::timestamp)::date AS period"));
}

#[test]
fn the_coarsest_table_that_keeps_the_keys_is_chosen() {
    let caller = Caller::anonymous();
    for (query, all, table) in [
        ("group_by=model", true, "token_usage_daily_all"),
        ("group_by=model", false, "token_usage_daily_tenant"),
        (
            "group_by=provider&tenant=a",
            true,
            "token_usage_daily_tenant",
        ),
        ("group_by=tenant", true, "token_usage_daily_tenant"),
        ("model=m", true, "token_usage_daily_all"),
        ("user=u", true, "token_usage_daily"),
        ("group_by=user", true, "token_usage_daily"),
    ] {
        let q = TOKENS.parse(&pairs(query), &caller).unwrap();
        assert_eq!(TOKENS.table(&q, all).name, table, "{query} {all}");
    }
    for (query, all, table) in [
        ("group_by=action", true, "activity_daily_all"),
        (
            "group_by=action,outcome&tenant=a",
            true,
            "activity_daily_tenant",
        ),
        ("group_by=user&tenant=a", false, "activity_daily"),
    ] {
        let q = ACTIVITY.parse(&pairs(query), &caller).unwrap();
        assert_eq!(ACTIVITY.table(&q, all).name, table, "{query} {all}");
    }
}

#[test]
fn grouping_by_user_goes_period_by_period() {
    let caller = Caller::anonymous();
    for (query, by_period) in [
        ("grain=day&group_by=user", true),
        ("grain=day&group_by=user&tenant=t", false),
        ("grain=week&group_by=user&tenant=t", true),
        ("grain=month&group_by=model", false),
    ] {
        let q = TOKENS.parse(&pairs(query), &caller).unwrap();
        assert_eq!(q.by_period(), by_period, "{query}");
    }
    let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    assert_eq!(
        periods(Grain::Month, d("2026-10-30"), d("2026-11-30"), None),
        vec![
            (d("2026-10-01"), d("2026-10-30"), d("2026-11-01")),
            (d("2026-11-01"), d("2026-11-01"), d("2026-11-30"))
        ]
    );
    assert_eq!(
        periods(
            Grain::Week,
            d("2026-10-31"),
            d("2026-11-03"),
            Some(d("2026-11-02"))
        ),
        vec![(d("2026-11-02"), d("2026-11-02"), d("2026-11-03"))]
    );
    let cursor = AggregateCursor {
        v: 1,
        p: d("2026-11-01"),
        k: vec!["u".into(), "m".into()],
    };
    let p = pairs(&format!(
        "grain=month&group_by=user,model&tenant=t&from=2026-10-30&to=2026-11-30&cursor={}",
        cursor.encode()
    ));
    let q = TOKENS.parse(&p, &caller).unwrap();
    let periods = periods(q.grain, d("2026-10-30"), d("2026-11-30"), Some(cursor.p));
    assert_eq!(periods.len(), 1);
    let (sql, params) = TOKENS.period_sql(&q, &TOKENS.tables[2], periods[0], 11);
    assert_eq!(params.len(), 4, "{sql}");
    assert!(
        sql.starts_with(
            "SELECT '2026-11-01'::date AS period, user_id, model, sum(requests)::int8 AS requests, "
        ),
        "{sql}"
    );
    assert!(
        sql.ends_with(
            " AND ts >= ('2026-11-01')::date::timestamp AT TIME ZONE 'UTC' \
             AND ts < ('2026-11-30')::date::timestamp AT TIME ZONE 'UTC' \
             GROUP BY 1, 2, 3, 4, 5) AS live \
             WHERE tenant_id = $1 AND day >= '2026-11-01'::date \
             AND day < '2026-11-30'::date AND (user_id, model) > ($2, $3) \
             GROUP BY user_id, model ORDER BY user_id, model LIMIT $4"
        ),
        "{sql}"
    );
    // A one-day period is an equality, so the day's rows come in user order.
    let day = (d("2026-11-05"), d("2026-11-05"), d("2026-11-06"));
    let (sql, _) = TOKENS.period_sql(&q, &TOKENS.tables[2], day, 11);
    assert!(
        sql.contains("AS live WHERE tenant_id = $1 AND day = '2026-11-05'::date GROUP BY"),
        "{sql}"
    );
}

#[test]
fn cursors_round_trip_and_check_the_keys() {
    let c = AggregateCursor {
        v: 1,
        p: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
        k: vec!["a".into(), "".into()],
    };
    let text = c.encode();
    let back = AggregateCursor::decode(&text, 2).unwrap();
    assert_eq!((back.p, back.k), (c.p, c.k));
    assert!(AggregateCursor::decode(&text, 1).is_err());
    assert!(AggregateCursor::decode("!!", 0).is_err());
}

#[test]
fn bad_parameters_are_named() {
    let caller = Caller::anonymous();
    for (query, name) in [
        ("grain=year", "grain"),
        ("group_by=action", "group_by"),
        ("group_by=user,", "group_by"),
        ("limit=10001", "limit"),
        ("from=yesterday", "from"),
        ("from=2026-11-02&to=2026-11-01", "from"),
        ("models=x", "models"),
    ] {
        match TOKENS.parse(&pairs(query), &caller) {
            Err(ApiError::InvalidParameter { parameter, .. }) => {
                assert_eq!(parameter, name, "{query}")
            }
            Err(other) => panic!("{query}: {other:?}"),
            Ok(_) => panic!("{query} accepted"),
        }
    }
    assert!(ACTIVITY.parse(&pairs("outcome=meh"), &caller).is_err());
    assert!(ACTIVITY
        .parse(&pairs("group_by=action,outcome"), &caller)
        .is_ok());
}

#[test]
fn token_measures_are_the_rollups_measures() {
    let columns: Vec<&str> = TOKENS.measures.iter().map(|m| m.column).collect();
    assert_eq!(columns, tally_model::tokens::TOKEN_MEASURES);
}

#[test]
fn by_user_periods_with_whole_weeks_read_the_weekly_rollup() {
    let caller = Caller::anonymous();
    let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    // November 2026: Sun 1st (edge), weeks from Mon 2nd to Mon 30th, Mon 30th (edge).
    let month = (d("2026-11-01"), d("2026-11-01"), d("2026-12-01"));
    for (spec, query, weekly) in [
        (&TOKENS, "grain=month&group_by=user", true),
        (&TOKENS, "grain=month&group_by=user&tenant=t&user=u", true),
        (&TOKENS, "grain=month&group_by=user&model=m", false),
        (&TOKENS, "grain=month&group_by=user,model", false),
        (&TOKENS, "grain=month&group_by=tenant,user", false),
        (&ACTIVITY, "grain=month&group_by=user&tenant=t", true),
        (
            &ACTIVITY,
            "grain=month&group_by=user&outcome=failure",
            false,
        ),
    ] {
        let q = spec.parse(&pairs(query), &caller).unwrap();
        let table = spec.table(&q, true);
        let (sql, _) = spec.period_sql(&q, table, month, 11);
        assert_eq!(sql.contains(spec.user_weekly), weekly, "{query}: {sql}");
        if weekly {
            for week in ["2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"] {
                assert!(
                    sql.contains(&format!("WHERE week = '{week}'::date")),
                    "{sql}"
                );
            }
            assert_eq!(sql.matches(" WHERE week = ").count(), 4, "{sql}");
            assert!(sql.contains("WHERE day = '2026-11-01'::date"), "{sql}");
            assert!(sql.contains("WHERE day = '2026-11-30'::date"), "{sql}");
            assert_eq!(sql.matches(" WHERE day = ").count(), 2, "{sql}");
            assert!(
                sql.contains("GROUP BY user_id ORDER BY user_id LIMIT $"),
                "{sql}"
            );
        }
    }
    let q = TOKENS
        .parse(&pairs("grain=week&group_by=user"), &caller)
        .unwrap();
    let table = TOKENS.table(&q, true);
    let user_weeks = |first: &str, end: &str| TOKENS.user_weeks(&q, table, (d(first), d(end)));
    // A whole week: the weekly rows alone; clipped by the window: none.
    assert_eq!(
        user_weeks("2026-11-02", "2026-11-09"),
        Some((d("2026-11-02"), d("2026-11-09")))
    );
    assert_eq!(user_weeks("2026-11-03", "2026-11-09"), None);
    assert_eq!(user_weeks("2026-11-02", "2026-11-08"), None);
    assert_eq!(user_weeks("2026-11-05", "2026-11-06"), None);
    assert_eq!(
        user_weeks("2026-10-01", "2026-11-01"),
        Some((d("2026-10-05"), d("2026-10-26")))
    );
    let (sql, _) = TOKENS.period_sql(
        &q,
        table,
        (d("2026-11-02"), d("2026-11-02"), d("2026-11-09")),
        5,
    );
    assert!(!sql.contains("token_usage_daily "), "{sql}");
    assert!(sql.contains("FROM token_usage_user_weekly"), "{sql}");
}
