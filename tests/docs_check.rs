//! The docs say what the code does, where that can be checked mechanically:
//!
//! - the reference block of docs/configuration.md parses with the config crate's parser
//!   (every key exists, every value is valid) and equals the built-in defaults;
//! - every default stated in prose (`` `key` (default N) ``) or in a `| knob | default |`
//!   table anywhere in docs/ is the code's default for a config key of that name;
//! - every metric in docs/metrics.md, and every `reason` value listed for it, is exported
//!   by a fresh instance at its first scrape.
//!
//! (Routes and parameters of docs/api.md are checked against the OpenAPI document by
//! admin-api/tests/openapi.rs.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Tally, TestDatabase};
use serde_json::Value as Json;
use tally_config::Config;

// The reference must parse: `Config::from_yaml_str` validates every key and value.

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced block that follows `heading` in `text`.
fn block_after<'a>(text: &'a str, heading: &str) -> &'a str {
    let at = text
        .find(heading)
        .unwrap_or_else(|| panic!("{heading:?} not found"));
    let rest = &text[at..];
    let open = rest.find("```").expect("a fenced block");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    &body[..body.find("```").expect("closing fence")]
}

/// Leaf paths and values of a JSON tree (`a.b.c` → value).
fn leaves(json: &Json, path: &str, out: &mut BTreeMap<String, Json>) {
    match json {
        Json::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaves(value, &path, out);
            }
        }
        other => {
            out.insert(path.to_owned(), other.clone());
        }
    }
}

fn default_leaves() -> BTreeMap<String, Json> {
    let json = serde_json::to_value(Config::default()).expect("the defaults serialize");
    let mut out = BTreeMap::new();
    leaves(&json, "", &mut out);
    out
}

#[test]
fn the_configuration_reference_parses_and_equals_the_defaults() {
    let text = doc("configuration.md");
    let block = block_after(&text, "## Reference (with defaults)");
    let parsed = Config::from_yaml_str(block)
        .unwrap_or_else(|e| panic!("docs/configuration.md's reference does not validate: {e}"));
    let mut documented = BTreeMap::new();
    leaves(
        &serde_json::to_value(&parsed).expect("serialize"),
        "",
        &mut documented,
    );
    let code = default_leaves();
    // An optional section the code leaves unset (`admin_api.auth.jwt`) is spelled out in
    // the docs with its keys and their values once set.
    let unset_in_code = |path: &str| {
        code.iter()
            .any(|(c, v)| v.is_null() && path.starts_with(&format!("{c}.")))
    };
    let mut differences = Vec::new();
    for (path, value) in &code {
        match documented.get(path) {
            Some(doc_value) if doc_value == value => {}
            None if value.is_null()
                && documented
                    .keys()
                    .any(|d| d.starts_with(&format!("{path}."))) => {}
            other => differences.push(format!(
                "{path}: code {value}, docs {}",
                other.map_or("(absent)".to_owned(), Json::to_string)
            )),
        }
    }
    for (path, value) in &documented {
        if !code.contains_key(path) && !unset_in_code(path) {
            differences.push(format!("{path}: docs {value}, code (absent)"));
        }
    }
    assert!(
        differences.is_empty(),
        "docs/configuration.md's reference differs from the code's defaults:\n{}",
        differences.join("\n")
    );
}

/// A stated default as the text says it: `50,000` → `50000`, `300 s` → `300`,
/// `4 (half of …` → `4`, `100 000` → `100000`; a word (`true`, `lenient`) as it is.
fn normalize(stated: &str) -> String {
    let stated = stated.trim();
    if stated.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        let number: String = stated
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, ',' | '_' | ' ' | '.'))
            .filter(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        number.trim_end_matches('.').to_owned()
    } else {
        stated
            .split([';', ':', ')', ' ', ','])
            .next()
            .unwrap_or("")
            .trim_matches('`')
            .to_owned()
    }
}

fn leaf_text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Records a stated default, unless the text states none (`–`, empty).
fn push_stated(out: &mut Vec<(String, String, String)>, doc: &str, key: &str, value: &str) {
    let value = normalize(value);
    if !value.is_empty() && !matches!(value.as_str(), "–" | "-" | "—" | "none") {
        out.push((doc.to_owned(), key.to_owned(), value));
    }
}

