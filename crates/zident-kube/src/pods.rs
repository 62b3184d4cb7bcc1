//! The pods the source already watches, as the node authorizer asks about them: a pod by name
//! (is it the one a token is bound to, which node is it on) and whether a ServiceAccount has a
//! pod on a node. Answered from the reflector's store, never by a call to the API server, so a
//! certificate request costs the API server nothing. Which ServiceAccounts have a pod on which
//! node is indexed once per change of the pod watch, not scanned per request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use crate::changes::KindChanges;

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

/// (node, namespace, ServiceAccount) of every pod scheduled and not finished.
type Placement = HashSet<(String, String, String)>;

/// The placement index, and the change of the source it was built at.
type Index = Option<(u64, Arc<Placement>)>;

/// Lookups in the watched pods; cheap to clone.
#[derive(Clone)]
pub struct PodDirectory {
    store: Store<Pod>,
    /// The source's changes, by kind.
    changes: watch::Receiver<KindChanges>,
    /// The kind whose changes invalidate the index (the pods').
    kind: &'static str,
    /// The placement index and the change it was built at.
    index: Arc<Mutex<Index>>,
}

impl PodDirectory {
    pub(crate) fn new(
        store: Store<Pod>,
        changes: watch::Receiver<KindChanges>,
        kind: &'static str,
    ) -> Self {
        Self {
            store,
            changes,
            kind,
            index: Arc::default(),
        }
    }

    /// The placement index as of the latest change, rebuilt if a change came since.
    fn placement(&self) -> Arc<Placement> {
        let now = self.changes.borrow().get(self.kind).copied().unwrap_or(0);
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, placement)) = index.as_ref()
            && *at == now
        {
            return placement.clone();
        }
        let placement: Arc<Placement> = Arc::new(
            self.store
                .state()
                .iter()
                .filter(|pod| !finished(pod))
                .filter_map(|pod| {
                    let spec = pod.spec.as_ref()?;
                    Some((
                        spec.node_name.clone()?,
                        pod.metadata.namespace.clone()?,
                        spec.service_account_name
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                    ))
                })
                .collect(),
        );
        *index = Some((now, placement.clone()));
        placement
    }

    /// The pod `namespace/name`, if the watch has it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let pod = self.store.get(&ObjectRef::new(name).within(namespace))?;
        Some(facts(&pod))
    }

    /// Whether a pod of ServiceAccount `namespace/service_account` is scheduled on `node` and
    /// has not finished: what a node agent must show before it may have that identity.
    pub fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.placement().contains(&(
            node.to_owned(),
            namespace.to_owned(),
            service_account.to_owned(),
        ))
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
