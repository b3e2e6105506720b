//! `budgets`: spending and token limits per tenant and/or user and period, with
//! the thresholds at which Tally records an activity event.
//!
//! ```
//! let config = tally_config::Config::from_yaml_str(
//!     "budgets:\n  - { name: acme-monthly, tenant: acme, period: month, limit_usd: 500 }\n",
//! ).unwrap();
//! let budget = &config.budgets[0];
//! assert_eq!(budget.thresholds, vec![0.5, 0.8, 1.0]);
//! assert_eq!(budget.limit(), tally_config::BudgetLimit::Usd(500.0));
//! ```

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::KeyError;

/// Longest budget name, in bytes (it is a metric label and an event attribute).
pub const MAX_BUDGET_NAME_LEN: usize = 64;

/// Most thresholds per budget.
pub const MAX_BUDGET_THRESHOLDS: usize = 16;

/// Largest accepted threshold (a fraction of the limit; 10 = ten times the limit).
pub const MAX_BUDGET_THRESHOLD: f64 = 10.0;

/// One entry of `budgets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Unique name: letters, digits, `_`, `-`, `.`; at most 64 bytes.
    pub name: String,
    /// The tenant whose usage counts (`None`: every tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The user whose usage counts (`None`: every user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The calendar period (UTC) the usage is summed over.
    pub period: BudgetPeriod,
    /// Limit in US dollars of estimated cost (set this or `limit_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<f64>,
    /// Limit in tokens (`total_tokens`; set this or `limit_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_tokens: Option<u64>,
    /// Fractions of the limit at which an event is recorded, once per period
    /// (default `[0.5, 0.8, 1.0]`).
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<f64>,
}

fn default_thresholds() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

/// `budgets[].period`: calendar periods in UTC; weeks start on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// Calendar days (UTC).
    Day,
    /// ISO weeks, from Monday (UTC).
    Week,
    /// Calendar months (UTC).
    Month,
}

impl BudgetPeriod {
    /// `day`, `week` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
        }
    }
}

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetLimit {
    /// Estimated cost in US dollars.
    Usd(f64),
    /// `total_tokens`.
    Tokens(u64),
}

impl BudgetLimit {
    /// `usd` or `tokens`.
    pub fn unit(self) -> &'static str {
        match self {
            BudgetLimit::Usd(_) => "usd",
            BudgetLimit::Tokens(_) => "tokens",
        }
    }

    /// The limit as a number.
    pub fn value(self) -> f64 {
        match self {
            BudgetLimit::Usd(usd) => usd,
            BudgetLimit::Tokens(tokens) => tokens as f64,
        }
    }
}

impl BudgetConfig {
    /// The limit (validated configs have exactly one of `limit_usd` and `limit_tokens`).
    pub fn limit(&self) -> BudgetLimit {
        match (self.limit_usd, self.limit_tokens) {
            (Some(usd), _) => BudgetLimit::Usd(usd),
            (None, Some(tokens)) => BudgetLimit::Tokens(tokens),
            (None, None) => BudgetLimit::Tokens(0),
        }
    }

    /// Whether the budget counts the usage of `tenant` / `user`: a budget without
    /// a tenant (user) counts every tenant (user).
    pub fn applies_to(&self, tenant: Option<&str>, user: Option<&str>) -> bool {
        let matches = |scope: &Option<String>, value: Option<&str>| match scope {
            None => true,
            Some(scope) => value == Some(scope.as_str()),
        };
        matches(&self.tenant, tenant) && matches(&self.user, user)
    }
}

/// Checks `budgets`: answers the failing key (relative to `budgets`) and why.
pub(crate) fn check(budgets: &[BudgetConfig]) -> Result<(), KeyError> {
    let mut names = HashSet::new();
    for (i, budget) in budgets.iter().enumerate() {
        let key = |field: &str| format!("[{i}].{field}");
        let name = &budget.name;
        if name.is_empty() || name.len() > MAX_BUDGET_NAME_LEN {
            return Err(KeyError::new(
                key("name"),
                format!("must be 1 to {MAX_BUDGET_NAME_LEN} bytes"),
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(KeyError::new(
                key("name"),
                "may hold only letters, digits, `_`, `-` and `.`".into(),
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(KeyError::new(
                key("name"),
                format!("`{name}` names two budgets"),
            ));
        }
        for (field, value) in [("tenant", &budget.tenant), ("user", &budget.user)] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(KeyError::new(
                    key(field),
                    "must not be empty (leave it out to count every one)".into(),
                ));
            }
        }
        match (budget.limit_usd, budget.limit_tokens) {
            (Some(_), Some(_)) => {
                return Err(KeyError::new(
                    key("limit_usd"),
                    "set limit_usd or limit_tokens, not both".into(),
                ))
            }
            (None, None) => {
                return Err(KeyError::new(
                    key("limit_usd"),
                    "set limit_usd (US dollars) or limit_tokens".into(),
                ))
            }
            (Some(usd), None) if !(usd.is_finite() && usd > 0.0) => {
                return Err(KeyError::new(
                    key("limit_usd"),
                    "must be a number above 0".into(),
                ))
            }
            (None, Some(0)) => {
                return Err(KeyError::new(
                    key("limit_tokens"),
                    "must be at least 1".into(),
                ))
            }
            _ => {}
        }
        if budget.thresholds.is_empty() || budget.thresholds.len() > MAX_BUDGET_THRESHOLDS {
            return Err(KeyError::new(
                key("thresholds"),
                format!("must list 1 to {MAX_BUDGET_THRESHOLDS} fractions of the limit"),
            ));
        }
        let mut previous = 0.0;
        for (j, threshold) in budget.thresholds.iter().enumerate() {
            if !(threshold.is_finite() && *threshold > previous)
                || *threshold > MAX_BUDGET_THRESHOLD
            {
                return Err(KeyError::new(
                    format!("[{i}].thresholds[{j}]"),
                    format!(
                        "thresholds are increasing fractions of the limit above 0 and at most \
                         {MAX_BUDGET_THRESHOLD} (1.0 = the limit)"
                    ),
                ));
            }
            previous = *threshold;
        }
    }
    Ok(())
}
