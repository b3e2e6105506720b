//! The token-usage ledger's write path: `token_usage` rows in the same batch
//! transaction as activity rows, and the late trace attribution `UPDATE`.
//!
//! Rows are COPYed (binary) into a per-connection temporary staging table
//! (the writer does it before it takes the activity lock), then,
//! under the advisory lock [`TOKEN_USAGE_LOCK_KEY`](super::TOKEN_USAGE_LOCK_KEY)
//! held until `COMMIT`, inserted with `seq = nextval('token_usage_seq')` and
//! `received_at = clock_timestamp()`, so `seq` and `received_at` follow commit
//! order. Writers take the activity lock before the token lock (fixed order, no
//! deadlock). A retried record has the same id and `ts`: it is skipped under the
//! lock (its stored copy may have been attributed to a tenant since), and
//! `ON CONFLICT DO NOTHING` covers the rest.

use std::sync::LazyLock;

use tokio_postgres::{Client, SimpleQueryMessage, Transaction};

use chrono::{DateTime, Utc};
use tally_model::metrics::TableLabels;
use tally_model::{Outcome, TokenUsage};

use super::copy::{self, copy_rows};
use super::rollup::{unfold_token_rows, ROLLUP_LOCK_KEY, TOKEN_WATERMARK};
use super::{PgError, TOKEN_USAGE_LOCK_KEY};
use crate::metrics::{metrics, LlmRequestLabels, ModelLabels, ModelOnlyLabels, TokenLabels};

const STAGING_DDL: &str = "DO $$ BEGIN \
    IF to_regclass('pg_temp.tally_token_staging_v4') IS NULL THEN \
        CREATE TEMP TABLE tally_token_staging_v4 ( \
            id uuid, ts timestamptz, tenant_id text, user_id text, session_id text, \
            service text, trace_id text, span_id text, provider text, operation text, \
            request_model text, response_model text, model text, input_tokens int8, \
            output_tokens int8, cache_read_tokens int8, cache_write_tokens int8, \
            reasoning_tokens int8, total_tokens int8, usage_known bool, cost_usd float8, \
            outcome text, duration_ms float8, time_to_first_token_ms float8, \
            attribution_source text, attributes jsonb, \
            ingest_key_id uuid, call_scope text, span_key text, response_key text, \
            from_span bool, skip bool NOT NULL DEFAULT false, \
            supersedes bool NOT NULL DEFAULT false \
        ) ON COMMIT DELETE ROWS; \
    END IF; END $$";

const COLUMNS: &str = "id, ts, tenant_id, user_id, session_id, service, trace_id, span_id, \
    provider, operation, request_model, response_model, model, input_tokens, output_tokens, \
    cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, usage_known, \
    cost_usd, outcome, duration_ms, time_to_first_token_ms, attribution_source, attributes, \
    ingest_key_id";

static COPY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY pg_temp.tally_token_staging_v4 ({COLUMNS}, call_scope, span_key, response_key, \
         from_span) FROM STDIN (FORMAT binary)"
    )
});

