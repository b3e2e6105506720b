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
