//! Keyed hashes (HMAC-SHA256) for values that must group but not be readable.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A keyed HMAC-SHA256, initialised once and cloned per use.
#[derive(Clone)]
pub(crate) struct Keyed {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Keyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyed(..)")
    }
}

/// Hex digits in a tag: the first 8 bytes of the MAC.
pub(crate) const TAG_HEX: usize = 16;

impl Keyed {
    pub(crate) fn new(key: &[u8]) -> Option<Keyed> {
        Hmac::<Sha256>::new_from_slice(key)
            .ok()
            .map(|mac| Keyed { mac })
    }

    /// The first 16 hex digits of HMAC(key, domain ‖ 0x00 ‖ value). The domain
    /// (`ip`, `email`, `file`) keeps hashes of different kinds apart.
    pub(crate) fn tag(&self, domain: &str, value: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        let bytes = mac.finalize().into_bytes();
        crate::otlp_value::hex_lower(&bytes[..TAG_HEX / 2])
    }
}

/// Whether `s` is `prefix` followed by a tag (and, for files, `.ext`).
pub(crate) fn is_tagged(s: &str, prefix: &str) -> bool {
    let Some(rest) = s.strip_prefix(prefix) else {
        return false;
    };
    let (Some(tag), Some(tail)) = (rest.get(..TAG_HEX), rest.get(TAG_HEX..)) else {
        return false;
    };
    tag.bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        && (tail.is_empty()
            || (prefix == "file:hmac:"
                && tail.strip_prefix('.').is_some_and(|ext| {
                    (1..=10).contains(&ext.len()) && ext.bytes().all(|c| c.is_ascii_alphanumeric())
                })))
}
