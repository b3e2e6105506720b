//! Redaction (`processors.redact`): scrubs personal data, content and secrets
//! out of OTLP requests in place, before classification, so nothing raw reaches
//! rows, logs, metric labels or quarantine. See `docs/privacy.md`.
//!
//! ```
//! use tally_config::RedactConfig;
//! use tally_processors::redact::Redactor;
//!
//! let redactor = Redactor::new(&RedactConfig::default(), b"0123456789abcdef0123456789abcdef").unwrap();
//! assert_eq!(
//!     redactor.redact_str("login failed for alice@example.com"),
//!     "login failed for [REDACTED:email]"
//! );
//! ```
//!
//! Rules (their ids label `tally_redactions_total{rule}`): see [`Rule`].
//!
//! Over 600 lines: the rules and what each does to a value; the request is walked by
//! [`tally_model::walk`], and what is particular to a span or a log record is in
//! the [`Redact`] impls at the end.

mod hash;
mod key_cache;
mod keys;
mod scan;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use tally_config::{RedactConfig, RedactRules};
use tally_model::walk::{Context, LevelVisitor, Record, Request};

use hash::{is_tagged, Keyed};
use key_cache::KeyCache;
use keys::{is_content_event, KeyClass, KeyList, Keys};
use scan::{scan, ScanOpts};

pub use scan::{
    MARK_API_KEY, MARK_BEARER, MARK_CARD, MARK_EMAIL, MARK_JWT, MARK_PRIVATE_KEY, MARK_SECRET,
    MARK_TRUNCATED, MARK_URL_CREDENTIALS,
};

/// Replaces prompt/completion/message content.
pub const MARK_CONTENT: &str = "[REDACTED:content]";
/// Replaces arrays and maps nested deeper than `max_depth`.
pub const MARK_DEPTH: &str = "[REDACTED:depth]";

/// Shortest accepted HMAC key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Why a [`Redactor`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("the redaction HMAC key is {0} bytes long, at least {MIN_KEY_BYTES} are needed")]
    /// The HMAC key is shorter than [`MIN_KEY_BYTES`].
    KeyTooShort(usize),
    /// A value of `processors.redact` is refused.
    #[error("processors.redact.{key}: {message}")]
    Config {
        /// The key under `processors.redact`.
        key: &'static str,
        /// Why its value is refused.
        message: String,
    },
    #[error("cannot generate an HMAC key: {0}")]
    /// The random source failed while generating a key.
    Random(String),
}

/// A redaction rule; its id labels `tally_redactions_total{rule}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `ip`: IP addresses → keyed hash.
    Ip,
    /// `content`: prompt/completion/message content dropped.
    Content,
    /// `secret`: API keys, tokens, JWTs, private keys, passwords, URL credentials.
    Secret,
    /// `card`: Luhn-valid payment card numbers.
    Card,
    /// `email`: email addresses.
    Email,
    /// `file`: file names and paths → keyed hash, extension kept.
    File,
    /// `value_cap`: a string value cut at `max_value_bytes`.
    ValueCap,
    /// `record_cap`: an attribute dropped to keep a record under `max_record_attributes_bytes`.
    RecordCap,
    /// `depth_cap`: an array or map nested deeper than `max_depth` replaced.
    DepthCap,
    /// `allowlist`: an attribute dropped by the allowlist.
    Allowlist,
}

impl Rule {
    /// Every rule, in counter order.
    pub const ALL: [Rule; 10] = [
        Rule::Ip,
        Rule::Content,
        Rule::Secret,
        Rule::Card,
        Rule::Email,
        Rule::File,
        Rule::ValueCap,
        Rule::RecordCap,
        Rule::DepthCap,
        Rule::Allowlist,
    ];

    /// The counter label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Ip => "ip",
            Rule::Content => "content",
            Rule::Secret => "secret",
            Rule::Card => "card",
            Rule::Email => "email",
            Rule::File => "file",
            Rule::ValueCap => "value_cap",
            Rule::RecordCap => "record_cap",
            Rule::DepthCap => "depth_cap",
            Rule::Allowlist => "allowlist",
        }
    }
}

