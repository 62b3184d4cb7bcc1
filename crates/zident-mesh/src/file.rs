//! Loading and checking the mesh file.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zident_identity::{SpiffeId, TrustDomain};

pub use crate::error::MeshError;
use crate::origin::MeshOrigin;
use crate::policy::{Authorization, Ignored};

/// A whole mesh file, checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshFile {
    /// The mesh's trust domain (default `cluster.local`).
    #[serde(
        default = "default_trust_domain",
        deserialize_with = "de_trust_domain",
        serialize_with = "ser_display"
    )]
    pub trust_domain: TrustDomain,
    /// Node agents and the tokens they authenticate with.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Callers that may ask only for their own identity.
    #[serde(default)]
    pub identities: Vec<IdentityEntry>,
    /// Workloads, in ztunnel's local-config shape.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Authorization policies, in ztunnel's local-config shape.
    #[serde(default)]
    pub policies: Vec<Authorization>,
    /// Services, in ztunnel's local-config shape.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Extra trusted roots (PEM), for agents.
    #[serde(default)]
    pub ca_certificates: Vec<String>,
    /// Certificates with DNS names the CA issues and keeps renewed in its `--dns-cert-dir`
    /// (Istio's `meshConfig.certificates`, e.g. for webhooks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<DnsCertificate>,
}

/// One certificate with DNS names: written to `<dns cert dir>/<secretName>/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsCertificate {
    /// The directory the files go to (a DNS-1123 subdomain, as a Kubernetes secret's name).
    pub secret_name: String,
    /// The DNS SANs: RFC 1123 host names; `*.` only as the whole leftmost label.
    pub dns_names: Vec<String>,
}

/// A node agent's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// The node's name, as workloads' `node:` refers to it.
    pub name: String,
    /// The bearer token, inline. Exactly one of `token` and `tokenFile`. Never shown.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// A file holding the bearer token, relative to the mesh file.
    #[serde(default, skip_serializing)]
    pub token_file: Option<PathBuf>,
    /// The agent's own identity, if it keeps a certificate for itself.
    #[serde(
        default,
        deserialize_with = "de_opt_spiffe_id",
        serialize_with = "ser_opt_display"
    )]
    pub spiffe_id: Option<SpiffeId>,
    /// Where other nodes' tunnels reach this node's workloads: HBONE to `<address>:<inbound
    /// port>` instead of each workload's own address (the node's agent listens there with
    /// `--inbound-addr`). Absent: each workload's address.
    #[serde(default)]
    pub address: Option<IpAddr>,
}

/// A caller that may ask only for its own identity (a workload or a dedicated-mode proxy).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityEntry {
    /// The one identity this token may ask for.
    #[serde(deserialize_with = "de_spiffe_id", serialize_with = "ser_display")]
    pub spiffe_id: SpiffeId,
    /// The bearer token, inline. Never shown.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[serde(default, skip_serializing)]
    pub token_file: Option<PathBuf>,
}

/// How a workload receives traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Protocol {
    /// Plain TCP: no tunnel (ztunnel's default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// Mutual TLS over HBONE.
    #[serde(rename = "HBONE")]
    Hbone,
}

/// A workload's health, as ztunnel's local config spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum HealthStatus {
    /// Takes traffic.
    #[default]
    Healthy,
    /// Left out when a service picks a backend (it can still be reached by its own address).
    Unhealthy,
}

/// A workload, in ztunnel's local-config shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Unique ID.
    #[serde(default)]
    pub uid: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account (default `default`, as ztunnel assumes).
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Trust domain; empty means the mesh's.
    #[serde(default)]
    pub trust_domain: String,
    /// The node it runs on.
    #[serde(default)]
    pub node: String,
    /// Its addresses.
    #[serde(default)]
    pub workload_ips: Vec<IpAddr>,
    /// How it receives traffic.
    #[serde(default)]
    pub protocol: Protocol,
    /// Services it backs: `namespace/hostname` → service port → target port.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    /// Policies with scope WorkloadSelector that apply to it (`namespace/name`).
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    /// Whether it takes traffic as a service backend (`Healthy`, the default, or `Unhealthy`).
    #[serde(default)]
    pub status: HealthStatus,
    // Keys of ztunnel's format that zident does not use: accepted and ignored.
    #[serde(default, skip_serializing)]
    waypoint: Option<Ignored>,
    #[serde(default, skip_serializing)]
    network_gateway: Option<Ignored>,
    #[serde(default, skip_serializing)]
    network_mode: Option<Ignored>,
    /// The network its addresses belong to (empty: the default one). Addresses are unique
    /// per network.
    #[serde(default)]
    pub network: String,
    /// The workload's owner name (e.g. its deployment), for telemetry (`baggage`).
    #[serde(default)]
    pub workload_name: String,
    /// The owner's kind (`deployment`, `job`, …; empty: `pod`), for telemetry.
    #[serde(default)]
    pub workload_type: String,
    /// The canonical service name, for telemetry (`service.name`).
    #[serde(default)]
    pub canonical_name: String,
    /// The canonical revision, for telemetry (`service.version`).
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default, skip_serializing)]
    hostname: Option<Ignored>,
    #[serde(default, skip_serializing)]
    native_tunnel: Option<Ignored>,
    #[serde(default, skip_serializing)]
    application_tunnel: Option<Ignored>,
    /// The cluster, for telemetry (`k8s.cluster.name`).
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default, skip_serializing)]
    locality: Option<Ignored>,
    #[serde(default, skip_serializing)]
    capacity: Option<Ignored>,
    /// zident: the unix user that runs the workload (a uid or a user name on its node). On the
    /// agent's shared Workload API socket, a caller running as this user gets the workload's
    /// identity; the workload's own socket, its directory and its SVID files are owned by it,
    /// so that it needs no root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UnixId>,
    /// zident: the unix group that runs it (a gid or a group name), checked beside `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<UnixId>,
}

