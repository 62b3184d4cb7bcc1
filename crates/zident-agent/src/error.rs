//! Why the agent could not start: each step of the start-up fails in its own way.

use std::net::SocketAddr;

use crate::ca;
use crate::workloads;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The mesh file is unusable.
    #[error(transparent)]
    Mesh(#[from] zident_mesh::MeshError),
    /// The mesh cannot serve this node.
    #[error(transparent)]
    MeshRefused(#[from] workloads::MeshRefused),
    /// No node name was given.
    #[error("NODE_NAME (--node) is required")]
    NoNodeName,
    /// `TRUST_DOMAIN` is not a trust domain.
    #[error("TRUST_DOMAIN {setting:?}: {source}")]
    TrustDomain {
        /// The setting.
        setting: String,
        /// What is wrong with it.
        source: zident_identity::IdError,
    },
    /// `TRUST_DOMAIN` and the mesh file disagree.
    #[error("TRUST_DOMAIN is {setting} but the mesh file {} says {mesh}", path.display())]
    TrustDomainMismatch {
        /// The setting.
        setting: String,
        /// The mesh file.
        path: std::path::PathBuf,
        /// The mesh file's trust domain.
        mesh: zident_identity::TrustDomain,
    },
    /// `CA_ROOT_CA` cannot be read.
    #[error("cannot read CA_ROOT_CA {}: {source}", path.display())]
    CaRootRead {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mesh file's directory cannot be watched for edits.
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The mesh file.
        path: std::path::PathBuf,
        /// What the watcher said.
        source: notify::Error,
    },
    /// The shared Workload API socket cannot be served.
    #[error("cannot serve the shared Workload API socket {}: {source}", path.display())]
    SharedSocket {
        /// The socket.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--metrics-tls` without the node's own identity.
    #[error(
        "--metrics-tls needs the agent's own identity: give node {node} a spiffeId in the mesh file"
    )]
    NoOwnIdentity {
        /// The node.
        node: String,
    },
    /// `CA_ROOT_CA` holds no usable certificate.
    #[error("CA_ROOT_CA {}: {source}", path.display())]
    CaRoot {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: zident_identity::pem::PemError,
    },
    /// The CA address is unusable.
    #[error(transparent)]
    CaAddress(#[from] ca::endpoints::CaAddressError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}
