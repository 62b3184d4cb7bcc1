//! Where an accepted mesh came from: a file, the control plane's xDS stream, or a Kubernetes
//! API server. Messages name it, and the rules that differ by origin are decided by it: a file
//! carries the callers' tokens (the control plane never sends them), and only a file can be an
//! empty or cut-short save (an empty cluster is a real, empty mesh).

use std::path::{Path, PathBuf};

/// Where a mesh came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshOrigin {
    /// A mesh file at this path.
    File(PathBuf),
    /// The view a control plane at this address (`host:port`) sent over xDS.
    ControlPlane(String),
    /// The control plane's last view, kept on disk in this file, served until the control
    /// plane answers.
    Cached(PathBuf),
    /// The objects of a Kubernetes API server at this address, with the mesh file's entries
    /// (nodes, tokens) when one is given beside it. Its tokens were checked with the file; an
    /// empty cluster is a valid mesh.
    Kubernetes(String),
}

impl MeshOrigin {
    /// A mesh file at `path`.
    pub fn file(path: &Path) -> Self {
        Self::File(path.to_owned())
    }
}

impl std::fmt::Display for MeshOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "mesh file {}", p.display()),
            Self::ControlPlane(address) => {
                write!(f, "the mesh from the control plane at {address}")
            }
            Self::Kubernetes(server) => write!(f, "the mesh from the Kubernetes API at {server}"),
            Self::Cached(p) => write!(
                f,
                "the control plane's last mesh, cached in {}",
                p.display()
            ),
        }
    }
}
