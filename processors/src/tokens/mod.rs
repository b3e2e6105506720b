//! Token usage: which spans and log records are LLM model calls, what they
//! used, who they are attributed to, and what they cost. See `docs/tokens.md`.
//!
//! Rules, in short:
//!
//! * **Recognition** goes through a configurable [`TokenMapping`]: per field, an
//!   ordered list of attribute keys (record attributes over scope and resource
//!   ones). Integers may arrive as int, double or string.
//! * **Count once**: a span is a *candidate* when it is an inference call
//!   (operation `chat`, `text_completion`, `generate_content`, `embeddings`, …;
//!   OpenInference `LLM`/`EMBEDDING`; Vercel `*.doGenerate`/`*.doStream`/
//!   `*.doEmbed`), or when nothing marks its kind but it carries a model and
//!   usage. Tool spans never are. A candidate with usage is not counted when a
//!   descendant candidate with usage is (same request, or an earlier request
//!   through the [`TraceCache`]); a candidate without usage is not counted when
//!   it has a descendant candidate, a model-call ancestor with usage or a counted
//!   agent ancestor with usage.
//! * **The agent rule**: agent, workflow, chain and task spans are candidates
//!   when they report usage (a remote `invoke_agent` CLIENT span even without),
//!   so they count only when no model call below reports usage; a call below
//!   arriving later uncounts the stored agent row ([`TokenBatch::uncount`],
//!   [`TokenBatch::agents`]).
//! * **Normalisation**: input includes cache reads and writes, output includes
//!   reasoning (see [`Counts::normalise`] and `docs/tokens.md`).
//! * **One row per call** across a span and log records: each row carries its
//!   call keys ([`CallReport`]); the writer decides in PostgreSQL.
//! * **Unknown usage**: a counted call reporting no usage, or 0 input and 0
//!   output, is stored with `usage_known = false` and NULL token columns.
//! * **Attribution**: a row's own user/tenant/session (`record`), else the
//!   trace's (`trace`, from the [`TraceCache`]), else none yet (`none`).
//!
//! Over 600 lines: one pass over a request (per-record extraction, then counting
//! each call once and propagating covers over the trace) whose steps share the
//! pass's private state (`Extract`, `Counts`, `SpanFacts`); pricing is
//! [`pricing`], metric points [`metrics`].

pub mod metrics;
pub mod pricing;

use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use serde_json::Map;
use tally_config::{PricingConfig, TokenMapping, TokensConfig};
use tally_model::tokens::CallReport;
use tally_model::tokens::{token_log_id, token_span_id};
use tally_model::walk::{Context, Record, Request, Signal};
use tally_model::{AttributionSource, Outcome, TokenUsage};

use crate::attribution::{Identity, RowKey, TraceCache, TraceId, TraceScope};
use crate::fast_hash::FastMap;
use crate::otlp_value::{as_i64, as_text, hex_lower, to_json};
use pricing::{PriceTable, Usage};

/// Operation names of inference calls (lowercase).
const INFERENCE_OPERATIONS: &[&str] = &[
    "chat",
    "text_completion",
    "generate_content",
    "embeddings",
    "completion",
    "embedding",
    "rerank",
    "responses",
    "llm_request",
];
/// Operation names of agent and workflow spans (lowercase): their usage, when they
/// report one, is usually the sum of their model calls' (see [`Role::Agent`]).
const AGENT_OPERATIONS: &[&str] = &[
    "invoke_agent",
    "invoke_workflow",
    "execute_task",
    "workflow",
    "task",
    "agent",
    "agent_step",
];
/// Operation names of spans that never are model calls (lowercase).
const WRAPPER_OPERATIONS: &[&str] = &["create_agent", "execute_tool", "tool", "retrieval"];
/// Attributes that say what kind of span a record is (model call, agent, chain, …).
/// They carry no content; redaction always keeps them, or an allowlist would turn
/// wrappers into candidates and double count.
pub const ROLE_MARKERS: &[&str] = &[
    "traceloop.span.kind",
    "openinference.span.kind",
    "ai.operationId",
];

/// Content-free attributes copied into `token_usage.attributes`.
const KEPT_ATTRIBUTES: &[&str] = &[
    "gen_ai.response.id",
    "gen_ai.response.finish_reasons",
    "gen_ai.conversation.id",
    "gen_ai.agent.name",
    "gen_ai.request.max_tokens",
    "gen_ai.request.temperature",
    "server.address",
    "error.type",
    "ai.telemetry.functionId",
    "ai.response.finishReason",
    "llm.request.type",
    "traceloop.workflow.name",
];

/// What a span is, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The model call itself.
    Inference,
    /// Agent, workflow, chain, task: its usage (if any) counts only when no
    /// model call below it reports usage (the agent rule, see `docs/tokens.md`).
    Agent,
    /// Tool, retriever, guardrail, …: never a model call.
    Wrapper,
    /// Nothing says.
    Unmarked,
}

/// The result of the token pass over one export request.
#[derive(Debug, Default)]
pub struct TokenBatch {
    /// Rows to store.
    pub rows: Vec<TokenUsage>,
    /// Traces whose rows in `rows` are unattributed, with their earliest `ts`
    /// (cache keys of [`TokenBatch::scope`]).
    pub pending: Vec<(TraceId, DateTime<Utc>)>,
    /// Traces that were pending and got their identity from this request: the
    /// stored rows since `ts` are to be updated with it (cache keys of
    /// [`TokenBatch::scope`]).
    pub attribute: Vec<(TraceId, Identity, DateTime<Utc>)>,
    /// The tenant scope of the request's traces ([`TraceScope::trace`] turns
    /// the keys above back into trace ids).
    pub scope: Option<TraceScope>,
    /// Rows of models without a price.
    pub unpriced: u64,
    /// Candidates not counted (their usage is counted on a descendant).
    pub not_counted: u64,
    /// Agent rows of `rows` counted with their own usage (the agent rule): cache
    /// key of the trace, span id, row. Once the rows are committed, those whose
    /// span got covered meanwhile (a model call below reported usage) are to be
    /// deleted ([`TraceCache::is_covered`]).
    pub agents: Vec<(TraceId, [u8; 8], RowKey)>,
    /// Stored agent rows that stop counting (cache key of the trace, span id,
    /// row): a model call below them, in this request, reports usage. Delete
    /// them once this request's rows committed.
    pub uncount: Vec<(TraceId, [u8; 8], RowKey)>,
    /// Identities of this request's traces not yet shared with the other
    /// instances (cache keys of [`TokenBatch::scope`]): to be written with the
    /// request's rows, then [`TraceCache::mark_shared`].
    pub share: Vec<(TraceId, Identity)>,
    /// Traces whose records carried an identity (compacted into `share`).
    learned: Vec<TraceId>,
}

