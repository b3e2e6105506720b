//! Authentication (JWT bearer tokens and API keys) and the resulting [`Caller`].
//!
//! **JWT** (`Authorization: Bearer <jwt>`): HS256 (`admin_api.auth.jwt.hs256_secret`),
//! RS256 / ES256 (`public_key_pem` or `public_key_file`: an RSA or P-256 public
//! key) and keys from a JWKS file (`jwks_file`, selected by the token's `kid`).
//! The accepted algorithms are exactly those of the configured keys, and a
//! token is only ever checked against a key of its own algorithm: `alg: none`
//! and algorithm confusion (an HS256 token "signed" with an RSA public key) are
//! refused. Claims: `sub` and `exp` (required), `scope` (space-separated:
//! `activity:read`, `tokens:read`, `admin`, `self:read`: only the rows whose
//! `user_id` is `sub`, see [`TenantAccess::OwnRows`]), `tenant` (one tenant id,
//! or `*` for every tenant). `iss`/`aud` are required and checked when configured. A
//! token **without** a `tenant` claim (or with an empty one) is valid but may
//! read no tenant's data: tenant-filtered routes answer 403 to it.
//!
//! **API keys** (`Authorization: Bearer tally_…` or `X-API-Key: tally_…`), see
//! [`crate::apikeys`]: enabled by `admin_api.auth.api_keys.enabled`, or by
//! default whenever a JWT key is configured.
//!
//! With neither a JWT key nor API keys the API is open: every request is an
//! anonymous caller with every scope and every tenant.
//!
//! The caller and its scopes are in [`crate::caller`].
//!
//! A live feed's credential is watched for its end in [`watch`].

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::Engine;
use deadpool_postgres::Pool;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::apikeys::{self, KeyVerifier, Refusal};
pub use crate::caller::{
    Caller, TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_ADMIN, SCOPE_SELF_READ, SCOPE_TOKENS_READ,
};
use crate::error::ApiError;
use crate::state::AppState;

mod watch;
pub(crate) use watch::CredentialWatch;

/// The header that may carry an API key (besides `Authorization: Bearer`).
pub const API_KEY_HEADER: &str = "x-api-key";

/// The claims Tally reads; `exp`, `iss`, `aud` and `nbf` are checked by jsonwebtoken.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

/// The part of a JWT header Tally reads before choosing a key.
#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// One verification key: tokens with `alg` (and, when the key has one, `kid`)
/// are checked against it.
#[derive(Clone)]
struct JwtKey {
    /// Where it came from, for logs and errors (`hs256_secret`, `jwks_file[kid]`, …).
    source: String,
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// Accepts exactly `alg`.
    validation: Validation,
}

/// Verifies JWTs against the configured keys.
#[derive(Clone)]
struct JwtVerifier {
    keys: Vec<JwtKey>,
}

/// Verifies credentials: JWTs and API keys, as configured.
#[derive(Clone)]
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    api_keys: Option<ApiKeys>,
}

/// API key verification: the cache and the connections it looks keys up with.
#[derive(Clone)]
struct ApiKeys {
    verifier: std::sync::Arc<KeyVerifier>,
    pool: Pool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .jwt
            .iter()
            .flat_map(|jwt| &jwt.keys)
            .map(|key| format!("{} ({:?})", key.source, key.alg))
            .collect();
        f.debug_struct("Authenticator")
            .field("jwt_keys", &keys)
            .field("api_keys", &self.api_keys.is_some())
            .finish_non_exhaustive()
    }
}

fn config_error(key: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::Config(format!("admin_api.auth.jwt.{key}: {message}"))
}

/// The validation rules shared by every key, for `alg`.
fn validation_for(jwt: &tally_config::JwtConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = jwt.leeway_secs;
    validation.validate_exp = true;
    // jsonwebtoken leaves `nbf` unchecked by default: a token is not valid
    // before its `nbf` (within the leeway).
    validation.validate_nbf = true;
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
    validation
}

/// An RSA (RS256) or P-256 (ES256) public key from PEM text.
fn pem_key(config_key: &str, pem: &str) -> Result<(Algorithm, DecodingKey), ApiError> {
    if pem.contains("PRIVATE KEY") {
        return Err(config_error(
            config_key,
            "holds a private key; give the issuer's public key",
        ));
    }
    if !pem.contains("-----BEGIN") {
        return Err(config_error(config_key, "is not PEM text (-----BEGIN ...)"));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((Algorithm::RS256, key));
    }
    match DecodingKey::from_ec_pem(pem.as_bytes()) {
        Ok(key) => Ok((Algorithm::ES256, key)),
        Err(error) => Err(config_error(
            config_key,
            format!("not an RSA or P-256 public key ({error})"),
        )),
    }
}

