//! The taxonomy registry: which actions exist, which outcomes they may have, which
//! attributes they must carry and the shape of those attributes. The file format
//! is documented in `docs/taxonomy.md`; the shipped default is
//! `config/defaults/taxonomy.yaml`.
//!
//! This module parses and checks a registry ([`Taxonomy`]) and keeps the current
//! one in a reloadable [`TaxonomyHandle`]. Checking *events* against it is the
//! job of `tally_processors::validate`.
//!
//! ```
//! let taxonomy = tally_config::Taxonomy::from_yaml_str(
//!     "version: 1\nactions:\n  auth.login.success: { description: A user signed in }\n",
//! ).unwrap();
//! assert!(taxonomy.lookup("auth.login.success").is_some());
//! ```
//!
//! Over 600 lines: the registry's file format, its checks and its hot reload share the parsed types.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tally_model::Outcome;

use crate::{ValidateConfig, ValidateMode};

/// The shipped default registry (used when `processors.validate.taxonomy` is unset).
pub const DEFAULT_TAXONOMY_YAML: &str = include_str!("../defaults/taxonomy.yaml");

/// Longest accepted action name, in bytes.
pub const MAX_ACTION_NAME_LEN: usize = 128;

/// Deepest nesting of attribute schemas (`properties` / `items`) in a registry.
pub const MAX_SCHEMA_DEPTH: usize = 8;

/// The only registry format version so far.
pub const TAXONOMY_VERSION: u32 = 1;

/// Checks the shape of an action name: lowercase dotted segments
/// `[a-z0-9_]+(\.[a-z0-9_]+)+` (at least two), at most [`MAX_ACTION_NAME_LEN`]
/// bytes. The error says what is wrong without echoing the name.
///
/// ```
/// use tally_config::check_action_name;
/// assert!(check_action_name("auth.login.success").is_ok());
/// assert!(check_action_name("auth.login").is_ok());
/// assert!(check_action_name("Auth.Login").is_err());
/// assert!(check_action_name("login").is_err());
/// ```
pub fn check_action_name(name: &str) -> Result<(), ActionNameError> {
    if name.is_empty() {
        return Err(ActionNameError::Empty);
    }
    if name.len() > MAX_ACTION_NAME_LEN {
        return Err(ActionNameError::TooLong(name.len()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '.'))
    {
        let what = if bad.is_ascii_uppercase() {
            "an uppercase letter".to_owned()
        } else if bad.is_control() {
            "a control character".to_owned()
        } else if bad.is_ascii() {
            format!("the character {bad:?}")
        } else {
            "a non-ASCII character".to_owned()
        };
        return Err(ActionNameError::Character(what));
    }
    let segments = name.split('.').count();
    if name.split('.').any(str::is_empty) {
        return Err(ActionNameError::EmptySegment);
    }
    if segments < 2 {
        return Err(ActionNameError::OneSegment);
    }
    Ok(())
}

/// Why an action name is malformed (see [`check_action_name`]); the message
/// never echoes the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionNameError {
    /// The name is empty.
    #[error("action name is empty")]
    Empty,
    /// The name has this many bytes, more than [`MAX_ACTION_NAME_LEN`].
    #[error("action name is {0} bytes long, at most {MAX_ACTION_NAME_LEN} are allowed")]
    TooLong(usize),
    /// The name holds a character outside `a-z`, `0-9`, `_` and `.`, described
    /// (not echoed): "an uppercase letter", "the character '-'", ….
    #[error("action name contains {0}; only a-z, 0-9, '_' and '.' are allowed")]
    Character(String),
    /// A leading, trailing or doubled `.`.
    #[error("action name has an empty segment (leading, trailing or doubled '.')")]
    EmptySegment,
    /// A name without a `.`.
    #[error(
        "action name needs at least two dotted segments (domain.object.verb, e.g. auth.login.success)"
    )]
    OneSegment,
}

/// A registry that could not be read, parsed or checked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaxonomyError {
    /// The file cannot be read.
    #[error("cannot read taxonomy file {path}: {message}")]
    Read {
        /// The file's path.
        path: String,
        /// Why it cannot be read.
        message: String,
    },
    /// YAML syntax, or a key/type error found while parsing (`path` names it).
    #[error("{source_name}: {path}: {message}")]
    Parse {
        /// The file's path, or `built-in`.
        source_name: String,
        /// The dotted path of the failing key.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but breaks rules; every problem found, each with its path.
    #[error("{source_name}: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The file's path, or `built-in`.
        source_name: String,
        /// Every broken rule.
        problems: Vec<Problem>,
    },
}

