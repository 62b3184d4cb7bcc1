//! Authorization policy: may this connection reach this workload?
//!
//! The policies come from the mesh file in ztunnel's local-config shape. For a connection to a
//! workload, the policies that apply are the Global ones, the Namespace-scoped ones of the
//! workload's namespace, and the WorkloadSelector ones the workload names. Then: a matching DENY
//! denies; with no ALLOW policy the connection is allowed; otherwise an ALLOW policy must match.
//! Dry-run policies are evaluated and reported but never change the verdict.
//!
//! A policy matches when any of its rules matches; a rule when all its clauses match; a clause
//! when any of its matches matches (an empty clause matches; an empty match does not); a match
//! when every field it sets holds (and every `not…` field does not). A policy with no rules
//! matches nothing, so an ALLOW policy with no rules allows nothing, as in Istio.
//!
//! The policies are checked and compiled once per mesh file, not per connection.

use std::net::{IpAddr, SocketAddr};

use zident_identity::SpiffeId;
use zident_mesh::{Action, MeshFile, RbacMatch, Scope, StringMatch};

/// The facts of one connection that policies look at.
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    /// The client's verified identity, if it presented one.
    pub source: Option<&'a SpiffeId>,
    /// Where the connection came from.
    pub source_addr: IpAddr,
    /// The workload address and port it is for.
    pub destination: SocketAddr,
}

/// The workload a connection is for.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// The WorkloadSelector policies it names (`namespace/name`).
    pub selected: &'a [String],
}

/// The verdict, with the reason that goes to the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Why, naming the policy that decided.
    pub reason: String,
    /// What dry-run policies would have done, for the log.
    pub dry_run: Vec<String>,
}

struct Compiled {
    key: String,
    namespace: String,
    scope: Scope,
    action: Action,
    dry_run: bool,
    rules: Vec<Vec<Vec<RbacMatch>>>,
}

/// All policies of a mesh file, compiled.
pub struct Authorizer {
    policies: Vec<Compiled>,
}

impl Authorizer {
    /// Indexes the mesh file's policies. The file was checked whole when it was read
    /// (address ranges parsed, no two policies with one name), so this cannot fail: a policy
    /// that could not be enforced never gets this far.
    pub fn new(mesh: &MeshFile) -> Self {
        let policies = mesh
            .policies
            .iter()
            .map(|p| Compiled {
                key: format!("{}/{}", p.namespace, p.name),
                namespace: p.namespace.clone(),
                scope: p.scope,
                action: p.action,
                dry_run: p.dry_run,
                rules: p.rules.clone(),
            })
            .collect();
        Self { policies }
    }

    /// Decides a connection to `dst`.
    pub fn authorize(&self, dst: Destination<'_>, conn: &Connection<'_>) -> Decision {
        let applies = |p: &&Compiled| match p.scope {
            Scope::Global => true,
            Scope::Namespace => p.namespace == dst.namespace,
            Scope::WorkloadSelector => dst.selected.contains(&p.key),
        };
        let mut dry_run = Vec::new();
        let mut denied_by = None;
        let mut allow_policies = Vec::new();
        let mut allowed_by = None;
        for p in self.policies.iter().filter(applies) {
            let matched = p.matches(conn);
            if p.dry_run {
                let verb = match (p.action, matched) {
                    (Action::Deny, true) => "would deny",
                    (Action::Allow, true) => "would allow",
                    _ => continue,
                };
                dry_run.push(format!("dry-run policy {} {verb}", p.key));
                continue;
            }
            match p.action {
                Action::Deny if matched && denied_by.is_none() => denied_by = Some(p.key.clone()),
                Action::Deny => {}
                Action::Allow => {
                    allow_policies.push(p.key.as_str());
                    if matched && allowed_by.is_none() {
                        allowed_by = Some(p.key.clone());
                    }
                }
            }
        }
        let (allowed, reason) = if let Some(deny) = denied_by {
            (false, format!("denied by DENY policy {deny}"))
        } else if allow_policies.is_empty() {
            (
                true,
                "allowed: no ALLOW policy applies to this workload".into(),
            )
        } else if let Some(allow) = allowed_by {
            (true, format!("allowed by ALLOW policy {allow}"))
        } else {
            (
                false,
                format!(
                    "denied: no ALLOW policy matched (applicable: {})",
                    allow_policies.join(", ")
                ),
            )
        };
        Decision {
            allowed,
            reason,
            dry_run,
        }
    }
}

impl Compiled {
    fn matches(&self, conn: &Connection<'_>) -> bool {
        self.rules.iter().any(|rule| {
            rule.iter().all(|clause| {
                clause.is_empty() || clause.iter().any(|m| !is_empty(m) && matches(m, conn))
            })
        })
    }
}

/// `positive` holds if empty or any item matches; `negative` holds if empty or none matches.
fn field<T>(positive: &[T], negative: &[T], pred: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&pred)) && !negative.iter().any(&pred)
}

fn string_match(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(s) => value == s,
        StringMatch::Prefix(s) => value.starts_with(s.as_str()),
        StringMatch::Suffix(s) => value.ends_with(s.as_str()),
        StringMatch::Presence(_) => !value.is_empty(),
    }
}

fn is_empty(m: &RbacMatch) -> bool {
    m.namespaces.is_empty()
        && m.not_namespaces.is_empty()
        && m.service_accounts.is_empty()
        && m.not_service_accounts.is_empty()
        && m.principals.is_empty()
        && m.not_principals.is_empty()
        && m.source_ips.is_empty()
        && m.not_source_ips.is_empty()
        && m.destination_ips.is_empty()
        && m.not_destination_ips.is_empty()
        && m.destination_ports.is_empty()
        && m.not_destination_ports.is_empty()
}

fn matches(m: &RbacMatch, conn: &Connection<'_>) -> bool {
    // Principals are SPIFFE IDs without the scheme; no identity matches nothing but
    // `not…` fields.
    let principal = conn.source.map(SpiffeId::principal).unwrap_or("");
    let istio = conn.source.and_then(SpiffeId::istio_parts);
    let namespace = istio.map(|(ns, _)| ns).unwrap_or("");
    field(&m.principals, &m.not_principals, |s| {
        string_match(s, principal)
    }) && field(&m.namespaces, &m.not_namespaces, |s| {
        string_match(s, namespace)
    }) && field(&m.service_accounts, &m.not_service_accounts, |a| {
        istio.is_some_and(|(ns, sa)| ns == a.namespace && sa == a.service_account)
    }) && field(&m.source_ips, &m.not_source_ips, |c| {
        c.contains(conn.source_addr)
    }) && field(&m.destination_ips, &m.not_destination_ips, |c| {
        c.contains(conn.destination.ip())
    }) && field(&m.destination_ports, &m.not_destination_ports, |p| {
        *p == conn.destination.port()
    })
}
