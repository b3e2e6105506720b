//! ArcSight Common Event Format lines:
//! `CEF:0|Tally|Tally|<version>|<signature id>|<name>|<severity>|<extension>`.
//!
//! Header fields escape `\` and `|` with a backslash; extension values escape
//! `\` and `=` with a backslash and write CR/LF as `\r`/`\n`, so one event is
//! always one line. Line breaks in header fields become spaces.

use super::{epoch_millis, is_authentication, token_action, PRODUCT, VERSION};
use crate::rows::{ActivityItem, RawRow, TokenItem};

/// Escapes a header field.
pub fn escape_header(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an extension value.
pub fn escape_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// CEF severity (0–10): 3 for success/unknown, 5 for a failure, 7 for a
/// failed authentication.
pub fn severity(outcome: &str, authentication: bool) -> u8 {
    match (outcome, authentication) {
        ("failure", true) => 7,
        ("failure", false) => 5,
        _ => 3,
    }
}

struct Line {
    text: String,
}

impl Line {
    fn new(signature: &str, name: &str, severity: u8) -> Line {
        Line {
            text: format!(
                "CEF:0|{PRODUCT}|{PRODUCT}|{}|{}|{}|{severity}|",
                escape_header(VERSION),
                escape_header(signature),
                escape_header(name)
            ),
        }
    }

    fn field(&mut self, key: &str, value: &str) {
        if !self.text.ends_with('|') {
            self.text.push(' ');
        }
        self.text.push_str(key);
        self.text.push('=');
        self.text.push_str(&escape_value(value));
    }

    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.field(key, value);
        }
    }

    fn labeled(&mut self, key: &str, label: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.field(&format!("{key}Label"), label);
            self.field(key, value);
        }
    }
}

/// One CEF line (without the trailing newline) for a row.
pub fn encode(row: &RawRow) -> String {
    match row {
        RawRow::Activity(item) => activity(item),
        RawRow::Token(item) => token(item),
    }
}

fn activity(item: &ActivityItem) -> String {
    let authentication = is_authentication(&item.action);
    let mut line = Line::new(
        &item.action,
        &format!("{} {}", item.action, item.outcome),
        severity(&item.outcome, authentication),
    );
    if let Some(rt) = epoch_millis(&item.ts) {
        line.field("rt", &rt.to_string());
    }
    line.field("externalId", &item.seq.to_string());
    line.field("act", &item.action);
    line.field("outcome", &item.outcome);
    line.field(
        "cat",
        if authentication {
            "authentication"
        } else {
            "activity"
        },
    );
    line.opt("suser", item.user_id.as_deref());
    line.opt("sourceServiceName", item.service.as_deref());
    line.labeled("cs1", "tenantId", item.tenant_id.as_deref());
    line.labeled("cs2", "sessionId", item.session_id.as_deref());
    line.labeled("cs3", "traceId", item.trace_id.as_deref());
    line.labeled("cs4", "spanId", item.span_id.as_deref());
    line.labeled("cs5", "resourceType", item.resource_type.as_deref());
    line.labeled("cs6", "resourceId", item.resource_id.as_deref());
    if let Some(ms) = item.duration_ms {
        line.labeled("cn1", "durationMs", Some(&(ms.round() as i64).to_string()));
    }
    line.labeled("flexString1", "name", item.name.as_deref());
    line.labeled("flexString2", "errorType", item.error_type.as_deref());
    line.opt("msg", item.error_message.as_deref());
    line.field("deviceExternalId", &item.id.to_string());
    line.text
}

fn token(item: &TokenItem) -> String {
    let action = token_action(item.operation.as_deref());
    let name = match &item.model {
        Some(model) => format!("{action} {model}"),
        None => action.clone(),
    };
    let mut line = Line::new(&action, &name, severity(&item.outcome, false));
    if let Some(rt) = epoch_millis(&item.ts) {
        line.field("rt", &rt.to_string());
    }
    line.field("externalId", &item.seq.to_string());
    line.field("act", &action);
    line.field("outcome", &item.outcome);
    line.field("cat", "gen_ai");
    line.opt("suser", item.user_id.as_deref());
    line.opt("sourceServiceName", item.service.as_deref());
    line.labeled("cs1", "tenantId", item.tenant_id.as_deref());
    line.labeled("cs2", "sessionId", item.session_id.as_deref());
    line.labeled("cs3", "traceId", item.trace_id.as_deref());
    line.labeled("cs4", "spanId", item.span_id.as_deref());
    line.labeled("cs5", "model", item.model.as_deref());
    line.labeled("cs6", "provider", item.provider.as_deref());
    let number = |n: Option<i64>| n.map(|n| n.to_string());
    line.labeled("cn1", "inputTokens", number(item.input_tokens).as_deref());
    line.labeled("cn2", "outputTokens", number(item.output_tokens).as_deref());
    line.labeled("cn3", "totalTokens", number(item.total_tokens).as_deref());
    line.labeled(
        "cfp1",
        "costUsd",
        item.cost_usd.map(|c| c.to_string()).as_deref(),
    );
    line.field("deviceExternalId", &item.id.to_string());
    line.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_header(r"a|b\c=d"), r"a\|b\\c=d");
        assert_eq!(escape_header("a\nb"), "a b");
        assert_eq!(escape_value("a=b\\c|d\ne\r"), r"a\=b\\c|d\ne\r");
    }
}