/// How many values each rule changed in one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedactionCounts {
    counts: [u64; Rule::ALL.len()],
}

impl RedactionCounts {
    /// Count for one rule.
    pub fn get(&self, rule: Rule) -> u64 {
        self.counts[rule as usize]
    }

    /// Sum over all rules.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// `(rule id, count)` for every rule that fired.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Rule::ALL
            .iter()
            .map(|rule| (rule.as_str(), self.get(*rule)))
            .filter(|(_, n)| *n > 0)
    }

    /// Adds another call's counts.
    pub fn merge(&mut self, other: &RedactionCounts) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
    }

    pub(crate) fn add(&mut self, rule: Rule, n: u64) {
        self.counts[rule as usize] += n;
    }

    /// Adds these counts to `tally_redactions_total{rule}` in the process-wide registry.
    pub fn record_metrics(&self) {
        let family = &crate::metrics::metrics().redactions;
        for (rule, n) in self.iter() {
            family
                .get_or_create(&crate::metrics::RuleLabels {
                    rule: rule.to_string(),
                })
                .inc_by(n);
        }
    }
}

/// Creates the zero-valued `tally_redactions_total{rule}` series for every rule,
/// so dashboards see all of them from the start (with the processors' other
/// metrics: [`crate::metrics::register`]).
pub fn init_metric_series() {
    crate::metrics::register();
}

/// A fresh random 32-byte HMAC key (from the operating system).
pub fn generate_key() -> Result<[u8; 32], RedactError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| RedactError::Random(e.to_string()))?;
    Ok(key)
}

/// The redaction processor: built once from config, shared (`Arc`) across threads.
#[derive(Debug)]
pub struct Redactor {
    enabled: bool,
    rules: RedactRules,
    hash_emails: bool,
    max_value: usize,
    max_record: usize,
    max_depth: usize,
    keys: Keys,
    allow: Option<KeyList>,
    keyed: Keyed,
}

/// Distinct keys remembered per request at most (a request of random keys
/// gains nothing from the cache and must not grow it without bound).
const KEY_CACHE_MAX: usize = 512;

/// Where an attribute list sits.
#[derive(Debug, Clone, Copy, Default)]
struct Ctx {
    /// In a GenAI content event or record: bare `content`, `message`, … are content.
    content_event: bool,
}

/// What processing one attribute list found.
#[derive(Debug, Default)]
struct ListOutcome {
    /// Attribute bytes left (keys and values).
    used: usize,
    /// Attributes removed (allowlist, record cap).
    dropped: u32,
    /// A content attribute was present.
    content: bool,
}

fn set_string(value: &mut AnyValue, text: &str) {
    if let Some(Value::StringValue(s)) = value.value.as_mut() {
        // Reuse the allocation: no free + malloc per redacted value.
        s.clear();
        s.push_str(text);
        return;
    }
    value.value = Some(Value::StringValue(text.to_string()));
}

fn is_string(value: &AnyValue, text: &str) -> bool {
    matches!(&value.value, Some(Value::StringValue(s)) if s == text)
}

fn is_empty(value: &AnyValue) -> bool {
    match &value.value {
        None => true,
        Some(Value::StringValue(s)) => s.is_empty(),
        Some(Value::BytesValue(b)) => b.is_empty(),
        Some(Value::ArrayValue(a)) => a.values.is_empty(),
        Some(Value::KvlistValue(l)) => l.values.is_empty(),
        Some(_) => false,
    }
}

/// Bytes a value takes in the record-size budget.
pub fn value_size(value: Option<&AnyValue>) -> usize {
    match value.and_then(|v| v.value.as_ref()) {
        None => 0,
        Some(Value::StringValue(s)) => s.len(),
        Some(Value::BytesValue(b)) => b.len(),
        Some(Value::BoolValue(_)) => 1,
        Some(Value::IntValue(_) | Value::DoubleValue(_)) => 8,
        Some(Value::ArrayValue(a)) => a.values.iter().map(|v| value_size(Some(v))).sum(),
        Some(Value::KvlistValue(l)) => l.values.iter().map(attribute_size).sum(),
        Some(_) => 4,
    }
}

