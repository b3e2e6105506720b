//! The string scanner: finds secrets, card numbers, emails and IPv4 addresses
//! inside free text in one left-to-right pass over the bytes.
//!
//! The pass jumps from word to word (`[A-Za-z0-9_]` runs) and looks closer only
//! at a word's first byte and at a few punctuation bytes (`@ = : - [`), so text
//! without secrets costs about one table lookup per byte and no allocation.
//! Every trigger is ASCII, so every cut falls on a UTF-8 boundary.
//!
//! Over 600 lines: one single-pass byte scanner whose detectors share its cursor.

use std::borrow::Cow;

use super::hash::Keyed;
use super::{RedactionCounts, Rule};

/// Which detectors run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanOpts {
    pub secrets: bool,
    pub cards: bool,
    pub emails: bool,
    /// IPv4 addresses inside text → `[ip:hmac:…]`.
    pub ips: bool,
    /// Emails → `[email:hmac:…]` instead of `[REDACTED:email]`.
    pub hash_emails: bool,
}

/// Replaces an API key.
pub const MARK_API_KEY: &str = "[REDACTED:api_key]";
/// Replaces a JWT.
pub const MARK_JWT: &str = "[REDACTED:jwt]";
/// Replaces a private key.
pub const MARK_PRIVATE_KEY: &str = "[REDACTED:private_key]";
/// Replaces a password or other secret value.
pub const MARK_SECRET: &str = "[REDACTED:secret]";
/// Replaces a bearer token.
pub const MARK_BEARER: &str = "[REDACTED:bearer]";
/// Replaces the credentials of a URL.
pub const MARK_URL_CREDENTIALS: &str = "[REDACTED:url_credentials]";
/// Replaces a payment card number.
pub const MARK_CARD: &str = "[REDACTED:card]";
/// Replaces an email address.
pub const MARK_EMAIL: &str = "[REDACTED:email]";
/// Ends a value cut at its size cap.
pub const MARK_TRUNCATED: &str = "[TRUNCATED]";

const WORD: u8 = 1;
const B64: u8 = 2; // base64url: word chars and '-'
const TOKEN: u8 = 4; // bearer token chars: base64url + . ~ + / =
const LOCAL: u8 = 8; // email local part
const DOMAIN: u8 = 16; // email domain label

const fn build_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        let mut v = 0;
        if alnum || b == b'_' {
            v |= WORD | B64 | TOKEN | LOCAL;
        }
        if b == b'-' {
            v |= B64 | TOKEN | LOCAL | DOMAIN;
        }
        if matches!(b, b'.' | b'~' | b'+' | b'/' | b'=') {
            v |= TOKEN;
        }
        if matches!(b, b'.' | b'%' | b'+') {
            v |= LOCAL;
        }
        if alnum {
            v |= DOMAIN;
        }
        t[c] = v;
        c += 1;
    }
    t
}

static CLASSES: [u8; 256] = build_classes();

#[inline]
fn has(b: u8, class: u8) -> bool {
    CLASSES[b as usize] & class != 0
}

#[inline]
fn is_word(b: u8) -> bool {
    has(b, WORD)
}

/// Length of the run of `class` bytes starting at `from`.
#[inline]
fn run(b: &[u8], from: usize, class: u8) -> usize {
    b.get(from..).map_or(0, |rest| {
        rest.iter().take_while(|c| has(**c, class)).count()
    })
}

fn run_where(b: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    b.get(from..)
        .map_or(0, |rest| rest.iter().take_while(|c| pred(**c)).count())
}

fn starts_with_at(b: &[u8], at: usize, prefix: &[u8]) -> bool {
    b.get(at..at + prefix.len()) == Some(prefix)
}

