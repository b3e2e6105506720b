//! Fair use of the admin API's database connections: long requests cannot take
//! every connection from short ones.
//!
//! The per-caller limits ([`crate::limits`]) bound what one caller holds, but many
//! callers each running the widest aggregate the caps allow would still hold every
//! pooled connection for seconds, and everyone else's page of `/activity` would wait
//! behind them. So requests go in two lanes. A caller whose recent requests held
//! their connection long (a moving average over [`HEAVY_AFTER`]) is *heavy*: its
//! requests share at most a quarter of the connections, and at most one per two
//! CPUs of the machine (at least one): a heavy statement is mostly CPU in
//! PostgreSQL, and ingest and the other callers need the rest. Other
//! callers' requests may use them all, and are served first when connections are
//! short. A new caller starts light; one long request makes it heavy for its next
//! ones, and short ones make it light again.
//!
//! The heavy lane also keeps a *duty cycle* (`admin_api.limits.heavy_duty_percent`,
//! default 50): a heavy connection held for `t` while light requests were in
//! progress (or waiting) leaves the lane resting for `t × (100 − duty) / duty`
//! before the next heavy request may start, so heavy statements use the database's
//! CPU for at most that share of the wall time while anyone else is being served.
//! With no light request around, the lane does not rest.
//!
//! Within a lane, a waiting request of the caller with more of its database-time
//! budget left ([`crate::dbtime`]) goes first, then first come first served; every
//! connection's hold is charged to its caller's budget when it is given back.
//!
//! The caller is the one [`crate::limits::enforce`] counted the request under, set
//! for the request's task in [`CALLER`]; work outside a request (health checks,
//! background jobs) passes the gate without waiting.

use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::dbtime::DbTimeBudget;

tokio::task_local! {
    /// The caller a request's database work is counted under.
    pub(crate) static CALLER: Arc<str>;
}

/// A request holding its connection longer than this on average makes its caller heavy.
pub(crate) const HEAVY_AFTER: Duration = Duration::from_millis(250);

/// A heavy request's statements end after this when other heavy requests wait
/// for the lane as it takes its connection (else at the request's deadline): one
/// heavy caller cannot keep the lane for the whole request timeout.
pub(crate) const HEAVY_TURN: Duration = Duration::from_secs(5);

/// Weight of the latest request in a caller's moving average of hold time.
const AVERAGE_WEIGHT: f64 = 0.3;

/// Callers remembered at most; beyond it, those idle longest are forgotten.
const MAX_CALLERS: usize = 10_000;

/// What the gate remembers of one caller.
#[derive(Debug, Clone, Copy)]
struct CallerUsage {
    /// Moving average of how long its requests held a connection.
    average_hold: Duration,
    last_seen: Instant,
}

/// A request waiting for a connection.
struct Waiter {
    heavy: bool,
    /// Its caller's [`DbTimeBudget::standing`] when it queued.
    standing: i64,
    order: u64,
    caller: Arc<str>,
    grant: oneshot::Sender<Permit>,
}

