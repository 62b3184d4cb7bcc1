//! Kubernetes Services to the mesh's services: cluster IPs as VIPs, ports and target ports, and
//! the selector matched against enrolled pods, which names each backend's own target port (a
//! named target port is resolved per pod, from its containers' ports).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::finding::ObjectRef;

/// The cluster's DNS suffix in service host names (istiod's default).
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// A port of a Service: its number and where it goes on a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The same number on every backend.
    Number(u16),
    /// A container port name, looked up on each backend.
    Named(String),
}

/// One Service read: the mesh's service (ports with a number target only; a named one is listed
/// with target 0, "each backend says") and what a backend needs to be matched.
#[derive(Debug, Clone)]
pub(crate) struct ReadService {
    pub(crate) service: zident_mesh::Service,
    pub(crate) selector: Option<BTreeMap<String, String>>,
    pub(crate) ports: Vec<(u16, Target)>,
}

/// Why a Service is left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ServiceRefused {
    /// A cluster IP that is not an IP.
    #[error("spec.clusterIPs: {0:?} is not an IP address")]
    BadAddress(String),
    /// A port number out of range.
    #[error("spec.ports: {0} is not a port number")]
    BadPort(i32),
}

impl ServiceRefused {
    /// A short reason for metrics and Events.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::BadAddress(_) => "BadAddress",
            Self::BadPort(_) => "BadPort",
        }
    }
}

/// Reads a Service; `None` for one that has no place in an L4 mesh (`ExternalName`).
pub(crate) fn read(svc: &Service) -> Result<Option<ReadService>, ServiceRefused> {
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(None);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let hostname = format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}");
    let mut service = zident_mesh::Service::new(name, namespace, hostname);
    let ips: Vec<String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.clone().into_iter().collect(),
    };
    for ip in ips {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let addr: std::net::IpAddr = ip.parse().map_err(|_| ServiceRefused::BadAddress(ip))?;
        service.vips.push(format!("/{addr}"));
    }
    let port = |n: i32| u16::try_from(n).ok().filter(|p| *p != 0);
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let number = port(p.port).ok_or(ServiceRefused::BadPort(p.port))?;
        let target = match &p.target_port {
            None => Target::Number(number),
            Some(IntOrString::Int(0)) => Target::Number(number),
            Some(IntOrString::Int(n)) => {
                Target::Number(port(*n).ok_or(ServiceRefused::BadPort(*n))?)
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => Target::Number(port(n).ok_or(ServiceRefused::BadPort(n))?),
                Err(_) => Target::Named(s.clone()),
            },
        };
        let listed = match &target {
            Target::Number(n) => *n,
            Target::Named(_) => 0,
        };
        service.ports.insert(number, listed);
        ports.push((number, target));
    }
    Ok(Some(ReadService {
        service,
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        ports,
    }))
}

impl ReadService {
    /// Whether `pod` (in the mesh) is a backend: same namespace, labels include the selector.
    pub(crate) fn selects(&self, pod: &Pod) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        pod.metadata.namespace.as_deref() == Some(self.service.namespace.as_str())
            && labels_match(selector, pod.metadata.labels.as_ref())
    }

    /// The backend's port map: service port → the port on this pod. A named target the pod's
    /// containers do not declare leaves that port out for this backend.
    pub(crate) fn backend_ports(&self, pod: &Pod) -> BTreeMap<u16, u16> {
        let named = |name: &str| {
            pod.spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
        };
        self.ports
            .iter()
            .filter_map(|(port, target)| match target {
                Target::Number(n) => Some((*port, *n)),
                Target::Named(name) => named(name).map(|n| (*port, n)),
            })
            .collect()
    }
}

/// Every key of `selector` has the same value in `labels`.
pub(crate) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The reference a finding about `svc` names.
pub(crate) fn service_ref(svc: &Service) -> ObjectRef {
    ObjectRef::of("Service", "v1", &svc.metadata)
}
