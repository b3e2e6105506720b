//! The classes of the attribute keys one request's redaction met (found clean by
//! the key scan), so that each distinct key is classified and scanned once.
//!
//! Records of one request mostly repeat the same keys in the same order: each
//! position of an attribute list remembers the key last seen there, and a key
//! found at its remembered position is answered by one comparison, without
//! hashing it; other keys go through the table.

use super::keys::KeyClass;
use crate::fast_hash::FastMap;

/// Positions of an attribute list that remember their key; later ones use
/// the table alone.
const POSITIONS: usize = 64;

/// No key remembered at a position.
const NONE: u32 = u32::MAX;

/// Keys met in one request, with their class.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    /// Each key and its class, in the order they were first met.
    known: Vec<(String, KeyClass)>,
    /// A key's index in `known`.
    index: FastMap<String, u32>,
    /// Per attribute position, the index in `known` of the key last met there.
    at: Vec<u32>,
}

impl KeyCache {
    /// Distinct keys remembered.
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }

    /// The class of `key`, met at `position` of its list, if it was met before.
    #[inline]
    pub(crate) fn get(&mut self, position: usize, key: &str) -> Option<KeyClass> {
        if let Some((known, class)) = self
            .at
            .get(position)
            .and_then(|i| self.known.get(*i as usize))
        {
            if known == key {
                return Some(*class);
            }
        }
        let i = *self.index.get(key)?;
        self.remember(position, i);
        self.known.get(i as usize).map(|(_, class)| *class)
    }

    /// Remembers the class of `key`, met at `position` of its list.
    pub(crate) fn insert(&mut self, position: usize, key: &str, class: KeyClass) {
        let Ok(i) = u32::try_from(self.known.len()) else {
            return;
        };
        self.known.push((key.to_owned(), class));
        self.index.insert(key.to_owned(), i);
        self.remember(position, i);
    }

    fn remember(&mut self, position: usize, i: u32) {
        if position >= POSITIONS {
            return;
        }
        if self.at.len() <= position {
            self.at.resize(position + 1, NONE);
        }
        self.at[position] = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_at_their_position_and_anywhere_else() {
        let mut cache = KeyCache::default();
        assert_eq!(cache.get(0, "user.email"), None);
        cache.insert(0, "user.email", KeyClass::Identity);
        cache.insert(1, "client.address", KeyClass::Ip);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(0, "user.email"), Some(KeyClass::Identity));
        assert_eq!(cache.get(1, "client.address"), Some(KeyClass::Ip));
        // Another order: answered by the table, and remembered there.
        assert_eq!(cache.get(0, "client.address"), Some(KeyClass::Ip));
        assert_eq!(cache.get(1, "user.email"), Some(KeyClass::Identity));
        assert_eq!(cache.get(1, "user.emai"), None);
        assert_eq!(cache.get(0, "client.address"), Some(KeyClass::Ip));
        // Far positions use the table alone.
        assert_eq!(
            cache.get(POSITIONS + 5, "user.email"),
            Some(KeyClass::Identity)
        );
        assert_eq!(cache.get(POSITIONS + 5, "other"), None);
        cache.insert(POSITIONS + 5, "other", KeyClass::Plain);
        assert_eq!(cache.get(POSITIONS + 5, "other"), Some(KeyClass::Plain));
        assert!(cache.at.len() <= POSITIONS);
    }
}
