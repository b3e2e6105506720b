//! Synthetic audit and token rows for the query benchmark, written with binary
//! `COPY` straight into `activity_events` and `token_usage`.
//!
//! Distributions (deterministic for a given seed): tenants are Zipf-like
//! (s = 1, tenant 1 is the largest, about 13% of the rows at 1,000 tenants);
//! each tenant owns a pool of users proportional to its weight (at least 3), and
//! a tenant's events favour its first users (log-uniform); 60 actions in 12
//! families, Zipf-like; outcomes 90% success, 8% failure, 2% unknown; every
//! row has a trace id, a span id, a session and ~10 attribute keys. Token rows:
//! 16 models over 6 providers (Zipf-like), 3 operations, log-normal-ish token
//! counts, a price per model (a few unpriced), 3% calls without usage.
//! Rows are spread evenly over the days; within a day they are in `ts` order
//! and `seq` grows with `ts`, as it does with a live collector.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

/// A small, fast, deterministic PRNG (SplitMix64).
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// Log-uniform in `0..n`: small values are much more likely (a Zipf-like
    /// s = 1 approximation without a table).
    pub fn log_uniform(&mut self, n: u64) -> u64 {
        let x = ((n as f64 + 1.0).ln() * self.unit()).exp() - 1.0;
        (x as u64).min(n.saturating_sub(1))
    }

    /// `bytes` random bytes as lowercase hex.
    pub fn hex(&mut self, bytes: usize, out: &mut String) {
        let mut left = bytes;
        while left > 0 {
            let word = self.next_u64();
            let take = left.min(8);
            for i in 0..take {
                let _ = write!(out, "{:02x}", (word >> (i * 8)) as u8);
            }
            left -= take;
        }
    }

    /// A random (version 4) UUID.
    pub fn uuid(&mut self) -> Uuid {
        let high = u128::from(self.next_u64()) << 64 | u128::from(self.next_u64());
        uuid::Builder::from_random_bytes(high.to_be_bytes()).into_uuid()
    }
}

/// Inverse-CDF sampling of a Zipf distribution over `0..n` with exponent `s`.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks.
    pub fn new(n: usize, s: f64) -> Zipf {
        let weights: Vec<f64> = (1..=n.max(1)).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Zipf { cdf }
    }

    /// The probability of rank `k` (0-based).
    pub fn weight(&self, k: usize) -> f64 {
        let below = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf.get(k).map_or(0.0, |c| c - below)
    }

    /// A rank.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// The 60 actions, `(family, action, resource type)`.
pub const ACTIONS: &[(&str, &str)] = &[
    ("document.view", "document"),
    ("auth.login", "session"),
    ("search.query", "search"),
    ("document.edit", "document"),
    ("api.request", "api"),
    ("llm.chat", "conversation"),
    ("project.view", "project"),
    ("file.download", "file"),
    ("auth.logout", "session"),
    ("auth.session.refresh", "session"),
    ("document.create", "document"),
    ("file.upload", "file"),
    ("document.comment", "document"),
    ("file.preview", "file"),
    ("document.share", "document"),
    ("settings.view", "setting"),
    ("report.run", "report"),
    ("llm.completion", "conversation"),
    ("document.download", "document"),
    ("auth.mfa.verify", "session"),
    ("user.profile.view", "user"),
    ("project.update", "project"),
    ("llm.embedding", "conversation"),
    ("document.export", "document"),
    ("billing.invoice.view", "invoice"),
    ("project.create", "project"),
    ("search.saved.create", "search"),
    ("document.move", "document"),
    ("report.export", "report"),
    ("user.update", "user"),
    ("document.delete", "document"),
    ("auth.sso.callback", "session"),
    ("project.member.add", "project"),
    ("file.delete", "file"),
    ("settings.update", "setting"),
    ("auth.token.create", "api_key"),
    ("user.invite", "user"),
    ("document.restore", "document"),
    ("report.schedule", "report"),
    ("billing.invoice.download", "invoice"),
    ("project.archive", "project"),
    ("auth.password.reset", "session"),
    ("api.key.create", "api_key"),
    ("project.member.remove", "project"),
    ("user.role.change", "user"),
    ("settings.integration.connect", "integration"),
    ("user.create", "user"),
    ("settings.webhook.create", "webhook"),
    ("auth.token.revoke", "api_key"),
    ("api.key.revoke", "api_key"),
    ("project.delete", "project"),
    ("billing.payment_method.update", "billing"),
    ("settings.integration.disconnect", "integration"),
    ("billing.plan.change", "billing"),
    ("user.deactivate", "user"),
    ("settings.webhook.delete", "webhook"),
    ("settings.sso.configure", "setting"),
    ("admin.impersonate", "user"),
    ("admin.audit.export", "report"),
    ("admin.data.purge", "tenant"),
];

