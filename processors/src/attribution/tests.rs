use super::*;
use std::mem::size_of;

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
fn identities_pack_and_unpack() {
    for identity in [
        who("alice"),
        Identity {
            user: None,
            tenant: Some("t-é".into()),
            session: Some("s".into()),
        },
        Identity {
            user: Some(String::new()),
            tenant: None,
            session: None,
        },
    ] {
        let packed = Packed::pack(&identity).expect("not empty");
        assert_eq!(packed.unpack(), identity);
        assert_eq!(packed.attributes(), identity.attributes());
    }
    assert_eq!(Packed::pack(&Identity::default()), None);
}

#[test]
fn entries_are_compact_and_the_queue_bounded() {
    assert!(size_of::<Entry>() <= 40, "{}", size_of::<Entry>());
    let cache = TraceCache::new(Duration::from_secs(60), 100);
    for n in 0..10_000u32 {
        let mut trace = [0; 16];
        trace[..4].copy_from_slice(&(n % 150).to_be_bytes());
        cache.learn(trace, &who("u"));
        let state = cache.lock();
        assert!(state.entries.len() <= 100);
        assert!(state.order.len() <= 201, "{}", state.order.len());
    }
    // Pending instants keep their nanoseconds; out of range, the earliest.
    let ts = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
    cache.mark_pending([200; 16], ts);
    assert_eq!(cache.learn([200; 16], &who("x")).map(|x| x.1), Some(ts));
    let far = DateTime::parse_from_rfc3339("2500-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    cache.mark_pending([201; 16], far);
    let since = cache.learn([201; 16], &who("x")).expect("pending").1;
    assert!(since < ts);
}

#[test]
fn tenant_scopes_keep_traces_apart() {
    let cache = TraceCache::new(Duration::from_secs(60), 10);
    let a = cache.scope(Some("tenant-a"));
    let b = cache.scope(Some("tenant-b"));
    assert_ne!(a, b);
    assert_eq!(cache.scope(Some("tenant-a")), a, "stable within a process");
    assert_eq!(cache.scope(None), TraceScope::UNBOUND);
    let trace = [5; 16];
    assert_eq!(a.trace(a.key(trace)), trace);
    assert_eq!(TraceScope::UNBOUND.key(trace), trace);
    // Tenant B's rows wait for their trace; tenant A brings an identity for the
    // same trace id: B's pending rows are not attributed, nor can A read it.
    cache.mark_pending(b.key(trace), Utc::now());
    assert_eq!(cache.learn(a.key(trace), &who("mallory")), None);
    assert_eq!(cache.lookup(&b.key(trace)), None);
    assert!(cache.lookup(&a.key(trace)).is_some());
}

#[test]
fn an_identity_is_shared_once_until_it_changes() {
    let cache = TraceCache::new(Duration::from_secs(60), 10);
    assert_eq!(cache.unshared(&[6; 16]), None, "unknown trace");
    cache.learn([6; 16], &who("alice"));
    let identity = cache.unshared(&[6; 16]).expect("not shared yet");
    assert_eq!(identity.user.as_deref(), Some("alice"));
    // A stale write (the identity changed meanwhile) does not count.
    cache.mark_shared(&[6; 16], &who("bob"));
    assert!(cache.unshared(&[6; 16]).is_some());
    cache.mark_shared(&[6; 16], &identity);
    assert_eq!(cache.unshared(&[6; 16]), None);
    // The same identity again, or a touch: still shared.
    cache.learn([6; 16], &who("alice"));
    cache.mark_pending([6; 16], Utc::now());
    assert_eq!(cache.unshared(&[6; 16]), None);
    assert!(cache.lookup(&[6; 16]).is_some(), "the window still counts");
    // A new field: shared again.
    let session = Identity {
        session: Some("s1".into()),
        ..Default::default()
    };
    cache.learn([6; 16], &session);
    let merged = cache.unshared(&[6; 16]).expect("changed");
    assert_eq!(merged.session.as_deref(), Some("s1"));
    // A session alone is not worth sharing (it attributes nothing).
    cache.learn([7; 16], &session);
    assert_eq!(cache.unshared(&[7; 16]), None);
}

#[test]
fn covered_spans_are_remembered() {
    let cache = TraceCache::new(Duration::from_secs(60), 3);
    assert!(!cache.is_covered(&[1; 16], &[9; 8]));
    assert!(cache.cover([1; 16], [9; 8]).is_empty());
    assert!(cache.is_covered(&[1; 16], &[9; 8]));
    assert!(!cache.is_covered(&[2; 16], &[9; 8]));
}

#[test]
fn a_cover_climbs_to_a_counted_agent_and_uncounts_it_once() {
    let cache = TraceCache::new(Duration::from_secs(60), 3);
    let row = (Utc::now(), uuid::Uuid::new_v4());
    // Agent 1 counted; links learned after: 3 → 2 → 1.
    cache.link(&[1; 16], [2; 8], [1; 8]);
    cache.count_agent([1; 16], [1; 8], row);
    cache.link(&[1; 16], [2; 8], [1; 8]);
    cache.link(&[1; 16], [3; 8], [2; 8]);
    assert!(
        cache.cover([1; 16], [4; 8]).is_empty(),
        "not below the agent"
    );
    assert_eq!(cache.cover([1; 16], [3; 8]), vec![([1; 8], row)]);
    assert!(cache.is_covered(&[1; 16], &[1; 8]));
    assert!(cache.cover([1; 16], [3; 8]).is_empty(), "once");
}

#[test]
fn only_a_missing_field_changes_a_learned_identity() {
    let cache = TraceCache::new(Duration::from_secs(60), 10);
    let trace = [3; 16];
    let first = Identity {
        user: Some("alice".into()),
        tenant: None,
        session: None,
    };
    cache.learn(trace, &first);
    cache.mark_shared(&trace, &first);
    // Nothing new (the same user, another user, no field): still shared.
    for same in [first.clone(), who("bob"), Identity::default()] {
        let same = Identity {
            tenant: None,
            ..same
        };
        assert_eq!(cache.learn(trace, &same), None);
        assert_eq!(cache.unshared(&trace), None, "{same:?}");
    }
    // A field the entry lacks: merged in, to be shared again.
    assert_eq!(cache.learn(trace, &who("bob")), None);
    let merged = Identity {
        user: Some("alice".into()),
        tenant: Some("t".into()),
        session: None,
    };
    assert_eq!(cache.unshared(&trace), Some(merged.clone()));
    assert_eq!(cache.lookup(&trace), Some(merged));
    let with_session = Identity {
        session: Some("s".into()),
        ..Identity::default()
    };
    cache.learn(trace, &with_session);
    assert_eq!(
        cache.lookup(&trace).and_then(|i| i.session),
        Some("s".into())
    );
}

#[test]
fn learning_a_request_at_once_answers_as_one_by_one() {
    let one_by_one = TraceCache::new(Duration::from_secs(60), 3);
    let at_once = TraceCache::new(Duration::from_secs(60), 3);
    let ts = Utc::now();
    for cache in [&one_by_one, &at_once] {
        cache.mark_pending([1; 16], ts);
        cache.mark_pending([4; 16], ts);
    }
    let session = Identity {
        session: Some("s".into()),
        ..Identity::default()
    };
    let items = [
        ([1; 16], who("alice")),
        ([1; 16], who("bob")),
        ([2; 16], Identity::default()),
        ([2; 16], session),
        ([3; 16], who("carol")),
        // A fourth trace: the oldest entry goes (at most 3).
        ([4; 16], who("dave")),
        ([2; 16], who("erin")),
    ];
    let expected: Vec<_> = items
        .iter()
        .filter(|(_, identity)| *identity != Identity::default())
        .map(|(trace, identity)| (*trace, one_by_one.learn(*trace, identity)))
        .collect();
    let mut answers = Vec::new();
    at_once.learn_all(items.iter().map(|(t, i)| (*t, i)), |trace, _, answer| {
        answers.push((trace, answer))
    });
    assert_eq!(answers, expected);
    // Trace 1 was pending; trace 4's pending entry was evicted before dave came.
    let answered: Vec<_> = expected
        .iter()
        .filter(|(_, a)| a.is_some())
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(answered, [[1; 16]]);
    for trace in [[1; 16], [2; 16], [3; 16], [4; 16]] {
        assert_eq!(
            at_once.lookup(&trace),
            one_by_one.lookup(&trace),
            "{trace:?}"
        );
    }
    assert_eq!(at_once.len(), one_by_one.len());

    // More than one chunk: the same answers, in order.
    let one_by_one = TraceCache::new(Duration::from_secs(60), 100);
    let at_once = TraceCache::new(Duration::from_secs(60), 100);
    let items: Vec<(TraceId, Identity)> = (0..3 * LEARN_CHUNK)
        .map(|n| ([(n % 150) as u8; 16], who(&format!("u{n}"))))
        .collect();
    for cache in [&one_by_one, &at_once] {
        for n in (0..150).step_by(7) {
            cache.mark_pending([n as u8; 16], ts);
        }
    }
    let expected: Vec<_> = items
        .iter()
        .map(|(trace, identity)| (*trace, one_by_one.learn(*trace, identity)))
        .collect();
    let mut answers = Vec::new();
    at_once.learn_all(items.iter().map(|(t, i)| (*t, i)), |trace, _, answer| {
        answers.push((trace, answer))
    });
    assert_eq!(answers.len(), 3 * LEARN_CHUNK);
    assert_eq!(answers, expected);
    assert_eq!(at_once.len(), one_by_one.len());
}
