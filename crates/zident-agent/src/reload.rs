//! Applying a new mesh on a running agent (an edited file, or a view from the control plane),
//! or keeping the last good one: a change is taken whole or not at all.

use std::path::Path;
use std::sync::Arc;

use zident_identity::TrustDomain;
use zident_mesh::MeshFile;

use crate::ca::trust::TrustStore;
use crate::certs::manager::CertificateManager;
use crate::metrics::{AgentMetrics, OutcomeLabel};
use crate::workload_api;
use crate::workloads::{LocalView, local_view};

/// Puts an accepted mesh in force on this node: certificates for its identities, extra
/// roots, Workload API sockets and files, and the mesh the tunnel routes by. The one path for
/// a mesh from a file and one from the control plane.
pub(crate) struct MeshApplier {
    pub(crate) node: String,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) manager: Arc<CertificateManager>,
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) metrics: Arc<AgentMetrics>,
    pub(crate) delivery: Arc<workload_api::Delivery<CertificateManager>>,
    pub(crate) mesh: tokio::sync::watch::Sender<Arc<MeshFile>>,
}

impl MeshApplier {
    /// Puts `mesh` (whose view of this node is `view`) in force.
    pub(crate) fn apply(&self, mesh: MeshFile, view: &LocalView) {
        self.metrics
            .config_reloads
            .get_or_create(&OutcomeLabel { outcome: "applied" })
            .inc();
        self.trust.set_config_roots(view.extra_roots.clone());
        self.manager.set_identities(&view.identity_set());
        self.delivery.sync(&view.workloads);
        self.mesh.send_replace(Arc::new(mesh));
    }

    /// Counts and logs a mesh that was refused.
    pub(crate) fn refused(&self, source: &str, e: &str) {
        self.metrics
            .config_reloads
            .get_or_create(&OutcomeLabel {
                outcome: "rejected",
            })
            .inc();
        tracing::error!(target: "zident::identity", "{source} change rejected, keeping the last good configuration: {e}");
    }

    /// Checks a mesh from `origin` for this node: the trust domain it started with, and a
    /// view of this node.
    pub(crate) fn check(&self, mesh: &MeshFile, origin: &Path) -> Result<LocalView, String> {
        mesh.keeps_trust_domain(&self.trust_domain, origin, "the agent")
            .map_err(|e| e.to_string())?;
        node_view(mesh, origin, &self.node)
    }
}

/// Applies an edited mesh file, or keeps the last good one.
pub(crate) struct Reloader {
    pub(crate) path: std::path::PathBuf,
    pub(crate) applier: Arc<MeshApplier>,
}

impl Reloader {
    pub(crate) fn reload(&self) {
        let path = &self.path;
        let result = MeshFile::load(path)
            .map_err(|e| e.to_string())
            .and_then(|mesh| {
                let view = self.applier.check(&mesh, path)?;
                Ok((mesh, view))
            });
        match result {
            Ok((mesh, view)) => {
                tracing::info!(target: "zident::identity", identities = view.identities.len(), "mesh file reloaded");
                self.applier.apply(mesh, &view);
            }
            Err(e) => self.applier.refused("mesh file", &e),
        }
    }
}

/// This node's part of `mesh` (read from `path`), or why the file cannot serve this node: at
/// start and on every edit alike.
pub(crate) fn node_view(mesh: &MeshFile, path: &Path, node: &str) -> Result<LocalView, String> {
    if !mesh.names_node(node) {
        return Err(format!(
            "mesh file {}: nodes: the file does not name this agent's node {node:?} (no `nodes:` \
             entry and no workload with `node: {node}`); applying it would remove every workload \
             of this node. Check NODE_NAME, or restore the node's entries (to take a node out of \
             the mesh, stop its agent)",
            path.display()
        ));
    }
    local_view(mesh, node).map_err(|e| format!("mesh file {}: {e}", path.display()))
}
