//! The browser tests' view of `tally-browser` (the WebDriver client shared
//! with `tally-bench console`): the same calls, failing the test with the
//! client's error instead of returning it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// `None` (and a line saying why) when there is no browser and `TALLY_SKIP_BROWSER=1`;
/// without that variable a missing browser is a failure.
pub fn available() -> Option<(PathBuf, PathBuf)> {
    match tally_browser::locate() {
        Ok(found) => Some(found),
        Err(why) if std::env::var("TALLY_SKIP_BROWSER").as_deref() == Ok("1") => {
            eprintln!("skipping the browser test: {why} and TALLY_SKIP_BROWSER=1");
            None
        }
        Err(why) => panic!("{why}; set TALLY_SKIP_BROWSER=1 to skip the browser tests"),
    }
}

/// A headless Chromium session; ended (and chromedriver stopped) on drop.
pub struct Browser(tally_browser::Browser);

/// The value, or the test fails with the client's error.
fn ok<T>(result: tally_browser::Result<T>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium profile.
    pub async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        Browser(ok(
            tally_browser::Browser::start(chromium, chromedriver).await
        ))
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        ok(self.0.goto(url).await)
    }

    /// The address bar.
    pub async fn url(&self) -> String {
        ok(self.0.url().await)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        ok(self.0.js(script, args).await)
    }

    /// A Chromium DevTools command through chromedriver; its result.
    pub async fn cdp(&self, command: &str, params: Value) -> Value {
        ok(self.0.cdp(command, params).await)
    }

    /// The element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> String {
        ok(self.0.find(css).await)
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        ok(self.0.click(css).await)
    }

    /// Types `text` into the element matching `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) {
        ok(self.0.type_into(css, text).await)
    }

    /// Sends `keys` to the element matching `css` as the keyboard would.
    pub async fn press(&self, css: &str, keys: &str) {
        ok(self.0.press(css, keys).await)
    }

    /// Sets a control's value directly (for inputs WebDriver cannot type into, as datetime-local).
    pub async fn set_value(&self, css: &str, value: &str) {
        ok(self.0.set_value(css, value).await)
    }

    /// `textContent` of the element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        ok(self.0.text(css).await)
    }

    /// Whether an element matches `css`.
    pub async fn exists(&self, css: &str) -> bool {
        ok(self.0.exists(css).await)
    }

    /// Polls `script` (returning a truthy value when done) until `deadline`; returns the value.
    pub async fn wait_js(
        &self,
        what: &str,
        deadline: Duration,
        script: &str,
        args: Value,
    ) -> Value {
        ok(self.0.wait_js(what, deadline, script, args).await)
    }

    /// Waits until the text of `css` contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str, deadline: Duration) {
        ok(self.0.wait_text(css, needle, deadline).await)
    }

    /// Sets the window size (for the phone-sized screenshots).
    pub async fn resize(&self, width: u32, height: u32) {
        ok(self.0.resize(width, height).await)
    }

    /// Emulates `prefers-color-scheme: dark`.
    pub async fn dark(&self) {
        ok(self.0.dark().await)
    }

    /// Saves a PNG screenshot as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = ok(self.0.screenshot_png().await);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// The browser's console messages (severe ones include CSP violations).
    pub async fn severe_logs(&self) -> Vec<String> {
        self.0.severe_logs().await
    }

    /// Ends the session (closing the browser) before chromedriver is stopped.
    pub async fn quit(self) {
        self.0.quit().await
    }
}
