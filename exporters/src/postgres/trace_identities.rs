//! Trace identities shared by every Tally instance on one database
//! (`trace_identities`, migration 22): attribution through the trace when a
//! trace's spans reach different instances.
//!
//! Each request hands the writer what it learned about its traces
//! ([`SharedTraces`]): the identity its records carried (user, session, the
//! tenant they named) and, for traces whose token rows it stores without
//! attribution, the earliest such row's `ts` (the *pending* mark). The writer
//! upserts them in two statements per batch, each in key order (no deadlock
//! between writers), and reads back the traces that now have both an identity
//! and a pending mark ([`TraceAttribution`]s): the request attributes their
//! stored rows after commit, through [`attribute_traces`](super::attribute_traces),
//! as for a trace seen by this instance alone.
//!
//! - Traces that carry only an identity are upserted on their own, before the
//!   batch transaction ([`split_pending`]): their row locks last for that one
//!   statement. In the batch transaction they were held until the batch
//!   committed, and two writers whose batches shared a trace (a trace's spans
//!   in different export requests, the usual case) then wrote one after the
//!   other: the second waited for the first's whole batch.
//! - Traces with a pending mark are upserted in the batch transaction, before
//!   the rows, so the mark commits with the rows it announces.
//!
//! Why no trace is missed: the identity and the pending mark of one trace are
//! one row; whichever of the two writes commits second waits for the first on
//! that row's lock (`ON CONFLICT DO UPDATE`) and then sees it, so its request
//! attributes the rows, which are committed by then (they are written in the
//! same transaction as their pending mark). An identity committed before its
//! batch and the batch then failing leaves a true identity in the table (the
//! request's retry writes it again); rows are never attributed from it before
//! they are committed. Rows are keyed by the sender's tenant scope as well as
//! the trace id, so a client choosing another tenant's trace ids meets nothing
//! of that tenant.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};

use super::{PgError, TraceAttribution, TraceIdentity};

/// What one request tells the other instances about its traces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedTraces {
    /// The sender's tenant scope: its ingest key's tenant, `""` for senders
    /// bound to none (no key, or a `*` key).
    pub scope: String,
    /// One item per trace (several for one trace are merged).
    pub traces: Vec<SharedTrace>,
}

impl SharedTraces {
    /// Whether there is nothing to share.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }
}

/// What a request learned about one trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTrace {
    /// Lowercase hex, as stored in `token_usage.trace_id`.
    pub trace_id: String,
    /// The identity the request's records carried (`tenant_id`: the tenant
    /// they named), if any.
    pub identity: Option<TraceIdentity>,
    /// The earliest `ts` of the trace's token rows the request stores without
    /// attribution, if any.
    pub pending_since: Option<DateTime<Utc>>,
}

/// One merged upsert row: user, session, record tenant, pending since.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Merged<'a> {
    user: Option<&'a str>,
    session: Option<&'a str>,
    tenant: Option<&'a str>,
    pending: Option<DateTime<Utc>>,
}

impl<'a> Merged<'a> {
    /// Adds what `trace` shares: identity fields this entry lacks, and the
    /// earliest pending mark.
    fn absorb(&mut self, trace: &'a SharedTrace) {
        if let Some(identity) = &trace.identity {
            self.user = self.user.or(identity.user_id.as_deref());
            self.session = self.session.or(identity.session_id.as_deref());
            self.tenant = self.tenant.or(identity.tenant_id.as_deref());
        }
        self.pending = match (self.pending, trace.pending_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One trace a submission shares, with the sender's tenant scope.
pub(crate) type ScopedTrace<'a> = (&'a str, &'a SharedTrace);

/// Splits a batch's `(scope, trace)` items into those that carry only an
/// identity (upserted before the batch transaction) and those with a pending
/// mark (upserted in it, committed with their rows).
pub(crate) fn split_pending<'a>(
    items: impl IntoIterator<Item = ScopedTrace<'a>>,
) -> (Vec<ScopedTrace<'a>>, Vec<ScopedTrace<'a>>) {
    items
        .into_iter()
        .partition(|(_, trace)| trace.pending_since.is_none())
}

/// Upserts `(scope, trace)` pairs into `trace_identities` through `client` (a
/// connection, for identities alone, or the batch transaction): per field the
/// stored value wins, the pending mark keeps the earliest `ts`, `seen_at` is
/// refreshed. Returns, per `(scope, trace_id)`, the traces now both identified
/// and pending: their stored rows are to be attributed once the batch is
/// committed.
pub(crate) async fn share(
    client: &impl GenericClient,
    items: &[ScopedTrace<'_>],
) -> Result<Vec<((String, String), TraceAttribution)>, PgError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // Sorted by key: every writer locks rows in the same order.
    let merged = merge(items);
    let n = merged.len();
    let (mut scopes, mut traces) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut users, mut sessions) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut tenants, mut pending) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for ((scope, trace), m) in &merged {
        scopes.push(*scope);
        traces.push(*trace);
        users.push(m.user);
        sessions.push(m.session);
        tenants.push(m.tenant);
        pending.push(m.pending);
    }
    let rows = client
        .query(
            "WITH up AS ( \
                 INSERT INTO trace_identities AS t (tenant_id, trace_id, user_id, session_id, \
                     record_tenant, pending_since, seen_at) \
                 SELECT s, tr, u, se, rt, p, now() \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::timestamptz[]) AS x(s, tr, u, se, rt, p) \
                 ORDER BY s, tr \
                 ON CONFLICT (tenant_id, trace_id) DO UPDATE SET \
                     user_id = coalesce(t.user_id, excluded.user_id), \
                     session_id = coalesce(t.session_id, excluded.session_id), \
                     record_tenant = coalesce(t.record_tenant, excluded.record_tenant), \
                     pending_since = least(t.pending_since, excluded.pending_since), \
                     seen_at = excluded.seen_at \
                 RETURNING tenant_id, trace_id, user_id, session_id, record_tenant, \
                     pending_since) \
             SELECT tenant_id, trace_id, user_id, session_id, record_tenant, pending_since \
             FROM up WHERE pending_since IS NOT NULL \
               AND (user_id IS NOT NULL OR (tenant_id = '' AND record_tenant IS NOT NULL))",
            &[&scopes, &traces, &users, &sessions, &tenants, &pending],
        )
        .await?;
    let mut ready = Vec::with_capacity(rows.len());
    for row in &rows {
        let scope: String = row.try_get(0)?;
        let trace_id: String = row.try_get(1)?;
        let record_tenant: Option<String> = row.try_get(4)?;
        // A bound sender's rows are its tenant's; others take the one named.
        let tenant_id = record_tenant.or_else(|| (!scope.is_empty()).then(|| scope.clone()));
        let since: DateTime<Utc> = row.try_get(5)?;
        ready.push((
            (scope, trace_id.clone()),
            TraceAttribution {
                trace_id,
                identity: TraceIdentity {
                    tenant_id,
                    user_id: row.try_get(2)?,
                    session_id: row.try_get(3)?,
                },
                since,
            },
        ));
    }
    Ok(ready)
}

