//! Tamper evidence: a per-tenant SHA-256 hash chain over `activity_events`,
//! signed checkpoints, and its verification (see `docs/tamper-evidence.md`).
//!
//! The **chainer** ([`ChainJob`]) runs after the writers commit. One run is one
//! transaction under [`CHAIN_LOCK_KEY`]: it reads the global watermark
//! (`chain_watermark.last_seq`), takes the next committed rows in `seq` order
//! (`seq` is commit-ordered, so when a row is visible every smaller `seq` is
//! committed), computes for each row
//! `row_hash = SHA-256(prev_hash || canonical form)` where `prev_hash` is the
//! tenant's previous link (32 zero bytes for its first row), inserts the links
//! into `activity_chain`, moves `chain_heads` and the watermark (under the
//! watermark's row lock, taken only when there are rows to link), and — when a
//! checkpoint is due — signs every tenant's new head with Ed25519 into
//! `chain_checkpoints`. A run cut short rolls back entirely, so every row is
//! chained exactly once, whatever the number of Tally instances. A run with no
//! row to link touches the watermark row only with its last statement, so a
//! linking writer does not wait for its signing or checkpoint file.
//!
//! With [`PgExporter::set_chain_linking`](crate::postgres::PgExporter::set_chain_linking)
//! (on in `tally` whenever the chainer runs), the **writers** link the rows they
//! write in the batch's own transaction when the chain is caught up, from the
//! values they `COPY` (`link.rs`: the canonical form computed before the activity
//! lock, the attributes' text printed by `jsonb_text.rs`, the watermark, `now()`
//! and the heads read in the `seq` reservation's round trip, one conditional
//! statement writing links, heads and watermark after the `COPY`). A writer
//! stores its links as one `activity_chain_runs` row per tenant of the batch
//! (migration 33), not one `activity_chain` row per event. A short backlog
//! above the watermark is read back and linked first; anything else is left to the
//! chainer, which then only signs checkpoints and links what the writers left.
//!
//! **Verification** ([`verify()`]) re-walks one tenant's links and rows in `seq`
//! order in one read-only snapshot, recomputes every hash and checks the
//! checkpoints' signatures, and answers either "intact up to seq N" or the first
//! problem: a row `altered`, `deleted` or `inserted` out of band, or a
//! `checkpoint` that is forged or does not match the chain.
//!
//! Retention drops whole daily partitions; it records each drop in
//! `chain_truncations` (per tenant and day, signed with the checkpoint key) in the
//! dropping transaction. Links are never dropped, so the chain continues through
//! the dropped rows' stored hashes, and a link whose row is missing is accepted
//! only under such a record whose signature, seq range and counts hold.
//!
//! Rows stored from schema version 19 on have the canonical form v3, in which
//! the personal fields enter only through a salted digest: an erasure
//! (`postgres::erasure`) keeps the digest and deletes the values and the salt,
//! and verification counts such rows as `erased_rows`, each tied to its
//! `erasures` record. An erased row stored earlier (form v1/v2) is vouched for
//! by the erasure's signature over its link's hash and its erased content.
//!
//! With a checkpoint directory, the chainer also appends each checkpoint to a
//! file outside the database, which `tally verify --checkpoints` compares the
//! chain with (a cut tail, a rewritten head).
//!
//! The module has seven parts: `canonical.rs` (a row's canonical form, the hashes, the
//! checkpoint and truncation messages and keys), `job.rs` (the chainer), `link.rs` (the
//! writers' links), `stored.rs` (reading links stored alone or in runs), `jsonb_text.rs`
//! (PostgreSQL's `jsonb::text` in Rust), `external.rs` (the checkpoint files) and
//! `verify.rs` (the walk, whole or resumed).

use std::time::Duration;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

mod canonical;
mod external;
mod job;
mod jsonb_text;
pub(crate) mod link;
mod stored;
mod verify;

pub(crate) use canonical::ROW_COLUMNS;
pub use canonical::{
    checkpoint_message, erased_row_message, hex, key_id, row_hash, signing_key_from_config,
    signing_key_from_seed, ChainRow, TruncationRecord, CHAIN_FORM_V3,
};
pub use external::{
    append_checkpoints, checkpoint_file, read_checkpoint_dir, ExternalCheckpoint,
    ExternalCheckpoints,
};
pub use job::{ChainJob, ChainReport};
pub use jsonb_text::jsonb_text;
pub use verify::{
    checkpoint_signed_by, tenants, verify, verify_against, verify_from, CheckpointInfo, Problem,
    ProblemKind, VerifyReport, VerifyStart, VerifyStatus,
};

/// Advisory lock key serialising chainer runs (the bytes `tallychn`).
pub const CHAIN_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallychn");
/// `chain_watermark.name` of the activity chain.
pub const CHAIN_WATERMARK: &str = "activity_events";
/// `prev_hash` of a tenant's first link.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// Default pause between two chainer runs.
pub const DEFAULT_CHAIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default time between two signed checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// Default upper bound of rows chained per run. A run that reaches it is followed at
/// once by the next, so the bound sets the chainer's memory (the rows of one run, with
/// their attributes' text: ~1.5 KiB each for ordinary events), not its throughput.
pub const DEFAULT_CHAIN_ROWS_PER_RUN: i64 = 2_000;
/// `tally_secrets.name` of the generated signing key (32-byte Ed25519 seed).
pub const SIGNING_KEY_SECRET: &str = "chain.signing_key";
