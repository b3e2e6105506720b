//! The authenticated caller of a request: its scopes and the tenants (and, for
//! `self:read`, the user) whose rows it may read, with the checks every route
//! applies ([`Caller::require_scope`], [`Caller::tenant_filter`],
//! [`Caller::user_filter`]). [`crate::auth`] makes one from a credential.

use std::collections::BTreeSet;

use crate::error::ApiError;

/// Scope that reads the activity log.
pub const SCOPE_ACTIVITY_READ: &str = "activity:read";
/// Scope that reads token usage.
pub const SCOPE_TOKENS_READ: &str = "tokens:read";
/// Scope that grants everything.
pub const SCOPE_ADMIN: &str = "admin";
/// Scope that reads the activity and token rows of the caller's own user
/// (`user_id` = the JWT's `sub`) within its tenant, and nothing else. A token
/// carrying it is limited so whatever its other scopes.
pub const SCOPE_SELF_READ: &str = "self:read";

/// Which tenants a caller may read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantAccess {
    /// `tenant: "*"` (or an open API): every tenant.
    All,
    /// Exactly this tenant.
    One(String),
    /// No (or an empty) `tenant` claim: no tenant's data.
    Nothing,
    /// Scope `self:read`: the rows of one user within one tenant.
    OwnRows {
        /// The tenant claim.
        tenant: String,
        /// The caller's `sub`: rows whose `user_id` is this.
        user: String,
    },
}

impl TenantAccess {
    /// The `tally.tenant` and `tally.user` values the database's row-level
    /// security reads for this access (`tally.user` empty: any user).
    pub fn settings(&self) -> (&str, &str) {
        match self {
            TenantAccess::All => ("*", ""),
            TenantAccess::One(tenant) => (tenant, ""),
            TenantAccess::Nothing => ("", ""),
            TenantAccess::OwnRows { tenant, user } => (tenant, user),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub` claim (`anonymous` when the API is open).
    pub subject: String,
    /// Scopes from the `scope` claim.
    pub scopes: BTreeSet<String>,
    /// Tenants from the `tenant` claim.
    pub tenant: TenantAccess,
}

impl Caller {
    /// The caller of an API without authentication: everything is allowed.
    pub fn anonymous() -> Caller {
        Caller {
            subject: "anonymous".to_owned(),
            scopes: [SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ, SCOPE_ADMIN]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            tenant: TenantAccess::All,
        }
    }

    /// The user a `self:read` caller is limited to.
    pub fn own_user(&self) -> Option<&str> {
        match &self.tenant {
            TenantAccess::OwnRows { user, .. } => Some(user),
            _ => None,
        }
    }

    /// 403 for a `self:read` caller: for routes that are not about rows of
    /// one user (verification, quarantine, keys, audit).
    pub fn require_not_self(&self) -> Result<(), ApiError> {
        match self.own_user() {
            Some(_) => Err(ApiError::Forbidden(format!(
                "a {SCOPE_SELF_READ} token reads only its own rows, not this route"
            ))),
            None => Ok(()),
        }
    }

    /// The user filter to apply, given the one the caller asked for: a
    /// `self:read` caller is forced to its own user (403 for another one);
    /// others get what they asked for.
    pub fn user_filter(&self, requested: Option<String>) -> Result<Option<String>, ApiError> {
        match (self.own_user(), requested) {
            (None, requested) => Ok(requested),
            (Some(own), None) => Ok(Some(own.to_owned())),
            (Some(own), Some(asked)) if asked == own => Ok(Some(asked)),
            (Some(_), Some(_)) => Err(ApiError::Forbidden(format!(
                "a {SCOPE_SELF_READ} token may only read its own user's rows"
            ))),
        }
    }

    /// 403 unless the caller has `scope` or `admin`. A `self:read` caller
    /// has the read scopes of the data routes (`activity:read`,
    /// `tokens:read`) for its own rows, and no other (never `admin`).
    pub fn require_scope(&self, scope: &str) -> Result<(), ApiError> {
        if self.own_user().is_some() {
            return if scope == SCOPE_ACTIVITY_READ || scope == SCOPE_TOKENS_READ {
                Ok(())
            } else {
                Err(ApiError::Forbidden(format!(
                    "a {SCOPE_SELF_READ} token reads only its own rows, not this route (needs {scope})"
                )))
            };
        }
        if self.scopes.contains(scope) || self.scopes.contains(SCOPE_ADMIN) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token lacks the {scope} scope"
            )))
        }
    }

    /// The tenant filter to apply, given the one the caller asked for.
    ///
    /// A tenant-scoped caller is forced to its tenant when it asks for none, and
    /// gets 403 when it asks for another one.
    pub fn tenant_filter(&self, requested: Option<String>) -> Result<Option<String>, ApiError> {
        match &self.tenant {
            TenantAccess::All => Ok(requested),
            TenantAccess::One(own) | TenantAccess::OwnRows { tenant: own, .. } => match requested {
                None => Ok(Some(own.clone())),
                Some(asked) if asked == *own => Ok(Some(asked)),
                Some(_) => Err(ApiError::Forbidden(
                    "this token may only read its own tenant".to_owned(),
                )),
            },
            TenantAccess::Nothing => Err(ApiError::Forbidden(
                "this token has no tenant claim, so it may read no tenant's data".to_owned(),
            )),
        }
    }
}
