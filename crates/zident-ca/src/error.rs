//! Why the CA could not start: each step of the start-up fails in its own way.

use std::net::SocketAddr;
use std::path::PathBuf;

use zident_mesh::MeshError;

use crate::roots::authority::AuthorityError;
use crate::roots::rotation;
use crate::{data_lock, datastore, server};

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The mesh file is unusable.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// The keys are unusable.
    #[error("CA keys: {0}")]
    Authority(#[from] AuthorityError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source} (is another zident or istiod running there?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CA's serving certificate could not be made.
    #[error("TLS setup failed: {0}")]
    Serving(#[from] server::ServingError),
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The rotation state is unusable.
    #[error("root rotation: {0}")]
    Rotation(#[from] rotation::RotationError),
    /// Another CA holds the data dir, or it cannot be locked.
    #[error(transparent)]
    DataDir(#[from] data_lock::DataDirError),
    /// The ledger of issued certificates cannot be opened.
    #[error("cannot open the ledger of issued certificates in {path}: {source}")]
    Ledger {
        /// The data dir.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The shared datastore could not be used at start.
    #[error("datastore: {0}")]
    Datastore(#[from] datastore::StoreError),
    /// The CA's state in the Kubernetes API (`--roots-in-cluster`) cannot be used.
    #[error("the CA's state in the Kubernetes API: {0}")]
    ClusterState(String),
    /// The Kubernetes API could not give a first mesh.
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] crate::kubernetes::KubernetesError),
    /// A file watch could not be set up.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// What was to be watched.
        path: PathBuf,
        /// Why not.
        source: notify::Error,
    },
}
