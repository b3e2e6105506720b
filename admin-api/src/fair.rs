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
mod tests {
    use super::*;

    fn caller(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn budget() -> Arc<DbTimeBudget> {
        DbTimeBudget::new(100)
    }

    /// Marks `name` heavy by one long-held permit.
    fn make_heavy(gate: &Arc<FairGate>, name: &str) {
        let mut state = gate.lock();
        state.callers.insert(
            caller(name),
            CallerUsage {
                average_hold: HEAVY_AFTER * 4,
                last_seen: Instant::now(),
            },
        );
    }

    #[test]
    fn the_heavy_lane_is_a_quarter_of_the_connections_and_half_the_cpus() {
        assert_eq!(heavy_capacity(8, 16), 2);
        assert_eq!(heavy_capacity(8, 2), 1);
        assert_eq!(heavy_capacity(8, 1), 1);
        assert_eq!(heavy_capacity(2, 16), 1);
        assert_eq!(heavy_capacity(32, 8), 4);
    }

    #[tokio::test]
    async fn heavy_callers_share_a_quarter_and_light_ones_get_the_rest() {
        let gate = FairGate::with_cpus(8, 16, 100, budget());
        for i in 0..10 {
            make_heavy(&gate, &format!("heavy-{i}"));
        }
        let wait = Duration::from_millis(50);
        let first = gate
            .enter(caller("heavy-0"), wait)
            .await
            .expect("lane free");
        let second = gate
            .enter(caller("heavy-1"), wait)
            .await
            .expect("lane free");
        assert!(
            gate.enter(caller("heavy-2"), wait).await.is_none(),
            "the heavy lane holds two of eight"
        );
        let mut light = Vec::new();
        for i in 0..6 {
            light.push(
                gate.enter(caller(&format!("light-{i}")), wait)
                    .await
                    .expect("light"),
            );
        }
        assert!(
            gate.enter(caller("light-x"), wait).await.is_none(),
            "all eight in use"
        );
        drop(first);
        drop(second);
        assert!(gate.enter(caller("light-y"), wait).await.is_some());
    }

    #[tokio::test]
    async fn a_freed_connection_goes_to_a_light_waiter_before_a_heavy_one() {
        let gate = FairGate::new(1, 100, budget());
        make_heavy(&gate, "heavy");
        let held = gate
            .enter(caller("light-0"), Duration::from_millis(50))
            .await
            .expect("free");
        let heavy = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter(caller("heavy"), Duration::from_secs(5)).await })
        };
        // The heavy request queues first.
        let deadline = Instant::now() + Duration::from_secs(5);
        while gate.lock().waiting.is_empty() {
            assert!(Instant::now() < deadline, "the heavy request never queued");
            tokio::task::yield_now().await;
        }
        let light = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter(caller("light-1"), Duration::from_secs(5)).await })
        };
        while gate.lock().waiting.len() < 2 {
            assert!(Instant::now() < deadline, "the light request never queued");
            tokio::task::yield_now().await;
        }
        drop(held);
        let light = light.await.expect("join").expect("light served");
        assert!(!heavy.is_finished(), "the heavy waiter is still waiting");
        drop(light);
        assert!(heavy.await.expect("join").is_some(), "then the heavy one");
    }

    #[tokio::test]
    async fn a_freed_connection_goes_to_the_caller_that_used_less_of_its_budget() {
        let budget = budget();
        let gate = FairGate::new(1, 100, budget.clone());
        // "busy" held two connections for the last 5 s (5 s more than passed);
        // "calm" held none.
        let now = Instant::now();
        for _ in 0..2 {
            budget.charge(&caller("busy"), now - Duration::from_secs(5), now);
        }
        let held = gate
            .enter(caller("calm"), Duration::from_millis(50))
            .await
            .expect("free");
        let deadline = Instant::now() + Duration::from_secs(5);
        let busy = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter(caller("busy"), Duration::from_secs(5)).await })
        };
        while gate.lock().waiting.is_empty() {
            assert!(Instant::now() < deadline, "the busy caller never queued");
            tokio::task::yield_now().await;
        }
        let calm = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter(caller("calm"), Duration::from_secs(5)).await })
        };
        while gate.lock().waiting.len() < 2 {
            assert!(Instant::now() < deadline, "the calm caller never queued");
            tokio::task::yield_now().await;
        }
        drop(held);
        let calm = calm.await.expect("join").expect("calm served first");
        assert!(!busy.is_finished(), "the busy caller still waits");
        drop(calm);
        assert!(busy.await.expect("join").is_some(), "then the busy one");
    }

    #[tokio::test]
    async fn a_heavy_connection_is_contended_only_while_another_heavy_request_waits() {
        let gate = FairGate::with_cpus(8, 2, 100, budget());
        make_heavy(&gate, "heavy-0");
        make_heavy(&gate, "heavy-1");
        let light = gate
            .enter(caller("light"), Duration::from_millis(50))
            .await
            .expect("free");
        let heavy = gate
            .enter(caller("heavy-0"), Duration::from_millis(50))
            .await
            .expect("the lane is free");
        assert!(!heavy.heavy_contended(), "nobody waits for the lane");
        assert!(!light.heavy_contended(), "a light connection never is");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter(caller("heavy-1"), Duration::from_secs(5)).await })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while gate.lock().waiting.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the second heavy request never queued"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            heavy.heavy_contended(),
            "another heavy request waits for its turn"
        );
        assert!(!light.heavy_contended());
        drop(heavy);
        let next = waiter.await.expect("join").expect("its turn");
        assert!(!next.heavy_contended(), "nobody waits any more");
    }

    #[tokio::test]
    async fn long_holds_make_a_caller_heavy_and_short_ones_light_again() {
        let gate = FairGate::new(4, 100, budget());
        let name = caller("c");
        {
            let mut permit = gate
                .enter(name.clone(), Duration::from_millis(50))
                .await
                .expect("free");
            permit.since -= HEAVY_AFTER * 10;
        }
        assert!(FairGate::is_heavy(&gate.lock(), "c"));
        for _ in 0..20 {
            drop(
                gate.enter(name.clone(), Duration::from_millis(50))
                    .await
                    .expect("free"),
            );
        }
        assert!(!FairGate::is_heavy(&gate.lock(), "c"));
    }

    #[test]
    fn the_rest_is_the_hold_times_the_idle_share_over_the_busy_one() {
        assert!((rest_per_hold(50) - 1.0).abs() < 1e-9);
        assert!((rest_per_hold(25) - 3.0).abs() < 1e-9);
        assert!(rest_per_hold(100).abs() < 1e-9, "100%: no rest");
        assert!((rest_per_hold(0) - 99.0).abs() < 1e-9, "clamped to 1%");
    }

    /// A heavy permit of `name` held for `held` (back-dated), then given back.
    async fn hold_heavy(gate: &Arc<FairGate>, name: &str, held: Duration) {
        let mut permit = gate
            .enter(caller(name), Duration::from_millis(10))
            .await
            .expect("the heavy lane is free");
        assert!(permit.heavy, "{name} is heavy");
        permit.since -= held;
    }

    #[tokio::test]
    async fn the_heavy_lane_rests_after_a_hold_while_light_requests_are_served() {
        let gate = FairGate::with_cpus(8, 2, 50, budget());
        make_heavy(&gate, "heavy-0");
        make_heavy(&gate, "heavy-1");
        let light = gate
            .enter(caller("light"), Duration::from_millis(10))
            .await
            .expect("free");
        let hold = Duration::from_millis(400);
        let released = Instant::now();
        hold_heavy(&gate, "heavy-0", hold).await;
        // Held 400 ms while a light request was served: at 50% the lane rests 400 ms.
        assert!(
            gate.enter(caller("heavy-1"), Duration::from_millis(50))
                .await
                .is_none(),
            "no heavy request starts during the rest"
        );
        assert!(
            gate.enter(caller("light-2"), Duration::from_millis(10))
                .await
                .is_some(),
            "light requests are served meanwhile"
        );
        drop(light);
        // A heavy waiter is let in when the rest ends, though no permit is released
        // then (else it would wait for its whole timeout and get nothing).
        let next = gate
            .enter(caller("heavy-1"), Duration::from_secs(30))
            .await
            .expect("let in after the rest");
        assert!(next.heavy);
        assert!(
            released.elapsed() >= hold,
            "not before the rest ended: {:?}",
            released.elapsed()
        );
    }

    #[tokio::test]
    async fn the_heavy_lane_does_not_rest_when_nobody_else_was_served() {
        let gate = FairGate::with_cpus(8, 2, 50, budget());
        make_heavy(&gate, "heavy-0");
        make_heavy(&gate, "heavy-1");
        hold_heavy(&gate, "heavy-0", Duration::from_secs(2)).await;
        assert!(
            gate.enter(caller("heavy-1"), Duration::from_millis(10))
                .await
                .is_some(),
            "no light request was served meanwhile: no rest"
        );
        // At 100% the lane never rests.
        let gate = FairGate::with_cpus(8, 2, 100, budget());
        make_heavy(&gate, "heavy-0");
        make_heavy(&gate, "heavy-1");
        let _light = gate
            .enter(caller("light"), Duration::from_millis(10))
            .await
            .expect("free");
        hold_heavy(&gate, "heavy-0", Duration::from_secs(2)).await;
        assert!(gate
            .enter(caller("heavy-1"), Duration::from_millis(10))
            .await
            .is_some());
    }
}
