//! The token ledger against the real GenAI instrumentations.
//!
//! Each case runs one instrumentation from its registry (Python packages pinned
//! in `tests/genai/requirements/`; the Vercel AI SDK from npm, pinned in
//! `tests/genai/node/package-lock.json`) inside a request span that carries the user
//! and tenant, against a local fake OpenAI / Anthropic / Gemini server
//! (`tests/genai/fake_provider.py`) that answers with known usage, cached,
//! cache-creation and reasoning tokens included. Tally receives what the
//! instrumentation exports (spans and log records, OTLP/HTTP) with its default
//! configuration. For every call the fake served, the ledger must hold exactly
//! one row, attributed to the request span's user and tenant, with the
//! provider's usage in the convention's terms and the cost a hand computation
//! from the price table gives.
//!
//! Where an instrumentation does not report something, Tally cannot know it:
//! such cases list what is missing ([`Gap`]), and the test checks the row
//! against what was reported. Where Tally itself still gets a case wrong, the
//! case says so ([`Case::tally_wrong`]) and the test checks that it still is,
//! so that fixing it makes the test fail until the case is updated.
//! `docs/tokens.md` has the resulting table.
//!
//! The virtual environments are made once under the target folder (a few
//! minutes the first time). `TALLY_GENAI_FAMILIES=openlit,traceloop` runs a
//! subset.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{node_app, python_venv, FakeProvider, Tally, TestDatabase};
use serde_json::Value;

/// What an instrumentation leaves out of its telemetry for a call shape.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gap {
    /// Cache reads are not reported (the call is priced at the full input rate).
    CacheRead,
    /// Reasoning tokens are not reported (they stay inside the output count).
    Reasoning,
    /// The usage is the instrumentation's own estimate, not the provider's.
    Estimated,
}

struct Case {
    family: &'static str,
    scenario: &'static str,
    gaps: &'static [Gap],
    /// Why Tally's row is still wrong for this case (an open finding).
    tally_wrong: Option<&'static str>,
}

const fn case(family: &'static str, scenario: &'static str) -> Case {
    Case {
        family,
        scenario,
        gaps: &[],
        tally_wrong: None,
    }
}

const fn gaps(family: &'static str, scenario: &'static str, gaps: &'static [Gap]) -> Case {
    Case {
        family,
        scenario,
        gaps,
        tally_wrong: None,
    }
}

#[allow(dead_code)] // No case is marked wrong at present.
const fn wrong(family: &'static str, scenario: &'static str, why: &'static str) -> Case {
    Case {
        family,
        scenario,
        gaps: &[],
        tally_wrong: Some(why),
    }
}

const CASES: &[Case] = &[
    gaps("openai-v2", "chat", &[Gap::CacheRead, Gap::Reasoning]),
    gaps(
        "openai-v2",
        "stream_usage",
        &[Gap::CacheRead, Gap::Reasoning],
    ),
    case("openai-v2", "stream_no_usage"),
    case("openai-v2", "embeddings"),
    case("openinference", "chat"),
    case("openinference", "stream_usage"),
    case("openinference", "stream_no_usage"),
    case("openinference", "embeddings"),
    gaps("openlit", "chat", &[Gap::Reasoning]),
    gaps("openlit", "stream_usage", &[Gap::Reasoning]),
    gaps("openlit", "stream_no_usage", &[Gap::Estimated]),
    case("openlit", "embeddings"),
    case("openlit", "anthropic"),
    case("openlit", "gemini"),
    case("traceloop", "chat"),
    gaps("traceloop", "stream_usage", &[Gap::Reasoning]),
    case("traceloop", "stream_no_usage"),
    case("traceloop", "embeddings"),
    case("traceloop", "anthropic"),
    case("traceloop", "gemini"),
    case("pydantic-ai", "agent"),
    case("vercel-ai", "chat"),
    case("vercel-ai", "stream_usage"),
    case("vercel-ai", "embeddings"),
    case("vercel-ai", "anthropic"),
];

/// The one family that runs on Node (the others are Python packages).
const NODE_FAMILY: &str = "vercel-ai";

/// The expected reported usage for a case: the provider's, minus the gaps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tokens {
    input: i64,
    output: i64,
    cache_read: i64,
    cache_write: i64,
    reasoning: i64,
}

/// US dollars per million tokens (input, output, cache read, cache write), from
/// `config/defaults/prices.yaml` for the models the fake provider serves.
fn price(model: &str) -> (f64, f64, f64, f64) {
    match model {
        m if m.starts_with("gpt-4o-mini") => (0.15, 0.60, 0.075, 0.15),
        "text-embedding-3-small" => (0.02, 0.0, 0.02, 0.02),
        m if m.starts_with("claude-sonnet-4-5") => (3.00, 15.00, 0.30, 3.75),
        "gemini-2.5-flash" => (0.30, 2.50, 0.075, 0.30),
        other => panic!("no hand price for {other}"),
    }
}

