//! `GET /api/v1/export` over real HTTP against a real PostgreSQL: a tailer
//! following `X-Next-After-Seq` under concurrent writers with slow commits sees
//! exactly the table's rows; every format parses with its required fields.

mod common;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{config, config_with_jwt, token, TestDb};
use serde_json::Value;
use support::*;

struct Page {
    status: u16,
    next: Option<i64>,
    has_more: Option<bool>,
    content_type: String,
    body: String,
}

async fn fetch(server: &Server, query: &str, bearer: Option<&str>) -> Page {
    let mut request = http().get(server.url(&format!("/api/v1/export?{query}")));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("export request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_owned())
    };
    let next = header("x-next-after-seq").map(|v| v.parse().expect("numeric next"));
    let has_more = header("x-has-more").map(|v| v == "true");
    let content_type = header("content-type").unwrap_or_default();
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    Page {
        status,
        next,
        has_more,
        content_type,
        body,
    }
}

fn lines_json(body: &str) -> Vec<Value> {
    body.lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailer_under_concurrent_slow_writers_gets_exactly_the_table() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config(), &db.url).await;

    // Four writers, 25 transactions of 20 rows each; every commit is held
    // 0–40 ms under the lock, so the tailer often reads while a batch is
    // written but not yet committed.
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            for i in 0..25u64 {
                let hold = (w * 7 + i * 13) % 41;
                insert_activity(&mut client, 20, &["acme", "globex"], &["doc.read"], 0, hold).await;
            }
        }));
    }
    let done = {
        let writers_done = async {
            for writer in writers {
                writer.await.expect("writer");
            }
        };
        tokio::spawn(writers_done)
    };

    let mut after = 0i64;
    let mut seen: Vec<i64> = Vec::new();
    let mut ids = BTreeSet::new();
    let end = deadline(120);
    loop {
        let finished = done.is_finished();
        let page = fetch(&server, &format!("after_seq={after}&limit=37"), None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.content_type, "application/x-ndjson");
        let rows = lines_json(&page.body);
        for row in &rows {
            let seq = row["seq"].as_i64().expect("seq");
            assert!(seq > after, "ordered by seq after after_seq");
            seen.push(seq);
            assert!(ids.insert(row["id"].as_str().expect("id").to_owned()));
        }
        let next = page.next.expect("X-Next-After-Seq");
        assert_eq!(
            next,
            rows.last()
                .map(|r| r["seq"].as_i64().unwrap())
                .unwrap_or(after),
            "next_after_seq is the last line's seq"
        );
        if rows.len() < 37 {
            assert_eq!(page.has_more, Some(false), "a short page has no more");
        }
        after = next;
        // Stop after a page fetched once every writer had committed and that
        // came back short: nothing can follow.
        if finished && page.has_more == Some(false) {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "tailing took too long");
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let table = all_seqs(&db.client, "activity_events").await;
    assert_eq!(table.len(), 2_000);
    assert_eq!(
        seen, table,
        "the tailer's rows are the table's rows, in order"
    );
}

