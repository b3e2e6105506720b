//! Which rule an attribute key falls under.
//!
//! Built-in lists (exact keys, prefixes and last-segment names) plus the keys
//! added in `processors.redact.keys`. Classification is allocation-free.

use crate::fast_hash::FastMap as FnvMap;

use tally_config::RedactConfig;

/// What a key's value is, as far as redaction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyClass {
    /// Nothing special: string values are scanned.
    Plain,
    /// A key Tally needs (kept by the allowlist and the record cap); scanned.
    Needed,
    /// An identity column (user, tenant, session): kept, an email in it is hashed.
    Identity,
    /// Prompt/completion/message content: the value is dropped whole.
    Content,
    /// A secret by its name (`password`, `authorization`, …): the value is dropped whole.
    Secret,
    /// An IP address (or a client host): the value is hashed whole.
    Ip,
    /// A file name or path: hashed, extension kept.
    File,
    /// A `*version` key: scanned, but a value that parses as an IP is left alone.
    Version,
}

/// Identity columns: kept, an email in them becomes a keyed hash.
const IDENTITY: &[&str] = &[
    "enduser.id",
    "user.id",
    "tenant.id",
    "company.id",
    "organization.id",
    "session.id",
    "activity.resource.id",
];

/// Keys Tally reads (activity and token ledger); always kept.
const NEEDED_EXACT: &[&str] = &[
    "event.name",
    "service.name",
    "http.response.status_code",
    "http.status_code",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.operation.name",
    "gen_ai.response.id",
    "gen_ai.response.finish_reasons",
    "gen_ai.conversation.id",
    "llm.model_name",
    "llm.provider",
    "llm.system",
    "llm.request.model",
    "llm.response.model",
    "llm.request.type",
];

const NEEDED_PREFIX: &[&str] = &[
    "activity.",
    "gen_ai.usage.",
    "gen_ai.token.",
    "llm.usage.",
    "llm.token_count.",
    "ai.usage.",
    "ai.model.",
    "tally.",
];

/// Content keys matched exactly (or as `key.*` when listed with a trailing dot
/// in [`CONTENT_PREFIX`]).
const CONTENT_EXACT: &[&str] = &[
    // OpenTelemetry GenAI semantic conventions
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "gen_ai.event.content",
    "gen_ai.choice",
    // OpenLLMetry / Traceloop
    "traceloop.entity.input",
    "traceloop.entity.output",
    "traceloop.prompt.template",
    "traceloop.prompt.template_variables",
    "llm.prompts",
    "llm.completions",
    // OpenInference
    "input.value",
    "output.value",
    "llm.prompt_template.template",
    "llm.prompt_template.variables",
    "message.content",
    "tool_call.function.arguments",
    "tool.parameters",
    "document.content",
    "reranker.query",
    "embedding.text",
    // Vercel AI SDK
    "ai.response.text",
    "ai.response.object",
    "ai.response.toolCalls",
    "ai.response.reasoning",
    "ai.response.reasoningDetails",
    "ai.toolCall.args",
    "ai.toolCall.result",
    "ai.value",
    "ai.values",
    "ai.embedding",
    "ai.embeddings",
    "ai.result.text",
    "ai.result.object",
    "ai.result.toolCalls",
    // Langfuse, MLflow
    "langfuse.observation.input",
    "langfuse.observation.output",
    "langfuse.trace.input",
    "langfuse.trace.output",
    "mlflow.spanInputs",
    "mlflow.spanOutputs",
];

/// Content key prefixes (plain string prefixes: `gen_ai.prompt` covers
/// `gen_ai.prompt`, `gen_ai.prompt.0.content`, …).
const CONTENT_PREFIX: &[&str] = &[
    "gen_ai.prompt",
    "gen_ai.completion",
    "llm.input_messages",
    "llm.output_messages",
    "retrieval.documents",
    "embedding.embeddings",
    "reranker.input_documents",
    "reranker.output_documents",
    "ai.prompt",
];

/// Keys whose value is content inside a GenAI content event or record
/// (`gen_ai.user.message` carries `content`, …).
const CONTENT_IN_EVENT: &[&str] = &[
    "content",
    "message",
    "messages",
    "text",
    "parts",
    "tool_calls",
    "arguments",
    "result",
    "input",
    "output",
    "prompt",
    "completion",
    "body",
];

/// Event names (span events, log `EventName`, `event.name`) that carry content.
const CONTENT_EVENTS: &[&str] = &[
    "gen_ai.content.prompt",
    "gen_ai.content.completion",
    "gen_ai.system.message",
    "gen_ai.user.message",
    "gen_ai.assistant.message",
    "gen_ai.tool.message",
    "gen_ai.choice",
    "gen_ai.client.inference.operation.details",
];

