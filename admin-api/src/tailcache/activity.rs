//! The activity tail in memory: the unfolded `activity_events` rows grouped per day,
//! tenant, action and outcome, and the distinct users, for the answers over every tenant.

use super::*;

/// The activity tail: events per (day, action, outcome); the (day, user) pairs and
/// whether `activity_daily` already holds each (it is counted in
/// `activity_users_daily_all` then); each user's `last_seen` in
/// `activity_user_last_seen_all` and tail days.
pub(super) struct ActivityTail {
    pub(super) version: Version,
    pub(super) events: HashMap<(NaiveDate, String, String), i64>,
    pub(super) pairs: HashMap<(NaiveDate, String), bool>,
    /// Per day, the pairs `activity_daily` does not hold yet.
    pub(super) new_pairs: BTreeMap<NaiveDate, i64>,
    pub(super) users: HashMap<String, TailUser>,
    /// The events per (day, tenant, user, action, outcome), as
    /// `activity_daily` keeps them.
    pub(super) keyed: Keyed,
}

pub(super) struct TailUser {
    pub(super) last_seen: Option<NaiveDate>,
    pub(super) days: Vec<NaiveDate>,
}

/// The activity tail of a window, as `/stats` uses it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActivityView {
    /// The newest `seq` it holds (the answer's `as_of_seq`).
    pub high: i64,
    /// (day, action, events) of the window's days.
    pub events: Vec<(NaiveDate, String, i64)>,
    /// (day, users): the window's (day, user) pairs not in `activity_daily`.
    pub new_pairs: Vec<(NaiveDate, i64)>,
    /// The tail users with a row in the window whose `last_seen` in
    /// `activity_user_last_seen_all` is before `from` (or who have none).
    pub unseen_users: i64,
}

impl ActivityView {
    /// The view as statement parameters: the events' days, actions and
    /// counts, the new pairs' days and counts, `unseen_users`.
    pub(crate) fn parameters(&self) -> Vec<Box<dyn ToSql + Sync + Send>> {
        let days: Vec<NaiveDate> = self.events.iter().map(|e| e.0).collect();
        let actions: Vec<String> = self.events.iter().map(|e| e.1.clone()).collect();
        let events: Vec<i64> = self.events.iter().map(|e| e.2).collect();
        let pair_days: Vec<NaiveDate> = self.new_pairs.iter().map(|p| p.0).collect();
        let pair_users: Vec<i64> = self.new_pairs.iter().map(|p| p.1).collect();
        vec![
            Box::new(days),
            Box::new(actions),
            Box::new(events),
            Box::new(pair_days),
            Box::new(pair_users),
            Box::new(self.unseen_users),
        ]
    }
}

impl Tail for ActivityTail {
    const TABLE: &'static str = "activity_events";
    const WATERMARK: &'static str = "activity_daily";

    fn empty(version: Version) -> ActivityTail {
        ActivityTail {
            version,
            events: HashMap::new(),
            pairs: HashMap::new(),
            new_pairs: BTreeMap::new(),
            users: HashMap::new(),
            keyed: Keyed::default(),
        }
    }

    fn version(&self) -> Version {
        self.version
    }

