//! `security.istio.io/v1` AuthorizationPolicy, translated to the L4 policy ztunnel enforces, the
//! way istiod translates it for ambient meshes:
//!
//! - no `selector`: the policy's namespace (scope `Namespace`), or every workload when it lives
//!   in the root namespace (scope `Global`); a `selector`: the pods of its namespace whose
//!   labels it matches (scope `WorkloadSelector`);
//! - a policy with `targetRef(s)` is for a waypoint or gateway, not for ztunnel: left out;
//! - a rule becomes clauses that must all hold: one of its `to` operations, one of its `from`
//!   sources, then each `when` condition;
//! - what an L4 proxy cannot see (hosts, methods, paths, request principals, remote IP blocks,
//!   `when` keys other than the five L4 ones) fails closed: a rule of an ALLOW policy that uses
//!   any is dropped (it can never match), a DENY rule is kept without it (it denies more than
//!   asked). A value that cannot be read (a port that is not a number, an address that is not an
//!   IP or range) is treated the same way, where istiod would silently skip it. Either way the
//!   policy is kept and the finding says what was left out.
//! - an action other than ALLOW and DENY, or a spec that does not parse, refuses the policy
//!   alone. A CUSTOM policy delegates to an external authorizer zident does not have: refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use zident_mesh::{
    Action, Authorization, Cidr, RbacMatch, Scope, ServiceAccountMatch, StringMatch,
};

/// The spec of an AuthorizationPolicy, as far as the L4 translation reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PolicySpec {
    #[serde(default)]
    selector: Option<Selector>,
    #[serde(default)]
    target_ref: Option<IgnoredAny>,
    #[serde(default)]
    target_refs: Vec<IgnoredAny>,
    #[serde(default)]
    action: Option<String>,
    /// CUSTOM's external authorizer: refused with the action.
    #[serde(default, rename = "provider")]
    _provider: Option<IgnoredAny>,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// `selector: {matchLabels: …}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Selector {
    #[serde(default)]
    pub(crate) match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    from: Vec<From>,
    #[serde(default)]
    to: Vec<To>,
    #[serde(default)]
    when: Vec<Condition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct From {
    #[serde(default)]
    source: Source,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Source {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    request_principals: Vec<String>,
    #[serde(default)]
    not_request_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    not_service_accounts: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
    #[serde(default)]
    remote_ip_blocks: Vec<String>,
    #[serde(default)]
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    #[serde(default)]
    operation: Operation,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Operation {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    not_ports: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

/// A policy read and translated.
#[derive(Debug)]
pub(crate) enum Translated {
    /// For ztunnel: the policy, the labels its selector matches (`None`: no selector), and
    /// what could not be enforced (empty when everything could).
    Enforced {
        policy: Authorization,
        selector: Option<BTreeMap<String, String>>,
        left_out: Vec<String>,
    },
    /// Not for ztunnel (`targetRef`: a waypoint's or gateway's policy; `AUDIT`: logging only).
    NotForZtunnel(&'static str),
}

/// Why a policy is refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PolicyRefused {
    /// The spec is not an AuthorizationPolicy's.
    #[error("spec does not parse: {0}")]
    Spec(String),
    /// An action this translation does not know.
    #[error("action {0:?} is not ALLOW, DENY, AUDIT or CUSTOM")]
    UnknownAction(String),
    /// CUSTOM hands the decision to an external authorizer, which zident does not run.
    #[error(
        "action CUSTOM delegates to an external authorizer that zident cannot call; use ALLOW or DENY"
    )]
    Custom,
}

impl PolicyRefused {
    /// A short reason for metrics and Events.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Spec(_) => "BadSpec",
            Self::UnknownAction(_) => "UnknownAction",
            Self::Custom => "UnsupportedAction",
        }
    }
}

