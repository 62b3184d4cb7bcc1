//! The rules a whole mesh file must pass before anything reads it. A file that breaks one is
//! refused whole, on every component, so that no half of an edit takes effect anywhere: the CA
//! and every agent run `MeshFile::parse`, and the tunnel's routes and policies are built only
//! from files that passed it.
//!
//! Each refusal names the entry (`workloads[3] (default/backend)`), the line where the text
//! shows it, the rule, and what to do.

use std::collections::HashMap;
use std::net::IpAddr;

use zident_identity::{SpiffeId, TrustDomain};

use crate::error::MeshError;
use crate::file::{MeshFile, Workload};
use crate::locate::{Step, line_of};
use crate::names::{check_dns_name, check_label, check_subdomain};
use crate::origin::MeshOrigin;

/// Collects where an entry is, to build a refusal.
struct Refuse<'a> {
    origin: &'a MeshOrigin,
    yaml: &'a str,
}

impl Refuse<'_> {
    fn at(&self, steps: &[Step<'_>], field: String, message: String) -> MeshError {
        MeshError::Invalid {
            origin: self.origin.clone(),
            line: line_of(self.yaml, steps),
            field,
            message,
        }
    }
}

/// How an entry is named in messages: its index, and `namespace/name` where it has one.
fn workload_label(i: usize, w: &Workload) -> String {
    format!("workloads[{i}] ({}/{})", w.namespace, w.name)
}

/// Checks every rule across the fields of `mesh`, parsed from `yaml` (empty for a mesh the
/// control plane sent) from `origin`. Only a file carries tokens: a view from the control plane
/// never does.
pub(crate) fn check(mesh: &MeshFile, origin: &MeshOrigin, yaml: &str) -> Result<(), MeshError> {
    let r = Refuse { origin, yaml };
    use Step::{Item, Key};

    // A file with no caller at all (no node, no identity-bound token) is what an empty or
    // cut-short save looks like. (A CA for dedicated-mode proxies alone has `identities:`.)
    if !matches!(origin, MeshOrigin::Kubernetes(_))
        && mesh.nodes.is_empty()
        && mesh.identities.is_empty()
        && mesh.workloads.iter().all(|w| w.node.is_empty())
    {
        return Err(r.at(
            &[],
            "nodes".into(),
            "the file names no node: no `nodes:` entry and no workload with a `node:` (nor any \
             `identities:`). An empty or cut-short save would take every node down, so it is \
             refused and the last good file stays in force. Restore the file's nodes (to stop a \
             node, stop its agent)."
                .into(),
        ));
    }

    let mut names = HashMap::new();
    for (i, node) in mesh.nodes.iter().enumerate() {
        let at = [Key("nodes"), Item(i)];
        if node.name.is_empty() {
            return Err(r.at(&at, format!("nodes[{i}].name"), "must not be empty".into()));
        }
        if let Some(first) = names.insert(node.name.as_str(), i) {
            return Err(r.at(
                &at,
                format!("nodes[{i}].name"),
                format!(
                    "node {:?} is listed twice (also nodes[{first}]); give each node one entry",
                    node.name
                ),
            ));
        }
        if matches!(origin, MeshOrigin::File(_)) {
            check_token_source(&node.token, &node.token_file)
                .map_err(|e| r.at(&at, format!("nodes[{i}]"), e.to_string()))?;
        }
        if let Some(id) = &node.spiffe_id {
            in_trust_domain(id, &mesh.trust_domain).map_err(|e| {
                r.at(
                    &[Key("nodes"), Item(i), Key("spiffeId")],
                    format!("nodes[{i}].spiffeId"),
                    e.to_string(),
                )
            })?;
        }
    }
    for (i, entry) in mesh.identities.iter().enumerate() {
        let at = [Key("identities"), Item(i)];
        if matches!(origin, MeshOrigin::File(_)) {
            check_token_source(&entry.token, &entry.token_file)
                .map_err(|e| r.at(&at, format!("identities[{i}]"), e.to_string()))?;
        }
        in_trust_domain(&entry.spiffe_id, &mesh.trust_domain).map_err(|e| {
            r.at(
                &[Key("identities"), Item(i), Key("spiffeId")],
                format!("identities[{i}].spiffeId"),
                e.to_string(),
            )
        })?;
    }

    check_workloads(mesh, &r)?;
    check_services(mesh, &r)?;
    check_policies(mesh, &r)?;

    check_certificates(mesh, &r)?;

    for (i, pem) in mesh.ca_certificates.iter().enumerate() {
        zident_identity::pem::certs_from_pem(pem.as_bytes()).map_err(|e| {
            r.at(
                &[Key("caCertificates"), Item(i)],
                format!("caCertificates[{i}]"),
                format!("{e}; give each entry as PEM text (-----BEGIN CERTIFICATE----- …)"),
            )
        })?;
    }
    Ok(())
}

