//! The activity section of `/stats`: one statement over the rollups and the unfolded tail.

use super::*;

/// The `GROUPING(day, action)` of the per-day rows of [`activity_sql`].
pub(super) const ACTIVITY_DAY: i32 = 1;
/// The `GROUPING(day, action)` of the per-action rows.
pub(super) const ACTIVITY_ACTION: i32 = 2;
/// The row with the window's distinct users.
pub(super) const ACTIVITY_USERS: i32 = 3;

/// The activity section in one statement, so that the raw rows not folded yet
/// are read once per request (`tail`, grouped per day, user and action) and
/// then summed per day and per action together with the rollup (`GROUPING
/// SETS`), and counted for the distinct users. Rows: `part` (see the
/// constants above), `day`, `action`, `events`, `users`, `rank` (of an
/// action, by events).
///
/// `cached`: the tail comes from the in-memory tail (`crate::tailcache`, only
/// for every tenant and no user) as parameters `$3`–`$8` (see
/// `ActivityView::parameters`) instead of being read from `activity_events`.
pub(super) fn activity_sql(
    tenant: Option<&str>,
    user: Option<&str>,
    w: &str,
    cached: bool,
) -> String {
    let cached = cached && tenant.is_none() && user.is_none();
    let t = tables(tenant, user);
    let mut of_tail = String::new();
    if tenant.is_some() {
        of_tail.push_str(" AND tenant_id = $3");
    }
    if user.is_some() {
        of_tail.push_str(" AND coalesce(user_id, '') = $4");
    }
    let tail = match cached {
        true => "SELECT day, action, events \
                 FROM unnest($3::date[], $4::text[], $5::int8[]) AS t (day, action, events)"
            .to_owned(),
        false => ACTIVITY.tail_groups(
            &["user", "action"],
            &[],
            &[],
            (Some("$1"), Some("$2")),
            &of_tail,
        ),
    };
    let of_tenant = if tenant.is_some() {
        " AND tenant_id = $3"
    } else {
        ""
    };
    // The window's distinct users seen in the rollups since `from`, with the
    // tail's users: one hashed set; cached, the tail users the rollups do not
    // count since `from` are counted in memory.
    let window_users = match cached {
        true => format!(
            "((SELECT count(*) FROM {ls} WHERE last_seen >= $1{of_tenant}) + $8)",
            ls = t.last_seen
        ),
        false => format!(
            "(SELECT count(*) FROM (SELECT user_id FROM {ls} \
                   WHERE last_seen >= $1{of_tenant} \
                   UNION SELECT user_id FROM tail WHERE user_id <> '') AS n)",
            ls = t.last_seen
        ),
    };
    let same_tenant = if tenant.is_some() {
        " AND u.tenant_id = $3"
    } else {
        ""
    };
    // Each day's users: the rollup's count plus the tail's (day, user) pairs
    // that activity_daily does not hold yet.
    let same_day_user = if tenant.is_some() {
        "d.tenant_id = $3 AND d.day = n.day AND d.user_id = n.user_id"
    } else {
        "d.day = n.day AND d.user_id = n.user_id"
    };
    let (users_of_day, users_join, users_row) = match user {
        // One user: active on the days it has events (counted by the caller).
        Some(_) => ("0::int8".to_owned(), String::new(), String::new()),
        None => (
            "(coalesce(u.users, 0) + coalesce(p.users, 0))::int8".to_owned(),
            format!(
                " LEFT JOIN {} AS u ON s.g = {ACTIVITY_DAY} AND u.day = s.day{same_tenant} \
                 LEFT JOIN new_pairs AS p ON s.g = {ACTIVITY_DAY} AND p.day = s.day",
                t.users_daily
            ),
            // Distinct users of the window: when no user was seen on or after
            // `to`, they are exactly the users whose last day is on or after
            // `from` (an index range) together with the tail's users, counted
            // as one hashed set (a probe per tail user cost far more); NULL
            // otherwise (counted by `fallback_users_sql`).
            format!(
                " UNION ALL SELECT {ACTIVITY_USERS}, NULL::date, NULL::text, NULL::int8, \
                     CASE WHEN coalesce((SELECT max(last_seen) FROM {ls} WHERE true{of_tenant}), \
                         '-infinity'::date) < $2 \
                     THEN {window_users} END::int8, \
                     NULL::int8",
                ls = t.last_seen
            ),
        ),
    };
    let new_pairs = match user {
        Some(_) => String::new(),
        None if cached => ", new_pairs AS (SELECT day, users \
             FROM unnest($6::date[], $7::int8[]) AS p (day, users))"
            .to_owned(),
        None => format!(
            ", new_pairs AS (SELECT n.day, count(*) AS users \
             FROM (SELECT DISTINCT day, user_id FROM tail WHERE user_id <> '') AS n \
             WHERE NOT EXISTS (SELECT 1 FROM activity_daily AS d WHERE {same_day_user}) \
             GROUP BY n.day)"
        ),
    };
    format!(
        "WITH tail AS MATERIALIZED ({tail}), \
         live AS (SELECT day, action, events FROM {rollup}{w} \
             UNION ALL SELECT day, action, events FROM tail), \
         sums AS (SELECT GROUPING(day, action) AS g, day, action, sum(events)::int8 AS events, \
             row_number() OVER (PARTITION BY GROUPING(day, action) \
                 ORDER BY sum(events) DESC, action) AS rank \
             FROM live GROUP BY GROUPING SETS ((day), (action))){new_pairs} \
         SELECT s.g AS part, s.day, s.action, s.events, {users_of_day} AS users, s.rank \
         FROM sums AS s{users_join} \
         WHERE s.g = {ACTIVITY_DAY} OR s.rank <= {TOP_ACTIONS}{users_row} \
         ORDER BY part, day, rank",
        rollup = t.activity
    )
}