/// Under the token lock: marks the staged rows already stored (a retry: same
/// `(ts, id)`, whatever tenant the stored row was attributed to since; the
/// primary key `(tenant_id, ts, id)` alone would not see it) and the staged
/// reports of calls already stored (`skip`), and the staged spans that replace a stored log record's row
/// (`supersedes`; its command tag counts them). See [`insert_tokens`]. Each
/// staged row probes the primary key (scalar subqueries with `LIMIT 1` are not
/// turned into joins: a hash join would read all of `token_calls` per batch).
static MATCH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT pg_advisory_xact_lock({TOKEN_USAGE_LOCK_KEY}); \
         UPDATE pg_temp.tally_token_staging_v4 AS s SET skip = true \
         WHERE (SELECT true FROM token_usage AS u WHERE u.ts = s.ts AND u.id = s.id LIMIT 1); \
         UPDATE pg_temp.tally_token_staging_v4 AS s SET skip = true \
         WHERE NOT s.skip AND s.response_key IS NOT NULL AND (SELECT true FROM token_calls AS c \
             WHERE c.tenant_id = s.call_scope AND c.call_key = s.response_key \
               AND c.id <> s.id AND (c.from_span OR NOT s.from_span) LIMIT 1); \
         UPDATE pg_temp.tally_token_staging_v4 AS s SET skip = true \
         WHERE NOT s.from_span AND s.span_key IS NOT NULL AND (SELECT true FROM token_calls AS c \
             WHERE c.tenant_id = s.call_scope AND c.call_key = s.span_key \
               AND c.from_span LIMIT 1); \
         UPDATE pg_temp.tally_token_staging_v4 AS s SET supersedes = true \
         WHERE NOT s.skip AND s.from_span AND ( \
             (SELECT true FROM token_calls AS c WHERE NOT c.from_span \
                AND c.tenant_id = s.call_scope AND c.call_key = s.span_key LIMIT 1) \
             OR (SELECT true FROM token_calls AS c WHERE NOT c.from_span \
                AND c.tenant_id = s.call_scope AND c.call_key = s.response_key LIMIT 1))"
    )
});

/// The stored rows of log records that staged spans replace (index probes, as
/// in [`MATCH_SQL`]).
const SUPERSEDED_SQL: &str = "SELECT DISTINCT c.ts, c.id \
     FROM pg_temp.tally_token_staging_v4 AS s \
     CROSS JOIN LATERAL (VALUES (s.span_key), (s.response_key)) AS k(key) \
     CROSS JOIN LATERAL (SELECT l.ts, l.id FROM token_calls AS l WHERE NOT l.from_span \
         AND l.tenant_id = s.call_scope AND l.call_key = k.key LIMIT 1) AS c \
     WHERE s.supersedes";

/// Records the calls' keys (a span's replace a log record's), inserts the rows
/// not skipped, and answers what was really inserted per (provider, model,
/// outcome), for the metrics: a span replacing a log record's row is not
/// counted again.
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO token_calls (tenant_id, call_key, ts, id, from_span) \
         SELECT DISTINCT ON (s.call_scope, k.key) s.call_scope, k.key, s.ts, s.id, s.from_span \
         FROM pg_temp.tally_token_staging_v4 AS s, \
              LATERAL (VALUES (s.span_key), (s.response_key)) AS k(key) \
         WHERE NOT s.skip AND k.key IS NOT NULL \
         ORDER BY s.call_scope, k.key, s.from_span DESC, s.ts, s.id \
         ON CONFLICT (tenant_id, call_key) DO UPDATE \
             SET ts = excluded.ts, id = excluded.id, from_span = true, created_at = now() \
             WHERE excluded.from_span AND NOT token_calls.from_span; \
         WITH inserted AS ( \
             INSERT INTO token_usage (seq, received_at, {COLUMNS}) \
             SELECT nextval('token_usage_seq'), clock_timestamp(), id, ts, tenant_id, user_id, \
                 session_id, service, trace_id, span_id, provider, operation, request_model, \
                 response_model, model, input_tokens, output_tokens, cache_read_tokens, \
                 cache_write_tokens, reasoning_tokens, total_tokens, usage_known, \
                 cost_usd::numeric(20, 10), outcome, duration_ms, time_to_first_token_ms, \
                 attribution_source, attributes, ingest_key_id \
             FROM pg_temp.tally_token_staging_v4 WHERE NOT skip ORDER BY ts \
             ON CONFLICT DO NOTHING \
             RETURNING id, provider, model, outcome, input_tokens, output_tokens, \
                 cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, usage_known, \
                 tenant_id) \
         SELECT coalesce(provider, ''), coalesce(model, ''), outcome, count(*), \
             coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), \
             coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0), \
             coalesce(sum(reasoning_tokens), 0), coalesce(sum(cost_usd), 0)::float8, \
             count(*) FILTER (WHERE usage_known AND cost_usd IS NULL), tenant_id \
         FROM inserted WHERE id NOT IN \
             (SELECT id FROM pg_temp.tally_token_staging_v4 WHERE supersedes) \
         GROUP BY 1, 2, 3, tenant_id"
    )
});

