//! SIEM encodings of the raw rows for `GET /api/v1/export`: native NDJSON,
//! OCSF 1.3 ([`ocsf`]), Elastic Common Schema ([`ecs`]), ArcSight CEF
//! ([`cef`]) and CSV ([`csv`]). The mappings are documented in `docs/siem.md`.

pub mod cef;
pub mod csv;
pub mod ecs;
pub mod ocsf;

use chrono::{DateTime, Utc};

/// Product name in every encoding.
pub const PRODUCT: &str = "Tally";
/// Tally's version (OCSF `metadata.product.version`, CEF device version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The action class: the action's first dot-separated segment.
pub fn action_class(action: &str) -> &str {
    action.split('.').next().unwrap_or(action)
}

/// Whether `action` is an authentication action (`auth` or `auth.*`).
pub fn is_authentication(action: &str) -> bool {
    action_class(action) == "auth"
}

/// Milliseconds since the Unix epoch of an item timestamp (`format_ts` text);
/// `None` if it does not parse (it always does for rows read from the database).
pub fn epoch_millis(ts: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// The action a `token_usage` row stands for: `gen_ai.<operation>` (or `gen_ai.call`).
pub fn token_action(operation: Option<&str>) -> String {
    match operation {
        Some(op) if !op.is_empty() => format!("gen_ai.{op}"),
        _ => "gen_ai.call".to_owned(),
    }
}
