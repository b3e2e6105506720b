//! Erasure of one user of one tenant (a GDPR Art. 17 request) that keeps the
//! tamper-evidence chain verifiable (see docs/privacy.md, "Erasure").
//!
//! An erasure is a row of `erasures` (state `pending`, then `done`) and work in
//! batches, one transaction each, every batch under the row lock of its
//! `erasures` record (`FOR UPDATE`): instances that run the same erasure take
//! turns, and a batch only touches rows that still carry the user's id, so every
//! row is erased exactly once and a crash loses at most the uncommitted batch (a
//! restart or another instance continues, see [`Eraser::resume_pending`]).
//!
//! * `activity_events`: `user_id` becomes the pseudonym, `session_id` and the
//!   personal attribute keys go: the fixed set (`tally_is_personal_key`,
//!   migration 19) and the row's `personal_keys` (migration 24: the keys the
//!   redaction config declared personal when it was written, and every key
//!   holding the user's id). A row of
//!   canonical form v3 keeps its personal digest (`erased_digest`) and loses its
//!   salt, so it still hashes to its link; a row stored before v3 (form v1/v2) is
//!   first checked against its link, then the erasure signs the erased row
//!   together with the link's hash (`erased_signature`, Ed25519 with the
//!   checkpoint key). Rows of form v1/v2 not chained yet are erased once the
//!   chainer has linked them.
//! * `token_usage`: `user_id` becomes the pseudonym, `session_id` goes, the
//!   attributes lose the personal keys and every occurrence of the id.
//! * `rejected_events`: records holding the id lose it the same way.
//! * Last, in one transaction with the rollup lock: the per-user rollups are
//!   re-keyed to the pseudonym (merging counts and sums), budget crossings and
//!   API keys bound to the user take the pseudonym (the keys are revoked), the
//!   record is marked `done`, its clear `subject` is set to NULL, and an
//!   `admin.user.erase` event is written.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::Signer;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio_postgres::{Client, Row, Transaction};
use uuid::Uuid;

use super::chain::{
    erased_row_message, hex, key_id, row_hash, ChainRow, SigningKey, CHAIN_FORM_V3,
    CHAIN_WATERMARK, ROW_COLUMNS,
};
use super::personal::PersonalKeys;
use super::{PgError, ACTIVITY_EVENTS_LOCK_KEY, ROLLUP_LOCK_KEY};

/// `tally_secrets.name` of the key the pseudonyms are derived with (32 bytes).
pub const ERASURE_KEY_SECRET: &str = "erasure.key";
/// Prefix of every pseudonym.
pub const PSEUDONYM_PREFIX: &str = "erased:";
/// The action of the event that records an erasure.
pub const ERASE_ACTION: &str = "admin.user.erase";
/// Pause between two looks for pending erasures in a running collector.
pub const DEFAULT_RESUME_INTERVAL: Duration = Duration::from_secs(30);
/// Rows changed per batch (one transaction) by default.
pub const DEFAULT_ERASURE_BATCH_ROWS: i64 = 5_000;
/// Longest tenant, user id, reason or requester accepted, in characters.
const MAX_TEXT: usize = 1024;
/// Pause while rows stored before canonical form v3 wait for the chainer.
const CHAIN_POLL: Duration = Duration::from_millis(500);
/// Polls of [`CHAIN_POLL`] before an erasure gives up waiting for the chainer.
const CHAIN_POLLS: u32 = 240;
/// Columns of an [`ErasureRecord`].
pub const RECORD_COLUMNS: &str = "id, tenant_id, pseudonym, reason, requested_by, state, counts, \
    requested_at, completed_at, event_id, archives";

/// Why an erasure could not be requested or run.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// The request is not acceptable (empty user, control characters, …).
    #[error("invalid erasure request: {0}")]
    Invalid(String),
    /// No erasure with this id.
    #[error("no erasure {0}")]
    NotFound(Uuid),
    /// The erasure cannot go on (it stays pending and can be resumed).
    #[error("erasure {id} cannot go on: {why}")]
    Blocked {
        /// The erasure's id.
        id: Uuid,
        /// Why it cannot go on.
        why: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] PgError),
}

impl From<tokio_postgres::Error> for ErasureError {
    fn from(error: tokio_postgres::Error) -> Self {
        ErasureError::Db(PgError::from(error))
    }
}

/// The keyed pseudonym of `user` in `tenant`: `erased:` and the hex of the first
/// 16 bytes of HMAC-SHA256(key, tenant length (u32 big-endian) ‖ tenant ‖ user).
/// The same user always gets the same pseudonym (rollups merge), and it cannot
/// be reversed or recomputed from a guessed id without the key.
pub fn pseudonym(key: &[u8], tenant: &str, user: &str) -> String {
    let mut out = String::with_capacity(PSEUDONYM_PREFIX.len() + 32);
    out.push_str(PSEUDONYM_PREFIX);
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        // HMAC accepts keys of any length.
        return out;
    };
    let len = u32::try_from(tenant.len()).unwrap_or(u32::MAX);
    mac.update(&len.to_be_bytes());
    mac.update(tenant.as_bytes());
    mac.update(user.as_bytes());
    out.push_str(&hex(&mac.finalize().into_bytes()[..16]));
    out
}