/// Keys older than this are pruned from `token_calls` (a call's reports arrive
/// within minutes of each other; a day leaves room for queued retries).
const CALL_KEYS_KEPT: &str = "1 day";
/// One token batch in this many prunes `token_calls`.
const PRUNE_EVERY: u64 = 256;
static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Token rows an insert really added, per (provider, model, outcome).
#[derive(Debug, Default)]
pub(crate) struct TokensInserted {
    pub total: u64,
    groups: Vec<TokenGroup>,
}

#[derive(Debug)]
struct TokenGroup {
    provider: String,
    model: String,
    outcome: String,
    rows: u64,
    /// input, output, cache_read, cache_write, reasoning.
    tokens: [u64; 5],
    cost: f64,
    unpriced: u64,
    tenant: String,
}

const TOKEN_KINDS: [&str; 5] = ["input", "output", "cache_read", "cache_write", "reasoning"];

/// Writes `rows` into `token_usage` inside `tx` (COPY into staging, then the
/// lock [`TOKEN_USAGE_LOCK_KEY`](super::TOKEN_USAGE_LOCK_KEY), then `INSERT …
/// ON CONFLICT DO NOTHING`). Returns the number of rows inserted. The daily
/// partitions for the rows' days must exist. Take the activity lock first if
/// the transaction also writes `activity_events` (the writers' fixed order).
pub async fn insert_token_batch(tx: &Transaction<'_>, rows: &[TokenUsage]) -> Result<u64, PgError> {
    let rows: Vec<(&TokenUsage, Option<uuid::Uuid>)> = rows.iter().map(|r| (r, None)).collect();
    Ok(insert_tokens(tx, &rows).await?.total)
}

pub(crate) async fn insert_tokens(
    tx: &Transaction<'_>,
    rows: &[(&TokenUsage, Option<uuid::Uuid>)],
) -> Result<TokensInserted, PgError> {
    let staged = stage_tokens(tx, rows).await?;
    insert_staged_tokens(tx, staged).await
}

/// Token rows `COPY`d into the transaction's staging table by
/// [`stage_tokens`], waiting for [`insert_staged_tokens`].
#[derive(Debug, Default)]
#[must_use = "staged rows are inserted only by insert_staged_tokens"]
pub(crate) struct StagedTokens {
    copied: u64,
}

/// The first half of [`insert_tokens`]: one row per call `COPY`d into the
/// per-connection staging table. It takes no lock, so the writer runs it
/// before the activity lock and holds that lock for less.
pub(crate) async fn stage_tokens(
    tx: &Transaction<'_>,
    rows: &[(&TokenUsage, Option<uuid::Uuid>)],
) -> Result<StagedTokens, PgError> {
    if rows.is_empty() {
        return Ok(StagedTokens::default());
    }
    let rows = one_per_call(rows);
    tx.batch_execute(STAGING_DDL).await?;
    let copied = copy_rows(tx, COPY_SQL.as_str(), &rows, copy::token_row).await?;
    Ok(StagedTokens { copied })
}

/// The second half of [`insert_tokens`], in the same transaction as
/// [`stage_tokens`]: under the token lock, skips what is already stored and
/// inserts the rest (see [`MATCH_SQL`] and [`INSERT_SQL`]).
pub(crate) async fn insert_staged_tokens(
    tx: &Transaction<'_>,
    staged: StagedTokens,
) -> Result<TokensInserted, PgError> {
    if staged.copied == 0 {
        return Ok(TokensInserted::default());
    }
    let superseding = tx
        .simple_query(&MATCH_SQL)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .last()
        .unwrap_or(0);
    if superseding > 0 {
        supersede(tx).await?;
    }
    if BATCHES
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(PRUNE_EVERY)
    {
        tx.execute(
            &format!(
                "DELETE FROM token_calls WHERE created_at < now() - interval '{CALL_KEYS_KEPT}'"
            ),
            &[],
        )
        .await?;
    }
    let messages = tx.simple_query(&INSERT_SQL).await?;
    let mut inserted = TokensInserted::default();
    for message in &messages {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        if row.len() != 12 {
            continue;
        }
        let int = |i: usize| -> u64 { row.get(i).and_then(|c| c.parse().ok()).unwrap_or(0) };
        let group = TokenGroup {
            provider: row.get(0).unwrap_or_default().to_string(),
            model: row.get(1).unwrap_or_default().to_string(),
            outcome: row.get(2).unwrap_or_default().to_string(),
            rows: int(3),
            tokens: [int(4), int(5), int(6), int(7), int(8)],
            cost: row.get(9).and_then(|c| c.parse().ok()).unwrap_or(0.0),
            unpriced: int(10),
            tenant: row.get(11).unwrap_or_default().to_string(),
        };
        inserted.total += group.rows;
        inserted.groups.push(group);
    }
    Ok(inserted)
}

