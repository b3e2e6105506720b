//! Links computed by the writer (issue 21): a batch's rows are chained in the
//! batch's own transaction, from the values it `COPY`s, without reading them back.
//!
//! Before the activity lock, [`PreparedLinks::new`] computes each row's canonical
//! form v3 from the event (the values exactly as PostgreSQL will return them: text
//! with NUL as U+FFFD, `ts` in whole microseconds, the attributes as
//! [`jsonb_text`] prints them, a salt the writer generates and `COPY`s) with
//! `seq` and `received_at` left to fill. In the round trip that reserves the
//! `seq` range, [`STATE_SQL`] reads the watermark, `now()` (the `received_at`
//! default) and the heads of the batch's tenants ([`LinkState`]). When the chain is
//! caught up (the watermark is the `seq` just before the reserved range, or no
//! committed row lies above it), [`PreparedLinks::links`] fills in `seq` and
//! `received_at`, hashes each row onto its tenant's head, and after the `COPY`
//! [`WRITE_SQL`] stores the links (one `activity_chain_runs` row per tenant with a
//! few links or more in the batch, [`Links::stored`]), moves the heads and moves
//! the watermark, in one
//! statement that writes nothing unless the watermark is still the one read.
//!
//! Otherwise (the chain is behind, a value the printer cannot vouch for, the
//! staged path stored the batch) the rows stay above the watermark and the chainer
//! links them as before, so instances of older versions and the staged path keep
//! working beside this one.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use tally_model::ActivityEvent;
use tokio_postgres::Row;

use super::canonical::{append_event_v3, fill_head, hash32, row_hash, ChainRow, ROW_COLUMNS};
use super::jsonb_text::jsonb_text_split;
use super::GENESIS_HASH;
use crate::postgres::personal::is_fixed_personal_key;
use crate::postgres::reuse::BufferPool;
use crate::postgres::PgError;

/// Read in the reservation's round trip, after the lock: `$1` the watermark's
/// name, `$2` the batch's tenants. One row per head of those tenants (one row
/// with NULL head columns when none has a head), no row when the watermark row is
/// missing. (Nothing here depends on the reservation itself: when row security
/// refuses the direct `COPY`, the answer is simply not used.)
pub(crate) const STATE_SQL: &str = "SELECT w.last_seq, now(), h.tenant_id, h.seq, h.row_hash \
    FROM chain_watermark w LEFT JOIN chain_heads h ON h.tenant_id = ANY($2::text[]) \
    WHERE w.name = $1";

/// The committed rows between the watermark `$1` and the reserved range `$2`
/// (left by an older version, the staged path or a batch that met the chain
/// behind), at most `$3`: read back and linked with the chainer's code before the
/// batch's own rows, so one batch brings the chain up to date again. Asked only
/// when the watermark is not just before the range (a rolled-back reservation
/// leaves a gap without rows).
pub(crate) static BACKLOG_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {ROW_COLUMNS} FROM activity_events WHERE seq > $1 AND seq < $2 \
         ORDER BY seq, id LIMIT $3"
    )
});

/// The heads of the tenants of [`BACKLOG_SQL`]'s rows.
pub(crate) const BACKLOG_HEADS_SQL: &str = "SELECT tenant_id, seq, row_hash FROM chain_heads \
    WHERE tenant_id IN (SELECT tenant_id FROM activity_events WHERE seq > $1 AND seq < $2)";

/// The most backlog rows a writer links itself; a longer backlog (an upgrade
/// from a version without writer links, the chainer stopped) is left to the
/// chainer, so the lock-held section stays short.
pub(crate) const MAX_BACKLOG_ROWS: i64 = 2_000;

