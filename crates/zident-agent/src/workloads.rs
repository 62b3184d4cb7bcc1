//! This node's workloads as the Workload API serves them: the accepted mesh's [`NodeView`]
//! with each local workload's user and group resolved.

use std::sync::Arc;

use zident_identity::SpiffeId;
use zident_mesh::{MeshError, MeshOrigin, NodeView, NodeViewError};

use crate::unix_users::UnknownUnixId;

/// Why a mesh is not put in force on this node (at start, on an edit of the file, or from the
/// control plane). Nothing changes when one is returned; the last good mesh stays.
#[derive(Debug, thiserror::Error)]
pub enum MeshRefused {
    /// The mesh breaks a rule, or changes the trust domain the agent runs with.
    #[error(transparent)]
    Invalid(#[from] MeshError),
    /// The mesh gives no view of this node (it does not name it, or an identity is invalid).
    #[error(transparent)]
    View(#[from] NodeViewError),
    /// A local workload runs as a user or group this node does not have.
    #[error("{origin}: workload {workload}: {source}")]
    User {
        /// Where the mesh came from.
        origin: MeshOrigin,
        /// `namespace/name`.
        workload: String,
        /// The user or group.
        source: UnknownUnixId,
    },
    /// The control plane's resources do not make a mesh.
    #[error(transparent)]
    Decode(#[from] zident_xds::DecodeError),
}

/// A workload on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWorkload {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its identity.
    pub id: SpiffeId,
    /// Its addresses: a Workload API caller in a network namespace holding one of them is
    /// this workload.
    pub ips: Vec<std::net::IpAddr>,
    /// Who runs it, when it says (`user:`/`group:` in the mesh).
    pub run_as: Option<crate::unix_users::RunAs>,
}

/// An accepted mesh on this node: the [`NodeView`] that every consumer reads (the certificate
/// manager, the Workload API, SDS, the SVID files and the tunnel), and this node's workloads as
/// the Workload API serves them, each with the user and group it runs as, resolved once.
#[derive(Debug, Clone)]
pub struct AcceptedMesh {
    /// The view, shared with the tunnel.
    pub view: Arc<NodeView>,
    /// The local workloads with their identities and users.
    pub workloads: Vec<LocalWorkload>,
}

impl AcceptedMesh {
    /// Resolves the users of `view`'s local workloads. Fails on a user or group this host
    /// does not know.
    pub fn new(view: NodeView) -> Result<Self, MeshRefused> {
        let workloads =
            view.local_workloads()
                .map(|(w, id)| {
                    let run_as = crate::unix_users::run_as(w.user.as_ref(), w.group.as_ref())
                        .map_err(|source| MeshRefused::User {
                            origin: view.origin().clone(),
                            workload: format!("{}/{}", w.namespace, w.name),
                            source,
                        })?;
                    Ok(LocalWorkload {
                        namespace: w.namespace.clone(),
                        name: w.name.clone(),
                        id: id.clone(),
                        ips: w.workload_ips.clone(),
                        run_as,
                    })
                })
                .collect::<Result<_, MeshRefused>>()?;
        Ok(Self {
            view: Arc::new(view),
            workloads,
        })
    }
}