const IP_EXACT: &[&str] = &[
    "client.address",
    "client.ip",
    "source.address",
    "source.ip",
    "destination.address",
    "destination.ip",
    "network.peer.address",
    "network.local.address",
    "net.peer.ip",
    "net.host.ip",
    "net.sock.peer.addr",
    "net.sock.host.addr",
    "http.client_ip",
    "http.client.ip",
    "host.ip",
    "user.ip",
    "enduser.ip",
];

/// Last key segments (lowercase, `-` read as `_`) that name an IP address.
const IP_SEGMENTS: &[&str] = &[
    "ip",
    "ips",
    "ip_address",
    "ipaddress",
    "ipaddr",
    "ip_addr",
    "client_ip",
    "clientip",
    "client_address",
    "remote_ip",
    "remoteip",
    "remote_addr",
    "remote_address",
    "peer_ip",
    "src_ip",
    "dst_ip",
    "source_ip",
    "user_ip",
    "x_forwarded_for",
    "x_real_ip",
    "forwarded",
    "forwarded_for",
    "true_client_ip",
    "cf_connecting_ip",
];

const FILE_EXACT: &[&str] = &[
    "file.name",
    "file.path",
    "file.directory",
    "file.symlink.target_path",
    "code.filepath",
    "code.file.path",
    "code.filename",
];

const FILE_SEGMENTS: &[&str] = &[
    "filename",
    "file_name",
    "filepath",
    "file_path",
    "attachment",
    "attachment_name",
    "document_name",
];

/// Last key segments that name a secret.
const SECRET_SEGMENTS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "passphrase",
    "api_key",
    "apikey",
    "x_api_key",
    "access_key",
    "secret_key",
    "private_key",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "session_token",
    "bearer_token",
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "credentials",
    "credential",
    "connection_string",
];

const SECRET_SUFFIXES: &[&str] = &["_password", "_passwd", "_secret", "_api_key", "_apikey"];

/// A list of exact keys and `prefix*` entries.
#[derive(Debug, Default)]
pub(crate) struct KeyList {
    exact: FnvMap<String, ()>,
    prefixes: Vec<String>,
}

impl KeyList {
    pub(crate) fn new(entries: &[String]) -> KeyList {
        let mut list = KeyList::default();
        for entry in entries {
            match entry.strip_suffix('*') {
                Some(prefix) => list.prefixes.push(prefix.to_string()),
                None => {
                    list.exact.insert(entry.clone(), ());
                }
            }
        }
        list
    }