/// Stores the links ([`StoredLinks`]: single links `$4`–`$9`, runs
/// `$10`–`$17`), moves the heads (`$18`–`$20`) and moves the watermark `$1` from
/// `$3` to `$2`, all only if the watermark is still `$3` (its row lock waits
/// for a chainer run in progress). Answers 1 when it wrote, else 0.
pub(crate) const WRITE_SQL: &str = "WITH w AS ( \
        UPDATE chain_watermark SET last_seq = $2, updated_at = now() \
        WHERE name = $1 AND last_seq = $3 RETURNING 1), \
    links AS ( \
        INSERT INTO activity_chain (tenant_id, seq, day, prev_seq, prev_hash, row_hash) \
        SELECT * FROM unnest($4::text[], $5::int8[], $6::date[], $7::int8[], $8::bytea[], \
            $9::bytea[]) WHERE EXISTS (SELECT 1 FROM w)), \
    runs AS ( \
        INSERT INTO activity_chain_runs (tenant_id, first_seq, last_seq, prev_seq, prev_hash, \
            seqs, days, row_hashes) \
        SELECT r.t, a.s[r.o + 1], a.s[r.o + r.n], r.ps, r.ph, a.s[r.o + 1 : r.o + r.n], \
            a.d[r.o + 1 : r.o + r.n], r.h \
        FROM unnest($10::text[], $11::int4[], $12::int4[], $13::int8[], $14::bytea[], \
            $15::bytea[]) AS r(t, o, n, ps, ph, h), \
            (SELECT $16::int8[] AS s, $17::date[] AS d) AS a \
        WHERE EXISTS (SELECT 1 FROM w)), \
    heads AS ( \
        INSERT INTO chain_heads (tenant_id, seq, row_hash) \
        SELECT * FROM unnest($18::text[], $19::int8[], $20::bytea[]) \
        WHERE EXISTS (SELECT 1 FROM w) \
        ON CONFLICT (tenant_id) DO UPDATE SET seq = EXCLUDED.seq, \
            row_hash = EXCLUDED.row_hash, updated_at = now()) \
    SELECT count(*)::int8 FROM w";

/// One row's link to be: its tenant (as stored), day, and where its canonical
/// form (seq and received_at to fill) ends in [`PreparedLinks`]'s buffer.
#[derive(Debug)]
struct Prepared<'e> {
    tenant: Cow<'e, str>,
    day: NaiveDate,
    end: usize,
}

/// The canonical forms of a batch's rows, in the order they are `COPY`d, one
/// after the other in one buffer.
#[derive(Debug)]
pub(crate) struct PreparedLinks<'e> {
    rows: Vec<Prepared<'e>>,
    forms: Vec<u8>,
}

impl<'e> PreparedLinks<'e> {
    /// The rows' canonical forms, each with the `chain_salt` and personal keys it
    /// is written with. `None` when one of them holds a value the printer cannot
    /// vouch for: the batch is then left to the chainer.
    pub(crate) fn new<'r>(
        rows: impl ExactSizeIterator<Item = (&'e ActivityEvent, &'r [u8; 16], &'r [&'r str])>,
    ) -> Option<PreparedLinks<'e>> {
        let total = rows.len();
        let mut out = Vec::with_capacity(total);
        // A buffer of an earlier batch (its pages already in memory), grown by
        // `reserve_form` if this batch needs more; else a new one.
        let mut forms = FORMS.take();
        if forms.capacity() == 0 {
            forms.reserve_exact(total * FORM_BYTES_GUESS);
        }
        // The attributes' texts, reused from row to row.
        let mut public = String::with_capacity(256);
        let mut personal = String::with_capacity(64);
        for (done, (event, salt, personal_keys)) in rows.enumerate() {
            // Keys compared as stored (NUL scrubbed), as `split_attributes`
            // compares the keys of the stored text.
            let any = jsonb_text_split(
                &event.attributes,
                |key| is_fixed_personal_key(key) || personal_keys.iter().any(|k| stored_eq(k, key)),
                &mut public,
                &mut personal,
            )?;
            reserve_form(&mut forms, done, total, FORM_FIXED_BYTES + public.len());
            append_event_v3(
                &mut forms,
                event,
                salt,
                &public,
                any.then_some(personal.as_str()),
            );
            out.push(Prepared {
                tenant: stored(event.tenant_id.as_deref().unwrap_or("")),
                day: event.ts.date_naive(),
                end: forms.len(),
            });
        }
        Some(PreparedLinks { rows: out, forms })
    }

    /// The tenants of the batch, each once.
    pub(crate) fn tenants(&self) -> Vec<String> {
        let mut tenants: Vec<&str> = self.rows.iter().map(|r| r.tenant.as_ref()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        tenants.into_iter().map(str::to_owned).collect()
    }

    /// The links of `backlog` (committed rows above the watermark, read back, in
    /// `seq` order) and then of the batch's rows numbered from `first_seq`,
    /// chained onto `heads` (those of every tenant involved).
    pub(crate) fn links(
        mut self,
        first_seq: i64,
        received_at: DateTime<Utc>,
        backlog: &[ChainRow],
        mut heads: HashMap<String, (i64, [u8; 32])>,
    ) -> Result<Links, PgError> {
        let mut links = Links::with_capacity(backlog.len() + self.rows.len());
        for row in backlog {
            links.push_stored(&mut heads, row);
        }
        let mut start = 0;
        for (i, row) in self.rows.iter().enumerate() {
            let seq = first_seq + i as i64;
            let canonical = self.forms.get_mut(start..row.end).unwrap_or_default();
            start = row.end;
            if !fill_head(canonical, seq, received_at) {
                return Err(PgError::Integrity(
                    "a prepared canonical form has an unexpected layout".into(),
                ));
            }
            links.push(&mut heads, &row.tenant, seq, row.day, canonical);
        }
        links.set_heads(heads);
        Ok(links)
    }
}