/// Translates one policy's spec. `root_namespace` holds the mesh-wide policies.
pub(crate) fn translate(
    name: &str,
    namespace: &str,
    spec: &serde_json::Value,
    root_namespace: &str,
) -> Result<Translated, PolicyRefused> {
    let spec: PolicySpec =
        serde_json::from_value(spec.clone()).map_err(|e| PolicyRefused::Spec(e.to_string()))?;
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => return Ok(Translated::NotForZtunnel("an AUDIT policy only logs")),
        "CUSTOM" => return Err(PolicyRefused::Custom),
        other => return Err(PolicyRefused::UnknownAction(other.to_owned())),
    };
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return Ok(Translated::NotForZtunnel(
            "a policy with targetRef is enforced by a waypoint or gateway",
        ));
    }
    let selector = spec.selector.map(|s| s.match_labels);
    let scope = match (&selector, namespace == root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    let mut left_out = Vec::new();
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let mut unenforceable = Vec::new();
        let clauses = clauses(rule, namespace, &mut unenforceable);
        if unenforceable.is_empty() {
            rules.push(clauses);
            continue;
        }
        unenforceable.sort();
        unenforceable.dedup();
        match action {
            Action::Allow => left_out.push(format!(
                "rules[{i}] dropped (an ALLOW rule zident cannot check never matches): {}",
                unenforceable.join(", ")
            )),
            Action::Deny => {
                left_out.push(format!(
                    "rules[{i}] enforced without {} (the DENY is broader than written)",
                    unenforceable.join(", ")
                ));
                rules.push(clauses);
            }
        }
    }
    Ok(Translated::Enforced {
        policy: Authorization {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            scope,
            action,
            dry_run: false,
            rules,
        },
        selector,
        left_out,
    })
}

/// The clauses of one rule (each must hold; each is a list of matches of which one must),
/// noting in `unenforceable` each field an L4 proxy cannot check. A match with nothing left in
/// it, and a clause with no match left, are omitted: they constrain nothing, so a DENY rule
/// that was all L7 denies every connection, as istiod's translation does.
fn clauses(rule: &Rule, namespace: &str, unenforceable: &mut Vec<String>) -> Vec<Vec<RbacMatch>> {
    let mut out = Vec::new();
    let mut to = Vec::new();
    for t in &rule.to {
        let op = &t.operation;
        for (field, values) in [
            ("hosts", &op.hosts),
            ("notHosts", &op.not_hosts),
            ("methods", &op.methods),
            ("notMethods", &op.not_methods),
            ("paths", &op.paths),
            ("notPaths", &op.not_paths),
        ] {
            if !values.is_empty() {
                unenforceable.push(format!("to.operation.{field}"));
            }
        }
        to.push(RbacMatch {
            destination_ports: ports(&op.ports, "to.operation.ports", unenforceable),
            not_destination_ports: ports(&op.not_ports, "to.operation.notPorts", unenforceable),
            ..RbacMatch::default()
        });
    }
    push_clause(&mut out, to);
    let mut from = Vec::new();
    for f in &rule.from {
        let s = &f.source;
        for (field, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !values.is_empty() {
                unenforceable.push(format!("from.source.{field}"));
            }
        }
        from.push(RbacMatch {
            principals: strings(&s.principals),
            not_principals: strings(&s.not_principals),
            namespaces: strings(&s.namespaces),
            not_namespaces: strings(&s.not_namespaces),
            service_accounts: service_accounts(&s.service_accounts, namespace),
            not_service_accounts: service_accounts(&s.not_service_accounts, namespace),
            source_ips: cidrs(&s.ip_blocks, "from.source.ipBlocks", unenforceable),
            not_source_ips: cidrs(&s.not_ip_blocks, "from.source.notIpBlocks", unenforceable),
            ..RbacMatch::default()
        });
    }
    push_clause(&mut out, from);
    for c in &rule.when {
        let field = format!("when[{}]", c.key);
        let m = match c.key.as_str() {
            "source.principal" => RbacMatch {
                principals: strings(&c.values),
                not_principals: strings(&c.not_values),
                ..RbacMatch::default()
            },
            "source.namespace" => RbacMatch {
                namespaces: strings(&c.values),
                not_namespaces: strings(&c.not_values),
                ..RbacMatch::default()
            },
            "source.ip" => RbacMatch {
                source_ips: cidrs(&c.values, &field, unenforceable),
                not_source_ips: cidrs(&c.not_values, &field, unenforceable),
                ..RbacMatch::default()
            },
            "destination.ip" => RbacMatch {
                destination_ips: cidrs(&c.values, &field, unenforceable),
                not_destination_ips: cidrs(&c.not_values, &field, unenforceable),
                ..RbacMatch::default()
            },
            "destination.port" => RbacMatch {
                destination_ports: ports(&c.values, &field, unenforceable),
                not_destination_ports: ports(&c.not_values, &field, unenforceable),
                ..RbacMatch::default()
            },
            _ => {
                unenforceable.push(field);
                continue;
            }
        };
        push_clause(&mut out, vec![m]);
    }
    out
}

