use super::*;

/// The indexed tail sums count, for every scope, the groups
/// `applies_to` counts, from the period's first day on.
#[test]
fn tail_sums_count_what_applies_to_counts() {
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 12, d).unwrap_or_default();
    let mut groups = Vec::new();
    for i in 0..60u32 {
        groups.push(TailGroup {
            day: day(1 + i % 3),
            tenant: format!("t{}", i % 4),
            user: if i % 5 == 0 {
                String::new()
            } else {
                format!("u{}", i % 7)
            },
            cost: f64::from(i) * 0.25,
            tokens: f64::from(i * 10),
        });
    }
    let brute = |budget: &BudgetConfig, first_day: NaiveDate| {
        groups
            .iter()
            .filter(|g| g.day >= first_day && budget.applies_to(Some(&g.tenant), Some(&g.user)))
            .fold((0.0, 0.0), |(c, t), g| (c + g.cost, t + g.tokens))
    };
    let copies: Vec<TailGroup> = groups
        .iter()
        .map(|g| TailGroup {
            day: g.day,
            tenant: g.tenant.clone(),
            user: g.user.clone(),
            cost: g.cost,
            tokens: g.tokens,
        })
        .collect();
    let sums = TailSums::new(copies);
    let scopes = [None, Some("t1"), Some("t9")];
    let users = [None, Some("u3"), Some(""), Some("nobody")];
    let mut nonzero = 0;
    for tenant in scopes {
        for user in users {
            for first in [day(1), day(2), day(3), day(4)] {
                let budget = BudgetConfig {
                    name: "b".into(),
                    tenant: tenant.map(str::to_owned),
                    user: user.map(str::to_owned),
                    period: BudgetPeriod::Month,
                    limit_usd: Some(1.0),
                    limit_tokens: None,
                    thresholds: vec![1.0],
                };
                let (want_cost, want_tokens) = brute(&budget, first);
                let (cost, tokens) = sums.of(&budget, first);
                assert!(
                    (cost - want_cost).abs() < 1e-9,
                    "{tenant:?} {user:?} {first}"
                );
                assert_eq!(tokens, want_tokens, "{tenant:?} {user:?} {first}");
                if want_tokens > 0.0 {
                    nonzero += 1;
                }
            }
        }
    }
    assert!(nonzero > 10, "{nonzero}");
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

#[test]
fn periods_are_utc_calendar_days_weeks_from_monday_and_months() {
    // Wednesday 2026-12-02.
    let now = at("2026-12-02T13:45:00Z");
    assert_eq!(
        period_bounds(BudgetPeriod::Day, now),
        (at("2026-12-02T00:00:00Z"), at("2026-12-03T00:00:00Z"))
    );
    assert_eq!(
        period_bounds(BudgetPeriod::Week, now),
        (at("2026-11-30T00:00:00Z"), at("2026-12-07T00:00:00Z"))
    );
    assert_eq!(
        period_bounds(BudgetPeriod::Month, now),
        (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    // A Monday is its own week's first day; the first instant of a period is in it.
    let monday = at("2026-11-30T00:00:00Z");
    assert_eq!(period_bounds(BudgetPeriod::Week, monday).0, monday);
    assert_eq!(
        period_bounds(BudgetPeriod::Month, at("2027-02-28T23:59:59Z")),
        (at("2027-02-01T00:00:00Z"), at("2027-03-01T00:00:00Z"))
    );
}

#[test]
fn a_claim_gives_the_same_record_every_time_and_names_its_action() {
    let claim = Claim {
        budget: "acme".into(),
        period_start: at("2026-12-01T00:00:00Z"),
        threshold: 0.8,
        tenant_id: "acme".into(),
        user_id: Some("bob".into()),
        period: "month".into(),
        unit: "usd".into(),
        limit_value: 10.0,
        used: 8.5,
        crossed_at: at("2026-12-02T10:00:00.123Z"),
    };
    assert_eq!(claim.action(), BUDGET_THRESHOLD_ACTION);
    assert_eq!(export_request(&claim), export_request(&claim));
    let record = claim.log_record();
    assert_eq!(record.time_unix_nano, 1_796_205_600_123_000_000);
    let keys: Vec<&str> = record.attributes.iter().map(|a| a.key.as_str()).collect();
    for key in ["activity.action", "budget.name", "tenant.id", "enduser.id"] {
        assert!(keys.contains(&key), "{keys:?}");
    }
    let exceeded = Claim {
        threshold: 1.0,
        user_id: None,
        tenant_id: String::new(),
        ..claim
    };
    assert_eq!(exceeded.action(), QUOTA_EXCEED_ACTION);
    let keys: Vec<String> = exceeded
        .log_record()
        .attributes
        .into_iter()
        .map(|a| a.key)
        .collect();
    assert!(!keys.iter().any(|k| k == "tenant.id" || k == "enduser.id"));
}
