//! The activity rows' insert, called by the batching writer (`writer.rs`)
//! inside each batch's transaction.
//!
//! Direct path: reserve one `seq` per row from `activity_events_seq` and a
//! ticket (`tally_reserve_activity_seq`, migration 32, which also takes
//! [`ACTIVITY_EVENTS_LOCK_KEY`](super::ACTIVITY_EVENTS_LOCK_KEY) shared until
//! `COMMIT`), set a savepoint, and binary-`COPY` the rows, ordered by `ts` and
//! numbered from the reserved range, straight into `activity_events`, while
//! other writers copy theirs. Then wait until the batch holding the previous
//! ticket has ended, note the rows' days in `tally_tail_days` (left to the
//! writer, see [`TailDays`]) and link the rows; the writer then writes its token
//! rows and commits. The counts per (action, outcome, tenant, verdict) are
//! taken from the rows themselves.
//!
//! Staged path, only when the direct `COPY` fails with a unique violation (a
//! resend of a stored row, or one record twice in the batch): roll back to the
//! savepoint, binary `COPY` into a per-connection temporary staging table, then
//! `INSERT … SELECT … ORDER BY ts ON CONFLICT DO NOTHING` numbered from the
//! reserved range (a skipped duplicate leaves its value unused), counting what
//! it really inserted, and wait for its turn as above.
//!
//! A role that row-level security applies to (not a superuser, no
//! `BYPASSRLS`; the private PostgreSQL's own role has it) cannot `COPY FROM` into
//! `activity_events` at all (`0A000`): the range reservation asks
//! `row_security_active` first, and when it applies the batch and every later
//! one of that exporter are staged ([`DirectCopy`]), under the lock taken
//! exclusively until `COMMIT` and numbered by `nextval`.
//!
//! Either way `seq` order is commit order (the tickets are taken in the order
//! of the ranges, and the exclusive lock waits for every shared holder), and
//! within a batch it follows `ts`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

use tokio_postgres::error::SqlState;
use tokio_postgres::{SimpleQueryMessage, Transaction};

use tally_model::ActivityEvent;

use super::chain::link::{self, LinkState, Links, PreparedLinks};
use super::chain::ChainRow;
use super::copy::{self, copy_rows};
use super::personal::PersonalKeys;
use super::tokens::TokensInserted;
use super::{PgError, TraceAttribution, ACTIVITY_EVENTS_LOCK_KEY, ACTIVITY_TICKET_LOCK_CLASS};

const STAGING_DDL: &str = "DO $$ BEGIN \
    IF to_regclass('pg_temp.tally_activity_staging_v5') IS NULL THEN \
        CREATE TEMP TABLE tally_activity_staging_v5 ( \
            id uuid, ts timestamptz, tenant_id text, user_id text, session_id text, \
            action text, outcome text, resource_type text, resource_id text, service text, \
            trace_id text, span_id text, attributes jsonb, taxonomy_valid boolean, \
            taxonomy_reason text, ingest_key_id uuid, duration_ms double precision, \
            name text, error_type text, error_message text, personal_keys text[] \
        ) ON COMMIT DELETE ROWS; \
    END IF; END $$";

const COPY_SQL: &str = "COPY pg_temp.tally_activity_staging_v5 (id, ts, tenant_id, user_id, \
    session_id, action, outcome, resource_type, resource_id, service, trace_id, span_id, \
    attributes, taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name, error_type, \
    error_message, personal_keys) FROM STDIN (FORMAT binary)";

/// The staged rows' insert into `activity_events`, `seq` given by `seq_expr`.
fn insert_from_staging(seq_expr: &str) -> String {
    format!(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, session_id, action, \
             outcome, resource_type, resource_id, service, trace_id, span_id, attributes, \
             taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name, error_type, \
             error_message, personal_keys) \
         SELECT id, {seq_expr}, ts, tenant_id, user_id, session_id, action, \
             outcome, resource_type, resource_id, service, trace_id, span_id, attributes, \
             taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name, error_type, \
             error_message, personal_keys \
         FROM pg_temp.tally_activity_staging_v5 ORDER BY ts \
         ON CONFLICT DO NOTHING"
    )
}

