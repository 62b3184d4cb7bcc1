//! Where an accepted mesh came from: a file, or the control plane's xDS stream. Messages name
//! it, and the one rule that differs between the two (a file carries the callers' tokens, the
//! control plane never sends them) is decided by it.

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
            Self::Cached(p) => write!(
                f,
                "the control plane's last mesh, cached in {}",
                p.display()
            ),
        }
    }
}