/// Recognises token usage with a mapping and prices it.
#[derive(Debug, Clone)]
pub struct TokenProcessor {
    mapping: TokenMapping,
    prices: PriceTable,
    enabled: bool,
    from_logs: bool,
    across_instances: bool,
}

/// Attribute lookup over resource → scope → record (the record wins). One is
/// refilled per record ([`Attrs::fill`]), keeping its allocations. Each value
/// remembers the level it came from (0 resource, 1 scope, 2 record), for the
/// identity rule of [`Attrs::identity_text`].
///
/// A record has a couple of dozen attributes and the pass asks for about forty
/// keys, most of them absent: the attributes are kept as a list in order, with
/// a 128-bit filter of their keys' shapes ([`shape`]) that answers most absent
/// keys without looking at the list, a 32-bit [`print`] per key compared before
/// the key, and a hash table only for long lists
/// ([`MAP_FROM`] attributes or more). Lookups behave as the table always did:
/// the last occurrence of a key with a value wins.
struct Attrs<'a> {
    /// Every attribute with a value, outermost level first, in order.
    list: Vec<(&'a str, &'a AnyValue, u8)>,
    /// The [`print`] of each key of `list`, compared before the key itself.
    prints: Vec<u32>,
    /// The [`shape`] bits of the keys of `list` (128 bits).
    shapes: [u64; 2],
    /// The table of `list` when it holds [`MAP_FROM`] attributes or more.
    map: FastMap<&'a str, (&'a AnyValue, u8)>,
}

/// From this many attributes on, a record's lookups go through a hash table.
const MAP_FROM: usize = 48;

/// A 32-bit digest of a key's length and its first, middle and last bytes:
/// keys with different prints differ. (Not seeded: a client choosing keys that
/// collide only makes its lookups compare more keys of a list shorter than
/// [`MAP_FROM`].)
#[inline]
fn print(key: &str) -> u32 {
    let b = key.as_bytes();
    let n = b.len();
    let byte = |at: Option<&u8>| u32::from(at.copied().unwrap_or(0));
    let h = (n as u32).wrapping_mul(0x9E37_79B1)
        ^ byte(b.last()).wrapping_mul(0x85EB_CA77)
        ^ byte(b.get(n / 2)).wrapping_mul(0xC2B2_AE3D)
        ^ byte(b.first()).wrapping_mul(0x27D4_EB2F);
    h.wrapping_mul(0x9E37_79B1)
}

/// Two bit positions (of 128) taken from a key's [`print`]: a key whose bits
/// are not both set in [`Attrs::shapes`] is not there.
#[inline]
fn shape(print: u32) -> [u32; 2] {
    [print >> 25, (print >> 18) & 127]
}

impl<'a> Attrs<'a> {
    fn new() -> Self {
        Attrs {
            list: Vec::new(),
            prints: Vec::new(),
            shapes: [0; 2],
            map: FastMap::default(),
        }
    }

    fn with_capacity(capacity: usize) -> Self {
        Attrs {
            list: Vec::with_capacity(capacity),
            prints: Vec::with_capacity(capacity),
            shapes: [0; 2],
            map: FastMap::default(),
        }
    }

    /// Replaces the contents with the attributes of one record.
    fn fill(&mut self, lists: [&'a [KeyValue]; 3]) {
        self.list.clear();
        self.prints.clear();
        self.map.clear();
        self.shapes = [0; 2];
        for (level, list) in (0u8..).zip(lists) {
            for kv in list {
                if let Some(value) = kv.value.as_ref() {
                    let print = print(&kv.key);
                    self.list.push((kv.key.as_str(), value, level));
                    self.prints.push(print);
                    for bit in shape(print) {
                        self.shapes[(bit >> 6) as usize & 1] |= 1 << (bit & 63);
                    }
                }
            }
        }
        if self.list.len() >= MAP_FROM {
            self.map.extend(
                self.list
                    .iter()
                    .map(|(key, value, level)| (*key, (*value, *level))),
            );
        }
    }

    /// The value of `key` and its level: its last occurrence.
    #[inline]
    fn entry(&self, key: &str) -> Option<(&'a AnyValue, u8)> {
        let print = print(key);
        let set = |bit: u32| self.shapes[(bit >> 6) as usize & 1] & (1 << (bit & 63)) != 0;
        if !shape(print).into_iter().all(set) {
            return None;
        }
        if !self.map.is_empty() {
            return self.map.get(key).copied();
        }
        self.prints
            .iter()
            .zip(&self.list)
            .rev()
            .find(|(p, (k, _, _))| **p == print && *k == key)
            .map(|(_, (_, value, level))| (*value, *level))
    }

    /// Calls `f` with each distinct key that `wanted` accepts, once, with the
    /// value and level of its last occurrence (in no particular order). A long
    /// list goes through its table: the list's duplicate check is quadratic.
    fn for_each_distinct(
        &self,
        wanted: impl Fn(&str) -> bool,
        mut f: impl FnMut(&'a str, &'a AnyValue, u8),
    ) {
        if !self.map.is_empty() {
            for (key, (value, level)) in &self.map {
                if wanted(key) {
                    f(key, value, *level);
                }
            }
            return;
        }
        for (i, (key, value, level)) in self.list.iter().enumerate() {
            if wanted(key) && !self.list[i + 1..].iter().any(|(k, _, _)| k == key) {
                f(key, value, *level);
            }
        }
    }

    fn get(&self, key: &str) -> Option<&'a AnyValue> {
        self.entry(key).map(|(value, _)| value)
    }

