//! Protobuf → mesh: what an agent does with what it received. Each resource is read whole
//! and refused with its name and the field at fault, so the NACK says what to fix.

use std::collections::BTreeMap;
use std::net::IpAddr;

use prost::Message;
use zident_identity::{SpiffeId, TrustDomain};
use zident_mesh::{
    Action, Authorization, Cidr, HealthStatus, Ignored, Node, Protocol, RbacMatch, Scope, Service,
    ServiceAccountMatch, StringMatch, Workload,
};
use zident_proto::istio_security as sec;
use zident_proto::istio_workload as wl;
use zident_proto::zident_mesh as zm;

/// Why a received resource cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{type_url} resource {name:?}: {message}")]
pub struct DecodeError {
    /// The resource's type.
    pub type_url: String,
    /// The resource's name.
    pub name: String,
    /// What is wrong with it.
    pub message: String,
}

impl DecodeError {
    pub(crate) fn new(type_url: &str, name: &str, message: impl Into<String>) -> Self {
        Self {
            type_url: type_url.to_owned(),
            name: name.to_owned(),
            message: message.into(),
        }
    }
}

/// What one resource holds.
pub(crate) enum Item {
    Mesh(zm::Mesh),
    Node(Node),
    Workload(Box<Workload>),
    Service(Service),
    Policy(Authorization),
}

/// Reads one resource of `type_url`; `mesh_td` is the trust domain a workload's is compared
/// with (a workload in the mesh's own trust domain is written without one, as in a file).
pub(crate) fn item(
    type_url: &str,
    name: &str,
    value: &[u8],
    mesh_td: &TrustDomain,
) -> Result<Item, DecodeError> {
    let err = |m: String| DecodeError::new(type_url, name, m);
    let undecodable = |e: prost::DecodeError| err(format!("not a valid message: {e}"));
    match type_url {
        crate::MESH => zm::Mesh::decode(value).map(Item::Mesh).map_err(undecodable),
        crate::NODE => node(zm::Node::decode(value).map_err(undecodable)?).map_err(err),
        crate::ADDRESS => match wl::Address::decode(value).map_err(undecodable)?.r#type {
            Some(wl::address::Type::Workload(w)) => workload(w, mesh_td).map_err(err),
            Some(wl::address::Type::Service(s)) => service(s).map(Item::Service).map_err(err),
            None => Err(err("holds neither a workload nor a service".into())),
        },
        crate::AUTHORIZATION => policy(sec::Authorization::decode(value).map_err(undecodable)?)
            .map(Item::Policy)
            .map_err(err),
        other => Err(err(format!("zident does not know the type {other}"))),
    }
}

fn node(n: zm::Node) -> Result<Item, String> {
    let mut node = Node {
        name: n.name,
        token: None,
        token_file: None,
        spiffe_id: None,
        address: None,
    };
    if !n.address.is_empty() {
        node.address = Some(ip(&n.address).map_err(|e| format!("address: {e}"))?);
    }
    if !n.spiffe_id.is_empty() {
        node.spiffe_id = Some(
            SpiffeId::new(&n.spiffe_id)
                .and_then(SpiffeId::require_path)
                .map_err(|e| format!("spiffe_id {:?}: {e}", n.spiffe_id))?,
        );
    }
    Ok(Item::Node(node))
}

fn workload(w: wl::Workload, mesh_td: &TrustDomain) -> Result<Item, String> {
    let mut out = Workload::new(w.namespace);
    out.uid = w.uid;
    out.name = w.name;
    out.service_account = if w.service_account.is_empty() {
        "default".into()
    } else {
        w.service_account
    };
    out.trust_domain = if w.trust_domain == mesh_td.as_str() {
        String::new()
    } else {
        w.trust_domain
    };
    out.node = w.node;
    out.workload_ips = w
        .addresses
        .iter()
        .map(|a| ip(a))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("addresses: {e}"))?;
    out.protocol = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(wl::TunnelProtocol::None) => Protocol::Tcp,
        Err(_) => {
            return Err(format!(
                "tunnel_protocol {} is not one zident carries (NONE or HBONE)",
                w.tunnel_protocol
            ));
        }
    };
    out.services = w
        .services
        .into_iter()
        .map(|(key, list)| Ok((key, ports(&list.ports)?)))
        .collect::<Result<_, String>>()
        .map_err(|e| format!("services: {e}"))?;
    out.authorization_policies = w.authorization_policies;
    out.status = match wl::WorkloadStatus::try_from(w.status) {
        Ok(wl::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        _ => HealthStatus::Healthy,
    };
    out.network = w.network;
    out.workload_name = w.workload_name;
    out.workload_type = match wl::WorkloadType::try_from(w.workload_type) {
        Ok(wl::WorkloadType::Deployment) => "deployment",
        Ok(wl::WorkloadType::Cronjob) => "cronjob",
        Ok(wl::WorkloadType::Job) => "job",
        _ => "",
    }
    .into();
    out.canonical_name = w.canonical_name;
    out.canonical_revision = w.canonical_revision;
    out.cluster_id = w.cluster_id;
    if let Some(ext) = w.extensions.iter().find(|e| e.name == crate::RUN_AS) {
        let run_as = zm::RunAs::decode(
            ext.config
                .as_ref()
                .map(|a| a.value.as_slice())
                .unwrap_or_default(),
        )
        .map_err(|e| format!("extension {}: {e}", crate::RUN_AS))?;
        if !run_as.user.is_empty() {
            out.user = run_as.user.parse().ok();
        }
        if !run_as.group.is_empty() {
            out.group = run_as.group.parse().ok();
        }
    }
    Ok(Item::Workload(Box::new(out)))
}