/// The keys of a JWKS document.
fn jwks_keys(
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, ApiError> {
    let where_ = format!("{}", path.display());
    let set: JwkSet = serde_json::from_str(text).map_err(|error| {
        config_error(
            "jwks_file",
            format!("{where_}: not a JWKS document ({error})"),
        )
    })?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("{where_}: key {kid:?}"),
            None => format!("{where_}: key #{index}"),
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            tracing::info!("{name} is an encryption key (use: enc): ignored");
            continue;
        }
        let derived = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(config_error(
                    "jwks_file",
                    format!("{name} is a symmetric key; put shared secrets in hs256_secret"),
                ))
            }
            _ => {
                return Err(config_error(
                    "jwks_file",
                    format!("{name}: only RSA (RS256) and P-256 (ES256) keys are supported"),
                ))
            }
        };
        match jwk.common.key_algorithm {
            None | Some(KeyAlgorithm::RS256) | Some(KeyAlgorithm::ES256) => {}
            Some(other) => {
                return Err(config_error(
                    "jwks_file",
                    format!("{name}: algorithm {other:?} is not supported (RS256, ES256)"),
                ))
            }
        }
        let declared = match jwk.common.key_algorithm {
            Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => Algorithm::ES256,
            _ => derived,
        };
        if declared != derived {
            return Err(config_error(
                "jwks_file",
                format!("{name}: alg {declared:?} does not match its key type"),
            ));
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|error| config_error("jwks_file", format!("{name}: {error}")))?;
        keys.push((jwk.common.key_id.clone(), derived, key));
    }
    if keys.is_empty() {
        return Err(config_error(
            "jwks_file",
            format!("{where_} holds no signature key"),
        ));
    }
    Ok(keys)
}

impl JwtVerifier {
    /// The keys of `admin_api.auth.jwt`; `None` when none is configured.
    fn from_config(jwt: &tally_config::JwtConfig) -> Result<Option<JwtVerifier>, ApiError> {
        if jwt.needs_audience() && jwt.audience.as_deref().is_none_or(str::is_empty) {
            return Err(config_error(
                "audience",
                "must be set with a public key or JWKS file (the issuer's keys sign tokens for other applications too)",
            ));
        }
        let mut keys = Vec::new();
        let mut add = |source: String, kid: Option<String>, alg: Algorithm, key: DecodingKey| {
            keys.push(JwtKey {
                source,
                kid,
                alg,
                key,
                validation: validation_for(jwt, alg),
            });
        };
        if let Some(secret) = &jwt.hs256_secret {
            if secret.is_empty() {
                return Err(config_error("hs256_secret", "is empty"));
            }
            if secret.len() < 32 {
                tracing::warn!("admin_api.auth.jwt.hs256_secret is shorter than 32 bytes: use a longer random secret");
            }
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|error| config_error("hs256_secret", error.to_string()))?;
            add("hs256_secret".to_owned(), None, Algorithm::HS256, key);
        }
        if jwt.public_key_pem.is_some() && jwt.public_key_file.is_some() {
            return Err(config_error(
                "public_key_pem",
                "set public_key_pem or public_key_file, not both",
            ));
        }
        if let Some(pem) = &jwt.public_key_pem {
            let (alg, key) = pem_key("public_key_pem", pem)?;
            add("public_key_pem".to_owned(), None, alg, key);
        }
        if let Some(path) = &jwt.public_key_file {
            let pem = std::fs::read_to_string(path).map_err(|error| {
                config_error(
                    "public_key_file",
                    format!("cannot read {}: {error}", path.display()),
                )
            })?;
            let (alg, key) = pem_key("public_key_file", &pem)?;
            add(
                format!("public_key_file {}", path.display()),
                None,
                alg,
                key,
            );
        }
        if let Some(path) = &jwt.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                config_error(
                    "jwks_file",
                    format!("cannot read {}: {error}", path.display()),
                )
            })?;
            for (kid, alg, key) in jwks_keys(path, &text)? {
                let source = format!("jwks_file[{}]", kid.as_deref().unwrap_or("no kid"));
                add(source, kid, alg, key);
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let algorithms: BTreeSet<String> = keys.iter().map(|k| format!("{:?}", k.alg)).collect();
        tracing::info!(
            keys = keys.len(),
            algorithms = %algorithms.into_iter().collect::<Vec<_>>().join(" "),
            "admin API verifies JWTs"
        );
        Ok(Some(JwtVerifier { keys }))
    }

    /// The accepted algorithms, for messages.
    fn algorithm_names(&self) -> String {
        let names: BTreeSet<String> = self.keys.iter().map(|k| format!("{:?}", k.alg)).collect();
        names.into_iter().collect::<Vec<_>>().join(", ")
    }

    /// Verifies `token` and returns its caller.
    fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let header = raw_header(token).ok_or_else(|| unauthorized("malformed token"))?;
        let accepted = self.algorithm_names();
        let alg: Option<Algorithm> = header.alg.parse().ok();
        let Some(alg) = alg.filter(|alg| self.keys.iter().any(|k| k.alg == *alg)) else {
            return Err(unauthorized(&format!(
                "token algorithm {} not accepted (accepted: {accepted})",
                crate::error::truncate(&header.alg, 16)
            )));
        };
        let of_alg = self.keys.iter().filter(|k| k.alg == alg);
        let candidates: Vec<&JwtKey> = match &header.kid {
            Some(kid) => {
                let by_kid: Vec<&JwtKey> = of_alg
                    .clone()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if by_kid.is_empty() {
                    of_alg.filter(|k| k.kid.is_none()).collect()
                } else {
                    by_kid
                }
            }
            None => of_alg.collect(),
        };
        if candidates.is_empty() {
            return Err(unauthorized("unknown token key id (kid)"));
        }
        let mut first_error = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return Ok(caller_of(data.claims)),
                // Another key of the same algorithm may have signed it.
                Err(error) if *error.kind() == ErrorKind::InvalidSignature => {
                    first_error.get_or_insert(error);
                }
                Err(error) => return Err(jwt_error(&error)),
            }
        }
        match first_error {
            Some(error) => Err(jwt_error(&error)),
            None => Err(unauthorized("bad token signature")),
        }
    }
}