    /// An identity field (user, tenant, session): the value from the innermost level
    /// that spells it in any way (the record's own attributes over its scope's over its
    /// resource's); within one level the first of `keys`, then the metadata keys
    /// (`prefixes` in order, then `names` in order).
    fn identity_text(
        &self,
        keys: &[String],
        prefixes: &[String],
        names: &[String],
    ) -> Option<String> {
        let mut best: Option<(u8, String)> = None;
        for key in keys {
            let Some((value, level)) = self.entry(key) else {
                continue;
            };
            if best.as_ref().is_some_and(|(b, _)| *b >= level) {
                continue;
            }
            if let Some(text) = as_text(Some(value)) {
                best = Some((level, text));
            }
        }
        const RECORD: u8 = 2;
        if best.as_ref().is_some_and(|(level, _)| *level == RECORD) {
            return best.map(|(_, text)| text);
        }
        match (best, self.metadata(prefixes, names)) {
            (Some((level, text)), Some((meta_level, _))) if level >= meta_level => Some(text),
            (_, Some((_, text))) => Some(text),
            (best, None) => best.map(|(_, text)| text),
        }
    }

    fn text(&self, keys: &[String]) -> Option<String> {
        keys.iter().find_map(|k| as_text(self.get(k)))
    }

    /// The first spelling that holds a token count: an integer (or integral double or
    /// numeric string) that is not negative. A negative or non-numeric value is ignored
    /// and the next spelling is tried.
    fn count(&self, keys: &[String]) -> Option<i64> {
        keys.iter()
            .find_map(|k| as_i64(self.get(k)).filter(|n| *n >= 0))
    }

    /// The metadata key holding a value, with its level: the innermost level first,
    /// then prefixes in order, then names in order; found without building
    /// candidate keys.
    fn metadata(&self, prefixes: &[String], names: &[String]) -> Option<(u8, String)> {
        // (level, prefix index, name rank): higher level, then lower indexes win.
        let mut best: Option<((u8, usize, usize), String)> = None;
        let better = |a: (u8, usize, usize), b: (u8, usize, usize)| {
            a.0 > b.0 || (a.0 == b.0 && (a.1, a.2) < (b.1, b.2))
        };
        let prefixed = |key: &str| prefixes.iter().any(|p| key.starts_with(p.as_str()));
        self.for_each_distinct(prefixed, |key, value, level| {
            for (p, prefix) in prefixes.iter().enumerate() {
                let Some(name) = key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let Some(rank) = names.iter().position(|n| n == name) else {
                    continue;
                };
                let order = (level, p, rank);
                if best.as_ref().is_some_and(|(b, _)| !better(order, *b)) {
                    continue;
                }
                if let Some(text) = as_text(Some(value)) {
                    best = Some((order, text));
                }
            }
        });
        best.map(|((level, _, _), text)| (level, text))
    }
}

/// One record's token facts, before counting decisions.
struct Extract {
    role: Role,
    operation: Option<String>,
    provider: Option<String>,
    request_model: Option<String>,
    response_model: Option<String>,
    input: Option<i64>,
    output: Option<i64>,
    cache_read: Option<i64>,
    cache_write: Option<i64>,
    reasoning: Option<i64>,
    total: Option<i64>,
    identity: Identity,
    service: Option<String>,
    kept: Map<String, serde_json::Value>,
    time_to_first_token_ms: Option<f64>,
    /// The sender reports Anthropic's raw input count (without cached tokens):
    /// see [`raw_anthropic_input`].
    raw_input: bool,
    /// The sender reports Gemini's candidates count (without thinking tokens)
    /// as output: see [`thoughts_outside_output`].
    thoughts_outside: bool,
    /// A remote agent call: `invoke_agent` with span kind CLIENT.
    remote_agent: bool,
}

impl Extract {
    /// Whether the record can become a row: rows are built for span
    /// candidates and for counted log records (a superset of each).
    fn may_count(&self) -> bool {
        matches!(self.role, Role::Inference | Role::Agent)
            || (self.role != Role::Wrapper && self.has_model() && self.usage_known())
    }
}

/// The time to first token of a span that reports none in its attributes:
/// from the span's start to the earliest of its events named in `names`
/// (streaming first-chunk events, `processors.tokens.mapping.
/// time_to_first_token_events`), in ms. Events without a time or before the
/// start are left out; `None` without such an event or without a start.
fn first_event_ms(events: &[Event], names: &[String], start: u64) -> Option<f64> {
    if start == 0 || names.is_empty() {
        return None;
    }
    events
        .iter()
        .filter(|e| e.time_unix_nano >= start && names.contains(&e.name))
        .map(|e| e.time_unix_nano)
        .min()
        .map(|first| (first - start) as f64 / 1e6)
}

/// Whether the sender is a family known to report Anthropic's raw `input_tokens`
/// (excluding cache reads and writes) under the convention's name, which
/// includes them:
///
/// * OpenLIT's Anthropic instrumentation (instrumentation scope `openlit…`, or
///   resource `telemetry.sdk.name = openlit`) with provider `anthropic`;
/// * the Vercel AI SDK 5 (scope `ai`, or `ai.operationId` present) with an Anthropic provider
///   (`anthropic.messages`, `vertex.anthropic.messages`, …) and no
///   `ai.usage.inputTokenDetails.*` (SDK 6 sends those, and a normalised input).
fn raw_anthropic_input(attrs: &Attrs<'_>, scope_name: &str, provider: Option<&str>) -> bool {
    let anthropic = provider.is_some_and(|p| p.to_ascii_lowercase().contains("anthropic"));
    if !anthropic {
        return false;
    }
    let openlit = scope_name.starts_with("openlit")
        || as_text(attrs.get("telemetry.sdk.name")).is_some_and(|n| n == "openlit");
    // A custom tracer (`experimental_telemetry.tracer`) renames the scope; the
    // SDK's own attributes still tell it.
    let vercel = scope_name == "ai" || attrs.get("ai.operationId").is_some();
    let vercel5 = vercel
        && attrs
            .get("ai.usage.inputTokenDetails.noCacheTokens")
            .is_none()
        && attrs
            .get("ai.usage.inputTokenDetails.cacheReadTokens")
            .is_none()
        && attrs
            .get("ai.usage.inputTokenDetails.cacheWriteTokens")
            .is_none();
    openlit || vercel5
}

