//! Erasure end to end on a running Tally: events and token calls sent over
//! OTLP, one user erased with the built `tally erase` binary and another
//! through `POST /api/v1/erasures`. Afterwards no text or jsonb column of any
//! table and no export format holds the users' ids, email or IP; aggregates and
//! token totals are unchanged; `GET /api/v1/verify` says intact with
//! `erased_rows`; a second request is a no-op; a tenant-scoped admin cannot
//! erase in another tenant; deleting an erased row by hand is still caught.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, export_spans, get_json, token, Tally, TallyOptions, TestDatabase};
use serde_json::{json, Value};
use tally_exporters::postgres::RollupJob;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::Span;

const SECRET: &str = "erasure-test-secret-0123456789";
const ALICE: &str = "alice-5c1d";
const CAROL: &str = "carol-9e2a";
const EMAIL: &str = "alice.pleasance@example.net";
const IP: &str = "203.0.113.58";
const DEADLINE: Duration = Duration::from_secs(60);

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// An activity span of `user` in `tenant`, with an email and a client address.
fn action(n: u64, tenant: &str, user: &str, email: &str, ip: &str) -> Span {
    let mut trace_id = vec![0xe5; 16];
    trace_id[8..].copy_from_slice(&n.to_be_bytes());
    Span {
        trace_id,
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: "open document".into(),
        start_time_unix_nano: now(),
        end_time_unix_nano: now() + 1_000_000,
        attributes: vec![
            attr(
                "activity.action",
                if n % 2 == 0 { "doc.read" } else { "doc.update" },
            ),
            attr("tenant.id", tenant),
            attr("enduser.id", user),
            attr("user.email", email),
            attr("client.address", ip),
            attr("doc.title", "quarterly plan"),
        ],
        ..Default::default()
    }
}

/// A chat call of `user` with `tokens` input tokens.
fn chat(n: u64, tenant: &str, user: &str, tokens: u64) -> Span {
    let mut trace_id = vec![0xc4; 16];
    trace_id[8..].copy_from_slice(&n.to_be_bytes());
    Span {
        trace_id,
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: "chat".into(),
        start_time_unix_nano: now(),
        end_time_unix_nano: now(),
        attributes: vec![
            attr("gen_ai.operation.name", "chat"),
            attr("gen_ai.provider.name", "openai"),
            attr("gen_ai.request.model", "gpt-4o-mini"),
            attr("gen_ai.usage.input_tokens", &tokens.to_string()),
            attr("gen_ai.usage.output_tokens", "7"),
            attr("tenant.id", tenant),
            attr("enduser.id", user),
            attr(
                "client.address",
                if user == ALICE { IP } else { "198.51.100.9" },
            ),
        ],
        ..Default::default()
    }
}

/// Waits until every stored row is chained and folded into the rollups.
async fn settled(database: &TestDatabase) {
    let client = database.client().await;
    // Fold at once (the collector's own rollup runs every few seconds and waits
    // out the token attribution window); runs are exactly once whoever runs them.
    let rollup = RollupJob::new(Duration::ZERO);
    eventually(DEADLINE, "rows chained and folded", || {
        let (client, rollup) = (&client, &rollup);
        async move {
            let mut folder = database.client().await;
            rollup.run_once(&mut folder).await.ok()?;
            let row = client
                .query_one(
                    "SELECT (SELECT coalesce(max(seq), 0) FROM activity_events) \
                         <= (SELECT last_seq FROM chain_watermark WHERE name = 'activity_events') \
                     AND (SELECT coalesce(max(seq), 0) FROM activity_events) \
                         <= (SELECT last_seq FROM rollup_watermarks WHERE name = 'activity_daily') \
                     AND (SELECT coalesce(max(seq), 0) FROM token_usage) \
                         <= (SELECT last_seq FROM rollup_watermarks WHERE name = 'token_usage_daily')",
                    &[],
                )
                .await
                .ok()?;
            row.get::<_, Option<bool>>(0).filter(|done| *done)
        }
    })
    .await;
}

