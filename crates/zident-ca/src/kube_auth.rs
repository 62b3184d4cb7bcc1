//! Callers with Kubernetes ServiceAccount tokens, judged as istiod judges them
//! (`security/pkg/server/ca/node_auth.go`).
//!
//! - Who: a TokenReview for the audience `istio-ca` ([`zident_kube::TokenReviewer`], cached by
//!   the token's digest) names the ServiceAccount and, for a token bound to a pod, the pod.
//! - What, without `ImpersonatedIdentity`: the caller's own identity,
//!   `spiffe://<td>/ns/<namespace>/sa/<name>`, nothing else.
//! - What, with it: only a trusted node account (`--trusted-node-accounts`, for example
//!   `istio-system/ztunnel`) may ask for another identity, and only one that runs on its node:
//!   the pod its token is bound to must exist with the token's uid and ServiceAccount, and a pod
//!   of the requested ServiceAccount must be scheduled on that pod's node.
//!
//! Pods are looked up in the source's watch ([`zident_kube::PodDirectory`]): a request costs
//! the API server at most one TokenReview per token per minute, and nothing else. A token bound
//! to a pod is refused as soon as the watch sees the pod deleted or replaced, whatever the
//! review caches say.

use std::collections::HashSet;

use zident_identity::{BearerDigest, SpiffeId, TrustDomain};
use zident_kube::{Answered, Connection, PodDirectory, ReviewError, TokenReviewer};

use crate::node_authorizer::{Caller, Denied, ServiceAccountCaller};

/// The audience a token must be for, as istiod requires.
pub const AUDIENCE: &str = "istio-ca";

/// A trusted node account, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAccount {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::str::FromStr for NodeAccount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!(
                "{s:?} is not a ServiceAccount: write it as namespace/name (istio-system/ztunnel)"
            )),
        }
    }
}

impl std::fmt::Display for NodeAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Authenticates and authorizes ServiceAccount callers.
pub struct KubeAuth {
    reviewer: TokenReviewer,
    pods: PodDirectory,
    trusted: HashSet<NodeAccount>,
}

impl KubeAuth {
    /// Reviews tokens on `connection`'s server; pods from `pods`.
    pub fn new(connection: &Connection, pods: PodDirectory, trusted: Vec<NodeAccount>) -> Self {
        Self {
            reviewer: TokenReviewer::new(connection, AUDIENCE),
            pods,
            trusted: trusted.into_iter().collect(),
        }
    }

    /// The ServiceAccount `token` belongs to, and whether a TokenReview was sent for it.
    pub(crate) async fn authenticate(
        &self,
        token: &str,
        digest: &BearerDigest,
    ) -> (Result<Caller, ReviewError>, Answered) {
        let (outcome, answered) = self.reviewer.review(token, digest).await;
        let caller = outcome.map(|r| {
            let trusted = self.trusted.contains(&NodeAccount {
                namespace: r.namespace.clone(),
                name: r.service_account.clone(),
            });
            Caller::ServiceAccount(Box::new(ServiceAccountCaller {
                namespace: r.namespace,
                name: r.service_account,
                pod: r.pod,
                trusted,
            }))
        });
        (caller, answered)
    }

    /// The node the pod `caller`'s token is bound to is scheduled on, while that pod exists.
    pub(crate) fn node_of(&self, caller: &ServiceAccountCaller) -> Option<String> {
        let binding = caller.pod.as_ref()?;
        self.pods
            .get(&caller.namespace, &binding.name)
            .filter(|p| p.uid == binding.uid)?
            .node
    }

    /// Whether `caller` may have `requested`, given `ImpersonatedIdentity` if sent.
    pub(crate) fn authorize(
        &self,
        caller: &ServiceAccountCaller,
        requested: &SpiffeId,
        impersonated: Option<&str>,
        trust_domain: &TrustDomain,
    ) -> Result<(), Denied> {
        let whole = || Caller::ServiceAccount(Box::new(caller.clone()));
        // A token bound to a pod speaks for that pod only while it exists.
        let pod = match &caller.pod {
            Some(binding) => {
                let facts = self
                    .pods
                    .get(&caller.namespace, &binding.name)
                    .filter(|p| p.uid == binding.uid)
                    .ok_or_else(|| Denied::BoundPodGone {
                        caller: whole(),
                        pod: format!(
                            "{}/{} (uid {})",
                            caller.namespace, binding.name, binding.uid
                        ),
                    })?;
                if facts.service_account != caller.name {
                    return Err(Denied::BoundPodOtherAccount {
                        caller: whole(),
                        pod_account: facts.service_account,
                    });
                }
                Some(facts)
            }
            None => None,
        };
        let Some(imp) = impersonated else {
            let own = SpiffeId::istio(trust_domain, &caller.namespace, &caller.name).ok();
            return if own.as_ref() == Some(requested) {
                Ok(())
            } else {
                Err(Denied::NotOwnIdentity {
                    caller: whole(),
                    requested: requested.clone(),
                })
            };
        };
        if imp != requested.as_str() {
            return Err(Denied::ImpersonationMismatch {
                impersonated: imp.to_owned(),
                requested: requested.clone(),
            });
        }
        if !caller.trusted {
            return Err(Denied::ImpersonationByUntrusted { caller: whole() });
        }
        let Some(node) = pod.and_then(|p| p.node) else {
            return Err(Denied::NoNodeBinding { caller: whole() });
        };
        let on_node = requested.trust_domain_str() == trust_domain.as_str()
            && requested
                .istio_parts()
                .is_some_and(|(ns, sa)| self.pods.runs_on(&node, ns, sa));
        if on_node {
            Ok(())
        } else {
            Err(Denied::NotOnNode {
                node,
                requested: requested.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_accounts_are_namespace_slash_name() {
        let a: NodeAccount = "istio-system/ztunnel".parse().unwrap();
        assert_eq!(a.to_string(), "istio-system/ztunnel");
        for bad in ["ztunnel", "/ztunnel", "istio-system/", "a/b/c", ""] {
            let e = bad.parse::<NodeAccount>().unwrap_err();
            assert!(e.contains("namespace/name"), "{e}");
        }
    }
}
