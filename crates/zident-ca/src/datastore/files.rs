//! A replica's working copy of the shared state in its data dir: the root generations (keys
//! opened with the KEK, written 0600), `rotation.json`, and the mesh file it serves
//! (`mesh.yaml`). The CA reads and reloads these exactly as it does without a database, so
//! the rules for keys, rotation and mesh edits are one code path; and a replica that starts
//! while the database is down serves from them.

use std::path::Path;

use super::StoreError;
use super::kek::Kek;
use super::store::StoredRoot;
use crate::persist::write_atomic;
use crate::roots::dir_store;
use crate::roots::rotation::RotationState;

/// The mesh a replica serves, in its data dir.
pub const MESH_COPY: &str = "mesh.yaml";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::WorkingCopy {
        path: path.to_owned(),
        source,
    }
}

/// Writes every root generation under `data_dir`, keys opened with `kek` (see
/// [`dir_store::write_generations`]).
pub(crate) fn write_roots(
    data_dir: &Path,
    roots: &[StoredRoot],
    kek: &Kek,
) -> Result<(), StoreError> {
    let all: Vec<_> = roots.iter().map(|r| r.generation).collect();
    let generations = super::store::open_generations(roots, kek, &all)?;
    Ok(dir_store::write_generations(data_dir, &generations)?)
}

/// Writes the rotation state last: the commit point the CA's reload watches.
pub(crate) fn write_rotation(data_dir: &Path, state: &RotationState) -> Result<(), StoreError> {
    Ok(dir_store::write_state(data_dir, state)?)
}

/// Writes the mesh the replica serves.
pub(crate) fn write_mesh(data_dir: &Path, yaml: &str) -> Result<(), StoreError> {
    let path = data_dir.join(MESH_COPY);
    write_atomic(&path, yaml.as_bytes(), 0o600).map_err(io(&path))
}

/// Whether `data_dir` holds a working copy a replica can start from without the database.
pub(crate) fn has_working_copy(data_dir: &Path) -> bool {
    data_dir.join(dir_store::STATE_FILE).exists() && data_dir.join(MESH_COPY).exists()
}
