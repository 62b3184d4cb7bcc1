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

/// Why a received resource cannot be used: which resource, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{type_url} resource {name:?}: {problem}")]
pub struct DecodeError {
    /// The resource's type.
    pub type_url: String,
    /// The resource's name.
    pub name: String,
    /// What is wrong with it.
    pub problem: Problem,
}

impl DecodeError {
    pub(crate) fn new(type_url: &str, name: &str, problem: Problem) -> Self {
        Self {
            type_url: type_url.to_owned(),
            name: name.to_owned(),
            problem,
        }
    }
}

/// What is wrong with a received resource. None of these is transient: the same bytes are
/// refused again, so the NACK names the field to fix at the control plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The bytes are not a message of the type.
    #[error("not a valid message: {0}")]
    Undecodable(prost::DecodeError),
    /// A type zident does not serve.
    #[error("zident does not know the type {0}")]
    UnknownType(String),
    /// An address resource with neither a workload nor a service.
    #[error("holds neither a workload nor a service")]
    EmptyAddress,
    /// A field holds a value zident cannot use.
    #[error("{field}: {value}")]
    Field {
        /// The field, e.g. `addresses`.
        field: &'static str,
        /// What is wrong with its value.
        value: BadValue,
    },
    /// A value outside any one field.
    #[error(transparent)]
    Value(#[from] BadValue),
}

/// A value zident cannot read into the mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// An IP address of another length than 4 or 16 bytes.
    #[error("an address of {0} bytes (4 or 16 expected)")]
    AddressLength(usize),
    /// A port above 65535.
    #[error("port {0} is out of range")]
    Port(u32),
    /// A CIDR prefix length that does not fit.
    #[error("prefix length {0} is too long")]
    PrefixLength(u32),
    /// A CIDR range that is not one.
    #[error(transparent)]
    Cidr(#[from] zident_mesh::CidrError),
    /// A SPIFFE ID that is not one.
    #[error("spiffe_id {value:?}: {source}")]
    SpiffeId {
        /// The value as sent.
        value: String,
        /// What is wrong with it.
        source: zident_identity::IdError,
    },
    /// A trust domain that is not one.
    #[error("trust_domain: {0}")]
    TrustDomain(zident_identity::IdError),
    /// A tunnel protocol zident does not carry.
    #[error("tunnel_protocol {0} is not one zident carries (NONE or HBONE)")]
    TunnelProtocol(i32),
    /// A policy scope zident does not know.
    #[error("scope {0} is unknown")]
    Scope(i32),
    /// A policy action zident does not know (never read as ALLOW).
    #[error("action {0} is unknown")]
    Action(i32),
    /// A string match of no kind (never read as matching everything).
    #[error("a string match has none of exact, prefix, suffix, presence")]
    EmptyStringMatch,
    /// An extension that does not decode.
    #[error("extension {name}: {source}")]
    Extension {
        /// The extension's name.
        name: &'static str,
        /// What the decoder said.
        source: prost::DecodeError,
    },
}

fn in_field(field: &'static str) -> impl Fn(BadValue) -> Problem {
    move |value| Problem::Field { field, value }
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
    let err = |p: Problem| DecodeError::new(type_url, name, p);
    let undecodable = |e: prost::DecodeError| err(Problem::Undecodable(e));
    match type_url {
        crate::MESH => zm::Mesh::decode(value).map(Item::Mesh).map_err(undecodable),
        crate::NODE => node(zm::Node::decode(value).map_err(undecodable)?).map_err(err),
        crate::ADDRESS => match wl::Address::decode(value).map_err(undecodable)?.r#type {
            Some(wl::address::Type::Workload(w)) => workload(w, mesh_td).map_err(err),
            Some(wl::address::Type::Service(s)) => service(s).map(Item::Service).map_err(err),
            None => Err(err(Problem::EmptyAddress)),
        },
        crate::AUTHORIZATION => policy(sec::Authorization::decode(value).map_err(undecodable)?)
            .map(Item::Policy)
            .map_err(|v| err(v.into())),
        other => Err(err(Problem::UnknownType(other.to_owned()))),
    }
}

