//! Buffers the writers fill once per batch, kept for the next batch instead of
//! freed: the `COPY` data ([`copy::copy_rows`](super::copy)) and the links'
//! canonical forms (`chain::link`).
//!
//! Each is a few hundred KiB a batch. The collector returns freed pages to the
//! OS after a short delay (mimalloc's purge delay, 10 ms, see `src/main.rs`; it
//! was 0 when this was measured), so a fresh buffer per batch could fault in (and
//! zero) every one of its pages again, and freeing it cost an `madvise`: about
//! 2.5% of the collector's samples at full speed. A pool keeps at most `keep` buffers of at most `max_bytes` each, so
//! what it holds stays bounded (a buffer that grew past the bound, for a batch
//! of unusually large rows, is freed as before).

use std::sync::Mutex;

use bytes::BytesMut;

/// A buffer the pool can hold: its allocation and how to empty it.
pub(crate) trait Buffer: Default {
    /// Bytes allocated (as far as the buffer tells).
    fn allocated(&self) -> usize;
    /// Empties it, keeping its allocation.
    fn empty(&mut self);
}

impl Buffer for Vec<u8> {
    fn allocated(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
}

impl Buffer for BytesMut {
    fn allocated(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
}

/// At most `keep` emptied buffers of at most `max_bytes` each.
#[derive(Debug)]
pub(crate) struct BufferPool<B> {
    free: Mutex<Vec<B>>,
    keep: usize,
    max_bytes: usize,
}

impl<B: Buffer> BufferPool<B> {
    pub(crate) const fn new(keep: usize, max_bytes: usize) -> BufferPool<B> {
        BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
            max_bytes,
        }
    }

    /// An empty buffer: a kept one if there is one, else a new (unallocated) one.
    pub(crate) fn take(&self) -> B {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Keeps `buffer` (emptied) for a later [`take`](BufferPool::take), unless
    /// it holds no allocation, is larger than the bound or the pool is full.
    pub(crate) fn give(&self, mut buffer: B) {
        let allocated = buffer.allocated();
        if allocated == 0 || allocated > self.max_bytes {
            return;
        }
        buffer.empty();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(buffer);
        }
    }

    /// Buffers kept right now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The most bytes a kept buffer may hold.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_allocation() {
        let pool: BufferPool<Vec<u8>> = BufferPool::new(2, 1 << 20);
        let mut buffer = pool.take();
        assert_eq!(buffer.capacity(), 0);
        buffer.extend_from_slice(&[7; 1000]);
        let (at, capacity) = (buffer.as_ptr(), buffer.capacity());
        pool.give(buffer);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!((again.as_ptr(), again.capacity()), (at, capacity));
    }

    #[test]
    fn the_pool_holds_at_most_keep_buffers_within_the_bound() {
        let pool: BufferPool<Vec<u8>> = BufferPool::new(2, 4096);
        pool.give(Vec::new());
        assert_eq!(pool.kept(), 0, "nothing allocated: nothing to keep");
        pool.give(Vec::with_capacity(8192));
        assert_eq!(pool.kept(), 0, "over the bound: freed");
        for _ in 0..3 {
            pool.give(Vec::with_capacity(100));
        }
        assert_eq!(pool.kept(), 2);
        let _ = (pool.take(), pool.take());
        assert_eq!(pool.kept(), 0);
        assert_eq!(
            pool.take().capacity(),
            0,
            "an empty pool makes a new buffer"
        );
    }
}
