//! The admin API's request toolkit: the one query-parameter parser every route
//! uses ([`Params`]: unknown, repeated, empty or over-long parameters are 400
//! naming the parameter; limits, trace ids, outcomes, `seq`s, instants, time and
//! day ranges), and the one SQL builder the parameters become ([`sql`]:
//! `AND`-ed clauses with bound values, the keyset and `seq` pages, running them).
//! The rows that come back are mapped in [`crate::rows`].

mod sql;

pub(crate) use crate::rows::non_empty;
pub(crate) use sql::{newest_seq, query, query_on, snapshot, SqlBuilder};

use axum::extract::Query;
use axum::http::Uri;
use chrono::{DateTime, NaiveDate, NaiveTime, SubsecRound, TimeDelta, Utc};
use tally_model::Outcome;

use crate::error::{truncate, ApiError};

/// The decoded `name=value` pairs of a request's query string. A NUL byte in
/// a name or value (`%00`) is 400: PostgreSQL text cannot hold one, so it could
/// never match and would otherwise fail the query.
pub(crate) fn pairs(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|rejection| ApiError::invalid("query", rejection.body_text()))?;
    if let Some((name, _)) = pairs
        .iter()
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(ApiError::invalid(
            &truncate(&name.replace('\0', "\\0"), 64),
            "must not contain a NUL byte (%00)",
        ));
    }
    Ok(pairs)
}

/// Longest text parameter, in characters (the OpenAPI document's `maxLength`).
pub(crate) const MAX_TEXT_CHARS: usize = 1024;

/// A text value as every route accepts it: not empty, at most
/// [`MAX_TEXT_CHARS`] characters, no NUL byte (PostgreSQL text cannot hold one).
pub(crate) fn check_text(name: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        Err(ApiError::invalid(name, "must not be empty"))
    } else if value.chars().nth(MAX_TEXT_CHARS).is_some() {
        Err(ApiError::invalid(
            name,
            format!("longer than {MAX_TEXT_CHARS} characters"),
        ))
    } else if value.contains('\0') {
        Err(ApiError::invalid(name, "must not contain a NUL byte (%00)"))
    } else {
        Ok(())
    }
}

/// Optional `from` (inclusive) and `to` (exclusive) instants.
pub(crate) type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Validated access to the query parameters of one route.
pub(crate) struct Params<'a> {
    pairs: &'a [(String, String)],
}