/// Parses a CEF line strictly: `CEF:0|` + six header fields (with `\|` and
/// `\\` the only escapes) + the extension of `key=value` pairs (values escape
/// `\\`, `\=`, `\n`, `\r`). Returns (header fields, extension pairs unescaped).
fn parse_cef(line: &str) -> (Vec<String>, Vec<(String, String)>) {
    let rest = line.strip_prefix("CEF:0|").expect("starts with CEF:0|");
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars();
    while fields.len() < 6 {
        match chars.next().expect("seven header fields") {
            '\\' => match chars.next().expect("escape") {
                c @ ('\\' | '|') => current.push(c),
                c => panic!("bad header escape \\{c} in {line}"),
            },
            '|' => fields.push(std::mem::take(&mut current)),
            '\n' | '\r' => panic!("line break in header"),
            c => current.push(c),
        }
    }
    let extension: String = chars.collect();
    assert!(!extension.contains('\n') && !extension.contains('\r'));
    // Split on unescaped '=' ; a key is the last space-separated word before it.
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut tokens: Vec<(String, bool)> = Vec::new(); // (segment, ends with unescaped '=')
    let mut segment = String::new();
    let mut it = extension.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' => {
                let e = it.next().expect("escape in extension");
                match e {
                    '\\' => segment.push('\\'),
                    '=' => segment.push('='),
                    'n' => segment.push('\n'),
                    'r' => segment.push('\r'),
                    other => panic!("bad extension escape \\{other} in {line}"),
                }
            }
            '=' => tokens.push((std::mem::take(&mut segment), true)),
            c => segment.push(c),
        }
    }
    tokens.push((segment, false));
    let mut key = None::<String>;
    for (index, (text, _)) in tokens.iter().enumerate() {
        let last = index == tokens.len() - 1;
        let (value, next_key) = if last {
            (text.clone(), None)
        } else {
            let (value, next_key) = text.rsplit_once(' ').unwrap_or(("", text));
            (value.to_owned(), Some(next_key.to_owned()))
        };
        match key.take() {
            Some(k) => pairs.push((k, value)),
            None => assert!(value.is_empty(), "extension starts with a key: {line}"),
        }
        if let Some(next_key) = next_key {
            assert!(
                !next_key.is_empty() && next_key.chars().all(|c| c.is_ascii_alphanumeric()),
                "extension key {next_key:?} in {line}"
            );
            key = Some(next_key);
        }
    }
    (fields, pairs)
}

/// (seq, action, user_id, outcome, trace_id, span_id)
type ExpectedRow = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

