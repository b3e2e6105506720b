//! A small WebDriver (W3C) client over reqwest, driving Debian's headless
//! `chromium` through `chromedriver`. (fantoccini would bring a second `http`
//! major through its `webdriver` dependency; the protocol needs only JSON
//! over HTTP.)
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The key under which WebDriver names an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session; ended (and chromedriver stopped) on drop.
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

/// `None` (and a line saying why) when there is no browser and `TALLY_SKIP_BROWSER=1`;
/// without that variable a missing browser is a failure.
pub fn available() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("TALLY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    let driver = std::env::var_os("TALLY_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMEDRIVER));
    let missing: Vec<String> = [&chromium, &driver]
        .iter()
        .filter(|path| !path.exists())
        .map(|path| path.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some((chromium, driver));
    }
    let why = format!(
        "no browser: {} missing (apt-get install chromium chromium-driver)",
        missing.join(", ")
    );
    if std::env::var("TALLY_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipping the browser test: {why} and TALLY_SKIP_BROWSER=1");
        None
    } else {
        panic!("{why}; set TALLY_SKIP_BROWSER=1 to skip the browser tests");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium profile.
    pub async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            // Its own process group, so that the browser it starts ends with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--enable-precise-memory-info".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let session = browser
            .raw(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:loggingPrefs": {"browser": "ALL"},
                    "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args}
                }}})),
            )
            .await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    async fn raw(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("webdriver request");
        let status = response.status();
        let value: Value = response.json().await.expect("webdriver JSON");
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.raw(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.raw(reqwest::Method::GET, path, None).await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The address bar.
    pub async fn url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .http
                .post(format!("{}/element", self.base))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .expect("webdriver request");
            if found.status().is_success() {
                let value: Value = found.json().await.expect("JSON");
                return value["value"][ELEMENT]
                    .as_str()
                    .expect("element id")
                    .to_owned();
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Types `text` into the element matching `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    /// Sets a control's value directly (for inputs WebDriver cannot type into, as datetime-local).
    pub async fn set_value(&self, css: &str, value: &str) {
        self.js(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1];",
            json!([css, value]),
        )
        .await;
    }

    /// `textContent` of the element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Whether an element matches `css`.
    pub async fn exists(&self, css: &str) -> bool {
        self.js(
            "return document.querySelector(arguments[0]) !== null;",
            json!([css]),
        )
        .await
        .as_bool()
        .unwrap_or(false)
    }

    /// Polls `script` (returning a truthy value when done) until `deadline`; returns the value.
    pub async fn wait_js(
        &self,
        what: &str,
        deadline: Duration,
        script: &str,
        args: Value,
    ) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let value = self.js(script, args.clone()).await;
            let done = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if done {
                return value;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the text of `css` contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str, deadline: Duration) {
        self.wait_js(
            &format!("{css} to contain {needle:?}"),
            deadline,
            "const e = document.querySelector(arguments[0]); return !!e && e.textContent.includes(arguments[1]);",
            json!([css, needle]),
        )
        .await;
    }

    /// Sets the window size (for the phone-sized screenshots).
    pub async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    /// Emulates `prefers-color-scheme: dark` (Chromium's DevTools command, through chromedriver).
    pub async fn dark(&self) {
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setEmulatedMedia",
                   "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}}),
        )
        .await;
    }

    /// Saves a PNG screenshot as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let data = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 PNG"))
            .expect("decode PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write screenshot");
        path
    }

    /// The browser's console messages (severe ones include CSP violations).
    pub async fn severe_logs(&self) -> Vec<String> {
        let logs = self
            .http
            .post(format!("{}/se/log", self.base))
            .json(&json!({"type": "browser"}))
            .send()
            .await;
        let Ok(logs) = logs else { return Vec::new() };
        let value: Value = logs.json().await.unwrap_or(Value::Null);
        value["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .filter_map(|e| e["message"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Browser {
    /// Ends the session (closing the browser) before chromedriver is stopped.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the browser processes it started (its process group).
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            // SAFETY: kill(2) on the process group this test created; no memory is touched.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.driver.wait();
    }
}