const SERVICES: &[&str] = &[
    "web-frontend",
    "api-gateway",
    "documents",
    "auth",
    "search",
    "billing",
    "files",
    "reports",
    "assistant",
    "admin-console",
];

const COUNTRIES: &[&str] = &["US", "DE", "FR", "GB", "IN", "BR", "JP", "CA", "NL", "ES"];

const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "python-requests/2.32.3",
    "okhttp/4.12.0",
];

/// `(provider, model, operation, USD per million input tokens, per million output)`;
/// a price of 0 means unpriced (cost NULL).
const MODELS: &[(&str, &str, &str, f64, f64)] = &[
    ("openai", "gpt-4o-mini-2024-07-18", "chat", 0.15, 0.6),
    ("anthropic", "claude-sonnet-4-20250514", "chat", 3.0, 15.0),
    ("openai", "gpt-4o-2024-08-06", "chat", 2.5, 10.0),
    ("openai", "text-embedding-3-small", "embeddings", 0.02, 0.0),
    ("gcp.gemini", "gemini-2.5-flash", "chat", 0.3, 2.5),
    ("anthropic", "claude-3-5-haiku-20241022", "chat", 0.8, 4.0),
    ("openai", "o3-mini-2025-01-31", "chat", 1.1, 4.4),
    ("gcp.gemini", "gemini-2.5-pro", "chat", 1.25, 10.0),
    ("mistral_ai", "mistral-large-2411", "chat", 2.0, 6.0),
    (
        "aws.bedrock",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "chat",
        3.0,
        15.0,
    ),
    ("openai", "gpt-4.1-2025-04-14", "chat", 2.0, 8.0),
    ("mistral_ai", "mistral-embed", "embeddings", 0.1, 0.0),
    ("anthropic", "claude-opus-4-20250514", "chat", 15.0, 75.0),
    (
        "openai",
        "gpt-3.5-turbo-instruct",
        "text_completion",
        1.5,
        2.0,
    ),
    ("meta", "llama-3.3-70b-instruct", "chat", 0.0, 0.0),
    (
        "aws.bedrock",
        "amazon.titan-embed-text-v2:0",
        "embeddings",
        0.0,
        0.0,
    ),
];

/// The shape of the generated data set.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub activity_rows: u64,
    pub token_rows: u64,
    pub days: u32,
    pub tenants: usize,
    pub users: u64,
    /// The last day (UTC) holding rows; the first is `last_day - (days - 1)`.
    pub last_day: NaiveDate,
}

/// Tenants, their user pools and the samplers, shared by the writers.
pub struct Population {
    tenant: Zipf,
    /// First global user index of each tenant, and the pool size.
    pools: Vec<(u64, u64)>,
    action: Zipf,
    model: Zipf,
    shape: Shape,
}

/// The id of the tenant of rank `rank` (0-based: the largest is `tenant-0001`).
pub fn tenant_id(rank: usize) -> String {
    format!("tenant-{:04}", rank + 1)
}

/// The id of global user `index`.
pub fn user_id(index: u64) -> String {
    format!("user-{index:06}")
}

impl Population {
    /// The population of `shape`.
    pub fn new(shape: Shape) -> Population {
        let tenant = Zipf::new(shape.tenants, 1.0);
        let mut pools = Vec::with_capacity(shape.tenants);
        let mut next = 0u64;
        for t in 0..shape.tenants {
            let size = ((shape.users as f64 * tenant.weight(t)).round() as u64).max(3);
            pools.push((next, size));
            next += size;
        }
        Population {
            tenant,
            pools,
            action: Zipf::new(ACTIONS.len(), 1.0),
            model: Zipf::new(MODELS.len(), 1.1),
            shape,
        }
    }