/// Deletes the stored rows of log records that staged spans report again (the
/// span's row is preferred), taking them out of the rollup first if they were
/// folded (see [`unfold_token_rows`]).
async fn supersede(tx: &Transaction<'_>) -> Result<(), PgError> {
    let rows: Vec<(DateTime<Utc>, uuid::Uuid)> = tx
        .query(SUPERSEDED_SQL, &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    delete_token_rows(tx, &rows).await?;
    Ok(())
}

/// Deletes token rows by `(ts, id)`, keeping the rollups equal to the sums over
/// the rows (rows already folded are unfolded first). Returns the rows deleted.
pub(crate) async fn delete_token_rows(
    tx: &Transaction<'_>,
    rows: &[(DateTime<Utc>, uuid::Uuid)],
) -> Result<u64, PgError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let refold = unfold_token_rows(tx, rows).await?;
    let (ts, ids): (Vec<DateTime<Utc>>, Vec<uuid::Uuid>) = rows.iter().copied().unzip();
    let deleted = tx
        .execute(
            "DELETE FROM token_usage WHERE (ts, id) IN \
             (SELECT * FROM unnest($1::timestamptz[], $2::uuid[]))",
            &[&ts, &ids],
        )
        .await?;
    // Adds back nothing for the deleted rows; keeps the contract of `TokenRefold`.
    refold.refold(tx).await?;
    Ok(deleted)
}

/// Deletes stored token rows that stop counting (agent rows whose model calls
/// reported usage later: the agent rule, see `docs/tokens.md`), in one
/// transaction, keeping the rollups equal to the rows. Returns the rows deleted
/// (rows already gone are skipped).
pub async fn uncount_token_rows(
    client: &mut Client,
    rows: &[(DateTime<Utc>, uuid::Uuid)],
) -> Result<u64, PgError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let tx = client.transaction().await?;
    let deleted = delete_token_rows(&tx, rows).await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Keeps one report per call among the rows of one batch: a span over log