fn push_clause(out: &mut Vec<Vec<RbacMatch>>, matches: Vec<RbacMatch>) {
    let matches: Vec<RbacMatch> = matches
        .into_iter()
        .filter(|m| *m != RbacMatch::default())
        .collect();
    if !matches.is_empty() {
        out.push(matches);
    }
}

/// Istio's string syntax: `*` any value, `*x` a suffix, `x*` a prefix, otherwise exact.
fn strings(values: &[String]) -> Vec<StringMatch> {
    values
        .iter()
        .map(|v| {
            if v == "*" {
                StringMatch::Presence(zident_mesh::Ignored)
            } else if let Some(suffix) = v.strip_prefix('*') {
                StringMatch::Suffix(suffix.to_owned())
            } else if let Some(prefix) = v.strip_suffix('*') {
                StringMatch::Prefix(prefix.to_owned())
            } else {
                StringMatch::Exact(v.clone())
            }
        })
        .collect()
}

/// `ns/sa`, or `sa` in the policy's namespace.
fn service_accounts(values: &[String], namespace: &str) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| {
            let (ns, sa) = v.split_once('/').unwrap_or((namespace, v));
            ServiceAccountMatch {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            }
        })
        .collect()
}

/// Each value read as `T`; one that does not read is noted in `unenforceable` (it fails closed
/// like an HTTP field) instead of being skipped silently as istiod does.
fn parsed<T: std::str::FromStr>(
    values: &[String],
    field: &str,
    unenforceable: &mut Vec<String>,
) -> Vec<T>
where
    T::Err: std::fmt::Display,
{
    let mut out = Vec::new();
    for v in values {
        match v.parse::<T>() {
            Ok(x) => out.push(x),
            Err(e) => unenforceable.push(format!("{field} {v:?} ({e})")),
        }
    }
    out
}

/// Port numbers.
fn ports(values: &[String], field: &str, unenforceable: &mut Vec<String>) -> Vec<u16> {
    parsed(values, field, unenforceable)
}