/// Whether the sender is a family known to report Gemini's `candidatesTokenCount`
/// (which excludes thinking tokens) as output tokens, where the convention counts
/// every output token:
///
/// * OpenLIT (scope `openlit…` or resource `telemetry.sdk.name = openlit`) with a
///   Gemini provider: it reports the thinking tokens as reasoning tokens;
/// * OpenLLMetry's Google GenAI instrumentation (scope
///   `opentelemetry.instrumentation.google_generativeai`): its total counts
///   them, its output does not, and it reports no reasoning count.
fn thoughts_outside_output(attrs: &Attrs<'_>, scope_name: &str, provider: Option<&str>) -> bool {
    let gemini = provider.is_some_and(|p| {
        let p = p.to_ascii_lowercase();
        p.contains("gemini") || p.starts_with("gcp.") || p.contains("google") || p == "vertex_ai"
    });
    if !gemini {
        return false;
    }
    let openlit = scope_name.starts_with("openlit")
        || as_text(attrs.get("telemetry.sdk.name")).is_some_and(|n| n == "openlit");
    openlit || scope_name == "opentelemetry.instrumentation.google_generativeai"
}

/// Token counts normalised to the GenAI conventions: `input` includes cache reads
/// and writes, `output` includes reasoning, `total` = input + output unless the
/// sender said otherwise. See `docs/tokens.md` ("Normalisation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    input: Option<i64>,
    output: Option<i64>,
    cache_read: Option<i64>,
    cache_write: Option<i64>,
    reasoning: Option<i64>,
    total: Option<i64>,
}

impl Counts {
    /// `raw_input`: the family is known to report input without cached tokens;
    /// `thoughts_outside`: its output count leaves thinking tokens out.
    fn normalise(mut self, raw_input: bool, thoughts_outside: bool) -> Counts {
        let cached = self
            .cache_read
            .unwrap_or(0)
            .saturating_add(self.cache_write.unwrap_or(0));
        let input = self.input.unwrap_or(0);
        let output = self.output.unwrap_or(0);
        let reasoning = self.reasoning.unwrap_or(0);
        let mut recompute_total = false;
        if thoughts_outside && self.output.is_some() {
            // The family's reasoning count, else what its total holds beyond
            // input + output, is output the count left out.
            let thinking = match self.reasoning {
                Some(reasoning) if reasoning > 0 => reasoning,
                _ => self
                    .total
                    .map_or(0, |t| t.saturating_sub(input.saturating_add(output)))
                    .max(0),
            };
            if thinking > 0 {
                self.output = Some(output.saturating_add(thinking));
                self.reasoning = Some(thinking);
                recompute_total = true;
            }
        }
        // Thinking tokens outside output (OpenLLMetry's Google GenAI: output
        // without thoughts, total with them): the total exceeds input + output by
        // at least the reasoning count. They are output tokens.
        if !recompute_total
            && reasoning > 0
            && self.output.is_some()
            && self
                .total
                .is_some_and(|t| t.saturating_sub(input.saturating_add(output)) >= reasoning)
        {
            self.output = Some(output.saturating_add(reasoning));
            recompute_total = true;
        }
        // Input without cached tokens: a family known to send Anthropic's raw
        // count, or (any family) cached counts exceeding the input count.
        if cached > 0 && self.input.is_some() && (raw_input || cached > input) {
            self.input = Some(input.saturating_add(cached));
            recompute_total = true;
        }
        if recompute_total {
            self.total = Some(
                self.input
                    .unwrap_or(0)
                    .saturating_add(self.output.unwrap_or(0)),
            );
        }
        self
    }
}

impl Extract {
    fn usage_known(&self) -> bool {
        // Counts come from clients (non-negative, up to i64::MAX): saturate, never overflow.
        let sum = [self.input, self.output, self.total]
            .into_iter()
            .flatten()
            .fold(0i64, i64::saturating_add);
        (self.input.is_some() || self.output.is_some() || self.total.is_some()) && sum > 0
    }

    fn has_model(&self) -> bool {
        self.request_model.is_some() || self.response_model.is_some()
    }

    /// Whether the record may be a counted model call.
    fn candidate(&self) -> bool {
        match self.role {
            Role::Inference => true,
            Role::Agent => self.usage_known() || self.remote_agent,
            Role::Wrapper => false,
            Role::Unmarked => self.has_model() && self.usage_known(),
        }
    }
}

fn role(attrs: &Attrs<'_>, operation: Option<&str>) -> Role {
    let lower = |v: Option<&AnyValue>| as_text(v).map(|s| s.to_ascii_lowercase());
    if let Some(kind) = lower(attrs.get("traceloop.span.kind")) {
        match kind.as_str() {
            "workflow" | "task" | "agent" => return Role::Agent,
            "tool" => return Role::Wrapper,
            _ => {}
        }
    }
    if let Some(kind) = lower(attrs.get("openinference.span.kind")) {
        return match kind.as_str() {
            "llm" | "embedding" => Role::Inference,
            "agent" | "chain" => Role::Agent,
            _ => Role::Wrapper,
        };
    }
    if let Some(op) = lower(attrs.get("ai.operationId")) {
        return vercel_role(&op);
    }
    let Some(op) = operation.map(str::to_ascii_lowercase) else {
        return Role::Unmarked;
    };
    if op.starts_with("ai.") {
        return vercel_role(&op);
    }
    if INFERENCE_OPERATIONS.contains(&op.as_str()) {
        Role::Inference
    } else if AGENT_OPERATIONS.contains(&op.as_str()) {
        Role::Agent
    } else if WRAPPER_OPERATIONS.contains(&op.as_str()) {
        Role::Wrapper
    } else {
        Role::Unmarked
    }
}