impl<'a> Params<'a> {
    /// Checks that every parameter is one of `accepted`; the 400 names the
    /// first unknown one and lists the others.
    pub(crate) fn new(
        pairs: &'a [(String, String)],
        accepted: &[&str],
    ) -> Result<Params<'a>, ApiError> {
        Self::checking(pairs, accepted, true)
    }

    /// [`Params::new`] whose 400 names only the first unknown parameter (the
    /// message of the live feeds and `/export`).
    pub(crate) fn new_brief(
        pairs: &'a [(String, String)],
        accepted: &[&str],
    ) -> Result<Params<'a>, ApiError> {
        Self::checking(pairs, accepted, false)
    }

    fn checking(
        pairs: &'a [(String, String)],
        accepted: &[&str],
        list_others: bool,
    ) -> Result<Params<'a>, ApiError> {
        let mut unknown: Vec<&str> = Vec::new();
        for (name, _) in pairs {
            if !accepted.contains(&name.as_str()) && !unknown.contains(&name.as_str()) {
                unknown.push(name);
            }
        }
        if let Some((first, others)) = unknown.split_first() {
            let mut message = "unknown query parameter".to_owned();
            if list_others && !others.is_empty() {
                let others: Vec<String> = others.iter().map(|n| truncate(n, 64)).collect();
                message.push_str(&format!(" (also unknown: {})", others.join(", ")));
            }
            message.push_str(&format!("; accepted: {}", accepted.join(", ")));
            return Err(ApiError::invalid(&truncate(first, 64), message));
        }
        Ok(Params { pairs })
    }

    fn checked(name: &str, value: &'a str) -> Result<&'a str, ApiError> {
        check_text(name, value)?;
        Ok(value)
    }

    /// A parameter that may appear at most once.
    pub(crate) fn one(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::invalid(name, "given more than once"));
        }
        first.map(|value| Self::checked(name, value)).transpose()
    }

    /// An owned text parameter.
    pub(crate) fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        Ok(self.one(name)?.map(str::to_owned))
    }

    /// A list parameter: repeated (`a=x&a=y`) and/or comma-separated (`a=x,y`).
    pub(crate) fn list(&self, name: &str) -> Result<Vec<&'a str>, ApiError> {
        let mut out = Vec::new();
        for (_, value) in self.pairs.iter().filter(|(n, _)| n == name) {
            for item in Self::checked(name, value)?.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    return Err(ApiError::invalid(name, "has an empty item"));
                }
                out.push(item);
            }
        }
        Ok(out)
    }

    /// `limit`: default `default`, 1 ..= `max`.
    pub(crate) fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        match self.one("limit")? {
            None => Ok(default.clamp(1, max.max(1))),
            Some(value) => match value.parse::<u32>() {
                Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
                _ => Err(ApiError::invalid(
                    "limit",
                    format!("must be an integer between 1 and {max}"),
                )),
            },
        }
    }

    /// `trace_id`: 32 hex characters, answered lowercase.
    pub(crate) fn trace_id(&self) -> Result<Option<String>, ApiError> {
        self.one("trace_id")?
            .map(|value| {
                if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(value.to_ascii_lowercase())
                } else {
                    Err(ApiError::invalid(
                        "trace_id",
                        "must be 32 hexadecimal characters",
                    ))
                }
            })
            .transpose()
    }

    /// `outcome`: `success`, `failure` or `unknown`.
    pub(crate) fn outcome(&self) -> Result<Option<Outcome>, ApiError> {
        self.one("outcome")?
            .map(|value| {
                Outcome::parse(value).ok_or_else(|| {
                    ApiError::invalid("outcome", "must be one of success, failure, unknown")
                })
            })
            .transpose()
    }

    /// A non-negative `seq` (`after_seq`).
    pub(crate) fn seq(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.one(name)?
            .map(|value| parse_seq(name, value))
            .transpose()
    }

    /// `from` / `to` as instants, each a date or an RFC 3339 timestamp (see
    /// [`instant`]; `from` inclusive, `to` exclusive).
    pub(crate) fn instant_range(&self) -> Result<TimeRange, ApiError> {
        let from = self.one("from")?.map(|v| instant("from", v)).transpose()?;
        let to = self.one("to")?.map(|v| instant("to", v)).transpose()?;
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(ApiError::invalid("from", "must not be after to"));
            }
        }
        Ok((from, to))
    }

    /// `from` / `to` as RFC 3339 timestamps (`from` inclusive, `to` exclusive).
    pub(crate) fn time_range(&self) -> Result<TimeRange, ApiError> {
        let from = self
            .one("from")?
            .map(|v| timestamp("from", v))
            .transpose()?;
        let to = self.one("to")?.map(|v| timestamp("to", v)).transpose()?;
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(ApiError::invalid("from", "must not be after to"));
            }
        }
        Ok((from, to))
    }

    /// `from` / `to` as UTC days, for the daily rollups: each is a date
    /// (`2026-11-23`) or an RFC 3339 timestamp. `from` is the first day included
    /// (a timestamp counts its whole day); `to` is exclusive: a date or a
    /// midnight excludes that day, a later time of day includes its day.
    pub(crate) fn day_range(&self) -> Result<(Option<NaiveDate>, Option<NaiveDate>), ApiError> {
        let from = self
            .one("from")?
            .map(|v| day_bound("from", v, false))
            .transpose()?;
        let to = self
            .one("to")?
            .map(|v| day_bound("to", v, true))
            .transpose()?;
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(ApiError::invalid("from", "must not be after to"));
            }
        }
        Ok((from, to))
    }
}

/// The years a date or timestamp parameter may name (PostgreSQL and chrono
/// both hold them; chrono alone accepts ±262143, far past any data).
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