/// A unix user or group, by number or by name (resolved on the node, in /etc/passwd and
/// /etc/group).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum UnixId {
    /// A uid or gid.
    Id(u32),
    /// A user or group name.
    Name(String),
}

impl std::fmt::Display for UnixId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnixId::Id(n) => write!(f, "{n}"),
            UnixId::Name(s) => f.write_str(s),
        }
    }
}

impl std::str::FromStr for UnixId {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse::<u32>() {
            Ok(n) => UnixId::Id(n),
            Err(_) => UnixId::Name(s.to_owned()),
        })
    }
}

impl Workload {
    /// A workload in `namespace` with every other field at its default, for views built from
    /// something other than YAML (the xDS stream); set the public fields after.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            uid: String::new(),
            name: String::new(),
            namespace: namespace.into(),
            service_account: default_service_account(),
            trust_domain: String::new(),
            node: String::new(),
            workload_ips: Vec::new(),
            protocol: Protocol::default(),
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            status: HealthStatus::default(),
            waypoint: None,
            network_gateway: None,
            network_mode: None,
            network: String::new(),
            workload_name: String::new(),
            workload_type: String::new(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            hostname: None,
            native_tunnel: None,
            application_tunnel: None,
            cluster_id: String::new(),
            locality: None,
            capacity: None,
            user: None,
            group: None,
        }
    }

    /// The workload's SPIFFE ID, `spiffe://<td>/ns/<namespace>/sa/<service account>`, with the
    /// mesh's trust domain when its own is empty.
    pub fn spiffe_id(&self, mesh_trust_domain: &TrustDomain) -> Result<SpiffeId, WorkloadIdError> {
        let td = if self.trust_domain.is_empty() {
            mesh_trust_domain.clone()
        } else {
            TrustDomain::new(&self.trust_domain).map_err(WorkloadIdError::TrustDomain)?
        };
        SpiffeId::istio(&td, &self.namespace, &self.service_account).map_err(WorkloadIdError::Id)
    }
}

/// Why a workload's fields make no SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadIdError {
    /// Its own `trustDomain` is not one.
    #[error("trustDomain: {0}")]
    TrustDomain(zident_identity::IdError),
    /// Its namespace and service account do not make a valid ID.
    #[error("namespace/serviceAccount do not make a SPIFFE ID: {0}")]
    Id(zident_identity::IdError),
}

/// A service, in ztunnel's local-config shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Hostname, e.g. `backend.default.svc.cluster.local`.
    pub hostname: String,
    /// Virtual IPs, `network/ip` (the network may be empty: `/10.0.0.1`).
    #[serde(default)]
    pub vips: Vec<String>,
    /// Service port → target port.
    #[serde(default)]
    pub ports: BTreeMap<u16, u16>,
    /// Extra identities a client accepts for this service.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Whether this is the canonical service for its hostname.
    #[serde(default)]
    pub canonical: bool,
    #[serde(default, skip_serializing)]
    endpoints: Option<Ignored>,
    #[serde(default, skip_serializing)]
    waypoint: Option<Ignored>,
    #[serde(default, skip_serializing)]
    load_balancer: Option<Ignored>,
    #[serde(default, skip_serializing)]
    ip_families: Option<Ignored>,
}

impl Service {
    /// A service with no VIP, port or extra name yet, for views built from something other
    /// than YAML (the xDS stream); set the public fields after.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        hostname: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            hostname: hostname.into(),
            vips: Vec::new(),
            ports: BTreeMap::new(),
            subject_alt_names: Vec::new(),
            canonical: false,
            endpoints: None,
            waypoint: None,
            load_balancer: None,
            ip_families: None,
        }
    }
}

/// A service VIP, `network/ip` (the network may be empty: `/10.0.0.1`), as (network, address);
/// `None` when it is not one. The one reading of the format, for the checks and the tunnel.
pub fn parse_vip(vip: &str) -> Option<(&str, IpAddr)> {
    let (network, ip) = vip.rsplit_once('/').unwrap_or(("", vip));
    Some((network, ip.parse().ok()?))
}