impl Drop for PreparedLinks<'_> {
    fn drop(&mut self) {
        FORMS.give(std::mem::take(&mut self.forms));
    }
}

/// The forms' buffers, kept from batch to batch (see `reuse.rs`): one per
/// writer (up to 4), each at most 2 MiB (a batch of ~2,000 ordinary rows).
static FORMS: BufferPool<Vec<u8>> = BufferPool::new(4, 2 << 20);

/// Bytes of a canonical form reserved per row up front: more than an ordinary
/// span's or log record's form takes (pages the forms never reach are never
/// touched, so reserving too much costs no page faults).
const FORM_BYTES_GUESS: usize = 1024;

/// The bytes of a canonical form v3 beyond its texts, bounded above: the domain,
/// the fixed-size fields (id, seq, ts, received_at, taxonomy_valid, duration_ms
/// and the digest) and 5 bytes of tag and length for each of the 13 fields.
const FORM_FIXED_BYTES: usize = 17 + 16 + 8 + 8 + 8 + 1 + 8 + 32 + 13 * 5;

/// Before row `done` (of `total`) of at least `next` bytes is appended to `forms`:
/// when it does not fit, grows `forms` once to the size the rows so far predict
/// for the rest of the batch (their mean, plus a quarter; at least a quarter of
/// the capacity, so growth stays geometric), instead of doubling it several
/// times (each doubling copies the forms and faults in fresh pages).
fn reserve_form(forms: &mut Vec<u8>, done: usize, total: usize, next: usize) {
    if forms.capacity() - forms.len() >= next {
        return;
    }
    let left = total.saturating_sub(done).max(1);
    // Before the first row, nothing to average: the row itself.
    let mean = forms
        .len()
        .checked_div(done)
        .map_or(next, |mean| mean.max(next));
    let predicted = mean.saturating_mul(left);
    let more = predicted
        .saturating_add(predicted / 4)
        .max(forms.capacity() / 4)
        .max(next);
    forms.reserve_exact(more);
}

/// Whether `key`, a key as written (NUL possible), is `stored` (NUL scrubbed)
/// once stored.
fn stored_eq(key: &str, stored: &str) -> bool {
    if key.as_bytes().contains(&0) {
        self::stored(key) == stored
    } else {
        key == stored
    }
}