/// Vercel AI SDK: `ai.generateText.doGenerate` / `ai.streamText.doStream` /
/// `ai.embed.doEmbed` are the calls; `ai.generateText`, `ai.streamText`, … sum
/// their steps (agent-like); `ai.toolCall` is a tool.
fn vercel_role(op: &str) -> Role {
    if op.ends_with(".dogenerate") || op.ends_with(".dostream") || op.ends_with(".doembed") {
        Role::Inference
    } else if op == "ai.toolcall" {
        Role::Wrapper
    } else {
        Role::Agent
    }
}

fn timestamp(nanos: u64, fallback: DateTime<Utc>) -> DateTime<Utc> {
    if nanos == 0 {
        return fallback;
    }
    let secs = (nanos / 1_000_000_000) as i64;
    let sub = (nanos % 1_000_000_000) as u32;
    DateTime::from_timestamp(secs, sub).unwrap_or(fallback)
}

fn hex_id(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty() && bytes.iter().any(|b| *b != 0)).then(|| hex_lower(bytes))
}

fn trace_key(bytes: &[u8]) -> Option<TraceId> {
    let id: TraceId = bytes.try_into().ok()?;
    id.iter().any(|b| *b != 0).then_some(id)
}

fn span_key(bytes: &[u8]) -> Option<[u8; 8]> {
    let id: [u8; 8] = bytes.try_into().ok()?;
    id.iter().any(|b| *b != 0).then_some(id)
}

/// A non-negative, finite number (of seconds or milliseconds, as the key
/// says) sent as a double, an integer or text.
fn seconds(value: Option<&AnyValue>) -> Option<f64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let seconds = match value?.value.as_ref()? {
        Value::DoubleValue(d) => *d,
        Value::IntValue(i) => *i as f64,
        Value::StringValue(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds)
}

/// A span of the request, for the parent/child rules.
struct SpanFacts {
    trace: Option<TraceId>,
    span: Option<[u8; 8]>,
    parent: Option<[u8; 8]>,
    extract: Extract,
    ts: DateTime<Utc>,
    duration_ms: Option<f64>,
    outcome: Outcome,
    /// The trace and span ids as sent; left empty (not allocated) unless the
    /// span is a candidate, the only spans whose ids are read again.
    trace_bytes: Vec<u8>,
    span_bytes: Vec<u8>,
}

impl TokenProcessor {
    /// The processor of `processors.tokens`, pricing with `pricing`.
    pub fn new(config: &TokensConfig, pricing: &PricingConfig) -> TokenProcessor {
        TokenProcessor {
            mapping: config.effective_mapping(),
            prices: PriceTable::from_config(pricing),
            enabled: config.enabled,
            from_logs: config.from_logs,
            across_instances: config.attribution_across_instances,
        }
    }

    /// The built-in mapping and prices.
    pub fn with_defaults() -> TokenProcessor {
        TokenProcessor::new(&TokensConfig::default(), &PricingConfig::default())
    }

    /// The price table in effect.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The identity (user, tenant, session) a record carries under the mapping.
    /// Whether trace identities and pending marks are shared with the other
    /// instances (`processors.tokens.attribution_across_instances`).
    pub fn across_instances(&self) -> bool {
        self.across_instances
    }

    fn identity(&self, attrs: &Attrs<'_>) -> Identity {
        let m = &self.mapping;
        Identity {
            user: attrs.identity_text(&m.user, &m.metadata_prefixes, &m.metadata_user),
            tenant: attrs.identity_text(&m.tenant, &m.metadata_prefixes, &m.metadata_tenant),
            session: attrs.identity_text(&m.session, &m.metadata_prefixes, &m.metadata_session),
        }
    }

