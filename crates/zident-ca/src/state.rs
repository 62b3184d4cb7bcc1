//! What every request reads: the current authority and node authorizer, swapped whole on reload.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zident_mesh::MeshFile;

use crate::config::TtlPolicy;
use crate::metrics::CaMetrics;
use crate::node_authorizer::NodeAuthorizer;
use crate::roots::authority::Authority;

/// One accepted version of the mesh, as the xDS server and anything else that follows the
/// mesh sees it.
#[derive(Debug)]
pub struct MeshVersion {
    /// The mesh, checked whole.
    pub mesh: Arc<MeshFile>,
    /// Counts accepted versions since the CA started (1 is the one it started with).
    pub number: u64,
    /// When it was accepted, to measure how long it took to reach every stream.
    pub accepted: Instant,
}

/// Shared CA state. Readers clone an `Arc` under a short read lock and then work lock-free.
pub struct CaState {
    authority: RwLock<Arc<Authority>>,
    /// Counts authority replacements, for whoever re-issues on a change (DNS certificates).
    authority_changes: watch::Sender<u64>,
    authorizer: RwLock<Arc<NodeAuthorizer>>,
    mesh: watch::Sender<Arc<MeshVersion>>,
    /// Certificate lifetimes.
    pub ttl: TtlPolicy,
    /// JWT-SVID lifetime when a request names none.
    pub jwt_ttl: Duration,
    /// Metrics.
    pub metrics: CaMetrics,
    /// `spiffe_refresh_hint` published with the bundle.
    pub refresh_hint: Duration,
    /// What was issued, for root rotation.
    pub ledger: crate::roots::ledger::Ledger,
    /// ServiceAccount tokens, with `--kubernetes`.
    kube_auth: std::sync::OnceLock<Arc<crate::kube_auth::KubeAuth>>,
    /// Revocations and the CRLs signed for them.
    revocations: RwLock<Arc<crate::revocation::published::Published>>,
}

impl CaState {
    /// State over a loaded authority and node authorizer.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        authority: Authority,
        authorizer: NodeAuthorizer,
        mesh: MeshFile,
        ttl: TtlPolicy,
        jwt_ttl: Duration,
        metrics: CaMetrics,
        refresh_hint: Duration,
        ledger: crate::roots::ledger::Ledger,
    ) -> Self {
        metrics.set_expiries(authority.earliest_root_expiry(), authority.chain_expiry());
        Self {
            authority: RwLock::new(Arc::new(authority)),
            authority_changes: watch::channel(0).0,
            authorizer: RwLock::new(Arc::new(authorizer)),
            mesh: watch::channel(Arc::new(MeshVersion {
                mesh: Arc::new(mesh),
                number: 1,
                accepted: Instant::now(),
            }))
            .0,
            ttl,
            jwt_ttl: jwt_ttl.min(ttl.max_ttl),
            metrics,
            refresh_hint,
            ledger,
            kube_auth: std::sync::OnceLock::new(),
            revocations: RwLock::default(),
        }
    }

    /// The revocations and CRLs in force.
    pub fn revocations(&self) -> Arc<crate::revocation::published::Published> {
        self.revocations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `published` in force.
    pub(crate) fn set_revocations(&self, published: crate::revocation::published::Published) {
        *self.revocations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(published);
    }

    /// The current authority.
    pub fn authority(&self) -> Arc<Authority> {
        self.authority
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current node authorizer.
    pub fn authorizer(&self) -> Arc<NodeAuthorizer> {
        self.authorizer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Accepts Kubernetes ServiceAccount tokens from now on (set once, at start).
    pub(crate) fn set_kube_auth(&self, auth: crate::kube_auth::KubeAuth) {
        let _ = self.kube_auth.set(Arc::new(auth));
    }

    /// The ServiceAccount token judge, with `--kubernetes`.
    pub(crate) fn kube_auth(&self) -> Option<&Arc<crate::kube_auth::KubeAuth>> {
        self.kube_auth.get()
    }

    /// Whether `caller` may have `requested`: a ServiceAccount by the Kubernetes rules, any
    /// other caller by the mesh file's `registry`.
    pub(crate) fn authorize(
        &self,
        registry: &NodeAuthorizer,
        caller: &crate::node_authorizer::Caller,
        requested: &zident_identity::SpiffeId,
        impersonated: Option<&str>,
    ) -> Result<(), crate::node_authorizer::Denied> {
        match (caller, self.kube_auth()) {
            (crate::node_authorizer::Caller::ServiceAccount(sa), Some(kube))
                if requested.trust_domain_str() == registry.trust_domain().as_str() =>
            {
                kube.authorize(sa, requested, impersonated, registry.trust_domain())
            }
            _ => registry.authorize(caller, requested, impersonated),
        }
    }

    /// The node whose keys a caller's certificates go to, for revocation by node: a node
    /// agent's own name, or, for a ServiceAccount token bound to a pod, the node that pod is
    /// scheduled on (a trusted node account's, such as ztunnel's, and a pod's own token alike:
    /// a compromised node holds both). None for an identity token and an unbound token.
    pub(crate) fn caller_node(&self, caller: &crate::node_authorizer::Caller) -> Option<String> {
        match caller {
            crate::node_authorizer::Caller::Node(n) => Some(n.clone()),
            crate::node_authorizer::Caller::ServiceAccount(sa) => self.kube_auth()?.node_of(sa),
            crate::node_authorizer::Caller::Identity(_) => None,
        }
    }

    /// Replaces the authority (after a reload of plugged-in files).
    pub fn set_authority(&self, authority: Authority) {
        self.metrics
            .set_expiries(authority.earliest_root_expiry(), authority.chain_expiry());
        *self.authority.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(authority);
        self.authority_changes.send_modify(|n| *n += 1);
    }

    /// Notified each time the authority is replaced (a rotation step, new plugged-in files).
    pub fn subscribe_authority(&self) -> watch::Receiver<u64> {
        self.authority_changes.subscribe()
    }

    /// Replaces the mesh and the node authorizer built from it (after a reload of the mesh file),
    /// and tells every follower of the mesh.
    pub fn set_mesh(&self, mesh: MeshFile, authorizer: NodeAuthorizer) {
        *self.authorizer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(authorizer);
        let accepted = Instant::now();
        self.mesh.send_modify(|v| {
            *v = Arc::new(MeshVersion {
                mesh: Arc::new(mesh),
                number: v.number + 1,
                accepted,
            })
        });
    }

    /// The mesh in force, and every version accepted after it.
    pub fn subscribe_mesh(&self) -> watch::Receiver<Arc<MeshVersion>> {
        self.mesh.subscribe()
    }

    /// The trust bundle as SPIFFE JSON, with this CA's refresh hint.
    pub fn bundle_json(&self) -> Result<String, zident_identity::BundleError> {
        let mut bundle = self.authority().bundle().clone();
        bundle.set_refresh_hint(Some(self.refresh_hint));
        bundle.to_jwks_json()
    }
}
