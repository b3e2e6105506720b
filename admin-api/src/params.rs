//! Query-parameter parsing and SQL helpers shared by the token, aggregate and
//! stats routes (same rules as `GET /api/v1/activity`: unknown, repeated, empty
//! or over-long parameters are 400 naming the parameter).

use axum::extract::Query;
use axum::http::Uri;
use chrono::{DateTime, NaiveDate, NaiveTime, SubsecRound, TimeDelta, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::{truncate, ApiError};
use crate::state::AppState;

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
    /// Checks that every parameter is one of `accepted`.
    pub(crate) fn new(
        pairs: &'a [(String, String)],
        accepted: &[&str],
    ) -> Result<Params<'a>, ApiError> {
        let mut unknown: Vec<&str> = Vec::new();
        for (name, _) in pairs {
            if !accepted.contains(&name.as_str()) && !unknown.contains(&name.as_str()) {
                unknown.push(name);
            }
        }
        if let Some((first, others)) = unknown.split_first() {
            let mut message = "unknown query parameter".to_owned();
            if !others.is_empty() {
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

/// Bound parameters and `AND`-ed clauses of a query.
#[derive(Default)]
pub(crate) struct SqlBuilder {
    pub(crate) clauses: Vec<String>,
    pub(crate) params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl SqlBuilder {
    /// Binds `value`, answering its placeholder.
    pub(crate) fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// Adds the clause `<prefix><placeholder>`.
    pub(crate) fn push(&mut self, prefix: &str, value: impl ToSql + Sync + Send + 'static) {
        self.push_with_suffix(prefix, value, "");
    }

    /// Adds the clause `<prefix><placeholder><suffix>`.
    pub(crate) fn push_with_suffix(
        &mut self,
        prefix: &str,
        value: impl ToSql + Sync + Send + 'static,
        suffix: &str,
    ) {
        let placeholder = self.param(value);
        self.clauses.push(format!("{prefix}{placeholder}{suffix}"));
    }

    /// ` WHERE …` or nothing.
    pub(crate) fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// Runs `sql` with `params` on a pooled connection that sees `tenant`'s rows.
pub(crate) async fn query(
    state: &AppState,
    tenant: &crate::TenantAccess,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<Row>, ApiError> {
    let client = state.reads.get_for(tenant).await?;
    query_on(&*client, sql, params).await
}

/// Opens a read-only `REPEATABLE READ` transaction on `client`: every statement
/// in it reads the same snapshot (a rollup, its watermark and the raw rows above
/// it agree). Dropped without `commit`, it is rolled back.
pub(crate) async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, ApiError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(ApiError::from_db)
}

/// The newest committed `seq` of raw table `table` over every tenant, in the
/// snapshot of `client` (0 when empty).
pub(crate) async fn newest_seq(
    client: &impl deadpool_postgres::GenericClient,
    table: &str,
) -> Result<i64, ApiError> {
    let statement = client
        .prepare_cached("SELECT tally_newest_seq($1)")
        .await
        .map_err(ApiError::from_db)?;
    let row = client
        .query_one(&statement, &[&table])
        .await
        .map_err(ApiError::from_db)?;
    row.try_get(0).map_err(ApiError::from_db)
}

/// Runs `sql` with `params` on `client` (prepared once per connection).
pub(crate) async fn query_on(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<Row>, ApiError> {
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(ApiError::from_db)?;
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
        .collect();
    client
        .query(&statement, &params)
        .await
        .map_err(ApiError::from_db)
}

pub(crate) use crate::rows::non_empty;

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