    /// A record's token facts. What decides whether the record can become a
    /// row (role, models, usage) and its identity (learned for every record)
    /// are always read; the rest (provider, cache and reasoning counts,
    /// service, kept attributes) only when it can: most records are not model
    /// calls, and their rows would never be built.
    fn extract(&self, attrs: &Attrs<'_>, name: Option<&str>, scope_name: &str) -> Extract {
        let m = &self.mapping;
        let operation = attrs.text(&m.operation);
        let mut extract = Extract {
            role: role(attrs, operation.as_deref()),
            operation,
            provider: None,
            request_model: attrs.text(&m.request_model),
            response_model: attrs.text(&m.response_model),
            input: attrs.count(&m.input),
            output: attrs.count(&m.output),
            cache_read: None,
            cache_write: None,
            reasoning: None,
            total: attrs.count(&m.total),
            identity: self.identity(attrs),
            service: None,
            kept: Map::new(),
            raw_input: false,
            thoughts_outside: false,
            remote_agent: false,
            time_to_first_token_ms: None,
        };
        if !extract.may_count() {
            return extract;
        }
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            extract
                .kept
                .insert("span.name".into(), serde_json::Value::String(name.into()));
        }
        for key in KEPT_ATTRIBUTES {
            if let Some(value) = attrs.get(key) {
                extract.kept.insert((*key).into(), to_json(Some(value)));
            }
        }
        extract.provider = attrs.text(&m.provider);
        extract.cache_read = attrs.count(&m.cache_read);
        extract.cache_write = attrs.count(&m.cache_write);
        extract.reasoning = attrs.count(&m.reasoning);
        extract.service = as_text(attrs.get("service.name"));
        extract.raw_input = raw_anthropic_input(attrs, scope_name, extract.provider.as_deref());
        extract.thoughts_outside =
            thoughts_outside_output(attrs, scope_name, extract.provider.as_deref());
        // The mapping's keys in seconds first, then those in milliseconds;
        // the first usable value wins.
        extract.time_to_first_token_ms = m
            .time_to_first_token
            .iter()
            .find_map(|key| seconds(attrs.get(key)))
            .map(|s| s * 1000.0)
            .or_else(|| {
                m.time_to_first_token_ms
                    .iter()
                    .find_map(|key| seconds(attrs.get(key)))
            });
        extract
    }

    /// Builds the row of a counted record: usage, cost, attribution.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        extract: Extract,
        id: uuid::Uuid,
        ts: DateTime<Utc>,
        trace: Option<TraceId>,
        trace_bytes: &[u8],
        span_bytes: &[u8],
        outcome: Outcome,
        duration_ms: Option<f64>,
        from_span: bool,
        cache: &TraceCache,
        bound: Option<&str>,
        out: &mut TokenBatch,
    ) {
        let known = extract.usage_known();
        let Extract {
            operation,
            provider,
            request_model,
            response_model,
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
            total,
            identity,
            service,
            kept,
            raw_input,
            thoughts_outside,
            time_to_first_token_ms,
            ..
        } = extract;
        let (input, output, cache_read, cache_write, reasoning, total) = if known {
            let counts = Counts {
                input,
                output,
                cache_read,
                cache_write,
                reasoning,
                total,
            }
            .normalise(raw_input, thoughts_outside);
            let total = counts
                .total
                .or_else(|| match (counts.input, counts.output) {
                    (None, None) => None,
                    (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
                });
            (
                counts.input,
                counts.output,
                counts.cache_read,
                counts.cache_write,
                counts.reasoning,
                total,
            )
        } else {
            (None, None, None, None, None, None)
        };
        let model = response_model.clone().or_else(|| request_model.clone());
        let cost_usd = match (&model, known) {
            (Some(model), true) => {
                match self
                    .prices
                    .lookup(model, provider.as_deref(), ts.date_naive())
                {
                    Some(price) => Some(PriceTable::cost(
                        price,
                        Usage {
                            input: input.unwrap_or(0),
                            output: output.unwrap_or(0),
                            cache_read: cache_read.unwrap_or(0),
                            cache_write: cache_write.unwrap_or(0),
                        },
                    )),
                    None => {
                        out.unpriced += 1;
                        None
                    }
                }
            }
            (None, true) => {
                out.unpriced += 1;
                None
            }
            (_, false) => None,
        };
        // A row of a tenant-bound sender has the sender's tenant: only the user
        // can come from the trace. A row naming another tenant keeps what it
        // says (the pipeline quarantines it), never the trace's identity.
        let own = match bound {
            Some(tenant) => {
                identity.user.is_some()
                    || identity.tenant.as_deref().is_some_and(|own| own != tenant)
            }
            None => identity.attributes(),
        };
        let (identity, attribution_source) = if own {
            (identity, AttributionSource::Record)
        } else if let Some(mut from_trace) = trace.and_then(|t| cache.lookup(&t)) {
            if identity.session.is_some() {
                from_trace.session = identity.session;
            }
            (from_trace, AttributionSource::Trace)
        } else {
            if let Some(trace) = trace {
                // Compacted to one entry per trace by `finish`.
                out.pending.push((trace, ts));
            }
            (identity, AttributionSource::None)
        };
        let trace_hex = hex_id(trace_bytes);
        let span_hex = hex_id(span_bytes);
        let report = CallReport {
            from_span,
            scope: bound.unwrap_or_default().to_owned(),
            span_key: match (&trace_hex, &span_hex) {
                (Some(t), Some(s)) => Some(format!("s{t}{s}")),
                _ => None,
            },
            response_key: kept
                .get("gen_ai.response.id")
                .and_then(|v| v.as_str())
                .filter(|id| !id.is_empty())
                .map(|id| format!("r{id}")),
        };
        out.rows.push(TokenUsage {
            report,
            id,
            ts,
            tenant_id: identity.tenant,
            user_id: identity.user,
            session_id: identity.session,
            service,
            trace_id: trace_hex,
            span_id: span_hex,
            provider,
            operation,
            request_model,
            response_model,
            model,
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            reasoning_tokens: reasoning,
            total_tokens: total,
            usage_known: known,
            cost_usd,
            outcome,
            duration_ms,
            time_to_first_token_ms,
            attribution_source,
            attributes: kept,
        });
    }

    /// Learns identities into `cache`, noting pending traces that are now attributed.
    fn learn(
        &self,
        cache: &TraceCache,
        trace: Option<TraceId>,
        identity: &Identity,
        tenant: Option<&str>,
        out: &mut TokenBatch,
    ) {
        if let Some(trace) = learnable(trace, identity, tenant) {
            let answer = cache.learn(trace, identity);
            self.learned(trace, identity, answer, out);
        }
    }

    /// Notes what [`TraceCache::learn`] answered for `identity` (a pending
    /// trace now attributed) and the trace as one to share.
    fn learned(
        &self,
        trace: TraceId,
        identity: &Identity,
        answer: Option<(Identity, DateTime<Utc>)>,
        out: &mut TokenBatch,
    ) {
        if let Some((identity, since)) = answer {
            out.attribute.push((trace, identity, since));
        }
        if self.across_instances && identity.attributes() && out.learned.last() != Some(&trace) {
            out.learned.push(trace);
        }
    }

    /// The token rows of a `TraceService/Export` request. `received_at` stands
    /// in for a missing start time.
    pub fn traces(
        &self,
        request: &ExportTraceServiceRequest,
        received_at: DateTime<Utc>,
        cache: &TraceCache,
        tenant: Option<&str>,
    ) -> TokenBatch {
        self.walk(request, received_at, cache, tenant)
    }

    /// The token rows of a `LogsService/Export` request: a log record counts when
    /// it carries a model and usage (and is not an agent/workflow/tool record).
    pub fn logs(
        &self,
        request: &ExportLogsServiceRequest,
        received_at: DateTime<Utc>,
        cache: &TraceCache,
        tenant: Option<&str>,
    ) -> TokenBatch {
        self.walk(request, received_at, cache, tenant)
    }

    /// The token rows of a request (one [`TokenPass`] over the shared walk).
    fn walk<Q: Request>(
        &self,
        request: &Q,
        received_at: DateTime<Utc>,
        cache: &TraceCache,
        tenant: Option<&str>,
    ) -> TokenBatch {
        let mut pass = self.pass(received_at, cache, tenant);
        if self.enabled {
            if <Q::Record as Record>::SIGNAL == Signal::Traces {
                pass.spans.reserve(request.record_count());
            }
            let mut attrs = Attrs::new();
            request.walk(|_, context, record| pass.record_with(&mut attrs, context, record));
        }
        pass.finish()
    }

    /// A token pass over one request, fed one record at a time
    /// ([`TokenPass::record`]), for a walk that does other work on each record
    /// too (a fused pass; the pipeline has none yet). `received_at` stands in for a missing
    /// time; `tenant` is the sender's bound tenant.
    pub fn pass<'p>(
        &'p self,
        received_at: DateTime<Utc>,
        cache: &'p TraceCache,
        tenant: Option<&'p str>,
    ) -> TokenPass<'p> {
        let scope = cache.scope(tenant);
        TokenPass {
            processor: self,
            cache,
            tenant,
            received_at,
            scope,
            out: TokenBatch {
                scope: Some(scope),
                ..TokenBatch::default()
            },
            spans: Vec::new(),
            encoded: Vec::new(),
        }
    }
}