/// `insert` answering, per (action, outcome, tenant, verdict), how many rows it
/// really inserted (duplicates skipped), for the committed-rows counters.
fn counted(insert: &str) -> String {
    format!(
        "WITH inserted AS ({insert} RETURNING action, outcome, tenant_id, taxonomy_valid) \
         SELECT action, outcome, tenant_id, taxonomy_valid, count(*) FROM inserted \
         GROUP BY action, outcome, tenant_id, taxonomy_valid"
    )
}

/// The staged path on its own: the exclusive lock, then the counted insert
/// numbered by `nextval` (one simple-protocol round trip).
static INSERT_COUNTED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT pg_advisory_xact_lock({ACTIVITY_EVENTS_LOCK_KEY}); {}",
        counted(&insert_from_staging("nextval('activity_events_seq')"))
    )
});

/// Rows an insert really added, in total and per (action, outcome, tenant).
#[derive(Debug, Default)]
pub(crate) struct Inserted {
    pub total: u64,
    pub groups: Vec<InsertedGroup>,
    /// The `token_usage` rows of the same batch.
    pub tokens: TokensInserted,
    /// `rejected_events` rows added (retries of quarantined records skipped).
    pub rejected: u64,
    /// Traces identified and pending in `trace_identities` after this batch, by
    /// (scope, trace id): their stored rows are to be attributed.
    pub ready: Vec<((String, String), TraceAttribution)>,
    /// Activity rows the writer linked into the tamper chain itself.
    pub linked: u64,
    /// How long the direct path waited for its turn (the previous ticket's
    /// batch to end), for the writer's debug log.
    pub turn: std::time::Duration,
}

/// How many rows of one (action, outcome, tenant) an insert added.
#[derive(Debug)]
pub(crate) struct InsertedGroup {
    pub action: String,
    pub outcome: String,
    pub tenant_id: String,
    /// The taxonomy verdict of these rows (`None`: not checked).
    pub taxonomy_valid: Option<bool>,
    pub rows: u64,
}

/// Writes `events` into `activity_events` inside `tx`, the way the exporter's
/// writers do: a `seq` range and a ticket reserved, the rows binary-`COPY`d
/// straight into the table (if one of them is already stored, through a
/// temporary staging table and `INSERT … ON CONFLICT DO NOTHING` instead), then
/// a wait until the previous ticket's batch has ended (see the module's doc).
/// Returns the number of rows inserted (duplicates of rows already stored are
/// skipped).
///
/// The ticket is held until `tx` ends, and the next batch waits for it: commit
/// promptly. The daily partitions
/// for the events' days must exist (the exporter creates them before calling
/// this; see [`create_partitions`](super::create_partitions)).
///
/// The rows' personal keys are those of [`PersonalKeys::default`] (the user id
/// under other keys); see [`insert_activity_batch_with`].
pub async fn insert_activity_batch(
    tx: &Transaction<'_>,
    events: &[ActivityEvent],
) -> Result<u64, PgError> {
    insert_activity_batch_with(tx, events, &PersonalKeys::default()).await
}

/// [`insert_activity_batch`] naming the personal keys `personal` declares.
pub async fn insert_activity_batch_with(
    tx: &Transaction<'_>,
    events: &[ActivityEvent],
    personal: &PersonalKeys,
) -> Result<u64, PgError> {
    if events.is_empty() {
        return Ok(0);
    }
    Ok(insert_rows(
        tx,
        events.iter().map(|e| (e, None)).collect(),
        personal,
        &DirectCopy::default(),
        false,
    )
    .await?
    .total)
}

