//! The pods the source already watches, as the node authorizer asks about them: a pod by name
//! (is it the one a token is bound to, which node is it on) and whether a ServiceAccount has a
//! pod on a node. Answered from the reflector's store, never by a call to the API server, so a
//! certificate request costs the API server nothing.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};

/// What the authorizer needs of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.serviceAccountName` (`default` when unset, as the API server fills it).
    pub service_account: String,
    /// `spec.nodeName`; `None` until the pod is scheduled.
    pub node: Option<String>,
    /// Whether the pod has finished (`Succeeded` or `Failed`): it runs on no node any more.
    pub finished: bool,
}

/// Lookups in the watched pods; cheap to clone.
#[derive(Clone)]
pub struct PodDirectory {
    store: Store<Pod>,
}

impl PodDirectory {
    pub(crate) fn new(store: Store<Pod>) -> Self {
        Self { store }
    }

    /// The pod `namespace/name`, if the watch has it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let pod = self.store.get(&ObjectRef::new(name).within(namespace))?;
        Some(facts(&pod))
    }

    /// Whether a pod of ServiceAccount `namespace/service_account` is scheduled on `node` and
    /// has not finished: what a node agent must show before it may have that identity.
    pub fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.store
            .find(|pod| {
                let Some(spec) = pod.spec.as_ref() else {
                    return false;
                };
                pod.metadata.namespace.as_deref() == Some(namespace)
                    && spec.node_name.as_deref() == Some(node)
                    && spec.service_account_name.as_deref().unwrap_or("default") == service_account
                    && !finished(pod)
            })
            .is_some()
    }
}

fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn facts(pod: &Pod) -> PodFacts {
    let spec = pod.spec.as_ref();
    PodFacts {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        node: spec.and_then(|s| s.node_name.clone()),
        finished: finished(pod),
    }
}
