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

use crate::postgres::chain::{
    erased_row_message, hex, key_id, row_hash, ChainRow, SigningKey, CHAIN_FORM_V3,
    CHAIN_WATERMARK, ROW_COLUMNS,
};
use crate::postgres::personal::PersonalKeys;
use crate::postgres::{PgError, ACTIVITY_EVENTS_LOCK_KEY, ROLLUP_LOCK_KEY};

mod archives;
mod eraser;
mod finish;
mod pseudonym;

pub use archives::archives_holding;
pub use eraser::Eraser;
use eraser::{add_count, count, Target};
use finish::finish;
pub use pseudonym::{pseudonym, ErasedUsers};

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

#[cfg(test)]
mod tests;