/// The users whose erasure is pending or ended within the attribution window,
/// as the writers see them: a token row attributed through its trace
/// (`attribution_source = 'trace'`) from an identity an instance's in-memory
/// trace cache learned before the erasure is written with the pseudonym, never
/// the clear id. Every instance checks the shared `erasures` table in the
/// transaction that writes the rows (one indexed look-up per batch holding such
/// rows), so it does not matter which instance ran the erasure. After the
/// window no cache entry learned before the erasure is left; a user who comes
/// back within it has their trace-attributed token rows pseudonymised too.
#[derive(Clone)]
pub struct ErasedUsers {
    key: std::sync::Arc<[u8]>,
    window: Duration,
}

impl std::fmt::Debug for ErasedUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasedUsers")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl ErasedUsers {
    /// Pseudonyms under `key` (the erasure key); `window` is the attribution
    /// window (`processors.tokens.attribution_window_secs`).
    pub fn new(key: Vec<u8>, window: Duration) -> ErasedUsers {
        ErasedUsers {
            key: key.into(),
            window,
        }
    }

    /// Of the (tenant, user) pairs, those erased recently (pending, or done
    /// within the window), each with its pseudonym.
    pub async fn recently_erased<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), String>, PgError> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let mut by_pseudonym: HashMap<(String, String), (String, String)> = HashMap::new();
        for (tenant, user) in pairs {
            if user.starts_with(PSEUDONYM_PREFIX) {
                continue;
            }
            by_pseudonym.insert(
                (tenant.clone(), pseudonym(&self.key, tenant, user)),
                (tenant.clone(), user.clone()),
            );
        }
        if by_pseudonym.is_empty() {
            return Ok(HashMap::new());
        }
        let (tenants, pseudonyms): (Vec<&str>, Vec<&str>) = by_pseudonym
            .keys()
            .map(|(t, p)| (t.as_str(), p.as_str()))
            .unzip();
        let window = self.window.as_secs_f64();
        let rows = client
            .query(
                "SELECT e.tenant_id, e.pseudonym FROM erasures e \
                 JOIN unnest($1::text[], $2::text[]) AS x(t, p) \
                     ON e.tenant_id = x.t AND e.pseudonym = x.p \
                 WHERE e.state = 'pending' \
                    OR e.completed_at > now() - make_interval(secs => $3)",
                &[&tenants, &pseudonyms, &window],
            )
            .await?;
        let mut erased = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(pair) = by_pseudonym.remove(&key) {
                erased.insert(pair, key.1);
            }
        }
        Ok(erased)
    }

    /// The token rows of a batch attributed through their trace to a recently
    /// erased user, by index, rewritten with the pseudonym (and no session).
    pub(crate) async fn pseudonymise_tokens<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        rows: &[(&tally_model::TokenUsage, Option<Uuid>)],
    ) -> Result<Vec<(usize, tally_model::TokenUsage)>, PgError> {
        let traced = |t: &tally_model::TokenUsage| {
            t.attribution_source == tally_model::AttributionSource::Trace
        };
        let pairs: Vec<(String, String)> = rows
            .iter()
            .filter(|(t, _)| traced(t))
            .filter_map(|(t, _)| {
                let user = t.user_id.clone()?;
                Some((t.tenant_id.clone().unwrap_or_default(), user))
            })
            .collect();
        let erased = self.recently_erased(client, &pairs).await?;
        if erased.is_empty() {
            return Ok(Vec::new());
        }
        let mut replaced = Vec::new();
        for (index, (row, _)) in rows.iter().enumerate() {
            let Some(user) = row.user_id.as_ref().filter(|_| traced(row)) else {
                continue;
            };
            let pair = (row.tenant_id.clone().unwrap_or_default(), user.clone());
            if let Some(pseudonym) = erased.get(&pair) {
                let mut row = (*row).clone();
                row.user_id = Some(pseudonym.clone());
                row.session_id = None;
                replaced.push((index, row));
            }
        }
        Ok(replaced)
    }

    /// `traces` with the identities of recently erased users replaced by their
    /// pseudonym (and no session): what the stored rows are attributed to.
    pub async fn pseudonymise_attributions<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        traces: &[super::TraceAttribution],
    ) -> Result<Vec<super::TraceAttribution>, PgError> {
        let pairs: Vec<(String, String)> = traces
            .iter()
            .filter_map(|t| {
                let user = t.identity.user_id.clone()?;
                Some((t.identity.tenant_id.clone().unwrap_or_default(), user))
            })
            .collect();
        let erased = self.recently_erased(client, &pairs).await?;
        Ok(traces
            .iter()
            .map(|trace| {
                let mut trace = trace.clone();
                if let Some(user) = &trace.identity.user_id {
                    let pair = (
                        trace.identity.tenant_id.clone().unwrap_or_default(),
                        user.clone(),
                    );
                    if let Some(pseudonym) = erased.get(&pair) {
                        trace.identity.user_id = Some(pseudonym.clone());
                        trace.identity.session_id = None;
                    }
                }
                trace
            })
            .collect())
    }
}

/// A request to erase `user` of `tenant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureRequest {
    /// The tenant (`''`: events without a tenant).
    pub tenant: String,
    /// The user id to erase.
    pub user: String,
    /// Why (kept in the record and the event: must not name the person).
    pub reason: String,
    /// Who asks (the API caller's subject, or `cli:<os user>`).
    pub requested_by: String,
}

