//! What the mesh file says about this node: which identities its workloads have, the agent's
//! own identity, and extra trusted roots.

use std::collections::{BTreeMap, HashSet};

use rustls_pki_types::CertificateDer;
use zident_identity::SpiffeId;
use zident_identity::pem::certs_from_pem;
use zident_mesh::MeshFile;

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

/// This node's part of the mesh file.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    /// The workloads on this node.
    pub workloads: Vec<LocalWorkload>,
    /// Identity → the workloads (`namespace/name`) that have it.
    pub identities: BTreeMap<SpiffeId, Vec<String>>,
    /// The agent's own identity (`nodes[].spiffeId`).
    pub own: Option<SpiffeId>,
    /// Roots from `caCertificates`.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl LocalView {
    /// The workload identities, as a set.
    pub fn identity_set(&self) -> HashSet<SpiffeId> {
        self.identities.keys().cloned().collect()
    }
}

/// Extracts `node`'s view. Fails on a `caCertificates` entry that is not PEM.
pub fn local_view(mesh: &MeshFile, node: &str) -> Result<LocalView, String> {
    let mut identities: BTreeMap<SpiffeId, Vec<String>> = BTreeMap::new();
    let mut workloads = Vec::new();
    for w in mesh.workloads.iter().filter(|w| w.node == node) {
        let id = w
            .spiffe_id(&mesh.trust_domain)
            .map_err(|e| format!("workload {}/{}: {e}", w.namespace, w.name))?;
        identities
            .entry(id.clone())
            .or_default()
            .push(format!("{}/{}", w.namespace, w.name));
        let run_as = crate::unix_users::run_as(w.user.as_ref(), w.group.as_ref())
            .map_err(|e| format!("workload {}/{}: {e}", w.namespace, w.name))?;
        workloads.push(LocalWorkload {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            id,
            ips: w.workload_ips.clone(),
            run_as,
        });
    }
    let own = mesh
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.spiffe_id.clone());
    let mut extra_roots = Vec::new();
    for (i, pem) in mesh.ca_certificates.iter().enumerate() {
        let certs =
            certs_from_pem(pem.as_bytes()).map_err(|e| format!("caCertificates[{i}]: {e}"))?;
        extra_roots.extend(certs);
    }
    Ok(LocalView {
        workloads,
        identities,
        own,
        extra_roots,
    })
}
