//! Taxonomy validation: is an [`ActivityEvent`]'s action one the operator
//! declared, with its outcome and metadata in the declared shape? And, by mode,
//! what happens to it: stored, stored but flagged, or quarantined in
//! `rejected_events`. Nothing is dropped. See `docs/taxonomy.md`.
//!
//! * [`check`] — one event against one registry → [`Verdict`].
//! * [`decide`] — a verdict under a [`ValidateMode`] → [`ModeDecision`].
//! * [`Validator`] — both, on the current registry of a [`TaxonomyHandle`]; for a
//!   whole batch, [`Validator::validate_batch`].
//! * [`spawn_watcher`] — reloads the registry on file change and on SIGHUP.
//!
//! The registry format and the handle live in `tally_config::taxonomy`.
//!
//! ```
//! use tally_config::{TaxonomyHandle, ValidateConfig, ValidateMode};
//! use tally_processors::validate::{ModeDecision, Validator};
//!
//! let handle = TaxonomyHandle::load(&ValidateConfig::default()).unwrap(); // built-in registry, lenient
//! let validator = Validator::new(handle);
//! # let event = tally_model::ActivityEvent {
//! #     id: uuid::Uuid::nil(), ts: chrono::Utc::now(), tenant_id: None, user_id: None,
//! #     session_id: None, action: "auth.logout".into(), outcome: tally_model::Outcome::Success,
//! #     resource_type: None, resource_id: None, service: None, trace_id: None, span_id: None,
//! #     attributes: Default::default(), taxonomy_valid: None, taxonomy_reason: None,
//! #     duration_ms: None, name: None, error_type: None, error_message: None };
//! assert_eq!(validator.decide(&event), ModeDecision::Store);
//! ```

mod check;
mod watch;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::json;
use tally_config::taxonomy::TaxonomyHandle;
use tally_config::ValidateMode;
use tally_model::{ActivityEvent, Outcome};

pub use check::{check, check_action};
pub use watch::{poll_interval, spawn_watcher};

/// Why an event is not valid: the `reason` label of
/// `tally_rejected_events_total` and the `reason` column of `rejected_events`.
/// A fixed, small vocabulary (see [`ReasonCode::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonCode {
    /// The action name is not lowercase dotted segments of bounded length.
    MalformedAction,
    /// The registry does not declare the action (nor a family of it).
    UnknownAction,
    /// The outcome is not one the action allows.
    OutcomeNotAllowed,
    /// An identity field the action requires (`user_id`, …) is missing.
    MissingField,
    /// An attribute the action (or an object schema) requires is missing or null.
    MissingAttribute,
    /// An attribute value has the wrong type.
    WrongType,
    /// An attribute value is not one of its `enum` values.
    NotInEnum,
    /// A string is longer than `max_length`.
    TooLong,
    /// A string is shorter than `min_length`.
    TooShort,
    /// A number is outside `minimum`..=`maximum`.
    OutOfRange,
    /// An array has more than `max_items` elements.
    TooManyItems,
}

impl ReasonCode {
    /// Every code, for zero-initialised metric series.
    pub const ALL: [ReasonCode; 11] = [
        ReasonCode::MalformedAction,
        ReasonCode::UnknownAction,
        ReasonCode::OutcomeNotAllowed,
        ReasonCode::MissingField,
        ReasonCode::MissingAttribute,
        ReasonCode::WrongType,
        ReasonCode::NotInEnum,
        ReasonCode::TooLong,
        ReasonCode::TooShort,
        ReasonCode::OutOfRange,
        ReasonCode::TooManyItems,
    ];

    /// The snake_case label value, e.g. `unknown_action`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::MalformedAction => "malformed_action",
            ReasonCode::UnknownAction => "unknown_action",
            ReasonCode::OutcomeNotAllowed => "outcome_not_allowed",
            ReasonCode::MissingField => "missing_field",
            ReasonCode::MissingAttribute => "missing_attribute",
            ReasonCode::WrongType => "wrong_type",
            ReasonCode::NotInEnum => "not_in_enum",
            ReasonCode::TooLong => "too_long",
            ReasonCode::TooShort => "too_short",
            ReasonCode::OutOfRange => "out_of_range",
            ReasonCode::TooManyItems => "too_many_items",
        }
    }

    /// Parses [`ReasonCode::as_str`] back.
    pub fn parse(text: &str) -> Option<ReasonCode> {
        ReasonCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason: a bounded code and a human message. The message names the field or
/// attribute path and the rule, never the attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// The reason's code.
    pub code: ReasonCode,
    /// What is wrong, in words.
    pub message: String,
}