impl ErasureRequest {
    /// Checks the fields: user, reason and requester not empty, all at most
    /// 1024 bytes, no control characters.
    pub fn check(&self) -> Result<(), ErasureError> {
        for (name, value, may_be_empty) in [
            ("tenant", &self.tenant, true),
            ("user", &self.user, false),
            ("reason", &self.reason, false),
            ("requested_by", &self.requested_by, false),
        ] {
            if !may_be_empty && value.trim().is_empty() {
                return Err(ErasureError::Invalid(format!("{name} must not be empty")));
            }
            if value.chars().count() > MAX_TEXT {
                return Err(ErasureError::Invalid(format!(
                    "{name} is longer than {MAX_TEXT} characters"
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(ErasureError::Invalid(format!(
                    "{name} contains control characters"
                )));
            }
        }
        Ok(())
    }
}

/// An `erasures` record as reported (never the erased user's id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureRecord {
    /// The erasure's id.
    pub id: Uuid,
    /// The tenant (`''`: events without a tenant).
    pub tenant_id: String,
    /// What the user's id was replaced with.
    pub pseudonym: String,
    /// Why the user was erased.
    pub reason: String,
    /// Who asked for the erasure.
    pub requested_by: String,
    /// `pending` or `done`.
    pub state: String,
    /// Rows changed per table (rollup, budget and key rows under their table).
    pub counts: BTreeMap<String, i64>,
    /// RFC 3339.
    pub requested_at: String,
    /// RFC 3339, once done.
    pub completed_at: Option<String>,
    /// The id of the `admin.user.erase` event, once done.
    pub event_id: Option<Uuid>,
    /// The archive data files that held rows of the user when the erasure
    /// finished (archives are not rewritten: they still hold the user).
    pub archives: Vec<String>,
}

impl ErasureRecord {
    /// Reads a row selected with [`RECORD_COLUMNS`].
    pub fn from_row(row: &Row) -> Result<ErasureRecord, PgError> {
        let counts: serde_json::Value = row.try_get(6)?;
        let counts = counts
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(table, n)| (table.clone(), n.as_i64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let requested_at: DateTime<Utc> = row.try_get(7)?;
        let completed_at: Option<DateTime<Utc>> = row.try_get(8)?;
        let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        Ok(ErasureRecord {
            id: row.try_get(0)?,
            tenant_id: row.try_get(1)?,
            pseudonym: row.try_get(2)?,
            reason: row.try_get(3)?,
            requested_by: row.try_get(4)?,
            state: row.try_get(5)?,
            counts,
            requested_at: rfc3339(requested_at),
            completed_at: completed_at.map(rfc3339),
            event_id: row.try_get(9)?,
            archives: serde_json::from_value(row.try_get(10)?).unwrap_or_default(),
        })
    }

    /// Whether the erasure is complete.
    pub fn is_done(&self) -> bool {
        self.state == "done"
    }

    /// Rows changed, all tables together.
    pub fn total_rows(&self) -> i64 {
        self.counts.values().sum()
    }
}

/// The erasure records of `tenant` (all tenants with `None`), newest first, at
/// most `limit`.
pub async fn list_erasures(
    client: &Client,
    tenant: Option<&str>,
    limit: i64,
) -> Result<Vec<ErasureRecord>, PgError> {
    client
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM erasures WHERE ($1::text IS NULL OR tenant_id = $1) \
                 ORDER BY requested_at DESC, id LIMIT $2"
            ),
            &[&tenant, &limit],
        )
        .await?
        .iter()
        .map(ErasureRecord::from_row)
        .collect()
}

/// What one batch did.
enum Step {
    /// Rows of this table erased.
    Erased(&'static str, i64),
    /// Rows stored before canonical form v3 wait for the chainer.
    WaitForChain,
    /// Nothing of the user is left in the raw tables.
    Finished,
}

/// Runs erasures. Cheap to clone.
#[derive(Clone)]
pub struct Eraser {
    key: Vec<u8>,
    signer: Option<SigningKey>,
    personal: PersonalKeys,
    archive_dir: Option<std::path::PathBuf>,
    batch_rows: i64,
    max_batches: Option<u64>,
}

impl std::fmt::Debug for Eraser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eraser")
            .field(
                "key_id",
                &self.signer.as_ref().map(|k| key_id(&k.verifying_key())),
            )
            .field("batch_rows", &self.batch_rows)
            .field("max_batches", &self.max_batches)
            .finish()
    }
}

impl Eraser {
    /// An eraser deriving pseudonyms with `key` (see [`pseudonym`]) and signing
    /// erased rows stored before canonical form v3 with `signer` (the checkpoint
    /// key; without one, such rows cannot be erased).
    pub fn new(key: Vec<u8>, signer: Option<SigningKey>) -> Eraser {
        Eraser {
            key,
            signer,
            personal: PersonalKeys::default(),
            archive_dir: None,
            batch_rows: DEFAULT_ERASURE_BATCH_ROWS,
            max_batches: None,
        }
    }

    /// The attribute keys the redaction config declares personal: removed from
    /// token attributes and quarantined records at every depth. (An activity
    /// row loses the personal keys it was written with, `personal_keys`: a key
    /// declared personal only later is covered by the chain as a public
    /// attribute of the rows written before, and stays in them.)
    pub fn with_personal_keys(mut self, keys: PersonalKeys) -> Eraser {
        self.personal = keys;
        self
    }