impl TaxonomyError {
    /// Each problem as `path: message`, one per entry (for `tally validate`).
    pub fn lines(&self) -> Vec<String> {
        match self {
            TaxonomyError::Read { .. } => vec![self.to_string()],
            TaxonomyError::Parse { path, message, .. } => vec![format!("{path}: {message}")],
            TaxonomyError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
        }
    }
}

/// One rule a registry breaks: `path` is dotted, e.g.
/// `actions.auth.login.success.attributes.auth.method.enum`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The JSON type an attribute value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaType {
    /// A JSON string.
    String,
    /// A whole number (a JSON number without fraction).
    Integer,
    /// Any finite number, integers included.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON array.
    Array,
    /// A JSON object.
    Object,
}

impl SchemaType {
    /// The name as written in a taxonomy file.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::String => "string",
            SchemaType::Integer => "integer",
            SchemaType::Number => "number",
            SchemaType::Boolean => "boolean",
            SchemaType::Array => "array",
            SchemaType::Object => "object",
        }
    }
}

/// One allowed value of an `enum`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A number.
    Number(f64),
    /// A string.
    String(String),
}

impl Literal {
    fn fits(&self, kind: SchemaType) -> bool {
        matches!(
            (self, kind),
            (Literal::Bool(_), SchemaType::Boolean)
                | (
                    Literal::Integer(_),
                    SchemaType::Integer | SchemaType::Number
                )
                | (Literal::Number(_), SchemaType::Number)
                | (Literal::String(_), SchemaType::String)
        )
    }
}

impl Literal {
    /// Strings quoted, the rest as written (for messages).
    pub fn quoted(&self) -> String {
        match self {
            Literal::String(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Integer(i) => write!(f, "{i}"),
            Literal::Number(n) => write!(f, "{n}"),
            Literal::String(s) => write!(f, "{s}"),
        }
    }
}

/// A JSON-Schema-like description of one attribute value (a small subset:
/// `type`, `enum`, `min_length`/`max_length`, `minimum`/`maximum`, `items`,
/// `max_items`, `properties`, `required`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schema {
    /// Required type; any type when absent.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<SchemaType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// What the attribute means.
    pub description: Option<String>,
    /// The value must equal one of these.
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<Literal>>,
    /// Strings: length in characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Longest accepted string, in characters.
    pub max_length: Option<usize>,
    /// Numbers: inclusive bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Largest accepted number.
    pub maximum: Option<f64>,
    /// Arrays: the schema of every element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Box<Schema>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most items of an array.
    pub max_items: Option<usize>,
    /// Objects: schemas of known keys (other keys are allowed).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, Schema>,
    /// Objects: keys that must be present.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
}

/// Identity fields of an event an action may require (`required_fields`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityField {
    /// `user_id`.
    UserId,
    /// `tenant_id`.
    TenantId,
    /// `session_id`.
    SessionId,
    /// `resource_type`.
    ResourceType,
    /// `resource_id`.
    ResourceId,
}

impl IdentityField {
    /// The field's name as written in a taxonomy file.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityField::UserId => "user_id",
            IdentityField::TenantId => "tenant_id",
            IdentityField::SessionId => "session_id",
            IdentityField::ResourceType => "resource_type",
            IdentityField::ResourceId => "resource_id",
        }
    }
}

/// What the registry says about one action (or one `family.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// What the action means (required, non-empty).
    pub description: String,
    /// Allowed outcomes; every outcome when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<Vec<Outcome>>,
    /// Attribute keys that must be present (with a non-null value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Identity fields that must be set (`user_id`, `tenant_id`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_fields: Vec<IdentityField>,
    /// Schemas of attributes, by exact (flattened, dotted) attribute key. Keys not
    /// listed here are allowed and unchecked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Schema>,
}

impl ActionSpec {
    /// The one outcome the action allows, when it allows exactly one: an event of
    /// the action that says nothing of its outcome has that one.
    pub fn declared_outcome(&self) -> Option<Outcome> {
        match self.outcomes.as_deref() {
            Some([only]) => Some(*only),
            _ => None,
        }
    }

    /// Whether `outcome` is allowed.
    pub fn allows(&self, outcome: Outcome) -> bool {
        self.outcomes
            .as_ref()
            .is_none_or(|outcomes| outcomes.contains(&outcome))
    }
}

/// Tally's own actions (`audit.log.view`), added to registries that lack them.
const OWN_ACTIONS_YAML: &str = include_str!("../defaults/own_actions.yaml");

