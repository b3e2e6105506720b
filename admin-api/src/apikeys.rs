//! API keys for machines: `tally_<prefix>_<secret>`.
//!
//! A key is made of 8 random bytes (the `prefix`, 16 hex characters, which
//! finds its row) and 32 random bytes (the secret, 64 hex characters). Only the
//! SHA-256 of the whole key is stored (`api_keys.secret_hash`): the secret is
//! high-entropy, so a slow password hash adds nothing. The key is shown once,
//! when it is created.
//!
//! The admin API accepts a key as `Authorization: Bearer tally_…`, as
//! `X-API-Key: tally_…`, and on live feeds as `?access_token=tally_…`. Verified
//! keys are cached for `admin_api.auth.api_keys.cache_ttl_secs` (default 10 s):
//! a revoked key stops working within that time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::auth::{Caller, TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_ADMIN, SCOPE_TOKENS_READ};

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "tally_";
/// Random bytes of the lookup prefix (hex-encoded in the key).
const PREFIX_BYTES: usize = 8;
/// Random bytes of the secret (hex-encoded in the key).
const SECRET_BYTES: usize = 32;
/// Scopes a key may carry.
pub const SCOPES: &[&str] = &[SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ, SCOPE_ADMIN];

/// A failure creating, listing, revoking or checking API keys.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The request is invalid (unknown scope, empty tenant, …).
    #[error("{0}")]
    Invalid(String),
    /// No key has this id or prefix.
    #[error("no API key has the id or prefix {0}")]
    NotFound(String),
    /// The operating system's random source failed.
    #[error("cannot generate a random key: {0}")]
    Random(String),
    /// A database query failed.
    #[error("API key query failed: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// A new key: `key` is shown to the user once and never stored.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The row id.
    pub id: Uuid,
    /// The lookup prefix (part of the key; safe to show and log).
    pub prefix: String,
    /// The whole key, `tally_<prefix>_<secret>`.
    pub key: String,
}

/// A stored key as `tally apikey list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// The row id.
    pub id: Uuid,
    /// The lookup prefix.
    pub prefix: String,
    /// One tenant id, or `*`.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Free text given at creation.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Whether `text` is `bytes` bytes in lowercase hex.
fn hex_of(text: &str, bytes: usize) -> bool {
    text.len() == bytes * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The parts of a presented key: `(prefix, key)`; `None` when it does not have
/// the shape of a Tally key.
pub fn parse(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (prefix, secret) = rest.split_once('_')?;
    (hex_of(prefix, PREFIX_BYTES) && hex_of(secret, SECRET_BYTES)).then_some(prefix)
}

/// Why a key that [`parse`] refuses is refused: a well-formed `tally_<prefix>_` with a
/// secret of the wrong shape is a wrong secret ([`Refusal::Unknown`]), like any other
/// wrong secret; only a key without a Tally prefix is [`Refusal::Malformed`].
fn shape_refusal(key: &str) -> Refusal {
    let prefix_ok = key
        .strip_prefix(KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(prefix, _)| hex_of(prefix, PREFIX_BYTES));
    if prefix_ok {
        Refusal::Unknown
    } else {
        Refusal::Malformed
    }
}

/// SHA-256 of the whole key.
fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality of two hashes in time independent of where they differ.
fn same_hash(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

fn random_hex(bytes: usize) -> Result<String, ApiKeyError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| ApiKeyError::Random(error.to_string()))?;
    Ok(hex::encode(buffer))
}

/// Checks a tenant and scopes for a new key; returns the scopes deduplicated
/// in a stable order.
fn checked(tenant: &str, scopes: &[String]) -> Result<Vec<String>, ApiKeyError> {
    if tenant.trim().is_empty() || tenant.trim() != tenant {
        return Err(ApiKeyError::Invalid(
            "the tenant must be a tenant id (or * for every tenant), without surrounding spaces"
                .to_owned(),
        ));
    }
    let mut wanted = BTreeSet::new();
    for scope in scopes.iter().flat_map(|s| s.split([' ', ','])) {
        if scope.is_empty() {
            continue;
        }
        if !SCOPES.contains(&scope) {
            return Err(ApiKeyError::Invalid(format!(
                "unknown scope {scope:?}; accepted: {}",
                SCOPES.join(", ")
            )));
        }
        wanted.insert(scope.to_owned());
    }
    if wanted.is_empty() {
        return Err(ApiKeyError::Invalid(format!(
            "give at least one scope ({})",
            SCOPES.join(", ")
        )));
    }
    Ok(wanted.into_iter().collect())
}