    /// The archive directory (`retention.archive.dir`): before an erasure
    /// completes, its archives are searched for rows of the user, and the data
    /// files found are listed in the record (`archives`).
    pub fn with_archive_dir(mut self, dir: Option<std::path::PathBuf>) -> Eraser {
        self.archive_dir = dir;
        self
    }

    /// The erasure key (for [`ErasedUsers`]).
    pub fn erased_users(&self, window: Duration) -> ErasedUsers {
        ErasedUsers::new(self.key.clone(), window)
    }

    /// Rows changed per batch (at least 1).
    pub fn with_batch_rows(mut self, rows: i64) -> Eraser {
        self.batch_rows = rows.max(1);
        self
    }

    /// Test hook: [`Eraser::run`] stops (as a crash would) after this many
    /// batches, leaving the erasure pending.
    pub fn with_max_batches(mut self, batches: Option<u64>) -> Eraser {
        self.max_batches = batches;
        self
    }

    /// The pseudonym this eraser gives `user` of `tenant`.
    pub fn pseudonym(&self, tenant: &str, user: &str) -> String {
        pseudonym(&self.key, tenant, user)
    }

    /// Records the request, or finds the erasure of the same (tenant, user)
    /// already recorded: answers the record and whether it is new. Idempotent.
    pub async fn request(
        &self,
        client: &Client,
        request: &ErasureRequest,
    ) -> Result<(ErasureRecord, bool), ErasureError> {
        request.check()?;
        let pseudonym = self.pseudonym(&request.tenant, &request.user);
        let key = self.signer.as_ref().map(|k| key_id(&k.verifying_key()));
        let inserted = client
            .execute(
                "INSERT INTO erasures (id, tenant_id, pseudonym, subject, reason, requested_by, \
                     state, key_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7) \
                 ON CONFLICT (tenant_id, pseudonym) DO NOTHING",
                &[
                    &Uuid::now_v7(),
                    &request.tenant,
                    &pseudonym,
                    &request.user,
                    &request.reason,
                    &request.requested_by,
                    &key,
                ],
            )
            .await?;
        if let (1, Some(signer)) = (inserted, &self.signer) {
            let verifying = signer.verifying_key();
            client
                .execute(
                    "INSERT INTO chain_keys (key_id, public_key) VALUES ($1, $2) \
                     ON CONFLICT (key_id) DO NOTHING",
                    &[&key_id(&verifying), &verifying.as_bytes().as_slice()],
                )
                .await?;
        }
        let row = client
            .query_one(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM erasures WHERE tenant_id = $1 AND pseudonym = $2"
                ),
                &[&request.tenant, &pseudonym],
            )
            .await?;
        Ok((ErasureRecord::from_row(&row)?, inserted == 1))
    }

    /// Requests and runs the erasure to its end (see [`Eraser::run`]).
    pub async fn erase(
        &self,
        client: &mut Client,
        request: &ErasureRequest,
    ) -> Result<ErasureRecord, ErasureError> {
        let (record, _) = self.request(client, request).await?;
        self.run(client, record.id).await
    }

    /// Finishes every pending erasure (after a crash, or one another instance
    /// left): answers the records finished.
    pub async fn resume_pending(
        &self,
        client: &mut Client,
    ) -> Result<Vec<ErasureRecord>, ErasureError> {
        let ids: Vec<Uuid> = client
            .query(
                "SELECT id FROM erasures WHERE state = 'pending' ORDER BY requested_at, id",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let record = self.run(client, id).await?;
            tracing::info!(erasure = %id, rows = record.total_rows(), "resumed erasure finished");
            done.push(record);
        }
        Ok(done)
    }

    /// Runs erasure `id` batch by batch until it is done (a done erasure is
    /// answered as it is: a no-op). With the test hook
    /// [`Eraser::with_max_batches`], stops after that many batches with
    /// [`ErasureError::Blocked`], the erasure still pending.
    pub async fn run(&self, client: &mut Client, id: Uuid) -> Result<ErasureRecord, ErasureError> {
        let mut batches: u64 = 0;
        let mut polls: u32 = 0;
        let mut rejected_cursor: i64 = i64::MIN;
        loop {
            if self.max_batches.is_some_and(|max| batches >= max) {
                return Err(ErasureError::Blocked {
                    id,
                    why: format!("stopped after {batches} batches (test hook)"),
                });
            }
            let tx = client.transaction().await?;
            let Some(row) = tx
                .query_opt(
                    "SELECT tenant_id, pseudonym, subject, state, reason, requested_by \
                     FROM erasures WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?
            else {
                return Err(ErasureError::NotFound(id));
            };
            let target = Target {
                id,
                tenant: row.try_get(0)?,
                pseudonym: row.try_get(1)?,
                subject: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                reason: row.try_get(4)?,
                requested_by: row.try_get(5)?,
            };
            let state: String = row.try_get(3)?;
            if state == "done" {
                tx.commit().await?;
                return load(client, id).await;
            }
            if target.subject.is_empty() {
                return Err(ErasureError::Db(PgError::Integrity(format!(
                    "the pending erasure {id} has no subject"
                ))));
            }
            match self.step(&tx, &target, &mut rejected_cursor).await? {
                Step::Erased(table, rows) => {
                    add_count(&tx, id, table, rows).await?;
                    tx.commit().await?;
                    batches += 1;
                    polls = 0;
                }
                Step::WaitForChain => {
                    tx.rollback().await?;
                    polls += 1;
                    if polls > CHAIN_POLLS {
                        return Err(ErasureError::Blocked {
                            id,
                            why: "rows stored before canonical form v3 are not chained yet: \
                                  is the chainer running?"
                                .to_owned(),
                        });
                    }
                    tokio::time::sleep(CHAIN_POLL).await;
                }
                Step::Finished => {
                    let archives = match &self.archive_dir {
                        Some(dir) => {
                            let (dir, tenant, user) =
                                (dir.clone(), target.tenant.clone(), target.subject.clone());
                            tokio::task::spawn_blocking(move || {
                                archives_holding(&dir, &tenant, &user)
                            })
                            .await
                            .map_err(|e| ErasureError::Blocked {
                                id,
                                why: format!("the archive search stopped: {e}"),
                            })?
                            .map_err(|e| ErasureError::Blocked {
                                id,
                                why: format!("cannot search the archives: {e}"),
                            })?
                        }
                        None => Vec::new(),
                    };
                    finish(&tx, &target, &archives).await?;
                    tx.commit().await?;
                    let record = load(client, id).await?;
                    tracing::info!(
                        erasure = %id,
                        tenant = %record.tenant_id,
                        pseudonym = %record.pseudonym,
                        rows = record.total_rows(),
                        "erasure done"
                    );
                    return Ok(record);
                }
            }
        }
    }

    /// Resumes the pending erasures on its own connection to `url` every
    /// `interval` until `shutdown` becomes `true` or its sender is dropped
    /// (failures are logged and retried): what a crashed instance left, another
    /// or the restarted one finishes.
    pub fn spawn(
        self,
        url: String,
        interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let eraser = self;
        super::periodic::spawn_periodically("erasure", url, interval, shutdown, move |client| {
            let eraser = eraser.clone();
            Box::pin(async move {
                match eraser.resume_pending(client).await {
                    Ok(_) => Ok(false),
                    Err(ErasureError::Db(error)) => Err(error),
                    Err(other) => {
                        tracing::warn!(error = %other, "a pending erasure cannot go on yet");
                        Ok(false)
                    }
                }
            })
        })
    }

    /// One batch of the first raw table that still holds the user.
    async fn step(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
        rejected_cursor: &mut i64,
    ) -> Result<Step, ErasureError> {
        let erased = self.activity_batch(tx, target).await?;
        if erased > 0 {
            return Ok(Step::Erased("activity_events", erased));
        }
        let left: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM activity_events WHERE tenant_id = $1 AND user_id = $2)",
                &[&target.tenant, &target.subject],
            )
            .await?
            .try_get(0)?;
        if left {
            return Ok(Step::WaitForChain);
        }
        let erased = tx
            .execute(
                "UPDATE token_usage AS t SET user_id = $3, session_id = NULL, \
                     attributes = tally_erase_json(t.attributes, $2, $3, $5) \
                 WHERE (t.ts, t.id) IN (SELECT ts, id FROM token_usage \
                     WHERE tenant_id = $1 AND user_id = $2 LIMIT $4)",
                &[
                    &target.tenant,
                    &target.subject,
                    &target.pseudonym,
                    &self.batch_rows,
                    &self.personal.patterns(),
                ],
            )
            .await?;
        if erased > 0 {
            return Ok(Step::Erased("token_usage", count(erased)));
        }
        // The id as it appears inside a JSON string (escaped, without quotes).
        let quoted = serde_json::to_string(&target.subject).unwrap_or_default();
        let needle = quoted
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(&quoted);
        let rows = tx
            .query(
                "WITH picked AS (SELECT tenant_id, id, seq FROM rejected_events \
                     WHERE tenant_id = $1 AND seq > $5 AND strpos(record::text, $4) > 0 \
                     ORDER BY seq LIMIT $6) \
                 UPDATE rejected_events AS r SET record = tally_erase_json(r.record, $2, $3, $7) \
                 FROM picked WHERE r.tenant_id = picked.tenant_id AND r.id = picked.id \
                 RETURNING picked.seq",
                &[
                    &target.tenant,
                    &target.subject,
                    &target.pseudonym,
                    &needle,
                    &*rejected_cursor,
                    &self.batch_rows,
                    &self.personal.patterns(),
                ],
            )
            .await?;
        if !rows.is_empty() {
            for row in &rows {
                *rejected_cursor = (*rejected_cursor).max(row.try_get(0)?);
            }
            return Ok(Step::Erased("rejected_events", rows.len() as i64));
        }
        Ok(Step::Finished)
    }

    /// Erases up to one batch of the user's activity rows (those of form v1/v2
    /// only once chained); answers how many. In no particular order: the rows
    /// come from the `(user_id, ts)` index, and an erased row no longer matches,
    /// so no batch sorts or skips what earlier batches did.
    async fn activity_batch(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
    ) -> Result<i64, ErasureError> {
        let watermark: i64 = tx
            .query_opt(
                "SELECT last_seq FROM chain_watermark WHERE name = $1",
                &[&CHAIN_WATERMARK],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let rows = tx
            .query(
                &format!(
                    "SELECT {ROW_COLUMNS}, (attributes - tally_personal_keys(attributes, personal_keys))::text \
                     FROM activity_events WHERE tenant_id = $1 AND user_id = $2 \
                         AND (chain_form IS NOT NULL OR seq <= $3) \
                     LIMIT $4"
                ),
                &[
                    &target.tenant,
                    &target.subject,
                    &watermark,
                    &self.batch_rows,
                ],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut legacy_seqs = Vec::new();
        let mut parsed = Vec::with_capacity(rows.len());
        for row in &rows {
            let chain_row = ChainRow::from_row(row)?;
            let erased_attributes: Option<String> = row.try_get(27)?;
            if chain_row.chain_form.is_none() {
                legacy_seqs.push(chain_row.seq);
            }
            parsed.push((chain_row, erased_attributes));
        }
        let mut links: HashMap<i64, ([u8; 32], Vec<u8>)> = HashMap::new();
        if !legacy_seqs.is_empty() {
            for link in tx
                .query(
                    "SELECT seq, prev_hash, row_hash FROM activity_chain \
                     WHERE tenant_id = $1 AND seq = ANY($2)",
                    &[&target.tenant, &legacy_seqs],
                )
                .await?
            {
                let prev: Vec<u8> = link.try_get(1)?;
                if let Ok(prev) = <[u8; 32]>::try_from(prev.as_slice()) {
                    links.insert(link.try_get(0)?, (prev, link.try_get(2)?));
                }
            }
        }
        let mut ids = Vec::with_capacity(parsed.len());
        let mut times = Vec::with_capacity(parsed.len());
        let mut digests: Vec<Option<Vec<u8>>> = Vec::with_capacity(parsed.len());
        let mut signatures: Vec<Option<Vec<u8>>> = Vec::with_capacity(parsed.len());
        for (row, erased_attributes) in parsed {
            ids.push(row.id);
            times.push(row.ts);
            if row.chain_form == Some(CHAIN_FORM_V3) {
                digests.push(Some(row.personal_digest().to_vec()));
                signatures.push(None);
                continue;
            }
            digests.push(None);
            signatures.push(self.sign_legacy(
                target,
                &row,
                erased_attributes,
                links.get(&row.seq),
            )?);
        }
        let updated = tx
            .execute(
                "UPDATE activity_events AS a SET user_id = $3, session_id = NULL, \
                     attributes = a.attributes - tally_personal_keys(a.attributes, a.personal_keys), \
                     chain_salt = NULL, erasure_id = $4, erased_digest = u.d, \
                     erased_signature = u.s \
                 FROM unnest($5::uuid[], $6::timestamptz[], $7::bytea[], $8::bytea[]) \
                     AS u(id, ts, d, s) \
                 WHERE a.tenant_id = $1 AND a.ts = u.ts AND a.id = u.id AND a.user_id = $2",
                &[
                    &target.tenant,
                    &target.subject,
                    &target.pseudonym,
                    &target.id,
                    &ids,
                    &times,
                    &digests,
                    &signatures,
                ],
            )
            .await?;
        Ok(count(updated))
    }

    /// The signature over an erased row stored before canonical form v3, or
    /// `None` when the row no longer matched its link before the erasure (it
    /// was altered earlier: verification keeps reporting it).
    fn sign_legacy(
        &self,
        target: &Target,
        row: &ChainRow,
        erased_attributes: Option<String>,
        link: Option<&([u8; 32], Vec<u8>)>,
    ) -> Result<Option<Vec<u8>>, ErasureError> {
        let Some(signer) = &self.signer else {
            return Err(ErasureError::Blocked {
                id: target.id,
                why: "rows stored before canonical form v3 are signed when erased, and this \
                      eraser has no signing key"
                    .to_owned(),
            });
        };
        let Some((prev, link_hash)) = link else {
            tracing::warn!(
                erasure = %target.id,
                seq = row.seq,
                "an activity row at or below the chain watermark has no link: erased unsigned"
            );
            return Ok(None);
        };
        if row_hash(prev, &row.canonical()).as_slice() != link_hash.as_slice() {
            tracing::warn!(
                erasure = %target.id,
                seq = row.seq,
                "an activity row no longer matched its chained hash before the erasure: erased \
                 unsigned (verify keeps reporting it)"
            );
            return Ok(None);
        }
        let mut erased = row.clone();
        erased.user_id = Some(target.pseudonym.clone());
        erased.session_id = None;
        erased.attributes = erased_attributes;
        let message = erased_row_message(
            &target.tenant,
            row.seq,
            link_hash,
            &erased.canonical(),
            target.id,
        );
        Ok(Some(signer.sign(&message).to_bytes().to_vec()))
    }
}

/// The erasure a batch works on.
struct Target {
    id: Uuid,
    tenant: String,
    pseudonym: String,
    subject: String,
    reason: String,
    requested_by: String,
}

fn count(rows: u64) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}