    /// Adds the rows `from < seq <= to` of the snapshot, probing the rollups
    /// for the (day, user) pairs and users it has not seen.
    async fn extend(
        &mut self,
        client: &impl GenericClient,
        from: i64,
        to: i64,
    ) -> Result<(), ApiError> {
        if to <= from {
            return Ok(());
        }
        let range = seq_range(client, "activity_events", from, to).await?;
        let sql = format!(
            "SELECT (ts AT TIME ZONE 'UTC')::date AS day, coalesce(user_id, '') AS user_id, \
                 action, outcome, count(*)::int8 AS events, tenant_id \
             FROM activity_events WHERE {range} GROUP BY 1, 2, 3, 4, 6"
        );
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .map_err(ApiError::from_db)?;
        let mut fresh_pairs: HashSet<(NaiveDate, String)> = HashSet::new();
        let mut fresh_users: Vec<String> = Vec::new();
        for row in &rows {
            let day: NaiveDate = row.try_get(0).map_err(ApiError::from_db)?;
            let user: String = row.try_get(1).map_err(ApiError::from_db)?;
            let action: String = row.try_get(2).map_err(ApiError::from_db)?;
            let outcome: String = row.try_get(3).map_err(ApiError::from_db)?;
            let events: i64 = row.try_get(4).map_err(ApiError::from_db)?;
            let tenant: String = row.try_get(5).map_err(ApiError::from_db)?;
            self.keyed.add(
                day,
                [tenant, user.clone(), action.clone(), outcome.clone()],
                &[events],
                0,
            );
            *self.events.entry((day, action, outcome)).or_insert(0) += events;
            if user.is_empty() {
                continue;
            }
            let pair = (day, user);
            if !self.pairs.contains_key(&pair) {
                fresh_pairs.insert(pair.clone());
            }
            match self.users.get_mut(&pair.1) {
                Some(known) => {
                    if !known.days.contains(&day) {
                        known.days.push(day);
                    }
                }
                None => {
                    fresh_users.push(pair.1.clone());
                    self.users.insert(
                        pair.1,
                        TailUser {
                            last_seen: None,
                            days: vec![day],
                        },
                    );
                }
            }
        }
        if !fresh_pairs.is_empty() {
            let days: Vec<NaiveDate> = fresh_pairs.iter().map(|p| p.0).collect();
            let users: Vec<&str> = fresh_pairs.iter().map(|p| p.1.as_str()).collect();
            let rows = client
                .query(
                    "SELECT n.day, n.user_id, EXISTS (SELECT 1 FROM activity_daily AS d \
                         WHERE d.day = n.day AND d.user_id = n.user_id) \
                     FROM unnest($1::date[], $2::text[]) AS n (day, user_id)",
                    &[&days, &users],
                )
                .await
                .map_err(ApiError::from_db)?;
            for row in &rows {
                let day: NaiveDate = row.try_get(0).map_err(ApiError::from_db)?;
                let user: String = row.try_get(1).map_err(ApiError::from_db)?;
                let known: bool = row.try_get(2).map_err(ApiError::from_db)?;
                if !known {
                    *self.new_pairs.entry(day).or_insert(0) += 1;
                }
                self.pairs.insert((day, user), known);
            }
        }
        if !fresh_users.is_empty() {
            let rows = client
                .query(
                    "SELECT u.user_id, (SELECT l.last_seen FROM activity_user_last_seen_all AS l \
                         WHERE l.user_id = u.user_id) \
                     FROM unnest($1::text[]) AS u (user_id)",
                    &[&fresh_users],
                )
                .await
                .map_err(ApiError::from_db)?;
            for row in &rows {
                let user: String = row.try_get(0).map_err(ApiError::from_db)?;
                let last_seen: Option<NaiveDate> = row.try_get(1).map_err(ApiError::from_db)?;
                if let Some(known) = self.users.get_mut(&user) {
                    known.last_seen = last_seen;
                }
            }
        }
        self.version.high = to;
        Ok(())
    }
}

impl ActivityTail {
    pub(super) fn view(&self, from: NaiveDate, to: NaiveDate) -> ActivityView {
        let within = |day: &NaiveDate| *day >= from && *day < to;
        let mut per_action: BTreeMap<(NaiveDate, &str), i64> = BTreeMap::new();
        for ((day, action, _), n) in &self.events {
            if within(day) {
                *per_action.entry((*day, action.as_str())).or_insert(0) += n;
            }
        }
        let events: Vec<(NaiveDate, String, i64)> = per_action
            .into_iter()
            .map(|((day, action), n)| (day, action.to_owned(), n))
            .collect();
        let new_pairs = self
            .new_pairs
            .range(from..to)
            .filter(|(_, n)| **n > 0)
            .map(|(day, n)| (*day, *n))
            .collect();
        let unseen_users = self
            .users
            .values()
            .filter(|u| u.days.iter().any(within) && u.last_seen.is_none_or(|seen| seen < from))
            .count() as i64;
        ActivityView {
            high: self.version.high,
            events,
            new_pairs,
            unseen_users,
        }
    }
}

impl TailCache {
    /// The activity tail of the window `[from, to)` in `client`'s snapshot
    /// (which must see every tenant), or `None` when the caller must read the
    /// raw tail with SQL (see the module's documentation).
    pub(crate) async fn activity(
        &self,
        client: &impl GenericClient,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<ActivityView>, ApiError> {
        with_tail(&self.activity, client, |tail| tail.view(from, to)).await
    }

    /// The activity tail grouped like `activity_daily_all` (day, action,
    /// outcome, events) for the days in `from..to` (either end open), as
    /// statement parameters, with the newest `seq` they include; `None` as
    /// for [`TailCache::activity`].
    pub(crate) async fn activity_all(
        &self,
        client: &impl GenericClient,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Option<(i64, Vec<Box<dyn ToSql + Sync + Send>>)>, ApiError> {
        with_tail(&self.activity, client, |tail| {
            let (mut days, mut actions, mut outcomes, mut events) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((day, action, outcome), n) in &tail.events {
                if from.is_some_and(|f| *day < f) || to.is_some_and(|t| *day >= t) {
                    continue;
                }
                days.push(*day);
                actions.push(action.clone());
                outcomes.push(outcome.clone());
                events.push(*n);
            }
            let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
                Box::new(days),
                Box::new(actions),
                Box::new(outcomes),
                Box::new(events),
            ];
            (tail.version.high, params)
        })
        .await
    }
}

// ------------------------------------------------------------------ tokens
