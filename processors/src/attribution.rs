//! Trace attribution: a bounded in-memory map from trace id to the user, tenant
//! and session that some span or log record of the trace carried.
//!
//! LLM spans written by auto-instrumentation rarely carry the end user; the
//! request span that wraps them does, and usually arrives *after* them (children
//! end first). The pipeline
//!
//! 1. learns identities from every record of every request ([`TraceCache::learn`]),
//! 2. fills token rows that carry no user and no tenant from the cache
//!    (`attribution_source = 'trace'`),
//! 3. marks the traces of rows still unattributed as *pending*
//!    ([`TraceCache::mark_pending`]) before submitting them, and
//! 4. when an identity arrives for a pending trace (or is found after the
//!    pending rows committed), updates the stored rows of that trace before the
//!    export is acknowledged.
//!
//! Entries live for the attribution window after they were last updated, and at
//! most `max_traces` are kept (the oldest go first). The map is per process:
//! several Tally instances need trace-aware load balancing (all spans of one
//! trace to the same instance) for attribution across exports.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::fast_hash::FastMap;

/// A trace id (16 bytes).
pub type TraceId = [u8; 16];

/// Most span ids remembered per trace as "a descendant was already counted".
const MAX_COVERED_PER_TRACE: usize = 256;

/// Who a record is about. Empty strings are never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub tenant: Option<String>,
    pub session: Option<String>,
}

impl Identity {
    /// Carries a user or a tenant (a session alone does not attribute a row).
    pub fn attributes(&self) -> bool {
        self.user.is_some() || self.tenant.is_some()
    }

    fn is_empty(&self) -> bool {
        self.user.is_none() && self.tenant.is_none() && self.session.is_none()
    }

    /// Fills the fields `self` lacks from `other`.
    fn merge(&mut self, other: &Identity) {
        if self.user.is_none() {
            self.user.clone_from(&other.user);
        }
        if self.tenant.is_none() {
            self.tenant.clone_from(&other.tenant);
        }
        if self.session.is_none() {
            self.session.clone_from(&other.session);
        }
    }
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    /// Earliest `ts` of this trace's stored rows still unattributed.
    pending_since: Option<DateTime<Utc>>,
    /// Span ids whose descendant's usage was already counted.
    covered: Vec<[u8; 8]>,
    stamp: Instant,
}

#[derive(Debug, Default)]
struct State {
    entries: FastMap<TraceId, Entry>,
    /// (trace, stamp) in stamp order; stale pairs (the entry was touched since)
    /// are skipped when popped.
    order: VecDeque<(TraceId, Instant)>,
}

/// The bounded trace → identity map shared by the pipeline's requests.
#[derive(Debug)]
pub struct TraceCache {
    state: Mutex<State>,
    window: Duration,
    max_traces: usize,
}

impl TraceCache {
    pub fn new(window: Duration, max_traces: usize) -> TraceCache {
        TraceCache {
            state: Mutex::new(State::default()),
            window,
            max_traces: max_traces.max(1),
        }
    }

    /// The attribution window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Traces remembered right now (expired ones may still count until touched).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers what `identity` says about `trace` (fields already known are
    /// kept). When the trace was pending and now attributes rows, returns the
    /// identity and the earliest pending `ts`, and clears the pending mark: the
    /// caller updates the stored rows (and calls [`mark_pending`] again if that
    /// fails).
    ///
    /// [`mark_pending`]: TraceCache::mark_pending
    pub fn learn(&self, trace: TraceId, identity: &Identity) -> Option<(Identity, DateTime<Utc>)> {
        if identity.is_empty() {
            return None;
        }
        let mut state = self.lock();
        let entry = self.touch(&mut state, trace);
        entry.identity.merge(identity);
        if entry.identity.attributes() {
            if let Some(since) = entry.pending_since.take() {
                return Some((entry.identity.clone(), since));
            }
        }
        None
    }

    /// The identity known for `trace`, if it attributes rows.
    pub fn lookup(&self, trace: &TraceId) -> Option<Identity> {
        let mut state = self.lock();
        self.expire(&mut state);
        state
            .entries
            .get(trace)
            .map(|e| e.identity.clone())
            .filter(Identity::attributes)
    }

    /// Notes that rows of `trace` starting at `ts` are (about to be) stored
    /// without attribution.
    pub fn mark_pending(&self, trace: TraceId, ts: DateTime<Utc>) {
        let mut state = self.lock();
        let entry = self.touch(&mut state, trace);
        entry.pending_since = Some(entry.pending_since.map_or(ts, |s| s.min(ts)));
    }

    /// After this trace's unattributed rows committed: when the identity is known
    /// by now, clears the pending mark and returns it with the earliest pending
    /// `ts` (the caller updates the rows).
    pub fn take_if_identified(&self, trace: &TraceId) -> Option<(Identity, DateTime<Utc>)> {
        let mut state = self.lock();
        let entry = state.entries.get_mut(trace)?;
        if !entry.identity.attributes() {
            return None;
        }
        let since = entry.pending_since.take()?;
        Some((entry.identity.clone(), since))
    }