fn node(n: zm::Node) -> Result<Item, Problem> {
    let mut node = Node {
        name: n.name,
        token: None,
        token_file: None,
        spiffe_id: None,
        address: None,
    };
    if !n.address.is_empty() {
        node.address = Some(ip(&n.address).map_err(in_field("address"))?);
    }
    if !n.spiffe_id.is_empty() {
        node.spiffe_id = Some(
            SpiffeId::new(&n.spiffe_id)
                .and_then(SpiffeId::require_path)
                .map_err(|source| BadValue::SpiffeId {
                    value: n.spiffe_id.clone(),
                    source,
                })?,
        );
    }
    Ok(Item::Node(node))
}

fn workload(w: wl::Workload, mesh_td: &TrustDomain) -> Result<Item, Problem> {
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
        .map_err(in_field("addresses"))?;
    out.protocol = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(wl::TunnelProtocol::None) => Protocol::Tcp,
        Err(_) => return Err(BadValue::TunnelProtocol(w.tunnel_protocol).into()),
    };
    out.services = w
        .services
        .into_iter()
        .map(|(key, list)| Ok((key, ports(&list.ports)?)))
        .collect::<Result<_, BadValue>>()
        .map_err(in_field("services"))?;
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
        .map_err(|source| BadValue::Extension {
            name: crate::RUN_AS,
            source,
        })?;
        if !run_as.user.is_empty() {
            out.user = run_as.user.parse().ok();
        }
        if !run_as.group.is_empty() {
            out.group = run_as.group.parse().ok();
        }
    }
    Ok(Item::Workload(Box::new(out)))
}

fn service(s: wl::Service) -> Result<Service, Problem> {
    let mut out = Service::new(s.name, s.namespace, s.hostname);
    out.vips = s
        .addresses
        .iter()
        .map(|a| Ok(format!("{}/{}", a.network, ip(&a.address)?)))
        .collect::<Result<_, BadValue>>()
        .map_err(in_field("addresses"))?;
    out.ports = ports(&s.ports).map_err(in_field("ports"))?;
    out.subject_alt_names = s.subject_alt_names;
    out.canonical = s.canonical;
    Ok(out)
}

fn policy(p: sec::Authorization) -> Result<Authorization, BadValue> {
    let scope = match sec::Scope::try_from(p.scope) {
        Ok(sec::Scope::Global) => Scope::Global,
        Ok(sec::Scope::Namespace) => Scope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(BadValue::Scope(p.scope)),
    };
    // An unknown action must not be read as ALLOW (the zero value): refuse the policy.
    let action = match sec::Action::try_from(p.action) {
        Ok(sec::Action::Allow) => Action::Allow,
        Ok(sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(BadValue::Action(p.action)),
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
        .collect::<Result<_, BadValue>>()?;
    Ok(Authorization {
        name: p.name,
        namespace: p.namespace,
        scope,
        action,
        dry_run: p.dry_run,
        rules,
    })
}

fn rbac_match(m: sec::Match) -> Result<RbacMatch, BadValue> {
    let strings = |v: Vec<sec::StringMatch>| -> Result<Vec<StringMatch>, BadValue> {
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
    let ranges = |v: Vec<sec::Address>| -> Result<Vec<Cidr>, BadValue> {
        v.into_iter()
            .map(|a| {
                let network = ip(&a.address)?;
                let prefix =
                    u8::try_from(a.length).map_err(|_| BadValue::PrefixLength(a.length))?;
                Ok(Cidr::new(network, prefix)?)
            })
            .collect()
    };
    let ports = |v: Vec<u32>| -> Result<Vec<u16>, BadValue> {
        v.into_iter()
            .map(|p| u16::try_from(p).map_err(|_| BadValue::Port(p)))
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

fn string_match(m: sec::StringMatch) -> Result<StringMatch, BadValue> {
    use sec::string_match::MatchType;
    match m.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v)),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v)),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v)),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence(Ignored)),
        // A match of an unknown kind must not match everything: refuse it.
        None => Err(BadValue::EmptyStringMatch),
    }
}

fn ports(list: &[wl::Port]) -> Result<BTreeMap<u16, u16>, BadValue> {
    list.iter()
        .map(|p| {
            let port = |v: u32| u16::try_from(v).map_err(|_| BadValue::Port(v));
            Ok((port(p.service_port)?, port(p.target_port)?))
        })
        .collect()
}

fn ip(bytes: &[u8]) -> Result<IpAddr, BadValue> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes)
        .map(IpAddr::from)
        .map_err(|_| BadValue::AddressLength(bytes.len()))
}
