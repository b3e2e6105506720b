//! Ingest credentials: the API key a request presents (`Authorization: Bearer
//! tally_…` or `X-API-Key: tally_…`, as HTTP headers or gRPC metadata), checked
//! by an [`IngestAuthenticator`] before the body is read.
//!
//! A valid key makes the request's [`Sender`] (its key id and bound tenant). A
//! key that is presented and not valid is always refused; a request without one
//! is refused only when `receivers.otlp.auth.required` is on.

use std::sync::Arc;

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use futures::future::BoxFuture;
use tally_model::pipeline::Sender;

/// Every Tally API key starts with this.
const KEY_PREFIX: &str = "tally_";
/// The header carrying a bare API key.
const API_KEY_HEADER: &str = "x-api-key";

/// Why a presented key is not accepted for ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Not the shape of a Tally API key.
    Malformed,
    /// No such key, or its secret does not match.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The key exists but lacks the `ingest` scope.
    NotIngest,
}

/// The answer of an [`IngestAuthenticator`] that could not accept a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// The key is refused (HTTP 401 / gRPC `UNAUTHENTICATED`).
    Refused(KeyRefusal),
    /// The key could not be checked now (the database did not answer): HTTP
    /// 503 / gRPC `UNAVAILABLE`, retryable.
    Unavailable(String),
}

/// Why the key store cannot answer now (the database did not answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub(crate) String);

/// What an ingest key restricts on REST ingest (`POST /api/v1/events`)
/// besides its tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Browser origins (`https://app.example`) that may use the key; a key
    /// with origins is a browser key. Empty: none.
    pub allowed_origins: Vec<String>,
    /// Actions the key may write (an entry ending in `*` is a prefix). Empty:
    /// any action.
    pub allowed_actions: Vec<String>,
}

impl KeyPolicy {
    /// Whether the key lists `origin`.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|allowed| allowed == origin)
    }

    /// Whether the key may write `action`.
    pub fn allows_action(&self, action: &str) -> bool {
        self.allowed_actions.is_empty()
            || self
                .allowed_actions
                .iter()
                .any(|allowed| match allowed.strip_suffix('*') {
                    Some(prefix) => action.starts_with(prefix),
                    None => allowed == action,
                })
    }
}

/// Checks ingest keys (implemented over the `api_keys` store by the binary).
pub trait IngestAuthenticator: Send + Sync + 'static {
    /// The sender `key` (the whole presented `tally_…` value) stands for.
    fn authenticate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Sender, AuthFailure>>;

    /// [`IngestAuthenticator::authenticate`] with the key's REST ingest
    /// restrictions (by default none).
    fn authenticate_with_policy<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(Sender, KeyPolicy), AuthFailure>> {
        Box::pin(async move {
            self.authenticate(key)
                .await
                .map(|sender| (sender, KeyPolicy::default()))
        })
    }

    /// Whether some ingest key that is not revoked lists `origin` (answers
    /// CORS preflights, which carry no key). By default no origin is.
    fn origin_allowed<'a>(&'a self, origin: &'a str) -> BoxFuture<'a, Result<bool, AuthFailure>> {
        let _ = origin;
        Box::pin(async { Ok(false) })
    }
}

/// Why a request is refused for its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// HTTP 401 / gRPC `UNAUTHENTICATED`, with the reason.
    Unauthenticated(String),
    /// HTTP 503 / gRPC `UNAVAILABLE`: try again.
    Unavailable(String),
}

/// The receivers' credential check.
#[derive(Clone, Default)]
pub(crate) struct IngestAuth {
    authenticator: Option<Arc<dyn IngestAuthenticator>>,
    required: bool,
}

impl IngestAuth {
    pub(crate) fn new(
        authenticator: Option<Arc<dyn IngestAuthenticator>>,
        required: bool,
    ) -> IngestAuth {
        IngestAuth {
            authenticator,
            required,
        }
    }

    /// The sender of a request with these headers, or why it is refused.
    pub(crate) async fn check(&self, headers: &HeaderMap) -> Result<Sender, Denied> {
        self.check_with_policy(headers)
            .await
            .map(|(sender, _)| sender)
    }

    /// [`IngestAuth::check`] with the key's REST ingest restrictions.
    pub(crate) async fn check_with_policy(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Sender, KeyPolicy), Denied> {
        let result = self.check_uncounted(headers).await;
        if let Err(refused) = &result {
            crate::telemetry::count_auth_failure(refused.reason);
        }
        result.map_err(|refused| refused.denied)
    }

    /// Whether a CORS preflight from `origin` is answered (`Err`: cannot tell now).
    pub(crate) async fn origin_allowed(&self, origin: &str) -> Result<bool, Unavailable> {
        match &self.authenticator {
            None => Ok(false),
            Some(authenticator) => match authenticator.origin_allowed(origin).await {
                Ok(allowed) => Ok(allowed),
                Err(AuthFailure::Unavailable(reason)) => Err(Unavailable(reason)),
                Err(AuthFailure::Refused(_)) => Ok(false),
            },
        }
    }