/// The header of a compact JWT, read without trusting it.
fn raw_header(token: &str) -> Option<RawHeader> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn unauthorized(message: &str) -> ApiError {
    tracing::debug!(reason = message, "admin API rejected a credential");
    ApiError::Unauthorized(message.to_owned())
}

fn jwt_error(error: &jsonwebtoken::errors::Error) -> ApiError {
    match error.kind() {
        ErrorKind::ExpiredSignature => unauthorized("token expired"),
        ErrorKind::ImmatureSignature => unauthorized("token not yet valid"),
        ErrorKind::InvalidSignature => unauthorized("bad token signature"),
        ErrorKind::InvalidIssuer => unauthorized("wrong token issuer"),
        ErrorKind::InvalidAudience => unauthorized("wrong token audience"),
        ErrorKind::InvalidAlgorithm => unauthorized("token algorithm not accepted"),
        ErrorKind::MissingRequiredClaim(claim) => {
            unauthorized(&format!("token lacks the required claim {claim}"))
        }
        _ => unauthorized("malformed token"),
    }
}

fn caller_of(claims: Claims) -> Caller {
    let scopes = claims
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    let scopes: BTreeSet<String> = scopes;
    let own = scopes.contains(SCOPE_SELF_READ);
    let tenant = match claims.tenant.as_deref() {
        // `self:read` is within one tenant: with `*` or none it reads nothing.
        Some("*") if own => TenantAccess::Nothing,
        Some("*") => TenantAccess::All,
        Some("") | None => TenantAccess::Nothing,
        Some(one) if own => TenantAccess::OwnRows {
            tenant: one.to_owned(),
            user: claims.sub.clone(),
        },
        Some(one) => TenantAccess::One(one.to_owned()),
    };
    Caller {
        subject: claims.sub,
        scopes,
        tenant,
    }
}

