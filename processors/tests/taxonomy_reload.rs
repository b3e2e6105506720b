//! Registry reloads: on file change (polled), on demand, and a broken file
//! keeping the old registry. SIGHUP is tested in `taxonomy_sighup.rs` (its own
//! process, since the handler is process-wide).

use std::path::Path;
use std::time::{Duration, Instant};

use tally_config::taxonomy::{ReloadOutcome, TaxonomySource};
use tally_config::{TaxonomyHandle, ValidateConfig, ValidateMode};
use tally_processors::validate::{poll_interval, spawn_watcher};

fn registry(actions: &[&str]) -> String {
    let mut text = String::from("version: 1\nactions:\n");
    for action in actions {
        text.push_str(&format!("  {action}: {{ description: test }}\n"));
    }
    text
}

/// Writes through a temporary file and a rename, as editors and config
/// management tools do, so a poll never sees a half-written file.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write registry");
    std::fs::rename(&tmp, path).expect("rename registry");
}

fn config(path: &Path, mode: ValidateMode) -> ValidateConfig {
    ValidateConfig {
        taxonomy: Some(path.to_path_buf()),
        mode,
        reload_interval_secs: 1,
    }
}

/// Polls `condition` until it holds or `deadline` passes.
async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn load_names_a_missing_or_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("taxonomy.yaml");
    let error = TaxonomyHandle::load(&config(&path, ValidateMode::Strict)).unwrap_err();
    assert!(
        error.to_string().starts_with("cannot read taxonomy file"),
        "{error}"
    );
    write(&path, "version: 1\nactions:\n  Bad: { description: x }\n");
    let error = TaxonomyHandle::load(&config(&path, ValidateMode::Strict)).unwrap_err();
    assert_eq!(error.lines().len(), 1);
    assert!(
        error.lines()[0].starts_with("actions.Bad: action name"),
        "{error}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn manual_reload_swaps_and_a_broken_file_keeps_the_old_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("taxonomy.yaml");
    write(&path, &registry(&["a.one"]));
    let handle = TaxonomyHandle::load(&config(&path, ValidateMode::Strict)).expect("load");
    assert_eq!(handle.source(), &TaxonomySource::File(path.clone()));
    assert_eq!(handle.mode(), ValidateMode::Strict);
    let before = handle.current();
    assert!(before.lookup("a.one").is_some());
    assert_eq!(handle.status().generation, 1);

    // Same text: nothing to do when polling.
    assert_eq!(handle.reload_if_changed(), Ok(ReloadOutcome::Unchanged));

    write(&path, &registry(&["a.one", "a.two"]));
    assert_eq!(
        handle.reload_if_changed(),
        Ok(ReloadOutcome::Reloaded {
            generation: 2,
            // The two declared, and Tally's own actions (audit.log.view,
            // token.budget.threshold, token.quota.exceed, admin.user.erase).
            actions: 6
        })
    );
    assert!(handle.current().lookup("a.two").is_some());
    // A snapshot taken before the reload is unchanged.
    assert!(before.lookup("a.two").is_none());

    write(
        &path,
        "version: 1\nactions:\n  a.three: { description: x, outcomes: [maybe] }\n",
    );
    let error = handle.reload_if_changed().unwrap_err();
    assert!(
        error.to_string().contains("actions.a.three.outcomes[0]"),
        "{error}"
    );
    assert!(
        handle.current().lookup("a.two").is_some(),
        "old registry kept"
    );
    let status = handle.status();
    assert_eq!(status.generation, 2);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("a.three")),
        "{status:?}"
    );
    // Still broken: a poll does not report it again, a forced reload does.
    assert_eq!(handle.reload_if_changed(), Ok(ReloadOutcome::Unchanged));
    assert!(handle.reload().is_err());

    // The file disappears: error once, old registry kept.
    std::fs::remove_file(&path).expect("remove");
    assert!(handle
        .reload_if_changed()
        .unwrap_err()
        .to_string()
        .contains("cannot read"));
    assert_eq!(handle.reload_if_changed(), Ok(ReloadOutcome::Unchanged));
    assert!(handle.current().lookup("a.two").is_some());

    write(&path, &registry(&["a.four"]));
    assert_eq!(
        handle.reload_if_changed(),
        Ok(ReloadOutcome::Reloaded {
            generation: 3,
            // a.four and Tally's four own actions.
            actions: 5
        })
    );
    assert_eq!(handle.status().last_error, None);
    assert!(handle.current().lookup("a.two").is_none());
    assert!(handle.current().lookup("a.four").is_some());
}

#[test]
fn builtin_registry_has_nothing_to_reload() {
    let handle = TaxonomyHandle::load(&ValidateConfig::default()).expect("builtin");
    assert_eq!(handle.source(), &TaxonomySource::Builtin);
    assert_eq!(handle.reload(), Ok(ReloadOutcome::Unchanged));
    assert_eq!(poll_interval(&ValidateConfig::default()), None);
}

#[test]
fn poll_interval_follows_the_config() {
    let mut config = config(Path::new("x.yaml"), ValidateMode::Lenient);
    assert_eq!(poll_interval(&config), Some(Duration::from_secs(1)));
    config.reload_interval_secs = 0;
    assert_eq!(poll_interval(&config), None);
}

#[tokio::test]
async fn watcher_reloads_on_file_change_and_survives_a_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("taxonomy.yaml");
    write(&path, &registry(&["w.one"]));
    let handle = TaxonomyHandle::load(&config(&path, ValidateMode::Lenient)).expect("load");
    let watcher = spawn_watcher(handle.clone(), Some(Duration::from_millis(50)));

    write(&path, &registry(&["w.one", "w.two"]));
    wait_for("w.two to be loaded", Duration::from_secs(10), || {
        handle.current().lookup("w.two").is_some()
    })
    .await;

    write(&path, "version: 1\nactions: [not, a, map]\n");
    wait_for(
        "the broken file to be reported",
        Duration::from_secs(10),
        || handle.status().last_error.is_some(),
    )
    .await;
    assert!(
        handle.current().lookup("w.two").is_some(),
        "old registry kept"
    );
    assert!(!watcher.is_finished(), "the watcher keeps running");

    write(&path, &registry(&["w.three"]));
    wait_for("w.three to be loaded", Duration::from_secs(10), || {
        handle.current().lookup("w.three").is_some()
    })
    .await;
    assert_eq!(handle.status().last_error, None);
    assert!(handle.current().lookup("w.two").is_none());
    watcher.abort();
}
