//! A cached tail grouped by every key of its per-user rollup (the day, the
//! tenant, the user and the rollup's two other keys), for the pages of an
//! aggregate grouped by user over every tenant (issue 18).
//!
//! Such a page is the first `limit` groups after the cursor, in key order, of
//! the rollup and the tail together. The first `limit` groups of that union
//! are among the first `limit` groups of the rollup and the first `limit`
//! groups of the tail (a group of the page has fewer than `limit` groups
//! before it in either part), so a page's statement needs only the tail's
//! first `limit` groups of each period, computed here in memory, and the
//! rollup's, read in key order from its index (`crate::aggregates`).
//!
//! Key order here is Rust's `str` order (bytes): it equals PostgreSQL's only
//! under a collation that sorts by code point, which the caller checks first
//! ([`TailCache::byte_order`](super::TailCache::byte_order)).

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use tokio_postgres::types::ToSql;

use super::{format_cost, TOKEN_COUNTS};

/// The keys of a per-user rollup, in the aggregate route's canonical order:
/// tenant, user, then provider and model (tokens) or action and outcome
/// (activity).
const KEYS: usize = 4;

/// The sums of one group: the counted measures (activity: events only) and
/// the cost in units of 1e-10 USD (tokens).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sums {
    counts: [i64; TOKEN_COUNTS],
    cost: i128,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        for (total, n) in self.counts.iter_mut().zip(other.counts) {
            *total += n;
        }
        self.cost += other.cost;
    }
}

/// The tail's groups: per day, by the four keys in user-first order (user,
/// tenant, then the rollup's two others), so that a page grouped by user
/// first reads each day's groups in user order from the cursor on and stops
/// after its last user instead of reading every group of the tail.
#[derive(Debug, Default)]
pub(crate) struct Keyed {
    days: BTreeMap<NaiveDate, BTreeMap<[String; KEYS], Sums>>,
}

/// Where a canonical key position (tenant, user, …) is in a stored key (user,
/// tenant, …).
const STORED: [usize; KEYS] = [1, 0, 2, 3];

/// The grouped key of a stored one, projected on `group_by` (canonical
/// positions).
fn project<'k>(stored: &'k [String; KEYS], group_by: &[usize]) -> Vec<&'k str> {
    group_by
        .iter()
        .map(|position| stored[STORED[*position]].as_str())
        .collect()
}

impl Keyed {
    /// Adds one grouped row of the tail (`keys` in canonical order, `counts`
    /// in the measures' order, at most [`TOKEN_COUNTS`]).
    pub(crate) fn add(&mut self, day: NaiveDate, keys: [String; KEYS], counts: &[i64], cost: i128) {
        let mut sums = Sums {
            cost,
            ..Sums::default()
        };
        for (total, n) in sums.counts.iter_mut().zip(counts) {
            *total = *n;
        }
        let [tenant, user, third, fourth] = keys;
        self.days
            .entry(day)
            .or_default()
            .entry([user, tenant, third, fourth])
            .or_default()
            .add(&sums);
    }

