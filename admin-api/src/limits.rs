//! Per-caller limits (`admin_api.limits`): how many requests and live feeds one
//! caller may have in progress at once, and how long a request may take.
//!
//! The caller is the authenticated identity (a JWT's `sub` and `tenant`, or an
//! API key), else (no credential, a refused one, or an API without
//! authentication) the client's IP address. Over its request limit a caller is
//! answered 429 with `Retry-After` while other callers are served; over its
//! live-feed limit too. A request that takes longer than `request_timeout_ms`
//! is answered 504 (live feeds are exempt: they are meant to last).
//!
//! Counting is per instance and costs one short lock per request; a caller's
//! entry exists only while it has something in progress. A request whose
//! credential fails to verify is answered (401) only after
//! [`REFUSED_CREDENTIAL_DELAY`], counted under its client address meanwhile; so is
//! a 429 over the limits.
//! A caller whose requests held the database's connections for longer than its
//! budget of database time allows (`db_time_per_caller_percent`, see
//! [`crate::dbtime`]) is answered 429 with `Retry-After` until the refill pays its
//! debt, before its request does any work.
//! The caller is also what the database gate ([`crate::fair`]) ranks requests by,
//! and its live feeds share one budget of queued bytes
//! ([`crate::stream::sse::CallerBuffer`]). A live feed reset because its client
//! did not read keeps counting against its caller's `max_streams_per_caller` for
//! [`RESET_HOLD`] after it ended, so a caller that opens feeds and never reads
//! them holds a few at once, not `max_streams_per_caller` fed ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Authenticator;
use crate::caller::{Caller, TenantAccess};
use crate::dbtime::DbTimeBudget;
use crate::error::ApiError;
use crate::state::AppState;
use crate::stream::sse::{CallerBuffer, CALLER_BUFFER, CALLER_BUFFER_BYTES, STREAM_BUFFER_BYTES};

/// How long an answer to a credential that fails to verify (unknown or revoked key,
/// bad or expired token), or to a caller over its limits, is held back, so that
/// floods of guessed keys or of requests past the limits are slow.
const REFUSED_CREDENTIAL_DELAY: Duration = Duration::from_millis(200);

/// `Retry-After` of a 429 over a per-caller limit, seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// How long a live feed reset for not reading (or reading too slowly) still
/// counts against its caller's `max_streams_per_caller` after it ended.
pub(crate) const RESET_HOLD: Duration = Duration::from_secs(10);

/// A caller authenticated by [`enforce`], left in the request's extensions so
/// the handler does not verify the credential again.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated(pub(crate) Caller);

/// In-progress work per caller.
#[derive(Debug, Default)]
struct Counts {
    requests: usize,
    streams: usize,
    /// The queued-bytes budget its live feeds share (while it has one open).
    feed_buffer: Option<CallerBuffer>,
}

/// The limits and what each caller has in progress.
#[derive(Debug)]
pub(crate) struct Limits {
    timeout: Duration,
    max_requests: usize,
    max_streams: usize,
    /// The queued-bytes budget of one caller's live feeds together.
    feed_buffer_bytes: usize,
    /// `heavy_duty_percent`, for the database gates ([`crate::fair`]).
    pub(crate) heavy_duty_percent: u8,
    /// Each caller's budget of database time (`db_time_per_caller_percent`),
    /// charged by the database gates.
    pub(crate) db_time: Arc<DbTimeBudget>,
    in_progress: Mutex<HashMap<Arc<str>, Counts>>,
}

/// One request or live feed counted against its caller until dropped.
#[derive(Debug)]
struct Slot {
    limits: Arc<Limits>,
    caller: Arc<str>,
    stream: bool,
    /// A live feed's share of its caller's queued-bytes budget.
    feed_buffer: Option<CallerBuffer>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(counts) = map.get_mut(&self.caller) {
            if self.stream {
                counts.streams = counts.streams.saturating_sub(1);
            } else {
                counts.requests = counts.requests.saturating_sub(1);
            }
            if counts.requests == 0 && counts.streams == 0 {
                map.remove(&self.caller);
            }
        }
    }
}

