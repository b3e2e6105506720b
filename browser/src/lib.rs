//! A small WebDriver (W3C) client over reqwest, driving Debian's headless
//! `chromium` through `chromedriver`, for the console's browser tests
//! (`tests/e2e_console.rs`, through `tests/browser/mod.rs`) and
//! `tally-bench console`. (fantoccini would bring a second `http` major
//! through its `webdriver` dependency; the protocol needs only JSON over
//! HTTP.) Chromium's DevTools commands go through chromedriver's
//! `goog/cdp/execute` ([`Browser::cdp`]).

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

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no browser: {0} missing (apt-get install chromium chromium-driver)")]
    Missing(String),
    #[error("starting chromedriver: {0}")]
    Start(#[source] std::io::Error),
    #[error("chromedriver did not answer within 30 s")]
    NotReady,
    #[error("the browser profile directory: {0}")]
    Profile(#[source] std::io::Error),
    #[error("webdriver request {0}: {1}")]
    Http(String, #[source] reqwest::Error),
    #[error("{method} {path}: {status} {body}")]
    WebDriver {
        method: String,
        path: String,
        status: u16,
        body: Value,
    },
    #[error("webdriver answered {0}")]
    Unexpected(String),
    #[error("no element {0}")]
    NoElement(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The Chromium and chromedriver binaries: `TALLY_CHROMIUM` and
/// `TALLY_CHROMEDRIVER`, else Debian's paths; [`Error::Missing`] names those
/// that do not exist.
pub fn locate() -> Result<(PathBuf, PathBuf)> {
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
        Ok((chromium, driver))
    } else {
        Err(Error::Missing(missing.join(", ")))
    }
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(Error::Start)
}

/// A headless Chromium session with a fresh profile (so an empty cache); ended
/// (and chromedriver with the browser it started stopped) on drop.
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium profile.
    pub async fn start(chromium: &Path, chromedriver: &Path) -> Result<Browser> {
        let port = free_port()?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            // Its own process group, so that the browser it starts ends with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::Start)?;
        let profile = match tempfile::tempdir() {
            Ok(profile) => profile,
            Err(error) => {
                kill_group(driver);
                return Err(Error::Profile(error));
            }
        };
        let http = match reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
        {
            Ok(http) => http,
            Err(error) => {
                kill_group(driver);
                return Err(Error::Http("client".to_owned(), error));
            }
        };
        // From here on, Drop stops chromedriver whatever fails.
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady);
            }
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
            format!("--user-data-dir={}", browser.profile.path().display()),
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
            .await?;
        let id = session["sessionId"]
            .as_str()
            .ok_or_else(|| Error::Unexpected(format!("no session: {session}")))?
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        Ok(browser)
    }

    async fn raw(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let what = || format!("{method} {path}");
        let response = request.send().await.map_err(|e| Error::Http(what(), e))?;
        let status = response.status();
        let value: Value = response.json().await.map_err(|e| Error::Http(what(), e))?;
        if !status.is_success() {
            return Err(Error::WebDriver {
                method: method.to_string(),
                path: path.to_owned(),
                status: status.as_u16(),
                body: value,
            });
        }
        Ok(value["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.raw(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.raw(reqwest::Method::GET, path, None).await
    }

    /// Opens `url` (WebDriver returns once the page has loaded).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// The address bar.
    pub async fn url(&self) -> Result<String> {
        Ok(self
            .get("/url")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Runs a Chromium DevTools command (`Runtime.getHeapUsage`, …) through
    /// chromedriver; answers its result.
    pub async fn cdp(&self, command: &str, params: Value) -> Result<Value> {
        self.post(
            "/goog/cdp/execute",
            json!({ "cmd": command, "params": params }),
        )
        .await
    }

    /// The element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .http
                .post(format!("{}/element", self.base))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .map_err(|e| Error::Http(format!("find {css}"), e))?;
            if found.status().is_success() {
                let value: Value = found
                    .json()
                    .await
                    .map_err(|e| Error::Http(format!("find {css}"), e))?;
                return value["value"][ELEMENT]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Unexpected(format!("no element id in {value}")));
            }
            if Instant::now() >= deadline {
                return Err(Error::NoElement(css.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.post(&format!("/element/{id}/click"), json!({}))
            .await
            .map(drop)
    }

    /// Types `text` into the element matching `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.post(&format!("/element/{id}/clear"), json!({}))
            .await?;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await
            .map(drop)
    }

    /// Sends `keys` to the element matching `css` as the keyboard would, without
    /// clearing it first (WebDriver key codes such as `"\u{E007}"`, Enter, included).
    pub async fn press(&self, css: &str, keys: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.post(&format!("/element/{id}/value"), json!({ "text": keys }))
            .await
            .map(drop)
    }

    /// Sets a control's value directly (for inputs WebDriver cannot type into, as datetime-local).
    pub async fn set_value(&self, css: &str, value: &str) -> Result<()> {
        self.js(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1];",
            json!([css, value]),
        )
        .await
        .map(drop)
    }

    /// `textContent` of the element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> Result<String> {
        Ok(self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                json!([css]),
            )
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Whether an element matches `css`.
    pub async fn exists(&self, css: &str) -> Result<bool> {
        Ok(self
            .js(
                "return document.querySelector(arguments[0]) !== null;",
                json!([css]),
            )
            .await?
            .as_bool()
            .unwrap_or(false))
    }

    /// Polls `script` (returning a truthy value when done) every 25 ms until
    /// `deadline`; returns the value, or [`Error::Timeout`] naming `what`.
    pub async fn wait_js(
        &self,
        what: &str,
        deadline: Duration,
        script: &str,
        args: Value,
    ) -> Result<Value> {
        let end = Instant::now() + deadline;
        loop {
            let value = self.js(script, args.clone()).await?;
            let done = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if done {
                return Ok(value);
            }
            if Instant::now() >= end {
                return Err(Error::Timeout(what.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the text of `css` contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str, deadline: Duration) -> Result<()> {
        self.wait_js(
            &format!("{css} to contain {needle:?}"),
            deadline,
            "const e = document.querySelector(arguments[0]); return !!e && e.textContent.includes(arguments[1]);",
            json!([css, needle]),
        )
        .await
        .map(drop)
    }

    /// Sets the window size (for the phone-sized screenshots).
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await
            .map(drop)
    }

    /// Emulates `prefers-color-scheme: dark`.
    pub async fn dark(&self) -> Result<()> {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await
        .map(drop)
    }

    /// A PNG screenshot of the viewport.
    pub async fn screenshot_png(&self) -> Result<Vec<u8>> {
        use base64::Engine;
        let data = self.get("/screenshot").await?;
        let text = data
            .as_str()
            .ok_or_else(|| Error::Unexpected("a screenshot that is not base64 text".to_owned()))?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| Error::Unexpected(format!("a screenshot that is not base64: {e}")))
    }

    /// The browser's console messages of level SEVERE (CSP violations among them);
    /// empty when the log cannot be read.
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

    /// Ends the session (closing the browser) before chromedriver is stopped.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

/// Kills `child`'s process group (chromedriver and the browser it started) and reaps it.
fn kill_group(mut child: Child) {
    stop(&mut child);
}

fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the process group this crate created; no memory is touched.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop(&mut self.driver);
    }
}
