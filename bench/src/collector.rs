//! A Tally release build run as a separate process for the benchmark, with its
//! CPU time and peak memory read from `/proc`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

/// How the collector under test is configured (the rest is Tally's defaults).
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// `exporters.postgres.writers`.
    pub writers: usize,
    /// `exporters.postgres.batch_max_rows`.
    pub batch_max_rows: usize,
    /// `exporters.postgres.tamper_evidence.enabled` (the chainer).
    pub chain: bool,
    /// `receivers.otlp.auth.required` (every request must carry an ingest key).
    pub auth_required: bool,
    /// `admin_api.auth.jwt.hs256_secret` (`None`: the admin API without authentication).
    pub admin_jwt_secret: Option<String>,
    /// `admin_api.limits`, as YAML flow mappings' entries (`None`: the defaults).
    pub admin_limits: Option<String>,
}

impl Default for CollectorOptions {
    fn default() -> Self {
        CollectorOptions {
            writers: 2,
            batch_max_rows: 5_000,
            chain: true,
            auth_required: false,
            admin_jwt_secret: None,
            admin_limits: None,
        }
    }
}

/// A running collector.
pub struct Collector {
    child: Child,
    pub grpc: String,
    pub http: String,
    /// Base URL of the Prometheus endpoint (`None`: not reported).
    pub metrics: Option<String>,
    /// Base URL of the admin API (`None`: not reported).
    pub admin: Option<String>,
    _dir: std::path::PathBuf,
}

impl Collector {
    /// Starts `binary` on free ports, writing to `database_url`, and waits until ready.
    pub fn start(
        binary: &Path,
        database_url: &str,
        options: &CollectorOptions,
    ) -> anyhow::Result<Collector> {
        let writers = options.writers;
        let chain = options.chain;
        let batch = options.batch_max_rows;
        let auth = options.auth_required;
        let admin_auth = match &options.admin_jwt_secret {
            Some(secret) => format!(", auth: {{ jwt: {{ hs256_secret: \"{secret}\" }} }}"),
            None => String::new(),
        };
        let admin_limits = match &options.admin_limits {
            Some(limits) => format!(", limits: {{ {limits} }}"),
            None => String::new(),
        };
        let dir =
            std::env::temp_dir().join(format!("tally-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("tally.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\n    http: {{ endpoint: 127.0.0.1:0 }}\n    auth: {{ required: {auth} }}\n\
                 exporters:\n  postgres: {{ url: \"{database_url}\", writers: {writers}, batch_max_rows: {batch}, tamper_evidence: {{ enabled: {chain} }} }}\n  prometheus: {{ endpoint: 127.0.0.1:0 }}\n\
                 admin_api: {{ endpoint: 127.0.0.1:0{admin_auth}{admin_limits} }}\nservice: {{ log_format: text, log_level: \"warn,tally::run=info\" }}\n"
            ),
        )?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        // Every line of the collector's log also goes to this file when set
        // (with `RUST_LOG`, e.g. the writer's stage timings at debug).
        let mut log_copy = std::env::var_os("TALLY_BENCH_COLLECTOR_LOG").and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = log_copy.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                if line.contains("tally is ready") {
                    let _ = tx.send(line);
                } else if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("[tally] {line}");
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .context("tally did not report ready within 60 s")?;
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        let (Some(grpc), Some(http)) = (field("grpc"), field("http")) else {
            bail!("no addresses in {ready:?}");
        };
        Ok(Collector {
            child,
            grpc: format!("http://{grpc}"),
            http: format!("http://{http}"),
            metrics: field("metrics").map(|m| format!("http://{m}/metrics")),
            admin: field("admin").map(|a| format!("http://{a}")),
            _dir: dir,
        })
    }

    /// CPU seconds (user + system) the collector has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return f64::NAN;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Resident memory now and at its peak, in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    /// The exporter's batch figures so far: (batches, rows, seconds writing).
    pub async fn batch_totals(&self) -> Option<(f64, f64, f64)> {
        let url = self.metrics.as_ref()?;
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Some((
            value("tally_exporter_batch_rows_count"),
            value("tally_exporter_batch_rows_sum"),
            value("tally_exporter_batch_duration_seconds_sum"),
        ))
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}
