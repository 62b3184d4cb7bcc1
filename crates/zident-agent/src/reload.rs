//! Applying an edited mesh file on a running agent, or keeping the last good one: an edit is
//! taken whole or not at all.

use std::sync::Arc;

use zident_identity::TrustDomain;
use zident_mesh::MeshFile;

use crate::ca::trust::TrustStore;
use crate::certs::manager::CertificateManager;
use crate::metrics::{AgentMetrics, OutcomeLabel};
use crate::workload_api;
use crate::workloads::local_view;

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
            .map_err(|e| e.to_string())
            .and_then(|mesh| {
                if mesh.trust_domain != self.trust_domain {
                    return Err(format!(
                        "mesh file {}: trustDomain cannot change from {} to {} while running; restart the agent",
                        path.display(),
                        self.trust_domain,
                        mesh.trust_domain
                    ));
                }
                if !mesh.names_node(&self.node) {
                    return Err(not_named(path, &self.node));
                }
                let view = local_view(&mesh, &self.node)
                    .map_err(|e| format!("mesh file {}: {e}", path.display()))?;
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

/// Why a mesh file that does not name this agent's node is refused.
pub(crate) fn not_named(path: &std::path::Path, node: &str) -> String {
    format!(
        "mesh file {}: nodes: the file does not name this agent's node {node:?} (no `nodes:` entry          and no workload with `node: {node}`); applying it would remove every workload of this          node. Check NODE_NAME, or restore the node's entries (to take a node out of the mesh,          stop its agent)",
        path.display()
    )
}