/// The distinct users of a window that ends before some user's last day
/// (the fast count of [`activity_sql`] does not apply): counted over
/// activity_daily and the tail.
pub(super) fn fallback_users_sql(tenant: Option<&str>, w: &str) -> String {
    let of_tail = if tenant.is_some() {
        " AND tenant_id = $3"
    } else {
        ""
    };
    let tail = ACTIVITY.tail_groups(&["user"], &[], &[], (Some("$1"), Some("$2")), of_tail);
    format!(
        "SELECT count(DISTINCT user_id) FILTER (WHERE user_id <> '') AS active_users \
         FROM (SELECT user_id FROM activity_daily{w} \
               UNION ALL SELECT user_id FROM ({tail}) AS tail) AS u"
    )
}

pub(super) async fn activity_section(
    client: &Transaction<'_>,
    live: &Snapshot,
    cache: &TailCache,
    tenant: Option<&str>,
    user: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, user, from, to);
    // Over every tenant: the tail grouped in memory when it can answer.
    let cached = match (tenant, user) {
        (None, None) => cache.activity(client, from, to).await?,
        _ => None,
    };
    let (rows, as_of_seq) = match &cached {
        Some(view) => {
            let sql = activity_sql(tenant, user, w, true);
            let mut all = window(tenant, user, from, to).1;
            all.extend(view.parameters());
            let rows = crate::params::query_on(client, &sql, &all).await?;
            (rows, view.high)
        }
        None => {
            let sql = activity_sql(tenant, user, w, false);
            futures::try_join!(
                run(client, live, &sql, &params),
                crate::params::newest_seq(client, "activity_events"),
            )?
        }
    };
    // A self:read caller's user counts on the days it has events.
    let own = match user {
        Some(user) if !user.is_empty() => 1,
        _ => 0,
    };
    let mut events = 0i64;
    let mut known: Option<i64> = None;
    let mut top_actions = Vec::new();
    let mut daily = Vec::new();
    for row in &rows {
        let part: i32 = row.try_get("part").map_err(ApiError::from_db)?;
        match part {
            ACTIVITY_DAY => {
                let day: NaiveDate = row.try_get("day").map_err(ApiError::from_db)?;
                let day_events = int(row, "events")?;
                // The total is the sum of the days.
                events = events.saturating_add(day_events);
                let users = match user {
                    Some(_) => own,
                    None => int(row, "users")?,
                };
                daily.push(json!({
                    "day": day.to_string(),
                    "events": day_events,
                    "active_users": users,
                }));
            }
            ACTIVITY_ACTION => {
                let action: String = row.try_get("action").map_err(ApiError::from_db)?;
                top_actions.push(json!({ "action": action, "events": int(row, "events")? }));
            }
            _ => known = row.try_get("users").map_err(ApiError::from_db)?,
        }
    }
    let active_users = match (user, known) {
        (Some(_), _) => {
            if daily.is_empty() {
                0
            } else {
                own
            }
        }
        (None, Some(count)) => count,
        (None, None) => {
            let rows = run(client, live, &fallback_users_sql(tenant, w), &params).await?;
            match rows.first() {
                Some(row) => int(row, "active_users")?,
                None => 0,
            }
        }
    };
    Ok(json!({
        "as_of_seq": as_of_seq,
        "events": events,
        "active_users": active_users,
        "top_actions": top_actions,
        "daily": daily,
    }))
}