    /// The busiest user of the tenant of rank `rank`.
    pub fn first_user(&self, rank: usize) -> String {
        user_id(self.pools.get(rank).map_or(0, |p| p.0))
    }

    /// `(tenant rank, global user index)`.
    fn who(&self, rng: &mut Rng) -> (usize, u64) {
        let t = self.tenant.sample(rng);
        let (first, size) = self.pools[t];
        (t, first + rng.log_uniform(size))
    }
}

/// Rows of `table` per day `day_index` (the remainder goes to the last days).
pub fn rows_on(total: u64, days: u32, day_index: u32) -> u64 {
    let days = u64::from(days.max(1));
    let base = total / days;
    let extra = total % days;
    base + u64::from(u64::from(day_index) >= days - extra)
}

/// The first `seq` of day `day_index`.
pub fn first_seq(total: u64, days: u32, day_index: u32) -> i64 {
    (0..day_index).map(|d| rows_on(total, days, d)).sum::<u64>() as i64 + 1
}

/// A `jsonb` value already encoded as JSON text (binary COPY: version byte 1, then the text).
#[derive(Debug)]
struct RawJsonb<'a>(&'a str);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// A `numeric` with 10 decimal places: `units` × 10⁻¹⁰ (binary COPY wire format).
#[derive(Debug)]
struct Numeric10(i64);