/// `certificates:`: each a directory name of its own and at least one valid DNS name.
fn check_certificates(mesh: &MeshFile, r: &Refuse<'_>) -> Result<(), MeshError> {
    use Step::{Item, Key};
    let mut names = HashMap::new();
    for (i, c) in mesh.certificates.iter().enumerate() {
        let at = [Key("certificates"), Item(i)];
        check_subdomain(&c.secret_name).map_err(|e| {
            r.at(
                &[Key("certificates"), Item(i), Key("secretName")],
                format!("certificates[{i}].secretName"),
                format!(
                    "{e}; it names the directory the files go to, as a Kubernetes secret's name"
                ),
            )
        })?;
        if let Some(first) = names.insert(c.secret_name.as_str(), i) {
            return Err(r.at(
                &at,
                format!("certificates[{i}].secretName"),
                format!(
                    "{:?} is used twice (also certificates[{first}]); each certificate needs a directory of its own",
                    c.secret_name
                ),
            ));
        }
        if c.dns_names.is_empty() {
            return Err(r.at(
                &at,
                format!("certificates[{i}].dnsNames"),
                "must list at least one DNS name".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (j, name) in c.dns_names.iter().enumerate() {
            let here = [Key("certificates"), Item(i), Key("dnsNames"), Item(j)];
            check_dns_name(name).map_err(|e| {
                r.at(
                    &here,
                    format!("certificates[{i}].dnsNames[{j}]"),
                    e.to_string(),
                )
            })?;
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(r.at(
                    &here,
                    format!("certificates[{i}].dnsNames[{j}]"),
                    format!("{name:?} is listed twice"),
                ));
            }
        }
    }
    Ok(())
}

fn check_workloads(mesh: &MeshFile, r: &Refuse<'_>) -> Result<(), MeshError> {
    use Step::{Item, Key};
    let mut uids: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<(&str, IpAddr), usize> = HashMap::new();
    for (i, w) in mesh.workloads.iter().enumerate() {
        let label = workload_label(i, w);
        let field = |key: &'static str| [Key("workloads"), Item(i), Key(key)];
        check_subdomain(&w.name).map_err(|e| {
            r.at(
                &field("name"),
                format!("{label}.name"),
                format!(
                    "{e}: a workload's name follows Kubernetes' rule for pod names (a DNS-1123 \
                     subdomain), since it names its Workload API socket directory"
                ),
            )
        })?;
        check_namespace(r, &field("namespace"), &label, &w.namespace)?;
        check_subdomain(&w.service_account).map_err(|e| {
            r.at(
                &field("serviceAccount"),
                format!("{label}.serviceAccount"),
                format!(
                    "{e}: a service account follows Kubernetes' rule (a DNS-1123 subdomain), \
                     since it is part of the workload's SPIFFE ID"
                ),
            )
        })?;
        if !w.trust_domain.is_empty() && w.trust_domain != mesh.trust_domain.as_str() {
            return Err(r.at(
                &field("trustDomain"),
                format!("{label}.trustDomain"),
                format!(
                    "{:?} is not the mesh's trust domain {}; zident does not federate trust \
                     domains yet, so remove the key or set it to {}",
                    w.trust_domain, mesh.trust_domain, mesh.trust_domain
                ),
            ));
        }
        w.spiffe_id(&mesh.trust_domain)
            .map_err(|e| r.at(&[Key("workloads"), Item(i)], label.clone(), e.to_string()))?;
        if w.group.is_some() && w.user.is_none() {
            return Err(r.at(
                &field("group"),
                format!("{label}.group"),
                "a group is checked beside a user: give `user:` too (a uid or a user name)".into(),
            ));
        }
        for (key, v) in [("user", &w.user), ("group", &w.group)] {
            if let Some(crate::file::UnixId::Name(n)) = v
                && (n.is_empty() || n.contains(|c: char| c == ':' || c.is_whitespace()))
            {
                return Err(r.at(
                    &field(key),
                    format!("{label}.{key}"),
                    format!("{n:?} is not a unix {key} name; give a name or a number"),
                ));
            }
        }
        if !w.uid.is_empty()
            && let Some(first) = uids.insert(w.uid.as_str(), i)
        {
            return Err(r.at(
                &field("uid"),
                format!("{label}.uid"),
                format!(
                    "uid {:?} is also the uid of {}; every workload needs its own uid",
                    w.uid,
                    workload_label(first, &mesh.workloads[first])
                ),
            ));
        }
        for (j, ip) in w.workload_ips.iter().enumerate() {
            if let Some(first) = addresses.insert((w.network.as_str(), *ip), i)
                && first != i
            {
                return Err(r.at(
                    &[Key("workloads"), Item(i), Key("workloadIps"), Item(j)],
                    format!("{label}.workloadIps[{j}]"),
                    format!(
                        "{ip} is also an address of {}{}; an address belongs to one workload, \
                         or its traffic would leave under the other's identity",
                        workload_label(first, &mesh.workloads[first]),
                        if w.network.is_empty() {
                            String::new()
                        } else {
                            format!(" on network {:?}", w.network)
                        }
                    ),
                ));
            }
        }
        for key in w.services.keys() {
            if !key
                .split_once('/')
                .is_some_and(|(ns, host)| !ns.is_empty() && !host.is_empty() && !host.contains('/'))
            {
                return Err(r.at(
                    &field("services"),
                    format!("{label}.services"),
                    format!("{key:?} is not namespace/hostname (e.g. default/backend.default.svc.cluster.local)"),
                ));
            }
        }
    }
    Ok(())
}

fn check_services(mesh: &MeshFile, r: &Refuse<'_>) -> Result<(), MeshError> {
    use Step::{Item, Key};
    let mut hosts: HashMap<(&str, &str), usize> = HashMap::new();
    let mut vips: HashMap<(&str, IpAddr), usize> = HashMap::new();
    for (i, s) in mesh.services.iter().enumerate() {
        let label = format!("services[{i}] ({}/{})", s.namespace, s.name);
        let at = |key: &'static str| [Key("services"), Item(i), Key(key)];
        check_namespace(r, &at("namespace"), &label, &s.namespace)?;
        if s.hostname.is_empty() {
            return Err(r.at(
                &[Key("services"), Item(i)],
                format!("{label}.hostname"),
                "must not be empty; write the service's host name, e.g. backend.default.svc.cluster.local".into(),
            ));
        }
        if let Some(first) = hosts.insert((&s.namespace, &s.hostname), i) {
            return Err(r.at(
                &at("hostname"),
                format!("{label}.hostname"),
                format!(
                    "{}/{} is also services[{first}]; give each service one entry",
                    s.namespace, s.hostname
                ),
            ));
        }
        for v in &s.vips {
            let (network, ip) = crate::file::parse_vip(v).ok_or_else(|| {
                r.at(
                    &at("vips"),
                    format!("{label}.vips"),
                    format!("{v:?} is not network/ip (write e.g. \"/10.0.0.1\")"),
                )
            })?;
            if let Some(first) = vips.insert((network, ip), i)
                && first != i
            {
                return Err(r.at(
                    &at("vips"),
                    format!("{label}.vips"),
                    format!("{v} is also a VIP of services[{first}]; a VIP names one service"),
                ));
            }
        }
        for n in &s.subject_alt_names {
            SpiffeId::new(n).map_err(|e| {
                r.at(
                    &at("subjectAltNames"),
                    format!("{label}.subjectAltNames"),
                    format!("{n:?}: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

fn check_policies(mesh: &MeshFile, r: &Refuse<'_>) -> Result<(), MeshError> {
    use Step::{Item, Key};
    let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, p) in mesh.policies.iter().enumerate() {
        let label = format!("policies[{i}] ({}/{})", p.namespace, p.name);
        let at = |key: &'static str| [Key("policies"), Item(i), Key(key)];
        if p.name.is_empty() {
            return Err(r.at(
                &[Key("policies"), Item(i)],
                format!("{label}.name"),
                "must not be empty".into(),
            ));
        }
        check_namespace(r, &at("namespace"), &label, &p.namespace)?;
        if let Some(first) = keys.insert((&p.namespace, &p.name), i) {
            return Err(r.at(
                &at("name"),
                format!("{label}.name"),
                format!(
                    "policy {}/{} is also policies[{first}]; two policies with one name cannot \
                     both be enforced, so rename one",
                    p.namespace, p.name
                ),
            ));
        }
    }
    Ok(())
}

/// Every namespace (of a workload, service or policy) follows Kubernetes' rule: it is part of
/// SPIFFE IDs and of `namespace/name` keys.
fn check_namespace(
    r: &Refuse<'_>,
    at: &[Step<'_>],
    label: &str,
    namespace: &str,
) -> Result<(), MeshError> {
    check_label(namespace).map_err(|e| {
        r.at(
            at,
            format!("{label}.namespace"),
            format!(
                "{e}: a namespace follows Kubernetes' rule (a DNS-1123 label), since it is part \
                 of SPIFFE IDs and of namespace/name keys"
            ),
        )
    })
}

/// An ID outside the mesh's trust domain.
#[derive(Debug, thiserror::Error)]
#[error(
    "{id} is not in the mesh's trust domain {td}; zident does not federate trust domains yet, so use an ID under spiffe://{td}/"
)]
struct ForeignTrustDomain {
    id: SpiffeId,
    td: TrustDomain,
}

fn in_trust_domain(id: &SpiffeId, td: &TrustDomain) -> Result<(), ForeignTrustDomain> {
    if id.trust_domain_str() == td.as_str() {
        Ok(())
    } else {
        Err(ForeignTrustDomain {
            id: id.clone(),
            td: td.clone(),
        })
    }
}

/// How a caller's token is given wrong.
#[derive(Debug, thiserror::Error)]
enum TokenSourceError {
    #[error("give either token or tokenFile, not both")]
    Both,
    #[error("needs a token or a tokenFile")]
    Neither,
    #[error("token must not be empty")]
    Empty,
}

fn check_token_source(
    token: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<(), TokenSourceError> {
    match (token, file) {
        (Some(_), Some(_)) => Err(TokenSourceError::Both),
        (None, None) => Err(TokenSourceError::Neither),
        (Some(t), None) if t.trim().is_empty() => Err(TokenSourceError::Empty),
        _ => Ok(()),
    }
}