/// records of the same call (same trace and span id, or same response id), else
/// the earliest (then the smallest id); two log records match only by response
/// id (several log records in one span's context may be several calls). Exact
/// duplicates (same id) are kept once.
fn one_per_call<'a>(
    rows: &[(&'a TokenUsage, Option<uuid::Uuid>)],
) -> Vec<(&'a TokenUsage, Option<uuid::Uuid>)> {
    use std::collections::HashMap;
    let better = |a: &TokenUsage, b: &TokenUsage| {
        (a.report.from_span, std::cmp::Reverse((a.ts, a.id)))
            > (b.report.from_span, std::cmp::Reverse((b.ts, b.id)))
    };
    let mut dropped = vec![false; rows.len()];
    let mut holders: HashMap<(&str, &str), usize> = HashMap::new();
    let mut ids: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (i, (row, _)) in rows.iter().enumerate() {
        if ids.insert(row.id, i).is_some() {
            dropped[i] = true;
            continue;
        }
        let report = &row.report;
        let keys = [
            (report.span_key.as_deref(), true),
            (report.response_key.as_deref(), false),
        ];
        for (key, by_span) in keys {
            let Some(key) = key else { continue };
            if dropped[i] {
                break;
            }
            match holders.get(&(report.scope.as_str(), key)).copied() {
                None => {
                    holders.insert((report.scope.as_str(), key), i);
                }
                Some(j) if dropped[j] => {
                    holders.insert((report.scope.as_str(), key), i);
                }
                Some(j) => {
                    let other = rows[j].0;
                    if by_span && other.report.from_span == report.from_span {
                        continue;
                    }
                    if better(row, other) {
                        dropped[j] = true;
                        holders.insert((report.scope.as_str(), key), i);
                    } else {
                        dropped[i] = true;
                    }
                }
            }
        }
    }
    rows.iter()
        .zip(dropped)
        .filter(|(_, dropped)| !dropped)
        .map(|(row, _)| *row)
        .collect()
}

/// Updates the LLM counters with what a committed batch inserted.
pub(crate) fn committed(inserted: &TokensInserted) {
    if inserted.total == 0 {
        return;
    }
    let m = metrics();
    m.rows_written
        .get_or_create(&TableLabels {
            table: "token_usage",
        })
        .inc_by(inserted.total);
    let with_tenant = m.tenant_labels.cap() > 0;
    for g in &inserted.groups {
        let provider = g.provider.clone();
        let model = m.model_labels.label(&g.model);
        let tenant = with_tenant.then(|| m.tenant_labels.label(&g.tenant));
        m.llm_requests
            .get_or_create(&LlmRequestLabels {
                provider: provider.clone(),
                model: model.clone(),
                outcome: Outcome::parse(&g.outcome).unwrap_or_default().as_str(),
                tenant: tenant.clone(),
            })
            .inc_by(g.rows);
        for (kind, tokens) in TOKEN_KINDS.iter().zip(g.tokens) {
            if tokens > 0 {
                m.llm_tokens
                    .get_or_create(&TokenLabels {
                        provider: provider.clone(),
                        model: model.clone(),
                        kind,
                        tenant: tenant.clone(),
                    })
                    .inc_by(tokens);
            }
        }
        if g.cost > 0.0 {
            m.llm_cost_usd
                .get_or_create(&ModelLabels {
                    provider: provider.clone(),
                    model: model.clone(),
                    tenant: tenant.clone(),
                })
                .inc_by(g.cost);
        }
        if g.unpriced > 0 {
            m.llm_unpriced_requests
                .get_or_create(&ModelOnlyLabels { model, tenant })
                .inc_by(g.unpriced);
        }
    }
}

/// Who a trace's token rows are attributed to (see [`attribute_traces`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceIdentity {
    /// The tenant.
    pub tenant_id: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// The session.
    pub session_id: Option<String>,
}

/// One trace to attribute: its id (lowercase hex), who, and the earliest `ts`
/// of its rows that may still be unattributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceAttribution {
    /// The trace id (lowercase hex).
    pub trace_id: String,
    /// Who its rows are attributed to.
    pub identity: TraceIdentity,
    /// The earliest `ts` of its rows that may still be unattributed.
    pub since: DateTime<Utc>,
}

/// The columns an attribution sets from `a` (each kept if the row has it).
const SET_FROM_A: &str = "tenant_id = CASE WHEN t.tenant_id = '' THEN coalesce(a.tenant_id, '') \
         ELSE t.tenant_id END, \
     user_id = coalesce(t.user_id, a.user_id), \
     session_id = coalesce(t.session_id, a.session_id), \
     attribution_source = 'trace'";

/// A row is attributed only within its tenant: rows that have one take only
/// an identity of the same tenant (a tenant-bound ingest key stores its rows
/// with its tenant; an identity sent under another tenant never reaches them).
const SAME_TENANT: &str = "AND (t.tenant_id = '' OR t.tenant_id = coalesce(a.tenant_id, ''))";

/// The attributions as a relation `a(trace_id, tenant_id, user_id, session_id, since)`.
const ATTRIBUTIONS: &str = "unnest($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::timestamptz[]) AS a(trace_id, tenant_id, user_id, session_id, since)";