/// `items` merged per `(scope, trace_id)`, in key order: per field the first
/// item's value that has one, the earliest pending mark. A stable sort of the
/// items and one pass over the runs of equal keys (a `BTreeMap` of the batch's
/// traces compared keys over and over: ~1% of the collector's samples).
fn merge<'a>(items: &[ScopedTrace<'a>]) -> Vec<((&'a str, &'a str), Merged<'a>)> {
    let mut keyed: Vec<((&'a str, &'a str), &'a SharedTrace)> = items
        .iter()
        .map(|(scope, trace)| ((*scope, trace.trace_id.as_str()), *trace))
        .collect();
    // Stable: the items of one trace stay in their order (the first value wins).
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<((&'a str, &'a str), Merged<'a>)> = Vec::with_capacity(keyed.len());
    for (key, trace) in keyed {
        let entry = match merged.last_mut() {
            Some((last, entry)) if *last == key => entry,
            _ => {
                merged.push((key, Merged::default()));
                match merged.last_mut() {
                    Some((_, entry)) => entry,
                    None => continue,
                }
            }
        };
        entry.absorb(trace);
    }
    merged
}

/// Deletes the trace identities not written for `ttl` (the attribution window):
/// run by the rollup job. Rows a writer holds right now are left for the next
/// run (`SKIP LOCKED`: the job never waits for a writer, so the two cannot
/// deadlock). Returns the rows deleted.
pub async fn prune_trace_identities(client: &Client, ttl: Duration) -> Result<u64, PgError> {
    Ok(client
        .execute(
            "DELETE FROM trace_identities WHERE (tenant_id, trace_id) IN ( \
                 SELECT tenant_id, trace_id FROM trace_identities \
                 WHERE seen_at < now() - make_interval(secs => $1) \
                 FOR UPDATE SKIP LOCKED)",
            &[&ttl.as_secs_f64()],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The merge as a `BTreeMap` of the keys did it before (the same
    /// [`Merged::absorb`]: what is compared is the grouping and the order).
    fn merged_by_map<'a>(items: &[ScopedTrace<'a>]) -> Vec<((&'a str, &'a str), Merged<'a>)> {
        let mut merged: BTreeMap<(&str, &str), Merged<'_>> = BTreeMap::new();
        for (scope, trace) in items {
            let entry = merged.entry((scope, trace.trace_id.as_str())).or_default();
            entry.absorb(trace);
        }
        merged.into_iter().collect()
    }

    #[test]
    fn traces_merge_per_scope_and_trace_in_key_order_as_the_map_did() {
        let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default();
        // Traces met several times, with and without identities and marks,
        // under several scopes, in no particular order.
        let traces: Vec<SharedTrace> = (0..400i64)
            .map(|i| SharedTrace {
                trace_id: format!("{:032x}", (i * 37) % 61),
                identity: (i % 3 != 0).then(|| TraceIdentity {
                    tenant_id: (i % 4 == 1).then(|| format!("t{i}")),
                    user_id: (i % 5 != 2).then(|| format!("u{i}")),
                    session_id: (i % 7 == 3).then(|| format!("s{i}")),
                }),
                pending_since: (i % 2 == 0).then(|| at(1_000 - (i * 13) % 700)),
            })
            .collect();
        let scopes = ["", "acme", "beta", "acme"];
        let items: Vec<ScopedTrace<'_>> = traces
            .iter()
            .enumerate()
            .map(|(i, t)| (scopes[i % scopes.len()], t))
            .collect();
        let merged = merge(&items);
        assert!(merged.len() > 61 && merged.len() < items.len());
        assert_eq!(merged, merged_by_map(&items));
        assert!(merge(&[]).is_empty());
    }
}
