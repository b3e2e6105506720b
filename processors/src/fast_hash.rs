//! A fast hasher for the hot path's small keys (attribute names, trace ids),
//! in place of the standard library's SipHash.
//!
//! Folded multiplication (the construction of `foldhash`): each 16-byte block
//! is mixed into the state with one 64×64→128-bit multiply whose halves are
//! XORed. The state starts from a per-process random seed, so clients cannot
//! precompute keys that collide (trace ids and attribute names come from
//! clients). Not a cryptographic hash; written here to keep the dependency set
//! lean.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// The golden-ratio constant and a second odd constant (from `foldhash`).
const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xa409_3822_299f_31d0;

#[inline(always)]
fn fold(x: u64, y: u64) -> u64 {
    let full = u128::from(x) * u128::from(y);
    (full as u64) ^ ((full >> 64) as u64)
}

/// The per-process seed (random; a fixed fallback when the OS has no randomness).
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let mut bytes = [0u8; 8];
        match getrandom::fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => K1 ^ (std::process::id() as u64).rotate_left(32),
        }
    })
}

/// Builds [`FastHasher`]s from the process seed; use as a map's `S` parameter.
#[derive(Debug, Clone, Copy)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        FastState {
            seed: process_seed(),
        }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            state: self.seed,
            seed: self.seed,
        }
    }
}

/// The hasher of [`FastState`].
#[derive(Debug, Clone)]
pub struct FastHasher {
    state: u64,
    seed: u64,
}

impl FastHasher {
    #[inline(always)]
    fn mix(&mut self, a: u64, b: u64) {
        self.state = fold(self.state ^ a ^ K0, b ^ self.seed ^ K1);
    }
}

#[inline(always)]
fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let mut rest = bytes;
        while rest.len() > 16 {
            self.mix(read_u64(rest), read_u64(&rest[8..]));
            rest = &rest[16..];
        }
        // The last 1..=16 bytes as two (possibly overlapping) words, the
        // length folded in so that prefixes differ.
        let (a, b) = match rest.len() {
            0 => (0, 0),
            1..=3 => {
                let n = rest.len();
                let a = u64::from(rest[0])
                    | (u64::from(rest[n / 2]) << 8)
                    | (u64::from(rest[n - 1]) << 16);
                (a, 0)
            }
            4..=7 => {
                let mut lo = [0u8; 4];
                let mut hi = [0u8; 4];
                lo.copy_from_slice(&rest[..4]);
                hi.copy_from_slice(&rest[rest.len() - 4..]);
                (
                    u64::from(u32::from_le_bytes(lo)),
                    u64::from(u32::from_le_bytes(hi)),
                )
            }
            n => (read_u64(rest), read_u64(&rest[n - 8..])),
        };
        self.mix(a ^ len.rotate_left(32), b ^ len);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i), 0xff);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i), 4);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i, 8);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64, 8);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.state, self.seed ^ K0)
    }
}

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn hash(bytes: &[u8]) -> u64 {
        let mut h = FastState::default().build_hasher();
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn equal_inputs_hash_equal_and_lengths_differ() {
        assert_eq!(
            hash(b"gen_ai.usage.input_tokens"),
            hash(b"gen_ai.usage.input_tokens")
        );
        let mut seen = HashSet::new();
        // Every prefix of a key, and zero-filled inputs of every length: all distinct.
        let key = b"gen_ai.usage.input_tokens.and.more.bytes.than.thirty.two";
        for n in 0..=key.len() {
            assert!(seen.insert(hash(&key[..n])), "prefix {n}");
        }
        for n in 1..=40 {
            assert!(seen.insert(hash(&vec![0u8; n])), "zeros {n}");
        }
    }

    #[test]
    fn map_works_with_trace_ids() {
        let mut map: FastMap<[u8; 16], usize> = FastMap::default();
        for i in 0..10_000u32 {
            let mut id = [0u8; 16];
            id[12..].copy_from_slice(&i.to_be_bytes());
            map.insert(id, i as usize);
        }
        assert_eq!(map.len(), 10_000);
        let mut id = [0u8; 16];
        id[12..].copy_from_slice(&777u32.to_be_bytes());
        assert_eq!(map.get(&id), Some(&777));
    }
}
