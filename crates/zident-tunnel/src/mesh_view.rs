//! What the tunnel needs to know of the mesh: which local workload is at an address (the
//! source of an outbound connection, the target of an inbound one), and how to reach any
//! destination — a workload address, a service VIP, or a service host name — with the
//! identities its server may present.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use zident_identity::SpiffeId;
use zident_mesh::{MeshFile, Protocol};

use crate::inbound::LocalTarget;
use crate::outbound::{Directory, Route};
use crate::socks5::Target;

#[derive(Debug, Clone)]
struct WorkloadInfo {
    id: SpiffeId,
    namespace: String,
    node: String,
    hbone: bool,
    policies: Vec<String>,
    /// `namespace/hostname` → service port → target port.
    services: BTreeMap<String, BTreeMap<u16, u16>>,
}

#[derive(Debug, Clone)]
struct ServiceInfo {
    key: String,
    hostname: String,
    vips: Vec<IpAddr>,
    ports: BTreeMap<u16, u16>,
    extra_identities: Vec<SpiffeId>,
}

/// One version of the mesh, indexed for the tunnel.
#[derive(Debug, Clone)]
pub struct MeshView {
    node: String,
    inbound_port: u16,
    by_ip: HashMap<IpAddr, WorkloadInfo>,
    services: Vec<ServiceInfo>,
}

impl MeshView {
    /// Indexes `mesh` for `node`, whose tunnels listen on `inbound_port`.
    pub fn new(mesh: &MeshFile, node: &str, inbound_port: u16) -> Result<Self, String> {
        let mut by_ip = HashMap::new();
        for w in &mesh.workloads {
            let id = w
                .spiffe_id(&mesh.trust_domain)
                .map_err(|e| format!("workload {}/{}: {e}", w.namespace, w.name))?;
            for ip in &w.workload_ips {
                by_ip.insert(
                    *ip,
                    WorkloadInfo {
                        id: id.clone(),
                        namespace: w.namespace.clone(),
                        node: w.node.clone(),
                        hbone: w.protocol == Protocol::Hbone,
                        policies: w.authorization_policies.clone(),
                        services: w.services.clone(),
                    },
                );
            }
        }
        let mut services = Vec::new();
        for s in &mesh.services {
            let vips = s
                .vips
                .iter()
                .map(|v| {
                    let ip = v.rsplit('/').next().unwrap_or(v);
                    ip.parse::<IpAddr>().map_err(|_| {
                        format!(
                            "service {}/{}: VIP {v:?} is not network/ip",
                            s.namespace, s.name
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let extra_identities = s
                .subject_alt_names
                .iter()
                .map(|n| {
                    SpiffeId::new(n).map_err(|e| {
                        format!(
                            "service {}/{}: subjectAltNames {n:?}: {e}",
                            s.namespace, s.name
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            services.push(ServiceInfo {
                key: format!("{}/{}", s.namespace, s.hostname),
                hostname: s.hostname.clone(),
                vips,
                ports: s.ports.clone(),
                extra_identities,
            });
        }
        Ok(Self {
            node: node.to_owned(),
            inbound_port,
            by_ip,
            services,
        })
    }

    /// The HBONE workloads of this node: (address, identity), sorted.
    pub fn local_hbone(&self) -> Vec<(IpAddr, SpiffeId)> {
        let mut v: Vec<_> = self
            .by_ip
            .iter()
            .filter(|(_, w)| w.node == self.node && w.hbone)
            .map(|(ip, w)| (*ip, w.id.clone()))
            .collect();
        v.sort();
        v
    }

    /// The local HBONE workload at `ip`, for inbound.
    pub fn local_target(&self, ip: IpAddr) -> Option<LocalTarget> {
        self.by_ip
            .get(&ip)
            .filter(|w| w.node == self.node && w.hbone)
            .map(|w| LocalTarget {
                id: w.id.clone(),
                namespace: w.namespace.clone(),
                policies: w.policies.clone(),
            })
    }

    fn workload_route(&self, ip: IpAddr, w: &WorkloadInfo, port: u16, extra: &[SpiffeId]) -> Route {
        let mut expected = vec![w.id.clone()];
        expected.extend(extra.iter().filter(|i| **i != w.id).cloned());
        Route {
            target: SocketAddr::new(ip, port),
            hbone: w.hbone.then(|| SocketAddr::new(ip, self.inbound_port)),
            expected,
        }
    }

    fn service_route(&self, svc: &ServiceInfo, port: u16) -> Option<Route> {
        // The first backend by address; load balancing across backends is not done yet.
        let mut backends: Vec<(&IpAddr, &WorkloadInfo)> = self
            .by_ip
            .iter()
            .filter(|(_, w)| w.services.contains_key(&svc.key))
            .collect();
        backends.sort_by_key(|(ip, _)| **ip);
        let (ip, w) = backends.first()?;
        let target_port = w
            .services
            .get(&svc.key)
            .and_then(|m| m.get(&port))
            .or_else(|| svc.ports.get(&port))
            .copied()
            .unwrap_or(port);
        Some(self.workload_route(**ip, w, target_port, &svc.extra_identities))
    }

    /// How to reach `target`.
    pub fn route(&self, target: &Target) -> Option<Route> {
        match target {
            Target::Addr(a) => {
                if let Some(w) = self.by_ip.get(&a.ip()) {
                    return Some(self.workload_route(a.ip(), w, a.port(), &[]));
                }
                let svc = self.services.iter().find(|s| s.vips.contains(&a.ip()))?;
                self.service_route(svc, a.port())
            }
            Target::Host(h, port) => {
                let svc = self.services.iter().find(|s| s.hostname == *h)?;
                self.service_route(svc, *port)
            }
        }
    }
}

/// The current [`MeshView`], replaced whole on each mesh change.
#[derive(Debug)]
pub struct LiveView(pub RwLock<Arc<MeshView>>);

impl LiveView {
    /// The view in force.
    pub fn get(&self) -> Arc<MeshView> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Directory for LiveView {
    fn source(&self, ip: IpAddr) -> Option<SpiffeId> {
        let view = self.get();
        view.by_ip
            .get(&ip)
            .filter(|w| w.node == view.node)
            .map(|w| w.id.clone())
    }

    fn route(&self, target: &Target) -> Option<Route> {
        self.get().route(target)
    }
}