/// (events of the apps' actions per action and outcome, token totals) from
/// the rollups, and the raw token total.
async fn aggregates(database: &TestDatabase) -> (Vec<(String, i64)>, Vec<i64>) {
    let client = database.client().await;
    let events = client
        .query(
            "SELECT action || '/' || outcome, sum(events)::int8 FROM activity_daily \
             WHERE tenant_id = 'acme' AND action LIKE 'doc.%' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .expect("activity rollup")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let row = client
        .query_one(
            "SELECT (SELECT sum(requests)::int8 FROM token_usage_daily WHERE tenant_id = 'acme'), \
                    (SELECT sum(input_tokens)::int8 FROM token_usage_daily WHERE tenant_id = 'acme'), \
                    (SELECT sum(total_tokens)::int8 FROM token_usage_daily WHERE tenant_id = 'acme'), \
                    (SELECT sum(input_tokens)::int8 FROM token_usage WHERE tenant_id = 'acme'), \
                    (SELECT count(DISTINCT user_id) FROM token_usage_daily WHERE tenant_id = 'acme')",
            &[],
        )
        .await
        .expect("token totals");
    let tokens = (0..5)
        .map(|i| row.get::<_, Option<i64>>(i).unwrap_or(0))
        .collect();
    (events, tokens)
}

/// Every table.column (text, jsonb, text[]) holding `needle`.
async fn traces_of(database: &TestDatabase, needle: &str) -> Vec<String> {
    let client = database.client().await;
    tally_exporters::testing::columns_holding(&client, needle).await
}

async fn post(tally: &Tally, bearer: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(tally.api_url("/api/v1/erasures"))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("POST /api/v1/erasures");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `GET /api/v1/erasures` lists erasure `id` as done; its item.
async fn erasure_done(tally: &Tally, bearer: &str, id: &str) -> Value {
    let list_url = tally.api_url("/api/v1/erasures");
    eventually(DEADLINE, "the erasure done", || {
        let list_url = &list_url;
        async move {
            let (status, body) = get_json(list_url, Some(bearer)).await;
            assert_eq!(status, 200, "{body}");
            body["items"]
                .as_array()?
                .iter()
                .find(|item| item["id"] == json!(id) && item["state"] == "done")
                .cloned()
        }
    })
    .await
}

async fn text(url: &str, bearer: &str) -> String {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.text().await.expect("body")
}

#[tokio::test]
async fn erasure_by_command_and_route_leaves_no_trace_and_the_chain_verifies() {
    let database = TestDatabase::migrated().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .await;
    let mut spans = Vec::new();
    for n in 0..24 {
        spans.push(action(n, "acme", ALICE, EMAIL, IP));
    }
    for n in 24..30 {
        spans.push(action(n, "acme", "bob", "bob@example.net", "198.51.100.7"));
    }
    for n in 30..35 {
        spans.push(action(
            n,
            "acme",
            CAROL,
            "carol@example.net",
            "198.51.100.8",
        ));
    }
    for n in 40..46 {
        spans.push(chat(n, "acme", ALICE, 100 + n));
    }
    for n in 46..49 {
        spans.push(chat(n, "acme", "bob", 50));
    }
    export_spans(&tally, spans).await;
    let client = database.client().await;
    eventually(DEADLINE, "activity and token rows stored", || {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM activity_events WHERE action LIKE 'doc.%'), \
                            (SELECT count(*) FROM token_usage)",
                    &[],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) == 35 && row.get::<_, i64>(1) == 9).then_some(())
        }
    })
    .await;
    settled(&database).await;
    let before = aggregates(&database).await;
    assert_eq!(before.1[3], (140..146).sum::<u64>() as i64 + 150);
    // (The redactor keeps client addresses and emails out already; the ids are stored.)
    for needle in [ALICE, CAROL] {
        assert!(
            !traces_of(&database, needle).await.is_empty(),
            "{needle} stored"
        );
    }

    // A tenant-scoped admin of another tenant cannot erase here.
    let beta_admin = token(SECRET, "admin", "beta");
    let (status, body) = post(
        &tally,
        &beta_admin,
        json!({ "tenant": "acme", "user_id": ALICE, "reason": "ticket 7" }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let reader = token(SECRET, "activity:read", "acme");
    let (status, _) = post(
        &tally,
        &reader,
        json!({ "tenant": "acme", "user_id": ALICE, "reason": "ticket 7" }),
    )
    .await;
    assert_eq!(status, 403, "activity:read is not enough");

    // Alice by the command line, while Tally runs.
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "erase", "--tenant", "acme", "--user", ALICE, "--reason", "ticket 7",
        ])
        .env("TALLY_DATABASE_URL", &database.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tally erase");
    assert!(
        output.status.success(),
        "tally erase: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: Value = serde_json::from_slice(&output.stdout).expect("the record as JSON");
    assert_eq!(record["state"], "done", "{record}");
    assert_eq!(record["counts"]["activity_events"], 24, "{record}");
    assert_eq!(record["counts"]["token_usage"], 6, "{record}");
    assert!(!record.to_string().contains(ALICE));

    // Carol through the route, by a tenant-scoped admin of acme.
    let acme_admin = token(SECRET, "admin", "acme");
    let (status, body) = post(
        &tally,
        &acme_admin,
        json!({ "user_id": CAROL, "reason": "ticket 8" }),
    )
    .await;
    assert!(status == 202 || status == 200, "{status} {body}");
    assert_eq!(body["tenant_id"], "acme");
    let carol_id = body["id"].as_str().expect("id").to_owned();
    let list_url = tally.api_url("/api/v1/erasures");
    let carol = erasure_done(&tally, &acme_admin, &carol_id).await;
    assert_eq!(carol["counts"]["activity_events"], 5, "{carol}");
    assert_eq!(carol["requested_by"], "tester");
    let (_, listed) = get_json(&list_url, Some(&acme_admin)).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    let (_, beta_list) = get_json(&list_url, Some(&beta_admin)).await;
    assert_eq!(beta_list["items"], json!([]), "another tenant sees none");

    // Idempotent: alice again through the route answers the same, done record.
    let (status, again) = post(
        &tally,
        &acme_admin,
        json!({ "tenant": "acme", "user_id": ALICE, "reason": "ticket 7, again" }),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], record["id"]);
    assert_eq!(again["counts"], record["counts"]);

    settled(&database).await;
    let after = aggregates(&database).await;
    assert_eq!(after.0, before.0, "events per action and outcome unchanged");
    assert_eq!(after.1, before.1, "token totals and user count unchanged");

    // Every export format, and the JSON routes.
    let all = token(SECRET, "admin", "*");
    let mut exported = String::new();
    for table in ["activity_events", "token_usage"] {
        for format in ["ndjson", "ocsf", "ecs", "cef"] {
            let url = tally.api_url(&format!(
                "/api/v1/export?table={table}&format={format}&limit=10000"
            ));
            exported.push_str(&text(&url, &all).await);
        }
    }
    for path in ["/api/v1/activity?limit=1000", "/api/v1/tokens?limit=1000"] {
        exported.push_str(&text(&tally.api_url(path), &all).await);
    }
    assert!(
        exported.contains("erased:"),
        "the exports carry the pseudonyms"
    );
    for needle in [ALICE, EMAIL, IP, CAROL, "carol@example.net"] {
        assert!(!exported.contains(needle), "{needle} exported");
        assert_eq!(
            traces_of(&database, needle).await,
            Vec::<String>::new(),
            "{needle}"
        );
    }

    let verify_url = tally.api_url("/api/v1/verify?tenant=acme&full=true");
    let (status, report) = get_json(&verify_url, Some(&all)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "intact", "{report}");
    assert_eq!(report["erased_rows"], 29, "{report}");
    // The erasure events say who and why, with the pseudonym.
    let events = client
        .query(
            "SELECT user_id, attributes->>'erasure.reason', resource_id FROM activity_events \
             WHERE action = 'admin.user.erase' ORDER BY seq",
            &[],
        )
        .await
        .expect("events");
    assert_eq!(events.len(), 2);
    assert!(events[0].get::<_, String>(0).starts_with("cli:"));
    assert_eq!(events[1].get::<_, String>(0), "tester");
    assert_eq!(events[1].get::<_, String>(1), "ticket 8");
    assert_eq!(
        events[1].get::<_, String>(2),
        carol["pseudonym"].as_str().unwrap_or_default()
    );

    // Deleting an erased row by hand is still caught.
    let seq: i64 = client
        .query_one(
            "SELECT max(seq) FROM activity_events WHERE erasure_id IS NOT NULL",
            &[],
        )
        .await
        .expect("an erased row")
        .get(0);
    client
        .execute("DELETE FROM activity_events WHERE seq = $1", &[&seq])
        .await
        .expect("delete");
    let (_, report) = get_json(&verify_url, Some(&all)).await;
    assert_eq!(report["status"], "tampered", "{report}");
    assert_eq!(report["first_problem"]["kind"], "deleted", "{report}");
    assert_eq!(report["first_problem"]["seq"], seq, "{report}");
}