    async fn check_uncounted(&self, headers: &HeaderMap) -> Result<(Sender, KeyPolicy), Refused> {
        let refused = |reason, message: &str| {
            Err(Refused {
                reason,
                denied: Denied::Unauthenticated(message.to_owned()),
            })
        };
        let key = match credential(headers) {
            Credential::Key(key) => key,
            Credential::None => {
                return if self.required {
                    refused(
                        "missing",
                        "an ingest API key is required: send `Authorization: Bearer tally_…` \
                         or `X-API-Key: tally_…` (OTEL_EXPORTER_OTLP_HEADERS=\
                         authorization=Bearer%20tally_…)",
                    )
                } else {
                    Ok((Sender::anonymous(), KeyPolicy::default()))
                };
            }
            Credential::Other => {
                return if self.required {
                    refused(
                        "malformed",
                        "the Authorization header does not hold a Tally API key: send \
                         `Authorization: Bearer tally_…`",
                    )
                } else {
                    Ok((Sender::anonymous(), KeyPolicy::default()))
                };
            }
            Credential::NotText => {
                return refused("malformed", "the credential header is not ASCII text");
            }
        };
        let Some(authenticator) = &self.authenticator else {
            return refused(
                "unknown",
                "this receiver accepts no API keys (no key store configured)",
            );
        };
        match authenticator.authenticate_with_policy(key).await {
            Ok(granted) => Ok(granted),
            Err(AuthFailure::Refused(refusal)) => match refusal {
                KeyRefusal::Malformed => refused(
                    "malformed",
                    "malformed API key: expected tally_<16 hex digits>_<64 hex digits>",
                ),
                KeyRefusal::Unknown => refused("unknown", "unknown API key or wrong secret"),
                KeyRefusal::Revoked => refused("revoked", "the API key was revoked"),
                KeyRefusal::NotIngest => refused(
                    "scope",
                    "the API key lacks the ingest scope (tally apikey create --scope ingest)",
                ),
            },
            Err(AuthFailure::Unavailable(reason)) => Err(Refused {
                reason: "unavailable",
                denied: Denied::Unavailable(format!("cannot check the API key now: {reason}")),
            }),
        }
    }
}

/// A refused request: the `reason` label it is counted under, and the answer.
struct Refused {
    /// The `reason` label of the refusal counter (`missing`, `unknown`, …).
    reason: &'static str,
    /// What the caller is told.
    denied: Denied,
}

/// What a request carries as its credential.
enum Credential<'a> {
    /// No `Authorization` and no `X-API-Key`.
    None,
    /// A key to check.
    Key(&'a str),
    /// An `Authorization` header that is not `Bearer tally_…` (meant for
    /// something else, e.g. a proxy).
    Other,
    /// A header that is not visible ASCII.
    NotText,
}

fn credential(headers: &HeaderMap) -> Credential<'_> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        return match value.to_str() {
            Ok(value) => Credential::Key(value.trim()),
            Err(_) => Credential::NotText,
        };
    }
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Credential::None;
    };
    let Ok(value) = value.to_str() else {
        return Credential::NotText;
    };
    match value.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && token.trim().starts_with(KEY_PREFIX) =>
        {
            Credential::Key(token.trim())
        }
        _ => Credential::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn credentials_are_found_where_sdks_put_them() {
        assert!(matches!(
            credential(&headers(&[("authorization", "Bearer tally_x")])),
            Credential::Key("tally_x")
        ));
        assert!(matches!(
            credential(&headers(&[("authorization", "bearer  tally_x ")])),
            Credential::Key("tally_x")
        ));
        assert!(matches!(
            credential(&headers(&[("x-api-key", "tally_y")])),
            Credential::Key("tally_y")
        ));
        assert!(matches!(
            credential(&headers(&[("authorization", "Basic dXNlcjpwdw==")])),
            Credential::Other
        ));
        assert!(matches!(credential(&HeaderMap::new()), Credential::None));
    }

    #[test]
    fn key_policies_restrict_actions_and_origins() {
        let open = KeyPolicy::default();
        assert!(open.allows_action("anything"));
        assert!(!open.allows_origin("https://app.example"));
        let browser = KeyPolicy {
            allowed_origins: vec!["https://app.example".into()],
            allowed_actions: vec!["ui.click".into(), "page.*".into()],
        };
        assert!(browser.allows_origin("https://app.example"));
        assert!(!browser.allows_origin("https://evil.example"));
        assert!(browser.allows_action("ui.click"));
        assert!(browser.allows_action("page.view"));
        assert!(!browser.allows_action("ui.clicked"));
        assert!(!browser.allows_action("admin.delete"));
    }

    #[tokio::test]
    async fn missing_keys_are_refused_only_when_required() {
        let open = IngestAuth::new(None, false);
        assert_eq!(open.check(&HeaderMap::new()).await, Ok(Sender::anonymous()));
        let closed = IngestAuth::new(None, true);
        assert!(matches!(
            closed.check(&HeaderMap::new()).await,
            Err(Denied::Unauthenticated(m)) if m.contains("required")
        ));
        // A presented key is checked even when keys are optional.
        assert!(matches!(
            open.check(&headers(&[("x-api-key", "tally_z")])).await,
            Err(Denied::Unauthenticated(_))
        ));
    }
}