/// A resolved bearer token and whom it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerToken {
    /// A node agent, by node name.
    Node(String),
    /// A caller bound to one identity.
    Identity(SpiffeId),
}

impl MeshFile {
    /// A mesh with nothing in it but its trust domain: what is built up from received
    /// resources, or held until the first arrive. (It does not pass the checks: it names no
    /// node.)
    pub fn empty(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            nodes: Vec::new(),
            identities: Vec::new(),
            workloads: Vec::new(),
            policies: Vec::new(),
            services: Vec::new(),
            ca_certificates: Vec::new(),
            certificates: Vec::new(),
        }
    }

    /// Every bearer token with its caller, token files read relative to the mesh file's
    /// directory. Fails on an unreadable or empty token file, or a token used twice.
    pub fn resolve_tokens(
        &self,
        mesh_path: &Path,
    ) -> Result<Vec<(String, CallerToken)>, MeshError> {
        let base = mesh_path.parent().unwrap_or(Path::new("."));
        let read = |field: String, token: &Option<String>, file: &Option<PathBuf>| {
            let value = match (token, file) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) => {
                    let p = base.join(f);
                    std::fs::read_to_string(&p)
                        .map_err(|e| MeshError::Invalid {
                            origin: MeshOrigin::file(mesh_path),
                            line: None,
                            field: field.clone(),
                            message: format!("cannot read tokenFile {}: {e}", p.display()),
                        })?
                        .trim()
                        .to_owned()
                }
                (None, None) => String::new(),
            };
            if value.is_empty() {
                return Err(MeshError::Invalid {
                    origin: MeshOrigin::file(mesh_path),
                    line: None,
                    field,
                    message: "the token is empty".into(),
                });
            }
            Ok(value)
        };
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let t = read(format!("nodes[{i}]"), &n.token, &n.token_file)?;
            out.push((t, CallerToken::Node(n.name.clone())));
        }
        for (i, e) in self.identities.iter().enumerate() {
            let t = read(format!("identities[{i}]"), &e.token, &e.token_file)?;
            out.push((t, CallerToken::Identity(e.spiffe_id.clone())));
        }
        let mut seen = HashSet::new();
        for (token, who) in &out {
            if !seen.insert(token.as_str()) {
                return Err(MeshError::Invalid {
                    origin: MeshOrigin::file(mesh_path),
                    line: None,
                    field: format!("{who:?}"),
                    message:
                        "this token is also used by another caller; every token must be unique"
                            .into(),
                });
            }
        }
        Ok(out)
    }

    /// Whether the file names `node`: in `nodes:`, or as some workload's `node:`. An agent
    /// refuses a file that does not name its node, since applying it would remove every
    /// workload of the node (decommissioning a node is stopping its agent, not emptying its
    /// part of the file).
    pub fn names_node(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n.name == node) || self.workloads.iter().any(|w| w.node == node)
    }

    /// Refuses an edit (from `origin`) that changes the trust domain of a running `who`
    /// (`the CA`, `the agent`): every identity, root and token in force belongs to the one it
    /// started with, so the trust domain changes only with a restart.
    pub fn keeps_trust_domain(
        &self,
        running: &TrustDomain,
        origin: &MeshOrigin,
        who: &str,
    ) -> Result<(), MeshError> {
        if &self.trust_domain == running {
            return Ok(());
        }
        Err(MeshError::Invalid {
            origin: origin.clone(),
            line: None,
            field: "trustDomain".into(),
            message: format!(
                "cannot change from {running} to {} while {who} runs; restart {who}",
                self.trust_domain
            ),
        })
    }

    /// The SPIFFE IDs of the workloads placed on `node`.
    pub fn identities_on_node(&self, node: &str) -> HashSet<SpiffeId> {
        self.workloads
            .iter()
            .filter(|w| w.node == node)
            .filter_map(|w| w.spiffe_id(&self.trust_domain).ok())
            .collect()
    }
}

/// The trust domain of a mesh that names none, and of an agent told none: Istio's.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// [`DEFAULT_TRUST_DOMAIN`] as a trust domain.
pub fn default_trust_domain() -> TrustDomain {
    // A constant that satisfies every rule; a failure here is a bug in this file.
    TrustDomain::new(DEFAULT_TRUST_DOMAIN).unwrap_or_else(|e| panic!("default trust domain: {e}"))
}

fn default_service_account() -> String {
    "default".into()
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_opt_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn de_trust_domain<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrustDomain, D::Error> {
    let s = String::deserialize(d)?;
    TrustDomain::new(&s).map_err(|e| serde::de::Error::custom(format!("trustDomain {s:?}: {e}")))
}

fn de_spiffe_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
    let s = String::deserialize(d)?;
    SpiffeId::new(&s)
        .and_then(SpiffeId::require_path)
        .map_err(|e| serde::de::Error::custom(format!("spiffeId {s:?}: {e}")))
}

fn de_opt_spiffe_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SpiffeId>, D::Error> {
    de_spiffe_id(d).map(Some)
}
