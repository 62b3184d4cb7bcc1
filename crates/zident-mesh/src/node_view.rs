//! One node's view of an accepted mesh, built once per mesh and read by everything on the node:
//! the certificate manager (which identities), the Workload API, SDS and the SVID files (which
//! local workloads, as whom), and the tunnel (routes and policies over every workload). Each
//! workload's SPIFFE ID is derived here, once, so attestation and routing cannot disagree about
//! who a workload is.

use std::collections::{BTreeMap, HashSet};

use zident_identity::pem::certs_from_pem;
use zident_identity::{CertificateDer, SpiffeId};

use crate::file::{MeshFile, Workload};
use crate::origin::MeshOrigin;

/// Why a mesh gives no view of a node. Each names the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeViewError {
    /// The mesh does not name the node at all: applying it would remove every workload of the
    /// node.
    #[error(
        "{origin}: nodes: it does not name this agent's node {node:?} (no `nodes:` entry and no workload with `node: {node}`); applying it would remove every workload of this node. Check NODE_NAME, or restore the node's entries (to take a node out of the mesh, stop its agent)"
    )]
    NodeMissing {
        /// Where the mesh came from.
        origin: MeshOrigin,
        /// The node.
        node: String,
    },
    /// A workload's identity is not a SPIFFE ID.
    #[error("{origin}: workload {workload}: {source}")]
    Identity {
        /// Where the mesh came from.
        origin: MeshOrigin,
        /// `namespace/name`.
        workload: String,
        /// What is wrong with its identity.
        source: crate::file::WorkloadIdError,
    },
    /// A `caCertificates` entry is not PEM.
    #[error("{origin}: caCertificates[{index}]: {message}")]
    CaCertificate {
        /// Where the mesh came from.
        origin: MeshOrigin,
        /// Its position.
        index: usize,
        /// What the PEM reader said.
        message: String,
    },
}

/// One accepted mesh as node `node` sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    origin: MeshOrigin,
    node: String,
    mesh: MeshFile,
    /// The identity of `mesh.workloads[i]`.
    ids: Vec<SpiffeId>,
    /// Indexes of this node's workloads in `mesh.workloads`.
    local: Vec<usize>,
    /// Identity → the local workloads (`namespace/name`) that have it.
    identities: BTreeMap<SpiffeId, Vec<String>>,
    own: Option<SpiffeId>,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl NodeView {
    /// `node`'s view of `mesh` (already checked whole) from `origin`. Refuses a mesh that does
    /// not name the node.
    pub fn new(mesh: MeshFile, origin: MeshOrigin, node: &str) -> Result<Self, NodeViewError> {
        if !mesh.names_node(node) {
            return Err(NodeViewError::NodeMissing {
                origin,
                node: node.to_owned(),
            });
        }
        Self::of_any_node(mesh, origin, node)
    }

    /// Like [`NodeView::new`], without requiring the mesh to name `node` (a tunnel or a test
    /// that serves no local workload of its own).
    pub fn of_any_node(
        mesh: MeshFile,
        origin: MeshOrigin,
        node: &str,
    ) -> Result<Self, NodeViewError> {
        let mut ids = Vec::with_capacity(mesh.workloads.len());
        let mut local = Vec::new();
        let mut identities: BTreeMap<SpiffeId, Vec<String>> = BTreeMap::new();
        for (i, w) in mesh.workloads.iter().enumerate() {
            let label = format!("{}/{}", w.namespace, w.name);
            let id = w
                .spiffe_id(&mesh.trust_domain)
                .map_err(|source| NodeViewError::Identity {
                    origin: origin.clone(),
                    workload: label.clone(),
                    source,
                })?;
            if w.node == node {
                local.push(i);
                identities.entry(id.clone()).or_default().push(label);
            }
            ids.push(id);
        }
        let own = mesh
            .nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.spiffe_id.clone());
        let mut extra_roots = Vec::new();
        for (index, pem) in mesh.ca_certificates.iter().enumerate() {
            let certs =
                certs_from_pem(pem.as_bytes()).map_err(|e| NodeViewError::CaCertificate {
                    origin: origin.clone(),
                    index,
                    message: e.to_string(),
                })?;
            extra_roots.extend(certs);
        }
        Ok(Self {
            origin,
            node: node.to_owned(),
            mesh,
            ids,
            local,
            identities,
            own,
            extra_roots,
        })
    }

    /// Where the mesh came from.
    pub fn origin(&self) -> &MeshOrigin {
        &self.origin
    }

    /// The node this view is of.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The whole mesh (services, policies, nodes).
    pub fn mesh(&self) -> &MeshFile {
        &self.mesh
    }

    /// Every workload of the mesh with its identity.
    pub fn workloads(&self) -> impl Iterator<Item = (&Workload, &SpiffeId)> {
        self.mesh.workloads.iter().zip(&self.ids)
    }

    /// This node's workloads with their identities.
    pub fn local_workloads(&self) -> impl Iterator<Item = (&Workload, &SpiffeId)> {
        self.local
            .iter()
            .map(|&i| (&self.mesh.workloads[i], &self.ids[i]))
    }

    /// Identity → this node's workloads (`namespace/name`) that have it.
    pub fn identities(&self) -> &BTreeMap<SpiffeId, Vec<String>> {
        &self.identities
    }

    /// The identities of this node's workloads, as a set.
    pub fn identity_set(&self) -> HashSet<SpiffeId> {
        self.identities.keys().cloned().collect()
    }

    /// The node's own identity (`nodes[].spiffeId`).
    pub fn own(&self) -> Option<&SpiffeId> {
        self.own.as_ref()
    }

    /// Roots from `caCertificates`, trusted beside the CA's.
    pub fn extra_roots(&self) -> &[CertificateDer<'static>] {
        &self.extra_roots
    }
}