/// Bytes an attribute (key and value) takes in the record-size budget.
pub fn attribute_size(kv: &KeyValue) -> usize {
    kv.key.len() + value_size(kv.value.as_ref())
}

/// The largest char boundary at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Cuts `s` to at most `max` bytes, [`MARK_TRUNCATED`] included. The cut backs
/// off (up to 64 bytes) to a word boundary so a token is not left in pieces.
fn cap(s: &str, max: usize) -> Option<String> {
    if s.len() <= max {
        return None;
    }
    let room = max.saturating_sub(MARK_TRUNCATED.len());
    let mut cut = floor_boundary(s, room);
    let bytes = s.as_bytes();
    let window = &bytes[cut.saturating_sub(64)..cut];
    if let Some(p) = window
        .iter()
        .rposition(|b| b.is_ascii() && !b.is_ascii_alphanumeric() && !matches!(b, b'_' | b'-'))
    {
        cut = cut.saturating_sub(64) + p + 1;
    }
    let mut out = String::with_capacity(cut + MARK_TRUNCATED.len());
    out.push_str(&s[..cut]);
    out.push_str(MARK_TRUNCATED);
    Some(out)
}

/// The address when the whole of `s` is an IP address (or `ip:port`).
fn exact_ip(s: &str) -> Option<IpAddr> {
    let b = s.as_bytes();
    if b.len() < 2 || b.len() > 64 || !b.iter().any(|c| matches!(c, b'.' | b':')) {
        return None;
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, b'.' | b':' | b'[' | b']'))
    {
        return None;
    }
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

impl Redactor {
    /// Builds the redactor. `hmac_key` keys the hashes of IPs, file names and
    /// identity emails (at least [`MIN_KEY_BYTES`]; see [`generate_key`]);
    /// with `enabled: false` it is not used and may be empty.
    pub fn new(config: &RedactConfig, hmac_key: &[u8]) -> Result<Redactor, RedactError> {
        config.check().map_err(|e| RedactError::Config {
            key: e.key,
            message: e.message,
        })?;
        // A disabled redactor never hashes: any key (even none) will do.
        if config.enabled && hmac_key.len() < MIN_KEY_BYTES {
            return Err(RedactError::KeyTooShort(hmac_key.len()));
        }
        let keyed = Keyed::new(hmac_key).ok_or(RedactError::KeyTooShort(hmac_key.len()))?;
        Ok(Redactor {
            enabled: config.enabled,
            rules: config.rules.clone(),
            hash_emails: config.hash_emails,
            max_value: config.max_value_bytes,
            max_record: config.max_record_attributes_bytes,
            max_depth: config.max_depth,
            keys: Keys::new(config),
            allow: config
                .allowlist
                .enabled
                .then(|| KeyList::new(&config.allowlist.keys)),
            keyed,
        })
    }

    /// Adds attribute keys Tally needs besides the built-in ones (e.g. the
    /// token-usage mapping's custom keys): they are kept by the allowlist and
    /// the record cap and never treated as content or secrets (their values
    /// are still scanned). Entries ending in `*` are prefixes.
    pub fn keep_keys(mut self, keys: &[String]) -> Redactor {
        self.keys.add_needed(keys);
        self
    }

    /// Whether the redactor does anything (`processors.redact.enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Redacts a `TraceService/Export` request in place: resource, scope, span,
    /// span event and link attributes, span names and status messages.
    pub fn redact_traces(&self, request: &mut ExportTraceServiceRequest) -> RedactionCounts {
        self.redact(request)
    }

    /// Redacts a `LogsService/Export` request in place: resource, scope and
    /// record attributes and bodies. The body of a GenAI content event (by
    /// `EventName` or `event.name`) or of a record carrying a content attribute
    /// is replaced by [`MARK_CONTENT`].
    pub fn redact_logs(&self, request: &mut ExportLogsServiceRequest) -> RedactionCounts {
        self.redact(request)
    }

    /// Redacts every level of a request over the shared walk.
    fn redact<Q: Request>(&self, request: &mut Q) -> RedactionCounts
    where
        Q::Record: Redact,
    {
        if !self.enabled {
            return RedactionCounts::default();
        }
        let mut walk = self.walk();
        request.walk_levels_mut(&mut walk);
        walk.counts
    }

