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
//! Traces are remembered per tenant scope ([`TraceScope`]): the records of an
//! ingest key bound to tenant T are learned and looked up under a key derived
//! from T, so an identity sent with tenant A's key never attributes (or
//! suppresses the counting of) rows sent with tenant B's key, whatever trace
//! ids either side sends.
//!
//! Entries live for the attribution window after they were last updated, and at
//! most `max_traces` are kept (the oldest go first). The map is per process;
//! across instances, each identity learned is also written once to the
//! database ([`TraceCache::unshared`], [`TraceCache::mark_shared`]) with the
//! pending marks, where every instance's writes meet (the exporter's
//! `trace_identities`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::fast_hash::FastMap;

/// A trace id (16 bytes).
pub type TraceId = [u8; 16];

/// Most span ids remembered per trace as "a descendant was already counted" (and
/// most counted agents and parent links).
const MAX_COVERED_PER_TRACE: usize = 256;
/// Most parent links followed by one [`TraceCache::cover`].
const MAX_LINK_DEPTH: usize = 64;
/// Most identities [`TraceCache::learn_all`] learns under one lock.
const LEARN_CHUNK: usize = 256;

/// The tenant scope of a request's traces: the cache key of a trace is its id
/// XOR a mask derived from the sender's bound tenant with the cache's secret
/// per-process hash keys (no mask for senders not bound to a tenant). Another
/// tenant cannot choose a trace id that lands on this tenant's entries without
/// knowing those keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceScope {
    mask: TraceId,
}

impl TraceScope {
    /// The scope of senders bound to no tenant (unauthenticated, or `*` keys).
    pub const UNBOUND: TraceScope = TraceScope { mask: [0; 16] };

    /// The cache key of `trace` in this scope.
    pub fn key(&self, trace: TraceId) -> TraceId {
        let mut key = trace;
        for (byte, mask) in key.iter_mut().zip(self.mask) {
            *byte ^= mask;
        }
        key
    }

    /// The trace id of a cache key of this scope (the inverse of [`TraceScope::key`]).
    pub fn trace(&self, key: TraceId) -> TraceId {
        self.key(key)
    }
}

/// Who a record is about. Empty strings are never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub user: Option<String>,
    /// The tenant id.
    pub tenant: Option<String>,
    /// The session id.
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

/// An [`Identity`] packed in one allocation: three little-endian `u32` lengths
/// (`u32::MAX`: absent) followed by the fields' bytes. A third of the size of three
/// `Option<String>`s inline plus three allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed(Box<[u8]>);

const ABSENT: u32 = u32::MAX;
const HEADER: usize = 12;