/// Creates a key for `tenant` (`*` = every tenant) with `scopes` (each entry may
/// hold several, separated by spaces or commas).
pub async fn create(
    client: &Client,
    tenant: &str,
    scopes: &[String],
    description: Option<&str>,
) -> Result<CreatedKey, ApiKeyError> {
    let scopes = checked(tenant, scopes)?;
    let id = Uuid::new_v4();
    let prefix = random_hex(PREFIX_BYTES)?;
    let key = format!("{KEY_PREFIX}{prefix}_{}", random_hex(SECRET_BYTES)?);
    let secret_hash = hash(&key).to_vec();
    client
        .execute(
            "INSERT INTO api_keys (id, prefix, secret_hash, tenant, scopes, description) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&id, &prefix, &secret_hash, &tenant, &scopes, &description],
        )
        .await?;
    tracing::info!(%id, %prefix, tenant, scopes = %scopes.join(" "), "API key created");
    Ok(CreatedKey { id, prefix, key })
}

/// Revokes the key with this id or prefix; `Ok(false)` when it was already revoked.
pub async fn revoke(client: &Client, id_or_prefix: &str) -> Result<bool, ApiKeyError> {
    let id = id_or_prefix.parse::<Uuid>().ok();
    let row = client
        .query_opt(
            "WITH target AS (SELECT id, revoked_at FROM api_keys \
                             WHERE id = $1 OR prefix = $2 FOR UPDATE), \
                  done AS (UPDATE api_keys SET revoked_at = now() \
                           WHERE id IN (SELECT id FROM target WHERE revoked_at IS NULL) \
                           RETURNING id) \
             SELECT target.id, EXISTS (SELECT 1 FROM done) FROM target",
            &[&id, &id_or_prefix],
        )
        .await?;
    match row {
        None => Err(ApiKeyError::NotFound(id_or_prefix.to_owned())),
        Some(row) => {
            let revoked_now: bool = row.try_get(1)?;
            let id: Uuid = row.try_get(0)?;
            tracing::info!(%id, revoked_now, "API key revoked");
            Ok(revoked_now)
        }
    }
}

/// Every key, newest first (secrets are never stored, so never shown).
pub async fn list(client: &Client) -> Result<Vec<ApiKeyInfo>, ApiKeyError> {
    let rows = client
        .query(
            "SELECT id, prefix, tenant, scopes, description, created_at, revoked_at \
             FROM api_keys ORDER BY created_at DESC, id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ApiKeyInfo {
                id: row.try_get(0)?,
                prefix: row.try_get(1)?,
                tenant: row.try_get(2)?,
                scopes: row.try_get(3)?,
                description: row.try_get(4)?,
                created_at: row.try_get(5)?,
                revoked_at: row.try_get(6)?,
            })
        })
        .collect()
}

/// What a verified key grants.
#[derive(Debug, Clone)]
struct Grant {
    id: Uuid,
    secret_hash: Vec<u8>,
    tenant: String,
    scopes: BTreeSet<String>,
}

impl Grant {
    fn caller(&self, prefix: &str) -> Caller {
        Caller {
            subject: format!("apikey:{prefix}"),
            scopes: self.scopes.clone(),
            tenant: match self.tenant.as_str() {
                "*" => TenantAccess::All,
                one => TenantAccess::One(one.to_owned()),
            },
        }
    }
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not the shape of a Tally API key (`tally_<16 hex>_…`).
    Malformed,
    /// No such key, or the secret does not match (whatever its shape): "invalid API key".
    Unknown,
    /// The key was revoked.
    Revoked,
}

/// Verifies presented keys against `api_keys`, with a small bounded cache of
/// recently verified keys.
#[derive(Debug)]
pub struct KeyVerifier {
    ttl: Duration,
    max_entries: usize,
    cache: Mutex<HashMap<String, (Instant, Grant)>>,
}

impl KeyVerifier {
    /// A verifier caching each verified key for `ttl` (zero: no cache), at most
    /// `max_entries` keys at once.
    pub fn new(ttl: Duration, max_entries: usize) -> KeyVerifier {
        KeyVerifier {
            ttl,
            max_entries: max_entries.max(1),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, prefix: &str) -> Option<Grant> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(prefix) {
            Some((until, grant)) if Instant::now() < *until => Some(grant.clone()),
            _ => None,
        }
    }

