//! Support for the live-feed and export tests: a served admin API on a real
//! port, an SSE reader over reqwest, and writers that follow the lock protocol.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use tally_admin_api::AdminApi;
use tally_config::AdminApiConfig;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// `ACTIVITY_EVENTS_LOCK_KEY` (the bytes `tallyact`).
pub const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");
/// `TOKEN_USAGE_LOCK_KEY` (the bytes `tallytok`).
pub const TOKEN_LOCK: i64 = i64::from_be_bytes(*b"tallytok");

/// An admin API served on 127.0.0.1:<free port> until dropped.
pub struct Server {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(config: &AdminApiConfig, url: &str) -> Server {
        let api = AdminApi::bind(config, url, super::common::ready())
            .await
            .expect("bind");
        let base = format!("http://{}", api.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = api
                .serve(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Server {
            base,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the graceful shutdown and waits for `serve` to return; false if
    /// it did not within `secs`.
    pub async fn stop(mut self, secs: u64) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(secs), task)
                .await
                .is_ok(),
            None => true,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Streams never end by themselves: do not wait for a graceful stop.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// One SSE message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn seq(&self) -> i64 {
        self.id
            .as_deref()
            .expect("event id")
            .parse()
            .expect("numeric id")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// Reads an SSE response: events (comments are counted, not returned).
pub struct SseReader {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    stream: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
    pub comments: usize,
    pub ended: bool,
}

impl SseReader {
    /// GETs `url` with optional bearer token and `Last-Event-ID`.
    pub async fn open(url: &str, token: Option<&str>, last_event_id: Option<i64>) -> SseReader {
        let mut request = http().get(url).header("accept", "text/event-stream");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("request");
        SseReader {
            status: response.status(),
            headers: response.headers().clone(),
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
            comments: 0,
            ended: false,
        }
    }

    /// The next event, or `None` at the end of the stream. Panics at `deadline`.
    pub async fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data_lines = Vec::new();
                let mut only_comments = true;
                for line in block.lines() {
                    if line.is_empty() || line.starts_with(':') {
                        continue;
                    }
                    only_comments = false;
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.event = Some(value.to_owned()),
                        "data" => data_lines.push(value.to_owned()),
                        _ => {}
                    }
                }
                if only_comments {
                    self.comments += 1;
                    continue;
                }
                event.data = data_lines.join("\n");
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("SSE event before the deadline");
            match chunk {
                Some(Ok(bytes)) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8")),
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }
}

pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Inserts `n` activity rows in one transaction under the lock protocol;
/// tenants cycle through `tenants`, actions through `actions`; `pad` bytes of
/// attribute padding; `hold_ms` sleeps under the lock before COMMIT (a slow commit).
pub async fn insert_activity(
    client: &mut tokio_postgres::Client,
    n: i64,
    tenants: &[&str],
    actions: &[&str],
    pad: i32,
    hold_ms: u64,
) {
    let tenants: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    let actions: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, session_id, action, outcome, \
         resource_type, resource_id, service, trace_id, span_id, attributes) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), now(), \
                ($2::text[])[1 + (g % cardinality($2::text[]))], 'u' || (g % 7), 's' || (g % 3), \
                ($3::text[])[1 + (g % cardinality($3::text[]))], \
                (ARRAY['success','failure','unknown'])[1 + (g % 3)], 'doc', 'r' || g, 'svc', \
                md5(g::text), left(md5((g + 1)::text), 16), \
                jsonb_build_object('g', g, 'pad', repeat('x', $4)) \
         FROM generate_series(1, $1::bigint) AS g ORDER BY g",
        &[&n, &tenants, &actions, &pad],
    )
    .await
    .expect("insert activity");
    if hold_ms > 0 {
        tx.execute(
            &format!("SELECT pg_sleep({})", hold_ms as f64 / 1000.0),
            &[],
        )
        .await
        .expect("sleep");
    }
    tx.commit().await.expect("commit");
}

/// Inserts `n` token rows (models cycle through `models`, 10 input + 5 output
/// tokens each) in one transaction under the lock protocol.
pub async fn insert_tokens(
    client: &mut tokio_postgres::Client,
    n: i64,
    tenant: &str,
    models: &[&str],
) {
    let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
    token_partitions(client).await;
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, service, trace_id, span_id, \
         provider, operation, request_model, response_model, model, input_tokens, output_tokens, \
         total_tokens, cost_usd, outcome, duration_ms) \
         SELECT gen_random_uuid(), nextval('token_usage_seq'), now(), $2, 'u' || (g % 5), 'svc', \
                md5(g::text), left(md5(g::text), 16), 'openai', 'chat', \
                ($3::text[])[1 + (g % cardinality($3::text[]))], \
                ($3::text[])[1 + (g % cardinality($3::text[]))], \
                ($3::text[])[1 + (g % cardinality($3::text[]))], 10, 5, 15, 0.00125, 'success', 42.5 \
         FROM generate_series(1, $1::bigint) AS g ORDER BY g",
        &[&n, &tenant, &models],
    )
    .await
    .expect("insert tokens");
    tx.commit().await.expect("commit");
}

/// Waits until `check` holds, polling every 20 ms; panics with `what` at the deadline.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = deadline(secs);
    while !check().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Backend pids of the live-feed LISTEN connections on database `name`.
pub async fn listener_pids(client: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
             AND query ILIKE 'LISTEN%' ORDER BY pid",
            &[
                &name,
                &tally_admin_api::stream::hub::LISTEN_APPLICATION_NAME,
            ],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// All `seq` of `table`, ascending.
pub async fn all_seqs(client: &tokio_postgres::Client, table: &str) -> Vec<i64> {
    client
        .query(&format!("SELECT seq FROM {table} ORDER BY seq"), &[])
        .await
        .expect("seqs")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Daily `token_usage` partitions for yesterday through tomorrow (`migrate`
/// may not create them yet).
pub async fn token_partitions(client: &tokio_postgres::Client) {
    let today = chrono::Utc::now().date_naive();
    for offset in -1i64..=1 {
        let day = today + chrono::Duration::days(offset);
        let next = day + chrono::Duration::days(1);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS token_usage_p{} PARTITION OF token_usage \
                 FOR VALUES FROM ('{day}') TO ('{next}')",
                day.format("%Y%m%d")
            ))
            .await
            .expect("token_usage partition");
    }
}