impl Reason {
    /// A reason with `code` and `message`.
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Reason {
        Reason {
            code,
            message: message.into(),
        }
    }

    /// `{"code": "...", "message": "..."}`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What the registry says about one event, whatever the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Declared, and outcome and metadata fit.
    Valid,
    /// The action is not in the registry (code `unknown_action`).
    Unknown {
        /// Why.
        reason: Reason,
    },
    /// The action is declared but the outcome, identity fields or attributes break it.
    Invalid {
        /// Why.
        reason: Reason,
    },
    /// The action name itself has a bad shape (code `malformed_action`).
    Malformed {
        /// Why.
        reason: Reason,
    },
}

impl Verdict {
    /// The reason of a verdict other than `Valid`.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Verdict::Valid => None,
            Verdict::Unknown { reason }
            | Verdict::Invalid { reason }
            | Verdict::Malformed { reason } => Some(reason),
        }
    }

    /// Whether the event is valid.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }
}

/// What the pipeline does with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeDecision {
    /// Store it (`taxonomy_valid = true`, or unchecked in mode `off`).
    Store,
    /// Store it with `taxonomy_valid = false` and the reason (mode `lenient`).
    StoreFlagged {
        /// Why.
        reason: Reason,
    },
    /// Do not store it in `activity_events`: write it to `rejected_events` with
    /// the reason, count it in the OTLP `partial_success` and in
    /// `tally_rejected_events_total{reason}` (mode `strict`; malformed names in
    /// every mode).
    Quarantine {
        /// Why.
        reason: Reason,
    },
}

/// The decision for a verdict under a mode:
///
/// | verdict   | `off`  | `lenient`      | `strict`   |
/// |-----------|--------|----------------|------------|
/// | valid     | Store  | Store          | Store      |
/// | unknown   | Store  | StoreFlagged   | Quarantine |
/// | invalid   | Store  | StoreFlagged   | Quarantine |
/// | malformed | Quarantine | Quarantine | Quarantine |
///
/// (In mode `off` [`Validator`] does not even look up the registry.)
pub fn decide(mode: ValidateMode, verdict: Verdict) -> ModeDecision {
    match (verdict, mode) {
        (Verdict::Valid, _) => ModeDecision::Store,
        (Verdict::Malformed { reason }, _) => ModeDecision::Quarantine { reason },
        (Verdict::Unknown { .. } | Verdict::Invalid { .. }, ValidateMode::Off) => {
            ModeDecision::Store
        }
        (Verdict::Unknown { reason } | Verdict::Invalid { reason }, ValidateMode::Lenient) => {
            ModeDecision::StoreFlagged { reason }
        }
        (Verdict::Unknown { reason } | Verdict::Invalid { reason }, ValidateMode::Strict) => {
            ModeDecision::Quarantine { reason }
        }
    }
}

/// An event to store, with its taxonomy flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The event.
    pub event: ActivityEvent,
    /// `Some(true)`: valid; `Some(false)`: stored anyway (lenient), see `reason`;
    /// `None`: not checked (mode `off`).
    pub taxonomy_valid: Option<bool>,
    /// Why it is flagged invalid (`None`: valid or unchecked).
    pub reason: Option<Reason>,
}

/// An event for `rejected_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    /// The event.
    pub event: ActivityEvent,
    /// Why it is quarantined.
    pub reason: Reason,
}

impl Quarantined {
    /// The `record` column of `rejected_events`: the event as JSON (the
    /// [`ActivityEvent`] serde form, which replay deserializes back) under
    /// `event`, the reason under `reason`.
    pub fn record_json(&self) -> serde_json::Value {
        json!({
            "kind": "activity",
            "event": serde_json::to_value(&self.event).unwrap_or(serde_json::Value::Null),
            "reason": self.reason.to_json(),
        })
    }
}

/// A `rejected_events.record` that [`event_from_record`] cannot turn back into an event.
#[derive(Debug)]
pub struct RecordError(String);

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a quarantined activity record: {}", self.0)
    }
}

impl std::error::Error for RecordError {}

