//! The last good view on disk. Written whole (temporary file, fsync, rename), so a crash
//! leaves the previous copy or the new one; read at start, so an agent restarted while the
//! control plane is down serves the workloads it served before.

use std::io::Write;
use std::path::Path;

use zident_xds::Snapshot;

/// Reads the copy at `path`; `Ok(None)` when there is none yet.
pub(crate) fn load(path: &Path) -> Result<Option<Snapshot>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Snapshot::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a zident xDS cache: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the copy at `path` with `snapshot`.
pub(crate) fn store(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&snapshot.to_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