/// Tally's own actions; empty only if the shipped file were broken (a unit
/// test parses it).
fn own_actions() -> BTreeMap<String, ActionSpec> {
    yaml_serde::from_str(OWN_ACTIONS_YAML).unwrap_or_default()
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxonomyFile {
    version: u32,
    #[serde(default)]
    description: Option<String>,
    actions: BTreeMap<String, ActionSpec>,
}

/// A parsed and checked registry. Serializes (for `GET /api/v1/taxonomy`) as
/// `{"version", "description", "actions": {name: spec}}`, wildcard families
/// (`billing.*`) included under their own key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Taxonomy {
    /// The file format's version ([`TAXONOMY_VERSION`]).
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// What the registry covers.
    pub description: Option<String>,
    /// The declared actions (and `prefix.*` families) by name.
    pub actions: BTreeMap<String, ActionSpec>,
    /// `prefix` (without `.*`) → key in `actions`.
    #[serde(skip)]
    families: HashMap<String, String>,
}

impl Taxonomy {
    /// The shipped default registry.
    pub fn builtin() -> Taxonomy {
        // The default is checked by a unit test; should it ever break, fall back
        // to an empty registry rather than panic.
        Taxonomy::parse(DEFAULT_TAXONOMY_YAML, "built-in taxonomy").unwrap_or_else(|_| Taxonomy {
            version: TAXONOMY_VERSION,
            description: None,
            actions: BTreeMap::new(),
            families: HashMap::new(),
        })
    }

    /// Parses and checks a registry from YAML text.
    pub fn from_yaml_str(text: &str) -> Result<Taxonomy, TaxonomyError> {
        Taxonomy::parse(text, "taxonomy")
    }

    /// Reads, parses and checks a registry file.
    pub fn from_file(path: &Path) -> Result<Taxonomy, TaxonomyError> {
        let text = read(path)?;
        Taxonomy::parse(&text, &path.display().to_string())
    }

    /// The registry `processors.validate.taxonomy` names, or the built-in one.
    pub fn load(config: &ValidateConfig) -> Result<Taxonomy, TaxonomyError> {
        match &config.taxonomy {
            Some(path) => Taxonomy::from_file(path),
            None => Taxonomy::parse(DEFAULT_TAXONOMY_YAML, "built-in taxonomy"),
        }
    }

    fn parse(text: &str, source_name: &str) -> Result<Taxonomy, TaxonomyError> {
        let parse_error = |path: String, message: String| TaxonomyError::Parse {
            source_name: source_name.to_owned(),
            path,
            message,
        };
        let mut value: yaml_serde::Value = yaml_serde::from_str(text)
            .map_err(|e| parse_error("(root)".into(), format!("invalid YAML: {e}")))?;
        // YAML merge keys (`<<: *anchor`) share attribute schemas between actions.
        value
            .apply_merge()
            .map_err(|e| parse_error("(root)".into(), format!("invalid merge key: {e}")))?;
        if value.is_null() {
            return Err(parse_error(
                "(root)".into(),
                "the file is empty; it needs `version: 1` and `actions`".into(),
            ));
        }
        let file: TaxonomyFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "(root)".into() } else { path };
            parse_error(path, e.into_inner().to_string())
        })?;

        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| problems.push(Problem { path, message });
        if file.version != TAXONOMY_VERSION {
            problem(
                "version".into(),
                format!(
                    "unsupported version {}, this Tally reads version {TAXONOMY_VERSION}",
                    file.version
                ),
            );
        }
        let mut families = HashMap::new();
        for (name, spec) in &file.actions {
            let path = format!("actions.{name}");
            if let Some(prefix) = name.strip_suffix(".*") {
                let shape = if prefix.contains('.') {
                    check_action_name(prefix)
                } else {
                    // A one-segment family (`billing.*`) is fine.
                    check_action_name(&format!("{prefix}.x"))
                };
                match shape {
                    Ok(()) => {
                        families.insert(prefix.to_owned(), name.clone());
                    }
                    Err(message) => problem(path.clone(), format!("invalid family: {message}")),
                }
            } else if let Err(message) = check_action_name(name) {
                problem(path.clone(), message.to_string());
            }
            check_spec(spec, &path, &mut problem);
        }
        if file.actions.is_empty() {
            problem("actions".into(), "declares no action".into());
        }
        if !problems.is_empty() {
            return Err(TaxonomyError::Invalid {
                source_name: source_name.to_owned(),
                problems,
            });
        }
        let mut actions = file.actions;
        for (name, spec) in own_actions() {
            actions.entry(name).or_insert(spec);
        }
        Ok(Taxonomy {
            version: file.version,
            description: file.description,
            actions,
            families,
        })
    }

    /// The spec of `action`: the exact entry, else the longest matching family
    /// (`billing.payment.*` before `billing.*`). Returns the registry key too.
    pub fn lookup(&self, action: &str) -> Option<(&str, &ActionSpec)> {
        if let Some((key, spec)) = self.actions.get_key_value(action) {
            return Some((key.as_str(), spec));
        }
        if self.families.is_empty() {
            return None;
        }
        let mut prefix = action;
        while let Some(dot) = prefix.rfind('.') {
            prefix = &prefix[..dot];
            if let Some(key) = self.families.get(prefix) {
                return self
                    .actions
                    .get_key_value(key.as_str())
                    .map(|(k, spec)| (k.as_str(), spec));
            }
        }
        None
    }

    /// Number of entries (actions and families).
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether no action is declared.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// What `tally validate` prints about the taxonomy: `Ok` with a one-line
/// summary, or `Err` whose message is a header line and one `  path: message`
/// line per problem.
pub fn validate_report(config: &ValidateConfig) -> Result<String, TaxonomyReport> {
    let source_name = match &config.taxonomy {
        Some(path) => path.display().to_string(),
        None => "built-in".to_owned(),
    };
    match Taxonomy::load(config) {
        Ok(taxonomy) => Ok(format!(
            "taxonomy OK: {} actions ({source_name}), mode {}",
            taxonomy.len(),
            config.mode.as_str()
        )),
        Err(error) => Err(TaxonomyReport { source_name, error }),
    }
}

