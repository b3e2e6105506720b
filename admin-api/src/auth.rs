//! Bearer-token authentication (HS256 JWT) and the resulting [`Caller`].
//!
//! Claims: `sub` and `exp` (required), `scope` (space-separated: `activity:read`,
//! `tokens:read`, `admin`), `tenant` (one tenant id, or `*` for every tenant).
//! `iss`/`aud` are required and checked when configured. A token **without** a
//! `tenant` claim (or with an empty one) is valid but may read no tenant's data:
//! tenant-filtered routes answer 403 to it.
//!
//! With no `hs256_secret` configured the API is open: every request is an
//! anonymous caller with every scope and every tenant.

use std::collections::BTreeSet;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ApiError;
use crate::AppState;

/// Scope that reads the activity log.
pub const SCOPE_ACTIVITY_READ: &str = "activity:read";
/// Scope that reads token usage.
pub const SCOPE_TOKENS_READ: &str = "tokens:read";
/// Scope that grants everything.
pub const SCOPE_ADMIN: &str = "admin";

/// Which tenants a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantAccess {
    /// `tenant: "*"` (or an open API): every tenant.
    All,
    /// Exactly this tenant.
    One(String),
    /// No (or an empty) `tenant` claim: no tenant's data.
    Nothing,
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

    /// 403 unless the caller has `scope` or `admin`.
    pub fn require_scope(&self, scope: &str) -> Result<(), ApiError> {
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
            TenantAccess::One(own) => match requested {
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

/// The claims Tally reads; `exp`, `iss`, `aud` and `nbf` are checked by jsonwebtoken.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

/// Verifies bearer tokens against the configured key and rules.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("validation", &self.validation)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the authenticator from `admin_api.auth`; `None` when no key is
    /// configured (the API is open).
    pub fn from_config(config: &tally_config::AuthConfig) -> Result<Option<Self>, ApiError> {
        let Some(jwt) = &config.jwt else {
            return Ok(None);
        };
        let Some(secret) = &jwt.hs256_secret else {
            return Ok(None);
        };
        if secret.is_empty() {
            return Err(ApiError::Config(
                "admin_api.auth.jwt.hs256_secret is empty".to_owned(),
            ));
        }
        if secret.len() < 32 {
            tracing::warn!("admin_api.auth.jwt.hs256_secret is shorter than 32 bytes: use a longer random secret");
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = jwt.leeway_secs;
        validation.validate_exp = true;
        let mut required = vec!["exp", "sub"];
        match &jwt.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &jwt.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not checked.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Authenticator {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }))
    }

    /// Checks the `Authorization` header value (if any) and returns the caller.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header =
            header.ok_or_else(|| ApiError::Unauthorized("missing bearer token".to_owned()))?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::Unauthorized(
                    "the Authorization header must be 'Bearer <token>'".to_owned(),
                ))
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| {
                let reason = match error.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not yet valid",
                    ErrorKind::InvalidSignature => "bad token signature",
                    ErrorKind::InvalidIssuer => "wrong token issuer",
                    ErrorKind::InvalidAudience => "wrong token audience",
                    ErrorKind::InvalidAlgorithm => "token algorithm not accepted (HS256 only)",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                    _ => "malformed token",
                };
                tracing::debug!(reason, "admin API rejected a bearer token");
                let message = match error.kind() {
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("token lacks the required claim {claim}")
                    }
                    _ => reason.to_owned(),
                };
                ApiError::Unauthorized(message)
            },
        )?;
        let claims = data.claims;
        let scopes = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        let tenant = match claims.tenant.as_deref() {
            Some("*") => TenantAccess::All,
            Some("") | None => TenantAccess::Nothing,
            Some(one) => TenantAccess::One(one.to_owned()),
        };
        Ok(Caller {
            subject: claims.sub,
            scopes,
            tenant,
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(authenticator) = &state.auth else {
            return Ok(Caller::anonymous());
        };
        let header = match parts.headers.get(AUTHORIZATION) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::Unauthorized("the Authorization header is not ASCII".to_owned())
            })?),
        };
        authenticator.authenticate(header)
    }
}