/// Token extraction over one request, one record at a time: log records are
/// turned into rows as they come; spans are collected, and their identities
/// learned and the spans counted once all are known ([`TokenPass::finish`]).
pub struct TokenPass<'p> {
    processor: &'p TokenProcessor,
    cache: &'p TraceCache,
    tenant: Option<&'p str>,
    received_at: DateTime<Utc>,
    scope: TraceScope,
    out: TokenBatch,
    spans: Vec<SpanFacts>,
    /// A log record's encoding, for its row id (the allocation is kept).
    encoded: Vec<u8>,
}

impl std::fmt::Debug for TokenPass<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPass")
            .field("spans", &self.spans.len())
            .field("rows", &self.out.rows.len())
            .finish_non_exhaustive()
    }
}

impl TokenPass<'_> {
    /// Extracts the token facts of one span or log record under its resource and scope.
    pub fn record<R: Record>(&mut self, context: Context<'_>, record: &R) {
        if !self.processor.enabled {
            return;
        }
        let mut attrs = Attrs::with_capacity(
            context.resource.len() + context.scope.len() + record.attributes().len(),
        );
        self.record_with(&mut attrs, context, record);
    }

    /// [`TokenPass::record`] with a lookup table kept from record to record.
    fn record_with<'a, R: Record>(
        &mut self,
        attrs: &mut Attrs<'a>,
        context: Context<'a>,
        record: &'a R,
    ) {
        let processor = self.processor;
        let (cache, tenant) = (self.cache, self.tenant);
        attrs.fill(context.levels(record.attributes()));
        let trace = trace_key(record.trace_id()).map(|t| self.scope.key(t));
        let outcome = match record.status_outcome() {
            Outcome::Unknown if attrs.get("error.type").is_some() => Outcome::Failure,
            outcome => outcome,
        };
        let ts = timestamp(record.time_unix_nano(), self.received_at);
        match R::SIGNAL {
            Signal::Traces => {
                let mut extract = processor.extract(attrs, Some(record.name()), context.scope_name);
                extract.remote_agent = extract.role == Role::Agent
                    && record.kind() == SpanKind::Client
                    && extract
                        .operation
                        .as_deref()
                        .is_some_and(|op| op.eq_ignore_ascii_case("invoke_agent"));
                // Learned with the request's other spans in `finish`, under
                // one lock: nothing reads the cache for spans before that.
                let start = record.time_unix_nano();
                if extract.time_to_first_token_ms.is_none() && extract.may_count() {
                    extract.time_to_first_token_ms = first_event_ms(
                        record.events(),
                        &processor.mapping.time_to_first_token_events,
                        start,
                    );
                }
                let duration_ms = record
                    .end_time_unix_nano()
                    .filter(|end| start > 0 && *end >= start)
                    .map(|end| (end - start) as f64 / 1e6);
                // Only a candidate's ids are read again (its row and row id).
                let candidate = extract.candidate();
                self.spans.push(SpanFacts {
                    trace,
                    span: span_key(record.span_id()),
                    parent: span_key(record.parent_span_id()),
                    ts,
                    duration_ms,
                    outcome,
                    trace_bytes: if candidate {
                        record.trace_id().to_vec()
                    } else {
                        Vec::new()
                    },
                    span_bytes: if candidate {
                        record.span_id().to_vec()
                    } else {
                        Vec::new()
                    },
                    extract,
                });
            }
            Signal::Logs => {
                let mut extract = processor.extract(attrs, None, context.scope_name);
                processor.learn(cache, trace, &extract.identity, tenant, &mut self.out);
                let counts = processor.from_logs
                    && matches!(extract.role, Role::Inference | Role::Unmarked)
                    && extract.has_model()
                    && extract.usage_known();
                if !counts {
                    return;
                }
                let name = record.name();
                if !name.is_empty() {
                    extract
                        .kept
                        .insert("event.name".into(), serde_json::Value::String(name.into()));
                }
                let id = match crate::classify::explicit_event_id(record.attributes()) {
                    Some(event_id) => tally_model::ids::token_event_id(&event_id),
                    None => {
                        self.encoded.clear();
                        // Encoding into a Vec cannot fail: it grows as needed.
                        let _ = record.encode(&mut self.encoded);
                        token_log_id(extract.service.as_deref().unwrap_or(""), &self.encoded)
                    }
                };
                processor.row(
                    extract,
                    id,
                    ts,
                    trace,
                    record.trace_id(),
                    record.span_id(),
                    outcome,
                    None,
                    false,
                    cache,
                    tenant,
                    &mut self.out,
                );
            }
        }
    }

    /// Counts the spans once (the parent/child and agent rules) and builds
    /// their rows; the batch of the whole request.
    pub fn finish(self) -> TokenBatch {
        let TokenPass {
            processor,
            cache,
            tenant,
            mut out,
            spans,
            ..
        } = self;
        if spans.is_empty() {
            return out.finish(cache);
        }
        // The spans' identities, in order, as `record` would have learned them one by one.
        let identities = spans.iter().filter_map(|s| {
            learnable(s.trace, &s.extract.identity, tenant).map(|t| (t, &s.extract.identity))
        });
        cache.learn_all(identities, |trace, identity, answer| {
            processor.learned(trace, identity, answer, &mut out)
        });
        let counted = count_once(&spans, cache, &mut out);
        for (facts, counted) in spans.into_iter().zip(counted) {
            if !facts.extract.candidate() {
                continue;
            }
            if !counted {
                out.not_counted += 1;
                continue;
            }
            let id = token_span_id(&facts.trace_bytes, &facts.span_bytes);
            processor.row(
                facts.extract,
                id,
                facts.ts,
                facts.trace,
                &facts.trace_bytes,
                &facts.span_bytes,
                facts.outcome,
                facts.duration_ms,
                true,
                cache,
                tenant,
                &mut out,
            );
        }
        out.finish(cache)
    }
}

