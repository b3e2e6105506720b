//! API keys: `tally_<prefix>_<secret>`, stored hashed in `api_keys`, and the
//! verifier the admin API and the OTLP receivers share.
//!
//! A key is made of 8 random bytes (the `prefix`, 16 hex characters, which
//! finds its row) and 32 random bytes (the secret, 64 hex characters). Only the
//! SHA-256 of the whole key is stored (`api_keys.secret_hash`): the secret is
//! high-entropy, so a slow password hash adds nothing. The key is shown once,
//! when it is created.
//!
//! [`KeyVerifier`] answers most presentations from memory:
//! - a row looked up by its prefix is cached for the TTL (`cache_ttl_secs`),
//!   whatever secret was presented with it: a wrong secret or a revoked key is
//!   refused from the cache too (a prefix's hash never changes);
//! - the *negative cache*: the set of every prefix in `api_keys`, reloaded at
//!   most once per [`KNOWN_REFRESH_MIN`]. A prefix not in it is refused after
//!   the next reload (which a key created before the request always makes it
//!   into), without a query of its own: a flood of random keys costs one
//!   reload per interval, not one query per key, and each of its requests
//!   waits up to that interval. Its size is the number of keys in the table
//!   (8 bytes each).
//!
//! Over 600 lines: creation, listing, revocation and the cached verifier share the key format and the table.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::metrics;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "tally_";
/// Random bytes of the lookup prefix (hex-encoded in the key).
const PREFIX_BYTES: usize = 8;
/// Random bytes of the secret (hex-encoded in the key).
const SECRET_BYTES: usize = 32;
/// The scope of keys that may write through the OTLP receivers.
pub const SCOPE_INGEST: &str = "ingest";
/// The admin API scope of a key that reads only its user's rows.
pub const SCOPE_SELF_READ: &str = "self:read";
/// Scopes a key may carry: the admin API's and `ingest`.
pub const SCOPES: &[&str] = &[
    "activity:read",
    "tokens:read",
    "admin",
    SCOPE_SELF_READ,
    SCOPE_INGEST,
];
/// Shortest time between two reloads of the known-prefix set (the longest a
/// request with an unknown key waits for its refusal).
pub const KNOWN_REFRESH_MIN: Duration = Duration::from_secs(1);

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
    /// The user whose rows a `self:read` key reads.
    pub user: Option<String>,
    /// Free text given at creation.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its REST ingest restrictions (browser origins, actions).
    pub restrictions: IngestRestrictions,
}