    /// A redaction walk over one request (key cache and counts), for
    /// [`Request::walk_levels_mut`] alone or inside a walk doing more.
    pub(crate) fn walk(&self) -> RedactWalk<'_> {
        RedactWalk {
            redactor: self,
            keys: KeyCache::default(),
            counts: RedactionCounts::default(),
        }
    }

    /// Redacts a resource's or scope's attributes within `budget`; the bytes they keep.
    fn level_attrs(
        &self,
        keys: &mut KeyCache,
        attributes: &mut Vec<KeyValue>,
        dropped_attributes_count: &mut u32,
        budget: usize,
        c: &mut RedactionCounts,
    ) -> usize {
        let out = self.attrs(keys, attributes, Ctx::default(), budget, c);
        *dropped_attributes_count = dropped_attributes_count.saturating_add(out.dropped);
        out.used
    }

    /// Redacts one attribute list (for callers holding attributes outside a
    /// request, e.g. a replayed record). The record cap applies to the list alone.
    pub fn redact_attributes(&self, attributes: &mut Vec<KeyValue>) -> RedactionCounts {
        let mut c = RedactionCounts::default();
        if self.enabled {
            let mut keys = KeyCache::default();
            self.attrs(
                &mut keys,
                attributes,
                Ctx::default(),
                self.max_record,
                &mut c,
            );
        }
        c
    }

    /// Redacts free text (Tally's own error messages and log lines): secrets,
    /// cards, emails and IPv4 addresses inside it; cut at `max_value_bytes`.
    pub fn redact_str<'s>(&self, s: &'s str) -> Cow<'s, str> {
        if !self.enabled {
            return Cow::Borrowed(s);
        }
        let mut c = RedactionCounts::default();
        match self.string(s, KeyClass::Plain, &mut c) {
            Some(new) => Cow::Owned(new),
            None => Cow::Borrowed(s),
        }
    }

    fn scan_opts(&self, hash_emails: bool) -> ScanOpts {
        ScanOpts {
            secrets: self.rules.secrets,
            cards: self.rules.cards,
            emails: self.rules.emails,
            ips: self.rules.ip,
            hash_emails,
        }
    }

    fn text_in_place(&self, s: &mut String, c: &mut RedactionCounts) {
        if let Some(new) = self.clean_text(s, self.hash_emails, c) {
            *s = new;
        }
    }

    /// Free text: cut, then scan until nothing changes. `None`: unchanged.
    fn clean_text(&self, s: &str, hash_emails: bool, c: &mut RedactionCounts) -> Option<String> {
        self.clean_text_with(s, self.scan_opts(hash_emails), c)
    }

    fn clean_text_with(&self, s: &str, opts: ScanOpts, c: &mut RedactionCounts) -> Option<String> {
        let mut cut = false;
        let mut current: Option<String> = cap(s, self.max_value);
        if current.is_some() {
            cut = true;
        }
        // Replacements can only create new matches at their edges; a few
        // rounds reach the fixed point (one when nothing is found). A value
        // that keeps changing (a replacement cut off by the cap, over and over)
        // is replaced whole by the truncation marker, which is stable.
        let mut settled = false;
        for _ in 0..4 {
            let text = current.as_deref().unwrap_or(s);
            let next = match scan(text, opts, &self.keyed, c) {
                Cow::Borrowed(_) => {
                    settled = true;
                    break;
                }
                Cow::Owned(next) => next,
            };
            current = Some(match cap(&next, self.max_value) {
                Some(shorter) => {
                    cut = true;
                    shorter
                }
                None => next,
            });
        }
        if !settled {
            cut = true;
            current = Some(MARK_TRUNCATED.to_string());
        }
        if cut {
            c.add(Rule::ValueCap, 1);
        }
        current
    }

    fn ip_tag(&self, s: &str) -> String {
        let canonical = match exact_ip(s.trim()) {
            Some(ip) => ip.to_string(),
            None => s.trim().to_ascii_lowercase(),
        };
        format!("ip:hmac:{}", self.keyed.tag("ip", canonical.as_bytes()))
    }

    fn file_tag(&self, s: &str) -> String {
        let name = s.rsplit(['/', '\\']).next().unwrap_or(s);
        let ext = name
            .rsplit_once('.')
            .filter(|(stem, ext)| {
                !stem.is_empty()
                    && (1..=10).contains(&ext.len())
                    && ext.bytes().all(|c| c.is_ascii_alphanumeric())
            })
            .map(|(_, ext)| ext.to_ascii_lowercase());
        let tag = self.keyed.tag("file", s.as_bytes());
        match ext {
            Some(ext) => format!("file:hmac:{tag}.{ext}"),
            None => format!("file:hmac:{tag}"),
        }
    }

    /// A string value under a key of `class`. `None`: unchanged.
    fn string(&self, s: &str, class: KeyClass, c: &mut RedactionCounts) -> Option<String> {
        // Empty, or a marker or keyed hash this redactor wrote: nothing to do
        // (each starts with `[`, `i`, `e` or `f`: other values skip the checks).
        let first = match s.as_bytes().first() {
            None => return None,
            Some(first) => *first,
        };
        if first == b'[' && scan::marker_len(s.as_bytes(), 0) == Some(s.len()) {
            return None;
        }
        if s.len() <= 64
            && matches!(first, b'i' | b'e' | b'f')
            && (is_tagged(s, "ip:hmac:")
                || is_tagged(s, "email:hmac:")
                || is_tagged(s, "file:hmac:"))
        {
            return None;
        }
        match class {
            KeyClass::Ip if self.rules.ip => {
                if is_tagged(s, "ip:hmac:") {
                    return None;
                }
                c.add(Rule::Ip, 1);
                Some(self.ip_tag(s))
            }
            KeyClass::File if self.rules.files => {
                if is_tagged(s, "file:hmac:") {
                    return None;
                }
                c.add(Rule::File, 1);
                Some(self.file_tag(s))
            }
            KeyClass::Identity => {
                if self.rules.emails && scan::is_email(s) {
                    c.add(Rule::Email, 1);
                    let tag = self.keyed.tag("email", s.to_ascii_lowercase().as_bytes());
                    return Some(format!("email:hmac:{tag}"));
                }
                if is_tagged(s, "email:hmac:") {
                    return None;
                }
                self.clean_text(s, true, c)
            }
            KeyClass::Version => {
                // `1.2.3.4` under `service.version` is a version, not an address.
                let opts = ScanOpts {
                    ips: false,
                    ..self.scan_opts(self.hash_emails)
                };
                self.clean_text_with(s, opts, c)
            }
            _ => {
                if self.rules.ip && exact_ip(s).is_some() {
                    c.add(Rule::Ip, 1);
                    return Some(self.ip_tag(s));
                }
                self.clean_text(s, self.hash_emails, c)
            }
        }
    }

    /// One value under a key of `class`, at nesting `depth` (0: the attribute's own value).
    fn value(
        &self,
        value: &mut AnyValue,
        class: KeyClass,
        depth: usize,
        ctx: Ctx,
        c: &mut RedactionCounts,
    ) {
        let whole = match class {
            KeyClass::Content if self.rules.content => Some((MARK_CONTENT, Rule::Content)),
            KeyClass::Secret if self.rules.secrets => Some((MARK_SECRET, Rule::Secret)),
            _ => None,
        };
        if let Some((mark, rule)) = whole {
            // Dropped whole, whatever its shape; a marker already there stays.
            let marked = matches!(&value.value, Some(Value::StringValue(s))
                if [MARK_CONTENT, MARK_SECRET, MARK_DEPTH].contains(&s.as_str()));
            if !is_empty(value) {
                if !marked {
                    set_string(value, mark);
                    c.add(rule, 1);
                }
                return;
            }
        }
        if depth >= self.max_depth
            && matches!(
                value.value,
                Some(Value::ArrayValue(_) | Value::KvlistValue(_))
            )
        {
            set_string(value, MARK_DEPTH);
            c.add(Rule::DepthCap, 1);
            return;
        }
        if is_empty(value) {
            return;
        }
        let Some(inner) = value.value.as_mut() else {
            return;
        };
        match inner {
            Value::StringValue(s) => {
                if let Some(new) = self.string(s, class, c) {
                    *s = new;
                }
            }
            Value::BytesValue(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => {
                    if let Some(new) = self.clean_text(text, self.hash_emails, c) {
                        *bytes = new.into_bytes();
                    }
                }
                Err(_) => {
                    if bytes.len() > self.max_value {
                        bytes.truncate(self.max_value);
                        c.add(Rule::ValueCap, 1);
                    }
                }
            },
            Value::ArrayValue(array) => {
                for item in &mut array.values {
                    self.value(item, class, depth + 1, ctx, c);
                }
            }
            Value::KvlistValue(list) => {
                for kv in &mut list.values {
                    let own = self.keys.classify(&kv.key, ctx.content_event);
                    let inner_class = match (own, class) {
                        (KeyClass::Plain, KeyClass::Ip | KeyClass::File) => class,
                        (own, _) => own,
                    };
                    if let Some(new) = self.clean_text(&kv.key, self.hash_emails, c) {
                        kv.key = new;
                    }
                    if let Some(v) = kv.value.as_mut() {
                        self.value(v, inner_class, depth + 1, ctx, c);
                    }
                }
            }
            _ => {}
        }
    }

    /// One attribute list: allowlist, per-key rules, then the size budget.
    fn attrs(
        &self,
        keys: &mut KeyCache,
        attrs: &mut Vec<KeyValue>,
        ctx: Ctx,
        budget: usize,
        c: &mut RedactionCounts,
    ) -> ListOutcome {
        let mut out = ListOutcome::default();
        if let Some(allow) = &self.allow {
            let before = attrs.len();
            attrs.retain(|kv| self.keys.is_needed(&kv.key) || allow.matches(&kv.key));
            let removed = before - attrs.len();
            c.add(Rule::Allowlist, removed as u64);
            out.dropped = u32::try_from(removed).unwrap_or(u32::MAX);
        }
        for (position, kv) in attrs.iter_mut().enumerate() {
            // The same keys come back record after record: a key seen clean
            // in this request has its class remembered (outside content events,
            // where the class depends on the event).
            let cached = if ctx.content_event {
                None
            } else {
                keys.get(position, &kv.key)
            };
            let class = match cached {
                Some(class) => class,
                None => {
                    let class = self.keys.classify(&kv.key, ctx.content_event);
                    match self.clean_text(&kv.key, self.hash_emails, c) {
                        Some(new) => kv.key = new,
                        None if !ctx.content_event && keys.len() < KEY_CACHE_MAX => {
                            keys.insert(position, &kv.key, class);
                        }
                        None => {}
                    }
                    class
                }
            };
            if class == KeyClass::Content
                && self.rules.content
                && kv.value.as_ref().is_some_and(|v| !is_empty(v))
            {
                out.content = true;
            }
            if let Some(value) = kv.value.as_mut() {
                self.value(value, class, 0, ctx, c);
            }
        }
        let total: usize = attrs.iter().map(attribute_size).sum();
        if total <= budget {
            out.used = total;
            return out;
        }
        // Over budget: keys Tally needs stay; the others are kept in order while they fit.
        let needed: usize = attrs
            .iter()
            .filter(|kv| self.keys.is_needed(&kv.key))
            .map(attribute_size)
            .sum();
        let mut used = needed;
        let before = attrs.len();
        attrs.retain(|kv| {
            if self.keys.is_needed(&kv.key) {
                return true;
            }
            let size = attribute_size(kv);
            if used + size <= budget {
                used += size;
                true
            } else {
                false
            }
        });
        let removed = before - attrs.len();
        c.add(Rule::RecordCap, removed as u64);
        out.dropped = out
            .dropped
            .saturating_add(u32::try_from(removed).unwrap_or(u32::MAX));
        out.used = used;
        out
    }
}

