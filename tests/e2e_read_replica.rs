//! `exporters.postgres.read_url` with a real streaming replica: a private
//! primary and a hot standby made by `pg_basebackup` on this machine (temp
//! dirs, free ports, the machine's PostgreSQL binaries). With the standby's
//! replay paused, the admin API's queries show what the standby has (served
//! from it) while the live feed, read from the primary, delivers every new
//! event in `seq` order without a gap; once replay resumes, the queries catch
//! up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, export_spans, get_json, reachable_tempdir, Tally, TallyOptions};
use tally_model::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::Span;

/// The directory of the machine's PostgreSQL binaries (the newest version).
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_basebackup").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL bin dir with pg_basebackup")
}

/// Runs a PostgreSQL program (as the `postgres` user when we are root).
fn pg(program: &str, args: &[&str]) {
    let path = bin_dir().join(program);
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
    let output = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&path)
            .args(args)
            .output()
    } else {
        Command::new(&path).args(args).output()
    }
    .expect("run a PostgreSQL program");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A server (primary or standby) in `data`, stopped on drop.
struct Server {
    data: PathBuf,
    port: u16,
}

impl Server {
    fn start(data: &Path, port: u16, socket_dir: &Path) {
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_wal_senders = 4\nhot_standby = on\nfsync = off\n",
            socket_dir.display()
        );
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write postgresql.conf");
        let log = data.with_extension("log");
        pg(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let path = bin_dir().join("pg_ctl");
        let data = self.data.display().to_string();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&path)
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output()
            .or_else(|_| {
                Command::new(&path)
                    .args(["-D", &data, "-m", "immediate", "stop"])
                    .output()
            });
    }
}

/// A primary and its streaming standby, both running.
fn primary_and_standby(root: &Path) -> (Server, Server) {
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(root)
        .output();
    let primary_dir = root.join("primary");
    let standby_dir = root.join("standby");
    pg(
        "initdb",
        &[
            "-D",
            &primary_dir.display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
    );
    let (p1, p2) = (free_port(), free_port());
    Server::start(&primary_dir, p1, root);
    let primary = Server {
        data: primary_dir,
        port: p1,
    };
    pg(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p1.to_string(),
            "-U",
            "postgres",
            "-D",
            &standby_dir.display().to_string(),
            "-R",
            "-X",
            "stream",
        ],
    );
    Server::start(&standby_dir, p2, root);
    let standby = Server {
        data: standby_dir,
        port: p2,
    };
    (primary, standby)
}

fn activity_span(n: u8) -> Span {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let text = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    };
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: "GET /doc".into(),
        start_time_unix_nano: now - 1_000_000,
        end_time_unix_nano: now,
        attributes: vec![
            text("activity.action", "document.view"),
            text("enduser.id", &format!("reader-{n}")),
            text("tenant.id", "acme"),
        ],
        ..Default::default()
    }
}

/// The `document.view` rows the admin API's `/activity` answers.
async fn listed(tally: &Tally) -> usize {
    let (status, body) = get_json(
        &tally.api_url("/api/v1/activity?action=document.view&limit=100"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().map_or(0, Vec::len)
}

async fn sql(url: &str, statement: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client.batch_execute(statement).await.expect(statement);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_come_from_the_standby_and_the_live_feed_stays_exact() {
    let dir = reachable_tempdir();
    let root = dir.path().to_path_buf();
    let (primary, standby) = tokio::task::spawn_blocking(move || primary_and_standby(&root))
        .await
        .expect("servers");
    sql(&primary.url("postgres"), "CREATE DATABASE tally").await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(primary.url("tally")),
        read_url: Some(standby.url("tally")),
        ..Default::default()
    })
    .await;
    assert!(
        tally
            .log_text()
            .contains("reads queries, aggregates and exports from the read replica"),
        "{}",
        tally.log_text()
    );

    // Replay running: the standby catches up with the first events.
    export_spans(&tally, (1..=3).map(activity_span).collect()).await;
    eventually(
        Duration::from_secs(30),
        "the standby has 3 events",
        || async { (listed(&tally).await == 3).then_some(()) },
    )
    .await;
    let (_, body) = get_json(&tally.api_url("/api/v1/activity?limit=100"), None).await;
    let last_seq = body["items"]
        .as_array()
        .and_then(|items| items.iter().filter_map(|i| i["seq"].as_i64()).max())
        .expect("seq of the events");

    // Replay paused: new events are committed on the primary only.
    sql(&standby.url("postgres"), "SELECT pg_wal_replay_pause()").await;
    let mut feed = reqwest::Client::new()
        .get(tally.api_url(&format!(
            "/api/v1/activity/stream?action=document.view&after_seq={last_seq}"
        )))
        .send()
        .await
        .expect("live feed");
    assert_eq!(feed.status(), 200);
    export_spans(&tally, (4..=8).map(activity_span).collect()).await;

    // The live feed (primary) delivers the 5 new events, in seq order, no gap.
    let mut seqs: Vec<i64> = Vec::new();
    let mut buffer = String::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while seqs.len() < 5 {
        let chunk = tokio::time::timeout_at(until, feed.chunk())
            .await
            .expect("live feed events in time")
            .expect("live feed chunk")
            .expect("live feed open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id:")) {
                if let Ok(seq) = id.trim().parse::<i64>() {
                    seqs.push(seq);
                }
            }
        }
    }
    // Exactly the primary's rows after `last_seq`, in order (other actions,
    // e.g. Tally's own, hold the seqs in between).
    let (client, connection) =
        tokio_postgres::connect(&primary.url("tally"), tokio_postgres::NoTls)
            .await
            .expect("connect to the primary");
    tokio::spawn(connection);
    let want: Vec<i64> = client
        .query(
            "SELECT seq FROM activity_events WHERE action = 'document.view' AND seq > $1 \
             ORDER BY seq",
            &[&last_seq],
        )
        .await
        .expect("the primary's rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(want.len(), 5);
    assert_eq!(seqs, want, "the live feed skipped or reordered rows");
    // The queries read the standby: still the 3 events it has replayed.
    assert_eq!(
        listed(&tally).await,
        3,
        "queries must come from the paused standby"
    );

    // Replay resumed: the queries catch up.
    sql(&standby.url("postgres"), "SELECT pg_wal_replay_resume()").await;
    eventually(
        Duration::from_secs(30),
        "the standby catches up",
        || async { (listed(&tally).await == 8).then_some(()) },
    )
    .await;
    drop(tally);
}