/// A taxonomy `tally validate` refuses, printed as the report: a file that
/// cannot be read as its reason, any other problem as `invalid taxonomy
/// SOURCE:` and one `  path: message` line per problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", report_text(.source_name, .error))]
pub struct TaxonomyReport {
    /// The taxonomy file's path, or `built-in`.
    pub source_name: String,
    /// What is wrong with it.
    pub error: TaxonomyError,
}

fn report_text(source_name: &str, error: &TaxonomyError) -> String {
    if let TaxonomyError::Read { .. } = error {
        return error.to_string();
    }
    let mut text = format!("invalid taxonomy {source_name}:");
    for line in error.lines() {
        text.push_str("\n  ");
        text.push_str(&line);
    }
    text
}

fn check_spec(spec: &ActionSpec, path: &str, problem: &mut impl FnMut(String, String)) {
    if spec.description.trim().is_empty() {
        problem(format!("{path}.description"), "must not be empty".into());
    }
    if let Some(outcomes) = &spec.outcomes {
        if outcomes.is_empty() {
            problem(
                format!("{path}.outcomes"),
                "must list at least one outcome (omit it to allow all)".into(),
            );
        }
        if has_duplicates(outcomes.iter().map(|o| o.as_str())) {
            problem(format!("{path}.outcomes"), "lists an outcome twice".into());
        }
    }
    for (index, key) in spec.required.iter().enumerate() {
        if key.is_empty() {
            problem(format!("{path}.required[{index}]"), "is empty".into());
        }
    }
    if has_duplicates(spec.required.iter().map(String::as_str)) {
        problem(format!("{path}.required"), "lists a key twice".into());
    }
    if has_duplicates(spec.required_fields.iter().map(|f| f.as_str())) {
        problem(
            format!("{path}.required_fields"),
            "lists a field twice".into(),
        );
    }
    for (key, schema) in &spec.attributes {
        let attr_path = format!("{path}.attributes.{key}");
        if key.is_empty() {
            problem(attr_path.clone(), "attribute key is empty".into());
        }
        check_schema(schema, &attr_path, 1, problem);
    }
}