    /// The number of groups held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.days.values().map(BTreeMap::len).sum()
    }

    /// The first groups of each period of `query` (see [`Pages`]).
    pub(crate) fn pages(&self, query: &PagesQuery<'_>) -> Pages {
        let pages = query
            .periods
            .iter()
            .map(|&(period, first, end)| {
                let days: Vec<&BTreeMap<[String; KEYS], Sums>> = self
                    .days
                    .range(first..end)
                    .map(|(_, groups)| groups)
                    .collect();
                let after = query
                    .after
                    .filter(|(cursor_period, _)| *cursor_period == period)
                    .map(|(_, keys)| keys);
                let groups = match query.group_by.first() {
                    // Grouped by user first: in user order, up to the page's end.
                    Some(1) => self.first_by_user(&days, query, after),
                    _ => Self::first_of_all(&days, query, after),
                };
                Page::of(query.group_by.len(), &groups)
            })
            .collect();
        Pages { pages }
    }

    /// A stored key's group (its keys in `group_by` order) when it passes the
    /// filters and comes after the cursor `after`; `None` otherwise.
    fn selected<'k>(
        stored: &'k [String; KEYS],
        query: &PagesQuery<'_>,
        after: Option<&[String]>,
    ) -> Option<Vec<&'k str>> {
        let passes = query
            .filters
            .iter()
            .all(|(position, value)| stored[STORED[*position]] == *value);
        if !passes {
            return None;
        }
        let grouped = project(stored, query.group_by);
        match after {
            Some(after) if grouped.iter().copied().le(after.iter().map(String::as_str)) => None,
            _ => Some(grouped),
        }
    }

    /// The first `limit` groups after `after` of `days`, grouped by user
    /// first: the days' groups are merged in user order, one user at a time
    /// (a user's groups sorted by the other keys), from the cursor's user on.
    fn first_by_user<'k>(
        &self,
        days: &[&'k BTreeMap<[String; KEYS], Sums>],
        query: &PagesQuery<'_>,
        after: Option<&[String]>,
    ) -> Vec<(Vec<&'k str>, Sums)> {
        let start: [String; KEYS] = match after.and_then(|keys| keys.first()) {
            Some(user) => [user.clone(), String::new(), String::new(), String::new()],
            None => Default::default(),
        };
        let mut cursors: Vec<_> = days
            .iter()
            .copied()
            .map(|groups| groups.range(start.clone()..).peekable())
            .collect();
        let mut out: Vec<(Vec<&'k str>, Sums)> = Vec::new();
        while out.len() < query.limit {
            // The smallest next user of every day.
            let Some(user) = cursors
                .iter_mut()
                .filter_map(|c| c.peek().map(|&(key, _)| key[0].as_str()))
                .min()
            else {
                break;
            };
            let mut groups: Vec<(Vec<&'k str>, Sums)> = Vec::new();
            for cursor in &mut cursors {
                while let Some((key, sums)) = cursor.next_if(|(key, _)| key[0] == user) {
                    let Some(grouped) = Self::selected(key, query, after) else {
                        continue;
                    };
                    match groups.iter_mut().find(|(k, _)| *k == grouped) {
                        Some((_, total)) => total.add(sums),
                        None => groups.push((grouped, sums.clone())),
                    }
                }
            }
            groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            out.extend(groups);
        }
        out.truncate(query.limit);
        out
    }

    /// The first `limit` groups after `after` of `days`, in any grouping:
    /// every group of the days, hashed, then the first ones chosen.
    fn first_of_all<'k>(
        days: &[&'k BTreeMap<[String; KEYS], Sums>],
        query: &PagesQuery<'_>,
        after: Option<&[String]>,
    ) -> Vec<(Vec<&'k str>, Sums)> {
        let mut all: HashMap<Vec<&'k str>, Sums> = HashMap::new();
        for groups in days.iter().copied() {
            for (key, sums) in groups {
                let Some(grouped) = Self::selected(key, query, after) else {
                    continue;
                };
                all.entry(grouped).or_default().add(sums);
            }
        }
        let mut groups: Vec<(Vec<&'k str>, Sums)> = all.into_iter().collect();
        if groups.len() > query.limit {
            groups.select_nth_unstable_by(query.limit, |a, b| a.0.cmp(&b.0));
            groups.truncate(query.limit);
        }
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        groups
    }
}

/// What [`Keyed::pages`] computes.
#[derive(Debug, Clone)]
pub(crate) struct PagesQuery<'a> {
    /// `(period, first day, end day)`, in order, not overlapping.
    pub periods: &'a [(NaiveDate, NaiveDate, NaiveDate)],
    /// Key position (in [`KEYS`] order) and the value it must have.
    pub filters: &'a [(usize, &'a str)],
    /// The positions of the keys grouped by, in canonical order.
    pub group_by: &'a [usize],
    /// The cursor: its period and keys; groups of that period at or before
    /// them are left out.
    pub after: Option<(NaiveDate, &'a [String])>,
    /// Most groups per period.
    pub limit: usize,
}

/// One page per period of the query, in its order.
#[derive(Debug, Clone)]
pub(crate) struct Pages {
    /// Per period.
    pub pages: Vec<Page>,
}

/// A period's first groups in key order, as columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Page {
    /// One column per key grouped by.
    keys: Vec<Vec<String>>,
    /// One column per counted measure.
    counts: Vec<Vec<i64>>,
    /// The cost column (`numeric` text).
    cost: Vec<String>,
}

impl Page {
    fn of(keys: usize, groups: &[(Vec<&str>, Sums)]) -> Page {
        let mut page = Page {
            keys: (0..keys)
                .map(|_| Vec::with_capacity(groups.len()))
                .collect(),
            counts: (0..TOKEN_COUNTS)
                .map(|_| Vec::with_capacity(groups.len()))
                .collect(),
            cost: Vec::with_capacity(groups.len()),
        };
        for (key, sums) in groups {
            for (column, value) in page.keys.iter_mut().zip(key) {
                column.push((*value).to_owned());
            }
            for (column, value) in page.counts.iter_mut().zip(sums.counts) {
                column.push(value);
            }
            page.cost.push(format_cost(sums.cost));
        }
        page
    }