/// The cost by hand: uncached input, cache reads, cache writes and output, each
/// at its rate.
fn hand_cost(model: &str, tokens: Tokens) -> f64 {
    let (input, output, cache_read, cache_write) = price(model);
    let uncached = tokens.input - tokens.cache_read - tokens.cache_write;
    (uncached as f64 * input
        + tokens.cache_read as f64 * cache_read
        + tokens.cache_write as f64 * cache_write
        + tokens.output as f64 * output)
        / 1e6
}

fn expected_tokens(usage: &Value, gaps: &[Gap]) -> Tokens {
    let get = |name: &str| usage[name].as_i64().expect("usage field");
    let mut tokens = Tokens {
        input: get("input"),
        output: get("output"),
        cache_read: get("cache_read"),
        cache_write: get("cache_write"),
        reasoning: get("reasoning"),
    };
    if gaps.contains(&Gap::CacheRead) {
        tokens.cache_read = 0;
    }
    if gaps.contains(&Gap::Reasoning) {
        tokens.reasoning = 0;
    }
    tokens
}

/// The Python of a virtual environment for `family` with its pinned requirements.
fn venv(family: &str) -> PathBuf {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/genai/requirements")
        .join(format!("{family}.txt"));
    python_venv(&format!("genai-venvs/{family}"), &requirements)
        .join("bin")
        .join("python")
}

/// Runs one case's app; returns (trace id, the calls the fake served).
/// `program` is the family's Python, or Node with `fake_url` set.
fn run_case(
    program: &Path,
    fake_url: Option<&str>,
    case: &Case,
    http_url: &str,
    tenant: &str,
) -> (String, Vec<Value>) {
    let mut command = match fake_url {
        None => {
            let mut command = Command::new(program);
            command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/genai/run.py"));
            command.arg(case.family);
            command
        }
        Some(url) => {
            let mut command = Command::new("node");
            command.arg(program.join("run.mjs")).env("FAKE_URL", url);
            command
        }
    };
    let output = command
        .arg(case.scenario)
        .env("TALLY_OTLP_HTTP", http_url)
        .env("TALLY_TENANT", tenant)
        .env("TALLY_USER", "corpus-user")
        .env("OTEL_SDK_DISABLED", "false")
        .output()
        .expect("run the instrumented app");
    assert!(
        output.status.success(),
        "{}/{} failed: {}",
        case.family,
        case.scenario,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "{}/{}: no report ({e}): {stdout}",
            case.family, case.scenario
        )
    });
    let trace_id = report["trace_id"].as_str().expect("trace_id").to_owned();
    let served = report["served"].as_array().expect("served").clone();
    (trace_id, served)
}

#[derive(Debug)]
struct Row {
    tenant: String,
    user: Option<String>,
    usage_known: bool,
    tokens: Tokens,
    total: Option<i64>,
    cost: Option<f64>,
}

async fn rows_of(database: &TestDatabase, trace_id: &str) -> Vec<Row> {
    let client = database.client().await;
    client
        .query(
            "SELECT tenant_id, user_id, usage_known, input_tokens, output_tokens, \
                    cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, \
                    cost_usd::float8 \
             FROM token_usage WHERE trace_id = $1 ORDER BY seq",
            &[&trace_id],
        )
        .await
        .expect("token rows")
        .iter()
        .map(|row| {
            let count = |i: usize| row.get::<_, Option<i64>>(i).unwrap_or(0);
            Row {
                tenant: row.get(0),
                user: row.get(1),
                usage_known: row.get(2),
                tokens: Tokens {
                    input: count(3),
                    output: count(4),
                    cache_read: count(5),
                    cache_write: count(6),
                    reasoning: count(7),
                },
                total: row.get(8),
                cost: row.get(9),
            }
        })
        .collect()
}