/// Text as the `COPY` encoder stores it: each NUL becomes U+FFFD.
fn stored(s: &str) -> Cow<'_, str> {
    if s.as_bytes().contains(&0) {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// What [`STATE_SQL`] read.
#[derive(Debug, Clone)]
pub(crate) struct LinkState {
    /// `chain_watermark.last_seq`.
    pub watermark: i64,
    /// `now()`: the `received_at` of the batch's rows.
    pub now: DateTime<Utc>,
    /// The heads of the batch's tenants.
    pub heads: HashMap<String, (i64, [u8; 32])>,
}

/// Heads read from rows of (tenant_id, seq, row_hash) starting at column `at`.
pub(crate) fn read_heads(
    rows: &[Row],
    at: usize,
    heads: &mut HashMap<String, (i64, [u8; 32])>,
) -> Result<(), PgError> {
    for row in rows {
        let tenant: Option<String> = row.try_get(at)?;
        if let Some(tenant) = tenant {
            let hash = hash32(row.try_get(at + 2)?, "chain_heads.row_hash")?;
            heads.insert(tenant, (row.try_get(at + 1)?, hash));
        }
    }
    Ok(())
}

impl LinkState {
    /// From [`STATE_SQL`]'s rows; `None` when there is no watermark row.
    pub(crate) fn from_rows(rows: &[Row]) -> Result<Option<LinkState>, PgError> {
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut heads = HashMap::with_capacity(rows.len());
        read_heads(rows, 2, &mut heads)?;
        Ok(Some(LinkState {
            watermark: first.try_get(0)?,
            now: first.try_get(1)?,
            heads,
        }))
    }
}

/// Links and the new heads of their tenants, as arrays for `unnest` (the
/// chainer's run and [`WRITE_SQL`] store them).
#[derive(Debug, Default)]
pub(crate) struct Links {
    pub tenant: Vec<String>,
    pub seq: Vec<i64>,
    pub day: Vec<NaiveDate>,
    pub prev_seq: Vec<Option<i64>>,
    pub prev_hash: Vec<[u8; 32]>,
    pub hash: Vec<[u8; 32]>,
    pub head_tenant: Vec<String>,
    pub head_seq: Vec<i64>,
    pub head_hash: Vec<[u8; 32]>,
    /// Rows not linked because their tenant's chain already reached their `seq`.
    pub skipped_duplicates: u64,
}

impl Links {
    pub(crate) fn with_capacity(n: usize) -> Links {
        Links {
            tenant: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            day: Vec::with_capacity(n),
            prev_seq: Vec::with_capacity(n),
            prev_hash: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
            ..Links::default()
        }
    }

    /// Links the row `seq` of `tenant` (canonical form `canonical`) onto its
    /// tenant's head in `heads`, and moves the head. A row whose tenant's chain
    /// already reached its `seq` (two rows of one tenant with one `seq`: only an
    /// out-of-band insert does that; verification reports it) is skipped.
    pub(crate) fn push(
        &mut self,
        heads: &mut HashMap<String, (i64, [u8; 32])>,
        tenant: &str,
        seq: i64,
        day: NaiveDate,
        canonical: &[u8],
    ) {
        // One lookup of the head (the slot is moved in place), one `String` of
        // the tenant per row (for the link) and one more per new head.
        let slot = heads.get_mut(tenant);
        let head = slot.as_deref().copied();
        if head.is_some_and(|(head_seq, _)| head_seq >= seq) {
            tracing::warn!(
                seq,
                "activity_events holds two rows with one seq for a tenant; chaining the first only"
            );
            self.skipped_duplicates += 1;
            return;
        }
        let prev_hash = head.map_or(GENESIS_HASH, |(_, hash)| hash);
        let hash = row_hash(&prev_hash, canonical);
        match slot {
            Some(slot) => *slot = (seq, hash),
            None => {
                heads.insert(tenant.to_owned(), (seq, hash));
            }
        }
        self.tenant.push(tenant.to_owned());
        self.seq.push(seq);
        self.day.push(day);
        self.prev_seq.push(head.map(|(seq, _)| seq));
        self.prev_hash.push(prev_hash);
        self.hash.push(hash);
    }

    /// Links a row read back from `activity_events` (the chainer's rows and a
    /// writer's backlog), see [`Links::push`].
    pub(crate) fn push_stored(
        &mut self,
        heads: &mut HashMap<String, (i64, [u8; 32])>,
        row: &ChainRow,
    ) {
        self.push(
            heads,
            row.tenant(),
            row.seq,
            row.ts.date_naive(),
            &row.canonical(),
        );
    }

    /// Hashes as `bytea` values for a `bytea[]` parameter.
    pub(crate) fn byteas(hashes: &[[u8; 32]]) -> Vec<&[u8]> {
        hashes.iter().map(|h| &h[..]).collect()
    }

    /// Sets the heads to store.
    pub(crate) fn set_heads(&mut self, heads: HashMap<String, (i64, [u8; 32])>) {
        for (tenant, (seq, hash)) in heads {
            self.head_tenant.push(tenant);
            self.head_seq.push(seq);
            self.head_hash.push(hash);
        }
    }
}

/// Fewest links of one tenant in a batch stored as a run; fewer are stored one
/// `activity_chain` row each. A run's row costs more than one link's (its
/// arrays), so it pays only from a few links on.
pub(crate) const MIN_RUN_LINKS: usize = 4;

/// A batch's links as [`WRITE_SQL`] stores them (migration 33): each tenant
/// with at least [`MIN_RUN_LINKS`] links in the batch as one run, the others
/// one link per row.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct StoredLinks<'l> {
    pub single: SingleLinks<'l>,
    pub runs: Runs,
}

/// Links stored one `activity_chain` row each, as arrays for `unnest`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SingleLinks<'l> {
    pub tenant: Vec<&'l str>,
    pub seq: Vec<i64>,
    pub day: Vec<NaiveDate>,
    pub prev_seq: Vec<Option<i64>>,
    pub prev_hash: Vec<&'l [u8]>,
    pub hash: Vec<&'l [u8]>,
}

/// Runs of links, one `activity_chain_runs` row each: each run's seqs and days
/// a slice of the flat arrays (`offset`, `len`).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Runs {
    pub tenant: Vec<String>,
    /// Where the run starts in `seqs` and `days` (0-based).
    pub offset: Vec<i32>,
    pub len: Vec<i32>,
    /// The link before the run's first (its tenant's head before the batch).
    pub prev_seq: Vec<Option<i64>>,
    pub prev_hash: Vec<[u8; 32]>,
    /// Each run's link hashes, 32 bytes after 32 bytes.
    pub hashes: Vec<Vec<u8>>,
    pub seqs: Vec<i64>,
    pub days: Vec<NaiveDate>,
}