fn ext<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_parses_with_its_required_fields() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config(), &db.url).await;
    let mut writer = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .map(|(client, connection)| {
            tokio::spawn(connection);
            client
        })
        .expect("connect");
    insert_activity(
        &mut writer,
        6,
        &["acme"],
        &[
            "auth.login",
            "auth.logout",
            "doc.read",
            "doc.delete",
            "auth.mfa.verify",
            "odd|act=ion\\x",
        ],
        0,
        0,
    )
    .await;
    // A user id full of CEF metacharacters.
    writer
        .execute(
            "UPDATE activity_events SET user_id = E'we|ird=us\\\\er\\nx' WHERE seq = 6",
            &[],
        )
        .await
        .unwrap();
    insert_tokens(&mut writer, 3, "acme", &["gpt-4o"]).await;
    let rows: Vec<ExpectedRow> = db
        .client
        .query(
            "SELECT seq, action, user_id, outcome, trace_id, span_id FROM activity_events ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(rows.len(), 6);

    // Native NDJSON: the /activity item shape.
    let page = fetch(&server, "format=ndjson", None).await;
    assert_eq!(page.status, 200);
    let native = lines_json(&page.body);
    assert_eq!(native.len(), 6);
    for (item, row) in native.iter().zip(&rows) {
        assert_eq!(item["seq"], row.0);
        assert_eq!(item["action"], row.1.as_str());
        assert_eq!(item["tenant_id"], "acme");
    }

    // OCSF.
    let page = fetch(&server, "format=ocsf", None).await;
    assert_eq!(
        (page.status, page.content_type.as_str()),
        (200, "application/x-ndjson")
    );
    let ocsf = lines_json(&page.body);
    assert_eq!(ocsf.len(), 6);
    for (event, row) in ocsf.iter().zip(&rows) {
        let auth = row.1.starts_with("auth.");
        let class = if auth { 3002 } else { 6003 };
        assert_eq!(event["class_uid"], class, "{event}");
        assert_eq!(event["category_uid"], if auth { 3 } else { 6 });
        let activity = event["activity_id"].as_u64().expect("activity_id");
        assert_eq!(event["type_uid"].as_u64(), Some(class * 100 + activity));
        assert!(
            event["time"].as_i64().unwrap() > 1_700_000_000_000,
            "time in ms"
        );
        assert!(event["severity_id"].as_u64().is_some());
        let status = match row.3.as_str() {
            "success" => 1,
            "failure" => 2,
            _ => 0,
        };
        assert_eq!(event["status_id"], status);
        assert_eq!(event["metadata"]["product"]["name"], "Tally");
        assert!(event["metadata"]["version"]
            .as_str()
            .unwrap()
            .starts_with("1."));
        assert_eq!(event["metadata"]["sequence"], row.0);
        assert_eq!(
            event["actor"]["user"]["uid"],
            row.2.clone().unwrap().as_str()
        );
        if auth {
            assert_eq!(event["user"]["uid"], row.2.clone().unwrap().as_str());
        } else {
            assert_eq!(event["api"]["operation"], row.1.as_str());
            assert!(event["cloud"]["provider"].is_string());
            assert!(event["src_endpoint"].is_object());
        }
    }
    let activities: Vec<u64> = ocsf
        .iter()
        .map(|e| e["activity_id"].as_u64().unwrap())
        .collect();
    // auth.login → Logon(1), auth.logout → Logoff(2), doc.read → Read(2),
    // doc.delete → Delete(4), auth.mfa.verify → Other(99), odd → Other(99);
    // generate_series starts at g = 1, so row 1 has actions[1 % 6].
    let by_action: std::collections::BTreeMap<&str, u64> = rows
        .iter()
        .map(|r| r.1.as_str())
        .zip(activities.iter().copied())
        .collect();
    assert_eq!(by_action["auth.login"], 1);
    assert_eq!(by_action["auth.logout"], 2);
    assert_eq!(by_action["doc.read"], 2);
    assert_eq!(by_action["doc.delete"], 4);
    assert_eq!(by_action["auth.mfa.verify"], 99);

    // ECS.
    let page = fetch(&server, "format=ecs", None).await;
    let ecs = lines_json(&page.body);
    assert_eq!(ecs.len(), 6);
    for (doc, row) in ecs.iter().zip(&rows) {
        assert!(chrono::DateTime::parse_from_rfc3339(doc["@timestamp"].as_str().unwrap()).is_ok());
        assert_eq!(doc["event"]["action"], row.1.as_str());
        assert_eq!(doc["event"]["outcome"], row.3.as_str());
        assert_eq!(doc["event"]["sequence"], row.0);
        assert_eq!(doc["user"]["id"], row.2.clone().unwrap().as_str());
        assert_eq!(doc["organization"]["id"], "acme");
        assert_eq!(doc["trace"]["id"], row.4.clone().unwrap().as_str());
        assert_eq!(doc["span"]["id"], row.5.clone().unwrap().as_str());
        assert_eq!(doc["service"]["name"], "svc");
        assert_eq!(doc["labels"]["resource_type"], "doc");
        assert!(doc["ecs"]["version"].is_string());
    }

    // CEF: strict grammar, values round-trip through the escaping.
    let page = fetch(&server, "format=cef", None).await;
    assert_eq!(page.content_type, "text/plain; charset=utf-8");
    let lines: Vec<&str> = page.body.lines().collect();
    assert_eq!(lines.len(), 6, "one line per event: {}", page.body);
    for (line, row) in lines.iter().zip(&rows) {
        let (header, pairs) = parse_cef(line);
        assert_eq!(header[0], "Tally");
        assert_eq!(header[1], "Tally");
        assert_eq!(header[3], row.1, "signature id is the action");
        let severity: u8 = header[5].parse().expect("numeric severity");
        assert!(severity <= 10);
        assert_eq!(ext(&pairs, "act"), Some(row.1.as_str()));
        assert_eq!(ext(&pairs, "suser"), row.2.as_deref());
        assert_eq!(ext(&pairs, "externalId"), Some(row.0.to_string().as_str()));
        assert_eq!(ext(&pairs, "outcome"), Some(row.3.as_str()));
        assert_eq!(ext(&pairs, "cs1"), Some("acme"));
        assert!(ext(&pairs, "rt").unwrap().parse::<i64>().is_ok());
    }

    // Token rows in every format.
    for format in ["ndjson", "ocsf", "ecs", "cef"] {
        let page = fetch(&server, &format!("table=token_usage&format={format}"), None).await;
        assert_eq!(page.status, 200, "{format}: {}", page.body);
        let lines: Vec<&str> = page.body.lines().collect();
        assert_eq!(lines.len(), 3, "{format}");
        match format {
            "ndjson" => {
                let item: Value = serde_json::from_str(lines[0]).unwrap();
                assert_eq!(item["model"], "gpt-4o");
                assert_eq!(item["total_tokens"], 15);
            }
            "ocsf" => {
                let event: Value = serde_json::from_str(lines[0]).unwrap();
                assert_eq!(event["class_uid"], 6003);
                assert_eq!(event["type_uid"], 600399);
                assert_eq!(event["unmapped"]["gen_ai"]["input_tokens"], 10);
            }
            "ecs" => {
                let doc: Value = serde_json::from_str(lines[0]).unwrap();
                assert_eq!(doc["event"]["action"], "gen_ai.chat");
                assert_eq!(doc["gen_ai"]["usage"]["output_tokens"], 5);
            }
            _ => {
                let (header, pairs) = parse_cef(lines[0]);
                assert_eq!(header[3], "gen_ai.chat");
                assert_eq!(ext(&pairs, "cn1"), Some("10"));
                assert_eq!(ext(&pairs, "cs5"), Some("gpt-4o"));
            }
        }
    }

    // Bad parameters.
    for query in [
        "table=rejected_events",
        "format=xml",
        "limit=0",
        "limit=10001",
        "after_seq=x",
        "bogus=1",
    ] {
        let page = fetch(&server, query, None).await;
        assert_eq!(page.status, 400, "{query}");
    }
}