fn check_schema(
    schema: &Schema,
    path: &str,
    depth: usize,
    problem: &mut impl FnMut(String, String),
) {
    if depth > MAX_SCHEMA_DEPTH {
        problem(
            path.to_owned(),
            format!("schemas nest deeper than {MAX_SCHEMA_DEPTH} levels"),
        );
        return;
    }
    let kind = schema.kind;
    let wrong_kind = |key: &str, wanted: &str| -> Option<(String, String)> {
        match kind {
            Some(kind)
                if kind.as_str() != wanted
                    && !(wanted == "number" && kind == SchemaType::Integer) =>
            {
                Some((
                    format!("{path}.{key}"),
                    format!(
                        "only applies to type {wanted}, this schema has type {}",
                        kind.as_str()
                    ),
                ))
            }
            _ => None,
        }
    };
    let mut checks: Vec<(&str, &str, bool)> = vec![
        ("min_length", "string", schema.min_length.is_some()),
        ("max_length", "string", schema.max_length.is_some()),
        ("minimum", "number", schema.minimum.is_some()),
        ("maximum", "number", schema.maximum.is_some()),
        ("items", "array", schema.items.is_some()),
        ("max_items", "array", schema.max_items.is_some()),
        ("properties", "object", !schema.properties.is_empty()),
        ("required", "object", !schema.required.is_empty()),
    ];
    checks.retain(|(_, _, present)| *present);
    for (key, wanted, _) in checks {
        if let Some((p, m)) = wrong_kind(key, wanted) {
            problem(p, m);
        }
    }
    if let (Some(min), Some(max)) = (schema.min_length, schema.max_length) {
        if min > max {
            problem(
                format!("{path}.min_length"),
                format!("is greater than max_length ({min} > {max})"),
            );
        }
    }
    for (key, bound) in [("minimum", schema.minimum), ("maximum", schema.maximum)] {
        if bound.is_some_and(|b| !b.is_finite()) {
            problem(format!("{path}.{key}"), "must be a finite number".into());
        }
    }
    if let (Some(min), Some(max)) = (schema.minimum, schema.maximum) {
        if min > max {
            problem(
                format!("{path}.minimum"),
                format!("is greater than maximum ({min} > {max})"),
            );
        }
    }
    if let Some(allowed) = &schema.allowed {
        if allowed.is_empty() {
            problem(
                format!("{path}.enum"),
                "must list at least one value".into(),
            );
        }
        if let Some(kind) = kind.filter(|k| !matches!(k, SchemaType::Array | SchemaType::Object)) {
            for (index, literal) in allowed.iter().enumerate() {
                if !literal.fits(kind) {
                    problem(
                        format!("{path}.enum[{index}]"),
                        format!(
                            "{} is not a value of type {}",
                            literal.quoted(),
                            kind.as_str()
                        ),
                    );
                }
            }
        }
        if matches!(kind, Some(SchemaType::Array | SchemaType::Object)) {
            problem(
                format!("{path}.enum"),
                "only scalar types (string, integer, number, boolean) can have an enum".into(),
            );
        }
    }
    if has_duplicates(schema.required.iter().map(String::as_str)) {
        problem(format!("{path}.required"), "lists a key twice".into());
    }
    if let Some(items) = &schema.items {
        check_schema(items, &format!("{path}.items"), depth + 1, problem);
    }
    for (key, property) in &schema.properties {
        check_schema(
            property,
            &format!("{path}.properties.{key}"),
            depth + 1,
            problem,
        );
    }
}

fn has_duplicates<'a>(items: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = BTreeSet::new();
    items.into_iter().any(|item| !seen.insert(item))
}

