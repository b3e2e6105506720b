//! What every handler shares: the database pools, the credentials' verifier,
//! the limits, the live feeds' hub and the caches.

use std::sync::Arc;

use tally_model::Readiness;

use crate::{audit, auth, db, erasures, limits, rejected, stream, tailcache, verify};

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: db::TenantPool,
    /// Where queries, aggregates and exports read: a hot standby when
    /// `exporters.postgres.read_url` is set, else the same pool as `pool`.
    pub(crate) reads: db::TenantPool,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) auth: Option<auth::Authenticator>,
    pub(crate) default_page_size: u32,
    pub(crate) max_page_size: u32,
    /// The taxonomy registry served by `GET /api/v1/taxonomy` (see [`crate::AdminApi::with_taxonomy`]).
    pub(crate) taxonomy: Option<tally_config::TaxonomyHandle>,
    /// Replays quarantined records (see [`crate::AdminApi::with_replayer`]).
    pub(crate) replayer: Option<rejected::SharedReplayer>,
    pub(crate) hub: Arc<stream::hub::Hub>,
    /// Keys `GET /api/v1/verify` trusts (see [`crate::AdminApi::with_chain_keys`]).
    pub(crate) chain_keys: verify::TrustedKeys,
    /// The checkpoints `GET /api/v1/verify` resumes from, and its whole-walk permit.
    pub(crate) verify_cache: Arc<verify::VerifyCache>,
    /// Records reads as `audit.log.view` events (see [`crate::AdminApi::with_audit`]).
    pub(crate) audit: Option<audit::AuditTrail>,
    /// `admin_api.limits` and what each caller has in progress.
    pub(crate) limits: Arc<limits::Limits>,
    /// The `/stats/stream` polls, one per distinct filter.
    pub(crate) stats_polls: Arc<stream::stats::Polls>,
    /// The budgets' current use (see [`crate::AdminApi::with_budgets`]).
    pub(crate) budgets: Option<Arc<tally_exporters::postgres::budgets::BudgetBook>>,
    /// Runs erasures (see [`crate::AdminApi::with_eraser`]).
    pub(crate) eraser: Option<erasures::ErasureService>,
    /// The unfolded tails grouped in memory for live answers over every
    /// tenant (see `tailcache`).
    pub(crate) tail_cache: Arc<tailcache::TailCache>,
}