impl Links {
    /// The links grouped by tenant: a tenant's links in `seq` order form a run
    /// when there are at least `min_run` of them. Within a tenant each link
    /// follows the one before (as [`Links::push`] makes them), so a run needs
    /// only its first link's predecessor.
    pub(crate) fn stored(&self, min_run: usize) -> Result<StoredLinks<'_>, PgError> {
        // The links' indices grouped by tenant (in order of first appearance,
        // each group in `seq` order): one stable sort, no list per tenant.
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        let groups: Vec<usize> = self
            .tenant
            .iter()
            .map(|tenant| {
                let next = group_of.len();
                *group_of.entry(tenant.as_str()).or_insert(next)
            })
            .collect();
        let mut order: Vec<usize> = (0..self.tenant.len()).collect();
        order.sort_by_key(|&i| groups[i]);
        let mut out = StoredLinks::default();
        for run in order.chunk_by(|&a, &b| groups[a] == groups[b]) {
            let Some(&first) = run.first() else {
                continue;
            };
            if run.len() < min_run.max(1) {
                let single = &mut out.single;
                for &i in run {
                    single.tenant.push(&self.tenant[i]);
                    single.seq.push(self.seq[i]);
                    single.day.push(self.day[i]);
                    single.prev_seq.push(self.prev_seq[i]);
                    single.prev_hash.push(&self.prev_hash[i]);
                    single.hash.push(&self.hash[i]);
                }
                continue;
            }
            for pair in run.windows(2) {
                let (before, after) = (pair[0], pair[1]);
                if self.prev_seq[after] != Some(self.seq[before])
                    || self.prev_hash[after] != self.hash[before]
                {
                    return Err(PgError::Integrity(
                        "a tenant's links in a batch do not follow each other".into(),
                    ));
                }
            }
            let runs = &mut out.runs;
            let (Ok(offset), Ok(len)) = (i32::try_from(runs.seqs.len()), i32::try_from(run.len()))
            else {
                return Err(PgError::Integrity("too many links for one batch".into()));
            };
            let mut hashes = Vec::with_capacity(32 * run.len());
            for &i in run {
                runs.seqs.push(self.seq[i]);
                runs.days.push(self.day[i]);
                hashes.extend_from_slice(&self.hash[i]);
            }
            runs.tenant.push(self.tenant[first].clone());
            runs.offset.push(offset);
            runs.len.push(len);
            runs.prev_seq.push(self.prev_seq[first]);
            runs.prev_hash.push(self.prev_hash[first]);
            runs.hashes.push(hashes);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use serde_json::{json, Map, Value};
    use tally_model::{ActivityEvent, Outcome};

    use super::super::canonical::{ChainRow, CHAIN_FORM_V3};
    use super::super::jsonb_text::jsonb_text;
    use super::*;
    use crate::postgres::personal::{split_attributes, PersonalKeys};

    /// The row as the chainer will read it back after the `COPY` (the reference
    /// [`PreparedLinks::new`] was written from).
    fn chain_row(
        event: &ActivityEvent,
        salt: &[u8; 16],
        personal_keys: &[&str],
    ) -> Option<ChainRow> {
        let ts = DateTime::from_timestamp_micros(event.ts.timestamp_micros())?;
        let text = jsonb_text(&event.attributes)?;
        let keys: Vec<Option<String>> = personal_keys.iter().map(|k| Some(scrub(k))).collect();
        let split = split_attributes(text, &keys).ok()?;
        let opt = |s: &Option<String>| s.as_deref().map(scrub);
        Some(ChainRow {
            id: event.id,
            seq: 0,
            ts,
            received_at: DateTime::UNIX_EPOCH,
            tenant_id: Some(scrub(event.tenant_id.as_deref().unwrap_or(""))),
            user_id: opt(&event.user_id),
            session_id: opt(&event.session_id),
            action: Some(scrub(&event.action)),
            outcome: Some(scrub(event.outcome.as_str())),
            resource_type: opt(&event.resource_type),
            resource_id: opt(&event.resource_id),
            service: opt(&event.service),
            trace_id: opt(&event.trace_id),
            span_id: opt(&event.span_id),
            attributes: Some(split.public),
            taxonomy_valid: event.taxonomy_valid,
            taxonomy_reason: opt(&event.taxonomy_reason),
            duration_ms: event.duration_ms.filter(|d| d.is_finite()),
            name: opt(&event.name),
            error_type: opt(&event.error_type),
            error_message: opt(&event.error_message),
            chain_form: Some(CHAIN_FORM_V3),
            chain_salt: Some(salt.to_vec()),
            erasure_id: None,
            erased_digest: None,
            erased_signature: None,
            personal_attributes: split.personal,
        })
    }

    /// Text as the `COPY` encoder stores it: each NUL becomes U+FFFD.
    fn scrub(s: &str) -> String {
        s.replace('\0', "\u{FFFD}")
    }

    fn event(i: usize) -> ActivityEvent {
        let user = format!("user\u{0}{}", i % 3);
        let mut attributes = Map::new();
        attributes.insert("i".into(), json!(i));
        attributes.insert("f".into(), json!(1e-7 * i as f64));
        attributes.insert("big".into(), json!(u64::MAX - i as u64));
        attributes.insert("neg".into(), json!(-0.0));
        attributes.insert(
            "nested".into(),
            json!({"zz": [1, 2.5, null, true], "a": {"é": "ü\u{1}\u{8}\"\\\u{0}"}}),
        );
        attributes.insert("nul\u{0}key".into(), json!("v\u{0}w"));
        attributes.insert("user.email".into(), json!(format!("u{i}@example.com")));
        attributes.insert("enduser.role".into(), json!("admin"));
        attributes.insert("customer.name".into(), json!("Ada"));
        attributes.insert("doc.owner".into(), json!(user.clone()));
        attributes.insert("mirror".into(), json!(user.clone()));
        attributes.insert("😀".into(), json!("\u{2028}"));
        if i.is_multiple_of(3) {
            // Many keys: sorted off the stack.
            for k in 0..40 {
                attributes.insert(format!("k{}", "x".repeat(k % 7) + &k.to_string()), json!(k));
            }
        }
        if i % 4 == 3 {
            attributes.clear();
        }
        if i % 5 == 4 {
            // No personal key at all.
            attributes.retain(|k, _| k == "i" || k == "nested");
        }
        ActivityEvent {
            id: uuid::Uuid::from_u128(i as u128 + 1),
            ts: DateTime::from_timestamp(1_800_000_000 + i as i64, 123_456_789).unwrap_or_default(),
            tenant_id: (i % 4 != 1).then(|| format!("t\u{0}{}", i % 2)),
            user_id: Some(user),
            session_id: i.is_multiple_of(2).then(|| format!("s{i}")),
            action: "doc.read".into(),
            outcome: Outcome::Failure,
            resource_type: Some("doc".into()),
            resource_id: None,
            service: Some("svc\u{0}".into()),
            trace_id: Some(format!("{:032x}", i)),
            span_id: None,
            attributes,
            duration_ms: [Some(1.5), None, Some(f64::NAN), Some(-0.0)][i % 4],
            name: Some("GET /".into()),
            error_type: None,
            error_message: (i % 5 == 2).then(|| "bad\u{0}byte".into()),
            taxonomy_valid: [None, Some(true), Some(false)][i % 3],
            taxonomy_reason: (i % 3 == 2).then(|| "unknown".into()),
        }
    }

    /// Prepares the forms of `events` (with `salts` and personal `keys`) and
    /// checks each, byte for byte, against the row as the chainer reads it back.
    fn assert_forms_equal_rows_read_back(
        events: &[ActivityEvent],
        salts: &[[u8; 16]],
        keys: &PersonalKeys,
    ) {
        let personal: Vec<Vec<&str>> = events.iter().map(|e| keys.of(e)).collect();
        let prepared = PreparedLinks::new(
            events
                .iter()
                .zip(salts)
                .zip(&personal)
                .map(|((e, s), k)| (e, s, &k[..])),
        )
        .expect("every value printable");
        assert_eq!(prepared.rows.len(), events.len());
        let mut start = 0;
        for (i, row) in prepared.rows.iter().enumerate() {
            let want = chain_row(&events[i], &salts[i], &personal[i]).expect("reference");
            assert_eq!(row.tenant, want.tenant(), "row {i}");
            assert_eq!(row.day, want.ts.date_naive(), "row {i}");
            assert_eq!(
                &prepared.forms[start..row.end],
                &want.canonical()[..],
                "row {i}"
            );
            start = row.end;
        }
        assert_eq!(start, prepared.forms.len());
    }

    #[test]
    fn prepared_forms_equal_the_forms_of_the_rows_read_back() {
        let keys = PersonalKeys::new(["customer.*", "doc.owner", "nul\u{0}key"]);
        let events: Vec<ActivityEvent> = (0..24).map(event).collect();
        let salts: Vec<[u8; 16]> = (0..24u8).map(|i| [i; 16]).collect();
        assert_forms_equal_rows_read_back(&events, &salts, &keys);
    }

    #[test]
    fn keys_equal_once_stored_leave_the_batch_to_the_chainer() {
        let mut e = event(1);
        e.attributes.insert("a\u{0}".into(), Value::Bool(true));
        e.attributes.insert("a\u{FFFD}".into(), Value::Bool(false));
        let salt = [0; 16];
        assert!(PreparedLinks::new(std::iter::once((&e, &salt, &[][..]))).is_none());
    }

    /// Forms of rows of very different sizes (empty attributes, long and
    /// non-ASCII values, NUL) in an order that outgrows the first guess several
    /// times: equal to the forms of the rows read back, byte for byte.
    #[test]
    fn forms_of_rows_that_outgrow_the_guess_equal_the_rows_read_back() {
        let keys = PersonalKeys::new(["doc.owner"]);
        let sizes = [0usize, 1, 3_000, 0, 70_000, 5, 200_000, 2, 0, 9_000];
        let events: Vec<ActivityEvent> = (0..40)
            .map(|i| {
                let mut e = event(i);
                let n = sizes[i % sizes.len()];
                if n > 0 {
                    let long: String = "é\u{0}a\"😀\n".chars().cycle().take(n).collect();
                    e.attributes.insert(format!("long{i}"), json!(long));
                    e.error_message = Some("x".repeat(n / 2));
                }
                if i % 7 == 6 {
                    e.attributes.clear();
                    e.user_id = Some(String::new());
                    e.tenant_id = Some(String::new());
                }
                e
            })
            .collect();
        let salts: Vec<[u8; 16]> = (0..40u8).map(|i| [i ^ 0x5a; 16]).collect();
        assert_forms_equal_rows_read_back(&events, &salts, &keys);
    }

    #[test]
    fn forms_in_buffers_of_earlier_batches_equal_the_rows_read_back() {
        // Batches one after the other, large then small then large again: each
        // later one writes its forms into a buffer an earlier one gave back
        // (longer than this batch's forms, or too short for them).
        let keys = PersonalKeys::new(["customer.*", "doc.owner"]);
        for (batch, rows) in [60usize, 3, 90, 1, 40].into_iter().enumerate() {
            let events: Vec<ActivityEvent> = (0..rows)
                .map(|i| {
                    let mut e = event(i + batch);
                    if (i + batch) % 5 == 0 {
                        e.error_message = Some("m".repeat(3_000 * batch));
                    }
                    e
                })
                .collect();
            let salts: Vec<[u8; 16]> = (0..rows).map(|i| [(i + batch) as u8; 16]).collect();
            assert_forms_equal_rows_read_back(&events, &salts, &keys);
        }
        let kept = FORMS.take();
        assert!(kept.is_empty() && kept.capacity() <= FORMS.max_bytes());
    }

    #[test]
    fn a_reserved_form_always_fits_and_growth_stays_geometric() {
        let mut forms: Vec<u8> = Vec::with_capacity(100);
        let mut reallocations = 0;
        for done in 0..1_000usize {
            // Rows growing from 10 to ~10,000 bytes: the mean keeps lagging.
            let next = 10 + done * 10;
            let before = forms.capacity();
            reserve_form(&mut forms, done, 1_000, next);
            assert!(forms.capacity() - forms.len() >= next, "row {done}");
            if forms.capacity() != before {
                reallocations += 1;
                // At least a quarter of the old capacity more than what is used.
                assert!(forms.capacity() >= forms.len() + before / 4, "row {done}");
            }
            forms.resize(forms.len() + next, 0);
        }
        assert!(reallocations <= 20, "{reallocations} reallocations");
        // A batch of equal rows that outgrows the guess grows once.
        let mut forms: Vec<u8> = Vec::with_capacity(500);
        let mut reallocations = 0;
        for done in 0..100 {
            let before = forms.capacity();
            reserve_form(&mut forms, done, 100, 40);
            reallocations += usize::from(forms.capacity() != before);
            forms.resize(forms.len() + 40, 0);
        }
        assert_eq!(reallocations, 1);
    }

    /// [`Links::push`] as it was before the head was looked up once.
    fn push_before(
        links: &mut Links,
        heads: &mut HashMap<String, (i64, [u8; 32])>,
        tenant: &str,
        seq: i64,
        day: NaiveDate,
        canonical: &[u8],
    ) {
        let head = heads.get(tenant).copied();
        if head.is_some_and(|(head_seq, _)| head_seq >= seq) {
            links.skipped_duplicates += 1;
            return;
        }
        let prev_hash = head.map_or(GENESIS_HASH, |(_, hash)| hash);
        let hash = row_hash(&prev_hash, canonical);
        links.tenant.push(tenant.to_owned());
        links.seq.push(seq);
        links.day.push(day);
        links.prev_seq.push(head.map(|(seq, _)| seq));
        links.prev_hash.push(prev_hash);
        links.hash.push(hash);
        match heads.get_mut(tenant) {
            Some(slot) => *slot = (seq, hash),
            None => {
                heads.insert(tenant.to_owned(), (seq, hash));
            }
        }
    }

    #[test]
    fn links_equal_those_of_the_previous_push() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).expect("a date");
        let start: HashMap<String, (i64, [u8; 32])> = [
            ("acme".to_string(), (5, [7; 32])),
            ("".to_string(), (100, [9; 32])),
        ]
        .into();
        let tenants = ["acme", "", "new", "é\u{FFFD}", "acme", "new"];
        let (mut got, mut want) = (Links::default(), Links::default());
        let (mut got_heads, mut want_heads) = (start.clone(), start);
        for i in 0..200i64 {
            let tenant = tenants[(i as usize * 7) % tenants.len()];
            // Seqs that fall behind a head now and then: skipped as duplicates.
            let seq = if i % 11 == 10 { 50 } else { i * 3 };
            let canonical = "x".repeat(i as usize % 90).into_bytes();
            got.push(&mut got_heads, tenant, seq, day, &canonical);
            push_before(&mut want, &mut want_heads, tenant, seq, day, &canonical);
        }
        assert!(got.skipped_duplicates > 0);
        assert_eq!(got.skipped_duplicates, want.skipped_duplicates);
        assert_eq!(got.tenant, want.tenant);
        assert_eq!(got.seq, want.seq);
        assert_eq!(got.day, want.day);
        assert_eq!(got.prev_seq, want.prev_seq);
        assert_eq!(got.prev_hash, want.prev_hash);
        assert_eq!(got.hash, want.hash);
        assert_eq!(got_heads, want_heads);
    }

    #[test]
    fn tenants_with_a_few_links_or_more_are_stored_as_runs() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap_or_default();
        let mut heads = HashMap::new();
        heads.insert("c".to_string(), (3, [7u8; 32]));
        let mut links = Links::with_capacity(10);
        // a: 5 links, b: 1, c: 4 (after its stored head), interleaved by seq.
        let tenants = ["a", "b", "a", "c", "a", "c", "c", "a", "c", "a"];
        for (i, tenant) in tenants.iter().enumerate() {
            links.push(&mut heads, tenant, 10 + i as i64, day, &[i as u8]);
        }
        let stored = links.stored(MIN_RUN_LINKS).expect("stored");
        assert_eq!(stored.single.tenant, vec!["b"]);
        assert_eq!(stored.single.seq, vec![11]);
        assert_eq!(stored.single.prev_seq, vec![None]);
        assert_eq!(stored.single.prev_hash, vec![&GENESIS_HASH[..]]);
        let runs = &stored.runs;
        assert_eq!(runs.tenant, vec!["a".to_string(), "c".to_string()]);
        assert_eq!(
            (runs.offset.clone(), runs.len.clone()),
            (vec![0, 5], vec![5, 4])
        );
        assert_eq!(runs.seqs, vec![10, 12, 14, 17, 19, 13, 15, 16, 18]);
        assert_eq!(runs.days, vec![day; 9]);
        assert_eq!(runs.prev_seq, vec![None, Some(3)]);
        assert_eq!(runs.prev_hash, vec![GENESIS_HASH, [7u8; 32]]);
        // Each run's hashes are its links' hashes in order.
        for (run, members) in [(0, vec![0, 2, 4, 7, 9]), (1, vec![3, 5, 6, 8])] {
            let want: Vec<u8> = members.iter().flat_map(|&i| links.hash[i]).collect();
            assert_eq!(runs.hashes[run], want);
        }
        // With a larger minimum, every link is stored alone.
        let alone = links.stored(6).expect("stored");
        assert_eq!((alone.single.seq.len(), alone.runs.tenant.len()), (10, 0));
    }

    #[test]
    fn links_that_do_not_follow_each_other_are_not_stored_as_a_run() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap_or_default();
        let mut heads = HashMap::new();
        let mut links = Links::with_capacity(4);
        for i in 0..4 {
            links.push(&mut heads, "a", i, day, &[i as u8]);
        }
        links.prev_hash[2] = [1; 32];
        assert!(links.stored(MIN_RUN_LINKS).is_err());
    }

    #[test]
    fn keys_compare_as_stored() {
        assert!(stored_eq("a\u{0}b", "a\u{FFFD}b"));
        assert!(stored_eq("ab", "ab"));
        assert!(!stored_eq("a\u{0}b", "a\u{0}b"));
        assert!(!stored_eq("ab", "a"));
        assert_eq!(stored("x\u{0}"), "x\u{FFFD}");
    }
}