fn read(path: &Path) -> Result<String, TaxonomyError> {
    std::fs::read_to_string(path).map_err(|e| TaxonomyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn fingerprint(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Where the current registry comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaxonomySource {
    /// The shipped default (`processors.validate.taxonomy` unset).
    Builtin,
    /// A file, re-read on [`TaxonomyHandle::reload`].
    File(PathBuf),
}

impl fmt::Display for TaxonomySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaxonomySource::Builtin => f.write_str("built-in"),
            TaxonomySource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What a handle knows about its loads, for logs and `GET /api/v1/taxonomy`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadStatus {
    /// 1 for the first load, +1 for every successful reload that changed the registry.
    pub generation: u64,
    /// When the current registry was loaded.
    pub loaded_at: SystemTime,
    /// Why the last reload failed, while the file is still broken (the old
    /// registry stays current); `None` once a reload succeeds.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct LoadState {
    /// Fingerprint of the file text last *tried* (loaded or failed), so a broken
    /// file is reported once, not on every poll.
    seen: Option<u64>,
    status: ReloadStatus,
}

#[derive(Debug)]
struct HandleInner {
    source: TaxonomySource,
    mode: ValidateMode,
    current: RwLock<Arc<Taxonomy>>,
    state: Mutex<LoadState>,
}

/// The current registry, shared by the pipeline and the admin API: cheap to
/// clone, readable from any thread, replaced atomically on reload.
#[derive(Debug, Clone)]
pub struct TaxonomyHandle {
    inner: Arc<HandleInner>,
}

/// Outcome of [`TaxonomyHandle::reload_if_changed`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadOutcome {
    /// The file text is the one last tried: nothing done.
    Unchanged,
    /// A new registry is current.
    Reloaded {
        /// The registry's generation (1 for the first load).
        generation: u64,
        /// Its number of declared actions.
        actions: usize,
    },
}

impl TaxonomyHandle {
    /// Loads the registry `config` names (or the built-in one). Fails when it
    /// cannot be read or is invalid: Tally does not start on a broken registry.
    pub fn load(config: &ValidateConfig) -> Result<TaxonomyHandle, TaxonomyError> {
        let (source, taxonomy, seen) = match &config.taxonomy {
            Some(path) => {
                let text = read(path)?;
                let taxonomy = Taxonomy::parse(&text, &path.display().to_string())?;
                (
                    TaxonomySource::File(path.clone()),
                    taxonomy,
                    Some(fingerprint(&text)),
                )
            }
            None => (
                TaxonomySource::Builtin,
                Taxonomy::parse(DEFAULT_TAXONOMY_YAML, "built-in taxonomy")?,
                None,
            ),
        };
        Ok(TaxonomyHandle::new(source, config.mode, taxonomy, seen))
    }

    /// A handle on a fixed registry (tests, embedding).
    pub fn fixed(taxonomy: Taxonomy, mode: ValidateMode) -> TaxonomyHandle {
        TaxonomyHandle::new(TaxonomySource::Builtin, mode, taxonomy, None)
    }

    fn new(
        source: TaxonomySource,
        mode: ValidateMode,
        taxonomy: Taxonomy,
        seen: Option<u64>,
    ) -> TaxonomyHandle {
        TaxonomyHandle {
            inner: Arc::new(HandleInner {
                source,
                mode,
                current: RwLock::new(Arc::new(taxonomy)),
                state: Mutex::new(LoadState {
                    seen,
                    status: ReloadStatus {
                        generation: 1,
                        loaded_at: SystemTime::now(),
                        last_error: None,
                    },
                }),
            }),
        }
    }

    /// The current registry (a snapshot: a reload does not change it under you).
    pub fn current(&self) -> Arc<Taxonomy> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The configured mode (not reloadable: it lives in the main config).
    pub fn mode(&self) -> ValidateMode {
        self.inner.mode
    }

    /// Where the registry is read from.
    pub fn source(&self) -> &TaxonomySource {
        &self.inner.source
    }

    /// The outcome of the last load or reload.
    pub fn status(&self) -> ReloadStatus {
        self.lock_state().status.clone()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, LoadState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the file (SIGHUP). On error the old registry stays current, the
    /// error is returned and kept in [`ReloadStatus::last_error`]. The built-in
    /// registry never changes: `Ok` without effect.
    pub fn reload(&self) -> Result<ReloadOutcome, TaxonomyError> {
        self.reload_inner(true)
    }

    /// Re-reads the file and reloads only when its text changed since the last
    /// attempt (file polling). A file that is still broken is not reported again.
    pub fn reload_if_changed(&self) -> Result<ReloadOutcome, TaxonomyError> {
        self.reload_inner(false)
    }

    fn reload_inner(&self, force: bool) -> Result<ReloadOutcome, TaxonomyError> {
        let TaxonomySource::File(path) = &self.inner.source else {
            return Ok(ReloadOutcome::Unchanged);
        };
        // One reload at a time: the state lock is held across the read.
        let mut state = self.lock_state();
        let text = match read(path) {
            Ok(text) => text,
            Err(error) => {
                let message = error.to_string();
                let repeated = state.status.last_error.as_deref() == Some(message.as_str());
                state.status.last_error = Some(message);
                // A missing file is reported on change only, like a broken one.
                state.seen = None;
                return if repeated && !force {
                    Ok(ReloadOutcome::Unchanged)
                } else {
                    Err(error)
                };
            }
        };
        let print = fingerprint(&text);
        if !force && state.seen == Some(print) {
            return Ok(ReloadOutcome::Unchanged);
        }
        state.seen = Some(print);
        match Taxonomy::parse(&text, &path.display().to_string()) {
            Ok(taxonomy) => {
                let actions = taxonomy.len();
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(taxonomy);
                state.status.generation += 1;
                state.status.loaded_at = SystemTime::now();
                state.status.last_error = None;
                Ok(ReloadOutcome::Reloaded {
                    generation: state.status.generation,
                    actions,
                })
            }
            Err(error) => {
                state.status.last_error = Some(error.to_string());
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_parses() {
        let taxonomy = Taxonomy::parse(DEFAULT_TAXONOMY_YAML, "built-in").unwrap();
        assert!(taxonomy.len() >= 40, "only {} actions", taxonomy.len());
        for domain in ["auth.", "chat.", "file.", "admin.", "billing.", "token."] {
            assert!(
                taxonomy.actions.keys().any(|k| k.starts_with(domain)),
                "no {domain} action"
            );
        }
        assert!(taxonomy.lookup("auth.login").is_some(), "legacy name");
        assert!(taxonomy.lookup("auth.login.success").is_some());
        assert_eq!(Taxonomy::builtin(), taxonomy);
    }

    #[test]
    fn own_actions_join_every_registry_unless_declared() {
        let own = own_actions();
        assert!(own.contains_key("audit.log.view"), "{own:?}");
        let minimal =
            Taxonomy::from_yaml_str("version: 1\nactions:\n  a.b.c: { description: x }\n").unwrap();
        assert!(minimal.lookup("audit.log.view").is_some());
        assert_eq!(minimal.len(), 1 + own.len());
        let declared = Taxonomy::from_yaml_str(
            "version: 1\nactions:\n  audit.log.view: { description: mine, outcomes: [success] }\n",
        )
        .unwrap();
        let (_, spec) = declared.lookup("audit.log.view").unwrap();
        assert_eq!(spec.description, "mine");
    }

    #[test]
    fn action_name_shapes() {
        for good in [
            "a.b",
            "auth.login.success",
            "api_key.key.create",
            "v2.x9.y_z",
        ] {
            assert_eq!(check_action_name(good), Ok(()), "{good}");
        }
        let long = format!("a.{}", "b".repeat(MAX_ACTION_NAME_LEN));
        for (bad, needle) in [
            ("", "empty"),
            ("login", "two dotted segments"),
            ("Auth.login", "uppercase"),
            ("auth..login", "empty segment"),
            (".auth.login", "empty segment"),
            ("auth.login.", "empty segment"),
            ("auth.log-in", "'-'"),
            ("auth.log in", "' '"),
            ("auth.logé", "non-ASCII"),
            ("auth.log\n", "control"),
            (long.as_str(), "bytes long"),
        ] {
            let err = check_action_name(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        let max = format!("a.{}", "b".repeat(MAX_ACTION_NAME_LEN - 2));
        assert_eq!(check_action_name(&max), Ok(()));
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use crate::Config;

    fn invalid(text: &str) -> Vec<String> {
        match Taxonomy::from_yaml_str(text) {
            Err(error) => error.lines(),
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }

    #[test]
    fn mode_off_and_defaults() {
        let config = Config::from_yaml_str("processors: { validate: { mode: off } }").unwrap();
        assert_eq!(config.processors.validate.mode, ValidateMode::Off);
        assert_eq!(config.processors.validate.reload_interval_secs, 2);
        let config = Config::from_yaml_str("").unwrap();
        assert_eq!(config.processors.validate.mode, ValidateMode::Lenient);
        assert_eq!(config.processors.validate.taxonomy, None);
    }

    #[test]
    fn errors_name_their_path() {
        let lines = invalid(
            "version: 1\nactions:\n  auth.login.success:\n    description: x\n    attributes:\n      method: { type: string, enum: [1, sso] }\n",
        );
        assert_eq!(
            lines,
            ["actions.auth.login.success.attributes.method.enum[0]: 1 is not a value of type string"]
        );
        let lines = invalid(
            "version: 1\nactions:\n  auth.login.success:\n    description: x\n    attributes:\n      method: { type: string, pattern: '^a' }\n",
        );
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with(
                "actions.auth.login.success.attributes.method.pattern: unknown field `pattern`"
            ),
            "{lines:?}"
        );
        let lines = invalid("version: 1\nactions:\n  a.b: { descripton: x }\n");
        assert!(
            lines[0].starts_with("actions.a.b.descripton: unknown field `descripton`"),
            "{lines:?}"
        );
        let lines =
            invalid("version: 1\nactions:\n  a.b: { description: x, outcomes: [sometimes] }\n");
        assert!(
            lines[0].starts_with("actions.a.b.outcomes[0]: unknown variant"),
            "{lines:?}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
version: 2
actions:
  Auth.Login: { description: x }
  login: { description: x }
  a.b:
    description: ""
    outcomes: []
    required: [k, k]
    attributes:
      s: { type: string, min_length: 5, max_length: 2, minimum: 1 }
      n: { type: integer, minimum: 9, maximum: 1, enum: [1.5] }
      o: { type: object, enum: [x], properties: { inner: { type: array, max_length: 3 } } }
  bad-.*: { description: x }
"#;
        let lines = invalid(text);
        let expected = [
            "version: unsupported version 2",
            "actions.Auth.Login: action name contains an uppercase letter",
            "actions.login: action name needs at least two dotted segments",
            "actions.a.b.description: must not be empty",
            "actions.a.b.outcomes: must list at least one outcome",
            "actions.a.b.required: lists a key twice",
            "actions.a.b.attributes.s.minimum: only applies to type number",
            "actions.a.b.attributes.s.min_length: is greater than max_length (5 > 2)",
            "actions.a.b.attributes.n.minimum: is greater than maximum (9 > 1)",
            "actions.a.b.attributes.n.enum[0]: 1.5 is not a value of type integer",
            "actions.a.b.attributes.o.enum: only scalar types",
            "actions.a.b.attributes.o.properties.inner.max_length: only applies to type string",
            "actions.bad-.*: invalid family",
        ];
        for needle in expected {
            assert!(
                lines.iter().any(|line| line.starts_with(needle)),
                "missing {needle:?} in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    }

    #[test]
    fn empty_and_broken_files() {
        assert!(invalid("")[0].contains("empty"));
        assert!(invalid("version: 1\nactions: {}\n")[0].starts_with("actions: declares no action"));
        assert!(invalid("version: 1\nactions: [\n")[0].starts_with("(root): invalid YAML"));
        assert!(invalid("actions: { a.b: { description: x } }\n")[0].contains("version"));
        let deep = format!(
            "version: 1\nactions:\n  a.b:\n    description: x\n    attributes:\n      k: {}{}\n",
            "{ type: object, properties: { p: ".repeat(9),
            "{ type: string }".to_owned() + &" } }".repeat(9)
        );
        assert!(
            invalid(&deep).iter().any(|l| l.contains("nest deeper")),
            "{:?}",
            invalid(&deep)
        );
    }

    #[test]
    fn validate_report_lists_every_problem_with_its_path() {
        let ok = validate_report(&ValidateConfig::default()).unwrap();
        assert!(
            ok.starts_with("taxonomy OK: ") && ok.ends_with("(built-in), mode lenient"),
            "{ok}"
        );
        let dir = std::env::temp_dir().join(format!("tally-taxonomy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("taxonomy.yaml");
        std::fs::write(&path, "version: 1\nactions:\n  auth.login.success:\n    description: x\n    attributes:\n      method: { type: string, enum: [] }\n  Login: { description: y }\n").unwrap();
        let config = ValidateConfig {
            taxonomy: Some(path.clone()),
            ..ValidateConfig::default()
        };
        let err = validate_report(&config).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines[0], format!("invalid taxonomy {}:", path.display()));
        assert_eq!(lines.len(), 3, "{err}");
        assert!(lines.contains(&"  actions.auth.login.success.attributes.method.enum: must list at least one value"), "{err}");
        assert!(lines.iter().any(|l| l.starts_with("  actions.Login: action name contains an uppercase letter")), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = validate_report(&config).unwrap_err().to_string();
        assert!(err.starts_with("cannot read taxonomy file"), "{err}");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn families_and_lookup() {
        let taxonomy = Taxonomy::from_yaml_str(
            "version: 1\nactions:\n  billing.*: { description: any billing }\n  billing.payment.*: { description: payments }\n  billing.plan.change: { description: exact }\n",
        )
        .unwrap();
        assert_eq!(
            taxonomy.lookup("billing.plan.change").unwrap().0,
            "billing.plan.change"
        );
        assert_eq!(
            taxonomy.lookup("billing.payment.refund.partial").unwrap().0,
            "billing.payment.*"
        );
        assert_eq!(
            taxonomy.lookup("billing.invoice.create").unwrap().0,
            "billing.*"
        );
        assert_eq!(taxonomy.lookup("billing.x").unwrap().0, "billing.*");
        assert!(taxonomy.lookup("billing").is_none());
        assert!(taxonomy.lookup("auth.login").is_none());
    }

    #[test]
    fn merge_keys_share_schemas() {
        let taxonomy = Taxonomy::from_yaml_str(
            "version: 1\nactions:\n  a.b:\n    description: x\n    attributes: &shared\n      k: { type: integer }\n  a.c:\n    description: y\n    attributes:\n      <<: *shared\n      m: { type: boolean }\n",
        )
        .unwrap();
        let (_, spec) = taxonomy.lookup("a.c").unwrap();
        assert_eq!(spec.attributes.len(), 2);
        assert_eq!(spec.attributes["k"].kind, Some(SchemaType::Integer));
    }
}