/// The event inside a `rejected_events.record` written from
/// [`Quarantined::record_json`], for replay: re-check it with
/// [`Validator::validate_batch`] and store it when it now passes (its id is
/// unchanged, so a replay that is retried stores it once).
pub fn event_from_record(record: &serde_json::Value) -> Result<ActivityEvent, RecordError> {
    match record.get("kind").and_then(serde_json::Value::as_str) {
        Some("activity") => {}
        Some(other) => return Err(RecordError(format!("kind is {other:?}"))),
        None => return Err(RecordError("no kind".into())),
    }
    let event = record
        .get("event")
        .ok_or_else(|| RecordError("no event".into()))?;
    serde_json::from_value(event.clone()).map_err(|error| RecordError(error.to_string()))
}

/// A batch split by the validator. Every input event is in exactly one list,
/// in input order within each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidatedBatch {
    /// Events to store in `activity_events`.
    pub stored: Vec<Checked>,
    /// Events for `rejected_events`.
    pub quarantined: Vec<Quarantined>,
}

impl ValidatedBatch {
    /// Number of quarantined events per reason code (for the metric).
    pub fn quarantined_by_reason(&self) -> BTreeMap<ReasonCode, u64> {
        let mut counts = BTreeMap::new();
        for item in &self.quarantined {
            *counts.entry(item.reason.code).or_insert(0) += 1;
        }
        counts
    }

    /// Number of stored events flagged `taxonomy_valid = false`.
    pub fn flagged(&self) -> usize {
        self.stored
            .iter()
            .filter(|c| c.taxonomy_valid == Some(false))
            .count()
    }

    /// The OTLP `partial_success.error_message` for the quarantined events, e.g.
    /// `2 records quarantined by the taxonomy (unknown_action: 1, malformed_action: 1); first: unknown_action: …`.
    /// `None` when nothing was quarantined.
    pub fn partial_success_message(&self) -> Option<String> {
        let first = self.quarantined.first()?;
        let counts: Vec<String> = self
            .quarantined_by_reason()
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        let n = self.quarantined.len();
        Some(format!(
            "{n} record{} quarantined by the taxonomy ({}); first: {}",
            if n == 1 { "" } else { "s" },
            counts.join(", "),
            first.reason
        ))
    }
}

/// Checks events against the current registry of a handle, in the handle's mode.
/// Cheap to clone; a reload is seen by the next call.
#[derive(Debug, Clone)]
pub struct Validator {
    handle: TaxonomyHandle,
}

impl Validator {
    /// A validator reading the registry of `handle`.
    pub fn new(handle: TaxonomyHandle) -> Validator {
        Validator { handle }
    }

    /// The registry handle.
    pub fn handle(&self) -> &TaxonomyHandle {
        &self.handle
    }

    /// The configured mode.
    pub fn mode(&self) -> ValidateMode {
        self.handle.mode()
    }

    /// The verdict for one event (mode `off`: the shape check only).
    pub fn check(&self, event: &ActivityEvent) -> Verdict {
        match self.mode() {
            ValidateMode::Off => check_action(&event.action)
                .map_or(Verdict::Valid, |reason| Verdict::Malformed { reason }),
            _ => check(&self.handle.current(), event),
        }
    }

    /// The decision for one event.
    pub fn decide(&self, event: &ActivityEvent) -> ModeDecision {
        decide(self.mode(), self.check(event))
    }

    /// Splits a batch. The registry is read once, so a whole batch is checked
    /// against one registry even while a reload happens.
    pub fn validate_batch(&self, events: Vec<ActivityEvent>) -> ValidatedBatch {
        let mode = self.mode();
        let taxonomy = self.handle.current();
        let mut batch = ValidatedBatch {
            stored: Vec::with_capacity(events.len()),
            quarantined: Vec::new(),
        };
        for mut event in events {
            if mode != ValidateMode::Off && event.outcome == Outcome::Unknown {
                if let Some(outcome) = taxonomy
                    .lookup(&event.action)
                    .and_then(|(_, spec)| spec.declared_outcome())
                {
                    event.outcome = outcome;
                }
            }
            let verdict = match mode {
                ValidateMode::Off => check_action(&event.action)
                    .map_or(Verdict::Valid, |reason| Verdict::Malformed { reason }),
                _ => check(&taxonomy, &event),
            };
            match decide(mode, verdict) {
                ModeDecision::Store => batch.stored.push(Checked {
                    event,
                    taxonomy_valid: (mode != ValidateMode::Off).then_some(true),
                    reason: None,
                }),
                ModeDecision::StoreFlagged { reason } => batch.stored.push(Checked {
                    event,
                    taxonomy_valid: Some(false),
                    reason: Some(reason),
                }),
                ModeDecision::Quarantine { reason } => {
                    batch.quarantined.push(Quarantined { event, reason })
                }
            }
        }
        batch
    }
}
