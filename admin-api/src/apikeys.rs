//! API keys for machines: `tally_<prefix>_<secret>` (see
//! [`tally_exporters::apikeys`], which stores and verifies them for the admin
//! API and the OTLP receivers alike).
//!
//! The admin API accepts a key as `Authorization: Bearer tally_…`, as
//! `X-API-Key: tally_…`, and on live feeds as `?access_token=tally_…`. Verified
//! keys are cached for `admin_api.auth.api_keys.cache_ttl_secs` (default 10 s):
//! a revoked key stops working within that time. A key with only the `ingest`
//! scope reads nothing here.

pub use tally_exporters::apikeys::{
    create, create_for_user, create_restricted, create_with, list, parse, revoke, ApiKeyError,
    ApiKeyInfo, CreatedKey, Grant, IngestRestrictions, KeyVerifier, Refusal, VerifyError,
    KEY_PREFIX, SCOPES, SCOPE_INGEST,
};

use crate::caller::{Caller, TenantAccess};

/// The admin API caller a verified key stands for. A `self:read` key reads
/// the rows of its user within its tenant (nothing without a user, or with `*`,
/// which creation refuses anyway).
pub fn caller(grant: Grant) -> Caller {
    let own = grant.scopes.contains(crate::caller::SCOPE_SELF_READ);
    let tenant = match (grant.tenant.as_str(), grant.user) {
        (_, _) if !own && grant.tenant == "*" => TenantAccess::All,
        (one, _) if !own => TenantAccess::One(one.to_owned()),
        ("*", _) | (_, None) => TenantAccess::Nothing,
        (one, Some(user)) => TenantAccess::OwnRows {
            tenant: one.to_owned(),
            user,
        },
    };
    Caller {
        // Not `apikey:…`: the redactor reads `apikey: value` as a secret and the audit
        // trail would lose which key read.
        subject: format!("apikey/{}", grant.prefix),
        scopes: grant.scopes,
        tenant,
    }
}