/// `tally erase` killed with SIGKILL in the middle of a large erasure: the
/// erasure stays pending with the batches it committed, and running the command
/// again finishes it once (one event, every row erased, the chain intact).
#[tokio::test]
async fn a_killed_erase_command_resumes_and_finishes_once() {
    use tally_exporters::postgres::chain::{self, ChainJob};
    let database = TestDatabase::migrated().await;
    let mut client = database.client().await;
    const ROWS: i64 = 40_000;
    let tx = client.transaction().await.expect("begin");
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&i64::from_be_bytes(*b"tallyact")],
    )
    .await
    .expect("lock");
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, attributes) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), now(), 'acme', $1, 'doc.read', \
             'success', jsonb_build_object('user.email', $2::text, 'n', i) \
         FROM generate_series(1, $3::int8) AS i",
        &[&ALICE, &EMAIL, &ROWS],
    )
    .await
    .expect("rows");
    tx.commit().await.expect("commit");
    let chainer = ChainJob::new(None, Duration::ZERO).with_max_rows_per_run(50_000);
    chainer.run_once(&mut client).await.expect("chain");

    let erase = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .args([
                "erase", "--tenant", "acme", "--user", ALICE, "--reason", "ticket 9",
            ])
            .env("TALLY_DATABASE_URL", &database.url)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let mut child = erase().spawn().expect("spawn tally erase");
    let progress = eventually(DEADLINE, "a first batch committed", || {
        let client = &client;
        async move {
            let row = client
                .query_opt(
                    "SELECT coalesce((counts->>'activity_events')::int8, 0) FROM erasures",
                    &[],
                )
                .await
                .ok()??;
            let done: i64 = row.get(0);
            (done > 0).then_some(done)
        }
    })
    .await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let (state, erased, left): (String, i64, i64) = {
        let row = client
            .query_one(
                "SELECT state, coalesce((counts->>'activity_events')::int8, 0), \
                     (SELECT count(*) FROM activity_events WHERE user_id = $1) FROM erasures",
                &[&ALICE],
            )
            .await
            .expect("state");
        (row.get(0), row.get(1), row.get(2))
    };
    assert!(progress > 0);
    assert_eq!(
        state, "pending",
        "killed mid-way ({erased} of {ROWS} erased)"
    );
    assert!(left > 0 && left < ROWS, "{left} rows left");
    assert_eq!(erased + left, ROWS, "committed batches and counts agree");

    let output = erase().output().expect("run tally erase again");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("resuming"));
    let record: Value = serde_json::from_slice(&output.stdout).expect("record");
    assert_eq!(record["state"], "done");
    assert_eq!(record["counts"]["activity_events"], ROWS);
    let events: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE action = 'admin.user.erase'",
            &[],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(events, 1);
    chainer.run_once(&mut client).await.expect("chain");
    let report = chain::verify(&mut client, "acme", &[])
        .await
        .expect("verify");
    assert!(report.is_intact(), "{}", report.summary());
    assert_eq!(report.erased_rows, ROWS as u64);
    for needle in [ALICE, EMAIL] {
        assert_eq!(traces_of(&database, needle).await, Vec::<String>::new());
    }
}

