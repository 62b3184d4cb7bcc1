//! Pods and namespaces to workloads, with istiod's meaning for each field: enrolled by the
//! label `istio.io/dataplane-mode=ambient` on the namespace or the pod (`none` on a pod opts it
//! out), in the mesh once it runs and has an address, out of it the moment it terminates or
//! loses its address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use zident_identity::TrustDomain;
use zident_mesh::{HealthStatus, Protocol, Workload};

use crate::finding::ObjectRef;

/// The label that enrolls a namespace or a pod.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Its value that enrolls.
pub const AMBIENT: &str = "ambient";
/// Its value that keeps a pod out of an enrolled namespace.
pub const NONE: &str = "none";

/// The cluster name workloads carry for telemetry, istiod's default.
pub const CLUSTER_ID: &str = "Kubernetes";

/// Whether a pod belongs in the mesh (enrolled, running, addressed), before its fields are
/// checked.
pub(crate) fn in_mesh(pod: &Pod, namespaces: &BTreeMap<String, &Namespace>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let pod_mode = labels
        .and_then(|l| l.get(DATAPLANE_MODE))
        .map(String::as_str);
    let namespace_mode = pod
        .metadata
        .namespace
        .as_ref()
        .and_then(|ns| namespaces.get(ns))
        .and_then(|ns| ns.metadata.labels.as_ref())
        .and_then(|l| l.get(DATAPLANE_MODE))
        .map(String::as_str);
    let enrolled = match pod_mode {
        Some(AMBIENT) => true,
        Some(NONE) => false,
        _ => namespace_mode == Some(AMBIENT),
    };
    let spec = pod.spec.as_ref();
    // A pod on the host's network has the node's address: it cannot be told apart from the
    // node, and istiod leaves it out of ambient capture too.
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let addressed = status.is_some_and(|s| {
        s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    });
    enrolled && !host_network && running && addressed && pod.metadata.deletion_timestamp.is_none()
}

/// Why a pod that belongs in the mesh cannot be one of its workloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PodRefused {
    /// No `spec.serviceAccountName`: no identity to give it.
    #[error(
        "spec.serviceAccountName is empty: a workload's identity is its ServiceAccount; set one"
    )]
    NoServiceAccount,
    /// No `spec.nodeName`.
    #[error("spec.nodeName is empty: a running pod must be bound to a node")]
    NoNode,
    /// An address that is not an IP.
    #[error("status.podIPs: {0:?} is not an IP address")]
    BadAddress(String),
    /// The namespace and service account make no SPIFFE ID.
    #[error("{0}")]
    Identity(String),
}

impl PodRefused {
    /// A short reason for metrics and Events.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::NoServiceAccount => "NoServiceAccount",
            Self::NoNode => "NoNode",
            Self::BadAddress(_) => "BadAddress",
            Self::Identity(_) => "BadIdentity",
        }
    }
}

/// The workload of a pod that [`in_mesh`] accepted.
pub(crate) fn workload(pod: &Pod, trust_domain: &TrustDomain) -> Result<Workload, PodRefused> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
        .filter(|s| !s.is_empty())
        .ok_or(PodRefused::NoServiceAccount)?;
    let node = spec
        .and_then(|s| s.node_name.clone())
        .filter(|s| !s.is_empty())
        .ok_or(PodRefused::NoNode)?;
    let mut w = Workload::new(namespace);
    w.uid = meta.uid.clone().unwrap_or_default();
    w.name = meta.name.clone().unwrap_or_default();
    w.service_account = service_account;
    w.node = node;
    w.workload_ips = addresses(pod)?;
    w.protocol = Protocol::Hbone;
    w.status = if ready(pod) {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    };
    w.cluster_id = CLUSTER_ID.into();
    let labels = meta.labels.clone().unwrap_or_default();
    let label = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k).cloned());
    w.canonical_name = label(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| w.name.clone());
    w.canonical_revision = label(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".into());
    let owner = meta
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|o| o.controller == Some(true)));
    (w.workload_name, w.workload_type) = match owner {
        Some(o) => (o.name.clone(), o.kind.to_ascii_lowercase()),
        None => (w.name.clone(), "pod".into()),
    };
    w.spiffe_id(trust_domain)
        .map_err(|e| PodRefused::Identity(e.to_string()))?;
    Ok(w)
}

/// `status.podIPs`, or `status.podIP` when the list is absent.
fn addresses(pod: &Pod) -> Result<Vec<IpAddr>, PodRefused> {
    let status = pod.status.as_ref();
    let listed: Vec<String> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(ips) if !ips.is_empty() => ips.iter().map(|i| i.ip.clone()).collect(),
        _ => status.and_then(|s| s.pod_ip.clone()).into_iter().collect(),
    };
    let mut out = Vec::new();
    for ip in listed {
        let parsed = ip.parse().map_err(|_| PodRefused::BadAddress(ip.clone()))?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// The `Ready` condition is `True`: it takes traffic as a service backend.
fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The reference a finding about `pod` names.
pub(crate) fn pod_ref(pod: &Pod) -> ObjectRef {
    ObjectRef::of("Pod", "v1", &pod.metadata)
}