async fn load(client: &Client, id: Uuid) -> Result<ErasureRecord, ErasureError> {
    let row = client
        .query_opt(
            &format!("SELECT {RECORD_COLUMNS} FROM erasures WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or(ErasureError::NotFound(id))?;
    Ok(ErasureRecord::from_row(&row)?)
}

async fn add_count(
    tx: &Transaction<'_>,
    id: Uuid,
    table: &str,
    rows: i64,
) -> Result<(), ErasureError> {
    tx.execute(
        "UPDATE erasures SET counts = jsonb_set(counts, ARRAY[$2::text], \
             to_jsonb(coalesce((counts ->> $2::text)::bigint, 0) + $3)) WHERE id = $1",
        &[&id, &table, &rows],
    )
    .await?;
    Ok(())
}

/// Re-keys the rollups, budget crossings and API keys, records the event and
/// marks the erasure done (the caller commits).
async fn finish(
    tx: &Transaction<'_>,
    target: &Target,
    archives: &[String],
) -> Result<(), ErasureError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROLLUP_LOCK_KEY])
        .await?;
    let keys: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&target.tenant, &target.subject, &target.pseudonym];
    let mut rollups = 0;
    for sql in REKEY_SQL {
        rollups += count(tx.execute(*sql, &keys).await?);
    }
    // The tenant-less last-seen rollup: the user's other tenants keep theirs.
    tx.execute(
        "DELETE FROM activity_user_last_seen_all WHERE user_id = $1",
        &[&target.subject],
    )
    .await?;
    tx.execute(
        "INSERT INTO activity_user_last_seen_all (user_id, last_seen) \
         SELECT user_id, max(last_seen) FROM activity_user_last_seen \
         WHERE user_id = ANY(ARRAY[$1, $2]) GROUP BY user_id \
         ON CONFLICT (user_id) DO UPDATE \
             SET last_seen = greatest(activity_user_last_seen_all.last_seen, EXCLUDED.last_seen)",
        &[&target.subject, &target.pseudonym],
    )
    .await?;
    let budgets = tx
        .execute(
            "UPDATE budget_thresholds SET user_id = $3 WHERE tenant_id = $1 AND user_id = $2",
            &keys,
        )
        .await?;
    let api_keys = tx
        .execute(
            "UPDATE api_keys SET user_id = $3, description = NULL, \
                 revoked_at = coalesce(revoked_at, now()) \
             WHERE tenant = $1 AND user_id = $2",
            &keys,
        )
        .await?;
    // The identities shared for attribution across instances: a late token row
    // of the user's trace is attributed to the pseudonym, never the clear id.
    let identities = tx
        .execute(
            "UPDATE trace_identities SET user_id = $3, session_id = NULL \
             WHERE user_id = $2 AND (tenant_id = $1 OR record_tenant = $1)",
            &keys,
        )
        .await?;
    for (table, rows) in [
        ("rollups", rollups),
        ("budget_thresholds", count(budgets)),
        ("api_keys", count(api_keys)),
        ("trace_identities", count(identities)),
    ] {
        if rows > 0 {
            add_count(tx, target.id, table, rows).await?;
        }
    }
    let counts: serde_json::Value = tx
        .query_one("SELECT counts FROM erasures WHERE id = $1", &[&target.id])
        .await?
        .try_get(0)?;
    let mut attributes = serde_json::Map::new();
    attributes.insert("erasure.id".into(), target.id.to_string().into());
    attributes.insert("erasure.reason".into(), target.reason.clone().into());
    attributes.insert("erasure.pseudonym".into(), target.pseudonym.clone().into());
    let mut total = 0;
    if let Some(map) = counts.as_object() {
        for (table, rows) in map {
            let rows = rows.as_i64().unwrap_or(0);
            total += rows;
            attributes.insert(format!("erasure.rows.{table}"), rows.into());
        }
    }
    attributes.insert("erasure.rows".into(), total.into());
    if !archives.is_empty() {
        attributes.insert("erasure.archives".into(), archives.len().into());
    }
    let event_id = Uuid::now_v7();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&ACTIVITY_EVENTS_LOCK_KEY],
    )
    .await?;
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, \
             resource_type, resource_id, service, attributes, taxonomy_valid) \
         VALUES ($1, nextval('activity_events_seq'), now(), $2, $3, $4, 'success', 'user', $5, \
             'tally', $6, true)",
        &[
            &event_id,
            &target.tenant,
            &target.requested_by,
            &ERASE_ACTION,
            &target.pseudonym,
            &serde_json::Value::Object(attributes),
        ],
    )
    .await?;
    tx.execute(
        "UPDATE erasures SET state = 'done', subject = NULL, completed_at = now(), event_id = $2, \
             archives = $3 WHERE id = $1",
        &[&target.id, &event_id, &serde_json::json!(archives)],
    )
    .await?;
    Ok(())
}

