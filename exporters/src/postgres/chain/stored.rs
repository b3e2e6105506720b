//! Reading the stored links: one `activity_chain` row per link (the chainer's)
//! or one `activity_chain_runs` row per batch and tenant (the writers', migration
//! 33), merged into one stream of [`Link`]s in `seq` order.
//!
//! Point lookups go through the SQL function `tally_chain_link(tenant, seq)`
//! (one index probe per table); the verification walk pages through both tables
//! with [`page`].

use chrono::NaiveDate;
use tokio_postgres::Transaction;

use crate::postgres::PgError;

/// Links read per page from `activity_chain`.
pub(crate) const LINKS_PER_PAGE: i64 = 5_000;
/// Runs read per page from `activity_chain_runs` (a run holds at most one
/// batch's rows of one tenant).
pub(crate) const RUNS_PER_PAGE: i64 = 64;

/// One link, whichever table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub seq: i64,
    pub day: NaiveDate,
    pub prev_seq: Option<i64>,
    pub prev_hash: Vec<u8>,
    pub row_hash: Vec<u8>,
}

/// One page of a tenant's links above a cursor.
#[derive(Debug)]
pub(crate) struct Page {
    /// The links in `(cursor, upper]`, in `seq` order (stable: two links with
    /// one `seq` keep their order, the walk reports the second).
    pub links: Vec<Link>,
    /// Where the page ends: `None` when it holds every link above the cursor.
    pub upper: Option<i64>,
}

/// The stored links of `tenant` above `cursor`, up to a bound at which both
/// tables' pages are complete. On the `first` page of a walk, the links of a
/// run at or below `cursor` are skipped (a walk resumed inside a run); on later
/// pages they are kept, so the walk reports them (a legitimate run never
/// straddles the end of a page: pages end at a run's `last_seq` or at a link
/// of `activity_chain`, and no other link of the tenant lies between a run's
/// first and last seq, since a run holds all of its tenant's links of one batch).
pub(crate) async fn page(
    client: &Transaction<'_>,
    tenant: &str,
    cursor: i64,
    first: bool,
) -> Result<Page, PgError> {
    type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
    let single_params: [Param<'_>; 3] = [&tenant, &cursor, &LINKS_PER_PAGE];
    let run_params: [Param<'_>; 3] = [&tenant, &cursor, &RUNS_PER_PAGE];
    let singles = client.query(
        "SELECT seq, day, prev_seq, prev_hash, row_hash FROM activity_chain \
         WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &single_params,
    );
    let runs = client.query(
        "SELECT prev_seq, prev_hash, seqs, days, row_hashes FROM activity_chain_runs \
         WHERE tenant_id = $1 AND last_seq > $2 ORDER BY last_seq LIMIT $3",
        &run_params,
    );
    let (singles, runs) = tokio::try_join!(singles, runs)?;
    let mut upper: Option<i64> = None;
    let mut bound = |seq: i64| upper = Some(upper.map_or(seq, |u| u.min(seq)));
    let mut links = Vec::with_capacity(singles.len());
    for row in &singles {
        links.push(Link {
            seq: row.try_get(0)?,
            day: row.try_get(1)?,
            prev_seq: row.try_get(2)?,
            prev_hash: row.try_get(3)?,
            row_hash: row.try_get(4)?,
        });
    }
    if singles.len() as i64 == LINKS_PER_PAGE {
        if let Some(last) = links.last() {
            bound(last.seq);
        }
    }
    let mut last_run_end = None;
    for row in &runs {
        let run = expand_run(
            row.try_get(0)?,
            row.try_get(1)?,
            &row.try_get::<_, Vec<i64>>(2)?,
            &row.try_get::<_, Vec<NaiveDate>>(3)?,
            &row.try_get::<_, Vec<u8>>(4)?,
        );
        last_run_end = run.last().map(|link| link.seq);
        links.extend(run.into_iter().filter(|link| !first || link.seq > cursor));
    }
    if runs.len() as i64 == RUNS_PER_PAGE {
        if let Some(end) = last_run_end {
            bound(end);
        }
    }
    if let Some(upper) = upper {
        links.retain(|link| link.seq <= upper);
    }
    links.sort_by_key(|link| link.seq);
    Ok(Page { links, upper })
}

/// A run's links, from its first link's predecessor and its arrays. A run
/// whose arrays disagree in length (the table's check forbids it, so only an
/// out-of-band change) still yields one link per `seq`, with an empty hash and
/// the epoch's day where its part is missing: the walk reports it as altered.
fn expand_run(
    mut prev_seq: Option<i64>,
    mut prev_hash: Vec<u8>,
    seqs: &[i64],
    days: &[NaiveDate],
    hashes: &[u8],
) -> Vec<Link> {
    let well_formed = days.len() == seqs.len() && hashes.len() == 32 * seqs.len();
    let mut links = Vec::with_capacity(seqs.len());
    for (i, &seq) in seqs.iter().enumerate() {
        let row_hash = match hashes.get(32 * i..32 * (i + 1)) {
            Some(hash) if well_formed => hash.to_vec(),
            _ => Vec::new(),
        };
        let link = Link {
            seq,
            day: days.get(i).copied().unwrap_or_default(),
            prev_seq,
            prev_hash: std::mem::take(&mut prev_hash),
            row_hash,
        };
        prev_seq = Some(seq);
        prev_hash.clone_from(&link.row_hash);
        links.push(link);
    }
    links
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, d).unwrap_or_default()
    }

    #[test]
    fn a_run_expands_into_links_that_name_their_predecessor() {
        let hashes: Vec<u8> = (1..=3u8).flat_map(|b| [b; 32]).collect();
        let links = expand_run(
            Some(4),
            vec![9; 32],
            &[7, 12, 13],
            &[day(1), day(1), day(2)],
            &hashes,
        );
        // (seq, day, previous seq, previous hash byte, hash byte)
        let want = [(7, 1, 4, 9, 1), (12, 1, 7, 1, 2), (13, 2, 12, 2, 3)];
        let want: Vec<Link> = want
            .iter()
            .map(|&(seq, d, prev_seq, prev, hash)| Link {
                seq,
                day: day(d),
                prev_seq: Some(prev_seq),
                prev_hash: vec![prev; 32],
                row_hash: vec![hash; 32],
            })
            .collect();
        assert_eq!(links, want);
    }

    #[test]
    fn a_misshapen_run_yields_links_without_hashes() {
        // One hash short: every link of the run loses its hash, none is dropped.
        let links = expand_run(None, vec![0; 32], &[1, 2], &[day(1), day(1)], &[5; 32]);
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].prev_seq, None);
        assert!(links.iter().all(|l| l.row_hash.is_empty()));
        // A day short: the link keeps its seq, with the epoch's day.
        let links = expand_run(None, vec![0; 32], &[1, 2], &[day(1)], &[5; 64]);
        assert_eq!(links[1].day, NaiveDate::default());
        assert!(links[1].row_hash.is_empty());
    }
}