    /// The number of groups.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cost.len()
    }

    /// The columns as statement parameters: each key (`text[]`), the first
    /// `counts` counted measures (`int8[]`), then the cost (`text[]`) when
    /// `cost`.
    pub(crate) fn parameters(
        &self,
        counts: usize,
        cost: bool,
    ) -> Vec<Box<dyn ToSql + Sync + Send>> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        for column in &self.keys {
            params.push(Box::new(column.clone()));
        }
        for column in self.counts.iter().take(counts) {
            params.push(Box::new(column.clone()));
        }
        if cost {
            params.push(Box::new(self.cost.clone()));
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn keys(tenant: &str, user: &str, model: &str) -> [String; KEYS] {
        [tenant.into(), user.into(), "p".into(), model.into()]
    }

    #[test]
    fn pages_hold_each_periods_first_groups_after_the_cursor() {
        let mut keyed = Keyed::default();
        keyed.add(d("2026-11-02"), keys("a", "u3", "m"), &[1, 10], 5);
        keyed.add(d("2026-11-03"), keys("a", "u3", "n"), &[2, 20], 7);
        keyed.add(d("2026-11-03"), keys("b", "u1", "m"), &[4, 40], 0);
        keyed.add(d("2026-11-03"), keys("a", "u2", "m"), &[8, 80], 0);
        keyed.add(d("2026-11-03"), keys("a", "u2", "m"), &[16, 160], 1);
        // Outside the periods, and in the second period.
        keyed.add(d("2026-10-31"), keys("a", "u0", "m"), &[1, 1], 0);
        keyed.add(d("2026-11-09"), keys("a", "u0", "m"), &[32, 320], 0);
        assert_eq!(keyed.len(), 6);
        let periods = [
            (d("2026-11-02"), d("2026-11-02"), d("2026-11-09")),
            (d("2026-11-09"), d("2026-11-09"), d("2026-11-10")),
        ];
        let query = PagesQuery {
            periods: &periods,
            filters: &[],
            group_by: &[1],
            after: None,
            limit: 2,
        };
        let pages = keyed.pages(&query).pages;
        assert_eq!(pages[0].keys, vec![vec!["u1".to_owned(), "u2".to_owned()]]);
        assert_eq!(pages[0].counts[0], vec![4, 24]);
        assert_eq!(pages[0].counts[1], vec![40, 240]);
        assert_eq!(pages[0].cost, vec!["0.0000000000", "0.0000000001"]);
        assert_eq!(pages[1].keys, vec![vec!["u0".to_owned()]]);
        // The cursor leaves out its period's groups up to its keys; a filter.
        let after = vec!["u2".to_owned()];
        let query = PagesQuery {
            filters: &[(0, "a")],
            after: Some((d("2026-11-02"), &after)),
            ..query
        };
        let pages = keyed.pages(&query).pages;
        assert_eq!(pages[0].keys, vec![vec!["u3".to_owned()]]);
        assert_eq!(pages[0].counts[0], vec![3]);
        assert_eq!(pages[0].cost, vec!["0.0000000012"]);
        assert_eq!(pages[1].len(), 1);
        // Two keys grouped by: ordered by both.
        let query = PagesQuery {
            group_by: &[1, 3],
            after: None,
            limit: 10,
            ..query
        };
        let pages = keyed.pages(&query).pages;
        assert_eq!(
            pages[0].keys,
            vec![
                vec!["u2".to_owned(), "u3".to_owned(), "u3".to_owned()],
                vec!["m".to_owned(), "m".to_owned(), "n".to_owned()]
            ]
        );
        assert_eq!(pages[0].parameters(1, false).len(), 3);
        // Grouped by tenant first: every group of the period, then the first.
        let query = PagesQuery {
            filters: &[],
            group_by: &[0, 1],
            limit: 2,
            ..query
        };
        let pages = keyed.pages(&query).pages;
        assert_eq!(
            pages[0].keys,
            vec![
                vec!["a".to_owned(), "a".to_owned()],
                vec!["u2".to_owned(), "u3".to_owned()]
            ]
        );
        assert_eq!(pages[0].counts[0], vec![24, 3]);
        assert_eq!(pages[0].parameters(9, true).len(), 12);
    }
}
