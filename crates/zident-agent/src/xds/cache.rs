//! The last good view on disk. Written whole (temporary file, fsync, rename), so a crash
//! leaves the previous copy or the new one; read at start, so an agent restarted while the
//! control plane is down serves the workloads it served before.

use std::io::Write;
use std::path::Path;

use zident_xds::Snapshot;

use super::error::CacheError;

/// Reads the copy at `path`; `Ok(None)` when there is none yet.
pub(crate) fn load(path: &Path) -> Result<Option<Snapshot>, CacheError> {
    match std::fs::read(path) {
        Ok(bytes) => Snapshot::from_bytes(&bytes)
            .map(Some)
            .map_err(|source| CacheError::Corrupt {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Read {
            path: path.to_owned(),
            source,
        }),
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