    /// Whether a descendant of span `span` of `trace` already had its usage counted.
    pub fn is_covered(&self, trace: &TraceId, span: &[u8; 8]) -> bool {
        let state = self.lock();
        state
            .entries
            .get(trace)
            .is_some_and(|e| e.covered.contains(span))
    }

    /// Remembers that usage under span `span` of `trace` was counted.
    pub fn cover(&self, trace: TraceId, span: [u8; 8]) {
        let mut state = self.lock();
        let entry = self.touch(&mut state, trace);
        if !entry.covered.contains(&span) {
            if entry.covered.len() >= MAX_COVERED_PER_TRACE {
                entry.covered.remove(0);
            }
            entry.covered.push(span);
        }
    }

    /// The entry of `trace`, created or refreshed; evicts expired and excess entries.
    fn touch<'a>(&self, state: &'a mut State, trace: TraceId) -> &'a mut Entry {
        self.expire(state);
        let now = Instant::now();
        if !state.entries.contains_key(&trace) {
            while state.entries.len() >= self.max_traces {
                let Some((old, stamp)) = state.order.pop_front() else {
                    break;
                };
                if state.entries.get(&old).is_some_and(|e| e.stamp == stamp) {
                    state.entries.remove(&old);
                }
            }
        }
        state.order.push_back((trace, now));
        if state.order.len() > self.max_traces.saturating_mul(4).max(64) {
            let entries = &state.entries;
            state
                .order
                .retain(|(t, s)| entries.get(t).is_some_and(|e| e.stamp == *s) || *t == trace);
        }
        let entry = state.entries.entry(trace).or_insert_with(|| Entry {
            identity: Identity::default(),
            pending_since: None,
            covered: Vec::new(),
            stamp: now,
        });
        entry.stamp = now;
        entry
    }

    /// Drops entries not touched within the window.
    fn expire(&self, state: &mut State) {
        let now = Instant::now();
        while let Some((trace, stamp)) = state.order.front().copied() {
            if now.duration_since(stamp) < self.window {
                break;
            }
            state.order.pop_front();
            if state.entries.get(&trace).is_some_and(|e| e.stamp == stamp) {
                state.entries.remove(&trace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str) -> Identity {
        Identity {
            user: Some(user.into()),
            tenant: Some("t".into()),
            session: None,
        }
    }

    #[test]
    fn pending_then_identity_returns_the_pending_start() {
        let cache = TraceCache::new(Duration::from_secs(60), 10);
        let ts = Utc::now();
        cache.mark_pending([1; 16], ts);
        cache.mark_pending([1; 16], ts - chrono::Duration::seconds(5));
        assert_eq!(cache.lookup(&[1; 16]), None);
        let (identity, since) = cache.learn([1; 16], &who("alice")).expect("was pending");
        assert_eq!(identity.user.as_deref(), Some("alice"));
        assert_eq!(since, ts - chrono::Duration::seconds(5));
        // Cleared: a second learn does not report it again.
        assert_eq!(cache.learn([1; 16], &who("bob")), None);
        // First identity wins.
        assert_eq!(
            cache.lookup(&[1; 16]).unwrap().user.as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn identity_first_then_pending_is_taken_after_commit() {
        let cache = TraceCache::new(Duration::from_secs(60), 10);
        assert_eq!(cache.learn([2; 16], &who("a")), None);
        let ts = Utc::now();
        cache.mark_pending([2; 16], ts);
        assert_eq!(cache.take_if_identified(&[2; 16]).map(|x| x.1), Some(ts));
        assert_eq!(cache.take_if_identified(&[2; 16]), None);
    }

    #[test]
    fn session_alone_does_not_attribute() {
        let cache = TraceCache::new(Duration::from_secs(60), 10);
        cache.mark_pending([3; 16], Utc::now());
        let session = Identity {
            session: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(cache.learn([3; 16], &session), None);
        assert_eq!(cache.lookup(&[3; 16]), None);
        let found = cache.learn([3; 16], &who("u")).expect("pending");
        assert_eq!(found.0.session.as_deref(), Some("s"), "fields merge");
    }

    #[test]
    fn bounded_oldest_evicted_and_window_expires() {
        let cache = TraceCache::new(Duration::from_secs(60), 3);
        for i in 0..5u8 {
            cache.learn([i; 16], &who("u"));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.lookup(&[0; 16]).is_none());
        assert!(cache.lookup(&[1; 16]).is_none());
        assert!(cache.lookup(&[4; 16]).is_some());
        // Touching an old entry makes it the newest.
        cache.learn([2; 16], &who("u"));
        cache.learn([9; 16], &who("u"));
        assert!(cache.lookup(&[2; 16]).is_some());
        assert!(cache.lookup(&[3; 16]).is_none());

        let short = TraceCache::new(Duration::from_millis(0), 3);
        short.learn([7; 16], &who("u"));
        assert!(
            short.lookup(&[7; 16]).is_none(),
            "a zero window remembers nothing"
        );
    }

    #[test]
    fn covered_spans_are_remembered() {
        let cache = TraceCache::new(Duration::from_secs(60), 3);
        assert!(!cache.is_covered(&[1; 16], &[9; 8]));
        cache.cover([1; 16], [9; 8]);
        assert!(cache.is_covered(&[1; 16], &[9; 8]));
        assert!(!cache.is_covered(&[2; 16], &[9; 8]));
    }
}