/// What is wrong with `rows` for the calls in `served`, if anything.
fn problems(case: &Case, tenant: &str, served: &[Value], rows: &[Row]) -> Vec<String> {
    let mut found = Vec::new();
    if rows.len() != served.len() {
        found.push(format!(
            "{} row(s) for {} call(s)",
            rows.len(),
            served.len()
        ));
    }
    for (call, row) in served.iter().zip(rows) {
        if row.tenant != tenant || row.user.as_deref() != Some("corpus-user") {
            found.push(format!("attributed to {:?}/{:?}", row.tenant, row.user));
        }
        if case.gaps.contains(&Gap::Estimated) {
            continue;
        }
        let reported = call["reported"].as_bool().unwrap_or(false);
        if !reported {
            if row.usage_known {
                found.push(format!("usage known without a report: {:?}", row.tokens));
            }
            continue;
        }
        let want = expected_tokens(&call["usage"], case.gaps);
        if !row.usage_known || row.tokens != want {
            found.push(format!("tokens {:?}, want {want:?}", row.tokens));
        }
        if row.total != Some(want.input + want.output) {
            found.push(format!(
                "total {:?}, want {}",
                row.total,
                want.input + want.output
            ));
        }
        let model = call["model"].as_str().expect("model");
        let cost = hand_cost(model, want);
        if row.cost.is_none_or(|got| (got - cost).abs() > 1e-9) {
            found.push(format!("cost {:?}, want {cost:.10}", row.cost));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn every_instrumentation_call_is_one_exact_row() {
    let only: Option<Vec<String>> = std::env::var("TALLY_GENAI_FAMILIES")
        .ok()
        .map(|list| list.split(',').map(str::to_owned).collect());
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|case| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|f| f == case.family))
        })
        .collect();
    let mut families: Vec<&str> = cases
        .iter()
        .map(|case| case.family)
        .filter(|family| *family != NODE_FAMILY)
        .collect();
    families.dedup();
    let node = cases
        .iter()
        .any(|case| case.family == NODE_FAMILY)
        .then(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/genai/node");
            let files = ["package.json", "package-lock.json", "run.mjs"];
            (
                node_app(&source, &files, "genai-node"),
                FakeProvider::start(),
            )
        });
    // The environments install in parallel (network-bound).
    let pythons: Vec<(String, PathBuf)> = std::thread::scope(|scope| {
        let handles: Vec<_> = families
            .iter()
            .map(|family| scope.spawn(move || (family.to_string(), venv(family))))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("venv thread"))
            .collect()
    });

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let http_url = tally.http_url("");
    // The apps run three at a time (most of each run is Python importing).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(vec![None; cases.len()]);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(index) else { break };
                if case.family == NODE_FAMILY {
                    continue;
                }
                let python = &pythons
                    .iter()
                    .find(|(family, _)| family == case.family)
                    .expect("venv")
                    .1;
                let tenant = format!("corpus-{index}");
                let (trace_id, served) = run_case(python, None, case, &http_url, &tenant);
                results.lock().expect("results")[index] = Some((tenant, trace_id, served));
            });
        }
        if let Some((app, fake)) = &node {
            scope.spawn(|| {
                for (index, case) in cases.iter().enumerate() {
                    if case.family != NODE_FAMILY {
                        continue;
                    }
                    let tenant = format!("corpus-{index}");
                    let (trace_id, served) =
                        run_case(app, Some(&fake.url), case, &http_url, &tenant);
                    results.lock().expect("results")[index] = Some((tenant, trace_id, served));
                }
            });
        }
    });
    let runs: Vec<(String, String, Vec<Value>)> = results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|run| run.expect("every case ran"))
        .collect();
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for (case, (tenant, trace_id, served)) in cases.iter().zip(runs) {
        // Every export was acknowledged after commit before the script exited;
        // attribution through the trace may still be settling.
        // (A case that never settles is reported with the rows it has.)
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let rows = loop {
            let rows = rows_of(&database, &trace_id).await;
            let settled = !rows.is_empty() && rows.iter().all(|row| row.tenant == tenant);
            if settled || std::time::Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let found = problems(case, &tenant, &served, &rows);
        let verdict = match (case.tally_wrong, found.is_empty()) {
            (None, true) => "exact".to_owned(),
            (Some(why), false) => format!("still wrong: {why}"),
            (None, false) => {
                failures.push(format!(
                    "{}/{}: {}",
                    case.family,
                    case.scenario,
                    found.join("; ")
                ));
                "WRONG".to_owned()
            }
            (Some(why), true) => {
                failures.push(format!(
                    "{}/{}: now exact; remove its `wrong` mark ({why})",
                    case.family, case.scenario
                ));
                "exact (mark stale)".to_owned()
            }
        };
        table.push(format!(
            "| {} | {} | {} row(s) for {} call(s) | {} | {} |",
            case.family,
            case.scenario,
            rows.len(),
            served.len(),
            if case.gaps.is_empty() {
                "—".to_owned()
            } else {
                format!("{:?}", case.gaps)
            },
            if found.is_empty() {
                verdict
            } else {
                format!("{verdict}: {}", found.join("; "))
            }
        ));
    }
    println!("| family | call | rows | not reported by the instrumentation | ledger |");
    println!("| --- | --- | --- | --- | --- |");
    for line in &table {
        println!("{line}");
    }
    assert!(
        failures.is_empty(),
        "ledger errors:\n{}",
        failures.join("\n")
    );
}
