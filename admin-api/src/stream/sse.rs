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
//!
//! The bytes buffered are also bounded per caller, whatever the number and size
//! of its feeds' events: all the live feeds of one caller share one
//! [`CallerBuffer`] of [`STREAM_BUFFER_BYTES`] per feed it may open
//! ([`CALLER_BUFFER_BYTES`] at the default limits). A chunk takes its length from it
//! before it is queued and gives it back when the connection takes the chunk
//! (or the response is dropped), so a caller's unread feeds hold at most that
//! much queued event data between them; a feed that cannot queue for
//! [`STALL_TIMEOUT`] is reset like one whose own buffer stayed full.

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
use super::reader::Stop;
use super::STALL_TIMEOUT;

/// Bytes of queued events one caller's live feeds may hold at once, per feed
/// the caller may open (`admin_api.limits.max_streams_per_caller`).
pub(crate) const STREAM_BUFFER_BYTES: usize = 256 * 1024;

/// Bytes of queued events all the live feeds of one caller may hold at once,
/// at the default `max_streams_per_caller` of 16 (4 MiB).
pub(crate) const CALLER_BUFFER_BYTES: usize = 16 * STREAM_BUFFER_BYTES;

/// The queued-bytes budget one caller's live feeds share (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct CallerBuffer {
    bytes: Arc<Semaphore>,
    capacity: usize,
}

impl CallerBuffer {
    /// A budget of `capacity` bytes (at least 1).
    pub(crate) fn new(capacity: usize) -> CallerBuffer {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        CallerBuffer {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Whether `other` is the same budget (shared, not an equal one).
    #[cfg(test)]
    pub(crate) fn is_shared_with(&self, other: &CallerBuffer) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }

    /// Bytes of the budget not held by a queued chunk.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// What a chunk of `len` bytes takes from the budget: its length, at most
    /// the whole budget (a single larger event still gets through, alone).
    fn cost(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.capacity)).unwrap_or(u32::MAX)
    }
}

tokio::task_local! {
    /// The budget of the caller a live-feed request is counted under (set by
    /// [`crate::limits::enforce`]); a feed opened outside it gets its own.
    pub(crate) static CALLER_BUFFER: CallerBuffer;
}

/// A queued chunk: its bytes, its events, and what it took from the caller's budget.
#[derive(Debug)]
struct Queued {
    chunk: Bytes,
    events: usize,
    cost: u32,
}

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
    /// The bytes the caller's feeds may still queue (shared by its feeds).
    caller: CallerBuffer,
}

/// The reader's side of a client's buffer.
#[derive(Debug)]
pub(crate) struct Outbox {
    items: mpsc::UnboundedSender<Queued>,
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
    items: mpsc::UnboundedReceiver<Queued>,
    room: Arc<Room>,
    reset: Option<oneshot::Receiver<Bytes>>,
}

impl Drop for Outlet {
    fn drop(&mut self) {
        // A reader waiting for room learns that the client is gone.
        self.room.free.close();
        // What was never sent gives its bytes back to the caller's budget.
        self.items.close();
        while let Ok(queued) = self.items.try_recv() {
            self.room.caller.bytes.add_permits(queued.cost as usize);
        }
    }
}

/// A buffer of `capacity` events between a client's reader and its response,
/// its bytes taken from `caller`'s budget.
pub(crate) fn client_buffer(
    capacity: usize,
    table: Table,
    caller: CallerBuffer,
) -> (Outbox, Outlet) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
    let (items, receiver) = mpsc::unbounded_channel();
    let (reset, reset_receiver) = oneshot::channel();
    let room = Arc::new(Room {
        free: Semaphore::new(capacity),
        taken: AtomicU64::new(0),
        caller,
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

    /// Resets the client: its buffer (or its caller's) stayed full.
    fn reset_stalled(&mut self, last_seq: i64, what: &str) -> Stop {
        tracing::info!(
            table = self.table.name(),
            last_seq,
            "live feed: {what} stayed full; resetting the client"
        );
        if let Some(reset) = self.reset.take() {
            let _ = reset.send(reset_event());
        }
        Stop::Reset
    }

    async fn send(&mut self, chunk: Bytes, events: usize, last_seq: i64) -> Result<(), Stop> {
        // `events` <= max_chunk <= MAX_CHUNK_EVENTS: fits in u32.
        let wanted = u32::try_from(events).unwrap_or(u32::MAX);
        let room = self.room.clone();
        let permit = match room.free.try_acquire_many(wanted) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(Stop::Gone),
            Err(TryAcquireError::NoPermits) => loop {
                let taken = room.taken.load(Ordering::Acquire);
                match tokio::time::timeout(STALL_TIMEOUT, room.free.acquire_many(wanted)).await {
                    Ok(Ok(permit)) => break permit,
                    Ok(Err(_)) => return Err(Stop::Gone),
                    // The client took something meanwhile: slow, not stalled.
                    Err(_) if room.taken.load(Ordering::Acquire) != taken => continue,
                    Err(_) => return Err(self.reset_stalled(last_seq, "client buffer")),
                }
            },
        };
        // Then the chunk's bytes from the caller's budget, shared by its feeds.
        let cost = room.caller.cost(chunk.len());
        let bytes = room.caller.bytes.clone();
        let bytes = match bytes.try_acquire_many(cost) {
            Ok(bytes) => bytes,
            Err(_) => loop {
                let taken = room.taken.load(Ordering::Acquire);
                let waited = tokio::select! {
                    waited = tokio::time::timeout(STALL_TIMEOUT, bytes.acquire_many(cost)) => waited,
                    () = self.items.closed() => return Err(Stop::Gone),
                };
                match waited {
                    Ok(Ok(bytes)) => break bytes,
                    // The budget is never closed; as if gone.
                    Ok(Err(_)) => return Err(Stop::Gone),
                    // This client took something meanwhile: slow, not stalled.
                    Err(_) if room.taken.load(Ordering::Acquire) != taken => continue,
                    Err(_) => return Err(self.reset_stalled(last_seq, "the caller's feed buffer")),
                }
            },
        };
        permit.forget();
        bytes.forget();
        self.items
            .send(Queued {
                chunk,
                events,
                cost,
            })
            .map_err(|error| {
                // The response is gone: give the bytes back.
                self.room.caller.bytes.add_permits(error.0.cost as usize);
                Stop::Gone
            })
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

    /// The first queued chunk, merged with the small ones behind it; gives
    /// their room and bytes back.
    fn take(&mut self, queued: Queued) -> Bytes {
        let Queued {
            chunk,
            mut events,
            cost,
        } = queued;
        let mut cost = cost as usize;
        let chunk = if chunk.len() < MERGE_BELOW {
            let mut merged: Option<Vec<u8>> = None;
            while merged.as_ref().map_or(chunk.len(), Vec::len) < MERGE_UP_TO {
                let Ok(more) = self.outlet.items.try_recv() else {
                    break;
                };
                let buffer = merged.get_or_insert_with(|| {
                    let mut buffer =
                        Vec::with_capacity(MERGE_UP_TO.max(chunk.len() + more.chunk.len()));
                    buffer.extend_from_slice(&chunk);
                    buffer
                });
                buffer.extend_from_slice(&more.chunk);
                events += more.events;
                cost += more.cost as usize;
            }
            merged.map_or(chunk, Bytes::from)
        } else {
            chunk
        };
        self.outlet.room.free.add_permits(events);
        self.outlet.room.caller.bytes.add_permits(cost);
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
            Poll::Ready(Some(queued)) => {
                let chunk = this.take(queued);
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
mod tests;
