//! The LLM price table: cost of a model call estimated at ingest.
//!
//! A model matches an entry by exact name, else by the longest entry name that
//! is a prefix of it followed by `-` and a digit (a dated or numbered variant:
//! `gpt-4o-2024-08-06` → `gpt-4o`, `claude-sonnet-4-5-20250929` →
//! `claude-sonnet-4-5`) or by `-latest`. Names compare in lowercase, after the
//! last `/` (`models/gemini-2.0-flash`, `openai/gpt-4o`). Among the entries of
//! the matched name, those whose provider matches the call's are preferred, and
//! the one with the latest `effective_from` on or before the call's (UTC) day
//! applies; configured entries win ties over built-in ones.

use crate::fast_hash::FastMap;

use chrono::NaiveDate;
use tally_config::{ModelPrice, PricingConfig};

/// Prices in US dollars per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// The provider, when the entry names one.
    pub provider: Option<String>,
    /// The first day (UTC) the price applies.
    pub effective_from: NaiveDate,
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Input tokens read from the prompt cache.
    pub cache_read: f64,
    /// Input tokens written to the prompt cache.
    pub cache_write: f64,
}

/// Token counts a cost is computed from (see [`PriceTable::cost`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Every input token, cached ones included.
    pub input: i64,
    /// Output tokens.
    pub output: i64,
    /// Input tokens read from the prompt cache.
    pub cache_read: i64,
    /// Input tokens written to the prompt cache.
    pub cache_write: i64,
}

/// The price table in effect.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    by_model: FastMap<String, Vec<Price>>,
}

/// The lookup form of a model name.
pub fn normalize_model(model: &str) -> String {
    let name = model.rsplit('/').next().unwrap_or(model);
    name.trim().to_ascii_lowercase()
}

impl PriceTable {
    /// From the `pricing` config (its entries first, then the built-in table).
    pub fn from_config(config: &PricingConfig) -> PriceTable {
        PriceTable::from_entries(&config.effective_models())
    }

    /// From entries in precedence order (earlier wins ties).
    pub fn from_entries(entries: &[ModelPrice]) -> PriceTable {
        let mut by_model: FastMap<String, Vec<Price>> = FastMap::default();
        for entry in entries {
            let Ok(effective_from) = NaiveDate::parse_from_str(&entry.effective_from, "%Y-%m-%d")
            else {
                continue;
            };
            by_model
                .entry(normalize_model(&entry.model))
                .or_default()
                .push(Price {
                    provider: entry.provider.as_ref().map(|p| p.to_ascii_lowercase()),
                    effective_from,
                    input: entry.input,
                    output: entry.output,
                    cache_read: entry.cache_read.unwrap_or(entry.input),
                    cache_write: entry.cache_write.unwrap_or(entry.input),
                });
        }
        PriceTable { by_model }
    }

    /// The price of `model` (by `provider`) on `day`, if any.
    pub fn lookup(&self, model: &str, provider: Option<&str>, day: NaiveDate) -> Option<&Price> {
        let name = normalize_model(model);
        let key = if self.by_model.contains_key(&name) {
            name
        } else {
            self.by_model
                .keys()
                .filter(|k| is_variant_of(&name, k))
                .max_by_key(|k| k.len())?
                .clone()
        };
        let prices = self.by_model.get(&key)?;
        let provider = provider.map(str::to_ascii_lowercase);
        let provider_matches = |p: &Price| match (&p.provider, &provider) {
            (Some(a), Some(b)) => b.contains(a.as_str()) || a.contains(b.as_str()),
            _ => false,
        };
        let applicable = |p: &&Price| p.effective_from <= day;
        // `max_by_key` keeps the last maximum: iterate in reverse so the earliest
        // entry (configured before built-in) wins ties.
        let preferred = prices
            .iter()
            .rev()
            .filter(|p| applicable(p) && provider_matches(p))
            .max_by_key(|p| p.effective_from);
        preferred.or_else(|| {
            prices
                .iter()
                .rev()
                .filter(applicable)
                .max_by_key(|p| p.effective_from)
        })
    }

    /// Cost in US dollars of `usage` at `price`.
    ///
    /// Input tokens include cached ones (GenAI semantic conventions; the token
    /// pass normalises the families that report Anthropic's raw input before
    /// pricing): uncached input = input − cache read − cache write, each part at
    /// its price (never below zero).
    pub fn cost(price: &Price, usage: Usage) -> f64 {
        let input = usage.input.max(0);
        let cache_read = usage.cache_read.max(0);
        let cache_write = usage.cache_write.max(0);
        // Counts come from clients (up to i64::MAX): the sum saturates, never overflows.
        let uncached = input
            .saturating_sub(cache_read.saturating_add(cache_write))
            .max(0);
        (uncached as f64 * price.input
            + cache_read as f64 * price.cache_read
            + cache_write as f64 * price.cache_write
            + usage.output.max(0) as f64 * price.output)
            / 1_000_000.0
    }
}

