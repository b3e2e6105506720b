//! Encoded live-feed events and the path from a client's reader task to its
//! HTTP response.
//!
//! Events are encoded once, back to back, into one shared buffer per page
//! ([`Frames`]): `id: <seq>\nevent: <name>\ndata: <json>\n\n`, exactly what
//! axum's `Event` writes. A client is handed consecutive events as one
//! [`Bytes`] (a slice of the shared buffer when it takes a large part of it,
//! so fan-out costs a reference count per client, else a copy, so a client
//! never pins much more memory than it was sent).
//!
//! The client's buffer ([`client_buffer`]) holds at most `sse_client_buffer`
//! events: the reader takes room for a whole chunk of events at once (one
//! semaphore operation per chunk, no timer while there is room) and the
//! response body gives the room back as it hands chunks to the connection.
//! A reader that finds no room for [`STALL_TIMEOUT`] while the client took
//! nothing sends `event: reset` (delivered ahead of what is still buffered)
//! and stops.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::{mpsc, oneshot, Semaphore, TryAcquireError};
use tokio::time::{Instant, Sleep};

use super::hub::Table;
use super::{Stop, STALL_TIMEOUT};

/// Events encoded back to back in `seq` order.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    bytes: Bytes,
    /// Where each event ends in `bytes` (event `i` is `ends[i - 1]..ends[i]`).
    ends: Vec<usize>,
    /// Each event's `seq`.
    seqs: Vec<i64>,
}

impl Frames {
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    pub(crate) fn seq(&self, index: usize) -> i64 {
        self.seqs[index]
    }

    pub(crate) fn last_seq(&self) -> Option<i64> {
        self.seqs.last().copied()
    }

    fn start(&self, index: usize) -> usize {
        match index {
            0 => 0,
            i => self.ends[i - 1],
        }
    }

    /// Events `from..to` as one buffer: a slice of the shared one when it is
    /// at least half of it, else a copy.
    fn chunk(&self, from: usize, to: usize) -> Bytes {
        let (start, end) = (self.start(from), self.ends[to - 1]);
        if (end - start) * 2 >= self.bytes.len() {
            self.bytes.slice(start..end)
        } else {
            Bytes::copy_from_slice(&self.bytes[start..end])
        }
    }
}

/// Builds [`Frames`].
#[derive(Debug, Default)]
pub(crate) struct FramesBuilder {
    buffer: Vec<u8>,
    ends: Vec<usize>,
    seqs: Vec<i64>,
}

impl FramesBuilder {
    pub(crate) fn with_capacity(events: usize) -> FramesBuilder {
        FramesBuilder {
            buffer: Vec::with_capacity(events * 512),
            ends: Vec::with_capacity(events),
            seqs: Vec::with_capacity(events),
        }
    }

    /// Appends `id: <seq>\nevent: <name>\ndata: <item as JSON>\n\n`. JSON text
    /// never holds a raw line break (serde_json escapes them), so the data is
    /// one `data:` line, as axum's `Event::data` would write it.
    pub(crate) fn push<T: serde::Serialize>(
        &mut self,
        seq: i64,
        name: &str,
        item: &T,
    ) -> Result<(), serde_json::Error> {
        let start = self.buffer.len();
        // Writing into a Vec cannot fail.
        let _ = write!(self.buffer, "id: {seq}\nevent: {name}\ndata: ");
        if let Err(error) = serde_json::to_writer(&mut self.buffer, item) {
            self.buffer.truncate(start);
            return Err(error);
        }
        self.buffer.extend_from_slice(b"\n\n");
        self.ends.push(self.buffer.len());
        self.seqs.push(seq);
        Ok(())
    }

    pub(crate) fn finish(self) -> Frames {
        Frames {
            bytes: Bytes::from(self.buffer),
            ends: self.ends,
            seqs: self.seqs,
        }
    }
}

/// A comment line (`: <text>\n\n`); `text` must hold no line break.
pub(crate) fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace(['\r', '\n'], " ")))
}

/// The `event: reset` sent to a client whose buffer stayed full.
fn reset_event() -> Bytes {
    let data = serde_json::json!({
        "reason": "client too slow: its buffer stayed full; reconnect with Last-Event-ID",
    });
    Bytes::from(format!("event: reset\ndata: {data}\n\n"))
}