impl Authenticator {
    /// Builds the authenticator from `admin_api.auth`; `None` when neither a JWT
    /// key is configured nor API keys are enabled (the API is open).
    /// `database_url` is where API keys are looked up (no connection is opened yet).
    pub fn from_config(
        config: &tally_config::AuthConfig,
        database_url: &str,
    ) -> Result<Option<Self>, ApiError> {
        let jwt = match &config.jwt {
            Some(jwt) => JwtVerifier::from_config(jwt)?,
            None => None,
        };
        let api_keys = if config.api_keys_enabled() {
            let settings = &config.api_keys;
            if settings.cache_max_entries == 0 {
                return Err(ApiError::Config(
                    "admin_api.auth.api_keys.cache_max_entries must be at least 1".to_owned(),
                ));
            }
            Some(ApiKeys {
                verifier: std::sync::Arc::new(KeyVerifier::new(
                    Duration::from_secs(settings.cache_ttl_secs),
                    settings.cache_max_entries,
                )),
                pool: key_pool(database_url)?,
            })
        } else {
            None
        };
        if jwt.is_none() && api_keys.is_none() {
            return Ok(None);
        }
        Ok(Some(Authenticator { jwt, api_keys }))
    }

    /// Checks a credential (a JWT or an API key; `None` when the request has
    /// none) and returns the caller.
    pub async fn authenticate(&self, credential: Option<&str>) -> Result<Caller, ApiError> {
        let Some(credential) = credential.map(str::trim) else {
            return Err(unauthorized("missing bearer token or API key"));
        };
        if credential.is_empty() {
            return Err(unauthorized("missing bearer token or API key"));
        }
        if credential.starts_with(apikeys::KEY_PREFIX) {
            let Some(api_keys) = &self.api_keys else {
                return Err(unauthorized(
                    "API keys are not enabled (admin_api.auth.api_keys.enabled)",
                ));
            };
            let verdict = api_keys
                .verifier
                .verify(&api_keys.pool, credential)
                .await
                .map_err(|error| match error {
                    apikeys::VerifyError::Pool(error) => ApiError::from_pool(error),
                    apikeys::VerifyError::Database(error) => ApiError::from_db(error),
                })?;
            return match verdict {
                Ok(grant) => Ok(apikeys::caller(grant)),
                Err(Refusal::Malformed) => Err(unauthorized("malformed API key")),
                Err(Refusal::Unknown) => Err(unauthorized("invalid API key")),
                Err(Refusal::Revoked) => Err(unauthorized("API key revoked")),
            };
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(credential),
            None => Err(unauthorized(
                "JWTs are not accepted (no admin_api.auth.jwt key is configured): use an API key",
            )),
        }
    }

    /// The credential of a request: `Authorization: Bearer <token>`, else
    /// `X-API-Key`, else `fallback` (the `?access_token=` of a live feed).
    pub(crate) fn credential<'a>(
        headers: &'a HeaderMap,
        fallback: Option<&'a str>,
    ) -> Result<Option<&'a str>, ApiError> {
        if let Some(value) = headers.get(AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
            return match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Ok(Some(token.trim()))
                }
                _ => Err(unauthorized(
                    "the Authorization header must be 'Bearer <token>'",
                )),
            };
        }
        if let Some(value) = headers.get(API_KEY_HEADER) {
            let value = value
                .to_str()
                .map_err(|_| unauthorized("the X-API-Key header is not ASCII"))?;
            if !value.trim().starts_with(apikeys::KEY_PREFIX) {
                return Err(unauthorized(
                    "the X-API-Key header must hold a tally_ API key",
                ));
            }
            return Ok(Some(value.trim()));
        }
        Ok(fallback)
    }

    /// The caller of a request (see [`Authenticator::credential`]); anonymous
    /// when `auth` is `None` (an open API).
    pub(crate) async fn caller(
        auth: Option<&Authenticator>,
        headers: &HeaderMap,
        fallback: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let caller = match auth {
            None => Caller::anonymous(),
            Some(auth) => {
                let credential = Authenticator::credential(headers, fallback)?;
                auth.authenticate(credential).await?
            }
        };
        crate::audit::remember(&caller);
        Ok(caller)
    }
}

/// The small pool API keys are looked up with (opened on first use): the same
/// one the OTLP receivers use ([`tally_exporters::apikeys::lookup_pool`]).
fn key_pool(database_url: &str) -> Result<Pool, ApiError> {
    tally_exporters::apikeys::lookup_pool(database_url, "tally-admin-api-keys")
        .map_err(|e| ApiError::Config(e.to_string()))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already verified by the limits middleware.
        if let Some(crate::limits::Authenticated(caller)) = parts.extensions.get() {
            crate::audit::remember(caller);
            return Ok(caller.clone());
        }
        Authenticator::caller(state.auth.as_ref(), &parts.headers, None).await
    }
}

#[cfg(test)]
mod tests;
