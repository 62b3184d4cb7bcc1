//! The node authorizer: who may ask for what. Bearer tokens to callers, and the identities each
//! caller may have (a node: those of its workloads; an identity entry: its own).
//!
//! Built whole from a mesh file and swapped in whole on reload, so a request is judged by one
//! consistent version of the file.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use zident_identity::{BearerDigest, SpiffeId, TrustDomain};
use zident_mesh::{CallerToken, MeshError, MeshFile};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node agent: may ask for the identities of workloads on its node.
    Node(String),
    /// A caller bound to one identity: may ask only for it.
    Identity(SpiffeId),
    /// A Kubernetes ServiceAccount, by a token the API server reviewed
    /// ([`crate::kube_auth`] judges what it may have).
    ServiceAccount(Box<ServiceAccountCaller>),
}

/// A ServiceAccount that presented a token the API server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountCaller {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pod the token is bound to, if any.
    pub pod: Option<zident_kube::PodBinding>,
    /// Whether it is a trusted node account (may ask for the identities on its node).
    pub trusted: bool,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(n) => write!(f, "node {n}"),
            Caller::Identity(id) => write!(f, "identity {id}"),
            Caller::ServiceAccount(sa) => {
                write!(f, "service account {}/{}", sa.namespace, sa.name)?;
                if let Some(pod) = &sa.pod {
                    write!(f, " (pod {})", pod.name)?;
                }
                if sa.trusted {
                    write!(f, " (trusted node account)")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a caller may not have an identity. Logged in full; the caller only learns
/// "permission denied".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The CSR's SAN differs from the identity the caller is bound to.
    #[error("{caller} asked for {requested}, but may only ask for its own identity")]
    NotOwnIdentity {
        /// Who asked.
        caller: Caller,
        /// What for.
        requested: SpiffeId,
    },
    /// Only node agents may impersonate.
    #[error("{caller} sent ImpersonatedIdentity, which only node agents may")]
    ImpersonationByNonNode {
        /// Who asked.
        caller: Caller,
    },
    /// The impersonated identity is not the one in the CSR.
    #[error("ImpersonatedIdentity {impersonated} differs from the CSR's SAN {requested}")]
    ImpersonationMismatch {
        /// The metadata value.
        impersonated: String,
        /// The CSR's SAN.
        requested: SpiffeId,
    },
    /// No workload with that identity is on the node.
    #[error("no workload with identity {requested} runs on node {node}")]
    NotOnNode {
        /// The node.
        node: String,
        /// The identity.
        requested: SpiffeId,
    },
    /// A node asked for an identity without impersonating, and it is not the node's own.
    #[error(
        "node {node} asked for {requested} without ImpersonatedIdentity, and it is not the node's own identity"
    )]
    NodeWithoutImpersonation {
        /// The node.
        node: String,
        /// The identity.
        requested: SpiffeId,
    },
    /// A ServiceAccount that is not a trusted node account sent ImpersonatedIdentity.
    #[error(
        "{caller} sent ImpersonatedIdentity, but is not a trusted node account (--trusted-node-accounts)"
    )]
    ImpersonationByUntrusted {
        /// Who asked.
        caller: Caller,
    },
    /// The pod the token is bound to is gone, or is another pod of the same name now.
    #[error("{caller}: the pod its token is bound to, {pod}, no longer exists")]
    BoundPodGone {
        /// Who asked.
        caller: Caller,
        /// The pod, with the token's uid.
        pod: String,
    },
    /// The pod the token is bound to runs as another ServiceAccount.
    #[error("{caller}: the pod its token is bound to runs as ServiceAccount {pod_account}")]
    BoundPodOtherAccount {
        /// Who asked.
        caller: Caller,
        /// The pod's ServiceAccount.
        pod_account: String,
    },
    /// A node account's token is not bound to a scheduled pod, so its node is unknown.
    #[error(
        "{caller} may impersonate only with a token bound to its scheduled pod (a projected token), which names its node"
    )]
    NoNodeBinding {
        /// Who asked.
        caller: Caller,
    },
    /// A ServiceAccount caller reached a CA that does not read Kubernetes.
    #[error("{caller} cannot be judged: the CA runs without --kubernetes")]
    NoKubernetes {
        /// Who asked.
        caller: Caller,
    },
    /// The identity is in another trust domain.
    #[error("{requested} is not in this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The identity.
        requested: SpiffeId,
        /// The CA's.
        trust_domain: TrustDomain,
    },
}

/// Callers and their rights, from one version of the mesh file.
#[derive(Debug)]
pub struct NodeAuthorizer {
    trust_domain: TrustDomain,
    /// SHA-256 of each token → caller. Looking up digests rather than tokens keeps the
    /// comparison's timing independent of how much of a guessed token is right.
    callers: HashMap<BearerDigest, Caller>,
    /// Node name → identities of its workloads.
    by_node: HashMap<String, HashSet<SpiffeId>>,
    /// Node name → the agent's own identity, if declared.
    node_identity: HashMap<String, SpiffeId>,
}

impl NodeAuthorizer {
    /// Builds the registry from a mesh file, reading token files relative to `mesh_path`.
    pub fn from_mesh(mesh: &MeshFile, mesh_path: &Path) -> Result<Self, MeshError> {
        Ok(Self::from_tokens(mesh, mesh.resolve_tokens(mesh_path)?))
    }