const HEARTBEAT: &[u8] = b": heartbeat\n\n";
/// Chunks smaller than this are merged with those queued behind them, up to
/// [`MERGE_UP_TO`] bytes, into one write.
const MERGE_BELOW: usize = 16 * 1024;
const MERGE_UP_TO: usize = 64 * 1024;
/// Most events handed over as one chunk.
const MAX_CHUNK_EVENTS: usize = 4096;

/// The room of a client's buffer.
#[derive(Debug)]
struct Room {
    /// Free event slots; closed when the response is dropped.
    free: Semaphore,
    /// Events the response took so far (progress, for stall detection).
    taken: AtomicU64,
}

/// The reader's side of a client's buffer.
#[derive(Debug)]
pub(crate) struct Outbox {
    items: mpsc::UnboundedSender<(Bytes, usize)>,
    room: Arc<Room>,
    reset: Option<oneshot::Sender<Bytes>>,
    /// Most events per chunk: half the buffer, so the reader can fill one
    /// half while the connection writes the other.
    max_chunk: usize,
    table: Table,
}

/// The response's side of a client's buffer.
#[derive(Debug)]
pub(crate) struct Outlet {
    items: mpsc::UnboundedReceiver<(Bytes, usize)>,
    room: Arc<Room>,
    reset: Option<oneshot::Receiver<Bytes>>,
}

impl Drop for Outlet {
    fn drop(&mut self) {
        // A reader waiting for room learns that the client is gone.
        self.room.free.close();
    }
}

/// A buffer of `capacity` events between a client's reader and its response.
pub(crate) fn client_buffer(capacity: usize, table: Table) -> (Outbox, Outlet) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
    let (items, receiver) = mpsc::unbounded_channel();
    let (reset, reset_receiver) = oneshot::channel();
    let room = Arc::new(Room {
        free: Semaphore::new(capacity),
        taken: AtomicU64::new(0),
    });
    (
        Outbox {
            items,
            room: room.clone(),
            reset: Some(reset),
            max_chunk: (capacity / 2).clamp(1, MAX_CHUNK_EVENTS),
            table,
        },
        Outlet {
            items: receiver,
            room,
            reset: Some(reset_receiver),
        },
    )
}

impl Outbox {
    /// Resolves when the client is gone (its response was dropped).
    pub(crate) async fn closed(&self) {
        self.items.closed().await
    }

    /// Puts events `from..to` of `frames` into the buffer, in chunks of at
    /// most half the buffer, waiting for room; on a stall, resets the client.
    /// `after` is the client's position before `from` (for the log).
    pub(crate) async fn deliver(
        &mut self,
        frames: &Frames,
        from: usize,
        to: usize,
        after: i64,
    ) -> Result<(), Stop> {
        let mut from = from;
        while from < to {
            let end = to.min(from + self.max_chunk);
            let last_seq = match from {
                0 => after,
                i => frames.seq(i - 1).max(after),
            };
            self.send(frames.chunk(from, end), end - from, last_seq)
                .await?;
            from = end;
        }
        Ok(())
    }

    /// Resets the client now (`event: reset`, ahead of what is still buffered):
    /// it fell behind what the shared tail keeps while following it live.
    pub(crate) fn reset_behind(&mut self, last_seq: i64) -> Stop {
        tracing::info!(
            table = self.table.name(),
            last_seq,
            "live feed: client fell behind the live window; resetting the client"
        );
        if let Some(reset) = self.reset.take() {
            let _ = reset.send(reset_event());
        }
        Stop::Reset
    }

    /// Ends the client's feed with `event` (sent ahead of what is still
    /// buffered, like a reset); a no-op once the client was reset or ended.
    pub(crate) fn end_with(&mut self, event: Bytes) {
        if let Some(end) = self.reset.take() {
            let _ = end.send(event);
        }
    }

    async fn send(&mut self, chunk: Bytes, events: usize, last_seq: i64) -> Result<(), Stop> {
        // `events` <= max_chunk <= MAX_CHUNK_EVENTS: fits in u32.
        let wanted = u32::try_from(events).unwrap_or(u32::MAX);
        let permit = match self.room.free.try_acquire_many(wanted) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(Stop::Gone),
            Err(TryAcquireError::NoPermits) => loop {
                let taken = self.room.taken.load(Ordering::Acquire);
                match tokio::time::timeout(STALL_TIMEOUT, self.room.free.acquire_many(wanted)).await
                {
                    Ok(Ok(permit)) => break permit,
                    Ok(Err(_)) => return Err(Stop::Gone),
                    // The client took something meanwhile: slow, not stalled.
                    Err(_) if self.room.taken.load(Ordering::Acquire) != taken => continue,
                    Err(_) => {
                        tracing::info!(
                            table = self.table.name(),
                            last_seq,
                            "live feed: client buffer stayed full; resetting the client"
                        );
                        if let Some(reset) = self.reset.take() {
                            let _ = reset.send(reset_event());
                        }
                        return Err(Stop::Reset);
                    }
                }
            },
        };
        permit.forget();
        self.items.send((chunk, events)).map_err(|_| Stop::Gone)
    }
}

