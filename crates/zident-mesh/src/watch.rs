//! Watching configuration files (the mesh file, plugged-in CA keys) and reloading them
//! without a restart.
//!
//! The directory is watched rather than the file: editors and Kubernetes secret mounts
//! replace a file by renaming another over it, which a watch on the file itself would miss.
//! Bursts of events (write, chmod, rename) are collapsed into one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Events closer together than this trigger one reload.
const SETTLE: Duration = Duration::from_millis(150);

/// Watches `dir`; wakes the returned receiver when something in it changes whose file name is
/// in `names` (or anything, when `names` is empty). Keep the watcher alive as long as needed.
pub fn watch_dir(
    dir: &Path,
    names: Vec<String>,
) -> notify::Result<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let relevant = names.is_empty()
            || event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| names.iter().any(|w| n == w.as_str()))
            });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Calls `reload` once per settled burst of changes, until the watcher is dropped. A reload
/// reads and checks files, so it runs on the blocking pool, never on a runtime worker (an agent
/// runs one worker thread by default, which also carries its tunnels); reloads never overlap.
pub async fn reload_on_change(
    mut changes: mpsc::UnboundedReceiver<()>,
    reload: impl Fn() + Send + Sync + 'static,
) {
    let reload = std::sync::Arc::new(reload);
    while changes.recv().await.is_some() {
        loop {
            match tokio::time::timeout(SETTLE, changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let once = reload.clone();
        let _ = tokio::task::spawn_blocking(move || once()).await;
    }
}

/// The directory holding `file` (`.` for a bare name) and the file's name.
pub fn dir_and_name(file: &Path) -> (PathBuf, String) {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}