/// The data files of the archives under `dir` (see
/// [`archive_manifests`](super::archive::archive_manifests)) that hold a row of
/// `user` in `tenant` (`tenant_id` and `user_id` as archived), sorted. A missing
/// directory holds none; an unreadable one, manifest or data file is an error.
/// Reads every data file whose manifest lists the tenant, line by line (NDJSON)
/// or its `tenant_id` and `user_id` columns (Parquet).
pub fn archives_holding(
    dir: &std::path::Path,
    tenant: &str,
    user: &str,
) -> Result<Vec<String>, PgError> {
    use std::io::BufRead;
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let needle = format!(
        "\"user_id\":{}",
        serde_json::to_string(user).unwrap_or_default()
    );
    let mut found = Vec::new();
    for manifest_path in super::archive::archive_manifests(dir)? {
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| PgError::io(format!("cannot read {}", manifest_path.display()), e))?;
        let manifest: super::archive::Manifest = serde_json::from_str(&text).map_err(|e| {
            PgError::Integrity(format!(
                "{} is not a manifest: {e}",
                manifest_path.display()
            ))
        })?;
        if !manifest.tenants.iter().any(|t| t.tenant == tenant) {
            continue;
        }
        let data = manifest_path
            .parent()
            .unwrap_or(dir)
            .join(&manifest.data_file);
        if manifest.data_format == "parquet" {
            if super::archive::parquet_file::holds_user(&data, tenant, user)? {
                found.push(data.display().to_string());
            }
            continue;
        }
        let file = std::fs::File::open(&data)
            .map_err(|e| PgError::io(format!("cannot open {}", data.display()), e))?;
        for line in std::io::BufReader::with_capacity(1 << 20, file).lines() {
            let line =
                line.map_err(|e| PgError::io(format!("cannot read {}", data.display()), e))?;
            if !line.contains(&needle) {
                continue;
            }
            let Ok(row) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if row.get("tenant_id").and_then(|v| v.as_str()) == Some(tenant)
                && row.get("user_id").and_then(|v| v.as_str()) == Some(user)
            {
                found.push(data.display().to_string());
                break;
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Moves the user's rows of the per-user rollups to the pseudonym, adding them
/// into rows the pseudonym already has ($1 tenant, $2 user, $3 pseudonym).
const REKEY_SQL: &[&str] = &[
    "WITH moved AS (DELETE FROM activity_daily WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING day, action, outcome, events) \
     INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
     SELECT day, $1, $3, action, outcome, events FROM moved \
     ON CONFLICT (tenant_id, day, user_id, action, outcome) \
         DO UPDATE SET events = activity_daily.events + EXCLUDED.events",
    "WITH moved AS (DELETE FROM token_usage_daily WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING day, provider, model, requests, unknown_usage_requests, unpriced_requests, \
             input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
             reasoning_tokens, total_tokens, cost_usd) \
     INSERT INTO token_usage_daily (day, tenant_id, user_id, provider, model, requests, \
         unknown_usage_requests, unpriced_requests, input_tokens, output_tokens, \
         cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd) \
     SELECT day, $1, $3, provider, model, requests, unknown_usage_requests, unpriced_requests, \
         input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
         total_tokens, cost_usd FROM moved \
     ON CONFLICT (tenant_id, day, user_id, provider, model) DO UPDATE SET \
         requests = token_usage_daily.requests + EXCLUDED.requests, \
         unknown_usage_requests = token_usage_daily.unknown_usage_requests \
             + EXCLUDED.unknown_usage_requests, \
         unpriced_requests = token_usage_daily.unpriced_requests + EXCLUDED.unpriced_requests, \
         input_tokens = token_usage_daily.input_tokens + EXCLUDED.input_tokens, \
         output_tokens = token_usage_daily.output_tokens + EXCLUDED.output_tokens, \
         cache_read_tokens = token_usage_daily.cache_read_tokens + EXCLUDED.cache_read_tokens, \
         cache_write_tokens = token_usage_daily.cache_write_tokens + EXCLUDED.cache_write_tokens, \
         reasoning_tokens = token_usage_daily.reasoning_tokens + EXCLUDED.reasoning_tokens, \
         total_tokens = token_usage_daily.total_tokens + EXCLUDED.total_tokens, \
         cost_usd = token_usage_daily.cost_usd + EXCLUDED.cost_usd",
    "WITH moved AS (DELETE FROM activity_user_last_seen WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING last_seen) \
     INSERT INTO activity_user_last_seen (tenant_id, user_id, last_seen) \
     SELECT $1, $3, last_seen FROM moved \
     ON CONFLICT (tenant_id, user_id) DO UPDATE \
         SET last_seen = greatest(activity_user_last_seen.last_seen, EXCLUDED.last_seen)",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_stable_and_distinct() {
        let a = pseudonym(b"key one", "acme", "alice");
        assert!(a.starts_with(PSEUDONYM_PREFIX));
        assert_eq!(a.len(), PSEUDONYM_PREFIX.len() + 32);
        assert_eq!(a, pseudonym(b"key one", "acme", "alice"));
        assert_ne!(a, pseudonym(b"key two", "acme", "alice"));
        assert_ne!(a, pseudonym(b"key one", "acme", "bob"));
        assert_ne!(a, pseudonym(b"key one", "other", "alice"));
        // The tenant's length is part of the input: ("ab", "c") is not ("a", "bc").
        assert_ne!(pseudonym(b"k", "ab", "c"), pseudonym(b"k", "a", "bc"));
        assert!(!a.contains("alice"));
    }

    #[test]
    fn requests_are_checked() {
        let ok = ErasureRequest {
            tenant: "acme".into(),
            user: "alice".into(),
            reason: "GDPR request #12".into(),
            requested_by: "admin".into(),
        };
        assert!(ok.check().is_ok());
        for bad in [
            ErasureRequest {
                user: " ".into(),
                ..ok.clone()
            },
            ErasureRequest {
                reason: String::new(),
                ..ok.clone()
            },
            ErasureRequest {
                user: "a\nb".into(),
                ..ok.clone()
            },
            ErasureRequest {
                reason: "x".repeat(MAX_TEXT + 1),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.check(), Err(ErasureError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