/// The response body of a feed: a first comment, then the buffered chunks,
/// a heartbeat comment after `heartbeat` without anything sent; a reset (if
/// one comes) goes ahead of what is still buffered and ends the body, as does
/// the server's shutdown (`closed`).
struct FeedBody {
    first: Option<Bytes>,
    outlet: Outlet,
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    heartbeat: Duration,
    /// Fires at the latest `last_sent + heartbeat` (moved lazily).
    timer: Pin<Box<Sleep>>,
    last_sent: Instant,
    done: bool,
}

impl FeedBody {
    /// A body that sends `first`, then what `outlet` receives, with a heartbeat
    /// comment after `heartbeat` of silence, until `closed` resolves.
    fn new(
        first: Bytes,
        outlet: Outlet,
        heartbeat: Duration,
        closed: impl Future<Output = ()> + Send + 'static,
    ) -> FeedBody {
        let now = Instant::now();
        FeedBody {
            first: Some(first),
            outlet,
            closed: Box::pin(closed),
            heartbeat,
            timer: Box::pin(tokio::time::sleep_until(now + heartbeat)),
            last_sent: now,
            done: false,
        }
    }

    fn sent(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.last_sent = Instant::now();
        Poll::Ready(Some(Ok(chunk)))
    }

    /// The first queued chunk, merged with the small ones behind it.
    fn take(&mut self, chunk: Bytes, events: usize) -> Bytes {
        let mut events = events;
        let chunk = if chunk.len() < MERGE_BELOW {
            let mut merged: Option<Vec<u8>> = None;
            while merged.as_ref().map_or(chunk.len(), Vec::len) < MERGE_UP_TO {
                let Ok((more, n)) = self.outlet.items.try_recv() else {
                    break;
                };
                let buffer = merged.get_or_insert_with(|| {
                    let mut buffer = Vec::with_capacity(MERGE_UP_TO.max(chunk.len() + more.len()));
                    buffer.extend_from_slice(&chunk);
                    buffer
                });
                buffer.extend_from_slice(&more);
                events += n;
            }
            merged.map_or(chunk, Bytes::from)
        } else {
            chunk
        };
        self.outlet.room.free.add_permits(events);
        self.outlet
            .room
            .taken
            .fetch_add(events as u64, Ordering::Release);
        chunk
    }
}

impl Stream for FeedBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.closed.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            return this.sent(first);
        }
        if let Some(reset) = this.outlet.reset.as_mut() {
            match Pin::new(reset).poll(cx) {
                Poll::Ready(Ok(event)) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(event)));
                }
                // The reader ended without a reset: drain what it left.
                Poll::Ready(Err(_)) => this.outlet.reset = None,
                Poll::Pending => {}
            }
        }
        match this.outlet.items.poll_recv(cx) {
            Poll::Ready(Some((chunk, events))) => {
                let chunk = this.take(chunk, events);
                return this.sent(chunk);
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.last_sent + this.heartbeat;
            if Instant::now() >= due {
                let next = Instant::now() + this.heartbeat;
                this.timer.as_mut().reset(next);
                return this.sent(Bytes::from_static(HEARTBEAT));
            }
            // Something was sent since the timer was set: move it.
            this.timer.as_mut().reset(due);
        }
    }
}

/// The `text/event-stream` response of a feed (the headers axum's `Sse`
/// sets, and no proxy buffering).
pub(crate) fn feed_response(
    first: Bytes,
    outlet: Outlet,
    heartbeat: Duration,
    closed: impl Future<Output = ()> + Send + 'static,
) -> Response {
    let body = FeedBody::new(first, outlet, heartbeat, closed);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
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
    async fn room_is_given_back_as_the_body_takes_chunks() {
        let (mut outbox, outlet) = client_buffer(4, Table::Activity);
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
}