    pub(crate) fn matches(&self, key: &str) -> bool {
        (!self.exact.is_empty() && self.exact.contains_key(key))
            || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// The key tables of one redactor.
#[derive(Debug)]
pub(crate) struct Keys {
    exact: FnvMap<&'static str, KeyClass>,
    extra_content: KeyList,
    extra_ip: KeyList,
    extra_files: KeyList,
    extra_secrets: KeyList,
    /// Keys the caller needs kept (e.g. a custom token-usage mapping).
    extra_needed: KeyList,
}

/// `seg` equals `name` ignoring ASCII case, reading `-` as `_`.
fn seg_eq(seg: &[u8], name: &str) -> bool {
    seg.len() == name.len()
        && seg.iter().zip(name.bytes()).all(|(a, b)| {
            let a = if *a == b'-' {
                b'_'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

fn seg_ends_with(seg: &[u8], suffix: &str) -> bool {
    seg.len() > suffix.len() && seg_eq(&seg[seg.len() - suffix.len()..], suffix)
}

/// The last dotted segment of a key.
fn last_segment(key: &str) -> &[u8] {
    let bytes = key.as_bytes();
    match bytes.iter().rposition(|b| *b == b'.') {
        Some(dot) => &bytes[dot + 1..],
        None => bytes,
    }
}

impl Keys {
    pub(crate) fn new(config: &RedactConfig) -> Keys {
        let mut exact = FnvMap::default();
        // Later inserts win: the order is the precedence, lowest first.
        for key in FILE_EXACT {
            exact.insert(*key, KeyClass::File);
        }
        for key in IP_EXACT {
            exact.insert(*key, KeyClass::Ip);
        }
        for key in CONTENT_EXACT {
            exact.insert(*key, KeyClass::Content);
        }
        for key in NEEDED_EXACT.iter().chain(crate::tokens::ROLE_MARKERS) {
            exact.insert(*key, KeyClass::Needed);
        }
        for key in IDENTITY {
            exact.insert(*key, KeyClass::Identity);
        }
        Keys {
            exact,
            extra_content: KeyList::new(&config.keys.content),
            extra_ip: KeyList::new(&config.keys.ip),
            extra_files: KeyList::new(&config.keys.files),
            extra_secrets: KeyList::new(&config.keys.secrets),
            extra_needed: KeyList::default(),
        }
    }

    /// Adds keys that are never dropped and never treated as content or secrets.
    pub(crate) fn add_needed(&mut self, keys: &[String]) {
        for key in keys {
            match key.strip_suffix('*') {
                Some(prefix) => self.extra_needed.prefixes.push(prefix.to_string()),
                None => {
                    self.extra_needed.exact.insert(key.clone(), ());
                }
            }
        }
    }

    /// Whether Tally needs the key (kept by the allowlist and the record cap).
    pub(crate) fn is_needed(&self, key: &str) -> bool {
        matches!(
            self.exact.get(key),
            Some(KeyClass::Needed | KeyClass::Identity)
        ) || NEEDED_PREFIX.iter().any(|p| key.starts_with(p))
            || (!self.extra_needed.is_empty() && self.extra_needed.matches(key))
    }

    /// Classifies a key. `in_content_event`: the key belongs to a GenAI content
    /// event or record, where bare keys like `content` hold message text.
    pub(crate) fn classify(&self, key: &str, in_content_event: bool) -> KeyClass {
        if let Some(class) = self.exact.get(key) {
            // Identity keys stay identity (their emails are hashed) even when kept.
            if *class == KeyClass::Identity
                || self.extra_needed.is_empty()
                || !self.extra_needed.matches(key)
            {
                return *class;
            }
            return KeyClass::Needed;
        }
        if NEEDED_PREFIX.iter().any(|p| key.starts_with(p))
            || (!self.extra_needed.is_empty() && self.extra_needed.matches(key))
        {
            return KeyClass::Needed;
        }
        if CONTENT_PREFIX.iter().any(|p| key.starts_with(p)) {
            return KeyClass::Content;
        }
        if !self.extra_content.is_empty() && self.extra_content.matches(key) {
            return KeyClass::Content;
        }
        if !self.extra_secrets.is_empty() && self.extra_secrets.matches(key) {
            return KeyClass::Secret;
        }
        if !self.extra_ip.is_empty() && self.extra_ip.matches(key) {
            return KeyClass::Ip;
        }
        if !self.extra_files.is_empty() && self.extra_files.matches(key) {
            return KeyClass::File;
        }
        let seg = last_segment(key);
        if in_content_event && CONTENT_IN_EVENT.iter().any(|n| seg_eq(key.as_bytes(), n)) {
            return KeyClass::Content;
        }
        if SECRET_SEGMENTS.iter().any(|n| seg_eq(seg, n))
            || SECRET_SUFFIXES.iter().any(|n| seg_ends_with(seg, n))
        {
            return KeyClass::Secret;
        }
        if IP_SEGMENTS.iter().any(|n| seg_eq(seg, n)) {
            return KeyClass::Ip;
        }
        if FILE_SEGMENTS.iter().any(|n| seg_eq(seg, n)) {
            return KeyClass::File;
        }
        if seg_ends_with(seg, "version") || seg_eq(seg, "version") {
            return KeyClass::Version;
        }
        KeyClass::Plain
    }
}

/// Whether an event name marks GenAI content.
pub(crate) fn is_content_event(name: &str) -> bool {
    name.starts_with("gen_ai.") && CONTENT_EVENTS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&RedactConfig::default())
    }

    #[test]
    fn classes() {
        let k = keys();
        assert_eq!(k.classify("enduser.id", false), KeyClass::Identity);
        assert_eq!(
            k.classify("gen_ai.usage.input_tokens", false),
            KeyClass::Needed
        );
        assert_eq!(
            k.classify("gen_ai.prompt.0.content", false),
            KeyClass::Content
        );
        assert_eq!(k.classify("gen_ai.prompt", false), KeyClass::Content);
        assert_eq!(
            k.classify("llm.input_messages.0.message.content", false),
            KeyClass::Content
        );
        assert_eq!(k.classify("ai.prompt.messages", false), KeyClass::Content);
        assert_eq!(k.classify("ai.response.text", false), KeyClass::Content);
        assert_eq!(k.classify("ai.response.model", false), KeyClass::Plain);
        assert_eq!(k.classify("ai.model.id", false), KeyClass::Needed);
        assert_eq!(k.classify("client.address", false), KeyClass::Ip);
        assert_eq!(
            k.classify("http.request.header.x-forwarded-for", false),
            KeyClass::Ip
        );
        assert_eq!(
            k.classify("http.request.header.authorization", false),
            KeyClass::Secret
        );
        assert_eq!(k.classify("db.password", false), KeyClass::Secret);
        assert_eq!(k.classify("smtp_password", false), KeyClass::Secret);
        assert_eq!(
            k.classify("gen_ai.request.max_tokens", false),
            KeyClass::Plain
        );
        assert_eq!(k.classify("file.path", false), KeyClass::File);
        assert_eq!(k.classify("upload.filename", false), KeyClass::File);
        assert_eq!(k.classify("service.version", false), KeyClass::Version);
        assert_eq!(k.classify("content", false), KeyClass::Plain);
        assert_eq!(k.classify("content", true), KeyClass::Content);
        assert_eq!(k.classify("url.path", false), KeyClass::Plain);
        assert!(is_content_event("gen_ai.user.message"));
        assert!(!is_content_event("auth.login"));
    }
}