impl Waiter {
    /// Light before heavy, then the caller with more of its database-time budget
    /// left, then first come first served.
    fn rank(&self) -> (bool, i64, std::cmp::Reverse<u64>) {
        (!self.heavy, self.standing, std::cmp::Reverse(self.order))
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

#[derive(Default)]
struct GateState {
    in_use: usize,
    heavy_in_use: usize,
    waiting: BinaryHeap<Waiter>,
    callers: HashMap<Arc<str>, CallerUsage>,
    next_order: u64,
    /// No heavy request starts before this (the lane's rest, see the module docs).
    heavy_rest_until: Option<Instant>,
    /// When a light request last took a connection.
    light_last: Option<Instant>,
    /// The end of a rest that a timer will dispatch at (see [`FairGate::wake_at`]).
    wake_pending: Option<Instant>,
}

impl GateState {
    /// Whether light requests hold or wait for connections now, or took one since `since`.
    fn light_active_since(&self, since: Instant) -> bool {
        self.in_use > self.heavy_in_use
            || self.light_last.is_some_and(|at| at >= since)
            || self.waiting.iter().any(|w| !w.heavy)
    }
}

/// The gate in front of the pool (see the module docs).
pub(crate) struct FairGate {
    capacity: usize,
    heavy_capacity: usize,
    /// How long the heavy lane rests per unit of time it was held while light
    /// requests were active: `(100 − duty) / duty` (0 at a duty of 100%).
    rest_per_hold: f64,
    /// Charged with every connection's hold, per caller (shared by every gate of
    /// the instance).
    budget: Arc<DbTimeBudget>,
    state: Mutex<GateState>,
}

/// Leave to use one connection; gives it back (and records how long it was held)
/// when dropped.
pub(crate) struct Permit {
    gate: Arc<FairGate>,
    caller: Arc<str>,
    heavy: bool,
    since: Instant,
}

impl Permit {
    /// Whether this connection is used in the heavy lane while other heavy
    /// requests wait for it (its statements then get at most [`HEAVY_TURN`]).
    pub(crate) fn heavy_contended(&self) -> bool {
        self.heavy && self.gate.lock().waiting.iter().any(|w| w.heavy)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        let granted = {
            let mut state = self.gate.lock();
            state.in_use = state.in_use.saturating_sub(1);
            let now = Instant::now();
            if self.heavy {
                state.heavy_in_use = state.heavy_in_use.saturating_sub(1);
                // The duty cycle: rest in proportion to the hold, if others were served meanwhile.
                if self.gate.rest_per_hold > 0.0 && state.light_active_since(self.since) {
                    let until = now + held.mul_f64(self.gate.rest_per_hold);
                    if state.heavy_rest_until.is_none_or(|at| at < until) {
                        state.heavy_rest_until = Some(until);
                    }
                    if state.waiting.iter().any(|w| w.heavy) {
                        self.gate.wake_at(&mut state);
                    }
                }
            } else {
                state.light_last = Some(now);
            }
            let usage = state
                .callers
                .entry(self.caller.clone())
                .or_insert(CallerUsage {
                    average_hold: held,
                    last_seen: now,
                });
            usage.average_hold =
                usage.average_hold.mul_f64(1.0 - AVERAGE_WEIGHT) + held.mul_f64(AVERAGE_WEIGHT);
            usage.last_seen = now;
            self.gate.budget.charge(&self.caller, self.since, now);
            if state.callers.len() > MAX_CALLERS {
                forget_idlest(&mut state.callers);
            }
            self.gate.dispatch(&mut state)
        };
        // Sent outside the lock: a permit whose waiter left comes straight back here.
        for (waiter, permit) in granted {
            let _ = waiter.send(permit);
        }
    }
}

/// Connections heavy callers share: a quarter of `capacity`, at most one per two
/// `cpus`, at least one.
fn heavy_capacity(capacity: usize, cpus: usize) -> usize {
    (capacity / 4).min(cpus / 2).max(1)
}

/// Forgets the half of `callers` idle longest.
fn forget_idlest(callers: &mut HashMap<Arc<str>, CallerUsage>) {
    let mut seen: Vec<Instant> = callers.values().map(|u| u.last_seen).collect();
    seen.sort_unstable();
    let cut = seen[seen.len() / 2];
    callers.retain(|_, usage| usage.last_seen > cut);
}

/// The heavy lane's rest per unit of hold for a duty of `percent` (clamped to 1–100).
fn rest_per_hold(percent: u8) -> f64 {
    let duty = f64::from(percent.clamp(1, 100)) / 100.0;
    (1.0 - duty) / duty
}

impl FairGate {
    /// A gate for a pool of `capacity` connections on this machine, its heavy
    /// lane busy at most `heavy_duty_percent` of the time while light requests are served.
    /// Each connection's hold is charged to its caller in `budget`.
    pub(crate) fn new(
        capacity: usize,
        heavy_duty_percent: u8,
        budget: Arc<DbTimeBudget>,
    ) -> Arc<FairGate> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        FairGate::with_cpus(capacity, cpus, heavy_duty_percent, budget)
    }

    /// A gate for a pool of `capacity` connections on a machine of `cpus` CPUs.
    pub(crate) fn with_cpus(
        capacity: usize,
        cpus: usize,
        heavy_duty_percent: u8,
        budget: Arc<DbTimeBudget>,
    ) -> Arc<FairGate> {
        let capacity = capacity.max(1);
        Arc::new(FairGate {
            capacity,
            heavy_capacity: heavy_capacity(capacity, cpus),
            rest_per_hold: rest_per_hold(heavy_duty_percent),
            budget,
            state: Mutex::new(GateState::default()),
        })
    }

    /// Makes sure heavy waiters are dispatched when the heavy lane's rest ends,
    /// though no permit may be released then (one timer per rest).
    fn wake_at(self: &Arc<Self>, state: &mut GateState) {
        let Some(at) = state.heavy_rest_until else {
            return;
        };
        if state.wake_pending == Some(at) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.wake_pending = Some(at);
        let gate = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            let granted = {
                let mut state = gate.lock();
                if state.wake_pending == Some(at) {
                    state.wake_pending = None;
                }
                gate.dispatch(&mut state)
            };
            for (waiter, permit) in granted {
                let _ = waiter.send(permit);
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `caller`'s recent requests held their connections long.
    fn is_heavy(state: &GateState, caller: &str) -> bool {
        state
            .callers
            .get(caller)
            .is_some_and(|usage| usage.average_hold >= HEAVY_AFTER)
    }

    fn admissible(&self, state: &GateState, heavy: bool) -> bool {
        state.in_use < self.capacity
            && (!heavy
                || (state.heavy_in_use < self.heavy_capacity
                    && state
                        .heavy_rest_until
                        .is_none_or(|until| Instant::now() >= until)))
    }

    fn take(self: &Arc<Self>, state: &mut GateState, caller: Arc<str>, heavy: bool) -> Permit {
        let now = Instant::now();
        state.in_use += 1;
        if heavy {
            state.heavy_in_use += 1;
        } else {
            state.light_last = Some(now);
        }
        Permit {
            gate: self.clone(),
            caller,
            heavy,
            since: now,
        }
    }

    /// Grants what the freed connections allow, best-ranked waiters first; answers
    /// the grants to send once the lock is released.
    fn dispatch(self: &Arc<Self>, state: &mut GateState) -> Vec<(oneshot::Sender<Permit>, Permit)> {
        let mut granted = Vec::new();
        let mut blocked_heavy = Vec::new();
        while state.in_use < self.capacity {
            let Some(waiter) = state.waiting.pop() else {
                break;
            };
            if waiter.grant.is_closed() {
                continue;
            }
            if !self.admissible(state, waiter.heavy) {
                // Heavy lane full or resting: light waiters (ranked first) were already served.
                blocked_heavy.push(waiter);
                break;
            }
            let permit = self.take(state, waiter.caller, waiter.heavy);
            granted.push((waiter.grant, permit));
        }
        state.waiting.extend(blocked_heavy);
        granted
    }

    /// Waits for leave to use a connection as `caller`, at most `timeout`
    /// (`None`: timed out).
    pub(crate) async fn enter(
        self: &Arc<Self>,
        caller: Arc<str>,
        timeout: Duration,
    ) -> Option<Permit> {
        let (receiver, granted) = {
            let mut state = self.lock();
            let heavy = Self::is_heavy(&state, &caller);
            // Waiters that can go first (and those that left) are dealt with first;
            // whoever still waits then cannot use what is free.
            let granted = self.dispatch(&mut state);
            if self.admissible(&state, heavy) {
                let permit = self.take(&mut state, caller, heavy);
                drop(state);
                for (waiter, permit) in granted {
                    let _ = waiter.send(permit);
                }
                return Some(permit);
            }
            let (grant, receiver) = oneshot::channel();
            let order = state.next_order;
            state.next_order += 1;
            let standing = self.budget.standing(&caller, Instant::now());
            state.waiting.push(Waiter {
                heavy,
                standing,
                order,
                caller,
                grant,
            });
            if heavy && state.heavy_rest_until.is_some_and(|at| at > Instant::now()) {
                self.wake_at(&mut state);
            }
            (receiver, granted)
        };
        for (waiter, permit) in granted {
            let _ = waiter.send(permit);
        }
        tokio::time::timeout(timeout, receiver).await.ok()?.ok()
    }
}

#[cfg(test)]
mod tests;