/// One request's redaction, level by level: a resource's visit gives the bytes
/// its attributes keep, a scope's the budget left to its records.
#[derive(Debug)]
pub(crate) struct RedactWalk<'r> {
    redactor: &'r Redactor,
    keys: KeyCache,
    /// What the walk changed so far.
    pub(crate) counts: RedactionCounts,
}

impl<R: Redact> LevelVisitor<R> for RedactWalk<'_> {
    type Resource = usize;
    type Scope = usize;

    fn resource(&mut self, resource: Option<&mut Resource>) -> usize {
        let r = self.redactor;
        match resource {
            Some(resource) => r.level_attrs(
                &mut self.keys,
                &mut resource.attributes,
                &mut resource.dropped_attributes_count,
                r.max_record,
                &mut self.counts,
            ),
            None => 0,
        }
    }

    fn scope(&mut self, resource_used: &usize, scope: Option<&mut InstrumentationScope>) -> usize {
        let r = self.redactor;
        let scope_used = match scope {
            Some(scope) => r.level_attrs(
                &mut self.keys,
                &mut scope.attributes,
                &mut scope.dropped_attributes_count,
                r.max_record.saturating_sub(*resource_used),
                &mut self.counts,
            ),
            None => 0,
        };
        r.max_record
            .saturating_sub(resource_used.saturating_add(scope_used))
    }

    fn record(&mut self, budget: &usize, _: Context<'_>, record: &mut R) {
        record.redact(self.redactor, &mut self.keys, *budget, &mut self.counts);
    }
}