fn service(s: wl::Service) -> Result<Service, String> {
    let mut out = Service::new(s.name, s.namespace, s.hostname);
    out.vips = s
        .addresses
        .iter()
        .map(|a| Ok(format!("{}/{}", a.network, ip(&a.address)?)))
        .collect::<Result<_, String>>()
        .map_err(|e| format!("addresses: {e}"))?;
    out.ports = ports(&s.ports).map_err(|e| format!("ports: {e}"))?;
    out.subject_alt_names = s.subject_alt_names;
    out.canonical = s.canonical;
    Ok(out)
}

fn policy(p: sec::Authorization) -> Result<Authorization, String> {
    let scope = match sec::Scope::try_from(p.scope) {
        Ok(sec::Scope::Global) => Scope::Global,
        Ok(sec::Scope::Namespace) => Scope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(format!("scope {} is unknown", p.scope)),
    };
    // An unknown action must not be read as ALLOW (the zero value): refuse the policy.
    let action = match sec::Action::try_from(p.action) {
        Ok(sec::Action::Allow) => Action::Allow,
        Ok(sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(format!("action {} is unknown", p.action)),
    };
    let rules = p
        .rules
        .into_iter()
        .map(|rule| {
            rule.clauses
                .into_iter()
                .map(|clause| clause.matches.into_iter().map(rbac_match).collect())
                .collect()
        })
        .collect::<Result<_, String>>()?;
    Ok(Authorization {
        name: p.name,
        namespace: p.namespace,
        scope,
        action,
        dry_run: p.dry_run,
        rules,
    })
}

fn rbac_match(m: sec::Match) -> Result<RbacMatch, String> {
    let strings = |v: Vec<sec::StringMatch>| -> Result<Vec<StringMatch>, String> {
        v.into_iter().map(string_match).collect()
    };
    let accounts = |v: Vec<sec::ServiceAccountMatch>| {
        v.into_iter()
            .map(|a| ServiceAccountMatch {
                namespace: a.namespace,
                service_account: a.service_account,
            })
            .collect()
    };
    let ranges = |v: Vec<sec::Address>| -> Result<Vec<Cidr>, String> {
        v.into_iter()
            .map(|a| {
                let network = ip(&a.address)?;
                let prefix = u8::try_from(a.length)
                    .map_err(|_| format!("prefix length {} is too long", a.length))?;
                Cidr::new(network, prefix).map_err(|e| e.to_string())
            })
            .collect()
    };
    let ports = |v: Vec<u32>| -> Result<Vec<u16>, String> {
        v.into_iter()
            .map(|p| u16::try_from(p).map_err(|_| format!("port {p} is out of range")))
            .collect()
    };
    Ok(RbacMatch {
        namespaces: strings(m.namespaces)?,
        not_namespaces: strings(m.not_namespaces)?,
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
        principals: strings(m.principals)?,
        not_principals: strings(m.not_principals)?,
        source_ips: ranges(m.source_ips)?,
        not_source_ips: ranges(m.not_source_ips)?,
        destination_ips: ranges(m.destination_ips)?,
        not_destination_ips: ranges(m.not_destination_ips)?,
        destination_ports: ports(m.destination_ports)?,
        not_destination_ports: ports(m.not_destination_ports)?,
    })
}

fn string_match(m: sec::StringMatch) -> Result<StringMatch, String> {
    use sec::string_match::MatchType;
    match m.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v)),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v)),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v)),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence(Ignored)),
        // A match of an unknown kind must not match everything: refuse it.
        None => Err("a string match has none of exact, prefix, suffix, presence".into()),
    }
}

fn ports(list: &[wl::Port]) -> Result<BTreeMap<u16, u16>, String> {
    list.iter()
        .map(|p| {
            let port = |v: u32| u16::try_from(v).map_err(|_| format!("port {v} is out of range"));
            Ok((port(p.service_port)?, port(p.target_port)?))
        })
        .collect()
}

fn ip(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| "bad length")?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| "bad length")?,
        )),
        n => Err(format!("an address of {n} bytes (4 or 16 expected)")),
    }
}