/// A span of trace `trace` (`span_id` 1 is the request, 2 its model call)
/// with `attributes`.
fn traced(trace: u8, span_id: u8, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span_id; 8],
        parent_span_id: if span_id == 1 { Vec::new() } else { vec![1; 8] },
        name: "traced".into(),
        start_time_unix_nano: now(),
        end_time_unix_nano: now() + 1_000_000,
        attributes,
        ..Default::default()
    }
}

/// A model call naming no tenant or user: attributed through its trace.
fn anonymous_chat(trace: u8) -> Span {
    traced(
        trace,
        2,
        vec![
            attr("gen_ai.operation.name", "chat"),
            attr("gen_ai.provider.name", "openai"),
            attr("gen_ai.request.model", "gpt-4o-mini"),
            attr("gen_ai.usage.input_tokens", "30"),
            attr("gen_ai.usage.output_tokens", "3"),
        ],
    )
}

/// The request span naming the user.
fn request_of(trace: u8, user: &str) -> Span {
    traced(
        trace,
        1,
        vec![
            attr("activity.action", "doc.read"),
            attr("tenant.id", "acme"),
            attr("enduser.id", user),
        ],
    )
}

/// `(attribution_source, user_id)` of trace `trace`'s token rows.
async fn token_users(database: &TestDatabase, trace: u8) -> Vec<(String, Option<String>)> {
    let hex = format!("{trace:02x}").repeat(16);
    database
        .client()
        .await
        .query(
            "SELECT attribution_source, user_id FROM token_usage WHERE trace_id = $1",
            &[&hex],
        )
        .await
        .expect("token rows")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Erasure on one instance reaches the token rows another instance attributes
/// through a trace afterwards: the row whose request span that instance had
/// cached before the erasure, and the row that was waiting for its request
/// span, both take the pseudonym, never the clear id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_rows_attributed_after_an_erasure_on_another_instance_take_the_pseudonym() {
    const DAVE: &str = "dave-7f31";
    let database = TestDatabase::migrated().await;
    let options = TallyOptions {
        database_url: Some(database.url.clone()),
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    };
    let first = Tally::launch(options.clone()).await;
    let second = Tally::launch(options).await;

    // Trace 0xa1: the second instance learns dave's request span (its cache
    // maps the trace to dave). Trace 0xa2: its model call waits, unattributed.
    export_spans(&second, vec![request_of(0xa1, DAVE)]).await;
    export_spans(&second, vec![anonymous_chat(0xa2)]).await;
    assert_eq!(
        token_users(&database, 0xa2).await,
        vec![("none".to_owned(), None)]
    );

    // Dave is erased through the first instance.
    let admin = token(SECRET, "admin", "acme");
    let (status, body) = post(
        &first,
        &admin,
        json!({ "user_id": DAVE, "reason": "ticket 9" }),
    )
    .await;
    assert!(status == 202 || status == 200, "{status} {body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let record = erasure_done(&first, &admin, &id).await;
    let pseudonym = record["pseudonym"].as_str().expect("pseudonym").to_owned();
    assert_ne!(pseudonym, DAVE);
    assert!(
        traces_of(&database, DAVE).await.is_empty(),
        "nothing of dave left after the erasure: {:?}",
        traces_of(&database, DAVE).await
    );

    // The second instance now stores trace 0xa1's model call (attributed from
    // its cache) and receives trace 0xa2's request span (attributing the
    // waiting row): both answers come after the rows are committed.
    export_spans(&second, vec![anonymous_chat(0xa1)]).await;
    assert_eq!(
        token_users(&database, 0xa1).await,
        vec![("trace".to_owned(), Some(pseudonym.clone()))]
    );
    export_spans(&second, vec![request_of(0xa2, DAVE)]).await;
    assert_eq!(
        token_users(&database, 0xa2).await,
        vec![("trace".to_owned(), Some(pseudonym.clone()))]
    );
    // Dave's new request span is his own new record (he came back) and keeps
    // his id; no token row does.
    let left = traces_of(&database, DAVE).await;
    assert!(
        left.iter().all(|place| !place.starts_with("token_usage")),
        "a token row holds dave in clear: {left:?}"
    );
}
