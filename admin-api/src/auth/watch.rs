//! The credential of a live feed, watched for its end: a JWT at its `exp`, an
//! API key when a later check finds it revoked.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::Authenticator;
use crate::apikeys;
use crate::error::ApiError;

/// A live feed's credential, watched for its end (see [`CredentialWatch::ended`]).
#[derive(Clone)]
pub(crate) struct CredentialWatch {
    auth: Authenticator,
    credential: String,
}

/// Shortest pause between two checks of a watched API key.
const MIN_RECHECK: Duration = Duration::from_millis(200);
/// Pause before checking again when the database cannot answer.
const RECHECK_AFTER_ERROR: Duration = Duration::from_secs(1);

impl CredentialWatch {
    /// Watches `credential` (already accepted by `auth`).
    pub(crate) fn new(auth: &Authenticator, credential: &str) -> CredentialWatch {
        CredentialWatch {
            auth: auth.clone(),
            credential: credential.trim().to_owned(),
        }
    }

    /// Resolves when the credential stops being valid, with the reason: a JWT
    /// at its `exp` (no leeway: the feed ends when the token says), an API key
    /// when a check after its cache entry expired finds it revoked (so within
    /// `cache_ttl_secs` of the revocation). While the database cannot answer,
    /// the key is checked again every second and the feed goes on.
    pub(crate) async fn ended(&self) -> &'static str {
        if let Some(prefix) = apikeys::parse(&self.credential) {
            let Some(api_keys) = &self.auth.api_keys else {
                return "API keys are not enabled";
            };
            loop {
                let now = tokio::time::Instant::now();
                let due = api_keys
                    .verifier
                    .cached_until(prefix)
                    .map_or(now, tokio::time::Instant::from_std)
                    .max(now + MIN_RECHECK);
                tokio::time::sleep_until(due).await;
                match self.auth.authenticate(Some(&self.credential)).await {
                    Ok(_) => {}
                    Err(ApiError::Unauthorized(_)) => return "API key revoked",
                    Err(error) => {
                        tracing::debug!(%error, "live feed: cannot check its API key; keeping it");
                        tokio::time::sleep(RECHECK_AFTER_ERROR).await;
                    }
                }
            }
        }
        match jwt_expiry(&self.credential) {
            Some(exp) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                let left = (exp - now).clamp(0.0, 400.0 * 86_400.0);
                tokio::time::sleep(Duration::from_secs_f64(left)).await;
                "token expired"
            }
            // A verified JWT has an `exp` (it is required): never here.
            None => std::future::pending().await,
        }
    }
}

/// The `exp` of a compact JWT, read without verifying it (only for a token
/// that was verified already).
fn jwt_expiry(token: &str) -> Option<f64> {
    #[derive(Deserialize)]
    struct Expiry {
        exp: f64,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Expiry>(&bytes).ok().map(|e| e.exp)
}
