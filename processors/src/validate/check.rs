//! One event against one registry.

use serde_json::Value;
use tally_config::taxonomy::{IdentityField, Literal, Schema, SchemaType};
use tally_config::{check_action_name, Taxonomy};
use tally_model::ActivityEvent;

use super::{Reason, ReasonCode, Verdict};

/// Most problems spelled out in one reason message; the rest are counted.
const MAX_LISTED_PROBLEMS: usize = 3;
/// Most enum values listed in a `not_in_enum` message.
const MAX_LISTED_ENUM: usize = 8;

/// The action-name shape check run in every mode: `None` when the name is well
/// formed, else the `malformed_action` reason.
pub fn check_action(action: &str) -> Option<Reason> {
    check_action_name(action)
        .err()
        .map(|message| Reason::new(ReasonCode::MalformedAction, message.to_string()))
}

/// Checks one event: action shape, declaration, outcome, required identity
/// fields, required attributes and attribute schemas (in that order). An
/// invalid event's reason carries the first problem's code; its message lists
/// the first few problems.
pub fn check(taxonomy: &Taxonomy, event: &ActivityEvent) -> Verdict {
    if let Some(reason) = check_action(&event.action) {
        return Verdict::Malformed { reason };
    }
    let Some((key, spec)) = taxonomy.lookup(&event.action) else {
        return Verdict::Unknown {
            reason: Reason::new(
                ReasonCode::UnknownAction,
                "action is not declared in the taxonomy",
            ),
        };
    };
    let mut problems = Problems::default();
    if !spec.allows(event.outcome) {
        let allowed: Vec<&str> = spec.outcomes.iter().flatten().map(|o| o.as_str()).collect();
        problems.push(
            ReasonCode::OutcomeNotAllowed,
            format!(
                "outcome {} is not allowed for {key} (allowed: {})",
                event.outcome.as_str(),
                allowed.join(", ")
            ),
        );
    }
    for field in &spec.required_fields {
        let value = match field {
            IdentityField::UserId => &event.user_id,
            IdentityField::TenantId => &event.tenant_id,
            IdentityField::SessionId => &event.session_id,
            IdentityField::ResourceType => &event.resource_type,
            IdentityField::ResourceId => &event.resource_id,
        };
        if value.as_deref().is_none_or(str::is_empty) {
            problems.push(
                ReasonCode::MissingField,
                format!("{}: required by {key}, missing", field.as_str()),
            );
        }
    }
    for name in &spec.required {
        if event.attributes.get(name).is_none_or(Value::is_null) {
            problems.push(
                ReasonCode::MissingAttribute,
                format!("attributes.{name}: required by {key}, missing"),
            );
        }
    }
    for (name, schema) in &spec.attributes {
        // Absent attributes are only a problem when `required` says so.
        if let Some(value) = event.attributes.get(name) {
            let path = Path::Attribute(name);
            check_value(value, schema, &path, &mut problems);
        }
    }
    match problems.into_reason() {
        None => Verdict::Valid,
        Some(reason) => Verdict::Invalid { reason },
    }
}

#[derive(Default)]
struct Problems {
    first: Option<ReasonCode>,
    messages: Vec<String>,
    count: usize,
}

impl Problems {
    fn push(&mut self, code: ReasonCode, message: String) {
        self.first.get_or_insert(code);
        self.count += 1;
        if self.messages.len() < MAX_LISTED_PROBLEMS {
            self.messages.push(message);
        }
    }

    fn into_reason(self) -> Option<Reason> {
        let code = self.first?;
        let mut message = self.messages.join("; ");
        let more = self.count - self.messages.len();
        if more > 0 {
            message.push_str(&format!(" (and {more} more)"));
        }
        Some(Reason::new(code, message))
    }
}

/// Where a value sits, rendered only when a problem is reported (no allocation
/// on the valid path).
enum Path<'a> {
    Attribute(&'a str),
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Attribute(name) => write!(f, "attributes.{name}"),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, kind: SchemaType) -> bool {
    match kind {
        SchemaType::String => value.is_string(),
        SchemaType::Boolean => value.is_boolean(),
        SchemaType::Array => value.is_array(),
        SchemaType::Object => value.is_object(),
        SchemaType::Number => value.is_number(),
        SchemaType::Integer => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
    }
}

fn literal_matches(literal: &Literal, value: &Value) -> bool {
    match (literal, value) {
        (Literal::Bool(a), Value::Bool(b)) => a == b,
        (Literal::String(a), Value::String(b)) => a == b,
        (Literal::Integer(a), Value::Number(n)) => {
            n.as_i64() == Some(*a) || n.as_f64().is_some_and(|f| f == *a as f64)
        }
        (Literal::Number(a), Value::Number(n)) => n.as_f64() == Some(*a),
        _ => false,
    }
}

fn check_value(value: &Value, schema: &Schema, path: &Path<'_>, problems: &mut Problems) {
    if let Some(kind) = schema.kind {
        if !has_type(value, kind) {
            problems.push(
                ReasonCode::WrongType,
                format!(
                    "{path}: expected {}, got {}",
                    kind.as_str(),
                    type_name(value)
                ),
            );
            // Further rules assume the type.
            return;
        }
    }
    if let Some(allowed) = &schema.allowed {
        if !allowed
            .iter()
            .any(|literal| literal_matches(literal, value))
        {
            let mut listed: Vec<String> = allowed
                .iter()
                .take(MAX_LISTED_ENUM)
                .map(Literal::to_string)
                .collect();
            if allowed.len() > MAX_LISTED_ENUM {
                listed.push("…".into());
            }
            problems.push(
                ReasonCode::NotInEnum,
                format!(
                    "{path}: not one of the allowed values ({})",
                    listed.join(", ")
                ),
            );
        }
    }
    match value {
        Value::String(text) => {
            if schema.max_length.is_some() || schema.min_length.is_some() {
                let length = text.chars().count();
                if let Some(max) = schema.max_length.filter(|max| length > *max) {
                    problems.push(
                        ReasonCode::TooLong,
                        format!("{path}: {length} characters, at most {max} allowed"),
                    );
                }
                if let Some(min) = schema.min_length.filter(|min| length < *min) {
                    problems.push(
                        ReasonCode::TooShort,
                        format!("{path}: {length} characters, at least {min} required"),
                    );
                }
            }
        }
        Value::Number(number) => {
            if let Some(n) = number.as_f64() {
                let below = schema.minimum.is_some_and(|min| n < min);
                let above = schema.maximum.is_some_and(|max| n > max);
                if below || above {
                    let bound = |b: Option<f64>| b.map_or("…".to_owned(), |b| b.to_string());
                    problems.push(
                        ReasonCode::OutOfRange,
                        format!(
                            "{path}: outside the allowed range {}..={}",
                            bound(schema.minimum),
                            bound(schema.maximum)
                        ),
                    );
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.max_items.filter(|max| items.len() > *max) {
                problems.push(
                    ReasonCode::TooManyItems,
                    format!("{path}: {} items, at most {max} allowed", items.len()),
                );
            }
            if let Some(item_schema) = &schema.items {
                for (index, item) in items.iter().enumerate() {
                    check_value(item, item_schema, &Path::Index(path, index), problems);
                }
            }
        }
        Value::Object(map) => {
            for name in &schema.required {
                if map.get(name).is_none_or(Value::is_null) {
                    problems.push(
                        ReasonCode::MissingAttribute,
                        format!("{path}.{name}: required, missing"),
                    );
                }
            }
            for (name, property) in &schema.properties {
                if let Some(inner) = map.get(name) {
                    check_value(inner, property, &Path::Key(path, name), problems);
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}