impl Packed {
    /// `None` for an identity without any field.
    fn pack(identity: &Identity) -> Option<Packed> {
        if identity.is_empty() {
            return None;
        }
        let fields = [&identity.user, &identity.tenant, &identity.session];
        let text: usize = fields
            .iter()
            .map(|f| f.as_ref().map_or(0, String::len))
            .sum();
        let mut bytes = Vec::with_capacity(HEADER + text);
        for field in fields {
            let len = field
                .as_ref()
                .map_or(ABSENT, |f| u32::try_from(f.len()).unwrap_or(ABSENT));
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        for field in fields.into_iter().flatten() {
            if u32::try_from(field.len()).is_ok_and(|len| len != ABSENT) {
                bytes.extend_from_slice(field.as_bytes());
            }
        }
        Some(Packed(bytes.into_boxed_slice()))
    }

    /// Field `i` (0 user, 1 tenant, 2 session).
    fn field(&self, i: usize) -> Option<&str> {
        let len_at = |j: usize| -> Option<usize> {
            let raw = self.0.get(4 * j..4 * j + 4)?;
            let len = u32::from_le_bytes(raw.try_into().ok()?);
            (len != ABSENT).then_some(len as usize)
        };
        let start = HEADER + (0..i).filter_map(len_at).sum::<usize>();
        let len = len_at(i)?;
        std::str::from_utf8(self.0.get(start..start + len)?).ok()
    }

    fn unpack(&self) -> Identity {
        let field = |i| self.field(i).map(str::to_string);
        Identity {
            user: field(0),
            tenant: field(1),
            session: field(2),
        }
    }

    fn attributes(&self) -> bool {
        self.field(0).is_some() || self.field(1).is_some()
    }

    /// Whether `identity` has a field this one lacks ([`Identity::merge`]
    /// would change it).
    fn adds(&self, identity: &Identity) -> bool {
        let absent = |i: usize| {
            self.0
                .get(4 * i..4 * i + 4)
                .and_then(|raw| raw.try_into().ok())
                .is_none_or(|raw| u32::from_le_bytes(raw) == ABSENT)
        };
        [&identity.user, &identity.tenant, &identity.session]
            .into_iter()
            .enumerate()
            .any(|(i, field)| field.is_some() && absent(i))
    }
}

/// `pending_since` when nothing is pending.
const NOT_PENDING: i64 = i64::MIN;

/// The bit of [`Entry::at`] saying the entry's identity was shared
/// ([`TraceCache::mark_shared`]); the other 31 bits count seconds (68 years).
const SHARED: u32 = 1 << 31;

/// One remembered trace: 40 bytes (plus its packed identity and, for GenAI traces, its
/// covered spans).
#[derive(Debug)]
struct Entry {
    identity: Option<Packed>,
    /// Earliest `ts` of this trace's stored rows still unattributed, in nanoseconds
    /// since the epoch ([`NOT_PENDING`]: none).
    pending_since: i64,
    /// The touch that queued this entry's live pair in [`State::order`].
    touch: u32,
    /// Seconds since the cache started, when last touched (low 31 bits), and
    /// [`SHARED`]: the identity as it is now was written for the other
    /// instances.
    at: u32,
    /// What the count-once rules remember of a GenAI trace (boxed: a thin 8-byte
    /// pointer in every entry).
    genai: Option<Box<GenAiTrace>>,
}

/// A token row, by its primary key (`ts`, `id`).
pub type RowKey = (DateTime<Utc>, uuid::Uuid);

/// The count-once memory of one trace.
#[derive(Debug, Default)]
struct GenAiTrace {
    /// Span ids whose descendant's usage was already counted.
    covered: Vec<[u8; 8]>,
    /// Agent spans counted with their own usage (the agent rule), with their
    /// row: uncounted if a model call below them reports usage later.
    agents: Vec<([u8; 8], RowKey)>,
    /// (span, parent) links seen since the trace had a counted agent, so that a
    /// late call's cover climbs to the agent through spans of earlier requests.
    parents: Vec<([u8; 8], [u8; 8])>,
}

/// `ts` as nanoseconds since the epoch; out of that range (before 1677 or after 2262),
/// the earliest representable instant, so that attribution covers every row of the
/// trace rather than none.
fn to_nanos(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_nanos_opt().unwrap_or(NOT_PENDING + 1)
}

fn from_nanos(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

#[derive(Debug, Default)]
struct State {
    entries: FastMap<TraceId, Entry>,
    /// (trace, touch) in touch order; stale pairs (the entry was touched since) are
    /// skipped when popped, and dropped when the queue grows past twice the entries'
    /// bound.
    order: VecDeque<(TraceId, u32)>,
    /// Touches so far (wrapping; a stale pair lives at most ~2 × `max_traces`
    /// touches, far from a wrap).
    touches: u32,
}

/// The bounded trace → identity map shared by the pipeline's requests.
#[derive(Debug)]
pub struct TraceCache {
    state: Mutex<State>,
    window: Duration,
    /// The window in whole seconds (rounded up).
    window_secs: u64,
    max_traces: usize,
    started: Instant,
    /// Secret hash keys of the tenant scopes (two for 128 bits).
    scope_keys: [std::collections::hash_map::RandomState; 2],
}

impl TraceCache {
    /// A cache that keeps a trace's identity for `window`, at most `max_traces` traces.
    pub fn new(window: Duration, max_traces: usize) -> TraceCache {
        TraceCache {
            scope_keys: Default::default(),
            state: Mutex::new(State::default()),
            window,
            window_secs: window.as_secs() + u64::from(window.subsec_nanos() > 0),
            max_traces: max_traces.max(1),
            started: Instant::now(),
        }
    }

    /// The scope of a sender bound to `tenant` (`None`: [`TraceScope::UNBOUND`]).
    pub fn scope(&self, tenant: Option<&str>) -> TraceScope {
        use std::hash::BuildHasher;
        let Some(tenant) = tenant else {
            return TraceScope::UNBOUND;
        };
        let mut mask = [0u8; 16];
        mask[..8].copy_from_slice(&self.scope_keys[0].hash_one(tenant).to_le_bytes());
        mask[8..].copy_from_slice(&self.scope_keys[1].hash_one(tenant).to_le_bytes());
        TraceScope { mask }
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

    /// Seconds since the cache started (saturating below [`SHARED`], 68 years).
    fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs())
            .unwrap_or(u32::MAX)
            .min(SHARED - 1)
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
        let now = self.now();
        self.learn_at(&mut state, trace, identity, now)
    }

    /// [`TraceCache::learn`] for each of `items` in order, under one lock and
    /// one reading of the clock per [`LEARN_CHUNK`] items (a request's spans);
    /// `learned` is called with each item and what `learn` answered for it.
    pub fn learn_all<'i>(
        &self,
        items: impl IntoIterator<Item = (TraceId, &'i Identity)>,
        mut learned: impl FnMut(TraceId, &'i Identity, Option<(Identity, DateTime<Utc>)>),
    ) {
        let mut items = items
            .into_iter()
            .filter(|(_, identity)| !identity.is_empty())
            .peekable();
        while items.peek().is_some() {
            // Other requests get the lock between chunks of a large request.
            let mut state = self.lock();
            let now = self.now();
            for (trace, identity) in items.by_ref().take(LEARN_CHUNK) {
                let answer = self.learn_at(&mut state, trace, identity, now);
                learned(trace, identity, answer);
            }
        }
    }

    /// [`TraceCache::learn`] of a non-empty identity, the lock held, at `now`.
    fn learn_at(
        &self,
        state: &mut State,
        trace: TraceId,
        identity: &Identity,
        now: u32,
    ) -> Option<(Identity, DateTime<Utc>)> {
        let entry = self.touch_at(state, trace, now);
        match &entry.identity {
            None => {
                entry.identity = Packed::pack(identity);
                entry.at &= !SHARED;
            }
            // Most records repeat what their trace already said: only a field
            // the entry lacks changes it (and only then is it unpacked).
            Some(known) if known.adds(identity) => {
                let mut merged = known.unpack();
                merged.merge(identity);
                entry.identity = Packed::pack(&merged);
                entry.at &= !SHARED;
            }
            Some(_) => {}
        }
        let identified = entry.identity.as_ref().filter(|p| p.attributes())?;
        if entry.pending_since == NOT_PENDING {
            return None;
        }
        let since = from_nanos(std::mem::replace(&mut entry.pending_since, NOT_PENDING));
        Some((identified.unpack(), since))
    }

    /// The identity known for `trace`, if it attributes rows.
    pub fn lookup(&self, trace: &TraceId) -> Option<Identity> {
        let mut state = self.lock();
        self.expire(&mut state);
        state
            .entries
            .get(trace)
            .and_then(|e| e.identity.as_ref())
            .filter(|p| p.attributes())
            .map(Packed::unpack)
    }

    /// The identity known for `trace` if it attributes rows and was not yet
    /// shared with the other instances as it is now (see [`mark_shared`]).
    ///
    /// [`mark_shared`]: TraceCache::mark_shared
    pub fn unshared(&self, trace: &TraceId) -> Option<Identity> {
        let state = self.lock();
        let entry = state.entries.get(trace)?;
        if entry.at & SHARED != 0 {
            return None;
        }
        entry
            .identity
            .as_ref()
            .filter(|p| p.attributes())
            .map(Packed::unpack)
    }

    /// Notes that `identity` was written for the other instances (committed):
    /// while the trace's identity stays that, [`unshared`] answers `None`.
    ///
    /// [`unshared`]: TraceCache::unshared
    pub fn mark_shared(&self, trace: &TraceId, identity: &Identity) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(trace) {
            if entry
                .identity
                .as_ref()
                .is_some_and(|p| p.unpack() == *identity)
            {
                entry.at |= SHARED;
            }
        }
    }

    /// Notes that rows of `trace` starting at `ts` are (about to be) stored
    /// without attribution.
    pub fn mark_pending(&self, trace: TraceId, ts: DateTime<Utc>) {
        let mut state = self.lock();
        let entry = self.touch(&mut state, trace);
        let ts = to_nanos(ts);
        entry.pending_since = if entry.pending_since == NOT_PENDING {
            ts
        } else {
            entry.pending_since.min(ts)
        };
    }

    /// After this trace's unattributed rows committed: when the identity is known
    /// by now, clears the pending mark and returns it with the earliest pending
    /// `ts` (the caller updates the rows).
    pub fn take_if_identified(&self, trace: &TraceId) -> Option<(Identity, DateTime<Utc>)> {
        let mut state = self.lock();
        let entry = state.entries.get_mut(trace)?;
        let identity = entry.identity.as_ref().filter(|p| p.attributes())?.unpack();
        if entry.pending_since == NOT_PENDING {
            return None;
        }
        let since = from_nanos(std::mem::replace(&mut entry.pending_since, NOT_PENDING));
        Some((identity, since))
    }

    /// Whether a descendant of span `span` of `trace` already had its usage counted.
    pub fn is_covered(&self, trace: &TraceId, span: &[u8; 8]) -> bool {
        let state = self.lock();
        state
            .entries
            .get(trace)
            .and_then(|e| e.genai.as_ref())
            .is_some_and(|g| g.covered.contains(span))
    }

    /// Remembers that usage under span `span` of `trace` was counted, and climbs
    /// through the remembered parent links. Returns the counted agents (span,
    /// row) met on the way: they stop counting (the caller deletes their rows).
    pub fn cover(&self, trace: TraceId, span: [u8; 8]) -> Vec<([u8; 8], RowKey)> {
        let mut state = self.lock();
        let entry = self.touch(&mut state, trace);
        let genai = entry.genai.get_or_insert_with(Default::default);
        let mut uncounted = Vec::new();
        let mut at = span;
        for _ in 0..MAX_LINK_DEPTH {
            if !genai.covered.contains(&at) {
                if genai.covered.len() >= MAX_COVERED_PER_TRACE {
                    genai.covered.remove(0);
                }
                genai.covered.push(at);
            }
            if let Some(i) = genai.agents.iter().position(|(s, _)| *s == at) {
                uncounted.push(genai.agents.swap_remove(i));
            }
            match genai.parents.iter().find(|(s, _)| *s == at) {
                Some((_, parent)) if *parent != span => at = *parent,
                _ => break,
            }
        }
        uncounted
    }

    /// Remembers an agent span counted with its own usage, and its row.
    pub fn count_agent(&self, trace: TraceId, span: [u8; 8], row: RowKey) {
        let mut state = self.lock();
        let entry = self.touch(&mut state, trace);
        let genai = entry.genai.get_or_insert_with(Default::default);
        if !genai.agents.iter().any(|(s, _)| *s == span) {
            if genai.agents.len() >= MAX_COVERED_PER_TRACE {
                genai.agents.remove(0);
            }
            genai.agents.push((span, row));
        }
    }

    /// Remembers `span`'s parent when `trace` has a counted agent (see [`cover`]).
    ///
    /// [`cover`]: TraceCache::cover
    pub fn link(&self, trace: &TraceId, span: [u8; 8], parent: [u8; 8]) {
        let mut state = self.lock();
        let Some(genai) = state.entries.get_mut(trace).and_then(|e| e.genai.as_mut()) else {
            return;
        };
        if genai.agents.is_empty() || genai.parents.iter().any(|(s, _)| *s == span) {
            return;
        }
        if genai.parents.len() >= MAX_COVERED_PER_TRACE {
            genai.parents.remove(0);
        }
        genai.parents.push((span, parent));
    }

    /// The entry of `trace`, created or refreshed; evicts expired and excess entries.
    fn touch<'a>(&self, state: &'a mut State, trace: TraceId) -> &'a mut Entry {
        let now = self.now();
        self.touch_at(state, trace, now)
    }

    /// [`TraceCache::touch`] at `now` ([`TraceCache::now`]).
    fn touch_at<'a>(&self, state: &'a mut State, trace: TraceId, now: u32) -> &'a mut Entry {
        self.expire_at(state, now);
        if !state.entries.contains_key(&trace) {
            while state.entries.len() >= self.max_traces {
                let Some((old, touch)) = state.order.pop_front() else {
                    break;
                };
                if state.entries.get(&old).is_some_and(|e| e.touch == touch) {
                    state.entries.remove(&old);
                }
            }
        }
        let touch = state.touches;
        state.touches = state.touches.wrapping_add(1);
        state.order.push_back((trace, touch));
        if state.order.len() > self.max_traces.saturating_mul(2).max(64) {
            // Every entry has one live pair: at least half the queue goes.
            let entries = &state.entries;
            state
                .order
                .retain(|(t, n)| entries.get(t).is_some_and(|e| e.touch == *n) || *t == trace);
        }
        let entry = state.entries.entry(trace).or_insert(Entry {
            identity: None,
            pending_since: NOT_PENDING,
            touch,
            at: now,
            genai: None,
        });
        entry.touch = touch;
        entry.at = now | (entry.at & SHARED);
        entry
    }

    /// Drops entries not touched within the window.
    fn expire(&self, state: &mut State) {
        let now = self.now();
        self.expire_at(state, now);
    }

    /// [`TraceCache::expire`] at `now` ([`TraceCache::now`]).
    fn expire_at(&self, state: &mut State, now: u32) {
        let now = u64::from(now);
        while let Some((trace, touch)) = state.order.front().copied() {
            if let Some(entry) = state.entries.get(&trace).filter(|e| e.touch == touch) {
                if now.saturating_sub(u64::from(entry.at & !SHARED)) < self.window_secs {
                    break;
                }
                state.entries.remove(&trace);
            }
            state.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;