impl Limits {
    /// The limits of `admin_api.limits` (zeros are raised to 1).
    pub(crate) fn new(config: &tally_config::AdminLimitsConfig) -> Limits {
        Limits {
            timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
            max_requests: config.max_concurrent_per_caller.max(1),
            max_streams: config.max_streams_per_caller.max(1),
            feed_buffer_bytes: config
                .max_streams_per_caller
                .max(1)
                .saturating_mul(STREAM_BUFFER_BYTES),
            heavy_duty_percent: config.heavy_duty_percent,
            db_time: DbTimeBudget::new(config.db_time_per_caller_percent),
            in_progress: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps one live-feed slot of `caller` taken for `hold` (one of its feeds was
    /// just reset for not reading), whatever it holds now: at most one per reset,
    /// and a caller at its limit opens no feed to be reset.
    pub(crate) fn hold_stream(self: &Arc<Self>, caller: &str, hold: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let slot = {
            let mut map = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
            let key: Arc<str> = match map.get_key_value(caller) {
                Some((key, _)) => key.clone(),
                None => Arc::from(caller),
            };
            map.entry(key.clone()).or_default().streams += 1;
            Slot {
                limits: self.clone(),
                caller: key,
                stream: true,
                feed_buffer: None,
            }
        };
        runtime.spawn(async move {
            tokio::time::sleep(hold).await;
            drop(slot);
        });
    }

    /// Counts one request (or live feed) of `caller`; 429 when it is at its limit.
    fn acquire(self: &Arc<Self>, caller: &str, stream: bool) -> Result<Slot, ApiError> {
        let mut map = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        let key: Arc<str> = match map.get_key_value(caller) {
            Some((key, _)) => key.clone(),
            None => Arc::from(caller),
        };
        let counts = map.entry(key.clone()).or_default();
        let (held, max, what, setting) = if stream {
            (
                &mut counts.streams,
                self.max_streams,
                "live feeds",
                "max_streams_per_caller",
            )
        } else {
            (
                &mut counts.requests,
                self.max_requests,
                "requests in progress",
                "max_concurrent_per_caller",
            )
        };
        if *held >= max {
            if counts.requests == 0 && counts.streams == 0 {
                map.remove(&key);
            }
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "too many {what} for this caller (admin_api.limits.{setting} = {max}); retry later"
                ),
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        *held += 1;
        let feed_buffer = stream.then(|| {
            counts
                .feed_buffer
                .get_or_insert_with(|| CallerBuffer::new(self.feed_buffer_bytes))
                .clone()
        });
        Ok(Slot {
            limits: self.clone(),
            caller: key,
            stream,
            feed_buffer,
        })
    }
}

/// Whether `path` is a live feed (exempt from the timeout, counted as a stream).
fn is_stream(path: &str) -> bool {
    path.ends_with("/stream")
}

/// Whether `path` is outside the limits: health checks and the API's description.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/api/v1/openapi.json")
}

/// The identity a caller's limits are counted under.
fn identity(caller: &Caller) -> String {
    let tenant = match &caller.tenant {
        TenantAccess::All => "*",
        TenantAccess::One(tenant) => tenant.as_str(),
        TenantAccess::Nothing => "",
        TenantAccess::OwnRows { tenant, .. } => tenant.as_str(),
    };
    // NUL cannot occur in a verified `sub` or tenant that reaches the database,
    // and keeps `a` + `b:c` apart from `a:b` + `c`.
    format!("id\0{}\0{tenant}", caller.subject)
}

/// The `?access_token=` of a live-feed request, if any (its first value).
fn access_token(request: &Request) -> Option<String> {
    crate::params::pairs(request.uri())
        .ok()?
        .into_iter()
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value)
}

/// Middleware on every route: finds the caller, counts the request against its
/// limits (429 over them), and answers 504 when it takes longer than the timeout.
pub(crate) async fn enforce(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if exempt(&path) {
        return next.run(request).await;
    }
    let stream = is_stream(&path);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // A credential that fails to verify is answered only after a delay.
    let mut refused = false;
    let caller = match &state.auth {
        None => None,
        Some(auth) => {
            let fallback = if stream { access_token(&request) } else { None };
            match Authenticator::credential(request.headers(), fallback.as_deref()) {
                Ok(credential) => {
                    let verified = auth.authenticate(credential).await.ok();
                    refused = verified.is_none();
                    verified
                }
                Err(_) => None,
            }
        }
    };
    let key = match &caller {
        Some(caller) => identity(caller),
        None => match peer {
            Some(ip) => format!("ip\0{ip}"),
            None => "ip\0unknown".to_owned(),
        },
    };
    let admitted = match state.limits.acquire(&key, stream) {
        // Over its budget of database time: refused before doing any work (its slot
        // is kept while the answer is held back, like the other 429s).
        Ok(slot) => match state
            .limits
            .db_time
            .check(&key, tokio::time::Instant::now())
        {
            Ok(()) => Ok(slot),
            Err(wait) => Err((state.limits.db_time.refusal(wait), Some(slot))),
        },
        Err(error) => Err((error, None)),
    };
    let slot = match admitted {
        Ok(slot) => slot,
        Err((error, held)) => {
            tracing::info!(
                subject = caller.as_ref().map(|c| c.subject.as_str()),
                client = ?peer,
                route = %path,
                "admin API: caller over its limit"
            );
            // Held back like a refused credential: a caller that keeps asking past
            // its limit gets a few answers a second, not thousands.
            tokio::time::sleep(REFUSED_CREDENTIAL_DELAY).await;
            drop(held);
            return error.into_response();
        }
    };
    if refused {
        // Held in the client address's slot: guessing keys from one address costs
        // at most `max_concurrent_per_caller` guesses per delay.
        tokio::time::sleep(REFUSED_CREDENTIAL_DELAY).await;
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert(Authenticated(caller));
    }
    if stream {
        // The feed counts until its body is dropped (the client leaves); its
        // reader's database reads are ranked under its caller, and its queued
        // events share the caller's byte budget.
        let budget = slot
            .feed_buffer
            .clone()
            .unwrap_or_else(|| CallerBuffer::new(CALLER_BUFFER_BYTES));
        let response = crate::fair::CALLER
            .scope(
                Arc::from(key.as_str()),
                CALLER_BUFFER.scope(budget, next.run(request)),
            )
            .await;
        let (parts, body) = response.into_parts();
        let body = Body::from_stream(HoldWhileStreaming {
            body: body.into_data_stream(),
            _slot: slot,
        });
        return Response::from_parts(parts, body);
    }
    let timeout = state.limits.timeout;
    // The database gate ranks this request's connections by its caller's recent use;
    // its statements end at its deadline (see `crate::db`).
    let deadline = tokio::time::Instant::now() + timeout;
    let work = crate::fair::CALLER.scope(
        Arc::from(key.as_str()),
        crate::db::DEADLINE.scope(deadline, next.run(request)),
    );
    let response = match tokio::time::timeout_at(deadline, work).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(route = %path, timeout_ms = timeout.as_millis() as u64, "admin API request timed out");
            ApiError::Timeout(format!(
                "the request took longer than {} ms (admin_api.limits.request_timeout_ms); narrow it (e.g. with from/to)",
                timeout.as_millis()
            ))
            .into_response()
        }
    };
    drop(slot);
    response
}

