//! The receivers' ingest-key check over the `api_keys` store: a key with scope
//! `ingest` becomes a [`Sender`] bound to its tenant (`*`: any tenant).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tally_config::IngestAuthConfig;
use tally_exporters::apikeys::{self, KeyVerifier, Refusal, VerifyError, SCOPE_INGEST};
use tally_model::Sender;
use tally_receiver::{AuthFailure, IngestAuthenticator, KeyPolicy, KeyRefusal};

/// Verifies ingest keys with a [`KeyVerifier`] and its own small pool.
pub struct IngestKeys {
    verifier: KeyVerifier,
    pool: deadpool_postgres::Pool,
    /// CORS preflight answers per origin, for the key cache's TTL.
    origins: OriginCache,
}

/// Most origins remembered at once (past it, the cache starts over).
const MAX_ORIGINS: usize = 10_000;

/// Whether an origin is allowed, remembered for a while: preflights carry no
/// key, so each unknown origin would otherwise be one query.
struct OriginCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, bool)>>,
}

impl OriginCache {
    fn get(&self, origin: &str) -> Option<bool> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(origin) {
            Some((until, allowed)) if Instant::now() < *until => Some(*allowed),
            _ => None,
        }
    }

    fn put(&self, origin: &str, allowed: bool) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ORIGINS {
            entries.clear();
        }
        entries.insert(origin.to_owned(), (Instant::now() + self.ttl, allowed));
    }
}

impl IngestKeys {
    /// A verifier for `receivers.otlp.auth` on `database_url` (no connection yet).
    pub fn new(config: &IngestAuthConfig, database_url: &str) -> anyhow::Result<Arc<IngestKeys>> {
        let pool = apikeys::lookup_pool(database_url, "tally-ingest-keys")
            .map_err(|message| anyhow::anyhow!("receivers.otlp.auth: {message}"))?;
        Ok(Arc::new(IngestKeys {
            verifier: KeyVerifier::new(
                Duration::from_secs(config.cache_ttl_secs),
                config.cache_max_entries,
            ),
            pool,
            origins: OriginCache {
                ttl: Duration::from_secs(config.cache_ttl_secs),
                entries: Mutex::new(HashMap::new()),
            },
        }))
    }
}

impl IngestAuthenticator for IngestKeys {
    fn authenticate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Sender, AuthFailure>> {
        Box::pin(async move {
            self.authenticate_with_policy(key)
                .await
                .map(|(sender, _)| sender)
        })
    }

    fn origin_allowed<'a>(&'a self, origin: &'a str) -> BoxFuture<'a, Result<bool, AuthFailure>> {
        Box::pin(async move {
            if let Some(allowed) = self.origins.get(origin) {
                return Ok(allowed);
            }
            let answer = match self.pool.get().await {
                Ok(client) => apikeys::origin_allowed(&client, origin)
                    .await
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match answer {
                Ok(allowed) => {
                    self.origins.put(origin, allowed);
                    Ok(allowed)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot check a CORS origin");
                    Err(AuthFailure::Unavailable("database query failed".to_owned()))
                }
            }
        })
    }

    fn authenticate_with_policy<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(Sender, KeyPolicy), AuthFailure>> {
        Box::pin(async move {
            let verdict = self.verifier.verify(&self.pool, key).await;
            let grant = match verdict {
                Ok(Ok(grant)) => grant,
                Ok(Err(refusal)) => {
                    return Err(AuthFailure::Refused(match refusal {
                        Refusal::Malformed => KeyRefusal::Malformed,
                        Refusal::Unknown => KeyRefusal::Unknown,
                        Refusal::Revoked => KeyRefusal::Revoked,
                    }))
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot check an ingest API key");
                    let reason = match error {
                        VerifyError::Pool(_) => "no database connection",
                        VerifyError::Database(_) => "database query failed",
                    };
                    return Err(AuthFailure::Unavailable(reason.to_owned()));
                }
            };
            if !grant.scopes.contains(SCOPE_INGEST) {
                return Err(AuthFailure::Refused(KeyRefusal::NotIngest));
            }
            let sender = Sender {
                key_id: Some(grant.id),
                tenant: (grant.tenant != "*").then(|| Arc::from(grant.tenant.as_str())),
            };
            let policy = KeyPolicy {
                allowed_origins: grant.restrictions.origins,
                allowed_actions: grant.restrictions.actions,
            };
            Ok((sender, policy))
        })
    }
}
