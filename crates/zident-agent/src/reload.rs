//! Applying a new mesh on a running agent (an edited file, or a view from the control plane),
//! or keeping the last good one: a change is taken whole or not at all.

use std::sync::Arc;

use zident_identity::TrustDomain;
use zident_mesh::{MeshFile, MeshOrigin, NodeView};

use crate::ca::trust::TrustStore;
use crate::certs::manager::CertificateManager;
use crate::metrics::{AgentMetrics, OutcomeLabel};
use crate::workload_api;
use crate::workloads::{AcceptedMesh, MeshRefused};

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
    pub(crate) mesh: tokio::sync::watch::Sender<Arc<NodeView>>,
}

impl MeshApplier {
    /// Puts `accepted` in force.
    pub(crate) fn apply(&self, accepted: AcceptedMesh) {
        self.metrics
            .config_reloads
            .get_or_create(&OutcomeLabel { outcome: "applied" })
            .inc();
        let view = &accepted.view;
        self.trust.set_config_roots(view.extra_roots().to_vec());
        self.manager.set_identities(&view.identity_set());
        self.delivery.sync(&accepted.workloads);
        self.mesh.send_replace(accepted.view);
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
    pub(crate) fn check(
        &self,
        mesh: MeshFile,
        origin: MeshOrigin,
    ) -> Result<AcceptedMesh, MeshRefused> {
        accept(mesh, origin, &self.trust_domain, &self.node)
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
            .map_err(MeshRefused::from)
            .and_then(|mesh| self.applier.check(mesh, MeshOrigin::file(path)));
        match result {
            Ok(accepted) => {
                tracing::info!(target: "zident::identity", identities = accepted.view.identities().len(), "mesh file reloaded");
                self.applier.apply(accepted);
            }
            Err(e) => self.applier.refused("mesh file", &e.to_string()),
        }
    }
}

/// `node`'s part of `mesh` (from `origin`), or why it cannot serve this node: the trust domain
/// the agent runs with, the node named, every identity and user known. At start and on every
/// change alike.
pub(crate) fn accept(
    mesh: MeshFile,
    origin: MeshOrigin,
    trust_domain: &TrustDomain,
    node: &str,
) -> Result<AcceptedMesh, MeshRefused> {
    mesh.keeps_trust_domain(trust_domain, &origin, "the agent")?;
    AcceptedMesh::new(NodeView::new(mesh, origin, node)?)
}