/// `(doc, key, stated default)` of every default the docs state in prose or tables.
fn stated_defaults() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("docs/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("read doc");
        // Prose: `key` (default VALUE…
        for (at, _) in text.match_indices("` (default ") {
            let Some(open) = text[..at].rfind('`') else {
                continue;
            };
            let key = &text[open + 1..at];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            let rest = &text[at + "` (default ".len()..];
            let value = rest.split([')', '\n']).next().unwrap_or("");
            push_stated(&mut out, &name, key, value);
        }
        // Tables whose second column is `default`.
        let mut in_defaults_table = false;
        for line in text.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if !line.starts_with('|') {
                in_defaults_table = false;
                continue;
            }
            if cells.get(2) == Some(&"default") {
                in_defaults_table = true;
                continue;
            }
            if in_defaults_table {
                if let (Some(key), Some(value)) = (cells.get(1), cells.get(2)) {
                    let key = key.trim_matches('`');
                    if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !key.is_empty() {
                        push_stated(&mut out, &name, key, value);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_default_stated_in_the_docs_is_the_codes() {
    let code = default_leaves();
    let stated = stated_defaults();
    assert!(
        stated.iter().any(|(_, key, _)| key == "max_traces"),
        "the scan finds the stated defaults: {stated:?}"
    );
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (doc, key, value) in &stated {
        let candidates: Vec<String> = code
            .iter()
            .filter(|(path, _)| path.rsplit('.').next() == Some(key.as_str()))
            .map(|(_, v)| leaf_text(v))
            .collect();
        if candidates.is_empty() {
            continue; // not a config key (a query parameter, a column, …)
        }
        checked += 1;
        if !candidates.contains(value) {
            wrong.push(format!(
                "docs/{doc}: `{key}` default {value}, the code has {candidates:?}"
            ));
        }
    }
    assert!(checked >= 10, "only {checked} stated defaults checked");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `(metric, reason values)` of every metric row of docs/metrics.md.
fn documented_metrics() -> Vec<(String, Vec<String>)> {
    let text = doc("metrics.md");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `tally_") else {
            continue;
        };
        let name = format!(
            "tally_{}",
            &rest[..rest.find('`').expect("closing backtick")]
        );
        let labels = line.split('|').nth(3).unwrap_or("");
        let mut reasons = Vec::new();
        if let Some(at) = labels.find("`reason` (") {
            let list = &labels[at + "`reason` (".len()..];
            let list = &list[..list
                .find(';')
                .or_else(|| list.find(')'))
                .unwrap_or(list.len())];
            reasons = list
                .split(',')
                .map(|v| v.trim().trim_matches('`').to_owned())
                .filter(|v| !v.is_empty() && !v.contains(' '))
                .collect();
        }
        out.push((name, reasons));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_and_reason_is_exported_at_the_first_scrape() {
    let documented = documented_metrics();
    assert!(documented.len() >= 20, "{documented:?}");
    assert!(
        documented
            .iter()
            .any(|(name, reasons)| name == "tally_rejected_events_total"
                && reasons.iter().any(|r| r == "malformed_action")),
        "{documented:?}"
    );
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let scrape = reqwest::get(tally.metrics_url())
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let mut missing = Vec::new();
    for (name, reasons) in &documented {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let exported = scrape.lines().any(|line| {
            line.starts_with(&format!("{name} "))
                || line.starts_with(&format!("{name}{{"))
                || line.starts_with(&format!("# TYPE {name} "))
                || line.starts_with(&format!("# TYPE {family} "))
        });
        if !exported {
            missing.push(name.clone());
            continue;
        }
        for reason in reasons {
            let series = format!("reason=\"{reason}\"");
            if !scrape
                .lines()
                .any(|line| line.starts_with(&format!("{name}{{")) && line.contains(&series))
            {
                missing.push(format!("{name}{{{series}}}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented in docs/metrics.md but not exported at the first scrape: {missing:?}\n{scrape}"
    );
}