/// What redaction does to one kind of record, within the `budget` its
/// resource and scope left.
pub(crate) trait Redact: Record {
    fn redact(&mut self, r: &Redactor, keys: &mut KeyCache, budget: usize, c: &mut RedactionCounts);
}

impl Redact for Span {
    /// The name, attributes (within the budget), events' names and attributes,
    /// links' attributes and status message.
    fn redact(
        &mut self,
        r: &Redactor,
        keys: &mut KeyCache,
        budget: usize,
        c: &mut RedactionCounts,
    ) {
        let span = self;
        r.text_in_place(&mut span.name, c);
        let out = r.attrs(keys, &mut span.attributes, Ctx::default(), budget, c);
        span.dropped_attributes_count = span.dropped_attributes_count.saturating_add(out.dropped);
        for event in &mut span.events {
            r.text_in_place(&mut event.name, c);
            let ctx = Ctx {
                content_event: r.rules.content && is_content_event(&event.name),
            };
            let out = r.attrs(keys, &mut event.attributes, ctx, r.max_record, c);
            event.dropped_attributes_count =
                event.dropped_attributes_count.saturating_add(out.dropped);
        }
        for link in &mut span.links {
            let out = r.attrs(keys, &mut link.attributes, Ctx::default(), r.max_record, c);
            link.dropped_attributes_count =
                link.dropped_attributes_count.saturating_add(out.dropped);
        }
        if let Some(status) = span.status.as_mut() {
            r.text_in_place(&mut status.message, c);
        }
    }
}

