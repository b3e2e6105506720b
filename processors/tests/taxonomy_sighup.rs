//! SIGHUP reloads the registry. This test binary is its own process and sends
//! the signal to itself only after the watcher has installed its handler.

use std::path::Path;
use std::time::{Duration, Instant};

use tally_config::{TaxonomyHandle, ValidateConfig, ValidateMode};
use tally_processors::validate::spawn_watcher;

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write registry");
    std::fs::rename(&tmp, path).expect("rename registry");
}

#[tokio::test]
async fn sighup_reloads_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("taxonomy.yaml");
    write(&path, "version: 1\nactions:\n  s.one: { description: x }\n");
    let handle = TaxonomyHandle::load(&ValidateConfig {
        taxonomy: Some(path.clone()),
        mode: ValidateMode::Strict,
        // No polling: only the signal can reload.
        reload_interval_secs: 0,
    })
    .expect("load");
    // The handler is installed when spawn_watcher returns.
    let watcher = spawn_watcher(handle.clone(), None);
    write(&path, "version: 1\nactions:\n  s.two: { description: x }\n");
    assert!(handle.current().lookup("s.two").is_none(), "no polling");

    // SAFETY: raise() only delivers SIGHUP to this process, whose handler is installed.
    let rc = unsafe { libc::raise(libc::SIGHUP) };
    assert_eq!(rc, 0);
    let start = Instant::now();
    while handle.current().lookup("s.two").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handle.status().generation, 2);

    // A broken file on SIGHUP keeps the registry and records why.
    write(
        &path,
        "version: 7\nactions:\n  s.three: { description: x }\n",
    );
    let rc = unsafe { libc::raise(libc::SIGHUP) };
    assert_eq!(rc, 0);
    let start = Instant::now();
    while handle.status().last_error.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP did not try to reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(handle.current().lookup("s.two").is_some());
    assert!(handle
        .status()
        .last_error
        .unwrap_or_default()
        .contains("unsupported version 7"));
    watcher.abort();
}