fn eq_ignore_case_at(b: &[u8], at: usize, word: &[u8]) -> bool {
    b.get(at..at + word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

/// A replacement: bytes `start..end` become `text`.
struct Hit {
    start: usize,
    end: usize,
    text: Cow<'static, str>,
    rule: Rule,
}

impl Hit {
    fn new(start: usize, end: usize, text: &'static str, rule: Rule) -> Hit {
        Hit {
            start,
            end,
            text: Cow::Borrowed(text),
            rule,
        }
    }
}

/// Scans `s`; returns it unchanged (borrowed) when nothing was found.
pub(crate) fn scan<'s>(
    s: &'s str,
    opts: ScanOpts,
    keyed: &Keyed,
    counts: &mut RedactionCounts,
) -> Cow<'s, str> {
    let b = s.as_bytes();
    let n = b.len();
    let mut out: Option<String> = None;
    let mut copied = 0usize;
    let mut i = 0usize;
    while i < n {
        let c = b[i];
        let hit = if is_word(c) {
            let hit = word_start(b, i, opts, keyed);
            if hit.is_none() {
                i += run(b, i, WORD);
                continue;
            }
            hit
        } else {
            match c {
                b'[' => {
                    if let Some(len) = marker_len(b, i) {
                        i += len;
                        continue;
                    }
                    None
                }
                b'@' if opts.emails => email(b, i, copied, opts, keyed),
                b':' if opts.secrets && starts_with_at(b, i, b"://") => url_credentials(b, i),
                b':' => {
                    let v6 = if opts.ips && b.get(i + 1) == Some(&b':') {
                        ipv6(b, i, keyed)
                    } else {
                        None
                    };
                    v6.or_else(|| opts.secrets.then(|| pair(b, i, copied)).flatten())
                }
                b'=' if opts.secrets => pair(b, i, copied),
                b'-' if opts.secrets && starts_with_at(b, i, b"-----BEGIN ") => private_key(b, i),
                _ => None,
            }
        };
        match hit {
            Some(hit) if hit.start >= copied && hit.end > hit.start && hit.end <= n => {
                let buf = out.get_or_insert_with(|| String::with_capacity(n));
                buf.push_str(&s[copied..hit.start]);
                buf.push_str(&hit.text);
                copied = hit.end;
                counts.add(hit.rule, 1);
                i = hit.end;
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut buf) => {
            buf.push_str(&s[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// Length of a marker this scanner (or the redactor) writes, starting at `at`.
pub(crate) fn marker_len(b: &[u8], at: usize) -> Option<usize> {
    let rest = b.get(at..)?;
    if rest.starts_with(MARK_TRUNCATED.as_bytes()) {
        return Some(MARK_TRUNCATED.len());
    }
    for prefix in [&b"[REDACTED:"[..], b"[ip:hmac:", b"[email:hmac:"] {
        if rest.starts_with(prefix) {
            let body = run_where(rest, prefix.len(), |c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'
            });
            let close = prefix.len() + body;
            if body > 0 && rest.get(close) == Some(&b']') {
                return Some(close + 1);
            }
        }
    }
    None
}

/// Detectors that start at the first byte of a word.
fn word_start(b: &[u8], i: usize, opts: ScanOpts, keyed: &Keyed) -> Option<Hit> {
    let c = b[i];
    if c.is_ascii_digit() {
        if opts.ips {
            if let Some(hit) = ipv4(b, i, keyed).or_else(|| ipv6(b, i, keyed)) {
                return Some(hit);
            }
        }
        if opts.cards && (b'2'..=b'6').contains(&c) {
            return card(b, i);
        }
        return None;
    }
    let secret = if opts.secrets {
        secret_token(b, i)
    } else {
        None
    };
    secret.or_else(|| {
        (opts.ips && c.is_ascii_hexdigit())
            .then(|| ipv6(b, i, keyed))
            .flatten()
    })
}

/// An IPv6 address standing alone in text (`2001:db8::5`, `fe80::1`, `::1`):
/// a run of hex digits, colons and dots with at least two colons and a digit
/// that parses as an address. `std::vec`, `12:30:45` and MAC addresses do not.
fn ipv6(b: &[u8], i: usize, keyed: &Keyed) -> Option<Hit> {
    if i > 0 && (is_word(b[i - 1]) || matches!(b[i - 1], b':' | b'.' | b'-')) {
        return None;
    }
    // Cheap rejection: an address starts with `:` or a group of 1–4 hex digits and `:`.
    let group = run_where(b, i, |c| c.is_ascii_hexdigit());
    if group > 4 || b.get(i + group) != Some(&b':') {
        return None;
    }
    let len = run_where(b, i, |c| c.is_ascii_hexdigit() || c == b':' || c == b'.');
    let mut end = i + len;
    while end > i && b[end - 1] == b'.' {
        end -= 1;
    }
    let candidate = &b[i..end];
    let colons = candidate.iter().filter(|c| **c == b':').count();
    if colons < 2 || !candidate.iter().any(u8::is_ascii_digit) {
        return None;
    }
    if b.get(end).is_some_and(|c| is_word(*c) || *c == b'-') {
        return None;
    }
    let ip: std::net::Ipv6Addr = std::str::from_utf8(candidate).ok()?.parse().ok()?;
    let canonical = std::net::IpAddr::V6(ip).to_string();
    Some(Hit {
        start: i,
        end,
        text: Cow::Owned(format!(
            "[ip:hmac:{}]",
            keyed.tag("ip", canonical.as_bytes())
        )),
        rule: Rule::Ip,
    })
}

/// Vendor token prefixes, JWTs and `Bearer`/`Basic` credentials at a word start.
fn secret_token(b: &[u8], i: usize) -> Option<Hit> {
    let c = b[i];
    let token = |prefix: &[u8], class: u8, min: usize, mark: &'static str| -> Option<Hit> {
        if !starts_with_at(b, i, prefix) {
            return None;
        }
        let len = run(b, i + prefix.len(), class);
        (len >= min).then(|| Hit::new(i, i + prefix.len() + len, mark, Rule::Secret))
    };
    match c {
        b's' => token(b"sk-", B64, 20, MARK_API_KEY)
            .or_else(|| token(b"sk_live_", WORD, 10, MARK_API_KEY))
            .or_else(|| token(b"sk_test_", WORD, 10, MARK_API_KEY)),
        b'r' => token(b"rk_live_", WORD, 10, MARK_API_KEY)
            .or_else(|| token(b"rk_test_", WORD, 10, MARK_API_KEY)),
        b'A' => {
            if starts_with_at(b, i, b"AKIA") || starts_with_at(b, i, b"ASIA") {
                let len = run_where(b, i + 4, |c| c.is_ascii_uppercase() || c.is_ascii_digit());
                let end = i + 4 + len;
                if len == 16 && !b.get(end).is_some_and(|c| is_word(*c)) {
                    return Some(Hit::new(i, end, MARK_API_KEY, Rule::Secret));
                }
            }
            token(b"AIza", B64, 30, MARK_API_KEY)
        }
        b'g' => token(b"ghp_", WORD, 30, MARK_API_KEY)
            .or_else(|| token(b"gho_", WORD, 30, MARK_API_KEY))
            .or_else(|| token(b"ghu_", WORD, 30, MARK_API_KEY))
            .or_else(|| token(b"ghs_", WORD, 30, MARK_API_KEY))
            .or_else(|| token(b"ghr_", WORD, 30, MARK_API_KEY))
            .or_else(|| token(b"github_pat_", WORD, 22, MARK_API_KEY))
            .or_else(|| token(b"glpat-", B64, 20, MARK_API_KEY)),
        b'x' => {
            let kind = b.get(i + 3).copied();
            if starts_with_at(b, i, b"xox")
                && matches!(kind, Some(b'a' | b'b' | b'p' | b'r' | b's' | b'e'))
                && b.get(i + 4) == Some(&b'-')
            {
                let len = run(b, i + 5, B64);
                if len >= 10 {
                    return Some(Hit::new(i, i + 5 + len, MARK_API_KEY, Rule::Secret));
                }
            }
            None
        }
        b'h' => token(b"hf_", WORD, 30, MARK_API_KEY),
        b't' => tally_key(b, i),
        b'e' => jwt(b, i),
        b'B' | b'b' => bearer(b, i),
        _ => None,
    }
}

/// Tally's own API keys: `tally_` + 16 hex (the lookup prefix) + `_` + 64 hex (the
/// secret). Exactly that shape, so names such as `tally_api` stay.
fn tally_key(b: &[u8], i: usize) -> Option<Hit> {
    const PREFIX: &[u8] = b"tally_";
    if !starts_with_at(b, i, PREFIX) {
        return None;
    }
    let hex = |from: usize, len: usize| {
        b.get(from..from + len)
            .is_some_and(|part| part.iter().all(u8::is_ascii_hexdigit))
    };
    let lookup = i + PREFIX.len();
    let secret = lookup + 17;
    let end = secret + 64;
    (hex(lookup, 16)
        && b.get(lookup + 16) == Some(&b'_')
        && hex(secret, 64)
        && !b.get(end).is_some_and(|c| is_word(*c)))
    .then(|| Hit::new(i, end, MARK_API_KEY, Rule::Secret))
}

/// `eyJ…` header `.` payload `.` signature (base64url).
fn jwt(b: &[u8], i: usize) -> Option<Hit> {
    if !starts_with_at(b, i, b"eyJ") {
        return None;
    }
    let header = run(b, i, B64);
    if header < 10 || b.get(i + header) != Some(&b'.') {
        return None;
    }
    let p = i + header + 1;
    let payload = run(b, p, B64);
    if payload < 4 || b.get(p + payload) != Some(&b'.') {
        return None;
    }
    let s = p + payload + 1;
    let signature = run(b, s, B64);
    Some(Hit::new(i, s + signature, MARK_JWT, Rule::Secret))
}

/// `Bearer <token>` / `Basic <token>`: the token goes, the scheme stays.
fn bearer(b: &[u8], i: usize) -> Option<Hit> {
    let word = run(b, i, WORD);
    let scheme = (word == 6 && eq_ignore_case_at(b, i, b"bearer"))
        || (word == 5 && eq_ignore_case_at(b, i, b"basic"));
    if !scheme {
        return None;
    }
    let spaces = run_where(b, i + word, |c| c == b' ');
    if spaces == 0 {
        return None;
    }
    let start = i + word + spaces;
    if marker_len(b, start).is_some() {
        return None;
    }
    let len = run(b, start, TOKEN);
    (len >= 8).then(|| Hit::new(start, start + len, MARK_BEARER, Rule::Secret))
}

/// A dotted-quad IPv4 address (with an optional `:port`, left in place) that
/// stands alone: not inside `v1.2.3.4`, `1.2.3.4.5` or `1.2.3.4-beta`.
fn ipv4(b: &[u8], i: usize, keyed: &Keyed) -> Option<Hit> {
    if i > 0 && matches!(b[i - 1], b'.' | b'-') {
        return None;
    }
    let mut p = i;
    for part in 0..4 {
        let len = run_where(b, p, |c| c.is_ascii_digit());
        if len == 0 || len > 3 {
            return None;
        }
        let mut octet = 0u32;
        for d in &b[p..p + len] {
            octet = octet * 10 + u32::from(d - b'0');
        }
        if octet > 255 {
            return None;
        }
        p += len;
        if part < 3 {
            if b.get(p) != Some(&b'.') {
                return None;
            }
            p += 1;
        }
    }
    match b.get(p) {
        Some(c) if is_word(*c) => return None,
        Some(b'.' | b'-') if b.get(p + 1).is_some_and(|c| is_word(*c)) => return None,
        _ => {}
    }
    // The dotted quad is ASCII digits and dots.
    let text = std::str::from_utf8(&b[i..p]).ok()?;
    Some(Hit {
        start: i,
        end: p,
        text: Cow::Owned(format!("[ip:hmac:{}]", keyed.tag("ip", text.as_bytes()))),
        rule: Rule::Ip,
    })
}

/// A payment card number: 13–19 digits, Luhn-valid, first digit 2–6, written
/// plain or in groups of four separated by single spaces or dashes (Amex 4-6-5).
fn card(b: &[u8], i: usize) -> Option<Hit> {
    // Groups: (start, len) of digit runs joined by one consistent separator.
    let mut groups: [(usize, usize); 8] = [(0, 0); 8];
    let mut count = 0usize;
    let mut p = i;
    let mut sep: Option<u8> = None;
    loop {
        let len = run_where(b, p, |c| c.is_ascii_digit());
        if len == 0 || count == groups.len() {
            break;
        }
        groups[count] = (p, len);
        count += 1;
        p += len;
        match b.get(p).copied() {
            Some(s @ (b' ' | b'-'))
                if sep.is_none_or(|x| x == s)
                    && b.get(p + 1).is_some_and(|c| c.is_ascii_digit()) =>
            {
                sep = Some(s);
                p += 1;
            }
            _ => break,
        }
    }
    if count == 0 {
        return None;
    }
    let digits_of = |k: usize| groups[..k].iter().map(|g| g.1).sum::<usize>();
    let valid_shape = |k: usize| -> bool {
        if k == 1 {
            return true;
        }
        let len = |g: usize| groups[g].1;
        let fours = (0..k - 1).all(|g| len(g) == 4) && (1..=4).contains(&len(k - 1));
        let amex = k == 3 && len(0) == 4 && len(1) == 6 && (4..=5).contains(&len(2));
        fours || amex
    };
    for k in (1..=count).rev() {
        let total = digits_of(k);
        if !(13..=19).contains(&total) || !valid_shape(k) {
            continue;
        }
        let (last_start, last_len) = groups[k - 1];
        let end = last_start + last_len;
        if k == 1 {
            // A plain run must stand alone: not followed by a letter or more digits.
            if b.get(end).is_some_and(|c| is_word(*c)) {
                return None;
            }
        } else if k < count && sep == Some(b'-') {
            // Part of a longer dashed id.
            continue;
        }
        if b.get(end).is_some_and(|c| is_word(*c)) {
            continue;
        }
        let digits = b[i..end]
            .iter()
            .filter(|c| c.is_ascii_digit())
            .map(|c| c - b'0');
        if luhn(digits) {
            return Some(Hit::new(i, end, MARK_CARD, Rule::Card));
        }
    }
    None
}

/// The Luhn check over digits given most significant first.
pub(crate) fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (n, d) in digits.rev().enumerate() {
        let mut d = u32::from(d);
        if n % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    matches!(sum % 10, 0)
}

/// The bytes of an email around the `@` at `at`; the local part does not reach
/// back past `floor`.
fn email_span(b: &[u8], at: usize, floor: usize) -> Option<(usize, usize)> {
    let mut start = at;
    while start > floor && has(b[start - 1], LOCAL) {
        start -= 1;
    }
    while start < at && b[start] == b'.' {
        start += 1;
    }
    if start == at {
        return None;
    }
    // Domain: labels of [A-Za-z0-9-] joined by dots; the last one alphabetic, 2+ long.
    let mut p = at + 1;
    let mut labels = 0;
    let mut end = p;
    let mut last_alpha = false;
    loop {
        let len = run(b, p, DOMAIN);
        if len == 0 {
            break;
        }
        labels += 1;
        last_alpha = len >= 2 && b[p..p + len].iter().all(u8::is_ascii_alphabetic);
        end = p + len;
        if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(|c| has(*c, DOMAIN)) {
            p = end + 1;
        } else {
            break;
        }
    }
    (labels >= 2 && last_alpha).then_some((start, end))
}

/// Whether the whole of `s` is one email address.
pub(crate) fn is_email(s: &str) -> bool {
    let b = s.as_bytes();
    match b.iter().position(|c| *c == b'@') {
        Some(at) => email_span(b, at, 0) == Some((0, b.len())),
        None => false,
    }
}

fn email(b: &[u8], at: usize, floor: usize, opts: ScanOpts, keyed: &Keyed) -> Option<Hit> {
    let (start, end) = email_span(b, at, floor)?;
    let text = if opts.hash_emails {
        let address = std::str::from_utf8(&b[start..end])
            .ok()?
            .to_ascii_lowercase();
        Cow::Owned(format!(
            "[email:hmac:{}]",
            keyed.tag("email", address.as_bytes())
        ))
    } else {
        Cow::Borrowed(MARK_EMAIL)
    };
    Some(Hit {
        start,
        end,
        text,
        rule: Rule::Email,
    })
}

/// `scheme://user:pass@host` → `scheme://[REDACTED:url_credentials]@host`.
fn url_credentials(b: &[u8], colon: usize) -> Option<Hit> {
    let start = colon + 3;
    let len = run_where(b, start, |c| {
        !matches!(c, b'@' | b'/' | b'?' | b'#' | b'[' | b']') && !c.is_ascii_whitespace()
    });
    let end = start + len;
    if len == 0 || b.get(end) != Some(&b'@') || !b.get(end + 1).is_some_and(|c| has(*c, DOMAIN)) {
        return None;
    }
    Some(Hit::new(start, end, MARK_URL_CREDENTIALS, Rule::Secret))
}

/// Names (lowercase, `-` read as `_`) whose `name=value` / `name: value` hides a secret.
const PAIR_NAMES: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pwd",
    b"secret",
    b"token",
    b"api_key",
    b"apikey",
    b"access_key",
    b"private_key",
    b"passphrase",
];

/// `password=…`, `secret: …`, `"api_key": "…"`: the value goes, the name stays.
fn pair(b: &[u8], sep: usize, floor: usize) -> Option<Hit> {
    let mut name_end = sep;
    if name_end > floor && matches!(b[name_end - 1], b'"' | b'\'') {
        name_end -= 1;
    }
    let mut name_start = name_end;
    while name_start > floor
        && (is_word(b[name_start - 1]) || matches!(b[name_start - 1], b'-' | b'.'))
    {
        name_start -= 1;
    }
    let name = &b[name_start..name_end];
    let named = PAIR_NAMES.iter().any(|n| {
        name.len() >= n.len() && {
            let tail = &name[name.len() - n.len()..];
            tail.iter().zip(n.iter()).all(|(a, b)| {
                let a = if *a == b'-' {
                    b'_'
                } else {
                    a.to_ascii_lowercase()
                };
                a == *b
            }) && (name.len() == n.len() || !name[name.len() - n.len() - 1].is_ascii_alphabetic())
        }
    });
    if !named {
        return None;
    }
    let mut v = sep + 1;
    v += run_where(b, v, |c| c == b' ' || c == b'\t');
    let quote = match b.get(v) {
        Some(q @ (b'"' | b'\'')) => {
            v += 1;
            Some(*q)
        }
        _ => None,
    };
    if marker_len(b, v).is_some() {
        return None;
    }
    let len = match quote {
        Some(q) => {
            let mut p = v;
            while p < b.len() && b[p] != q {
                p += if b[p] == b'\\' && p + 1 < b.len() {
                    2
                } else {
                    1
                };
            }
            p.min(b.len()) - v
        }
        None => run_where(b, v, |c| {
            !c.is_ascii_whitespace()
                && !matches!(
                    c,
                    b'&' | b';' | b',' | b'"' | b'\'' | b')' | b'}' | b'[' | b']' | b'<' | b'>'
                )
        }),
    };
    if len == 0 {
        return None;
    }
    // A backslash escape never ends on a multi-byte boundary, but stay safe.
    let mut end = v + len;
    while end < b.len() && (b[end] & 0xC0) == 0x80 {
        end += 1;
    }
    Some(Hit::new(v, end, MARK_SECRET, Rule::Secret))
}

/// `-----BEGIN … PRIVATE KEY-----` through its `-----END …-----` line (or the end).
fn private_key(b: &[u8], i: usize) -> Option<Hit> {
    let label_start = i + "-----BEGIN ".len();
    let label = run_where(b, label_start, |c| c != b'\n' && c != b'-');
    let label_text = &b[label_start..label_start + label];
    if label > 80 || !label_text.ends_with(b"PRIVATE KEY") {
        return None;
    }
    let body = label_start + label;
    let end = find(b, body, b"-----END ")
        .map(|e| {
            let after = e + "-----END ".len();
            let tail = run_where(b, after, |c| c != b'\n' && c != b'-');
            let close = after + tail;
            if starts_with_at(b, close, b"-----") {
                close + 5
            } else {
                close
            }
        })
        .unwrap_or(b.len());
    Some(Hit::new(i, end, MARK_PRIVATE_KEY, Rule::Secret))
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}
