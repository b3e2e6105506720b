//! The receivers' ingest-key check over the `api_keys` store: a key with scope
//! `ingest` becomes a [`Sender`] bound to its tenant (`*`: any tenant).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tally_config::IngestAuthConfig;
use tally_exporters::apikeys::{self, KeyVerifier, Refusal, VerifyError, SCOPE_INGEST};
use tally_model::Sender;
use tally_receiver::{AuthFailure, IngestAuthenticator, KeyRefusal};

/// Verifies ingest keys with a [`KeyVerifier`] and its own small pool.
pub struct IngestKeys {
    verifier: KeyVerifier,
    pool: deadpool_postgres::Pool,
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
        }))
    }
}

impl IngestAuthenticator for IngestKeys {
    fn authenticate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Sender, AuthFailure>> {
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
            Ok(Sender {
                key_id: Some(grant.id),
                tenant: (grant.tenant != "*").then(|| Arc::from(grant.tenant.as_str())),
            })
        })
    }
}