/// Attributes the stored, still unattributed token rows of the given traces
/// (one call per export request), in two steps:
///
/// 1. The common case, rows not yet folded into `token_usage_daily` (the rollup
///    waits for the attribution delay): one transaction holding
///    `pg_advisory_xact_lock_shared(ROLLUP_LOCK_KEY)` (no rollup run meanwhile;
///    concurrent attributions do not wait for each other) runs
///
///    ```sql
///    UPDATE token_usage SET tenant_id, user_id, session_id (each kept if set),
///                           attribution_source = 'trace'
///    WHERE trace_id = $trace AND attribution_source = 'none' AND ts >= $since
///      AND tenant_id IN ('', $tenant)
///      AND seq > (the token_usage_daily watermark)
///    ```
/// 2. Rows still unattributed after that were already folded (the identity came
///    after the attribution delay): they are updated between
///    [`unfold_token_rows`](super::unfold_token_rows) and
///    [`TokenRefold::refold`](super::TokenRefold), which move their counts to the
///    new (tenant, user) group of the rollup in the same transaction.
///
/// Either way raw rows and rollups agree and nothing is counted twice. `seq` is
/// not changed: a SIEM tail by `seq` that read a row before sees the attribution
/// only by reading it again. Returns the number of rows updated.
pub async fn attribute_traces(
    client: &mut Client,
    traces: &[TraceAttribution],
) -> Result<u64, PgError> {
    if traces.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = traces.iter().map(|t| t.trace_id.as_str()).collect();
    let tenants: Vec<Option<&str>> = traces
        .iter()
        .map(|t| t.identity.tenant_id.as_deref())
        .collect();
    let users: Vec<Option<&str>> = traces
        .iter()
        .map(|t| t.identity.user_id.as_deref())
        .collect();
    let sessions: Vec<Option<&str>> = traces
        .iter()
        .map(|t| t.identity.session_id.as_deref())
        .collect();
    let since: Vec<DateTime<Utc>> = traces.iter().map(|t| t.since).collect();

    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&ROLLUP_LOCK_KEY],
    )
    .await?;
    let mut updated = tx
        .execute(
            &format!(
                "UPDATE token_usage AS t SET {SET_FROM_A} FROM {ATTRIBUTIONS} \
                 WHERE t.trace_id = a.trace_id AND t.attribution_source = 'none' {SAME_TENANT} \
                   AND t.ts >= a.since \
                   AND t.seq > coalesce((SELECT last_seq FROM rollup_watermarks \
                                         WHERE name = $6), 0)"
            ),
            &[&ids, &tenants, &users, &sessions, &since, &TOKEN_WATERMARK],
        )
        .await?;
    tx.commit().await?;

    // Rows folded already: (ts, id) and the index of their attribution.
    let folded: Vec<(DateTime<Utc>, uuid::Uuid)> = client
        .query(
            &format!(
                "SELECT t.ts, t.id FROM token_usage AS t, {ATTRIBUTIONS} \
                 WHERE t.trace_id = a.trace_id AND t.attribution_source = 'none' {SAME_TENANT} \
                   AND t.ts >= a.since"
            ),
            &[&ids, &tenants, &users, &sessions, &since],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if folded.is_empty() {
        return Ok(updated);
    }
    let tx = client.transaction().await?;
    let refold = unfold_token_rows(&tx, &folded).await?;
    let (ts, row_ids): (Vec<DateTime<Utc>>, Vec<uuid::Uuid>) = folded.into_iter().unzip();
    updated += tx
        .execute(
            &format!(
                "UPDATE token_usage AS t SET {SET_FROM_A} FROM {ATTRIBUTIONS} \
                 WHERE t.trace_id = a.trace_id AND t.attribution_source = 'none' {SAME_TENANT} \
                   AND t.ts >= a.since \
                   AND (t.ts, t.id) IN (SELECT * FROM unnest($6::timestamptz[], $7::uuid[]))"
            ),
            &[&ids, &tenants, &users, &sessions, &since, &ts, &row_ids],
        )
        .await?;
    refold.refold(&tx).await?;
    tx.commit().await?;
    Ok(updated)
}

#[cfg(test)]
mod tests;