/// Whether `text` is `bytes` bytes in lowercase hex.
fn hex_of(text: &str, bytes: usize) -> bool {
    text.len() == bytes * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The lookup prefix of a presented key; `None` when it does not have the
/// shape of a Tally key.
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

/// A parsed prefix (16 lowercase hex characters) as a number.
fn prefix_number(prefix: &str) -> Option<u64> {
    u64::from_str_radix(prefix, 16).ok()
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

/// Checks the user of a new key: required with `self:read` (and then one
/// tenant), refused without it.
fn checked_user(tenant: &str, scopes: &[String], user: Option<&str>) -> Result<(), ApiKeyError> {
    let own = scopes.iter().any(|s| s == SCOPE_SELF_READ);
    match user {
        Some(user) if !own => Err(ApiKeyError::Invalid(format!(
            "a user ({user:?}) is only for a key with scope {SCOPE_SELF_READ}"
        ))),
        None if own => Err(ApiKeyError::Invalid(format!(
            "a key with scope {SCOPE_SELF_READ} needs the user whose rows it reads (--user)"
        ))),
        Some(user) if user.trim().is_empty() || user.trim() != user || user.contains('\0') => {
            Err(ApiKeyError::Invalid(
                "the user must be a user id, without surrounding spaces".to_owned(),
            ))
        }
        Some(_) if tenant == "*" => Err(ApiKeyError::Invalid(format!(
            "a key with scope {SCOPE_SELF_READ} reads within one tenant, not *"
        ))),
        _ => Ok(()),
    }
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

/// What an ingest key may do on REST ingest besides writing its tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestRestrictions {
    /// Browser origins (`https://app.example`) that may use the key.
    pub origins: Vec<String>,
    /// Actions the key may write (an entry ending in `*` is a prefix); empty: any.
    pub actions: Vec<String>,
}

/// Checks an origin as browsers send it: `scheme://host[:port]`, nothing after.
fn checked_origin(origin: &str) -> Result<String, ApiKeyError> {
    let invalid = || {
        ApiKeyError::Invalid(format!(
            "origin {origin:?}: expected scheme://host[:port] as a browser sends it \
             (e.g. https://app.example), without a path"
        ))
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(invalid)?;
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '*', ' ', '@'])
        || origin.to_ascii_lowercase() != origin
    {
        return Err(invalid());
    }
    Ok(origin.to_owned())
}

/// Checks restrictions for a key of `tenant` with `scopes` (already checked).
fn checked_restrictions(
    tenant: &str,
    scopes: &[String],
    restrictions: &IngestRestrictions,
) -> Result<IngestRestrictions, ApiKeyError> {
    if restrictions == &IngestRestrictions::default() {
        return Ok(IngestRestrictions::default());
    }
    if !scopes.iter().any(|s| s == SCOPE_INGEST) {
        return Err(ApiKeyError::Invalid(
            "origins and actions restrict ingest keys: give --scope ingest".to_owned(),
        ));
    }
    if !restrictions.origins.is_empty() && tenant == "*" {
        return Err(ApiKeyError::Invalid(
            "a browser key (with origins) must be bound to one tenant, not *".to_owned(),
        ));
    }
    let mut origins = BTreeSet::new();
    for origin in &restrictions.origins {
        origins.insert(checked_origin(origin.trim())?);
    }
    let mut actions = BTreeSet::new();
    for action in restrictions
        .actions
        .iter()
        .flat_map(|a| a.split([' ', ',']))
    {
        if !action.is_empty() {
            actions.insert(action.to_owned());
        }
    }
    Ok(IngestRestrictions {
        origins: origins.into_iter().collect(),
        actions: actions.into_iter().collect(),
    })
}

/// Creates a key for `tenant` (`*` = every tenant) with `scopes` (each entry may
/// hold several, separated by spaces or commas).
pub async fn create(
    client: &Client,
    tenant: &str,
    scopes: &[String],
    description: Option<&str>,
) -> Result<CreatedKey, ApiKeyError> {
    create_with(
        client,
        tenant,
        scopes,
        None,
        description,
        &IngestRestrictions::default(),
    )
    .await
}

/// [`create`] for an ingest key with REST ingest restrictions (browser
/// origins, allowed actions).
pub async fn create_restricted(
    client: &Client,
    tenant: &str,
    scopes: &[String],
    description: Option<&str>,
    restrictions: &IngestRestrictions,
) -> Result<CreatedKey, ApiKeyError> {
    create_with(client, tenant, scopes, None, description, restrictions).await
}

/// [`create`] with the user a `self:read` key reads the rows of (required
/// with that scope, refused without it).
pub async fn create_for_user(
    client: &Client,
    tenant: &str,
    scopes: &[String],
    user: Option<&str>,
    description: Option<&str>,
) -> Result<CreatedKey, ApiKeyError> {
    create_with(
        client,
        tenant,
        scopes,
        user,
        description,
        &IngestRestrictions::default(),
    )
    .await
}

/// [`create`] with everything a key may carry: the `self:read` user and the REST
/// ingest restrictions.
pub async fn create_with(
    client: &Client,
    tenant: &str,
    scopes: &[String],
    user: Option<&str>,
    description: Option<&str>,
    restrictions: &IngestRestrictions,
) -> Result<CreatedKey, ApiKeyError> {
    let scopes = checked(tenant, scopes)?;
    checked_user(tenant, &scopes, user)?;
    let restrictions = checked_restrictions(tenant, &scopes, restrictions)?;
    let id = Uuid::new_v4();
    let prefix = random_hex(PREFIX_BYTES)?;
    let key = format!("{KEY_PREFIX}{prefix}_{}", random_hex(SECRET_BYTES)?);
    let secret_hash = hash(&key).to_vec();
    client
        .execute(
            "INSERT INTO api_keys (id, prefix, secret_hash, tenant, scopes, description, \
                                   allowed_origins, allowed_actions, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id,
                &prefix,
                &secret_hash,
                &tenant,
                &scopes,
                &description,
                &restrictions.origins,
                &restrictions.actions,
                &user,
            ],
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
            "SELECT id, prefix, tenant, scopes, description, created_at, revoked_at, \
                    allowed_origins, allowed_actions, user_id \
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
                user: row.try_get(9)?,
                description: row.try_get(4)?,
                created_at: row.try_get(5)?,
                revoked_at: row.try_get(6)?,
                restrictions: IngestRestrictions {
                    origins: row.try_get(7)?,
                    actions: row.try_get(8)?,
                },
            })
        })
        .collect()
}