impl ToSql for Numeric10 {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Base-10000 digits of |units| × 100 (12 fractional decimal digits = 3 groups).
        let mut value = u128::from(self.0.unsigned_abs()) * 100;
        let mut groups = Vec::new();
        while value > 0 {
            groups.push((value % 10_000) as i16);
            value /= 10_000;
        }
        // groups[0] is the last fractional group; weight of groups[i] is i - 3.
        let mut low = 0;
        while low < groups.len() && groups[low] == 0 {
            low += 1;
        }
        let digits: Vec<i16> = groups[low..].iter().rev().copied().collect();
        let weight = if digits.is_empty() {
            0
        } else {
            groups.len() as i16 - 1 - 3
        };
        out.put_i16(digits.len() as i16);
        out.put_i16(weight);
        out.put_u16(if self.0 < 0 { 0x4000 } else { 0 });
        out.put_u16(10);
        for d in digits {
            out.put_i16(d);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

const ACTIVITY_COPY: &str = "COPY activity_events (id, seq, ts, received_at, tenant_id, user_id, \
    session_id, action, outcome, resource_type, resource_id, service, trace_id, span_id, \
    attributes, taxonomy_valid) FROM STDIN (FORMAT binary)";

const ACTIVITY_TYPES: [Type; 16] = [
    Type::UUID,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::BOOL,
];

const TOKEN_COPY: &str = "COPY token_usage (id, seq, ts, received_at, tenant_id, user_id, \
    session_id, service, trace_id, span_id, provider, operation, request_model, response_model, \
    model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
    total_tokens, usage_known, cost_usd, outcome, duration_ms, attribution_source, attributes) \
    FROM STDIN (FORMAT binary)";

const TOKEN_TYPES: [Type; 27] = [
    Type::UUID,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::BOOL,
    Type::NUMERIC,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::JSONB,
];

/// Sorted event times for `n` rows on `day`.
fn times(rng: &mut Rng, day: NaiveDate, n: u64) -> Vec<DateTime<Utc>> {
    let start = day.and_time(chrono::NaiveTime::MIN).and_utc();
    let mut micros: Vec<i64> = (0..n).map(|_| rng.below(86_400_000_000) as i64).collect();
    micros.sort_unstable();
    micros
        .into_iter()
        .map(|m| start + TimeDelta::microseconds(m))
        .collect()
}

/// Writes day `day_index`'s activity rows with one binary COPY in one transaction.
pub async fn copy_activity_day(
    client: &mut Client,
    population: &Population,
    day_index: u32,
) -> anyhow::Result<u64> {
    let shape = population.shape;
    let n = rows_on(shape.activity_rows, shape.days, day_index);
    let mut seq = first_seq(shape.activity_rows, shape.days, day_index);
    let day = shape.last_day - chrono::Days::new(u64::from(shape.days - 1 - day_index));
    let mut rng = Rng::new(u64::from(day_index) * 2 + 1);
    let tx = client.transaction().await?;
    let sink = tx.copy_in(ACTIVITY_COPY).await?;
    let writer = BinaryCopyInWriter::new(sink, &ACTIVITY_TYPES);
    tokio::pin!(writer);
    let mut trace = String::with_capacity(32);
    let mut span = String::with_capacity(16);
    let mut session = String::with_capacity(24);
    let mut request = String::with_capacity(16);
    let mut ip = String::with_capacity(24);
    let mut attributes = String::with_capacity(512);
    for ts in times(&mut rng, day, n) {
        let (t, user) = population.who(&mut rng);
        let tenant = tenant_id(t);
        let user = user_id(user);
        let (action, resource_type) = ACTIONS[population.action.sample(&mut rng)];
        let roll = rng.below(100);
        let outcome = if roll < 90 {
            "success"
        } else if roll < 98 {
            "failure"
        } else {
            "unknown"
        };
        let resource_id = format!("{resource_type}-{}-{}", t + 1, rng.log_uniform(20_000));
        let service = SERVICES[rng.below(SERVICES.len() as u64) as usize];
        trace.clear();
        rng.hex(16, &mut trace);
        span.clear();
        rng.hex(8, &mut span);
        session.clear();
        session.push_str("sess-");
        rng.hex(8, &mut session);
        request.clear();
        rng.hex(8, &mut request);
        ip.clear();
        ip.push_str("hmac:");
        rng.hex(8, &mut ip);
        let status = match outcome {
            "success" => 200,
            "failure" => [401, 403, 404, 409, 500][rng.below(5) as usize],
            _ => 0,
        };
        attributes.clear();
        let _ = write!(
            attributes,
            "{{\"http.request.method\": \"{}\", \"http.route\": \"/api/v2/{}/{{id}}\", \
             \"http.response.status_code\": {status}, \"client.address\": \"{ip}\", \
             \"user_agent.original\": \"{}\", \"geo.country_iso_code\": \"{}\", \
             \"request.id\": \"{request}\", \"duration_ms\": {}, \"app.version\": \"4.{}.{}\", \
             \"feature_flags\": [\"new-editor\", \"beta-search\"]}}",
            if action.ends_with("view") || action.ends_with("query") {
                "GET"
            } else {
                "POST"
            },
            resource_type,
            AGENTS[rng.below(AGENTS.len() as u64) as usize],
            COUNTRIES[rng.log_uniform(COUNTRIES.len() as u64) as usize],
            1 + rng.log_uniform(3_000),
            rng.below(20),
            rng.below(10),
        );
        let id = rng.uuid();
        let received = ts + TimeDelta::milliseconds(20 + rng.below(2_000) as i64);
        let valid = Some(true);
        let json = RawJsonb(&attributes);
        let row: [&(dyn ToSql + Sync); 16] = [
            &id,
            &seq,
            &ts,
            &received,
            &tenant,
            &user,
            &session,
            &action,
            &outcome,
            &resource_type,
            &resource_id,
            &service,
            &trace,
            &span,
            &json,
            &valid,
        ];
        writer.as_mut().write(&row).await?;
        seq += 1;
    }
    writer.as_mut().finish().await?;
    tx.commit().await?;
    Ok(n)
}

/// Writes day `day_index`'s token rows with one binary COPY in one transaction.
pub async fn copy_token_day(
    client: &mut Client,
    population: &Population,
    day_index: u32,
) -> anyhow::Result<u64> {
    let shape = population.shape;
    let n = rows_on(shape.token_rows, shape.days, day_index);
    let mut seq = first_seq(shape.token_rows, shape.days, day_index);
    let day = shape.last_day - chrono::Days::new(u64::from(shape.days - 1 - day_index));
    let mut rng = Rng::new(u64::from(day_index) * 2 + 2 + (1 << 40));
    let tx = client.transaction().await?;
    let sink = tx.copy_in(TOKEN_COPY).await?;
    let writer = BinaryCopyInWriter::new(sink, &TOKEN_TYPES);
    tokio::pin!(writer);
    let mut trace = String::with_capacity(32);
    let mut span = String::with_capacity(16);
    let mut session = String::with_capacity(24);
    let mut attributes = String::with_capacity(256);
    for ts in times(&mut rng, day, n) {
        let (t, user) = population.who(&mut rng);
        let tenant = tenant_id(t);
        // 4% of calls could not be attributed to a user.
        let user = (rng.below(100) >= 4).then(|| user_id(user));
        let attribution = if user.is_none() {
            "none"
        } else if rng.below(10) == 0 {
            "trace"
        } else {
            "record"
        };
        let (provider, model, operation, price_in, price_out) =
            MODELS[population.model.sample(&mut rng)];
        let usage_known = rng.below(100) >= 3;
        let embeddings = operation == "embeddings";
        let input = 20 + rng.log_uniform(if embeddings { 2_000 } else { 30_000 }) as i64;
        let output = if embeddings {
            0
        } else {
            1 + rng.log_uniform(4_000) as i64
        };
        let cache_read = if rng.below(4) == 0 { input / 2 } else { 0 };
        let reasoning = if model.starts_with("o3") {
            output / 2
        } else {
            0
        };
        let total = input + output;
        let cost = (usage_known && price_in > 0.0).then(|| {
            let usd = (input as f64 * price_in + output as f64 * price_out) / 1e6;
            Numeric10((usd * 1e10).round() as i64)
        });
        let some = |v: i64| usage_known.then_some(v);
        let (input, output, cache_read, cache_write, reasoning, total) = (
            some(input),
            some(output),
            some(cache_read),
            some(0),
            some(reasoning),
            some(total),
        );
        let outcome = if rng.below(100) < 97 {
            "success"
        } else {
            "failure"
        };
        let duration = 50.0 + rng.log_uniform(30_000) as f64;
        trace.clear();
        rng.hex(16, &mut trace);
        span.clear();
        rng.hex(8, &mut span);
        session.clear();
        session.push_str("sess-");
        rng.hex(8, &mut session);
        attributes.clear();
        let _ = write!(
            attributes,
            "{{\"gen_ai.request.temperature\": 0.{}, \"gen_ai.request.max_tokens\": {}, \
             \"gen_ai.response.finish_reasons\": [\"stop\"], \"server.address\": \"api.{provider}.example\", \
             \"app.feature\": \"{}\"}}",
            rng.below(10),
            256 << rng.below(5),
            ["assistant", "summarize", "search", "classify"][rng.below(4) as usize],
        );
        let id = rng.uuid();
        let received = ts + TimeDelta::milliseconds(20 + rng.below(2_000) as i64);
        let service = "assistant";
        let json = RawJsonb(&attributes);
        let row: [&(dyn ToSql + Sync); 27] = [
            &id,
            &seq,
            &ts,
            &received,
            &tenant,
            &user,
            &session,
            &service,
            &trace,
            &span,
            &provider,
            &operation,
            &model,
            &model,
            &model,
            &input,
            &output,
            &cache_read,
            &cache_write,
            &reasoning,
            &total,
            &usage_known,
            &cost,
            &outcome,
            &duration,
            &attribution,
            &json,
        ];
        writer.as_mut().write(&row).await?;
        seq += 1;
    }
    writer.as_mut().finish().await?;
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_add_up() {
        let total: u64 = (0..90).map(|d| rows_on(10_000_007, 90, d)).sum();
        assert_eq!(total, 10_000_007);
        assert_eq!(first_seq(10_000_007, 90, 0), 1);
        assert_eq!(
            first_seq(10_000_007, 90, 89) + rows_on(10_000_007, 90, 89) as i64 - 1,
            10_000_007
        );
    }

    #[test]
    fn zipf_is_skewed() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(1);
        let top = (0..100_000).filter(|_| z.sample(&mut rng) == 0).count();
        assert!((10_000..17_000).contains(&top), "{top}");
    }
}