/// A response body that keeps its [`Slot`] until it is dropped.
struct HoldWhileStreaming<S> {
    body: S,
    _slot: Slot,
}

impl<S: futures::Stream + Unpin> futures::Stream for HoldWhileStreaming<S> {
    type Item = S::Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_live_feeds_share_one_byte_budget() {
        let limits = Arc::new(Limits::new(&tally_config::AdminLimitsConfig {
            request_timeout_ms: 1000,
            max_concurrent_per_caller: 2,
            max_streams_per_caller: 3,
            ..tally_config::AdminLimitsConfig::default()
        }));
        let budget = |slot: &Slot| slot.feed_buffer.clone().expect("a feed has a budget");
        let a1 = limits.acquire("a", true).expect("first feed");
        let a2 = limits.acquire("a", true).expect("second feed");
        let b = limits.acquire("b", true).expect("another caller's feed");
        assert!(budget(&a1).is_shared_with(&budget(&a2)));
        assert!(!budget(&a1).is_shared_with(&budget(&b)));
        // 256 KiB per feed the caller may open (3 here).
        assert_eq!(budget(&a1).available(), 3 * STREAM_BUFFER_BYTES);
        // Kept while one feed of the caller is open, new once none is.
        drop(a1);
        let a3 = limits.acquire("a", true).expect("third feed");
        assert!(budget(&a2).is_shared_with(&budget(&a3)));
        let old = budget(&a2);
        drop((a2, a3));
        let a4 = limits.acquire("a", true).expect("again");
        assert!(!budget(&a4).is_shared_with(&old));
    }

    #[test]
    fn slots_count_per_caller_and_are_given_back() {
        let limits = Arc::new(Limits::new(&tally_config::AdminLimitsConfig {
            request_timeout_ms: 1000,
            max_concurrent_per_caller: 2,
            max_streams_per_caller: 1,
            ..tally_config::AdminLimitsConfig::default()
        }));
        let a1 = limits.acquire("a", false).expect("first");
        let _a2 = limits.acquire("a", false).expect("second");
        assert!(matches!(
            limits.acquire("a", false),
            Err(ApiError::TooManyRequests { .. })
        ));
        let _b = limits.acquire("b", false).expect("another caller");
        let _s = limits.acquire("a", true).expect("streams count apart");
        assert!(limits.acquire("a", true).is_err());
        assert!(_s.feed_buffer.is_some() && a1.feed_buffer.is_none());
        drop(a1);
        let _a3 = limits.acquire("a", false).expect("given back");
        drop(_b);
        let map = limits.in_progress.lock().unwrap();
        assert!(!map.contains_key("b"), "an idle caller leaves no entry");
    }

    #[tokio::test]
    async fn a_reset_feed_keeps_its_callers_slot_for_a_while() {
        let limits = Arc::new(Limits::new(&tally_config::AdminLimitsConfig {
            max_streams_per_caller: 1,
            ..tally_config::AdminLimitsConfig::default()
        }));
        let feed = limits.acquire("a", true).expect("first feed");
        // Its client did not read: it is reset, and its slot held on after it ends.
        limits.hold_stream("a", Duration::from_millis(300));
        drop(feed);
        assert!(
            matches!(
                limits.acquire("a", true),
                Err(ApiError::TooManyRequests { .. })
            ),
            "the reset feed still counts"
        );
        let _b = limits.acquire("b", true).expect("another caller's feed");
        // Given back when the hold ends.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if limits.acquire("a", true).is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the held slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