/// Whether some ingest key that is not revoked lists `origin` among its
/// allowed origins (CORS preflights carry no key).
pub async fn origin_allowed(client: &Client, origin: &str) -> Result<bool, tokio_postgres::Error> {
    metrics().api_key_lookups.inc();
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL \
             AND $2 = ANY(scopes) AND $1 = ANY(allowed_origins))",
            &[&origin, &SCOPE_INGEST],
        )
        .await?;
    row.try_get(0)
}

/// Whether any key that is not revoked carries an admin API scope (such keys
/// turn the admin API's key authentication on when it is not configured).
pub async fn admin_keys_exist(client: &Client) -> Result<bool, ApiKeyError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL \
             AND scopes && ARRAY['activity:read', 'tokens:read', 'admin', 'self:read']::text[])",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Connections of a key-lookup pool at most.
const POOL_SIZE: usize = 4;
/// How long a lookup waits for a connection (or for one to be opened).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// A key-lookup pool that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The database URL cannot be parsed.
    #[error("invalid database URL: {0}")]
    Url(crate::postgres::PgError),
    /// The pool cannot be built from it.
    #[error("cannot build the API key pool: {0}")]
    Build(deadpool_postgres::BuildError),
}

/// A small pool for key lookups on `database_url` (opened on first use).
pub fn lookup_pool(
    database_url: &str,
    application_name: &str,
) -> Result<deadpool_postgres::Pool, PoolError> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
    let (mut config, tls) = crate::postgres::tls::parse(database_url).map_err(PoolError::Url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(POOL_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(PoolError::Build)
}

/// What a verified key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key's row id (`api_keys.id`).
    pub id: Uuid,
    /// The lookup prefix (safe to show and log).
    pub prefix: String,
    /// One tenant id, or `*`.
    pub tenant: String,
    /// Its scopes.
    pub scopes: BTreeSet<String>,
    /// Its REST ingest restrictions (origins, actions).
    pub restrictions: IngestRestrictions,
    /// The user whose rows a `self:read` key reads.
    pub user: Option<String>,
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

impl Refusal {
    /// A short, fixed reason (`malformed`, `unknown`, `revoked`), e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Revoked => "revoked",
        }
    }
}

/// A key could not be checked because the database did not answer.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No connection could be had from the pool.
    #[error("no database connection to check the API key: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The lookup failed.
    #[error("API key lookup failed: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// A row as cached: what it grants, its hash and whether it is revoked.
#[derive(Debug, Clone)]
struct Entry {
    grant: Grant,
    secret_hash: Vec<u8>,
    revoked: bool,
}

/// Every prefix in `api_keys` at the last reload.
#[derive(Debug, Default)]
struct Known {
    prefixes: HashSet<u64>,
    loaded: Option<Instant>,
}

/// Verifies presented keys against `api_keys`, with a bounded cache of rows
/// and the known-prefix set (see the module documentation).
#[derive(Debug)]
pub struct KeyVerifier {
    ttl: Duration,
    max_entries: usize,
    cache: Mutex<HashMap<String, (Instant, Entry)>>,
    known: Mutex<Known>,
    /// Held while the known-prefix set reloads: concurrent misses wait for one reload.
    reload: tokio::sync::Mutex<()>,
}

impl KeyVerifier {
    /// A verifier caching each looked-up key for `ttl` (zero: no row cache), at
    /// most `max_entries` keys at once.
    pub fn new(ttl: Duration, max_entries: usize) -> KeyVerifier {
        KeyVerifier {
            ttl,
            max_entries: max_entries.max(1),
            cache: Mutex::new(HashMap::new()),
            known: Mutex::new(Known::default()),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, prefix: &str) -> Option<Entry> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(prefix) {
            Some((until, entry)) if Instant::now() < *until => Some(entry.clone()),
            _ => None,
        }
    }