    /// Builds the registry from a mesh and tokens already resolved (by
    /// [`MeshFile::resolve_tokens`]): a mesh rebuilt from the cluster on every change reuses the
    /// file's tokens instead of reading its token files again.
    pub fn from_tokens(mesh: &MeshFile, tokens: Vec<(String, CallerToken)>) -> Self {
        let callers = tokens
            .into_iter()
            .map(|(token, who)| {
                let caller = match who {
                    CallerToken::Node(n) => Caller::Node(n),
                    CallerToken::Identity(id) => Caller::Identity(id),
                };
                (BearerDigest::of(&token), caller)
            })
            .collect();
        let by_node = mesh
            .nodes
            .iter()
            .map(|n| (n.name.clone(), mesh.identities_on_node(&n.name)))
            .collect();
        let node_identity = mesh
            .nodes
            .iter()
            .filter_map(|n| n.spiffe_id.clone().map(|id| (n.name.clone(), id)))
            .collect();
        Self {
            trust_domain: mesh.trust_domain.clone(),
            callers,
            by_node,
            node_identity,
        }
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The caller a bearer token belongs to, if any.
    pub fn authenticate(&self, token: &BearerDigest) -> Option<&Caller> {
        self.callers.get(token)
    }

    /// Whether `caller` may have a certificate for `requested` (the CSR's SAN), given the
    /// `ImpersonatedIdentity` metadata if sent.
    pub fn authorize(
        &self,
        caller: &Caller,
        requested: &SpiffeId,
        impersonated: Option<&str>,
    ) -> Result<(), Denied> {
        if requested.trust_domain_str() != self.trust_domain.as_str() {
            return Err(Denied::ForeignTrustDomain {
                requested: requested.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        match (caller, impersonated) {
            (Caller::ServiceAccount(_), _) => Err(Denied::NoKubernetes {
                caller: caller.clone(),
            }),
            (Caller::Identity(own), None) if own == requested => Ok(()),
            (Caller::Identity(_), None) => Err(Denied::NotOwnIdentity {
                caller: caller.clone(),
                requested: requested.clone(),
            }),
            (Caller::Identity(_), Some(_)) => Err(Denied::ImpersonationByNonNode {
                caller: caller.clone(),
            }),
            (Caller::Node(node), None) => {
                if self.node_identity.get(node) == Some(requested) {
                    Ok(())
                } else {
                    Err(Denied::NodeWithoutImpersonation {
                        node: node.clone(),
                        requested: requested.clone(),
                    })
                }
            }
            (Caller::Node(node), Some(imp)) => {
                if imp != requested.as_str() {
                    return Err(Denied::ImpersonationMismatch {
                        impersonated: imp.to_owned(),
                        requested: requested.clone(),
                    });
                }
                let on_node = self
                    .by_node
                    .get(node)
                    .is_some_and(|ids| ids.contains(requested));
                if on_node {
                    Ok(())
                } else {
                    Err(Denied::NotOnNode {
                        node: node.clone(),
                        requested: requested.clone(),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> NodeAuthorizer {
        let yaml = "
nodes:
- {name: node-a, token: ta, spiffeId: 'spiffe://cluster.local/ns/zident-system/sa/agent'}
- {name: node-b, token: tb}
identities:
- {spiffeId: 'spiffe://cluster.local/ns/default/sa/gateway', token: tg}
workloads:
- {name: fe, namespace: default, serviceAccount: frontend, node: node-a}
- {name: be, namespace: default, serviceAccount: backend, node: node-b}
";
        let mesh = MeshFile::parse(Path::new("m.yaml"), yaml).unwrap();
        NodeAuthorizer::from_mesh(&mesh, Path::new("m.yaml")).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://cluster.local/{s}")).unwrap()
    }

    #[test]
    fn authentication_by_token() {
        let r = registry();
        assert_eq!(
            r.authenticate(&BearerDigest::of("ta")),
            Some(&Caller::Node("node-a".into()))
        );
        assert_eq!(
            r.authenticate(&BearerDigest::of("tg")),
            Some(&Caller::Identity(id("ns/default/sa/gateway")))
        );
        assert_eq!(r.authenticate(&BearerDigest::of("t")), None);
        assert_eq!(r.authenticate(&BearerDigest::of("")), None);
    }

    #[test]
    fn authorization_rules() {
        let r = registry();
        let a = Caller::Node("node-a".into());
        let fe = id("ns/default/sa/frontend");
        let be = id("ns/default/sa/backend");
        assert_eq!(r.authorize(&a, &fe, Some(fe.as_str())), Ok(()));
        assert!(matches!(
            r.authorize(&a, &be, Some(be.as_str())),
            Err(Denied::NotOnNode { .. })
        ));
        assert!(matches!(
            r.authorize(&a, &fe, Some(be.as_str())),
            Err(Denied::ImpersonationMismatch { .. })
        ));
        assert!(matches!(
            r.authorize(&a, &fe, None),
            Err(Denied::NodeWithoutImpersonation { .. })
        ));
        // The agent's own identity, without impersonation.
        assert_eq!(
            r.authorize(&a, &id("ns/zident-system/sa/agent"), None),
            Ok(())
        );

        let gw = Caller::Identity(id("ns/default/sa/gateway"));
        assert_eq!(r.authorize(&gw, &id("ns/default/sa/gateway"), None), Ok(()));
        assert!(matches!(
            r.authorize(&gw, &fe, None),
            Err(Denied::NotOwnIdentity { .. })
        ));
        assert!(matches!(
            r.authorize(&gw, &fe, Some(fe.as_str())),
            Err(Denied::ImpersonationByNonNode { .. })
        ));
        let foreign = SpiffeId::new("spiffe://evil.org/ns/default/sa/frontend").unwrap();
        assert!(matches!(
            r.authorize(&a, &foreign, Some(foreign.as_str())),
            Err(Denied::ForeignTrustDomain { .. })
        ));
    }
}
