//! `GET /api/v1/budgets` and `GET /api/v1/budgets/check`: the configured
//! budgets with their current use, answered from the in-memory
//! [`BudgetBook`] that the collector's budget job refreshes about every second
//! (no database work per request).
//!
//! Scope `tokens:read`. A caller bound to one tenant sees only the budgets of
//! that tenant (`tenant` set to it); budgets without a tenant sum every
//! tenant's usage, so only callers that may read every tenant see them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_exporters::postgres::budgets::{BudgetBook, BudgetSnapshot, BudgetStatus};

use crate::caller::{Caller, TenantAccess, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::state::AppState;

/// The query parameters `GET /api/v1/budgets` accepts.
pub const LIST_PARAMETERS: &[&str] = &["tenant"];
/// The query parameters `GET /api/v1/budgets/check` accepts.
pub const CHECK_PARAMETERS: &[&str] = &["tenant", "user"];

/// `GET /api/v1/budgets`.
#[derive(Debug, Serialize)]
pub struct BudgetList {
    /// Every budget the caller may see.
    pub items: Vec<BudgetStatus>,
    /// When the use was read (at most about 2 s old while the database answers).
    pub as_of: DateTime<Utc>,
}

/// One budget that applies, in `GET /api/v1/budgets/check`.
#[derive(Debug, Serialize)]
pub struct BudgetVerdict {
    /// The budget's name.
    pub name: String,
    /// `used / limit`.
    pub used_ratio: f64,
    /// `used >= limit`.
    pub exceeded: bool,
}

/// `GET /api/v1/budgets/check`.
#[derive(Debug, Serialize)]
pub struct BudgetCheck {
    /// Whether any budget that applies is exceeded.
    pub exceeded: bool,
    /// The verdict of each budget checked.
    pub budgets: Vec<BudgetVerdict>,
    /// When the use was read.
    pub as_of: DateTime<Utc>,
}

fn book(state: &AppState) -> Result<Arc<BudgetSnapshot>, ApiError> {
    let book: &BudgetBook = state
        .budgets
        .as_deref()
        .ok_or_else(|| ApiError::NotFound("no budget evaluator runs in this process".into()))?;
    book.snapshot().ok_or_else(|| {
        ApiError::Unavailable("budgets are being computed for the first time; retry".into())
    })
}

/// Whether `caller` may see `budget`.
fn visible(caller: &Caller, budget: &BudgetStatus) -> bool {
    match &caller.tenant {
        TenantAccess::All => true,
        TenantAccess::One(own) => budget.tenant.as_deref() == Some(own.as_str()),
        TenantAccess::Nothing => false,
        // Only a budget of its own user (a tenant-wide budget would tell it
        // the other users' use).
        TenantAccess::OwnRows { tenant, user } => {
            budget.tenant.as_deref() == Some(tenant.as_str())
                && budget.user.as_deref() == Some(user.as_str())
        }
    }
}

/// `GET /api/v1/budgets[?tenant=T]`: every budget the caller may see (with
/// `tenant`, those of tenant T).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<BudgetList>, ApiError> {
    caller.require_scope(SCOPE_TOKENS_READ)?;
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, LIST_PARAMETERS)?;
    let asked = params.text("tenant")?;
    let tenant = caller.tenant_filter(asked.clone())?;
    let snapshot = book(&state)?;
    let items = snapshot
        .budgets
        .iter()
        .filter(|b| visible(&caller, b))
        .filter(|b| asked.is_none() || b.tenant == tenant)
        .cloned()
        .collect();
    Ok(Json(BudgetList {
        items,
        as_of: snapshot.as_of,
    }))
}

/// `GET /api/v1/budgets/check?tenant=T&user=U`: the budgets that count the
/// usage of user U in tenant T (a tenant-bound caller's tenant by default).
pub(crate) async fn check(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<BudgetCheck>, ApiError> {
    caller.require_scope(SCOPE_TOKENS_READ)?;
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, CHECK_PARAMETERS)?;
    let tenant = caller.tenant_filter(params.text("tenant")?)?;
    // A `self:read` caller checks its own user only.
    let user = caller.user_filter(params.text("user")?)?;
    let snapshot = book(&state)?;
    let budgets: Vec<BudgetVerdict> = snapshot
        .budgets
        .iter()
        .filter(|b| visible(&caller, b))
        .filter(|b| {
            let scope_matches =
                |scope: &Option<String>, value: &Option<String>| scope.is_none() || scope == value;
            scope_matches(&b.tenant, &tenant) && scope_matches(&b.user, &user)
        })
        .map(|b| BudgetVerdict {
            name: b.name.clone(),
            used_ratio: b.used_ratio,
            exceeded: b.exceeded,
        })
        .collect();
    Ok(Json(BudgetCheck {
        exceeded: budgets.iter().any(|b| b.exceeded),
        budgets,
        as_of: snapshot.as_of,
    }))
}