fn check_year(name: &str, year: i32) -> Result<(), ApiError> {
    if YEARS.contains(&year) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            name,
            "the year must be between 1 and 9999",
        ))
    }
}

/// Parses an RFC 3339 timestamp, rounded *up* to the microsecond (the column's
/// precision), which keeps `from` inclusive and `to` exclusive.
pub(crate) fn timestamp(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let parsed = DateTime::parse_from_rfc3339(value)
        .map_err(|_| {
            ApiError::invalid(
                name,
                "not an RFC 3339 timestamp (e.g. 2026-11-23T19:25:50Z)",
            )
        })?
        .with_timezone(&Utc);
    check_year(name, chrono::Datelike::year(&parsed))?;
    let truncated = parsed.trunc_subsecs(6);
    Ok(if truncated < parsed {
        truncated + TimeDelta::microseconds(1)
    } else {
        truncated
    })
}

/// An instant from an RFC 3339 timestamp (see [`timestamp`]) or a date
/// (`2026-11-23`: its midnight UTC). As `to` (exclusive), a date excludes its day.
pub(crate) fn instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(day) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        check_year(name, chrono::Datelike::year(&day))?;
        return Ok(day.and_time(NaiveTime::MIN).and_utc());
    }
    timestamp(name, value).map_err(|_| {
        ApiError::invalid(
            name,
            "not a date (2026-11-23) or an RFC 3339 timestamp (2026-11-23T19:25:50Z)",
        )
    })
}

/// Parses a non-negative `seq` (`after_seq`, the `Last-Event-ID` header).
pub(crate) fn parse_seq(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| ApiError::invalid(name, "must be a non-negative integer (a seq)"))
}

/// A UTC day from a date or an RFC 3339 timestamp; `exclusive_end` rounds a
/// timestamp after midnight up to the next day.
fn day_bound(name: &str, value: &str, exclusive_end: bool) -> Result<NaiveDate, ApiError> {
    if let Ok(day) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        check_year(name, chrono::Datelike::year(&day))?;
        return Ok(day);
    }
    let ts = DateTime::parse_from_rfc3339(value)
        .map_err(|_| {
            ApiError::invalid(
                name,
                "not a date (2026-11-23) or an RFC 3339 timestamp (2026-11-23T19:25:50Z)",
            )
        })?
        .with_timezone(&Utc);
    let day = ts.date_naive();
    check_year(name, chrono::Datelike::year(&day))?;
    if exclusive_end && ts.time() != NaiveTime::MIN {
        return day
            .succ_opt()
            .ok_or_else(|| ApiError::invalid(name, "out of range"));
    }
    Ok(day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn day_bounds() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            day_bound("to", "2026-11-23", true).unwrap(),
            d("2026-11-23")
        );
        assert_eq!(
            day_bound("to", "2026-11-23T00:00:00Z", true).unwrap(),
            d("2026-11-23")
        );
        assert_eq!(
            day_bound("to", "2026-11-23T00:00:01Z", true).unwrap(),
            d("2026-11-24")
        );
        assert_eq!(
            day_bound("from", "2026-11-23T23:59:59Z", false).unwrap(),
            d("2026-11-23")
        );
        // An offset moves the instant to the previous UTC day.
        assert_eq!(
            day_bound("from", "2026-11-23T00:30:00+01:00", false).unwrap(),
            d("2026-11-22")
        );
        assert!(day_bound("from", "2026-13-01", false).is_err());
    }

    #[test]
    fn lists_and_repeats() {
        let p = pairs(&[("g", "a,b"), ("g", "c"), ("x", "1")]);
        let params = Params::new(&p, &["g", "x"]).unwrap();
        assert_eq!(params.list("g").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(params.one("x").unwrap(), Some("1"));
        assert!(params.one("g").is_err());
        let p = pairs(&[("g", "a,,b")]);
        assert!(Params::new(&p, &["g"]).unwrap().list("g").is_err());
        let p = pairs(&[("h", "a")]);
        match Params::new(&p, &["g"]) {
            Err(ApiError::InvalidParameter { parameter, .. }) => assert_eq!(parameter, "h"),
            _ => panic!("unknown parameter accepted"),
        }
    }
}
