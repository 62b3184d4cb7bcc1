//! Applying an edited mesh file on a running agent, or keeping the last good one: an edit is
//! taken whole or not at all.

use std::path::Path;
use std::sync::Arc;

use zident_identity::TrustDomain;
use zident_mesh::MeshFile;

use crate::ca::trust::TrustStore;
use crate::certs::manager::CertificateManager;
use crate::metrics::{AgentMetrics, OutcomeLabel};
use crate::workload_api;
use crate::workloads::{LocalView, local_view};

/// Applies an edited mesh file, or keeps the last good one.
pub(crate) struct Reloader {
    pub(crate) path: std::path::PathBuf,
    pub(crate) node: String,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) manager: Arc<CertificateManager>,
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) metrics: Arc<AgentMetrics>,
    pub(crate) delivery: Arc<workload_api::Delivery<CertificateManager>>,
    pub(crate) mesh: tokio::sync::watch::Sender<Arc<MeshFile>>,
}

impl Reloader {
    pub(crate) fn reload(&self) {
        let path = &self.path;
        let result = MeshFile::load(path)
            .and_then(|mesh| {
                mesh.keeps_trust_domain(&self.trust_domain, path, "the agent")?;
                Ok(mesh)
            })
            .map_err(|e| e.to_string())
            .and_then(|mesh| {
                let view = node_view(&mesh, path, &self.node)?;
                Ok((mesh, view))
            });
        match result {
            Ok((mesh, view)) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&OutcomeLabel { outcome: "applied" })
                    .inc();
                tracing::info!(target: "zident::identity", identities = view.identities.len(), "mesh file reloaded");
                self.trust.set_config_roots(view.extra_roots.clone());
                self.manager.set_identities(&view.identity_set());
                self.delivery.sync(&view.workloads);
                self.mesh.send_replace(Arc::new(mesh));
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&OutcomeLabel {
                        outcome: "rejected",
                    })
                    .inc();
                tracing::error!(target: "zident::identity", "mesh file change rejected, keeping the last good configuration: {e}");
            }
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