    /// Until when the key with `prefix` is trusted from the cache (`None`: not cached).
    pub fn cached_until(&self, prefix: &str) -> Option<Instant> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(prefix).map(|(until, _)| *until)
    }

    fn remember(&self, prefix: &str, entry: &Entry) {
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
        cache.insert(prefix.to_owned(), (now + self.ttl, entry.clone()));
    }

    /// Whether `prefix` was in `api_keys` at the last reload; `None` when the
    /// set was never loaded.
    fn is_known(&self, prefix: u64) -> (bool, Option<Instant>) {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        (known.prefixes.contains(&prefix), known.loaded)
    }

    /// Whether `prefix` is in `api_keys` as of a reload that started after
    /// `asked` (when the request arrived), so that a key created before its
    /// first use is always found. Reloads are at least [`KNOWN_REFRESH_MIN`]
    /// apart: a miss waits for the next one, and every miss waiting meanwhile
    /// shares it.
    async fn known(
        &self,
        pool: &deadpool_postgres::Pool,
        prefix: u64,
        asked: Instant,
    ) -> Result<bool, VerifyError> {
        let (known, loaded) = self.is_known(prefix);
        if known || loaded.is_some_and(|at| at >= asked) {
            return Ok(known);
        }
        let _reloading = self.reload.lock().await;
        // Someone else may have reloaded while this call waited.
        let (known, loaded) = self.is_known(prefix);
        if known || loaded.is_some_and(|at| at >= asked) {
            return Ok(known);
        }
        if let Some(at) = loaded {
            tokio::time::sleep_until((at + KNOWN_REFRESH_MIN).into()).await;
        }
        let started = Instant::now();
        let client = pool.get().await?;
        metrics().api_key_lookups.inc();
        let rows = client.query("SELECT prefix FROM api_keys", &[]).await?;
        let mut prefixes = HashSet::with_capacity(rows.len());
        for row in &rows {
            let text: &str = row.try_get(0)?;
            if let Some(number) = prefix_number(text) {
                prefixes.insert(number);
            }
        }
        let known = prefixes.contains(&prefix);
        let mut set = self.known.lock().unwrap_or_else(|p| p.into_inner());
        set.prefixes = prefixes;
        set.loaded = Some(started);
        Ok(known)
    }

    /// Verifies `key`; `Ok(Err(refusal))` when it is refused, `Err` when the
    /// database cannot answer. A database connection is taken from `pool` only
    /// when memory cannot answer.
    pub async fn verify(
        &self,
        pool: &deadpool_postgres::Pool,
        key: &str,
    ) -> Result<Result<Grant, Refusal>, VerifyError> {
        let asked = Instant::now();
        let Some(prefix) = parse(key) else {
            return Ok(Err(shape_refusal(key)));
        };
        let presented = hash(key);
        let entry = match self.cached(prefix) {
            Some(entry) => entry,
            None => {
                let Some(number) = prefix_number(prefix) else {
                    return Ok(Err(Refusal::Malformed));
                };
                if !self.known(pool, number, asked).await? {
                    return Ok(Err(Refusal::Unknown));
                }
                let client = pool.get().await?;
                match self.look_up(&client, prefix).await? {
                    Some(entry) => {
                        self.remember(prefix, &entry);
                        entry
                    }
                    None => return Ok(Err(Refusal::Unknown)),
                }
            }
        };
        if !same_hash(&entry.secret_hash, &presented) {
            return Ok(Err(Refusal::Unknown));
        }
        if entry.revoked {
            tracing::debug!(id = %entry.grant.id, "revoked API key presented");
            return Ok(Err(Refusal::Revoked));
        }
        Ok(Ok(entry.grant))
    }

    async fn look_up(
        &self,
        client: &Client,
        prefix: &str,
    ) -> Result<Option<Entry>, tokio_postgres::Error> {
        metrics().api_key_lookups.inc();
        let row = client
            .query_opt(
                "SELECT id, secret_hash, tenant, scopes, revoked_at IS NOT NULL, \
                        allowed_origins, allowed_actions, user_id \
                 FROM api_keys WHERE prefix = $1",
                &[&prefix],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Entry {
            grant: Grant {
                id: row.try_get(0)?,
                prefix: prefix.to_owned(),
                tenant: row.try_get(2)?,
                scopes: row.try_get::<_, Vec<String>>(3)?.into_iter().collect(),
                restrictions: IngestRestrictions {
                    origins: row.try_get(5)?,
                    actions: row.try_get(6)?,
                },
                user: row.try_get(7)?,
            },
            secret_hash: row.try_get(1)?,
            revoked: row.try_get(4)?,
        }))
    }
}

#[cfg(test)]
mod tests;