#[test]
fn the_cef_parser_refuses_bad_lines() {
    for bad in [
        "CEF:0|a|b|c|d|e|f",        // six fields only, no extension separator
        "CEF:0|a|b\\x|c|d|e|f|",    // bad header escape
        "CEF:0|a|b|c|d|e|f|k=v\\q", // bad extension escape
        "CEF:1|a|b|c|d|e|f|",       // wrong version
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_cef(bad)).is_err(),
            "{bad}"
        );
    }
    let (header, pairs) = parse_cef(r"CEF:0|a\|b|c\\d|1|e|f|3|k=v\=w x y=z\\ q");
    assert_eq!(header, ["a|b", "c\\d", "1", "e", "f", "3"]);
    assert_eq!(
        pairs,
        [("k".into(), "v=w x".into()), ("y".into(), "z\\ q".into())]
    );
}

#[tokio::test]
async fn export_scopes_and_tenants() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config_with_jwt(), &db.url).await;
    let mut writer = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .map(|(client, connection)| {
            tokio::spawn(connection);
            client
        })
        .expect("connect");
    insert_activity(&mut writer, 20, &["acme", "globex"], &["doc.read"], 0, 0).await;

    let acme = token("activity:read", Some("acme"));
    let page = fetch(&server, "", Some(&acme)).await;
    assert_eq!(page.status, 200);
    let rows = lines_json(&page.body);
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r["tenant_id"] == "acme"));
    assert_eq!(
        fetch(&server, "tenant=globex", Some(&acme)).await.status,
        403
    );
    assert_eq!(
        fetch(&server, "table=token_usage", Some(&acme))
            .await
            .status,
        403
    );
    assert_eq!(fetch(&server, "", None).await.status, 401);
    // Only the stream routes take ?access_token=.
    assert_eq!(
        fetch(&server, &format!("access_token={acme}"), None)
            .await
            .status,
        401
    );
    let all = token("admin", Some("*"));
    let page = fetch(&server, "limit=15", Some(&all)).await;
    assert_eq!(lines_json(&page.body).len(), 15);
    assert_eq!(page.has_more, Some(true));
    let page = fetch(
        &server,
        &format!("after_seq={}", page.next.unwrap()),
        Some(&all),
    )
    .await;
    assert_eq!(lines_json(&page.body).len(), 5);
    assert_eq!(page.has_more, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activity_details_are_mapped_in_every_format() {
    let db = TestDb::migrated().await;
    let server = Server::start(&config(), &db.url).await;
    let mut writer = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .map(|(client, connection)| {
            tokio::spawn(connection);
            client
        })
        .expect("connect");
    insert_activity(&mut writer, 2, &["acme"], &["doc.read"], 0, 0).await;
    // Row 1 has every detail; row 2 (as written before migration 12) none.
    writer
        .execute(
            "UPDATE activity_events SET duration_ms = 182.6, name = 'GET /docs/{id}', \
             error_type = 'timeout', error_message = 'upstream | timed = out' WHERE seq = 1",
            &[],
        )
        .await
        .unwrap();

    let native = lines_json(&fetch(&server, "format=ndjson", None).await.body);
    assert_eq!(native.len(), 2);
    assert_eq!(native[0]["duration_ms"], 182.6);
    assert_eq!(native[0]["name"], "GET /docs/{id}");
    assert_eq!(native[0]["error_type"], "timeout");
    assert_eq!(native[0]["error_message"], "upstream | timed = out");
    for key in ["duration_ms", "name", "error_type", "error_message"] {
        assert_eq!(native[1][key], Value::Null, "{key}");
    }

    let ocsf = lines_json(&fetch(&server, "format=ocsf", None).await.body);
    assert_eq!(ocsf[0]["duration"], 183);
    assert_eq!(ocsf[0]["status_code"], "timeout");
    assert_eq!(ocsf[0]["status_detail"], "upstream | timed = out");
    assert_eq!(ocsf[0]["unmapped"]["name"], "GET /docs/{id}");
    assert_eq!(ocsf[0]["unmapped"]["duration_ms"], 182.6);
    for key in ["duration", "status_code", "status_detail"] {
        assert!(ocsf[1].get(key).is_none(), "{key}: {}", ocsf[1]);
    }

    let ecs = lines_json(&fetch(&server, "format=ecs", None).await.body);
    assert_eq!(ecs[0]["event"]["duration"], 182_600_000);
    assert_eq!(ecs[0]["error"]["type"], "timeout");
    assert_eq!(ecs[0]["error"]["message"], "upstream | timed = out");
    assert_eq!(ecs[0]["tally"]["name"], "GET /docs/{id}");
    assert!(ecs[1].get("error").is_none(), "{}", ecs[1]);
    assert!(ecs[1]["event"].get("duration").is_none(), "{}", ecs[1]);

    let page = fetch(&server, "format=cef", None).await;
    let lines: Vec<&str> = page.body.lines().collect();
    assert_eq!(lines.len(), 2);
    let (_, first) = parse_cef(lines[0]);
    assert_eq!(ext(&first, "cn1Label"), Some("durationMs"));
    assert_eq!(ext(&first, "cn1"), Some("183"));
    assert_eq!(ext(&first, "flexString1Label"), Some("name"));
    assert_eq!(ext(&first, "flexString1"), Some("GET /docs/{id}"));
    assert_eq!(ext(&first, "flexString2Label"), Some("errorType"));
    assert_eq!(ext(&first, "flexString2"), Some("timeout"));
    assert_eq!(ext(&first, "msg"), Some("upstream | timed = out"));
    let (_, second) = parse_cef(lines[1]);
    for key in ["cn1", "flexString1", "flexString2", "msg"] {
        assert_eq!(ext(&second, key), None, "{key}");
    }
}

/// Parses `body` with Python's `csv` module (strict mode): every record.
fn parse_csv(body: &str) -> Vec<Vec<String>> {
    use std::io::Write;
    const SCRIPT: &str = "import csv, io, json, sys\n\
        data = sys.stdin.buffer.read().decode('utf-8')\n\
        rows = list(csv.reader(io.StringIO(data, newline=''), strict=True))\n\
        print(json.dumps(rows))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (its csv module parses the export)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write CSV");
    let output = child.wait_with_output().expect("python3");
    assert!(
        output.status.success(),
        "python's csv module refused the body: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("rows as JSON")
}

/// The records of a CSV export as maps from the header's column names.
fn csv_records(body: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let rows = parse_csv(body);
    let (header, records) = rows.split_first().expect("a header row");
    records
        .iter()
        .map(|record| {
            assert_eq!(record.len(), header.len(), "{record:?}");
            header.iter().cloned().zip(record.iter().cloned()).collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_by_time_range_parses_back_with_nasty_values_and_is_scoped() {
    let db = TestDb::migrated().await;
    let today = chrono::Utc::now().date_naive();
    db.partitions(today - chrono::Days::new(3), today).await;
    let server = Server::start(&config_with_jwt(), &db.url).await;
    let mut writer = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .map(|(client, connection)| {
            tokio::spawn(connection);
            client
        })
        .expect("connect");
    insert_activity(&mut writer, 6, &["acme"], &["doc.read"], 0, 0).await;
    insert_activity(&mut writer, 2, &["globex"], &["doc.read"], 0, 0).await;
    let nasty_user = "he said \"hi\", then\r\nleft";
    let nasty_attribute = "quote \" comma , newline \n tab \t é 漢字 🙂";
    writer
        .execute(
            "UPDATE activity_events SET user_id = $1, name = '', \
                 attributes = jsonb_build_object('note', $2::text, 'n', 1.50, 'list', jsonb_build_array(1, 'a,b')) \
             WHERE seq = 1",
            &[&nasty_user, &nasty_attribute],
        )
        .await
        .expect("nasty row 1");
    writer
        .execute(
            "UPDATE activity_events SET user_id = 'tester', session_id = NULL, \
                 error_message = E'a,b\\nc', duration_ms = 12.5 WHERE seq = 2",
            &[],
        )
        .await
        .expect("nasty row 2");
    // Event times: seqs 1-2 two days ago at noon, 3-4 yesterday at noon, the rest now.
    let noon = |days: u64| {
        (today - chrono::Days::new(days))
            .and_hms_opt(12, 0, 0)
            .expect("noon")
            .and_utc()
    };
    writer
        .execute(
            "UPDATE activity_events SET ts = CASE WHEN seq <= 2 THEN $1::timestamptz ELSE $2::timestamptz END WHERE seq <= 4",
            &[&noon(2), &noon(1)],
        )
        .await
        .expect("backdate");

    let admin = token("admin", Some("*"));
    let page = fetch(&server, "format=csv&tenant=acme", Some(&admin)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.content_type, "text/csv; charset=utf-8; header=present");
    assert!(page
        .body
        .starts_with("id,seq,ts,received_at,tenant_id,user_id,"));
    assert!(page.body.ends_with("\r\n"));
    assert_eq!(
        page.body.split('\n').next().map(|l| l.ends_with('\r')),
        Some(true)
    );
    let records = csv_records(&page.body);
    assert_eq!(records.len(), 6);
    let first = &records[0];
    assert_eq!(first["seq"], "1");
    assert_eq!(first["tenant_id"], "acme");
    assert_eq!(first["user_id"], nasty_user);
    assert_eq!(first["name"], "");
    let attributes: Value = serde_json::from_str(&first["attributes"]).expect("attributes JSON");
    assert_eq!(attributes["note"], nasty_attribute);
    assert_eq!(attributes["list"][1], "a,b");
    assert_eq!(attributes["n"].as_f64(), Some(1.5));
    let second = &records[1];
    assert_eq!(second["session_id"], "");
    assert_eq!(second["error_message"], "a,b\nc");
    assert_eq!(second["duration_ms"], "12.5");
    assert_eq!(
        second["ts"],
        noon(2).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    );
    // An empty text is `""`, a NULL an empty field: the raw body tells them apart.
    let raw_first = page.body.split("\r\n").nth(1).expect("first record");
    assert!(raw_first.starts_with(&format!("{},1,", first["id"])));
    let seqs = |body: &str| -> Vec<String> {
        csv_records(body).iter().map(|r| r["seq"].clone()).collect()
    };

    // A time range: dates (midnight UTC, `to` exclusive) and RFC 3339 timestamps.
    let day = |days: u64| (today - chrono::Days::new(days)).to_string();
    let page = fetch(
        &server,
        &format!("format=csv&from={}&to={}", day(1), day(0)),
        Some(&admin),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(seqs(&page.body), vec!["3", "4"]);
    let from = noon(2).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (noon(2) + chrono::TimeDelta::microseconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let page = fetch(
        &server,
        &format!("format=csv&from={from}&to={}", to.replace('+', "%2B")),
        Some(&admin),
    )
    .await;
    assert_eq!(seqs(&page.body), vec!["1", "2"]);
    // The range combines with the seq cursor and the page size.
    let page = fetch(
        &server,
        &format!("format=csv&from={}&limit=2&after_seq=4", day(0)),
        Some(&admin),
    )
    .await;
    assert_eq!(seqs(&page.body), vec!["5", "6"]);
    assert_eq!(page.has_more, Some(true));
    assert_eq!(page.next, Some(6));
    // The other formats take the range too.
    let page = fetch(
        &server,
        &format!("format=ndjson&to={}", day(1)),
        Some(&admin),
    )
    .await;
    assert_eq!(lines_json(&page.body).len(), 2);
    // An empty range: the header alone.
    let page = fetch(&server, "format=csv&to=2000-01-01", Some(&admin)).await;
    assert_eq!(page.status, 200);
    assert_eq!(parse_csv(&page.body).len(), 1);
    assert_eq!(page.next, Some(0));

    // Bad input is 400 naming the parameter.
    for (query, parameter) in [
        ("format=csv&from=yesterday", "from"),
        ("format=csv&to=2026-13-01", "to"),
        ("format=csv&from=2026-02-01&to=2026-01-01", "from"),
        ("format=xlsx", "format"),
    ] {
        let page = fetch(&server, query, Some(&admin)).await;
        assert_eq!(page.status, 400, "{query}");
        let error: Value = serde_json::from_str(&page.body).expect("error JSON");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(parameter), "{query}: {error}");
    }

    // Tenant scoping and self:read apply as to the other formats.
    let globex = token("activity:read", Some("globex"));
    let page = fetch(&server, "format=csv", Some(&globex)).await;
    let records = csv_records(&page.body);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["tenant_id"] == "globex"));
    let own = token("self:read", Some("acme"));
    let page = fetch(&server, "format=csv", Some(&own)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(seqs(&page.body), vec!["2"]);

    // Tokens as CSV: every column, numbers as numbers.
    insert_tokens(&mut writer, 3, "acme", &["gpt-4o"]).await;
    let page = fetch(&server, "table=token_usage&format=csv", Some(&admin)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let records = csv_records(&page.body);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].len(), 28);
    assert_eq!(records[0]["model"], "gpt-4o");
    assert_eq!(records[0]["input_tokens"], "10");
    assert_eq!(records[0]["cost_usd"], "0.00125");
    assert_eq!(records[0]["usage_known"], "true");

    // Streamed: a chunked body, no Content-Length.
    let response = http()
        .get(server.url("/api/v1/export?format=csv"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("export");
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(
        response
            .headers()
            .get("transfer-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("chunked")
    );
}