/// Addresses and ranges.
fn cidrs(values: &[String], field: &str, unenforceable: &mut Vec<String>) -> Vec<Cidr> {
    parsed(values, field, unenforceable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enforced(spec: serde_json::Value) -> (Authorization, Vec<String>) {
        match translate("p", "ns1", &spec, "istio-system") {
            Ok(Translated::Enforced {
                policy, left_out, ..
            }) => (policy, left_out),
            other => panic!("not enforced: {other:?}"),
        }
    }

    #[test]
    fn scope_follows_selector_and_root_namespace() {
        let (p, _) = enforced(json!({}));
        assert_eq!(p.scope, Scope::Namespace);
        assert_eq!(p.action, Action::Allow);
        assert!(p.rules.is_empty(), "ALLOW with no rules matches nothing");
        let (p, _) = enforced(json!({"selector": {"matchLabels": {"app": "a"}}}));
        assert_eq!(p.scope, Scope::WorkloadSelector);
        match translate("p", "istio-system", &json!({}), "istio-system") {
            Ok(Translated::Enforced { policy, .. }) => assert_eq!(policy.scope, Scope::Global),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn l4_fields_become_clauses() {
        let (p, left) = enforced(json!({"action": "DENY", "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/a/sa/*"], "ipBlocks": ["10.0.0.0/8"]}},
                     {"source": {"notNamespaces": ["kube-*"], "serviceAccounts": ["x", "b/y"]}}],
            "to": [{"operation": {"ports": ["80"], "notPorts": ["81"]}}],
            "when": [{"key": "destination.ip", "values": ["10.1.2.3"]}]
        }]}));
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(p.action, Action::Deny);
        let rule = &p.rules[0];
        assert_eq!(rule.len(), 3);
        assert_eq!(rule[0][0].destination_ports, vec![80]);
        assert_eq!(rule[0][0].not_destination_ports, vec![81]);
        assert_eq!(
            rule[1][0].principals,
            vec![StringMatch::Prefix("cluster.local/ns/a/sa/".into())]
        );
        assert_eq!(rule[1][0].source_ips[0].prefix(), 8);
        assert_eq!(
            rule[1][1].not_namespaces,
            vec![StringMatch::Prefix("kube-".into())]
        );
        assert_eq!(
            rule[1][1].service_accounts,
            vec![
                ServiceAccountMatch {
                    namespace: "ns1".into(),
                    service_account: "x".into()
                },
                ServiceAccountMatch {
                    namespace: "b".into(),
                    service_account: "y".into()
                }
            ]
        );
        assert_eq!(rule[2][0].destination_ips[0].prefix(), 32);
    }

    #[test]
    fn l7_fails_closed_both_ways() {
        // ALLOW: the rule with a method can never match; the plain rule stays.
        let (p, left) = enforced(json!({"rules": [
            {"to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}]},
            {"from": [{"source": {"namespaces": ["a"]}}]}
        ]}));
        assert_eq!(p.rules.len(), 1);
        assert_eq!(
            p.rules[0][0][0].namespaces,
            vec![StringMatch::Exact("a".into())]
        );
        assert!(
            left[0].contains("rules[0] dropped") && left[0].contains("methods"),
            "{left:?}"
        );
        // DENY: the rule stays without its L7 part; one that was all L7 denies everything.
        let (p, left) = enforced(json!({"action": "DENY", "rules": [
            {"to": [{"operation": {"paths": ["/admin"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]}
        ]}));
        assert_eq!(
            p.rules,
            vec![Vec::<Vec<RbacMatch>>::new()],
            "an empty rule matches all"
        );
        assert!(left[0].contains("paths") && left[0].contains("request.headers[x]"));
        // A value an L4 proxy cannot read is treated the same way.
        let (p, left) = enforced(json!({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}));
        assert!(p.rules.is_empty());
        assert!(left[0].contains("\"http\""), "{left:?}");
    }

    #[test]
    fn refused_and_skipped() {
        let refuse = |spec| translate("p", "ns1", &spec, "istio-system").unwrap_err();
        assert_eq!(refuse(json!({"action": "BLOCK"})).reason(), "UnknownAction");
        assert_eq!(
            refuse(json!({"action": "CUSTOM"})).reason(),
            "UnsupportedAction"
        );
        assert_eq!(refuse(json!({"rules": [{"form": []}]})).reason(), "BadSpec");
        assert!(matches!(
            translate(
                "p",
                "ns1",
                &json!({"targetRefs": [{"kind": "Gateway"}]}),
                "istio-system"
            ),
            Ok(Translated::NotForZtunnel(_))
        ));
    }
}