/// `COPY` straight into `activity_events`: `seq` first, then the staging
/// columns in [`COPY_SQL`]'s order, then `chain_form` and `chain_salt` (see
/// [`copy::activity_row_with_seq`]).
const DIRECT_COPY_SQL: &str = "COPY activity_events (seq, id, ts, tenant_id, user_id, \
    session_id, action, outcome, resource_type, resource_id, service, trace_id, span_id, \
    attributes, taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name, error_type, \
    error_message, personal_keys, chain_form, chain_salt) FROM STDIN (FORMAT binary)";

/// The savepoint the direct `COPY` runs under.
const SAVEPOINT: &str = "tally_direct_copy";

/// `events`, each with the ingest key that sent it: the direct path, and the
/// staged one for a batch that meets a stored row (see the module's doc). With
/// `link`, the direct path also links the rows into the tamper chain when the
/// chain is caught up (see `chain::link`).
pub(crate) async fn insert_rows(
    tx: &Transaction<'_>,
    events: Vec<(&ActivityEvent, Option<uuid::Uuid>)>,
    personal: &PersonalKeys,
    direct: &DirectCopy,
    link: bool,
) -> Result<Inserted, PgError> {
    if events.is_empty() {
        return Ok(Inserted::default());
    }
    if !direct.allowed() {
        let rows: Vec<copy::ActivityRow<'_>> = events
            .iter()
            .map(|(event, _)| copy::ActivityRow {
                event,
                personal_keys: personal.of(event),
            })
            .collect();
        let refs: Vec<(&copy::ActivityRow<'_>, Option<uuid::Uuid>)> = rows
            .iter()
            .zip(&events)
            .map(|(row, (_, key))| (row, *key))
            .collect();
        // Staging takes the lock itself, after its `COPY`.
        return insert_staged(tx, &refs, None).await;
    }
    // The rows' `chain_salt`s, random, drawn for the whole batch at once.
    let mut salts = vec![[0u8; 16]; events.len()];
    getrandom::fill(salts.as_flattened_mut())
        .map_err(|e| PgError::io("drawing the rows' salts", std::io::Error::other(e)))?;
    let mut rows: Vec<(copy::SeqActivityRow<'_>, Option<uuid::Uuid>)> = events
        .into_iter()
        .zip(salts)
        .map(|((event, key), salt)| {
            let row = copy::ActivityRow {
                event,
                personal_keys: personal.of(event),
            };
            (copy::SeqActivityRow { seq: 0, salt, row }, key)
        })
        .collect();
    // Within the batch `seq` follows `ts`, as the staged path's ORDER BY gives it.
    rows.sort_by_key(|(r, _)| r.row.event.ts);
    let n = rows.len();
    // The links' canonical forms, computed before the lock (seq and received_at
    // are filled in once known).
    let prepared = if link {
        PreparedLinks::new(
            rows.iter()
                .map(|(r, _)| (r.row.event, &r.salt, &r.row.personal_keys[..])),
        )
    } else {
        None
    };
    // Parsed before the lock: one round trip less while it is held.
    let (copy_statement, statements) = match &prepared {
        Some(_) => {
            let (copy, state, write) = tokio::try_join!(
                tx.prepare(DIRECT_COPY_SQL),
                tx.prepare(link::STATE_SQL),
                tx.prepare(link::WRITE_SQL)
            )?;
            (copy, Some((state, write)))
        }
        None => (tx.prepare(DIRECT_COPY_SQL).await?, None),
    };
    // The reserved range and the ticket in one round trip, then a savepoint.
    // No range when row security applies to this role: PostgreSQL refuses its
    // `COPY FROM` into the table (and a refused `COPY` would leave the
    // connection's protocol state behind), so the rows are staged instead.
    let reserve = format!(
        "SELECT CASE WHEN row_security_active('activity_events') THEN 'refused' \
             ELSE (SELECT r.ticket || ' ' || r.last_seq FROM tally_reserve_activity_seq({n}) r) \
         END; SAVEPOINT {SAVEPOINT}"
    );
    let messages = tx.simple_query(&reserve).await?;
    let answer: String = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .next_back()
        .ok_or_else(|| PgError::Integrity("no seq range reserved".into()))?;
    let Some(reservation) = Reservation::parse(&answer, n) else {
        tracing::info!(
            "row security applies to the writer's role: activity rows go through staging"
        );
        direct.refuse();
        let refs: Vec<(&copy::ActivityRow<'_>, Option<uuid::Uuid>)> =
            rows.iter().map(|(row, key)| (&row.row, *key)).collect();
        return insert_staged(tx, &refs, None).await;
    };
    let (first, last) = (reservation.first, reservation.last);
    for (i, (row, _)) in rows.iter_mut().enumerate() {
        row.seq = first + i as i64;
    }
    let refs: Vec<(&copy::SeqActivityRow<'_>, Option<uuid::Uuid>)> =
        rows.iter().map(|(row, key)| (row, *key)).collect();
    // The `COPY` runs while other writers copy theirs: nothing it holds is
    // waited for before this batch's turn comes (below).
    let copied = copy_rows(tx, &copy_statement, &refs, copy::activity_row_with_seq).await;
    let mut inserted = match copied {
        Ok(copied) if copied == n as u64 => count_groups(&rows),
        Ok(copied) => {
            return Err(PgError::Integrity(format!(
                "COPY stored {copied} of {n} activity rows"
            )))
        }
        Err(error) if error.sql_state() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::debug!(
                rows = n,
                "a stored row in the batch: written through staging"
            );
            tx.batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                .await?;
            let refs: Vec<(&copy::ActivityRow<'_>, Option<uuid::Uuid>)> =
                rows.iter().map(|(row, key)| (&row.row, *key)).collect();
            let inserted = insert_staged(tx, &refs, Some(first)).await?;
            // Linked by the chainer; committed in turn all the same.
            let (wait, days) = (reservation.wait_for_previous(), TailDays::of(&rows));
            tokio::try_join!(tx.batch_execute(&wait), days.note(tx))?;
            return Ok(inserted);
        }
        Err(error) => return Err(error),
    };
    // This batch's turn: the previous ticket's batch has ended, so every row
    // with a lower `seq` is committed (or never will be) before this one
    // commits. Then (pipelined) the rows' days are noted for the live
    // aggregates and the chain's state is read, which sees those rows.
    let wait = reservation.wait_for_previous();
    let days = TailDays::of(&rows);
    let turn = std::time::Instant::now();
    match (prepared, &statements) {
        (Some(prepared), Some((state_statement, write))) => {
            let tenants = prepared.tenants();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&super::chain::CHAIN_WATERMARK, &tenants];
            let ((), (), state) = tokio::try_join!(
                tx.batch_execute(&wait),
                days.note(tx),
                tx.query(state_statement, &params)
            )?;
            inserted.turn = turn.elapsed();
            if let Some(state) = LinkState::from_rows(&state)? {
                inserted.linked = write_links(tx, write, prepared, &state, first, last).await?;
            }
        }
        _ => {
            tokio::try_join!(tx.batch_execute(&wait), days.note(tx))?;
            inserted.turn = turn.elapsed();
        }
    }
    Ok(inserted)
}

/// The largest `seq` per UTC day of `ts` of a direct-path batch: its entries in
/// `tally_tail_days`, which the `COPY`'s trigger leaves to the writer
/// (migration 32) and the writer upserts once its turn has come.
#[derive(Debug)]
struct TailDays {
    days: Vec<chrono::NaiveDate>,
    max_seqs: Vec<i64>,
}

impl TailDays {
    fn of(rows: &[(copy::SeqActivityRow<'_>, Option<uuid::Uuid>)]) -> TailDays {
        let mut by_day: std::collections::BTreeMap<chrono::NaiveDate, i64> = Default::default();
        for (row, _) in rows {
            let max = by_day
                .entry(row.row.event.ts.date_naive())
                .or_insert(row.seq);
            *max = (*max).max(row.seq);
        }
        let (days, max_seqs) = by_day.into_iter().unzip();
        TailDays { days, max_seqs }
    }

    async fn note(&self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            "INSERT INTO tally_tail_days AS t (raw_table, day, max_seq) \
             SELECT 'activity_events', d, m FROM unnest($1::date[], $2::int8[]) AS x(d, m) \
             ON CONFLICT (raw_table, day) \
             DO UPDATE SET max_seq = EXCLUDED.max_seq WHERE t.max_seq < EXCLUDED.max_seq",
            &[&self.days, &self.max_seqs],
        )
        .await
        .map(|_| ())
    }
}

/// A direct-path writer's reservation: its `seq` range and its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reservation {
    ticket: i64,
    first: i64,
    last: i64,
}

impl Reservation {
    /// Parses `tally_reserve_activity_seq`'s answer (`"<ticket> <last_seq>"`) for
    /// `n` rows; `None` for `'refused'` (row security applies).
    fn parse(answer: &str, n: usize) -> Option<Reservation> {
        let (ticket, last) = answer.split_once(' ')?;
        let (ticket, last) = (ticket.parse().ok()?, last.parse::<i64>().ok()?);
        Some(Reservation {
            ticket,
            first: last - (n as i64 - 1),
            last,
        })
    }

    /// Waits until the batch holding the previous ticket has ended (its lock
    /// key is the ticket modulo 2^31, as `tally_reserve_activity_seq` takes it).
    fn wait_for_previous(&self) -> String {
        let previous = (self.ticket - 1).rem_euclid(1 << 31);
        format!("SELECT pg_advisory_xact_lock_shared({ACTIVITY_TICKET_LOCK_CLASS}, {previous})")
    }
}

/// Links the batch's rows `first..=last` when the chain is caught up: answers how
/// many rows it linked (0: left to the chainer).
async fn write_links(
    tx: &Transaction<'_>,
    write: &tokio_postgres::Statement,
    prepared: PreparedLinks<'_>,
    state: &LinkState,
    first: i64,
    last: i64,
) -> Result<u64, PgError> {
    let mut heads = state.heads.clone();
    let mut backlog = Vec::new();
    if state.watermark != first - 1 {
        // A gap between the watermark and the range: a rolled-back reservation
        // (no row) or committed rows still to link, read back (bounded).
        let limit = link::MAX_BACKLOG_ROWS + 1;
        type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
        let row_params: [Param<'_>; 3] = [&state.watermark, &first, &limit];
        let head_params: [Param<'_>; 2] = [&state.watermark, &first];
        let (rows, head_rows) = tokio::try_join!(
            tx.query(link::BACKLOG_SQL.as_str(), &row_params),
            tx.query(link::BACKLOG_HEADS_SQL, &head_params)
        )?;
        if rows.len() as i64 > link::MAX_BACKLOG_ROWS {
            return Ok(0);
        }
        link::read_heads(&head_rows, 0, &mut heads)?;
        backlog = rows
            .iter()
            .map(ChainRow::from_row)
            .collect::<Result<Vec<_>, _>>()?;
    }
    let links = prepared.links(first, state.now, &backlog, heads)?;
    let stored = links.stored(link::MIN_RUN_LINKS)?;
    let (single, runs) = (&stored.single, &stored.runs);
    let wrote: i64 = tx
        .query_one(
            write,
            &[
                &super::chain::CHAIN_WATERMARK,
                &last,
                &state.watermark,
                &single.tenant,
                &single.seq,
                &single.day,
                &single.prev_seq,
                &single.prev_hash,
                &single.hash,
                &runs.tenant,
                &runs.offset,
                &runs.len,
                &runs.prev_seq,
                &Links::byteas(&runs.prev_hash),
                &runs.hashes,
                &runs.seqs,
                &runs.days,
                &links.head_tenant,
                &links.head_seq,
                &Links::byteas(&links.head_hash),
            ],
        )
        .await?
        .try_get(0)?;
    if wrote == 1 {
        Ok(links.seq.len() as u64)
    } else {
        tracing::debug!("the chain moved meanwhile: the batch is left to the chainer");
        Ok(0)
    }
}

/// Whether the direct `COPY` may be tried: PostgreSQL refuses `COPY FROM` into
/// a table whose row-level security applies to the writing role, so once a
/// batch found it applies, every later batch of the same exporter is staged.
#[derive(Debug)]
pub(crate) struct DirectCopy(AtomicBool);

impl Default for DirectCopy {
    fn default() -> Self {
        DirectCopy(AtomicBool::new(true))
    }
}

impl DirectCopy {
    fn allowed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn refuse(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// What the direct path inserted (every row), per (action, outcome, tenant,
/// verdict): one entry per group. The rows' keys are sorted and counted by
/// runs (no hashing: SipHash of the three texts per row was ~1.5% of the
/// collector's samples), groups in key order.
fn count_groups(rows: &[(copy::SeqActivityRow<'_>, Option<uuid::Uuid>)]) -> Inserted {
    let mut keys: Vec<(&str, &str, &str, Option<bool>)> = rows
        .iter()
        .map(|(row, _)| {
            let e = row.row.event;
            (
                e.tenant_id.as_deref().unwrap_or(""),
                e.action.as_str(),
                e.outcome.as_str(),
                e.taxonomy_valid,
            )
        })
        .collect();
    keys.sort_unstable();
    Inserted {
        total: rows.len() as u64,
        groups: keys
            .chunk_by(|a, b| a == b)
            .map(|run| {
                let (tenant_id, action, outcome, taxonomy_valid) = run[0];
                InsertedGroup {
                    action: action.to_string(),
                    outcome: outcome.to_string(),
                    tenant_id: tenant_id.to_string(),
                    taxonomy_valid,
                    rows: run.len() as u64,
                }
            })
            .collect(),
        ..Inserted::default()
    }
}

/// The staged path: `COPY` into the temporary staging table, then `INSERT …
/// SELECT … ON CONFLICT DO NOTHING`, counting what it really inserted. Without
/// a range, under the exclusive lock and numbered by `nextval`; with the
/// direct path's range (starting at `first`, as many values as rows), numbered
/// from it in `ts` order (a skipped duplicate leaves its value unused).
async fn insert_staged(
    tx: &Transaction<'_>,
    rows: &[(&copy::ActivityRow<'_>, Option<uuid::Uuid>)],
    first: Option<i64>,
) -> Result<Inserted, PgError> {
    tx.batch_execute(STAGING_DDL).await?;
    let copied = copy_rows(tx, COPY_SQL, rows, copy::activity_row).await?;
    if copied == 0 {
        return Ok(Inserted::default());
    }
    let in_range;
    let sql = match first {
        None => INSERT_COUNTED_SQL.as_str(),
        Some(first) => {
            in_range = counted(&insert_from_staging(&format!(
                "{} + row_number() OVER (ORDER BY ts)",
                first - 1
            )));
            in_range.as_str()
        }
    };
    let messages = tx.simple_query(sql).await?;
    let mut inserted = Inserted::default();
    for message in &messages {
        // The lock's SELECT answers a one-column row first: only the counts have five.
        if let SimpleQueryMessage::Row(row) = message {
            if row.len() != 5 {
                continue;
            }
            let rows: u64 = row.get(4).and_then(|c| c.parse().ok()).unwrap_or(0);
            inserted.total += rows;
            inserted.groups.push(InsertedGroup {
                action: row.get(0).unwrap_or_default().to_string(),
                outcome: row.get(1).unwrap_or_default().to_string(),
                tenant_id: row.get(2).unwrap_or_default().to_string(),
                // Simple-protocol text: "t", "f", or NULL (not checked).
                taxonomy_valid: row.get(3).map(|v| v == "t"),
                rows,
            });
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::{ACTIVITY_RESERVE_LOCK_KEY, MIGRATIONS};

    #[test]
    fn a_reservation_is_read_from_the_answer_and_refusal_is_none() {
        assert_eq!(
            Reservation::parse("12 100", 5),
            Some(Reservation {
                ticket: 12,
                first: 96,
                last: 100
            })
        );
        assert_eq!(Reservation::parse("refused", 5), None);
        assert_eq!(Reservation::parse("12 x", 5), None);
    }

    #[test]
    fn the_wait_names_the_previous_tickets_key_modulo_2_pow_31() {
        let at = |ticket| Reservation {
            ticket,
            first: 1,
            last: 1,
        };
        let class = ACTIVITY_TICKET_LOCK_CLASS;
        assert_eq!(
            at(7).wait_for_previous(),
            format!("SELECT pg_advisory_xact_lock_shared({class}, 6)")
        );
        assert_eq!(
            at(1).wait_for_previous(),
            format!("SELECT pg_advisory_xact_lock_shared({class}, 0)")
        );
        assert_eq!(
            at(1 << 31).wait_for_previous(),
            format!("SELECT pg_advisory_xact_lock_shared({class}, 2147483647)")
        );
        assert_eq!(
            at((1 << 31) + 1).wait_for_previous(),
            format!("SELECT pg_advisory_xact_lock_shared({class}, 0)")
        );
    }

    #[test]
    fn groups_count_every_row_once_per_action_outcome_tenant_and_verdict() {
        use tally_model::Outcome;
        let events: Vec<ActivityEvent> = (0..500u32)
            .map(|i| ActivityEvent {
                ts: chrono::DateTime::from_timestamp(1_800_000_000 + i64::from(i), 0)
                    .unwrap_or_default(),
                tenant_id: (i % 7 != 0).then(|| format!("t{}", i % 5)),
                action: ["doc.read", "doc.write", "auth.login"][(i % 3) as usize].into(),
                outcome: if i % 4 == 0 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                taxonomy_valid: [None, Some(true), Some(false)][(i % 11 % 3) as usize],
                ..super::super::test_rows::event(u128::from(i))
            })
            .collect();
        let rows: Vec<(copy::SeqActivityRow<'_>, Option<uuid::Uuid>)> = events
            .iter()
            .map(|event| {
                let row = copy::ActivityRow {
                    event,
                    personal_keys: Vec::new(),
                };
                (
                    copy::SeqActivityRow {
                        seq: 0,
                        salt: [0; 16],
                        row,
                    },
                    None,
                )
            })
            .collect();
        let inserted = count_groups(&rows);
        assert_eq!(inserted.total, 500);
        // The reference: a map of every row's key, counted one by one.
        let mut want: std::collections::BTreeMap<(String, String, String, Option<bool>), u64> =
            Default::default();
        for e in &events {
            let key = (
                e.action.clone(),
                e.outcome.as_str().to_string(),
                e.tenant_id.clone().unwrap_or_default(),
                e.taxonomy_valid,
            );
            *want.entry(key).or_default() += 1;
        }
        let mut got: std::collections::BTreeMap<(String, String, String, Option<bool>), u64> =
            Default::default();
        for g in inserted.groups {
            let key = (g.action, g.outcome, g.tenant_id, g.taxonomy_valid);
            assert!(got.insert(key, g.rows).is_none(), "a group twice");
        }
        assert_eq!(got, want);
        assert!(count_groups(&[]).groups.is_empty());
    }

    #[test]
    fn migration_32_takes_the_keys_the_writer_names() {
        let (_, _, sql) = MIGRATIONS
            .iter()
            .find(|(version, _, _)| *version == 32)
            .expect("migration 32");
        for key in [
            ACTIVITY_EVENTS_LOCK_KEY.to_string(),
            ACTIVITY_RESERVE_LOCK_KEY.to_string(),
            format!(
                "pg_advisory_xact_lock({ACTIVITY_TICKET_LOCK_CLASS}, (ticket % 2147483648)::int)"
            ),
        ] {
            assert!(sql.contains(&key), "{key} not in migration 32");
        }
    }
}