impl TokenBatch {
    /// One pending entry per trace, with its earliest `ts`.
    fn finish(mut self, cache: &TraceCache) -> TokenBatch {
        self.pending.sort_unstable();
        self.pending.dedup_by_key(|(trace, _)| *trace);
        let mut learned = std::mem::take(&mut self.learned);
        learned.sort_unstable();
        learned.dedup();
        self.share = learned
            .into_iter()
            .filter_map(|trace| cache.unshared(&trace).map(|identity| (trace, identity)))
            .collect();
        self
    }
}

/// The trace whose identity a record's `identity` may teach the cache, for a
/// sender bound to `tenant`.
fn learnable(trace: Option<TraceId>, identity: &Identity, tenant: Option<&str>) -> Option<TraceId> {
    let trace = trace?;
    if let Some(tenant) = tenant {
        if identity.tenant.as_deref().is_some_and(|own| own != tenant) {
            // A record naming another tenant than its sender's: the
            // pipeline quarantines it (`tenant_mismatch`); never learned.
            return None;
        }
        // The tenant is the sender's anyway: only a user attributes.
        identity.user.as_ref()?;
    }
    Some(trace)
}

/// Most parent links followed from one span (guards against cycles).
const MAX_DEPTH: usize = 64;

/// Which spans count, by the parent/child rules and the agent rule (see the
/// module docs); updates the cache's covered spans for later requests, notes the
/// agent rows counted (`out.agents`) and the stored ones that stop counting
/// (`out.uncount`).
fn count_once(spans: &[SpanFacts], cache: &TraceCache, out: &mut TokenBatch) -> Vec<bool> {
    let index: FastMap<(TraceId, [u8; 8]), usize> = spans
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some(((s.trace?, s.span?), i)))
        .collect();
    let parent_of = |i: usize| -> Option<usize> {
        let s = &spans[i];
        index.get(&(s.trace?, s.parent?)).copied()
    };
    // Covers of earlier requests flow up through this request's spans first, so
    // that a span whose descendant was counted before is not counted now.
    propagate_covers(spans, cache, out);
    let candidate: Vec<bool> = spans.iter().map(|s| s.extract.candidate()).collect();
    let agent: Vec<bool> = spans
        .iter()
        .map(|s| s.extract.role == Role::Agent)
        .collect();
    let known: Vec<bool> = spans
        .iter()
        .zip(&candidate)
        .map(|(s, c)| *c && s.extract.usage_known())
        .collect();
    let mut known_below = vec![false; spans.len()];
    let mut any_below = vec![false; spans.len()];
    // A model-call ancestor (not an agent) with usage.
    let mut call_above = vec![false; spans.len()];
    for i in 0..spans.len() {
        if !candidate[i] {
            continue;
        }
        let mut at = i;
        for _ in 0..MAX_DEPTH {
            let Some(p) = parent_of(at) else { break };
            if p == i {
                break;
            }
            any_below[p] = true;
            known_below[p] |= known[i];
            call_above[i] |= known[p] && !agent[p];
            at = p;
        }
    }
    let covered = |s: &SpanFacts| matches!((s.trace, s.span), (Some(t), Some(sp)) if cache.is_covered(&t, &sp));
    // Spans with usage first: an agent's decision needs only its descendants.
    let mut counted: Vec<bool> = (0..spans.len())
        .map(|i| candidate[i] && known[i] && !known_below[i] && !covered(&spans[i]))
        .collect();
    // Without usage: not when something below is a candidate, nor under a model
    // call reporting usage, nor under a counted agent reporting usage.
    for i in 0..spans.len() {
        if !candidate[i] || known[i] || any_below[i] || call_above[i] || covered(&spans[i]) {
            continue;
        }
        let mut under_counted_agent = false;
        let mut at = i;
        for _ in 0..MAX_DEPTH {
            let Some(p) = parent_of(at) else { break };
            if p == i {
                break;
            }
            under_counted_agent |= agent[p] && counted[p];
            at = p;
        }
        counted[i] = !under_counted_agent;
    }
    // Agent rows counted: remembered with their row, and the parent links of
    // their trace from now on, so that a late model call below uncounts them.
    for (i, s) in spans.iter().enumerate() {
        if !(counted[i] && agent[i]) {
            continue;
        }
        let (Some(trace), Some(span)) = (s.trace, s.span) else {
            continue;
        };
        let row = (s.ts, token_span_id(&s.trace_bytes, &s.span_bytes));
        cache.count_agent(trace, span, row);
        out.agents.push((trace, span, row));
    }
    for s in spans {
        if let (Some(trace), Some(span), Some(parent)) = (s.trace, s.span, s.parent) {
            cache.link(&trace, span, parent);
        }
    }
    // Remember, for later requests, the ancestors of what was counted here.
    for (i, s) in spans.iter().enumerate() {
        let (Some(trace), Some(parent)) = (s.trace, s.parent) else {
            continue;
        };
        if counted[i] && known[i] {
            let met = cache.cover(trace, parent);
            out.uncount
                .extend(met.into_iter().map(|(span, row)| (trace, span, row)));
        }
    }
    propagate_covers(spans, cache, out);
    counted
}

/// Lets covers flow up the parent chains of this request's spans, whatever their
/// order; agents of earlier requests met on the way stop counting.
fn propagate_covers(spans: &[SpanFacts], cache: &TraceCache, out: &mut TokenBatch) {
    for _ in 0..MAX_DEPTH {
        let mut changed = false;
        for s in spans {
            let (Some(trace), Some(span), Some(parent)) = (s.trace, s.span, s.parent) else {
                continue;
            };
            if cache.is_covered(&trace, &span) && !cache.is_covered(&trace, &parent) {
                let met = cache.cover(trace, parent);
                out.uncount
                    .extend(met.into_iter().map(|(span, row)| (trace, span, row)));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

#[cfg(test)]
mod tests;