impl Redact for LogRecord {
    /// The event name, attributes (within the budget) and body; the body of a
    /// content event or of a record with a content attribute is dropped.
    fn redact(
        &mut self,
        r: &Redactor,
        keys: &mut KeyCache,
        budget: usize,
        c: &mut RedactionCounts,
    ) {
        let record = self;
        r.text_in_place(&mut record.event_name, c);
        let named_content = r.rules.content
            && (is_content_event(&record.event_name)
                || record.attributes.iter().any(|kv| {
                    kv.key == "event.name"
                        && matches!(
                            kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(Value::StringValue(name)) if is_content_event(name)
                        )
                }));
        let ctx = Ctx {
            content_event: named_content,
        };
        let out = r.attrs(keys, &mut record.attributes, ctx, budget, c);
        record.dropped_attributes_count =
            record.dropped_attributes_count.saturating_add(out.dropped);
        if let Some(body) = record.body.as_mut() {
            if r.rules.content && (named_content || out.content) {
                if !is_empty(body) && !is_string(body, MARK_CONTENT) {
                    set_string(body, MARK_CONTENT);
                    c.add(Rule::Content, 1);
                }
            } else {
                r.value(body, KeyClass::Plain, 0, ctx, c);
            }
        }
    }
}

#[cfg(test)]
mod tests;
