//! Answers' rollup parts kept in memory per rollup version.
//!
//! The rollups change only in transactions that move their watermark or bump
//! their raw table's change generation (migrations 0027 and 0031), so a value
//! read from them in a snapshot of version `(watermark, generation)` is the
//! value every snapshot of that version reads. An answer over every tenant can
//! then read its rollup part once per version (per fold, typically once a
//! minute) and only the unfolded tail at each request; so can the answers
//! about one tenant (the key holds the tenant).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;

/// How many windows and versions a [`RollupMemo`] keeps (the oldest is
/// forgotten first).
pub(crate) const MEMO_ENTRIES: usize = 16;

/// What a memoized value was read for: a tenant (or every tenant), a window
/// of UTC days and the version of the rollups in the reading snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemoKey {
    /// The tenant (`None`: every tenant).
    pub tenant: Option<String>,
    /// First day of the window.
    pub from: NaiveDate,
    /// Day after the window.
    pub to: NaiveDate,
    /// The rollup watermark (`rollup_watermarks.last_seq`).
    pub watermark: i64,
    /// The raw table's change generation (`tally_tail_generations`).
    pub generation: i64,
}

/// Values read from the rollups, per [`MemoKey`].
pub(crate) struct RollupMemo<T> {
    entries: Mutex<VecDeque<(MemoKey, Arc<T>)>>,
}

impl<T> Default for RollupMemo<T> {
    fn default() -> Self {
        RollupMemo {
            entries: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T> RollupMemo<T> {
    /// The value kept for `key`, if any.
    pub(crate) fn get(&self, key: &MemoKey) -> Option<Arc<T>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| Arc::clone(v))
    }

    /// Keeps `value` for `key`, forgetting the values of older versions and,
    /// beyond [`MEMO_ENTRIES`], the oldest one.
    pub(crate) fn put(&self, key: MemoKey, value: Arc<T>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _)| {
            k != &key && k.watermark >= key.watermark && k.generation >= key.generation
        });
        if entries.len() >= MEMO_ENTRIES {
            entries.pop_front();
        }
        entries.push_back((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(from: u32, watermark: i64, generation: i64) -> MemoKey {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap_or_default();
        MemoKey {
            tenant: None,
            from: day(from),
            to: day(from + 7),
            watermark,
            generation,
        }
    }

    #[test]
    fn a_value_is_found_only_for_its_window_and_version() {
        let memo = RollupMemo::default();
        memo.put(key(1, 10, 3), Arc::new("a"));
        assert_eq!(memo.get(&key(1, 10, 3)).as_deref(), Some(&"a"));
        assert!(memo.get(&key(2, 10, 3)).is_none(), "another window");
        assert!(memo.get(&key(1, 11, 3)).is_none(), "another watermark");
        assert!(memo.get(&key(1, 10, 4)).is_none(), "another generation");
        let tenant = MemoKey {
            tenant: Some("acme".to_owned()),
            ..key(1, 10, 3)
        };
        assert!(memo.get(&tenant).is_none(), "another tenant");
        memo.put(tenant.clone(), Arc::new("b"));
        assert_eq!(memo.get(&tenant).as_deref(), Some(&"b"));
        assert_eq!(memo.get(&key(1, 10, 3)).as_deref(), Some(&"a"));
    }

    #[test]
    fn a_newer_version_forgets_the_older_ones_and_the_memo_is_bounded() {
        let memo = RollupMemo::default();
        memo.put(key(1, 10, 3), Arc::new(1));
        memo.put(key(2, 10, 3), Arc::new(2));
        memo.put(key(1, 12, 3), Arc::new(3));
        assert!(memo.get(&key(1, 10, 3)).is_none());
        assert!(memo.get(&key(2, 10, 3)).is_none());
        assert_eq!(memo.get(&key(1, 12, 3)).as_deref(), Some(&3));
        for from in 1..=(MEMO_ENTRIES as u32 + 2) {
            memo.put(key(from, 12, 3), Arc::new(from as i32));
        }
        let kept = (1..=(MEMO_ENTRIES as u32 + 2))
            .filter(|from| memo.get(&key(*from, 12, 3)).is_some())
            .count();
        assert_eq!(kept, MEMO_ENTRIES);
        assert!(memo.get(&key(1, 12, 3)).is_none(), "the oldest went first");
    }
}