/// `name` is `base` followed by `-<digit>…` or `-latest`.
fn is_variant_of(name: &str, base: &str) -> bool {
    let Some(rest) = name.strip_prefix(base) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_digit()) || rest == "latest"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(model: &str, from: &str, input: f64, output: f64) -> ModelPrice {
        ModelPrice {
            provider: None,
            model: model.into(),
            effective_from: from.into(),
            input,
            output,
            cache_read: None,
            cache_write: None,
        }
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn exact_then_longest_dated_prefix() {
        let table = PriceTable::from_entries(&[
            entry("gpt-4o", "2024-01-01", 2.5, 10.0),
            entry("gpt-4o-mini", "2024-01-01", 0.15, 0.6),
            entry("o3", "2024-01-01", 2.0, 8.0),
        ]);
        let d = day("2025-01-01");
        assert_eq!(table.lookup("gpt-4o", None, d).unwrap().input, 2.5);
        assert_eq!(
            table.lookup("gpt-4o-2024-08-06", None, d).unwrap().input,
            2.5
        );
        assert_eq!(
            table
                .lookup("GPT-4o-mini-2024-07-18", None, d)
                .unwrap()
                .input,
            0.15
        );
        assert_eq!(table.lookup("openai/gpt-4o", None, d).unwrap().input, 2.5);
        assert_eq!(table.lookup("gpt-4o-latest", None, d).unwrap().input, 2.5);
        // Not a dated variant: another model, unpriced.
        assert!(table.lookup("o3-mini", None, d).is_none());
        assert!(table.lookup("gpt-4o-audio-preview", None, d).is_none());
        assert!(table.lookup("llama-3", None, d).is_none());
    }

    #[test]
    fn latest_effective_date_not_after_the_day_applies() {
        let table = PriceTable::from_entries(&[
            entry("o3", "2025-04-16", 10.0, 40.0),
            entry("o3", "2025-06-10", 2.0, 8.0),
        ]);
        assert!(table.lookup("o3", None, day("2025-04-15")).is_none());
        assert_eq!(
            table.lookup("o3", None, day("2025-04-16")).unwrap().input,
            10.0
        );
        assert_eq!(
            table.lookup("o3", None, day("2025-06-09")).unwrap().input,
            10.0
        );
        assert_eq!(
            table.lookup("o3", None, day("2025-06-10")).unwrap().input,
            2.0
        );
        assert_eq!(
            table
                .lookup("o3-2025-04-16", None, day("2026-01-01"))
                .unwrap()
                .input,
            2.0
        );
    }

    #[test]
    fn configured_entries_win_and_provider_is_preferred() {
        let mut azure = entry("gpt-4o", "2024-01-01", 3.0, 12.0);
        azure.provider = Some("azure".into());
        let table = PriceTable::from_entries(&[
            entry("gpt-4o", "2024-01-01", 1.0, 1.0),
            azure,
            entry("gpt-4o", "2024-01-01", 2.5, 10.0),
        ]);
        let d = day("2025-01-01");
        assert_eq!(table.lookup("gpt-4o", None, d).unwrap().input, 1.0);
        assert_eq!(
            table
                .lookup("gpt-4o", Some("azure.ai.openai"), d)
                .unwrap()
                .input,
            3.0
        );
    }

    #[test]
    fn cost_prices_cached_input_apart() {
        let price = Price {
            provider: None,
            effective_from: day("2024-01-01"),
            input: 3.0,
            output: 15.0,
            cache_read: 0.3,
            cache_write: 3.75,
        };
        let usage = Usage {
            input: 1_000_000,
            output: 100_000,
            cache_read: 400_000,
            cache_write: 100_000,
        };
        // 500k uncached × 3 + 400k × 0.3 + 100k × 3.75 + 100k × 15, per million.
        let expected = 0.5 * 3.0 + 0.4 * 0.3 + 0.1 * 3.75 + 0.1 * 15.0;
        assert!((PriceTable::cost(&price, usage) - expected).abs() < 1e-9);
        // Inconsistent counts (cache above input) never price a negative uncached part.
        let raw = Usage {
            input: 10,
            output: 0,
            cache_read: 400,
            cache_write: 0,
        };
        let expected = (400.0 * 0.3) / 1e6;
        assert!((PriceTable::cost(&price, raw) - expected).abs() < 1e-12);
    }

    #[test]
    fn builtin_table_prices_common_models() {
        let table = PriceTable::from_config(&PricingConfig::default());
        let d = day("2026-01-01");
        for model in [
            "gpt-4o-2024-08-06",
            "gpt-4o-mini",
            "gpt-4.1",
            "o3",
            "o4-mini-2025-04-16",
            "text-embedding-3-small",
            "claude-sonnet-4-5-20250929",
            "claude-3-5-haiku-20241022",
            "claude-opus-4-1-20250805",
            "gemini-2.5-flash",
            "models/gemini-2.0-flash",
        ] {
            assert!(table.lookup(model, None, d).is_some(), "{model} unpriced");
        }
    }
}