    /// Until when the key with `prefix` is trusted from the cache (`None`: not cached).
    pub(crate) fn cached_until(&self, prefix: &str) -> Option<Instant> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(prefix).map(|(until, _)| *until)
    }

    fn remember(&self, prefix: &str, grant: &Grant) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.max_entries {
            cache.retain(|_, (until, _)| now < *until);
        }
        if cache.len() >= self.max_entries {
            // Still full of live entries: start over rather than grow.
            cache.clear();
        }
        cache.insert(prefix.to_owned(), (now + self.ttl, grant.clone()));
    }

    fn forget(&self, prefix: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(prefix);
    }

    /// Verifies `key`; `Ok(Err(refusal))` when it is refused, `Err` when the
    /// database cannot answer.
    pub async fn verify(
        &self,
        client: &Client,
        key: &str,
    ) -> Result<Result<Caller, Refusal>, tokio_postgres::Error> {
        let Some(prefix) = parse(key) else {
            return Ok(Err(shape_refusal(key)));
        };
        let presented = hash(key);
        if let Some(grant) = self.cached(prefix) {
            if same_hash(&grant.secret_hash, &presented) {
                return Ok(Ok(grant.caller(prefix)));
            }
            // A cached prefix with another secret: a guess. Ask the database.
        }
        let row = client
            .query_opt(
                "SELECT id, secret_hash, tenant, scopes, revoked_at IS NOT NULL \
                 FROM api_keys WHERE prefix = $1",
                &[&prefix],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Err(Refusal::Unknown));
        };
        let grant = Grant {
            id: row.try_get(0)?,
            secret_hash: row.try_get(1)?,
            tenant: row.try_get(2)?,
            scopes: row.try_get::<_, Vec<String>>(3)?.into_iter().collect(),
        };
        let revoked: bool = row.try_get(4)?;
        if !same_hash(&grant.secret_hash, &presented) {
            return Ok(Err(Refusal::Unknown));
        }
        if revoked {
            self.forget(prefix);
            tracing::debug!(id = %grant.id, "revoked API key presented");
            return Ok(Err(Refusal::Revoked));
        }
        self.remember(prefix, &grant);
        Ok(Ok(grant.caller(prefix)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_by_shape() {
        let key = format!("tally_{}_{}", "ab".repeat(8), "0f".repeat(32));
        assert_eq!(parse(&key), Some("abababababababab"));
        for bad in [
            "tally_",
            "tally_abc_def",
            &format!("tally_{}_{}", "AB".repeat(8), "0f".repeat(32)),
            &format!("tally_{}_{}x", "ab".repeat(8), "0f".repeat(32)),
            &format!("tally_{}{}", "ab".repeat(8), "0f".repeat(32)),
            "eyJhbGciOiJIUzI1NiJ9.e30.x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn scopes_and_tenants_are_checked() {
        let scopes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            checked(
                "acme",
                &scopes(&["tokens:read activity:read", "admin,tokens:read"])
            )
            .ok(),
            Some(scopes(&["activity:read", "admin", "tokens:read"]))
        );
        assert!(matches!(
            checked("acme", &scopes(&["activity:write"])),
            Err(ApiKeyError::Invalid(_))
        ));
        assert!(matches!(checked("acme", &[]), Err(ApiKeyError::Invalid(_))));
        assert!(matches!(
            checked("", &scopes(&["admin"])),
            Err(ApiKeyError::Invalid(_))
        ));
        assert!(checked("*", &scopes(&["admin"])).is_ok());
    }

    #[test]
    fn hashes_compare_whole() {
        let a = hash("tally_x");
        assert!(same_hash(&a, &hash("tally_x")));
        assert!(!same_hash(&a, &hash("tally_y")));
        assert!(!same_hash(&a, &a[..31]));
    }

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let verifier = KeyVerifier::new(Duration::from_secs(60), 2);
        let grant = Grant {
            id: Uuid::nil(),
            secret_hash: vec![0; 32],
            tenant: "acme".into(),
            scopes: BTreeSet::new(),
        };
        for prefix in ["a", "b", "c"] {
            verifier.remember(prefix, &grant);
        }
        let len = verifier.cache.lock().map(|c| c.len()).unwrap_or(usize::MAX);
        assert!(len <= 2, "{len}");
        assert!(verifier.cached("c").is_some());
        let no_cache = KeyVerifier::new(Duration::ZERO, 2);
        no_cache.remember("a", &grant);
        assert!(no_cache.cached("a").is_none());
    }
}
