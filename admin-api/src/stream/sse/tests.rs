use super::*;

#[test]
fn frames_are_what_axum_would_write() {
    let item = serde_json::json!({"seq": 7, "text": "a\nb\r\"c\""});
    let json = serde_json::to_string(&item).expect("encodes");
    let mut builder = FramesBuilder::with_capacity(2);
    builder.push(7, "activity", &item).expect("encodes");
    builder.push(8, "activity", &item).expect("encodes");
    let frames = builder.finish();
    // What `Event::default().id("7").event("activity").data(json)` writes.
    let one = frames.chunk(0, 1);
    assert_eq!(one, format!("id: 7\nevent: activity\ndata: {json}\n\n"));
    assert_eq!(frames.chunk(0, 2).len(), 2 * one.len());
    assert_eq!((frames.seq(1), frames.last_seq()), (8, Some(8)));
    assert_eq!(comment("x\ny"), ": x y\n\n");
}

#[tokio::test]
async fn a_callers_feeds_share_one_byte_budget_and_an_unread_one_is_reset() {
    let mut builder = FramesBuilder::with_capacity(64);
    for seq in 1..=64 {
        builder
            .push(seq, "activity", &"x".repeat(100))
            .expect("encodes");
    }
    let frames = builder.finish();
    let one = frames.chunk(0, 1).len();
    // Room for 10 events of this caller, over all its feeds.
    let budget = CallerBuffer::new(10 * one);
    // Each feed's own buffer would take 64 events.
    let (mut unread, unread_outlet) = client_buffer(64, Table::Activity, budget.clone());
    let (mut other, other_outlet) = client_buffer(64, Table::Activity, budget.clone());
    unread
        .deliver(&frames, 0, 8, 0)
        .await
        .expect("within the budget");
    assert_eq!(budget.available(), 2 * one);
    // The caller's second feed finds 2 events of room, and nobody takes any:
    // it is reset after the stall timeout instead of growing the caller's memory.
    let started = Instant::now();
    assert!(matches!(
        other.deliver(&frames, 8, 16, 8).await,
        Err(Stop::Reset)
    ));
    assert!(started.elapsed() >= STALL_TIMEOUT);
    assert_eq!(
        budget.available(),
        2 * one,
        "the reset feed queued nothing more"
    );
    // The budget comes back when the unread responses are dropped (the
    // clients leave).
    drop(other_outlet);
    drop(unread_outlet);
    assert_eq!(budget.available(), 10 * one);
    // And a single event larger than the whole budget still goes through, alone.
    let small = CallerBuffer::new(one / 2);
    let (mut feed, outlet) = client_buffer(64, Table::Activity, small.clone());
    feed.deliver(&frames, 0, 1, 0)
        .await
        .expect("one event always fits");
    assert_eq!(small.available(), 0);
    let mut body = FeedBody::new(
        comment("first"),
        outlet,
        Duration::from_secs(3600),
        std::future::pending(),
    );
    use futures::StreamExt;
    let _ = body.next().await;
    assert_eq!(
        body.next().await.and_then(Result::ok),
        Some(frames.chunk(0, 1))
    );
    assert_eq!(small.available(), one / 2, "given back when sent");
}

#[tokio::test]
async fn room_is_given_back_as_the_body_takes_chunks() {
    let (mut outbox, outlet) = client_buffer(4, Table::Activity, CallerBuffer::new(1 << 20));
    let mut builder = FramesBuilder::with_capacity(8);
    for seq in 1..=8 {
        builder.push(seq, "activity", &seq).expect("encodes");
    }
    let frames = builder.finish();
    // A heartbeat far beyond the test, so every chunk read is a buffered one.
    let mut body = FeedBody::new(
        comment("first"),
        outlet,
        Duration::from_secs(3600),
        std::future::pending(),
    );
    outbox.deliver(&frames, 0, 4, 0).await.expect("room for 4");
    assert_eq!(outbox.room.free.available_permits(), 0);
    use futures::StreamExt;
    assert_eq!(
        body.next().await.and_then(Result::ok),
        Some(comment("first"))
    );
    let taken = body.next().await.and_then(Result::ok).expect("a chunk");
    assert_eq!(taken, frames.chunk(0, 4), "two chunks of 2, merged");
    assert_eq!(outbox.room.free.available_permits(), 4);
    drop(body);
    assert!(matches!(
        outbox.deliver(&frames, 4, 8, 4).await,
        Err(Stop::Gone)
    ));
}
