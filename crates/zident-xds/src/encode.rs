//! Mesh → protobuf, field by field as ztunnel reads them (`src/state/workload.rs`,
//! `src/state/service.rs`, `src/rbac.rs` in its source), with the names it keys them by:
//! a workload by its uid, a service by `namespace/hostname`, a policy by `namespace/name`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use prost::Message;
use zident_mesh::{
    Action, Authorization, Cidr, HealthStatus, MeshFile, Protocol, RbacMatch, Scope, Service,
    ServiceAccountMatch, StringMatch, Workload, parse_vip,
};
use zident_proto::istio_security as sec;
use zident_proto::istio_workload as wl;
use zident_proto::zident_mesh as zm;

/// A resource before it is versioned: its type, its name and its message.
pub(crate) struct Encoded {
    pub(crate) type_url: &'static str,
    pub(crate) name: String,
    pub(crate) value: Vec<u8>,
}

/// Every resource of `mesh`.
pub(crate) fn mesh_resources(mesh: &MeshFile) -> Vec<Encoded> {
    let mut out = Vec::with_capacity(mesh.workloads.len() + mesh.services.len() + 8);
    out.push(Encoded {
        type_url: crate::MESH,
        name: crate::MESH_RESOURCE.into(),
        value: zm::Mesh {
            trust_domain: mesh.trust_domain.to_string(),
            ca_certificates: mesh.ca_certificates.clone(),
        }
        .encode_to_vec(),
    });
    for node in &mesh.nodes {
        out.push(Encoded {
            type_url: crate::NODE,
            name: node.name.clone(),
            value: zm::Node {
                name: node.name.clone(),
                address: node.address.map(ip_bytes).unwrap_or_default(),
                spiffe_id: node
                    .spiffe_id
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            }
            .encode_to_vec(),
        });
    }
    let mut names = BTreeMap::new();
    for w in &mesh.workloads {
        let mut name = workload_name(w);
        // Two uid-less workloads with one namespace/name (on different nodes): keep both.
        let seen = names.entry(name.clone()).or_insert(0u32);
        *seen += 1;
        if *seen > 1 {
            name = format!("{name}#{seen}");
        }
        out.push(Encoded {
            type_url: crate::ADDRESS,
            value: wl::Address {
                r#type: Some(wl::address::Type::Workload(workload(w, mesh, &name))),
            }
            .encode_to_vec(),
            name,
        });
    }
    for s in &mesh.services {
        out.push(Encoded {
            type_url: crate::ADDRESS,
            name: format!("{}/{}", s.namespace, s.hostname),
            value: wl::Address {
                r#type: Some(wl::address::Type::Service(service(s))),
            }
            .encode_to_vec(),
        });
    }
    for p in &mesh.policies {
        out.push(Encoded {
            type_url: crate::AUTHORIZATION,
            name: format!("{}/{}", p.namespace, p.name),
            value: authorization(p).encode_to_vec(),
        });
    }
    out
}

/// The xDS name (and uid) of a workload: its uid, or for one without, the shape istiod gives
/// a pod's (`<cluster>//Pod/<namespace>/<name>`).
fn workload_name(w: &Workload) -> String {
    if !w.uid.is_empty() {
        return w.uid.clone();
    }
    let cluster = if w.cluster_id.is_empty() {
        "Kubernetes"
    } else {
        &w.cluster_id
    };
    format!("{cluster}//Pod/{}/{}", w.namespace, w.name)
}

