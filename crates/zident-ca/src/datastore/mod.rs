//! High availability on PostgreSQL: several `zident ca` replicas share one database
//! (`--datastore postgres://…`).
//!
//! The database is the source of truth for the root generations (keys sealed under a
//! key-encryption key that never enters it), the rotation state and its history, what every
//! replica issued (so `activate` waits for clients of all of them), and the mesh, as numbered
//! versions. Each replica keeps a working copy in its own data dir and serves from it, so
//! issuance never waits on the database and a replica whose database is away keeps issuing.
//!
//! - `kek`: sealing root keys (AES-256-GCM);
//! - `schema`: numbered migrations, run once under an advisory lock;
//! - `store`: every read and write; a rotation step or a mesh version is one transaction;
//! - `error`: what can go wrong with the shared state;
//! - `files`: the working copy in the data dir;
//! - `replica`: a running replica's loop (follow changes by LISTEN/NOTIFY with polling as a
//!   fallback, send what it issued, report itself, lead rotation while it holds the advisory
//!   lock on its session, and say when it is degraded).

mod error;
pub mod files;
pub mod kek;
pub(crate) mod replica;
mod schema;
pub mod store;
mod tls;

use std::path::{Path, PathBuf};

pub use error::{MeshForStoreError, NotReady, StoreError};
pub use kek::{Kek, KekError};
pub use store::{MeshVersionRow, PgRoots, ReplicaRow, Step, Store, StoredRoot};

/// How a replica reaches the shared state.
#[derive(Debug, Clone)]
pub struct DatastoreConfig {
    /// `postgres://user@host:port/db` (or key=value pairs), `ZIDENT_DATASTORE`.
    pub url: String,
    /// The 256-bit key-encryption key for root keys.
    pub kek_file: PathBuf,
    /// This replica's name in `zident ca status` (default: the host name and listen address).
    pub name: String,
    /// A mesh file to store as the first version when the database holds none.
    pub import: Option<PathBuf>,
}

/// Reads and checks a mesh file for storing: as a reload would, and with its tokens inline
/// (a token file would not exist beside the other replicas).
pub fn mesh_for_store(path: &Path) -> Result<(String, zident_mesh::MeshFile), MeshForStoreError> {
    let yaml = std::fs::read_to_string(path).map_err(|source| MeshForStoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mesh = zident_mesh::MeshFile::parse(path, &yaml)?;
    crate::node_authorizer::NodeAuthorizer::from_mesh(&mesh, path)?;
    let token_file = |field: String| MeshForStoreError::TokenFile {
        path: path.to_owned(),
        field,
    };
    for (i, n) in mesh.nodes.iter().enumerate() {
        if n.token_file.is_some() {
            return Err(token_file(format!("nodes[{i}] ({})", n.name)));
        }
    }
    for (i, e) in mesh.identities.iter().enumerate() {
        if e.token_file.is_some() {
            return Err(token_file(format!("identities[{i}]")));
        }
    }
    Ok((yaml, mesh))
}
