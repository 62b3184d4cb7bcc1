//! What the tunnel needs to know of the mesh: which local workload is at an address (the
//! source of an outbound connection, the target of an inbound one), and how to reach any
//! destination — a workload address, a service VIP, or a service host name — with the
//! identities its server may present.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use zident_identity::SpiffeId;
use zident_mesh::{HealthStatus, NodeView, Protocol};

use crate::error::ViewError;
use crate::inbound::LocalTarget;
use crate::outbound::{Directory, NoRoute, Route, Source};
use crate::socks5::Target;

#[derive(Debug, Clone)]
struct WorkloadInfo {
    id: SpiffeId,
    /// `namespace/name`, for logs.
    label: Arc<str>,
    /// The `baggage` header its outbound tunnels carry.
    baggage: Arc<str>,
    namespace: String,
    node: String,
    hbone: bool,
    healthy: bool,
    policies: Vec<String>,
    /// `namespace/hostname` → service port → target port.
    services: BTreeMap<String, BTreeMap<u16, u16>>,
}

#[derive(Debug, Clone)]
struct ServiceInfo {
    key: String,
    ports: BTreeMap<u16, u16>,
    extra_identities: Vec<SpiffeId>,
    /// The addresses of the healthy workloads that back the service, found when the view is
    /// built, not per connection.
    backends: Vec<IpAddr>,
    /// Round robin over `backends`; shared by the copies of a view.
    next: Arc<AtomicUsize>,
}

/// One version of the mesh, indexed for the tunnel.
#[derive(Debug, Clone)]
pub struct MeshView {
    node: String,
    inbound_port: u16,
    /// Nodes that give a shared HBONE address.
    node_addresses: HashMap<String, IpAddr>,
    by_ip: HashMap<IpAddr, WorkloadInfo>,
    services: Vec<ServiceInfo>,
    /// Service VIP → index in `services`.
    by_vip: HashMap<IpAddr, usize>,
    /// Service host name → index in `services`.
    by_hostname: HashMap<String, usize>,
}