fn workload(w: &Workload, mesh: &MeshFile, uid: &str) -> wl::Workload {
    wl::Workload {
        uid: uid.to_owned(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.workload_ips.iter().copied().map(ip_bytes).collect(),
        network: w.network.clone(),
        tunnel_protocol: match w.protocol {
            Protocol::Hbone => wl::TunnelProtocol::Hbone,
            Protocol::Tcp => wl::TunnelProtocol::None,
        } as i32,
        // ztunnel reads an empty trust domain as cluster.local: always say which.
        trust_domain: if w.trust_domain.is_empty() {
            mesh.trust_domain.to_string()
        } else {
            w.trust_domain.clone()
        },
        service_account: w.service_account.clone(),
        node: w.node.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        workload_type: workload_type(&w.workload_type) as i32,
        workload_name: w.workload_name.clone(),
        services: w
            .services
            .iter()
            .map(|(key, ports)| {
                (
                    key.clone(),
                    wl::PortList {
                        ports: ports_of(ports),
                    },
                )
            })
            .collect(),
        authorization_policies: w.authorization_policies.clone(),
        status: match w.status {
            HealthStatus::Healthy => wl::WorkloadStatus::Healthy,
            HealthStatus::Unhealthy => wl::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: w.cluster_id.clone(),
        extensions: run_as(w).into_iter().collect(),
    }
}

/// The extension carrying who runs the workload, when it says.
fn run_as(w: &Workload) -> Option<wl::Extension> {
    let user = w.user.as_ref()?;
    let value = zm::RunAs {
        user: user.to_string(),
        group: w.group.as_ref().map(|g| g.to_string()).unwrap_or_default(),
    }
    .encode_to_vec();
    Some(wl::Extension {
        name: crate::RUN_AS.into(),
        config: Some(prost_types::Any {
            type_url: "type.googleapis.com/zident.mesh.RunAs".into(),
            value,
        }),
    })
}

/// The mesh file writes the owner's kind in lower case, empty for a bare pod.
pub(crate) fn workload_type(kind: &str) -> wl::WorkloadType {
    match kind {
        "deployment" => wl::WorkloadType::Deployment,
        "cronjob" => wl::WorkloadType::Cronjob,
        "job" => wl::WorkloadType::Job,
        _ => wl::WorkloadType::Pod,
    }
}

fn ports_of(ports: &BTreeMap<u16, u16>) -> Vec<wl::Port> {
    ports
        .iter()
        .map(|(s, t)| wl::Port {
            service_port: u32::from(*s),
            target_port: u32::from(*t),
        })
        .collect()
}

fn service(s: &Service) -> wl::Service {
    wl::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        // The checks refused any VIP that does not parse before the mesh got here.
        addresses: s
            .vips
            .iter()
            .filter_map(|v| parse_vip(v))
            .map(|(network, ip)| wl::NetworkAddress {
                network: network.to_owned(),
                address: ip_bytes(ip),
            })
            .collect(),
        ports: ports_of(&s.ports),
        subject_alt_names: s.subject_alt_names.clone(),
        canonical: s.canonical,
    }
}

fn authorization(p: &Authorization) -> sec::Authorization {
    sec::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            Scope::Global => sec::Scope::Global,
            Scope::Namespace => sec::Scope::Namespace,
            Scope::WorkloadSelector => sec::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            Action::Allow => sec::Action::Allow,
            Action::Deny => sec::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|clauses| sec::Rule {
                clauses: clauses
                    .iter()
                    .map(|matches| sec::Clause {
                        matches: matches.iter().map(rbac_match).collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: p.dry_run,
    }
}

fn rbac_match(m: &RbacMatch) -> sec::Match {
    let strings = |v: &[StringMatch]| v.iter().map(string_match).collect();
    let accounts = |v: &[ServiceAccountMatch]| {
        v.iter()
            .map(|a| sec::ServiceAccountMatch {
                namespace: a.namespace.clone(),
                service_account: a.service_account.clone(),
            })
            .collect()
    };
    let ranges = |v: &[Cidr]| {
        v.iter()
            .map(|c| sec::Address {
                address: ip_bytes(c.network()),
                length: u32::from(c.prefix()),
            })
            .collect()
    };
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect();
    sec::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: ranges(&m.source_ips),
        not_source_ips: ranges(&m.not_source_ips),
        destination_ips: ranges(&m.destination_ips),
        not_destination_ips: ranges(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
    }
}

fn string_match(m: &StringMatch) -> sec::StringMatch {
    use sec::string_match::MatchType;
    sec::StringMatch {
        match_type: Some(match m {
            StringMatch::Exact(v) => MatchType::Exact(v.clone()),
            StringMatch::Prefix(v) => MatchType::Prefix(v.clone()),
            StringMatch::Suffix(v) => MatchType::Suffix(v.clone()),
            StringMatch::Presence(_) => MatchType::Presence(()),
        }),
    }
}

/// An address as 4 or 16 bytes, as the workload API carries it.
pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