impl MeshView {
    /// Indexes `view` (its node's view of a mesh) for tunnels that listen on `inbound_port`.
    /// Each workload's identity is the one the view derived, the same the agent attests.
    pub fn new(view: &NodeView, inbound_port: u16) -> Result<Self, ViewError> {
        let (mesh, node) = (view.mesh(), view.node());
        let mut by_ip = HashMap::new();
        for (w, id) in view.workloads() {
            for ip in &w.workload_ips {
                by_ip.insert(
                    *ip,
                    WorkloadInfo {
                        id: id.clone(),
                        label: Arc::from(format!("{}/{}", w.namespace, w.name)),
                        baggage: Arc::from(crate::headers::baggage_of(w)),
                        namespace: w.namespace.clone(),
                        node: w.node.clone(),
                        hbone: w.protocol == Protocol::Hbone,
                        healthy: w.status == HealthStatus::Healthy,
                        policies: w.authorization_policies.clone(),
                        services: w.services.clone(),
                    },
                );
            }
        }
        let mut services = Vec::new();
        let mut by_vip = HashMap::new();
        let mut by_hostname = HashMap::new();
        for s in &mesh.services {
            let key = format!("{}/{}", s.namespace, s.hostname);
            let index = services.len();
            for v in &s.vips {
                let (_, ip) = zident_mesh::parse_vip(v).ok_or_else(|| ViewError::Vip {
                    service: format!("{}/{}", s.namespace, s.name),
                    vip: v.clone(),
                })?;
                by_vip.insert(ip, index);
            }
            by_hostname.insert(s.hostname.clone(), index);
            let extra_identities = s
                .subject_alt_names
                .iter()
                .map(|n| {
                    SpiffeId::new(n).map_err(|e| ViewError::SubjectAltName {
                        service: format!("{}/{}", s.namespace, s.name),
                        name: n.clone(),
                        message: e.to_string(),
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut backends: Vec<IpAddr> = by_ip
                .iter()
                .filter(|(_, w)| w.healthy && w.services.contains_key(&key))
                .map(|(ip, _)| *ip)
                .collect();
            backends.sort();
            services.push(ServiceInfo {
                key,
                ports: s.ports.clone(),
                extra_identities,
                backends,
                next: Arc::new(AtomicUsize::new(0)),
            });
        }
        let node_addresses = mesh
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.address?)))
            .collect();
        Ok(Self {
            node: node.to_owned(),
            inbound_port,
            node_addresses,
            by_ip,
            services,
            by_vip,
            by_hostname,
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

    /// `namespace/name` of the workload at `ip`, on any node: who a connection comes from.
    pub fn workload_at(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.by_ip.get(&ip).map(|w| w.label.clone())
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
        // Through the node's shared address if it gives one, else the workload's own.
        let hbone_ip = self.node_addresses.get(&w.node).copied().unwrap_or(ip);
        Route {
            target: SocketAddr::new(ip, port),
            hbone: w
                .hbone
                .then(|| SocketAddr::new(hbone_ip, self.inbound_port)),
            expected,
        }
    }

    /// A route to the next healthy backend of `svc`, round robin.
    fn service_route(&self, svc: &ServiceInfo, port: u16) -> Result<Route, NoRoute> {
        if svc.backends.is_empty() {
            return Err(NoRoute::NoHealthyBackend(svc.key.clone()));
        }
        let ip = svc.backends[svc.next.fetch_add(1, Ordering::Relaxed) % svc.backends.len()];
        let w = self.by_ip.get(&ip).ok_or(NoRoute::Unknown)?;
        let target_port = w
            .services
            .get(&svc.key)
            .and_then(|m| m.get(&port))
            // 0: a named target port, which only the backend's own map resolves.
            .or_else(|| svc.ports.get(&port).filter(|p| **p != 0))
            .copied()
            .unwrap_or(port);
        Ok(self.workload_route(ip, w, target_port, &svc.extra_identities))
    }

    /// How to reach `target`.
    pub fn route(&self, target: &Target) -> Result<Route, NoRoute> {
        match target {
            Target::Addr(a) => {
                if let Some(w) = self.by_ip.get(&a.ip()) {
                    return Ok(self.workload_route(a.ip(), w, a.port(), &[]));
                }
                let svc = &self.services[*self.by_vip.get(&a.ip()).ok_or(NoRoute::Unknown)?];
                self.service_route(svc, a.port())
            }
            Target::Host(h, port) => {
                let svc = &self.services[*self.by_hostname.get(h).ok_or(NoRoute::Unknown)?];
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
    fn source(&self, ip: IpAddr) -> Option<Source> {
        let view = self.get();
        view.by_ip
            .get(&ip)
            .filter(|w| w.node == view.node)
            .map(|w| Source {
                id: w.id.clone(),
                label: w.label.clone(),
                baggage: w.baggage.clone(),
            })
    }

    fn route(&self, target: &Target) -> Result<Route, NoRoute> {
        self.get().route(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zident_mesh::{MeshFile, MeshOrigin};

    fn view() -> MeshView {
        let yaml = "trustDomain: cluster.local\n\
nodes:\n- {name: n1, token: t1}\n- {name: n3, token: t3, address: 127.0.0.100}\n\
workloads:\n\
- {uid: a, name: a, namespace: default, serviceAccount: a, node: n1, workloadIps: ['127.0.0.2'], protocol: HBONE}\n\
- {uid: b2, name: b2, namespace: default, serviceAccount: b, node: n2, workloadIps: ['127.0.0.4'], protocol: HBONE,\n   services: {'default/b.svc': {80: 9090}}}\n\
- {uid: b1, name: b1, namespace: default, serviceAccount: b, node: n2, workloadIps: ['127.0.0.3'], protocol: HBONE,\n   services: {'default/b.svc': {80: 8080}}}\n\
- {uid: b3, name: b3, namespace: default, serviceAccount: b, node: n2, workloadIps: ['127.0.0.6'], protocol: HBONE, status: Unhealthy,\n   services: {'default/b.svc': {80: 6060}}}\n\
- {uid: t, name: t, namespace: default, serviceAccount: t, node: n2, workloadIps: ['127.0.0.5']}\n\
- {uid: c, name: c, namespace: default, serviceAccount: c, node: n3, workloadIps: ['127.0.0.7'], protocol: HBONE, status: Unhealthy,\n   services: {'default/c.svc': {80: 80}}}\n\
services:\n\
- {name: b, namespace: default, hostname: b.svc, vips: ['/127.10.0.3'], ports: {80: 7070, 81: 8181},\n   subjectAltNames: ['spiffe://cluster.local/ns/default/sa/b-canary']}\n\
- {name: c, namespace: default, hostname: c.svc, vips: ['/127.10.0.7'], ports: {80: 80}}\n";
        let mesh = MeshFile::parse(std::path::Path::new("m.yaml"), yaml).unwrap();
        let view = NodeView::new(mesh, MeshOrigin::file(std::path::Path::new("m.yaml")), "n1");
        MeshView::new(&view.unwrap(), 15008).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://cluster.local/ns/default/sa/{s}")).unwrap()
    }

    fn addr(s: &str) -> Target {
        Target::Addr(s.parse().unwrap())
    }

    #[test]
    fn routes_by_address_vip_and_host_name() {
        let v = view();
        let direct = v.route(&addr("127.0.0.3:8080")).unwrap();
        assert_eq!(direct.hbone, Some("127.0.0.3:15008".parse().unwrap()));
        assert_eq!(direct.expected, vec![id("b")]);
        // The VIP maps port 80 to the backend's own target port; extra identities join.
        let vip = v.route(&addr("127.10.0.3:80")).unwrap();
        assert_eq!(vip.target, "127.0.0.3:8080".parse().unwrap());
        assert_eq!(vip.expected, vec![id("b"), id("b-canary")]);
        // A port only the service maps, by name (the next backend in turn).
        let by_name = v.route(&Target::Host("b.svc".into(), 81)).unwrap();
        assert_eq!(by_name.target, "127.0.0.4:8181".parse().unwrap());
        // protocol TCP: plain connection.
        assert_eq!(v.route(&addr("127.0.0.5:22")).unwrap().hbone, None);
        assert_eq!(v.route(&addr("127.0.0.9:80")), Err(NoRoute::Unknown));
        assert_eq!(
            v.route(&Target::Host("nope.svc".into(), 80)),
            Err(NoRoute::Unknown)
        );
        // Sources and inbound targets are this node's only.
        let live = LiveView(RwLock::new(Arc::new(v.clone())));
        let a = live.source("127.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(a.id, id("a"));
        assert_eq!(&*a.label, "default/a");
        assert_eq!(&*a.baggage, "k8s.namespace.name=default,k8s.pod.name=a");
        assert!(live.source("127.0.0.3".parse().unwrap()).is_none());
        assert_eq!(
            v.workload_at("127.0.0.3".parse().unwrap()).as_deref(),
            Some("default/b1")
        );
        assert!(v.local_target("127.0.0.3".parse().unwrap()).is_none());
        assert_eq!(
            v.local_hbone(),
            vec![("127.0.0.2".parse().unwrap(), id("a"))]
        );
    }

    #[test]
    fn services_balance_over_healthy_backends_only() {
        let v = view();
        let mut seen = BTreeMap::new();
        for _ in 0..10 {
            let r = v.route(&addr("127.10.0.3:80")).unwrap();
            *seen.entry(r.target).or_insert(0) += 1;
        }
        // Two healthy backends, five each; the unhealthy one (127.0.0.6) gets none.
        let expected: BTreeMap<SocketAddr, i32> = [
            ("127.0.0.3:8080".parse().unwrap(), 5),
            ("127.0.0.4:9090".parse().unwrap(), 5),
        ]
        .into();
        assert_eq!(seen, expected);
        // Still reachable by its own address.
        assert!(v.route(&addr("127.0.0.6:6060")).is_ok());
        assert_eq!(
            v.route(&addr("127.10.0.7:80")),
            Err(NoRoute::NoHealthyBackend("default/c.svc".into()))
        );
    }

    #[test]
    fn a_node_address_takes_the_hbone_traffic_of_its_workloads() {
        let v = view();
        let r = v.route(&addr("127.0.0.7:80")).unwrap();
        assert_eq!(r.target, "127.0.0.7:80".parse().unwrap());
        assert_eq!(r.hbone, Some("127.0.0.100:15008".parse().unwrap()));
    }
}
